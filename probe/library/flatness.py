"""`probe.sharpness`: the sharpness analysis's parameters, its record and figure, and the
in-process call.

`SharpnessParams` is the one definition of the parameters of `probe analyze -p sharpness` and
`probe.sharpness(model, batch, **params)`; `measure_configs`, `sharpness_record` and
`sharpness_figure` are the steps both take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "SharpnessParams",
    "SharpnessResult",
    "measure_configs",
    "sharpness",
    "sharpness_figure",
    "sharpness_record",
    "sharpness_scalars",
]


@dataclass(frozen=True)
class SharpnessParams:
    """The parameters of the sharpness analysis and of `probe.sharpness`."""

    eps: float = param(1e-3, "Worst-case box radius, relative to |w| + 1.", min=1e-12, max=10.0)
    adaptive_eps: float = param(
        0.05, "Adaptive radius: ||d / |w| || <= adaptive_eps.", min=1e-12, max=10.0
    )
    adaptive_norm: str = param("l2", "Norm of the adaptive ball.", choices=("l2", "linf"))
    average_eps: float = param(
        0.01, "Standard deviation of the random perturbation.", min=1e-12, max=10.0
    )
    average_adaptive: bool = param(False, "Scale the random perturbation by |w|.")
    steps: int = param(20, "Projected gradient ascent steps.", min=1, max=10_000)
    samples: int = param(
        50,
        "Average case: antithetic noise pairs drawn at least (2 loss evaluations each).",
        min=2,
        max=10_000,
    )
    max_samples: int = param(
        200,
        "Average case: more pairs, up to this many, until the standard error is at "
        "most target_rel_stderr of the value.",
        min=2,
        max=10_000,
    )
    target_rel_stderr: float = param(
        0.1,
        "Average case: stop drawing once s.e. <= this x |value| (0: exactly `samples` pairs).",
        min=0.0,
        max=10.0,
    )
    n_images: int = param(
        1024,
        "Images per batch, taken in order from the start of the stored analysis batch.",
        min=1,
        max=100_000,
    )
    batches: int = param(
        1,
        "Disjoint batches of n_images each: per-batch values, their mean and standard "
        "error, and the value on all of them combined.",
        min=1,
        max=1000,
    )
    batch_size: int = param(
        256, "Mini-batch size; results are averaged weighted by sample count.", min=1, max=100_000
    )
    seed: int = param(0, "Seed for the random start and the noise.", min=0, max=2**32 - 1)


def measure_configs(p: SharpnessParams, loss: Any = None) -> dict:
    """Each measure's options (`probe.numerics` configs) for these parameters, in plot order
    (`loss`: the mean loss of (logits, y), default cross-entropy)."""
    common = {"batch_size": p.batch_size, "seed": p.seed, "loss_fn": loss}
    return {
        "worst_case": numerics.WorstCaseConfig(eps=p.eps, steps=p.steps, **common),
        "adaptive": numerics.AdaptiveConfig(
            eps=p.adaptive_eps, norm=p.adaptive_norm, steps=p.steps, **common
        ),
        "average": numerics.AverageConfig(
            eps=p.average_eps,
            samples=p.samples,
            adaptive=p.average_adaptive,
            max_samples=p.max_samples,
            target_rel_stderr=p.target_rel_stderr,
            **common,
        ),
    }


def split(x: Any, y: Any, p: SharpnessParams) -> tuple[list, int]:
    """The disjoint batches and their size (one batch: at most what there is)."""
    n = min(p.n_images, len(x)) if p.batches == 1 else p.n_images
    return numerics.split_batches(x, y, p.batches, n), n


def compute(model: Any, parts: list, p: SharpnessParams, loss: Any = None) -> list:
    """Each measure over the batches (`probe.numerics.sharpness_over_batches`), in plot order."""
    return [
        numerics.sharpness_over_batches(measure, model, parts, config)
        for measure, config in measure_configs(p, loss).items()
    ]


def sharpness_record(spreads: list, p: SharpnessParams, n: int, dtype: str, data: str) -> dict:
    """What the plugin writes to sharpness.json (but the epoch), from `compute`'s spreads."""
    results = [b.combined for b in spreads]
    total = p.batches * n
    computed_on = {
        "images": total,
        "batches": p.batches,
        "images_per_batch": n,
        "data": f"{data}, first {total} images, split in order into {p.batches} disjoint batch(es)",
        "batchnorm": "eval (running statistics)",
        "dtype": dtype,
        "perturbed": "every trainable parameter: weights, biases and BatchNorm affine terms",
    }
    doc = {
        "n_images": total,
        "computed_on": computed_on,
        "results_are": "each measure on all the images as one batch (the combined value)",
        "results": [r.__dict__ for r in results],
    }
    if p.batches > 1:
        doc["over_batches_are"] = (
            "each measure on each disjoint batch separately (per_batch), their mean and "
            "standard error over batches (the variation over the data)"
        )
        doc["over_batches"] = [
            {k: v for k, v in b.__dict__.items() if k != "combined"} for b in spreads
        ]
    return doc


