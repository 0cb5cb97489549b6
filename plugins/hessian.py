"""`hessian`: top and bottom Hessian eigenvalues, trace and density across epochs.

The seed notebook ran 10 power iterations on 64 images with the model in train mode
(so each HVP also moved the BatchNorm statistics) and called the result "the top
eigenvalue", whatever its sign. Here, on the run's stored un-augmented analysis
batch, in eval mode: Lanczos (or deflated power iteration) reports the largest (LA)
and smallest (SA) algebraic eigenvalues separately, each with its residual
||Hv - lambda v|| / |lambda| and a converged flag; epochs run in order and each one
starts from the previous epoch's eigenvectors, whose overlap with the new ones is
reported. With `batches=B` every eigenvalue and the trace come per batch, as their
mean and standard error over batches, and for the combined operator (the mean loss over
all B batches); `blocks` adds each layer's diagonal block (top eigenvalue, trace). The
eigenvectors are stored (float32), and every result says what it was computed on.
Another operator plugs in through `HessianConfig(operator=...)`. Numerics:
`probe.numerics.curvature` (docs/curvature.md): this plugin turns its parameters into a
`HessianConfig`, runs `hessian_analysis` per epoch and stores and draws the reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import probe

if TYPE_CHECKING:  # torch is imported when a job computes, not when the plugin registers
    from probe.numerics import HessianConfig

# Bounds tied to cost (docs/reliability.md, "Bounds"). Lanczos keeps one vector of the
# parameter count per step, so its memory is also checked against the model at job start.
MAX_K = 1000
MAX_STEPS = 10_000
MAX_IMAGES = 100_000
MAX_BASIS_BYTES = 8 << 30
MAX_BATCHES = 64
# Defaults that make a default run give the trace and the density the README lists (costs:
# docs/curvature.md).
TRACE_SAMPLES = 20
DENSITY_STEPS = 40


@dataclass(frozen=True)
class Params:
    top_k: int = probe.param(
        3, "Largest eigenvalues to find (at most the parameter count).", min=1, max=MAX_K
    )
    smallest: int = probe.param(
        1, "Smallest (most negative) eigenvalues to find; 0 to skip.", min=0, max=MAX_K
    )
    method: str = probe.param(
        "lanczos",
        "Eigen solver (power finds largest magnitude, then shifts).",
        choices=("lanczos", "power"),
    )
    n_images: int = probe.param(
        1024,
        "Images per batch, from the start of the stored analysis batch (with batches=1 "
        "a smaller stored batch is used whole).",
        min=1,
        max=MAX_IMAGES,
    )
    batches: int = probe.param(
        1,
        "Disjoint batches of n_images each (B * n_images stored images needed): per-batch "
        "values, their mean and standard error, and the combined (mean-loss) operator's.",
        min=1,
        max=MAX_BATCHES,
    )
    per_batch: str = probe.param(
        "ritz",
        "With batches > 1: each batch's eigenpairs by Rayleigh-Ritz on the combined "
        "operator's Krylov basis where every pair meets residual_tol, else by the batch's own "
        "Lanczos run from its Ritz vectors (ritz), or always by its own run (solve).",
        choices=("ritz", "solve"),
    )
    blocks: str = probe.param(
        "none",
        "Per-block top eigenvalue and trace: 'layer' (each conv/linear layer, weight and "
        "bias; the rest as 'other'), name patterns like 'features.*,classifier.*', or "
        "'none' (default: blocks=layer took 2.4x the time of the default analysis).",
    )
    batch_size: int = probe.param(
        256,
        "Mini-batch size; results are averaged weighted by sample count.",
        min=1,
        max=MAX_IMAGES,
    )
    bn: str = probe.param(
        "eval",
        "BatchNorm: running statistics (eval) or per-mini-batch statistics (batch).",
        choices=("eval", "batch"),
    )
    weight_decay: bool = probe.param(
        False,
        "Include the run's 0.5 * wd * ||w||^2 in the loss differentiated "
        "(an L2 term; AdamW's decoupled decay is not part of any loss).",
    )
    tol: float = probe.param(
        1e-3, "Relative change at which an eigenvalue counts as converged.", min=1e-12, max=1.0
    )
    residual_tol: float = probe.param(
        1e-2, "Relative residual at which an eigenvalue counts as converged.", min=1e-12, max=1.0
    )
    max_iter: int = probe.param(
        100,
        "Most Hessian-vector products per solve (Lanczos keeps one vector each).",
        min=2,
        max=MAX_STEPS,
    )
    trace_samples: int = probe.param(
        TRACE_SAMPLES,
        "Products for the trace (Hutchinson samples per batch, or Hutch++'s total; 0: skip); the "
        "block traces come from the same products.",
        min=0,
        max=MAX_STEPS,
    )
    density_runs: int = probe.param(
        1,
        "Stochastic Lanczos quadrature runs for the density of the last epoch analysed (0: skip).",
        min=0,
        max=1000,
    )
    density_steps: int = probe.param(
        DENSITY_STEPS, "Lanczos steps per density run.", min=2, max=MAX_STEPS
    )
    warm_start: bool = probe.param(
        True,
        "Start each epoch from the previous epoch's eigenvectors (epochs then run "
        "in order; with warm_start=false they are independent pieces that "
        "`probe analyze --workers/--dask-workers/--scheduler` spreads out).",
    )
    seed: int = probe.param(0, "Seed for start and probe vectors.", min=0, max=2**32 - 1)
    operator: str = probe.param(
        "hessian",
        "Curvature matrix: the Hessian, or the generalised Gauss-Newton "
        "(positive semi-definite; probe.numerics.curvature.operators).",
        choices=("hessian", "ggn"),
    )
    trace_method: str = probe.param(
        "hutchinson",
        "Trace estimator; trace_samples is its number of products (hutch++ needs >= 6).",
        choices=("hutchinson", "hutch++"),
    )

    def __post_init__(self) -> None:
        if self.trace_samples == 1:
            raise ValueError("trace_samples must be 0 or >= 2 (a standard error needs two samples)")
        if len(self.blocks) > 1000:
            raise ValueError("blocks must be at most 1000 characters")
        if self.trace_method == "hutch++" and 0 < self.trace_samples < 6:
            raise ValueError(
                "trace_samples must be 0 or >= 6 with trace_method=hutch++ (a third sketches, a "
                "third is exact, the rest needs two samples for a standard error)"
            )
        if self.trace_method == "hutch++" and (self.batches > 1 or self.blocks != "none"):
            raise ValueError(
                "trace_method=hutch++ estimates one operator's trace: use batches=1 and "
                "blocks=none (hutchinson gives per-batch and per-block traces)"
            )


def check_cost(p: Params, n: int) -> None:
    """Refuse, at job start, eigenvalue counts and Krylov bases the model cannot have or memory
    cannot hold."""
    if p.top_k + p.smallest > n:
        raise probe.UsageError(
            "--param top_k",
            f"hessian: top_k={p.top_k} + smallest={p.smallest} eigenvalues asked of "
            f"a model with {n:,} parameters",
        )
    for name in ("max_iter", "density_steps"):
        steps = min(getattr(p, name), n)
        if steps * n * 8 > MAX_BASIS_BYTES and (name == "max_iter" or p.density_runs):
            raise probe.UsageError(
                f"--param {name}",
                f"hessian: a {steps:,}-step Lanczos basis of {n:,} parameters needs "
                f"{steps * n * 8 / 2**30:,.1f} GiB, more than {MAX_BASIS_BYTES >> 30} GiB",
            )


def cost(p: Params, info: probe.RunInfo) -> probe.Cost:
    """Products of n_images images per job, at most: each solver stops once it converges."""
    b, steps = p.batches, min(p.max_iter, info.n_params)
    lanczos = p.method == "lanczos"  # one Krylov run, then one product per returned pair
    solve = steps + p.top_k + p.smallest if lanczos else p.max_iter * (p.top_k + p.smallest)
    n_blocks = {"none": 0, "layer": info.conv_layers + info.linear_layers + 1}.get(
        p.blocks, len(p.blocks.split(",")) + 1
    )
    per_epoch = b * solve + (b * solve if b > 1 else 0)  # combined, then each batch's if needed
    per_epoch += (p.trace_samples * (b if p.trace_method == "hutchinson" else 1)) + n_blocks * b * (
        steps + 1 if lanczos else p.max_iter
    )
    density = b * p.density_runs * min(p.density_steps, info.n_params)  # the last epoch only
    n = info.images(p.n_images, b)
    return probe.Cost(info.epochs * per_epoch + density, "hvp", n, upto=True, note="products")


def select(p: Params, stored: int) -> int:
    """How many stored images the analysis uses: B * n_images, refused when the run stores fewer.

    With batches=1 a smaller stored batch is used whole (the behaviour before batches existed)."""
    if p.batches == 1:
        return min(p.n_images, stored)
    need = p.batches * p.n_images
    if need > stored:
        raise probe.UsageError(
            "--param batches",
            f"hessian: batches={p.batches} x n_images={p.n_images} needs "
            f"{need:,} images; the run stores {stored:,} (lower --param batches or "
            "--param n_images, or train with a larger --analysis-batch-size)",
        )
    return need


def hessian_config(p: Params, weight_decay: float) -> HessianConfig:
    """The numerics' options for these parameters (`weight_decay`: the run's, or 0: excluded)."""
    from probe.numerics import HessianConfig

    return HessianConfig(
        top_k=p.top_k,
        smallest=p.smallest,
        method=p.method,
        trace_samples=p.trace_samples,
        density_runs=p.density_runs,
        density_steps=p.density_steps,
        tol=p.tol,
        residual_tol=p.residual_tol,
        max_iter=p.max_iter,
        bn=p.bn,
        weight_decay=weight_decay,
        batch_size=p.batch_size,
        seed=p.seed,
        batches=p.batches,
        blocks=p.blocks,
        trace_method=p.trace_method,
        operator=p.operator,
        per_batch=p.per_batch,
    )


def epoch_piece(job: tuple):
    """One epoch's analysis, rebuilt from the run directory: an independent piece for an
    executor."""
    from probe.numerics import hessian_analysis

    run_dir, epoch, device, n, config = job
    run = probe.Run(run_dir)
    batch = run.analysis_batch()
    x, y = batch.normalized(device)[:n], batch.labels[:n]
    return hessian_analysis(run.model(epoch, device), x, y, config)


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics import hessian_analysis, require_batchnorm, standard_error

    p = ctx.params
    first = ctx.model(ctx.epochs[0])
    if p.bn != "eval":
        require_batchnorm(first, f"bn={p.bn}", "bn=eval")
    check_cost(p, sum(w.numel() for w in first.parameters()))
    batch = ctx.analysis_batch()
    n = select(p, len(batch.labels))
    x, y = batch.normalized(ctx.device)[:n], batch.labels[:n]
    train = ctx.config()["train"]
    config = hessian_config(p, float(train.get("weight_decay", 0.0)) if p.weight_decay else 0.0)
    last = ctx.epochs[-1]

    def for_epoch(epoch: int) -> HessianConfig:
        # the density is plotted for the last epoch only: computed there only
        return config if epoch == last else replace(config, density_runs=0)

    rows = []
    if p.warm_start or ctx.executor is None:
        prev, prev_blocks = None, None
        for epoch in ctx.progress(ctx.epochs, "epochs"):
            rep = hessian_analysis(
                ctx.model(epoch),
                x,
                y,
                for_epoch(epoch),
                init=prev if p.warm_start else None,
                block_init=prev_blocks if p.warm_start else None,
            )
            rows.append((epoch, rep))
            prev = rep.eigen[0].vectors
            prev_blocks = {b.name: b.eigen.vectors for b in rep.blocks}
    else:
        ctx.declare_reads(checkpoints=ctx.epochs)  # the pieces load each epoch's model themselves
        jobs = [(str(ctx.run.path), e, ctx.device, n, for_epoch(e)) for e in ctx.epochs]
        rows = list(zip(ctx.epochs, ctx.map(epoch_piece, jobs, "epochs"), strict=True))
    density = rows[-1][1].density
    arrays, attrs = series(rows, p)
    attrs["trace_method"] = p.trace_method
    lrs = {m["epoch"]: m.get("lr") for m in ctx.metrics(ctx.epochs)}
    # The edge of stability (Cohen et al., 2021): gradient descent with step size lr is unstable
    # along directions of curvature above 2/lr; heavy-ball momentum beta moves the threshold to
    # 2(1+beta)/lr. Adam's threshold is on the preconditioned Hessian, so no line is drawn for it.
    opt = train.get("optimizer", "SGD")
    factor = {"SGD": 2.0, "SGD_mom": 2.0 * (1 + float(train.get("momentum", 0.0)))}.get(opt)
    if factor is not None:
        arrays["edge_of_stability"] = np.array(
            [factor / lrs[e] if lrs.get(e) else np.nan for e in arrays["epoch"]]
        )
        attrs["edge_of_stability"] = f"{factor:g}/lr ({opt})"
    if density is not None:
        arrays.update(density_nodes=density.nodes.numpy(), density_weights=density.weights.numpy())
        attrs["density_epoch"] = int(last)
    ctx.out.arrays("hessian", attrs=attrs, **arrays)
    ctx.out.json("hessian", {"epochs": [{"epoch": e, **r.summary()} for e, r in rows], **attrs})
    top_label, other = attrs["top_label"], attrs["bottom_label"] or None
    _figure(ctx, arrays, top_label, other, density, p.batches)
    if "block_top" in arrays:
        _block_figure(ctx, arrays, attrs["block_names"])
    rep = rows[-1][1]
    over = rep.over_batches(0)
    ctx.out.scalar("top_eigenvalue", float(rep.eigen[0].values[0]))
    ctx.out.scalar("top_label", top_label)
    ctx.out.scalar("top_converged", bool(rep.eigen[0].converged[0]))
    ctx.out.scalar("batches", p.batches)
    ctx.out.scalar("images", rep.n_batches * rep.images_per_batch)
    if p.batches > 1:
        ctx.out.scalar("top_eigenvalue_mean_over_batches", over["mean_over_batches"][0])
        ctx.out.scalar("top_eigenvalue_se", over["se_over_batches"][0])
        ctx.out.scalar("top_eigenvalue_batches_converged", over["n_converged_over_batches"][0])
    if other:
        ctx.out.scalar("bottom_eigenvalue", float(rep.eigen[1].values[0]))
        ctx.out.scalar("bottom_label", other)
    if rep.trace is not None:
        ctx.out.scalar("trace", rep.trace.trace)
        ctx.out.scalar("trace_stderr", rep.trace.stderr)
        ctx.out.scalar("trace_stderr_reliable", rep.trace.stderr_reliable)
        if rep.trace_per_batch:
            ctx.out.scalar("trace_se", standard_error([t.trace for t in rep.trace_per_batch]))
    if rep.blocks:
        sharpest = max(rep.blocks, key=lambda b: float(b.eigen.values[0]))
        ctx.out.scalar("sharpest_block", sharpest.name)
    ctx.out.scalar("hvps_total", int(arrays["hvps"].sum()))


def series(rows: list, p: Params) -> tuple[dict, dict]:
    """The per-epoch arrays (HDF5) and attributes of a list of (epoch, HessianReport).

    Unsuffixed eigenvalue and trace arrays are the combined operator's (all B batches'
    mean loss); `*_per_batch` (epochs, B, ...) are each batch's, `*_mean_over_batches`
    and `*_se_over_batches` their mean and standard error. Eigenvectors are stored in
    float32 with their eigenvalues and residuals, so residuals can be rechecked."""
    import numpy as np

    from probe.numerics import standard_error

    reps = [r for _, r in rows]
    nan_k = np.full(p.top_k, np.nan)

    def col(
        pos: int, field: str
    ) -> np.ndarray:  # by position: power's labels can change sign per epoch
        return np.array([getattr(r.eigen[pos], field).double().numpy() for r in reps])

    top_label = reps[-1].eigen[0].which  # LA (lanczos) or LM (power)
    other = reps[-1].eigen[1].which if p.smallest else None
    arrays = {
        "epoch": np.array([e for e, _ in rows]),
        "top": col(0, "values"),
        "top_residual": col(0, "residuals"),
        "top_converged": col(0, "converged").astype(bool),
        "top_which": np.array([r.eigen[0].which for r in reps], dtype="S2"),
        "top_vectors": np.stack([r.eigen[0].vectors.float().cpu().numpy() for r in reps]),
        "loss": np.array([r.loss for r in reps]),
        "hvps": np.array([r.hvps for r in reps]),
        "overlap": np.array([r.overlap.numpy() if r.overlap is not None else nan_k for r in reps]),
        "subspace_overlap": np.array(
            [np.nan if r.subspace_overlap is None else r.subspace_overlap for r in reps]
        ),
    }
    ends = [("top", 0)]
    if other:
        arrays.update(
            bottom=col(1, "values"),
            bottom_residual=col(1, "residuals"),
            bottom_converged=col(1, "converged").astype(bool),
            bottom_which=np.array([r.eigen[1].which for r in reps], dtype="S2"),
            bottom_vectors=np.stack([r.eigen[1].vectors.float().cpu().numpy() for r in reps]),
        )
        ends.append(("bottom", 1))
    if p.batches > 1:
        arrays["loss_per_batch"] = np.array([r.loss_per_batch for r in reps])
        for name, pos in ends:
            over = [r.over_batches(pos) for r in reps]
            for key in (
                "per_batch",
                "per_batch_residual",
                "mean_over_batches",
                "se_over_batches",
            ):
                arrays[f"{name}_{key}"] = np.array([o[key] for o in over], dtype=np.float64)
            arrays[f"{name}_per_batch_converged"] = np.array(
                [o["per_batch_converged"] for o in over], dtype=bool
            )
            arrays[f"{name}_n_converged_over_batches"] = np.array(
                [o["n_converged_over_batches"] for o in over], dtype=np.int64
            )
    if p.trace_samples:
        arrays.update(
            trace=np.array([r.trace.trace for r in reps]),
            trace_stderr=np.array([r.trace.stderr for r in reps]),
        )
        if p.batches > 1:
            per = np.array([[t.trace for t in r.trace_per_batch] for r in reps])
            arrays.update(
                trace_per_batch=per,
                trace_per_batch_stderr=np.array(
                    [[t.stderr for t in r.trace_per_batch] for r in reps]
                ),
                trace_mean_over_batches=per.mean(1),
                trace_se_over_batches=np.array([standard_error(v) for v in per]),
            )
    block_names: list[str] = []
    if reps[-1].blocks:
        block_names = [b.name for b in reps[-1].blocks]
        dim = reps[-1].eigen[0].vectors.shape[-1]
        vecs = np.zeros((len(reps), dim), dtype=np.float32)
        for i, r in enumerate(reps):
            for b in r.blocks:
                vecs[i, b.index.numpy()] = b.eigen.vectors[0].float().cpu().numpy()
        arrays.update(
            block_top=np.array([[float(b.eigen.values[0]) for b in r.blocks] for r in reps]),
            block_top_residual=np.array(
                [[float(b.eigen.residuals[0]) for b in r.blocks] for r in reps]
            ),
            block_top_converged=np.array(
                [[bool(b.eigen.converged[0]) for b in r.blocks] for r in reps]
            ),
            block_size=np.array([b.dim for b in reps[-1].blocks]),
            block_top_vectors=vecs,
        )
        if p.trace_samples:
            arrays.update(
                block_trace=np.array([[b.trace.trace for b in r.blocks] for r in reps]),
                block_trace_stderr=np.array([[b.trace.stderr for b in r.blocks] for r in reps]),
            )
    rep = reps[-1]
    attrs = {
        "loss_definition": rep.loss_definition,
        "top_label": top_label,
        "bottom_label": other or "",
        "method": p.method,
        "bn": p.bn,
        "n_images": rep.n_batches * rep.images_per_batch,
        "seed": p.seed,
        "computed_on": rep.computed_on(),
        "operator": rep.operator,
        "batches": rep.n_batches,
        "images_per_batch": rep.images_per_batch,
        "dtype": rep.dtype,
        "parameters": rep.names,
        "per_batch": p.per_batch if p.batches > 1 else "",
        "labels": "LA: largest algebraic, SA: smallest algebraic, LM: largest magnitude (may be "
        "negative)",
        "layout": "unsuffixed eigenvalues, vectors and traces: the combined operator (mean loss "
        "over all batches); *_per_batch: each batch, with *_per_batch_residual and "
        "*_per_batch_converged; *_mean_over_batches, *_se_over_batches: mean and standard error "
        "(std/sqrt(n)) over the n batches whose value converged (*_n_converged_over_batches); "
        "trace_stderr: Hutchinson's error of the combined trace; *_vectors: float32 unit "
        "eigenvectors over the flat parameters in the order of 'parameters'; block_top_vectors: "
        "each block's top eigenvector in its own coordinates, zero elsewhere",
    }
    if block_names:
        attrs.update(
            block_names=block_names, block_params=[b.params for b in rep.blocks], blocks=p.blocks
        )
    return arrays, attrs


def _per_batch_points(ax, a, end: str, i: int, color) -> None:
    """Each batch's value beside its epoch: filled where it converged, hollow where it did not
    (those are left out of the mean and its error bar)."""
    import numpy as np

    per, ok = a[f"{end}_per_batch"][:, :, i], a[f"{end}_per_batch_converged"][:, :, i]
    offsets = np.linspace(-0.15, 0.15, per.shape[1])
    x = a["epoch"][:, None] + offsets[None, :]
    ax.scatter(x[ok], per[ok], s=9, color=color, alpha=0.5, lw=0)
    ax.scatter(x[~ok], per[~ok], s=12, facecolors="none", edgecolors=color, alpha=0.8, lw=0.8)


def _figure(ctx, a, top_label: str, other: str | None, density, batches: int) -> None:
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
        (line,) = ax.plot(a["epoch"], a["top"][:, i], "o-", ms=3, label=f"{top_label} {i + 1}")
        ax.plot(a["epoch"][~ok], a["top"][~ok, i], "x", color=line.get_color(), ms=7)
        if batches > 1:
            _per_batch_points(ax, a, "top", i, line.get_color())
            ax.errorbar(
                a["epoch"],
                a["top_mean_over_batches"][:, i],
                yerr=a["top_se_over_batches"][:, i],
                fmt="none",
                color=line.get_color(),
                alpha=0.6,
                capsize=3,
            )
    if other:
        for i in range(a["bottom"].shape[1]):
            (line,) = ax.plot(a["epoch"], a["bottom"][:, i], "s--", ms=3, label=f"{other} {i + 1}")
            if batches > 1:
                _per_batch_points(ax, a, "bottom", i, line.get_color())
                ax.errorbar(
                    a["epoch"],
                    a["bottom_mean_over_batches"][:, i],
                    yerr=a["bottom_se_over_batches"][:, i],
                    fmt="none",
                    color=line.get_color(),
                    alpha=0.6,
                    capsize=3,
                )
    if "trace" in a:
        ax2 = ax.twinx()
        err = (
            np.hypot(a["trace_stderr"], a["trace_se_over_batches"])
            if batches > 1
            else a["trace_stderr"]
        )
        ax2.errorbar(a["epoch"], a["trace"], yerr=err, color="grey", alpha=0.6, label="trace")
        ax2.set_ylabel(f"trace ({ctx.params.trace_method}, +- 1 s.e.)", color="grey")
    if "edge_of_stability" in a:
        # a dash marker per epoch: epoch 0 has no lr, so a two-epoch series has one point and no
        # line
        ax.plot(
            a["epoch"],
            a["edge_of_stability"],
            "k:",
            lw=1.2,
            marker="_",
            ms=12,
            label="edge of stability (2/lr)",
        )
    ax.axhline(0, color="black", lw=0.6)
    ax.set_yscale("symlog", linthresh=max(1e-3, float(np.nanmax(np.abs(a["top"]))) * 1e-3))
    name = "GGN" if ctx.params.operator == "ggn" else "Hessian"
    title = f"{name} eigenvalues (x: not converged)"
    if batches > 1:
        title = (
            f"{name} eigenvalues, {batches} batches\n(lines: combined; bars: mean +- s.e. over "
            "batches)"
        )
    ax.set(xlabel="epoch", ylabel="eigenvalue", title=title)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(a["epoch"], a["subspace_overlap"], "o-", ms=3, label="subspace (mean cos^2)")
    for i in range(a["overlap"].shape[1]):
        ax.plot(a["epoch"], a["overlap"][:, i], ".:", alpha=0.7, label=f"|<v{i + 1}, prev>|")
    ax.set(
        xlabel="epoch",
        ylabel="overlap with previous epoch",
        ylim=(-0.02, 1.02),
        title="eigenvector drift",
    )
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
        axes[2].set(
            xlabel="eigenvalue",
            ylabel="density",
            title=f"spectral density, epoch {int(a['epoch'][-1])}",
        )
    ctx.out.figure(
        "hessian",
        fig,
        caption="Largest and smallest Hessian eigenvalues per epoch (symlog scale; "
        "crosses: not converged; dotted: the 2/lr edge of stability for SGD; with several batches, "
        "bars: mean +- 1 s.e. over batches beside the combined line), and how much the top "
        "eigenvectors moved since the previous epoch (1: same subspace).",
    )


def _block_figure(ctx, a, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 1 + ("block_trace" in a)
    fig, axes = plt.subplots(
        1, panels, figsize=(5.5 * panels, 4), constrained_layout=True, squeeze=False
    )
    for i, name in enumerate(names):
        axes[0, 0].plot(a["epoch"], a["block_top"][:, i], "o-", ms=3, label=name)
        if panels == 2:
            axes[0, 1].errorbar(
                a["epoch"],
                a["block_trace"][:, i],
                yerr=a["block_trace_stderr"][:, i],
                marker="o",
                ms=3,
                capsize=2,
                label=name,
            )
    axes[0, 0].set(
        xlabel="epoch",
        ylabel="top eigenvalue of the block",
        title="which layer is sharp (top eigenvalue)",
    )
    axes[0, 0].set_yscale("symlog", linthresh=1e-3)
    if panels == 2:
        axes[0, 1].set(
            xlabel="epoch", ylabel="trace of the block (+- 1 s.e.)", title="block traces"
        )
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    ctx.out.figure(
        "hessian_blocks",
        fig,
        caption="Per parameter block (a layer's weight and bias by default): the "
        "top eigenvalue and the trace of its diagonal Hessian block, per epoch, on the combined "
        "batches.",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="hessian",
            run=run,
            params=Params,
            scope="run",
            cost=cost,
            needs={"model", "analysis_batch", "config", "metrics"},
            version="3",
            summary="Largest/smallest Hessian eigenvalues (Lanczos), trace, density and per-layer "
            "blocks per epoch, over one or several batches, warm-started.",
            report_order=70,
            caption=(
                "Top eigenvalues of the loss Hessian on the analysis batch; larger values mean a "
                "sharper minimum, and gradient descent is stable only while the top one stays "
                "below 2/lr."
            ),
            headline={"top_eigenvalue": "top_eig"},
        )
    )
