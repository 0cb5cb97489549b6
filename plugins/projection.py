"""`projection`: PCA and t-SNE of a layer's probe-set activations, epoch by epoch, on shared axes.

Run-scoped on purpose: a projection fitted per epoch has axes that flip and rotate
from one epoch to the next, so the panels could not be compared. Here PCA axes are
fitted once on the last selected epoch (or each epoch's PCA is Procrustes-aligned
to it, `align=procrustes`), and each epoch's t-SNE starts from its coordinates on
those axes and is then rotated onto the last epoch's embedding. The same probe
images are plotted in every panel, coloured by class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import probe

MAX_PANELS = 25


@dataclass(frozen=True)
class Params:
    layer: str = probe.param(
        "penultimate", "Recorded layer to project ('penultimate' = the last recorded layer)."
    )
    method: str = probe.param(
        "both", "Which projections to compute.", choices=("pca", "tsne", "both")
    )
    kind: str = probe.param(
        "pooled",
        "Per-channel pooled activations, or full maps (layers dumped with --full-maps).",
        choices=("pooled", "maps"),
    )
    align: str = probe.param(
        "reference",
        "PCA axes: fitted on the last epoch, or per-epoch PCA rotated onto it.",
        choices=("reference", "procrustes"),
    )
    perplexity: float = probe.param(
        30.0, "t-SNE perplexity (capped at (N-1)/3).", min=2, max=10_000
    )
    tsne_backend: str = probe.param(
        "auto",
        "t-SNE implementation: openTSNE if installed, else scikit-learn; "
        "or pinned (the two give different, equally good embeddings).",
        choices=("auto", "opentsne", "sklearn"),
    )
    seed: int = probe.param(0, "t-SNE random seed.", min=0, max=2**32 - 1)
    same_scale: bool = probe.param(
        False,
        "Give every panel the same limits (else each is zoomed to its points; "
        "the axes' directions are shared either way).",
    )


def panel_epochs(epochs: list[int], limit: int = MAX_PANELS) -> list[int]:
    """At most `limit` epochs, evenly spaced, always with the first and the last."""
    if len(epochs) <= limit:
        return list(epochs)
    import numpy as np

    idx = np.unique(np.linspace(0, len(epochs) - 1, limit).round().astype(int))
    return [epochs[i] for i in idx]


def knn_accuracy(Y, labels, k: int = 10) -> float:
    """Leave-one-out k-NN class accuracy in a 2-D embedding: how well classes separate locally.

    k is lowered below the smallest class's size, so a tiny probe set can still score.
    """
    import numpy as np

    d = np.linalg.norm(Y[:, None, :] - Y[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    smallest = int(np.unique(labels, return_counts=True)[1].min())
    k = max(1, min(k, smallest - 1))
    nn_idx = np.argsort(d, axis=1)[:, :k]
    votes = labels[nn_idx]
    pred = np.array([np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes])
    return float(np.mean(pred == labels))


def plot_grid(
    coords: dict,
    labels,
    class_names: list[str],
    titles: dict,
    suptitle: str,
    axis_labels: tuple[str, str],
    same_scale: bool,
):
    """One panel per epoch with equal aspect, one legend with the class names.

    Early epochs' activations are often far less spread than late ones: with one
    scale for all panels they shrink to a dot, so by default each panel is zoomed
    to its own points (the titles give the spread) and `same_scale` shares limits.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    epochs = list(coords)
    n = len(epochs)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    allc = np.concatenate([coords[e] for e in epochs])
    lo, hi = np.percentile(allc, 0.5, axis=0), np.percentile(allc, 99.5, axis=0)
    pad = 0.05 * (hi - lo + 1e-12)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.8 * cols + 1.6, 2.8 * rows + 0.6),
        squeeze=False,
        sharex=same_scale,
        sharey=same_scale,
        constrained_layout=True,
    )
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    handles = []
    size = 4 if len(labels) > 300 else 12
    for ax, e in zip(axes.flat, epochs, strict=False):
        Y = coords[e]
        for c, cname in enumerate(class_names):
            sel = labels == c
            if sel.any():
                h = ax.scatter(
                    Y[sel, 0],
                    Y[sel, 1],
                    s=size,
                    color=cmap(c % cmap.N),
                    alpha=0.75,
                    linewidths=0,
                    label=cname,
                )
                if e == epochs[0]:
                    handles.append(h)
        ax.set_title(titles[e], fontsize=8)
        if same_scale:
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        else:
            ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(axis_labels[0], fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(axis_labels[1], fontsize=7)
    fig.legend(
        handles=handles, loc="outside right center", fontsize=7, markerscale=3, frameon=False
    )
    fig.suptitle(suptitle, fontsize=10)
    return fig


class EpochActivations(Mapping):
    """epoch -> [N, D] activations, read from the dump on each access.

    Full feature maps are ~130 MB per epoch for 1,000 images; holding every
    epoch's at once could exhaust memory, so nothing is kept.
    """

    def __init__(self, ctx: probe.Context, layer: str, kind: str, epochs: list[int], n: int):
        self.ctx, self.layer, self.kind, self.epochs, self.n = ctx, layer, kind, epochs, n

    def __getitem__(self, epoch: int):
        if epoch not in self.epochs:
            raise KeyError(epoch)
        a = self.ctx.activations(self.layer, epoch, self.kind)
        if a.shape[0] != self.n:
            raise probe.ProbeError(
                f"{self.ctx.run.path}: epoch {epoch}'s activation dump has {a.shape[0]} images, "
                f"the probe set {self.n}"
            )
        return a.reshape(a.shape[0], -1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epochs)

    def __len__(self) -> int:
        return len(self.epochs)


def _spread(Y) -> float:
    """Root of the total variance of 2-D points: how big the cloud is, for the titles."""
    return float(Y.var(axis=0).sum() ** 0.5)


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from probe.numerics import pca_across_epochs, procrustes_align, tsne, tsne_backend

    p = ctx.params
    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError(f"{ctx.run.path}: no complete epoch to project")
    layer = ctx.resolve_layer(p.layer, epochs[-1])
    labels = np.asarray(ctx.probe_set().labels, dtype=np.int64)
    names = ctx.class_names()
    X = EpochActivations(ctx, layer, p.kind, epochs, len(labels))
    shown = panel_epochs(epochs)
    what = f"{layer} ({p.kind}, {len(labels)} probe images)"
    arrays: dict[str, np.ndarray] = {"epochs": np.array(epochs), "labels": labels}

    ref, projs = pca_across_epochs(X, 2, align=p.align)
    pca_xy = {pr.epoch: pr.projections for pr in projs}
    if p.method in ("pca", "both"):
        evr = {pr.epoch: pr.explained_variance_ratio for pr in projs}
        if p.align == "reference":
            titles = {
                e: f"epoch {e}: {100 * evr[e][0]:.0f}% + {100 * evr[e][1]:.0f}% var., "
                f"spread {_spread(pca_xy[e]):.2g}"
                for e in shown
            }
            how = (
                f"axes = PCs of epoch {epochs[-1]} (PC1 "
                f"{100 * ref.explained_variance_ratio[0]:.1f}%, PC2 "
                f"{100 * ref.explained_variance_ratio[1]:.1f}% of its variance)"
            )
        else:
            titles = {
                e: f"epoch {e}: {100 * evr[e].sum():.0f}% var., spread {_spread(pca_xy[e]):.2g}"
                for e in shown
            }
            how = f"per-epoch PCA, rotated onto epoch {epochs[-1]}'s"
        fig = plot_grid(
            {e: pca_xy[e] for e in shown},
            labels,
            names,
            titles,
            f"PCA of {what}\n{how}",
            ("PC1", "PC2") if p.align == "reference" else ("aligned axis 1", "aligned axis 2"),
            p.same_scale,
        )
        ctx.out.figure(
            "pca",
            fig,
            caption="PCA of the probe set per epoch on shared axes; class clusters "
            "pulling apart over epochs is the representation becoming class-selective. Titles: "
            "share of that epoch's variance along each axis.",
        )
        arrays["pca"] = np.stack([pca_xy[e] for e in epochs]).astype(np.float32)
        arrays["pca_explained_variance_ratio"] = np.stack([evr[e] for e in epochs])
        arrays["pca_components"] = ref.components
        ctx.out.scalar("pca_pc1_var", float(ref.explained_variance_ratio[0]))
        ctx.out.scalar("pca_pc2_var", float(ref.explained_variance_ratio[1]))
        ctx.out.scalar("pca_knn_acc", knn_accuracy(pca_xy[epochs[-1]], labels))

    if p.method in ("tsne", "both"):
        try:
            backend = tsne_backend(p.tsne_backend)
        except ImportError as exc:
            raise probe.UsageError("--param tsne_backend", str(exc)) from None
        ts: dict[int, np.ndarray] = {}
        order = [epochs[-1], *epochs[:-1]]  # the last first: the others are rotated onto it
        for e in ctx.progress(order, "t-SNE", total=len(order)):
            Y = tsne(X[e], perplexity=p.perplexity, seed=p.seed, init=pca_xy[e], backend=backend)
            ts[e] = Y if e == epochs[-1] else procrustes_align(Y, ts[epochs[-1]])
        ts[epochs[-1]] = ts[epochs[-1]] - ts[epochs[-1]].mean(axis=0)
        acc = {e: knn_accuracy(ts[e], labels) for e in epochs}
        titles = {e: f"epoch {e}: k-NN acc {acc[e]:.2f}" for e in shown}
        perp = min(p.perplexity, (len(labels) - 1) / 3)
        fig = plot_grid(
            {e: ts[e] for e in shown},
            labels,
            names,
            titles,
            f"t-SNE of {what}\nperplexity {perp:.3g} ({backend}), started from the shared PCA "
            f"axes, rotated onto epoch {epochs[-1]}'s",
            ("t-SNE 1", "t-SNE 2"),
            p.same_scale,
        )
        ctx.out.figure(
            "tsne",
            fig,
            caption="t-SNE of the probe set per epoch, aligned across epochs; only "
            "neighbourhoods mean something (not distances between clusters). Titles: leave-one-out "
            "k-nearest-neighbour class accuracy (k = 10, fewer for tiny classes) in the embedding.",
        )
        arrays["tsne"] = np.stack([ts[e] for e in epochs]).astype(np.float32)
        arrays["tsne_knn_acc"] = np.array([acc[e] for e in epochs])
        ctx.out.scalar("tsne_knn_acc", acc[epochs[-1]])
        ctx.out.scalar("tsne_backend", backend)

    ctx.out.arrays(
        "projection",
        attrs={"layer": layer, "kind": p.kind, "align": p.align, "class_names": names},
        **arrays,
    )
    ctx.out.scalar("layer", layer)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="projection",
            run=run,
            params=Params,
            scope="run",
            needs={"activations", "probe_set"},
            summary="PCA and t-SNE of a layer's probe-set activations per epoch, on axes shared "
            "across epochs.",
            report_order=30,
            caption=(
                "The probe images' activations projected to 2-D and coloured by class; tighter, "
                "better-separated class clusters mean more linearly separable features."
            ),
        )
    )
