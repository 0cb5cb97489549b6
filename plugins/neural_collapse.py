"""`neural-collapse`: NC1-NC4 (Papyan, Han & Donoho 2020) per epoch, as the paper's log curves.

On the penultimate layer (the last recorded layer, the classifier's input) by default, or
on every recorded layer (`layers=all`; conv layers as the dump stores them, averaged over
space), for every selected epoch, on the probe set:
- NC1: within-class variability relative to between-class, tr(Sigma_W Sigma_B^+) / C;
- NC2: the class means' (and classifier rows') norms' coefficient of variation, and how
  far their pairwise cosines are from -1/(C-1) (a simplex equiangular tight frame);
- NC3: the distance between the normalised classifier weights (the model's last
  `nn.Linear`) and the normalised centred class means (penultimate layer only);
- NC4: the share of probe images on which the network's prediction (the dumped logits)
  differs from the nearest class centre.
Every number's definition, and what makes it unreliable here (few images per class, a
rank-deficient or ill-conditioned Sigma_B), is stored with it. Numerics:
`probe.numerics.collapse` (docs/dynamics.md).

Where the features come from is one function per source (`SOURCES`): the probe set
today; training images, once runs record per-example outputs on them, are a second entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import probe

# The headline measures: probe compare's columns and the per-layer table's metrics.
MEASURES = ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc3", "nc4")


@dataclass(frozen=True)
class Params:
    layers: str = probe.param(
        "penultimate",
        "Layers: penultimate (the classifier's input), all (every recorded layer), or a "
        "comma-separated list.",
    )

    def __post_init__(self) -> None:
        if len(self.layers) > 10_000:
            raise ValueError("layers must be at most 10000 characters")


@dataclass
class Features:
    """What one source gives for one epoch: features per layer, labels, network predictions."""

    per_layer: dict[str, Any]  # layer -> [N, d] float32
    labels: Any  # [N] int
    predictions: Any  # [N] int, the network's argmax
    description: str


def probe_set_features(ctx: probe.Context, layers: list[str], epoch: int) -> Features:
    """The probe set's dumped (pooled) activations, its labels, and the dumped logits' argmax."""
    import numpy as np

    labels = np.asarray(ctx.probe_set().labels)
    logits = ctx.activations(layers[-1], epoch, kind="logits")
    per_layer = {n: ctx.activations(n, epoch) for n in layers}
    if len(logits) != len(labels) or any(len(v) != len(labels) for v in per_layer.values()):
        raise probe.ProbeError(
            f"epoch {epoch}: the activation dump and the stored probe set hold different numbers "
            "of images"
        )
    return Features(
        per_layer,
        labels,
        logits.argmax(axis=1),
        f"probe set ({len(labels)} validation images), pooled activations as dumped",
    )


# Where features come from. A source reads through the Context only (declare its needs).
SOURCES: dict[str, Callable[[probe.Context, list[str], int], Features]] = {
    "probe_set": probe_set_features,
}


def classifier(ctx: probe.Context, epoch: int, dim: int) -> tuple[Any, str]:
    """(weight [classes, dim] or None, why not) of the model's last `nn.Linear`."""
    linears = [lp for lp in ctx.parameters(epoch) if lp.type == "Linear"]
    if not linears:
        return None, "the model has no nn.Linear layer: NC3 needs a linear classifier"
    w = linears[-1].weight
    if w is None or w.ndim != 2 or w.shape[1] != dim:
        return None, (
            f"the last nn.Linear ({linears[-1].name}) takes {None if w is None else w.shape[1]} "
            f"inputs, the penultimate layer has {dim} features: not the classifier of this layer"
        )
    return w, f"{linears[-1].name}.weight"


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics import collapse as N
    from probe_plugins.linear_probe import select_layers

    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError("neural-collapse: no complete epoch selected")
    source = "probe_set"
    layers = select_layers(ctx, ctx.params.layers, epochs[-1])
    penultimate = ctx.layers(epochs[-1])[-1]
    n_classes = len(ctx.class_names())
    results: dict[int, dict[str, Any]] = {}
    for e in ctx.progress(epochs, "epochs", total=len(epochs)):
        feats = SOURCES[source](ctx, layers, e)
        if len(np.unique(feats.labels)) < 2:
            raise probe.Skip("the probe set holds one class: no class means to compare")
        results[e] = {}
        for name, h in feats.per_layer.items():
            weight, why = classifier(ctx, e, h.shape[1]) if name == penultimate else (None, "")
            r = N.neural_collapse(
                h,
                feats.labels,
                predictions=feats.predictions,
                classifier_weight=weight,
                num_classes=n_classes,
            )
            if name == penultimate and weight is None:
                r.notes.append(f"NC3 not measured: {why}")
            elif name != penultimate:
                r.notes.append("NC3 not measured: only the penultimate layer feeds the classifier")
            results[e][name] = r
    _write(ctx, results, layers, epochs, penultimate, feats.description, source)


def _series(results: dict, layers: list[str], epochs: list[int], key: str):
    import numpy as np

    def value(e: int, n: str) -> float:
        r = results[e].get(n)
        v = None if r is None else getattr(r, key)
        return np.nan if v is None else float(v)

    return np.array([[value(e, n) for e in epochs] for n in layers])


