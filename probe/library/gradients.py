"""`probe.gradcheck`: the gradcheck analysis's parameters, record, figure and the in-process
call: autograd against float64 central differences (`probe.numerics.gradcheck_conv_layers`)
for sampled weights of every conv layer (Linear layers in a model without conv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.errors import ProbeError, Skip, UsageError
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "THRESHOLD",
    "GradcheckParams",
    "GradcheckResult",
    "check_layers",
    "gradcheck",
    "gradcheck_caption",
    "gradcheck_figure",
    "gradcheck_record",
    "gradcheck_scalars",
    "gradcheck_title",
]

THRESHOLD = 1e-6


@dataclass(frozen=True)
class GradcheckParams:
    """The parameters of the gradcheck analysis and of `probe.gradcheck`."""

    n_images: int = param(
        16, "Images of the stored analysis batch to use (its first ones).", min=1, max=4096
    )
    samples_per_layer: int = param(8, "Weights drawn per conv layer.", min=1, max=10_000)
    max_layers: int = param(
        8,
        "Layers checked, evenly spread from first to last (0: every layer); each weight costs "
        "4 forward passes of the model, so all layers of a deep model cost depth^2.",
        min=0,
        max=10_000,
    )
    eps: float = param(1e-3, "Finite-difference step.", min=1e-12, max=1.0)
    seed: int = param(0, "Seed for drawing the weights.", min=0, max=2**32 - 1)
    freeze_kinks: bool = param(
        True,
        "Hold every piecewise choice (ReLU on/off, clamp pieces, max-pool winners) fixed "
        "across w +- eps "
        "(else kinks crossed by the step dominate the error).",
    )


def check_layers(model: Any, x: Any, y: Any, p: GradcheckParams, where: str = "") -> tuple:
    """`(kind, rows, n_layers)`: the conv layers checked ("conv"), or an MLP's Linear layers
    ("linear"), at most `max_layers` of the model's `n_layers` of that kind.

    Conv layers are what the check is about; a model without any (an MLP) has its Linear
    layers checked. `probe.Skip` without either; `probe.ProbeError` for a non-finite loss or
    gradient (`where`: "epoch 3: " names it)."""
    import numpy as np
    from torch import nn

    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    kind, types = ("conv", (nn.Conv2d,)) if has_conv else ("linear", (nn.Linear,))
    rows = numerics.gradcheck_conv_layers(
        model,
        x,
        y,
        n_samples_per_layer=p.samples_per_layer,
        eps=p.eps,
        seed=p.seed,
        freeze_kinks=p.freeze_kinks,
        layer_types=types,
        max_layers=p.max_layers or None,
    )
    n_layers = sum(isinstance(m, types) for m in model.modules())
    if not rows:
        raise Skip("the model has no Conv2d or Linear layer to check")
    if not all(np.isfinite([r.rel_error, r.analytic, r.numeric]).all() for r in rows):
        raise ProbeError(f"{where}the loss or its gradient is not finite at this checkpoint")
    return kind, rows, n_layers


def gradcheck_scalars(rows: list, kind: str) -> dict[str, Any]:
    """The plugin's scalars. Weights whose derivative is under float64's finite-difference floor
    cannot be checked to a relative error; they pass within that floor and are left out of the
    max and median. Nothing resolvable (every gradient under the floor) checks nothing."""
    import numpy as np

    resolved = [r for r in rows if not r.below_resolution]
    rel = np.array([r.rel_error for r in resolved] or [np.nan])
    return {
        "max_rel_error": float(np.max(rel)),
        "median_rel_error": float(np.median(rel)),
        "n_checked": len(rows),
        "n_below_resolution": len(rows) - len(resolved),
        "passed": bool(resolved) and all(r.agrees(THRESHOLD) for r in rows),
        "layers_checked": kind,
    }


def gradcheck_record(rows: list, p: GradcheckParams, kind: str, n: int, n_layers: int) -> dict:
    """What the plugin writes to gradcheck.json (but the epoch)."""
    return {
        "eps": p.eps,
        "n_images": n,
        "seed": p.seed,
        "freeze_kinks": p.freeze_kinks,
        "dtype": "float64",
        "mode": "eval",
        "threshold": THRESHOLD,
        "layers_checked": kind,
        "samples_per_layer": p.samples_per_layer,
        "n_layers": n_layers,
        "layers_sampled": list(dict.fromkeys(r.layer for r in rows)),
        "frozen": "every piecewise aten op (relu, clamp, hardtanh, max-pool, comparisons, ...)"
        if p.freeze_kinks
        else "nothing",
        "resolution": rows[0].resolution,
        "passes_if": "rel_error < threshold, or abs_error <= resolution (float64 finite "
        "differences cannot resolve less); max/median_rel_error leave out below_resolution "
        "rows",
        "rows": [r.to_dict() for r in rows],
    }


def gradcheck_figure(rows: list, kind: str, title: str) -> Figure:
    """Relative error per sampled weight, by layer, against the 1e-6 line."""
    import numpy as np
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(r.layer for r in rows))
    floor = 1e-17  # exact agreement (both 0) cannot sit on a log axis

    fig = Figure(figsize=(1.1 * len(layers) + 4, 4.5), constrained_layout=True)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, layer in enumerate(layers):
        sel = [r for r in rows if r.layer == layer]
        v = np.maximum([r.rel_error for r in sel], floor)
        jitter = i + rng.uniform(-0.18, 0.18, len(sel))
        kinks = np.array([r.kink for r in sel])
        tiny = np.array([r.below_resolution for r in sel])
        ax.scatter(
            jitter[tiny],
            v[tiny],
            s=22,
            facecolors="none",
            edgecolors="grey",
            zorder=3,
            label="gradient under float64 finite-difference resolution" if i == 0 else None,
        )
        kinks, v, jitter = kinks[~tiny], v[~tiny], jitter[~tiny]
        ax.scatter(
            jitter[~kinks],
            v[~kinks],
            s=22,
            color="tab:blue",
            zorder=3,
            label="sampled weight" if i == 0 else None,
        )
        ax.scatter(
            jitter[kinks],
            v[kinks],
            s=26,
            marker="x",
            color="tab:orange",
            zorder=3,
            label="sampled weight; w +- eps crosses a ReLU/max-pool kink" if i == 0 else None,
        )
        if len(v):
            ax.hlines(np.median(v), i - 0.3, i + 0.3, color="black", lw=1.2, zorder=2)
    ax.axhline(THRESHOLD, color="tab:red", ls="--", lw=1, label=f"{THRESHOLD:g}")
    ax.set_yscale("log")
    every = np.array([r.rel_error for r in rows])
    ax.set_ylim(
        min(floor * 10, every[every > 0].min() / 3 if (every > 0).any() else 1e-16),
        max(1.0, every.max() * 3),
    )
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set(xlabel=f"{kind} layer", ylabel="relative error |a - n| / max(|a|, |n|)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return fig


def gradcheck_caption(kind: str) -> str:
    return (
        "Relative error between autograd and central differences per sampled "
        f"{kind} weight (bar: median); every point below the dashed 1e-6 line means backprop "
        "agrees with the finite differences."
    )


def gradcheck_title(p: GradcheckParams, rows: list, n: int, worst: float, where: str = "") -> str:
    frozen = ", patterns frozen" if p.freeze_kinks else ""
    return (
        f"gradient check{where}: {len(rows)} weights, {n} images, float64 eval "
        f"mode, eps={p.eps:g}{frozen}; max {worst:.1e}"
    )


@dataclass(frozen=True, repr=False)
class GradcheckResult(Result):
    """Autograd against float64 central differences: the largest and median relative error of
    the sampled weights (those under the finite differences' resolution left out), how many
    were checked, and whether every one agrees (rel_error < 1e-6 or within the resolution)."""

    analysis = "gradcheck"

    passed: bool
    max_rel_error: float
    median_rel_error: float
    n_checked: int
    n_below_resolution: int
    layers_checked: str
    params: GradcheckParams = field(repr=False, default_factory=GradcheckParams)
    rows: Any = field(repr=False, compare=False, default=None)

    def _draw(self) -> Figure:
        n = int(self.data["n_images"])
        title = gradcheck_title(self.params, self.rows, n, self.max_rel_error)
        return gradcheck_figure(self.rows, self.layers_checked, title)


def gradcheck(model: nn.Module, batch: Any, *, loss: Any = None, **params: Any) -> GradcheckResult:
    """Check `model`'s backward pass with the parameters of `probe analyze -p gradcheck`, on the
    first `n_images` of `batch` ((x, y) tensors or an iterable of them), on a float64 eval-mode
    copy on the CPU: the model is not changed. The loss is mean cross-entropy: the finite
    differences are taken of it, so `loss=` cannot be honoured and is refused."""
    from probe.library.batch import as_batch, untouched

    if loss is not None:
        raise UsageError(
            "loss", "probe.gradcheck checks the mean cross-entropy only; leave loss out"
        )
    p = make(GradcheckParams, params, "gradcheck")
    with untouched(model):
        x, y = as_batch(batch, p.n_images)
        kind, rows, n_layers = check_layers(model, x.cpu(), y.cpu(), p)
    scalars = gradcheck_scalars(rows, kind)
    return GradcheckResult(
        **scalars,
        params=p,
        rows=rows,
        data={**gradcheck_record(rows, p, kind, len(x), n_layers), "scalars": scalars},
    )
