"""`probe.activations`, `probe.cka`, `probe.rsm`: representations of any model, in-process.

`activations` records named layers' outputs with forward hooks (eval mode, no grad) in the
shape the run's activation dumps give the cka and rsm plugins: `kind="pooled"` (default) is
the per-channel spatial mean of a [N, C, H, W] output ([N, C]; other outputs flattened per
image), `kind="flat"` every value of each image ([N, C*H*W]). The dumps store pooled values as
float16; here they stay float32. `cka` and `rsm` take those arrays (or any [N, D] arrays) with
the parameters of the cka and rsm plugins, whose parameters and figures are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.errors import UsageError
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "CKAParams",
    "CKAResult",
    "RSMParams",
    "RSMResult",
    "activations",
    "cka",
    "cka_label",
    "heatmap",
    "layer_cka_figure",
    "rsm",
    "rsm_figure",
]

ACTIVATION_KINDS = ("pooled", "flat")


@dataclass(frozen=True)
class CKAParams:
    """The parameters of the cka and cka-epochs analyses and of `probe.cka`."""

    estimator: str = param(
        "biased",
        "HSIC estimator: biased (Kornblith et al. 2019) or debiased "
        "(Song et al. 2012 / Nguyen et al. 2021).",
        choices=("biased", "debiased"),
    )


@dataclass(frozen=True)
class RSMParams:
    """The parameters of the rsm analysis and of `probe.rsm` (where `kind` is chosen when the
    activations are taken: `probe.activations(..., kind=...)`)."""

    layer: str = param("penultimate", "Recorded layer ('penultimate' = the last recorded layer).")
    kind: str = param(
        "pooled",
        "Per-channel pooled activations, or full maps (layers dumped with --full-maps).",
        choices=("pooled", "maps"),
    )
    center: bool = param(
        False,
        "Subtract the probe-set mean first (after ReLU every cosine is positive and "
        "often close to 1; centring shows the structure around the mean).",
    )


# --- activations -----------------------------------------------------------------------------


def activations(
    model: nn.Module,
    x: Any,
    layers: list[str] | tuple[str, ...],
    *,
    kind: str = "pooled",
    n_images: int | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """`{layer: float32 [N, D] tensor}`: the outputs of the named modules (`model.named_modules()`
    names) on `x` (a tensor, an (x, y) pair, or a DataLoader; its first `n_images`), in eval mode
    without gradients, in mini-batches of `batch_size`. The model is not changed."""
    import torch

    from probe.library.batch import as_inputs, untouched

    if kind not in ACTIVATION_KINDS:
        raise UsageError("kind", f"must be one of {', '.join(ACTIVATION_KINDS)}, got {kind!r}")
    if isinstance(layers, str) or not layers:
        raise UsageError("layers", "give a non-empty list of module names, e.g. layers=['fc1']")
    if batch_size < 1:
        raise UsageError("batch_size", f"must be >= 1, got {batch_size}")
    modules = dict(model.named_modules()) if hasattr(model, "named_modules") else {}
    missing = [name for name in layers if name not in modules or not name]
    if missing:
        known = ", ".join(n for n in list(modules)[1:20] if n)
        raise UsageError("layers", f"no module named {missing[0]!r} in the model ({known}, ...)")
    inputs = as_inputs(x, n_images)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook(name: str):
        def record(_module, _args, output) -> None:
            t = output[0] if isinstance(output, (tuple, list)) else output
            t = t.detach().float()
            t = t.mean(dim=(2, 3)) if kind == "pooled" and t.dim() == 4 else t
            out[name].append(t.reshape(t.shape[0], -1).cpu())

        return record

    first = next(model.parameters(), None)
    device = first.device if first is not None else inputs.device
    with untouched(model):
        handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
        try:
            model.eval()
            with torch.no_grad():
                for i in range(0, len(inputs), batch_size):
                    model(inputs[i : i + batch_size].to(device))
        finally:
            for h in handles:
                h.remove()
    return {name: torch.cat(parts) for name, parts in out.items()}


# --- CKA -------------------------------------------------------------------------------------


def cka_label(estimator: str) -> str:
    return "linear CKA" if estimator == "biased" else "linear CKA (debiased)"


def heatmap(ax: Axes, M: Any, xlabels: list, ylabels: list, *, annotate: bool, xrot: int = 45):
    """A [0, 1] heatmap with its ticks (and values where few enough to read)."""
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


def layer_cka_figure(M: Any, rows: list, columns: list, estimator: str, title: str) -> Figure:
    """The cka plugin's heatmap of a CKA matrix (rows x columns)."""
    from matplotlib.figure import Figure

    n, m = len(rows), len(columns)
    fig = Figure(figsize=(1.0 * m + 2.5, 0.9 * n + 1.5), constrained_layout=True)
    ax = fig.subplots()
    im = heatmap(ax, M, columns, rows, annotate=max(n, m) <= 16)
    fig.colorbar(im, ax=ax, label=cka_label(estimator))
    ax.set_title(title, fontsize=9)
    return fig


