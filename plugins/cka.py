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

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    estimator: str = probe.param(
        "biased",
        "HSIC estimator: biased (Kornblith et al. 2019) or debiased "
        "(Song et al. 2012 / Nguyen et al. 2021).",
        choices=("biased", "debiased"),
    )


def _label(estimator: str) -> str:
    return "linear CKA" if estimator == "biased" else "linear CKA (debiased)"


def _heatmap(ax, M, xlabels, ylabels, *, annotate: bool, xrot: int = 45):
    import numpy as np

    im = ax.imshow(M, vmin=0, vmax=1, cmap="magma", interpolation="nearest", aspect="auto")
    ax.set_xticks(
        range(len(xlabels)), xlabels, rotation=xrot, ha="right" if xrot else "center", fontsize=8
    )
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    if annotate:
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                v = M[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if v > 0.6 else "white",
                    )
    return im


def run_layers(ctx: probe.Context) -> None:
    """CKA between every pair of recorded layers at one epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from probe.numerics import cka_matrix

    layers = ctx.layers()
    reps = {name: ctx.activations(name) for name in layers}
    est = ctx.params.estimator
    M = cka_matrix(reps, estimator=est)
    n = len(layers)
    fig, ax = plt.subplots(figsize=(1.0 * n + 2.5, 0.9 * n + 1.5), constrained_layout=True)
    im = _heatmap(ax, M, layers, layers, annotate=n <= 16)
    fig.colorbar(im, ax=ax, label=_label(est))
    ax.set_title(
        f"{_label(est)} between layers, epoch {ctx.epoch} (pooled activations, "
        f"{next(iter(reps.values())).shape[0]} probe images)",
        fontsize=9,
    )
    ctx.out.figure(
        "cka_layers",
        fig,
        caption=f"{_label(est)} ({est} HSIC) between every pair of recorded layers (1 = the same "
        "representation up to rotation and scale); bright off-diagonal blocks are layers that "
        "add little.",
    )
    ctx.out.arrays("cka_layers", attrs={"layers": layers, "estimator": est}, cka=M)
    if n >= 2:
        adjacent = np.array([M[i, i + 1] for i in range(n - 1)])
        ctx.out.scalar("adjacent_mean", float(np.nanmean(adjacent)))
        ctx.out.scalar("first_last", float(M[0, -1]))


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
    im = _heatmap(ax, M, [str(e) for e in epochs], layers, annotate=len(epochs) <= 12, xrot=0)
    ax.set_xlabel("epoch")
    if len(epochs) > 25:
        step = int(np.ceil(len(epochs) / 25))
        ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]], rotation=0)
    fig.colorbar(im, ax=ax, label=f"{_label(est)} with epoch {last}")
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
        caption=f"{_label(est)} ({est} HSIC) of each layer's probe-set representation with the "
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
