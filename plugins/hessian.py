"""`hessian`: top and bottom Hessian eigenvalues, trace and density across epochs.

The seed notebook ran 10 power iterations on 64 images with the model in train mode
(so each HVP also moved the BatchNorm statistics) and called the result "the top
eigenvalue", whatever its sign. Here, on the run's stored un-augmented analysis
batch, in eval mode: Lanczos (or deflated power iteration) reports the largest (LA)
and smallest (SA) algebraic eigenvalues separately, each with its residual
||Hv - lambda v|| / |lambda| and a converged flag; epochs run in order and each one
starts from the previous epoch's eigenvectors, whose overlap with the new ones is
reported. Numerics: `probe.curvature` (docs/curvature.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

# Bounds tied to cost (docs/reliability.md, "Bounds"). Lanczos keeps one vector of the
# parameter count per step, so its memory is also checked against the model at job start.
MAX_K = 1000
MAX_STEPS = 10_000
MAX_IMAGES = 100_000
MAX_BASIS_BYTES = 8 << 30


@dataclass(frozen=True)
class Params:
    top_k: int = probe.param(3, "Largest eigenvalues to find (at most the parameter count).", min=1, max=MAX_K)
    smallest: int = probe.param(1, "Smallest (most negative) eigenvalues to find; 0 to skip.", min=0, max=MAX_K)
    method: str = probe.param("lanczos", "Eigen solver (power finds largest magnitude, then shifts).",
                              choices=("lanczos", "power"))
    n_images: int = probe.param(1024, "Images of the stored analysis batch to use (its first ones).", min=1, max=MAX_IMAGES)
    batch_size: int = probe.param(256, "Mini-batch size; results are averaged weighted by sample count.", min=1, max=MAX_IMAGES)
    bn: str = probe.param("eval", "BatchNorm: running statistics (eval) or per-mini-batch statistics (batch).",
                          choices=("eval", "batch"))
    weight_decay: bool = probe.param(False, "Include the run's 0.5 * wd * ||w||^2 in the loss differentiated "
                                            "(an L2 term; AdamW's decoupled decay is not part of any loss).")
    tol: float = probe.param(1e-3, "Relative change at which an eigenvalue counts as converged.", min=1e-12, max=1.0)
    residual_tol: float = probe.param(1e-2, "Relative residual at which an eigenvalue counts as converged.",
                                      min=1e-12, max=1.0)
    max_iter: int = probe.param(100, "Most Hessian-vector products per solve (Lanczos keeps one vector each).", min=2, max=MAX_STEPS)
    trace_samples: int = probe.param(0, "Hutchinson samples for the trace (0: skip).", min=0, max=MAX_STEPS)
    density_runs: int = probe.param(0, "Stochastic Lanczos quadrature runs for the density (0: skip).", min=0, max=1000)
    density_steps: int = probe.param(60, "Lanczos steps per density run.", min=2, max=MAX_STEPS)
    warm_start: bool = probe.param(True, "Start each epoch from the previous epoch's eigenvectors (epochs then run "
                                         "in order; with warm_start=false they are independent pieces that "
                                         "`probe analyze --workers/--dask-workers/--scheduler` spreads out).")
    seed: int = probe.param(0, "Seed for start and probe vectors.", min=0, max=2**32 - 1)
    operator: str = probe.param("hessian", "Curvature matrix: the Hessian, or the generalised Gauss-Newton "
                                           "(positive semi-definite; probe.operators).", choices=("hessian", "ggn"))
    trace_method: str = probe.param("hutchinson", "Trace estimator; trace_samples is its number of products "
                                                  "(hutch++ needs >= 6).", choices=("hutchinson", "hutch++"))

    def __post_init__(self) -> None:
        if self.trace_samples == 1:
            raise ValueError("trace_samples must be 0 or >= 2 (a standard error needs two samples)")
        if self.trace_method == "hutch++" and 0 < self.trace_samples < 6:
            raise ValueError("trace_samples must be 0 or >= 6 with trace_method=hutch++ (a third sketches, a third "
                             "is exact, the rest needs two samples for a standard error)")


def check_cost(p: Params, n: int) -> None:
    """Refuse, at job start, eigenvalue counts and Krylov bases the model cannot have or memory cannot hold."""
    if p.top_k + p.smallest > n:
        raise probe.UsageError("--param top_k", f"hessian: top_k={p.top_k} + smallest={p.smallest} eigenvalues asked of "
                                                f"a model with {n:,} parameters")
    for name in ("max_iter", "density_steps"):
        steps = min(getattr(p, name), n)
        if steps * n * 8 > MAX_BASIS_BYTES and (name == "max_iter" or p.density_runs):
            raise probe.UsageError(f"--param {name}", f"hessian: a {steps:,}-step Lanczos basis of {n:,} parameters needs "
                                                     f"{steps * n * 8 / 2**30:,.1f} GiB, more than {MAX_BASIS_BYTES >> 30} GiB")


def epoch_piece(job: tuple):
    """One epoch's analysis, rebuilt from the run directory: an independent piece for an executor."""
    from probe import curvature as C

    run_dir, epoch, device, n_images, kwargs = job
    run = probe.Run(run_dir)
    batch = run.analysis_batch()
    x, y = batch.normalized(device)[:n_images], batch.labels[:n_images]
    return C.hessian_analysis(run.model(epoch, device), x, y, **kwargs)


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe import curvature as C

    p = ctx.params
    check_cost(p, sum(w.numel() for w in ctx.model(ctx.epochs[0]).parameters()))
    batch = ctx.analysis_batch()
    x, y = batch.normalized(ctx.device)[: p.n_images], batch.labels[: p.n_images]
    train = ctx.config()["train"]
    wd = float(train.get("weight_decay", 0.0)) if p.weight_decay else 0.0
    kw = dict(top_k=p.top_k, smallest=p.smallest, method=p.method, trace_samples=p.trace_samples,
              density_runs=p.density_runs, density_steps=p.density_steps, tol=p.tol, residual_tol=p.residual_tol,
              max_iter=p.max_iter, bn=p.bn, weight_decay=wd, batch_size=p.batch_size, seed=p.seed,
              operator=p.operator, trace_method=p.trace_method)
    rows, prev, density = [], None, None
    if p.warm_start or ctx.executor is None:
        for epoch in ctx.progress(ctx.epochs, "epochs"):
            rep = C.hessian_analysis(ctx.model(epoch), x, y, init=prev if p.warm_start else None, **kw)
            rows.append((epoch, rep))
            prev, density = rep.eigen[0].vectors, rep.density or density
    else:
        jobs = [(str(ctx.run.path), e, ctx.device, p.n_images, kw) for e in ctx.epochs]
        rows = list(zip(ctx.epochs, ctx.map(epoch_piece, jobs, "epochs"), strict=True))
        density = next((r.density for _, r in reversed(rows) if r.density is not None), None)
    epochs = np.array([e for e, _ in rows])
    lrs = {m["epoch"]: m.get("lr") for m in ctx.metrics()}
    nan_k = np.full(p.top_k, np.nan)

    def col(pos: int, field: str) -> np.ndarray:  # by position: power's labels can change sign per epoch
        return np.array([getattr(rep.eigen[pos], field).double().numpy() for _, rep in rows])

    top_label = rows[-1][1].eigen[0].which  # LA (lanczos) or LM (power)
    other = rows[-1][1].eigen[1].which if p.smallest else None
    arrays = {
        "epoch": epochs, "top": col(0, "values"), "top_residual": col(0, "residuals"),
        "top_converged": col(0, "converged").astype(bool),
        "top_which": np.array([r.eigen[0].which for _, r in rows], dtype="S2"),
        "loss": np.array([r.loss for _, r in rows]), "hvps": np.array([r.hvps for _, r in rows]),
        "overlap": np.array([r.overlap.numpy() if r.overlap is not None else nan_k for _, r in rows]),
        "subspace_overlap": np.array([np.nan if r.subspace_overlap is None else r.subspace_overlap for _, r in rows]),
    }
    if other:
        arrays.update(bottom=col(1, "values"), bottom_residual=col(1, "residuals"),
                      bottom_converged=col(1, "converged").astype(bool),
                      bottom_which=np.array([r.eigen[1].which for _, r in rows], dtype="S2"))
    if p.trace_samples:
        arrays.update(trace=np.array([r.trace.trace for _, r in rows]),
                      trace_stderr=np.array([r.trace.stderr for _, r in rows]))
    if density is not None:
        arrays.update(density_nodes=density.nodes.numpy(), density_weights=density.weights.numpy())
    attrs = {"loss_definition": rows[-1][1].loss_definition, "top_label": top_label, "bottom_label": other or "",
             "method": p.method, "bn": p.bn, "n_images": len(x), "seed": p.seed,
             "operator": p.operator, "trace_method": p.trace_method,
             "labels": "LA: largest algebraic, SA: smallest algebraic, LM: largest magnitude (may be negative)"}
    # The edge of stability (Cohen et al., 2021): gradient descent with step size lr is unstable along
    # directions of curvature above 2/lr; heavy-ball momentum beta moves the threshold to 2(1+beta)/lr.
    # Adam's threshold is on the preconditioned Hessian, so no line is drawn for it.
    opt = train.get("optimizer", "SGD")
    factor = {"SGD": 2.0, "SGD_mom": 2.0 * (1 + float(train.get("momentum", 0.0)))}.get(opt)
    if factor is not None:
        arrays["edge_of_stability"] = np.array([factor / lrs[e] if lrs.get(e) else np.nan for e in epochs])
        attrs["edge_of_stability"] = f"{factor:g}/lr ({opt})"
    ctx.out.arrays("hessian", attrs=attrs, **arrays)
    ctx.out.json("hessian", {"epochs": [{"epoch": e, **r.summary()} for e, r in rows], **attrs})
    _figure(ctx, arrays, top_label, other, density)
    last = rows[-1][1]
    ctx.out.scalar("top_eigenvalue", float(last.eigen[0].values[0]))
    ctx.out.scalar("top_label", top_label)
    ctx.out.scalar("top_converged", bool(last.eigen[0].converged[0]))
    if other:
        ctx.out.scalar("bottom_eigenvalue", float(last.eigen[1].values[0]))
        ctx.out.scalar("bottom_label", other)
    if last.trace is not None:
        ctx.out.scalar("trace", last.trace.trace)
        ctx.out.scalar("trace_stderr", last.trace.stderr)
    ctx.out.scalar("hvps_total", int(arrays["hvps"].sum()))