def cka_scalars(M: Any) -> dict[str, float]:
    """The cka plugin's headline numbers of a layer x layer matrix: the mean CKA of adjacent
    layers and the first layer's with the last (none for a single layer)."""
    import numpy as np

    n = len(M)
    if n < 2:
        return {}
    adjacent = np.array([M[i, i + 1] for i in range(n - 1)])
    return {"adjacent_mean": float(np.nanmean(adjacent)), "first_last": float(M[0, -1])}


@dataclass(frozen=True, repr=False)
class CKAResult(Result):
    """Linear CKA between representations: `matrix[i, j]` of `rows[i]` and `columns[j]`
    (NaN where a side is constant); `adjacent_mean`, `first_last` for a square layer matrix."""

    analysis = "cka"

    matrix: Any
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    estimator: str
    images: int
    adjacent_mean: float | None = None
    first_last: float | None = None
    params: CKAParams = field(repr=False, default_factory=CKAParams)

    def _draw(self) -> Figure:
        title = f"{cka_label(self.estimator)} ({self.images} images)"
        return layer_cka_figure(
            self.matrix, list(self.rows), list(self.columns), self.estimator, title
        )


def _named(reps: Any, default: str, where: str) -> dict[str, Any]:
    import numpy as np
    import torch

    if isinstance(reps, dict):
        if not reps:
            raise UsageError(where, "is an empty dict")
        items = dict(reps)
    else:
        items = {default: reps}
    out = {}
    for name, v in items.items():
        if not (torch.is_tensor(v) or isinstance(v, np.ndarray)):
            raise UsageError(where, f"{name!r}: expected a tensor or array, got {type(v).__name__}")
        a = v.detach().cpu().double().numpy() if torch.is_tensor(v) else np.asarray(v, np.float64)
        if a.ndim < 2:
            raise UsageError(where, f"{name!r}: expected [N, D] activations, got shape {a.shape}")
        out[str(name)] = a.reshape(a.shape[0], -1)
    return out


def cka(a: Any, b: Any = None, **params: Any) -> CKAResult:
    """Linear CKA (Kornblith et al. 2019) with the cka plugin's `estimator` parameter.

    `a`, `b`: [N, ...] tensors or arrays of the same N images, or dicts of them (as
    `probe.activations` returns). `cka(acts)` with one dict: every pair of its layers (the cka
    plugin's matrix and headline numbers); `cka(a, b)`: each of a's against each of b's."""

    p = make(CKAParams, params, "cka")
    A = _named(a, "a", "a")
    B = None if b is None else _named(b, "b", "b")
    sizes = {x.shape[0] for x in [*A.values(), *(B or {}).values()]}
    if len(sizes) != 1:
        raise UsageError(
            "b" if B else "a", f"representations of different numbers of images: {sorted(sizes)}"
        )
    M = numerics.cka_matrix(A, B, estimator=p.estimator)
    rows, cols = list(A), list(A if B is None else B)
    n = sizes.pop()
    data: dict[str, Any] = {"layers": rows, "estimator": p.estimator, "cka": M}
    scalars = cka_scalars(M) if B is None else {}
    if B is not None:
        data["columns"] = cols
    data.update(scalars)
    return CKAResult(
        matrix=M,
        rows=tuple(rows),
        columns=tuple(cols),
        estimator=p.estimator,
        images=n,
        params=p,
        data=data,
        **scalars,
    )


# --- RSM -------------------------------------------------------------------------------------


