"""The hessian analysis's stored arrays and its figures: one drawing code path for the plugin
(one point per epoch) and for `HessianResult.plot()` (one point, the model analysed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from probe import numerics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from probe.library.curvature import HessianParams

__all__ = [
    "BLOCKS_CAPTION",
    "HESSIAN_CAPTION",
    "block_figure",
    "density_panel",
    "hessian_figure",
    "series",
    "single_figure",
]


def series(rows: list, p: HessianParams) -> tuple[dict, dict]:
    """The per-epoch arrays (HDF5) and attributes of a list of (epoch, HessianReport).

    Unsuffixed eigenvalue and trace arrays are the combined operator's (all B batches'
    mean loss); `*_per_batch` (epochs, B, ...) are each batch's, `*_mean_over_batches`
    and `*_se_over_batches` their mean and standard error. Eigenvectors are stored in
    float32 with their eigenvalues and residuals, so residuals can be rechecked."""
    import numpy as np

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
                trace_se_over_batches=np.array([numerics.standard_error(v) for v in per]),
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


def hessian_figure(
    a: dict,
    top_label: str,
    other: str | None,
    density: Any,
    batches: int,
    trace_method: str,
    operator: str,
    xlabel: str = "epoch",
) -> Figure:
    """The eigenvalue, drift and density panels of `series` arrays (one point per row)."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 2 + (density is not None)
    fig = Figure(figsize=(5 * panels, 4), constrained_layout=True)
    axes = fig.subplots(1, panels)
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
        ax2.set_ylabel(f"trace ({trace_method}, +- 1 s.e.)", color="grey")
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
    name = "GGN" if operator == "ggn" else "Hessian"
    title = f"{name} eigenvalues (x: not converged)"
    if batches > 1:
        title = (
            f"{name} eigenvalues, {batches} batches\n(lines: combined; bars: mean +- s.e. over "
            "batches)"
        )
    ax.set(xlabel=xlabel, ylabel="eigenvalue", title=title)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(a["epoch"], a["subspace_overlap"], "o-", ms=3, label="subspace (mean cos^2)")
    for i in range(a["overlap"].shape[1]):
        ax.plot(a["epoch"], a["overlap"][:, i], ".:", alpha=0.7, label=f"|<v{i + 1}, prev>|")
    ax.set(
        xlabel=xlabel,
        ylabel="overlap with previous epoch",
        ylim=(-0.02, 1.02),
        title="eigenvector drift",
    )
    for a_ in axes[:2]:
        a_.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    if density is not None:
        density_panel(axes[2], density, f"spectral density, epoch {int(a['epoch'][-1])}")
    return fig


def density_panel(ax: Any, density: Any, title: str) -> None:
    """The SLQ density, smoothed, on a log scale (a spectrum spans many decades)."""
    import numpy as np
    import torch

    lo, hi = float(density.nodes.min()), float(density.nodes.max())
    pad = 0.05 * (hi - lo or 1.0)
    grid = torch.linspace(lo - pad, hi + pad, 600, dtype=torch.float64)
    curve = density.curve(grid, sigma=(hi - lo or 1.0) / 200).numpy()
    ax.semilogy(grid.numpy(), np.maximum(curve, 1e-12))
    ax.set(xlabel="eigenvalue", ylabel="density", title=title)


def single_figure(r: Any) -> Figure:
    """One model's `HessianResult`: its eigenvalues (hollow: not converged), the trace in the
    title, and the density when there is one. (The plugin's figure has one point per epoch.)"""
    from matplotlib.figure import Figure

    density = r.report.density
    fig = Figure(figsize=(5 * (1 + (density is not None)), 4), constrained_layout=True)
    axes = fig.subplots(1, 1 + (density is not None), squeeze=False)[0]
    ax = axes[0]
    values = [*r.eigenvalues, *r.bottom_eigenvalues]
    done = [*r.converged, *r.bottom_converged]
    labels = [f"{r.which} {i + 1}" for i in range(len(r.eigenvalues))]
    labels += [f"SA {i + 1}" for i in range(len(r.bottom_eigenvalues))]
    for i, (v, ok) in enumerate(zip(values, done, strict=True)):
        color = "C0" if i < len(r.eigenvalues) else "C2"
        ax.vlines(i, 0, v, color=color, lw=2)
        ax.plot(i, v, "o", ms=7, color=color, mfc=color if ok else "white")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(values)), labels)
    ax.set_xlim(-0.6, len(values) - 0.4)
    big = max((abs(v) for v in values), default=1.0) or 1.0
    ax.set_yscale("symlog", linthresh=max(1e-3, big * 1e-3))
    name = "GGN" if r.params.operator == "ggn" else "Hessian"
    title = f"{name} eigenvalues, {r.images:,} images (hollow: not converged)"
    if r.trace is not None:
        title += f"\ntrace {r.trace:.4g} +- {r.trace_stderr:.2g} (1 s.e.)"
    ax.set(ylabel="eigenvalue", title=title)
    if density is not None:
        density_panel(axes[1], density, "spectral density (SLQ)")
    return fig


def block_figure(a: dict, names: list[str]) -> Figure:
    """Each block's top eigenvalue (and trace) per row of `series` arrays."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 1 + ("block_trace" in a)
    fig = Figure(figsize=(5.5 * panels, 4), constrained_layout=True)
    axes = fig.subplots(1, panels, squeeze=False)
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
    return fig


HESSIAN_CAPTION = (
    "Largest and smallest Hessian eigenvalues per epoch (symlog scale; "
    "crosses: not converged; dotted: the 2/lr edge of stability for SGD; with several batches, "
    "bars: mean +- 1 s.e. over batches beside the combined line), and how much the top "
    "eigenvectors moved since the previous epoch (1: same subspace)."
)
BLOCKS_CAPTION = (
    "Per parameter block (a layer's weight and bias by default): the "
    "top eigenvalue and the trace of its diagonal Hessian block, per epoch, on the combined "
    "batches."
)