def _figure(ctx, a, top_label: str, other: str | None, density) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    panels = 2 + (density is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    ax = axes[0]
    for i in range(a["top"].shape[1]):
        ok = a["top_converged"][:, i]
        line, = ax.plot(a["epoch"], a["top"][:, i], "o-", ms=3, label=f"{top_label} {i + 1}")
        ax.plot(a["epoch"][~ok], a["top"][~ok, i], "x", color=line.get_color(), ms=7)
    if other:
        for i in range(a["bottom"].shape[1]):
            ax.plot(a["epoch"], a["bottom"][:, i], "s--", ms=3, label=f"{other} {i + 1}")
    if "trace" in a:
        ax2 = ax.twinx()
        ax2.errorbar(a["epoch"], a["trace"], yerr=a["trace_stderr"], color="grey", alpha=0.6, label="trace")
        ax2.set_ylabel("trace (Hutchinson, +- 1 s.e.)", color="grey")
    if "edge_of_stability" in a:
        # a dash marker per epoch: epoch 0 has no lr, so a two-epoch series has one point and no line
        ax.plot(a["epoch"], a["edge_of_stability"], "k:", lw=1.2, marker="_", ms=12, label="edge of stability (2/lr)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_yscale("symlog", linthresh=max(1e-3, float(np.nanmax(np.abs(a["top"]))) * 1e-3))
    ax.set(xlabel="epoch", ylabel="eigenvalue", title=f"{'GGN' if ctx.params.operator == 'ggn' else 'Hessian'} eigenvalues (x: not converged)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(a["epoch"], a["subspace_overlap"], "o-", ms=3, label="subspace (mean cos^2)")
    for i in range(a["overlap"].shape[1]):
        ax.plot(a["epoch"], a["overlap"][:, i], ".:", alpha=0.7, label=f"|<v{i + 1}, prev>|")
    ax.set(xlabel="epoch", ylabel="overlap with previous epoch", ylim=(-0.02, 1.02), title="eigenvector drift")
    for a_ in axes[:2]:
        a_.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    if density is not None:
        import torch

        lo, hi = float(density.nodes.min()), float(density.nodes.max())
        pad = 0.05 * (hi - lo or 1.0)
        grid = torch.linspace(lo - pad, hi + pad, 600, dtype=torch.float64)
        curve = density.curve(grid, sigma=(hi - lo or 1.0) / 200).numpy()
        axes[2].semilogy(grid.numpy(), np.maximum(curve, 1e-12))
        axes[2].set(xlabel="eigenvalue", ylabel="density", title=f"spectral density, epoch {int(a['epoch'][-1])}")
    ctx.out.figure("hessian", fig, caption="Largest and smallest Hessian eigenvalues per epoch (symlog scale; "
                   "crosses: not converged; dotted: the 2/lr edge of stability for SGD), and how much the top eigenvectors moved since the previous epoch "
                   "(1: same subspace).")


@probe.hookimpl
def register_analyses(register) -> None:
    register(probe.Analysis(
        name="hessian", run=run, params=Params, scope="run", needs={"model", "analysis_batch", "config", "metrics"},
        version="2",
        summary="Largest/smallest Hessian eigenvalues (Lanczos), trace and density per epoch, warm-started.",
    ))