def rsm_figure(s: Any, class_names: list[str], title: str) -> Figure:
    """The rsm plugin's figure of an `RSMSummary`: the sorted RSM and the class-pair means."""
    import numpy as np
    from matplotlib.figure import Figure

    lo = -1.0 if s.sorted_rsm.min() < 0 else 0.0
    cmap = "RdBu_r" if lo < 0 else "viridis"
    fig = Figure(figsize=(13, 6), constrained_layout=True)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    im = ax.imshow(s.sorted_rsm, vmin=lo, vmax=1, cmap=cmap, interpolation="nearest")
    bounds = np.flatnonzero(np.diff(s.sorted_labels)) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=0.6)
        ax.axvline(b, color="white", lw=0.6)
    edges = np.concatenate([[-0.5], bounds, [len(s.sorted_labels) - 0.5]])
    centres = (edges[:-1] + edges[1:]) / 2
    ax.set_xticks(centres, class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(centres, class_names, fontsize=8)
    ax.set_title(f"probe images sorted by class (n={len(s.sorted_labels)})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    im2 = bx.imshow(s.class_means, vmin=lo, vmax=1, cmap=cmap)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
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
    bx.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    bx.set_yticks(range(len(class_names)), class_names, fontsize=8)
    bx.set_title("mean similarity per pair of classes (diagonal: distinct images)", fontsize=9)
    fig.colorbar(im2, ax=bx, shrink=0.8)
    fig.suptitle(
        f"{title}: within-class {s.within:.3f}, between-class {s.between:.3f}, "
        f"contrast {s.contrast:+.3f}",
        fontsize=10,
    )
    return fig


def rsm_summary(X: np.ndarray, labels: np.ndarray, center: bool) -> Any:
    """The rsm plugin's numbers: the cosine RSM of [N, D] activations (centred first with
    `center`) sorted by class, and its within/between-class means."""

    X = X.reshape(X.shape[0], -1).astype("float64")
    if center:
        X = X - X.mean(axis=0)
    return numerics.rsm_class_summary(numerics.cosine_rsm(X), labels)


def rsm_arrays(s: Any) -> dict[str, Any]:
    """The arrays the rsm plugin stores (rsm.h5)."""
    import numpy as np

    return {
        "sorted_rsm": s.sorted_rsm.astype(np.float32),
        "order": s.order,
        "sorted_labels": s.sorted_labels,
        "class_means": s.class_means,
    }


@dataclass(frozen=True, repr=False)
class RSMResult(Result):
    """The cosine RSM of one layer sorted by class: the mean similarity of distinct images of the
    same class (`within`), of images of different classes (`between`), and their difference."""

    analysis = "rsm"

    within: float
    between: float
    contrast: float
    layer: str
    images: int
    classes: tuple[int, ...]
    params: RSMParams = field(repr=False, default_factory=RSMParams)
    summary: Any = field(repr=False, compare=False, default=None)

    def _draw(self) -> Figure:
        centred = ", centred" if self.params.center else ""
        title = f"cosine RSM of {self.layer} ({self.params.kind}{centred})"
        return rsm_figure(self.summary, list(self.data["class_names"]), title)


def rsm(
    acts: Any, labels: Any, *, class_names: list[str] | None = None, **params: Any
) -> RSMResult:
    """The rsm plugin's cosine similarity matrix of `acts` sorted by `labels`.

    `acts`: [N, D] tensor/array, or a dict of them (`probe.activations`), of which `layer` picks
    one ('penultimate' = the last). `labels`: N integer class labels. `class_names` label the
    figure (default the numbers). `kind` is the plugin's choice of stored activations: here
    choose it in `probe.activations`."""
    import numpy as np
    import torch

    p = make(RSMParams, params, "rsm")
    if isinstance(acts, dict):
        names = list(acts)
        if not names:
            raise UsageError("acts", "is an empty dict")
        layer = names[-1] if p.layer == "penultimate" else p.layer
        if layer not in acts:
            raise UsageError("layer", f"{layer!r} is not in acts (its layers: {', '.join(names)})")
        acts = acts[layer]
    else:
        layer = p.layer
    X = _named(acts, layer, "acts")[layer]
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y.ndim != 1 or len(y) != len(X) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError("labels", f"expected {len(X)} integer labels, got shape {y.shape}")
    s = rsm_summary(X, y.astype(np.int64), p.center)
    names = class_names or []
    cls = [names[c] if c < len(names) else str(c) for c in s.classes]
    data = {
        "layer": layer,
        "kind": p.kind,
        "center": p.center,
        "class_names": cls,
        **rsm_arrays(s),
        "within": s.within,
        "between": s.between,
        "contrast": s.contrast,
    }
    return RSMResult(
        within=float(s.within),
        between=float(s.between),
        contrast=float(s.contrast),
        layer=layer,
        images=len(X),
        classes=tuple(int(c) for c in s.classes),
        params=p,
        summary=s,
        data=data,
    )