def _write(ctx, results, layers, epochs, penultimate, description, source) -> None:
    import numpy as np

    first = next(iter(results[epochs[0]].values()))
    keys = [k for k in first.__dict__ if k != "notes"]
    arrays = {k: _series(results, layers, epochs, k) for k in keys}
    definitions = {
        "mu_G": "mean of the class means",
        "Sigma_W": "(1/N) sum_i (h_i - mu_y_i)(h_i - mu_y_i)^T",
        "Sigma_B": "(1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T",
        "nc1": "tr(Sigma_W Sigma_B^+)/C, pseudo-inverse on the top min(C-1, d) eigen-directions",
        "nc2_equinorm_*": "std (ddof=1) / mean of the norms of mu_c - mu_G (means) or of w_c "
        "(weights)",
        "nc2_equiangular_*": "mean over pairs c != c' of |cos + 1/(C-1)| (0: simplex ETF)",
        "nc2_cosine_std_*": "std over pairs of the cosines",
        "nc3": "||W/||W||_F - M^T/||M||_F||_F^2, W the last nn.Linear's weight rows of the "
        "classes present, bias ignored",
        "nc4": "share of images whose network prediction differs from the nearest class mean",
    }
    last = epochs[-1]
    doc = {
        "epochs": epochs,
        "layers": layers,
        "penultimate": penultimate,
        "data": description,
        "source": source,
        "definitions": definitions,
        "results": {str(e): {n: r.__dict__ for n, r in results[e].items()} for e in epochs},
        "warnings": sorted({w for e in epochs for r in results[e].values() for w in r.notes}),
    }
    ctx.out.json("neural_collapse", doc)
    ctx.out.arrays(
        "neural_collapse",
        attrs={"layers": layers, "data": description, "definitions": definitions},
        epochs=np.array(epochs),
        **arrays,
    )
    ctx.out.layer_scalars(
        "neural_collapse_layers",
        {n: {k: getattr(r, k) for k in MEASURES} for n, r in results[last].items()},
    )
    head_layer = penultimate if penultimate in results[last] else layers[-1]
    head = results[last][head_layer]
    ctx.out.scalar("layer", head_layer)
    for k in MEASURES:
        ctx.out.scalar(k, getattr(head, k))
    ctx.out.scalar("ncc_accuracy", head.ncc_accuracy)
    ctx.out.scalar("sigma_b_condition", head.sigma_b_condition)
    ctx.out.scalar("reliable", not head.notes or all(w.startswith("NC3") for w in head.notes))
    _figure(ctx, arrays, layers, epochs, penultimate)


def _figure(ctx, arrays, layers, epochs, penultimate) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = ctx.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    panels = [
        ("nc1", "-", "NC1: tr(Sigma_W Sigma_B^+)/C"),
        ("nc2_equinorm_means", "-", "NC2: CV of mean norms (solid), |cos + 1/(C-1)| (dashed)"),
        ("nc2_equiangular_means", "--", None),
        ("nc3", "-", "NC3: ||W/||W|| - M/||M|| ||^2 (penultimate)"),
        ("nc4", "-", "NC4: disagreement with nearest centre"),
    ]
    ax_of = {"nc1": 0, "nc2_equinorm_means": 1, "nc2_equiangular_means": 1, "nc3": 2, "nc4": 3}
    for key, style, title in panels:
        ax = axes[ax_of[key]]
        for i, name in enumerate(layers):
            v = arrays[key][i]
            if np.any(np.isfinite(v)):  # log axes: an exact 0 is drawn at 1e-12
                ax.plot(
                    epochs,
                    np.clip(v, 1e-12, None),
                    style,
                    marker="o",
                    ms=3,
                    color=cmap(i / max(1, len(layers) - 1)),
                    label=name if style == "-" else None,
                )
        if title:
            ax.set_title(title, fontsize=9)
    if penultimate in layers:
        i = layers.index(penultimate)
        for key, style, label in (
            ("nc2_equinorm_weights", "-", "classifier rows: CV"),
            ("nc2_equiangular_weights", "--", "classifier rows: |cos + 1/(C-1)|"),
        ):
            if np.any(np.isfinite(arrays[key][i])):
                axes[1].plot(
                    epochs,
                    np.clip(arrays[key][i], 1e-12, None),
                    style,
                    color="tab:red",
                    label=label,
                )
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, title="layer", title_fontsize=7)
    axes[1].legend(fontsize=7)
    ctx.out.figure(
        "neural_collapse",
        fig,
        caption="Neural collapse per epoch on the probe set, log scale as in Papyan et al. 2020: "
        "each measure falls towards 0 as the features collapse to their class means, the means "
        "to a simplex ETF, the classifier to the means and the decision to the nearest centre.",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="neural-collapse",
            run=run,
            params=Params,
            scope="run",
            needs={"activations", "probe_set", "checkpoint"},
            summary="Neural collapse NC1-NC4 (Papyan et al. 2020) per epoch on the penultimate "
            "(or every recorded) layer, on the probe set.",
            report_order=150,
            caption=(
                "Neural collapse measures per epoch on log axes; each falls towards 0 as the "
                "features collapse to their class means."
            ),
            headline={"nc1": "NC1"},
        )
    )
