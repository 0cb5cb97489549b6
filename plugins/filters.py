"""`filters` and `filters-evolution`: the first conv layer's filters as images.

The notebook scaled all filters by one global min/max, so a few large filters set
the contrast and the rest came out flat grey. Here each filter is scaled on its
own (`normalize=minmax`: to [0, 1]; `symmetric`: zero stays mid-grey, so the sign
of each weight is visible), and because that hides how large a filter is, each
figure also shows the filters' L2 norms.

- `filters` (per epoch): all filters of the first conv layer as an RGB grid.
- `filters-evolution` (over the selected epochs): one column per filter, one row per
  epoch from initialisation to the last, plus norm and change-from-init curves.

A model without a Conv2d layer (an MLP) is skipped with that reason (`probe.Skip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    normalize: str = probe.param(
        "minmax",
        "Per-filter scaling: to [0, 1], or symmetric about 0 (sign visible).",
        choices=("minmax", "symmetric"),
    )
    max_filters: int = probe.param(
        64, "Show at most this many filters (the first ones).", min=1, max=4096
    )


@dataclass(frozen=True)
class EvolutionParams:
    normalize: str = probe.param(
        "minmax",
        "Per-filter scaling: to [0, 1], or symmetric about 0 (sign visible).",
        choices=("minmax", "symmetric"),
    )
    max_filters: int = probe.param(
        64, "Columns: at most this many filters (the first ones).", min=1, max=4096
    )
    max_epochs: int = probe.param(
        12, "Rows: at most this many epochs, evenly spaced, first and last kept.", min=2, max=1000
    )


def first_conv_weight(ctx: probe.Context, epoch: int):
    """(layer name, weight [out, in, kh, kw] as float64 numpy) of the model's first Conv2d.

    Read from the stored weights (`ctx.parameters`), no model built: a run of the user's own
    class (no family) needs no code for its filters."""
    import numpy as np

    for lp in ctx.parameters(epoch):
        if lp.type == "Conv2d" and lp.weight is not None:
            return lp.name, lp.weight.astype(np.float64)
    raise probe.Skip(
        "the model has no Conv2d layer (filters are shown for convolutional models only)"
    )


def to_images(w, normalize: str):
    """[out, in, kh, kw] weights -> [out, kh, kw, 3] images in [0, 1], each filter scaled on its
    own.

    Three input channels are shown as RGB; any other count as the channel mean in grey.
    """
    import numpy as np

    img = np.transpose(w, (0, 2, 3, 1))
    if img.shape[-1] != 3:
        img = np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)
    flat = img.reshape(len(img), -1)
    if normalize == "symmetric":
        m = np.abs(flat).max(axis=1)
        m[m == 0] = 1.0
        out = 0.5 + 0.5 * flat / m[:, None]
    else:
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        span = np.where(hi > lo, hi - lo, 1.0)
        out = (flat - lo[:, None]) / span[:, None]
    return out.reshape(img.shape)


def tile(images, rows: int, cols: int, pad: int = 1):
    """Images [n, h, w, 3] laid out row-major on a white grid of rows x cols."""
    import numpy as np

    n, h, w, _ = images.shape
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3))
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = images[i]
    return grid


def run_grid(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    p = ctx.params
    name, w = first_conv_weight(ctx, ctx.epoch)
    k = min(p.max_filters, len(w))
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    norms = np.linalg.norm(w.reshape(len(w), -1), axis=1)
    fig, (ax, bx) = plt.subplots(
        2,
        1,
        figsize=(max(5.0, 0.7 * cols + 1), 0.7 * rows + 3.2),
        gridspec_kw={"height_ratios": [rows, 1.6]},
        constrained_layout=True,
    )
    ax.imshow(tile(to_images(w[:k], p.normalize), rows, cols), interpolation="nearest")
    ax.axis("off")
    ax.set_title(
        f"{name}: {k} of {len(w)} filters {w.shape[2]}x{w.shape[3]}, epoch {ctx.epoch} "
        f"(each scaled on its own: {p.normalize})",
        fontsize=9,
    )
    bx.bar(range(len(w)), norms, color="tab:blue")
    bx.set(xlabel="filter (row-major in the grid above)", ylabel="L2 norm")
    bx.set_xlim(-0.7, len(w) - 0.3)
    ctx.out.figure(
        "filters",
        fig,
        caption="First-layer filters as RGB images, each scaled on its own, with their "
        "norms (the scaling hides size). Trained filters look like oriented edges and colour "
        "blobs; noise means the layer has not learnt yet.",
    )
    ctx.out.arrays("filters", attrs={"layer": name}, weight=w.astype(np.float32), norms=norms)
    ctx.out.scalar("mean_norm", float(norms.mean()))
    ctx.out.scalar("layer", name)


def run_evolution(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    p = ctx.params
    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError(f"{ctx.run.path}: no complete epoch")
    weights = {}
    name = ""
    for e in ctx.progress(epochs, "checkpoints", total=len(epochs)):
        name, weights[e] = first_conv_weight(ctx, e)
    if len(epochs) > p.max_epochs:
        idx = np.unique(np.linspace(0, len(epochs) - 1, p.max_epochs).round().astype(int))
        shown = [epochs[i] for i in idx]
    else:
        shown = epochs
    W = np.stack([weights[e] for e in epochs])  # [E, out, in, kh, kw]
    n_filters = min(p.max_filters, W.shape[1])
    # [epochs, filters, h, w, 3]
    imgs = np.stack([to_images(weights[e][:n_filters], p.normalize) for e in shown])
    strip = tile(imgs.reshape(-1, *imgs.shape[2:]), len(shown), n_filters)

    flat = W.reshape(len(epochs), W.shape[1], -1)
    norms = np.linalg.norm(flat, axis=2)  # [E, out]
    w0 = flat[0]
    change = np.linalg.norm(flat - w0, axis=2) / np.maximum(np.linalg.norm(w0, axis=1), 1e-12)
    cos = np.sum(flat * w0, axis=2) / np.maximum(
        np.linalg.norm(flat, axis=2) * np.linalg.norm(w0, axis=1), 1e-12
    )

    width = 12.0
    strip_h = min(10.0, width * strip.shape[0] / strip.shape[1] + 0.6)
    fig = plt.figure(figsize=(width, strip_h + 3.6), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, height_ratios=[strip_h, 3.6])
    ax = fig.add_subplot(gs[0, :])
    ax.imshow(strip, interpolation="nearest")
    kh, kw = W.shape[3], W.shape[4]
    ax.set_yticks(
        [1 + r * (kh + 1) + kh / 2 - 0.5 for r in range(len(shown))],
        [str(e) for e in shown],
        fontsize=7,
    )
    every = max(1, n_filters // 32)
    ax.set_xticks(
        [1 + c * (kw + 1) + kw / 2 - 0.5 for c in range(0, n_filters, every)],
        [str(c) for c in range(0, n_filters, every)],
        fontsize=6,
    )
    ax.set_ylabel("epoch (0 = initialisation)")
    ax.set_xlabel("filter")
    for sp in ax.spines.values():
        sp.set_visible(False)
    ax.set_title(
        f"{name}: filters over training, {n_filters} of {W.shape[1]} "
        f"({p.normalize}, each filter and epoch scaled on its own)",
        fontsize=9,
    )
    bx = fig.add_subplot(gs[1, 0])
    bx.plot(epochs, norms, color="tab:blue", alpha=0.25, lw=0.8)
    bx.plot(epochs, norms.mean(axis=1), color="black", lw=2, label="mean")
    bx.set(ylabel="filter L2 norm", title="norm of every filter", xlabel="epoch")
    bx.legend(fontsize=7)
    cx = fig.add_subplot(gs[1, 1])
    cx.plot(epochs, change.mean(axis=1), "o-", ms=3, label="||W_e - W_0|| / ||W_0||")
    cx.plot(epochs, cos.mean(axis=1), "o-", ms=3, label="cosine(W_e, W_0)")
    cx.set(xlabel="epoch", title="distance from initialisation (mean over filters)")
    cx.legend(fontsize=7)
    for a in (bx, cx):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    ctx.out.figure(
        "filters_evolution",
        fig,
        caption="Each first-layer filter (column) from initialisation to the last "
        "selected epoch (rows), with filter norms and the distance from initialisation; a filter "
        "whose cosine with its initial value stays near 1 has barely learnt.",
    )
    ctx.out.arrays(
        "filters_evolution",
        attrs={"layer": name},
        epochs=np.array(epochs),
        norms=norms,
        relative_change=change,
        cosine_to_init=cos,
    )
    ctx.out.scalar("relative_change", float(change[-1].mean()))
    ctx.out.scalar("cosine_to_init", float(cos[-1].mean()))
    ctx.out.scalar("layer", name)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="filters",
            run=run_grid,
            params=Params,
            scope="epoch",
            needs={"model"},
            summary="The first conv layer's filters as an image grid (each filter scaled on its "
            "own), with norms.",
            report_order=20,
            caption=(
                "First-layer convolution filters shown as colour patches; smooth oriented edges "
                "and colour blobs mean the layer has learned, salt-and-pepper noise means it has "
                "not (yet)."
            ),
        )
    )
    register(
        probe.Analysis(
            name="filters-evolution",
            run=run_evolution,
            params=EvolutionParams,
            scope="run",
            needs={"model"},
            summary="The first conv layer's filters from initialisation to the last epoch, with "
            "norm and change.",
            report_order=110,
        )
    )
