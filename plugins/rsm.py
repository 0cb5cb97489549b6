"""`rsm`: the cosine representational similarity matrix of the probe set at one layer.

The notebook plotted cosine similarities of 200 unsorted training images, which
shows nothing: here the 1,000 probe images are sorted by class, so class structure
appears as bright diagonal blocks, and it is summarised as two numbers, the mean
similarity within a class and between classes (the diagonal, always 1, left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    layer: str = probe.param(
        "penultimate", "Recorded layer ('penultimate' = the last recorded layer)."
    )
    kind: str = probe.param(
        "pooled",
        "Per-channel pooled activations, or full maps (layers dumped with --full-maps).",
        choices=("pooled", "maps"),
    )
    center: bool = probe.param(
        False,
        "Subtract the probe-set mean first (after ReLU every cosine is positive and "
        "often close to 1; centring shows the structure around the mean).",
    )


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from probe.numerics import cosine_rsm, rsm_class_summary

    p = ctx.params
    layer = ctx.resolve_layer(p.layer)
    labels = np.asarray(ctx.probe_set().labels, dtype=np.int64)
    X = ctx.activations(layer, kind=p.kind)
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    if X.shape[0] != len(labels):
        raise probe.ProbeError(
            f"{ctx.run.path}: activation dump and probe set disagree on the number of images"
        )
    if p.center:
        X = X - X.mean(axis=0)
    s = rsm_class_summary(cosine_rsm(X), labels)
    names = ctx.class_names()
    cls_names = [names[c] if c < len(names) else str(c) for c in s.classes]

    lo = -1.0 if s.sorted_rsm.min() < 0 else 0.0
    cmap = "RdBu_r" if lo < 0 else "viridis"
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [1.15, 1]}, constrained_layout=True
    )
    im = ax.imshow(s.sorted_rsm, vmin=lo, vmax=1, cmap=cmap, interpolation="nearest")
    bounds = np.flatnonzero(np.diff(s.sorted_labels)) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=0.6)
        ax.axvline(b, color="white", lw=0.6)
    edges = np.concatenate([[-0.5], bounds, [len(labels) - 0.5]])
    centres = (edges[:-1] + edges[1:]) / 2
    ax.set_xticks(centres, cls_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(centres, cls_names, fontsize=8)
    ax.set_title(f"probe images sorted by class (n={len(labels)})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")

    im2 = bx.imshow(s.class_means, vmin=lo, vmax=1, cmap=cmap)
    for i in range(len(cls_names)):
        for j in range(len(cls_names)):
            v = s.class_means[i, j]
            if np.isfinite(v):
                bx.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if (v - lo) / (1 - lo) > 0.6 else "white",
                )
    bx.set_xticks(range(len(cls_names)), cls_names, rotation=60, ha="right", fontsize=8)
    bx.set_yticks(range(len(cls_names)), cls_names, fontsize=8)
    bx.set_title("mean similarity per pair of classes (diagonal: distinct images)", fontsize=9)
    fig.colorbar(im2, ax=bx, shrink=0.8)
    fig.suptitle(
        f"cosine RSM of {layer} ({p.kind}{', centred' if p.center else ''}), epoch {ctx.epoch}: "
        f"within-class {s.within:.3f}, between-class {s.between:.3f}, contrast {s.contrast:+.3f}",
        fontsize=10,
    )
    ctx.out.figure(
        "rsm",
        fig,
        caption="Cosine similarity between probe images sorted by class; bright "
        "diagonal blocks on a darker background mean the layer groups images by class. "
        "Contrast = within - between.",
    )
    ctx.out.arrays(
        "rsm",
        attrs={"layer": layer, "kind": p.kind, "center": p.center, "class_names": cls_names},
        sorted_rsm=s.sorted_rsm.astype(np.float32),
        order=s.order,
        sorted_labels=s.sorted_labels,
        class_means=s.class_means,
    )
    ctx.out.scalar("within", s.within)
    ctx.out.scalar("between", s.between)
    ctx.out.scalar("contrast", s.contrast)
    ctx.out.scalar("layer", layer)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="rsm",
            run=run,
            params=Params,
            scope="epoch",
            needs={"activations", "probe_set"},
            summary="Cosine similarity matrix of the probe set at a layer, sorted by class; "
            "within- vs between-class.",
            report_order=40,
            caption=(
                "Representational similarity matrix of the probe images sorted by class; bright "
                "blocks on the diagonal mean the layer represents images of one class alike."
            ),
        )
    )
