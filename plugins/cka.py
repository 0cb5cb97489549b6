"""`cka` and `cka-epochs`: linear CKA between layers, and between each epoch and the last.

Linear CKA (Kornblith et al. 2019) compares two representations of the same probe
images, whatever their widths, and is unchanged by rotating or rescaling either,
so it can compare layers with each other and a layer with itself across training.

- `cka` (per epoch): every pair of recorded layers; blocks of high similarity are
  layers that compute nearly the same representation.
- `cka-epochs` (over the selected epochs): each layer at each epoch against the
  same layer at the last selected epoch; the epoch where a row reaches ~1 is when
  that layer stopped changing (lower layers usually settle first).

`estimator=biased` (default) is Kornblith et al.'s CKA from the biased HSIC; it reads
high for unrelated representations when the width is not small against the number of
probe images. `estimator=debiased` uses Song et al.'s unbiased HSIC (Nguyen et al.
2021): about 0 for unrelated representations. Every figure and array says which.
"""

from __future__ import annotations

import probe
from probe.library.representations import CKAParams as Params
from probe.library.representations import cka_label, cka_scalars, heatmap, layer_cka_figure

__all__ = ["Params", "register_analyses", "run_epochs", "run_layers"]


def run_layers(ctx: probe.Context) -> None:
    """CKA between every pair of recorded layers at one epoch."""
    from probe.numerics import cka_matrix

    layers = ctx.layers()
    reps = {name: ctx.activations(name) for name in layers}
    est = ctx.params.estimator
    M = cka_matrix(reps, estimator=est)
    title = (
        f"{cka_label(est)} between layers, epoch {ctx.epoch} (pooled activations, "
        f"{next(iter(reps.values())).shape[0]} probe images)"
    )
    ctx.out.figure(
        "cka_layers",
        layer_cka_figure(M, layers, layers, est, title),
        caption=f"{cka_label(est)} ({est} HSIC) between every pair of recorded layers (1 = the "
        "same representation up to rotation and scale); bright off-diagonal blocks are layers "
        "that add little.",
    )
    ctx.out.arrays("cka_layers", attrs={"layers": layers, "estimator": est}, cka=M)
    for name, value in cka_scalars(M).items():
        ctx.out.scalar(name, value)


def run_epochs(ctx: probe.Context) -> None:
    """CKA of each layer at each selected epoch with the same layer at the last one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from probe.numerics import cka_matrix

    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError(f"{ctx.run.path}: no complete epoch")
    last = epochs[-1]
    est = ctx.params.estimator
    layers = ctx.layers(last)
    M = np.full((len(layers), len(epochs)), np.nan)
    for i, name in enumerate(ctx.progress(layers, "layers", total=len(layers))):
        ref = ctx.activations(name, last)
        M[i] = cka_matrix([ref], [ctx.activations(name, e) for e in epochs], estimator=est)[0]

    fig, (ax, bx) = plt.subplots(
        1,
        2,
        figsize=(13, 0.55 * len(layers) + 3.2),
        gridspec_kw={"width_ratios": [1.3, 1]},
        constrained_layout=True,
    )
    im = heatmap(ax, M, [str(e) for e in epochs], layers, annotate=len(epochs) <= 12, xrot=0)
    ax.set_xlabel("epoch")
    if len(epochs) > 25:
        step = int(np.ceil(len(epochs) / 25))
        ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]], rotation=0)
    fig.colorbar(im, ax=ax, label=f"{cka_label(est)} with epoch {last}")
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(layers):
        bx.plot(epochs, M[i], "o-", ms=3, color=cmap(i / max(1, len(layers) - 1)), label=name)
    bx.set(
        xlabel="epoch",
        ylabel=f"CKA with epoch {last}",
        ylim=(min(0.0, float(np.nanmin(M, initial=0.0))) - 0.02, 1.02),
    )
    bx.xaxis.set_major_locator(MaxNLocator(integer=True))
    bx.legend(fontsize=7, title="layer (input -> output)", title_fontsize=7)
    bx.grid(alpha=0.3)
    fig.suptitle(f"How far each layer is from its final representation (epoch {last})", fontsize=10)
    ctx.out.figure(
        "cka_epochs",
        fig,
        caption=f"{cka_label(est)} ({est} HSIC) of each layer's probe-set representation with the "
        "same layer at the last selected epoch; a row reaching 1 early means that layer settled "
        "early.",
    )
    ctx.out.arrays(
        "cka_epochs",
        attrs={"layers": layers, "reference_epoch": last, "estimator": est},
        cka=M,
        epochs=np.array(epochs),
    )
    for i, name in enumerate(layers):
        ctx.out.scalar(f"first_vs_last.{name}", float(M[i, 0]))


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="cka",
            run=run_layers,
            params=Params,
            scope="epoch",
            needs={"activations"},
            summary="Linear CKA between every pair of recorded layers, as a heatmap.",
            report_order=50,
            caption=(
                "Linear CKA similarity between layers or epochs (0 to 1); values near 1 mean two "
                "representations are the same up to rotation and scale."
            ),
        )
    )
    register(
        probe.Analysis(
            name="cka-epochs",
            run=run_epochs,
            params=Params,
            scope="run",
            needs={"activations"},
            summary="Linear CKA of each layer at each epoch with the same layer at the last epoch.",
            report_order=100,
        )
    )