def sharpness_scalars(spreads: list, p: SharpnessParams) -> dict:
    """The plugin's headline scalars."""
    results = [b.combined for b in spreads]
    avg = results[2]
    out: dict[str, Any] = {"base_loss": results[0].base_loss}
    out.update({r.measure: r.increase for r in results})
    out.update(
        average_stderr=avg.stderr,
        average_distinguishable_from_zero=float(avg.distinguishable_from_zero),
        average_samples=avg.samples,
    )
    if p.batches > 1:
        for b in spreads:
            out[f"{b.measure}_batch_mean"] = b.mean
            out[f"{b.measure}_batch_stderr"] = b.stderr
    return out


def sharpness_figure(spreads: list, p: SharpnessParams, n: int, where: str = "") -> tuple:
    """The plugin's bar chart of `compute`'s spreads and its caption (`where`: ", epoch 3")."""
    from matplotlib.figure import Figure

    results = [b.combined for b in spreads]
    total = p.batches * n
    fig = Figure(figsize=(6.5, 3.8), constrained_layout=True)
    ax = fig.subplots()
    xs = range(len(results))
    labels = [f"{r.measure}\n(eps={r.eps:g}, {r.norm})" for r in results]
    ax.bar(
        xs,
        [r.increase for r in results],
        yerr=[r.stderr or 0 for r in results],
        color="tab:blue",
        width=0.5,
        capsize=4,
        label=f"combined, {total} images" + " (+- Monte Carlo s.e.)",
    )
    if p.batches > 1:
        off = [i + 0.35 for i in xs]
        ax.errorbar(
            off,
            [b.mean for b in spreads],
            yerr=[b.stderr for b in spreads],
            fmt="o",
            color="black",
            capsize=4,
            label=f"mean +- s.e. over {p.batches} batches of {n}",
        )
        for i, b in zip(off, spreads, strict=True):
            ax.plot([i] * len(b.per_batch), b.per_batch, ".", color="grey", ms=4)
    avg = results[2]
    if avg.distinguishable_from_zero is False:
        ax.annotate(
            "indistinguishable\nfrom 0 (< 2 s.e.)",
            (2, avg.increase),
            ha="center",
            va="bottom",
            fontsize=7,
            color="tab:red",
        )
    ax.set_xticks(list(xs), labels)
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    ax.set(
        ylabel="loss increase over base loss",
        title=f"sharpness{where} (base loss {results[0].base_loss:.4f}, {total} images, eval BN)",
    )
    caption = (
        "Loss increase under the worst perturbation found (lower bound) and under random noise "
        f"(bar: the combined value on all {total} images, +- 1 Monte Carlo s.e. for the average "
        "case"
    )
    if p.batches > 1:
        caption += (
            f"; black: mean +- 1 s.e. over {p.batches} disjoint batches of {n}, grey: each batch"
        )
    caption += "); larger means a sharper minimum at that radius."
    if avg.distinguishable_from_zero is False:
        caption += (
            f" The average-case value {avg.increase:.3g} is within 2 s.e. ({avg.stderr:.2g}) of "
            f"zero: indistinguishable from zero at {avg.samples} samples."
        )
    return fig, caption


@dataclass(frozen=True, repr=False)
class SharpnessResult(Result):
    """Loss increases over the base loss: worst case in the box |d| <= eps (|w| + 1) (a lower
    bound: ascent), adaptive worst case (ASAM), and average case under Gaussian noise with its
    Monte Carlo standard error and whether it is distinguishable from zero (> 2 s.e.)."""

    analysis = "sharpness"

    base_loss: float
    worst_case: float
    adaptive: float
    average: float
    average_stderr: float | None
    average_distinguishable_from_zero: bool | None
    average_samples: int
    images: int
    params: SharpnessParams = field(repr=False, default_factory=SharpnessParams)
    spreads: Any = field(repr=False, compare=False, default=None)

    def _draw(self) -> Figure:
        n = self.images // self.params.batches
        return sharpness_figure(self.spreads, self.params, n)[0]


def sharpness(model: nn.Module, batch: Any, *, loss: Any = None, **params: Any) -> SharpnessResult:
    """Worst-case, adaptive and average-case sharpness of `model` on `batch` ((x, y) tensors or
    an iterable of them: the first batches * n_images), with the parameters and defaults of
    `probe analyze -p sharpness`; eval mode, the model unchanged. `loss(logits, y)`: the mean
    loss perturbed (default cross-entropy)."""
    from probe.library.batch import as_batch, check_loss, untouched

    p = make(SharpnessParams, params, "sharpness")
    check_loss(loss)
    with untouched(model):
        first = next(model.parameters())
        x, y = as_batch(batch, p.batches * p.n_images)
        parts, n = split(x.to(first.device), y.to(first.device), p)
        spreads = compute(model, parts, p, loss)
    dtype = str(first.dtype).removeprefix("torch.")
    doc = sharpness_record(spreads, p, n, dtype, "the batch given")
    scalars = sharpness_scalars(spreads, p)
    avg = spreads[2].combined
    return SharpnessResult(
        base_loss=float(scalars["base_loss"]),
        worst_case=float(scalars["worst_case"]),
        adaptive=float(scalars["adaptive"]),
        average=float(scalars["average"]),
        average_stderr=avg.stderr,
        average_distinguishable_from_zero=avg.distinguishable_from_zero,
        average_samples=int(avg.samples),
        images=p.batches * n,
        params=p,
        spreads=spreads,
        data={**doc, "scalars": scalars},
    )
