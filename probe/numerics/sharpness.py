"""Sharpness: how much the loss rises when the weights are perturbed.

Three measures, each reported as an increase over the base loss on the same batch
(eval mode, mini-batches weighted by sample count, the model never modified):
- worst-case (Keskar et al., 2017): max L(w + d) - L(w) over the box
  |d_i| <= eps * (|w_i| + 1), by projected sign-gradient ascent;
- adaptive (ASAM, Kwon et al., 2021): max over ||d / |w| ||_p <= eps (elementwise
  |w| scaling; p = 2 as in ASAM, or inf), by projected gradient ascent;
- average-case: E L(w + d) - L(w) over d ~ N(0, eps^2 diag(s^2)), s = 1 or |w|
  (antithetic pairs d, -d by default).

Ascent finds a lower bound of the true maximum (a local maximiser); the best loss
seen along the way is reported.

Every trainable parameter is perturbed, biases and BatchNorm affine terms included:
the measures ask how the loss responds to the weights the optimiser moves, and the
box/adaptive radii are relative to each entry, so no tensor dominates by its scale.
(The landscape's filter-normalised directions zero those 1-D tensors, following Li
et al.; the two analyses answer different questions.)

`over_batches` evaluates a measure on B disjoint batches and on their union: the
per-batch values, their mean and standard error (variation over the data), and the
combined value (the measure of the mean loss over all B batches). For the worst cases
the combined value is not the mean of the per-batch maxima and costs one more ascent
over all the images; for the average case, with the same noise draws on every batch,
the combined value is exactly the sample-weighted mean of the per-batch ones (no
extra evaluation).

Each measure's options are one frozen value (`WorstCaseConfig`, `AdaptiveConfig`,
`AverageConfig`; the loss's options from `probe.numerics.loss.LossOptions`), taken by its
function and by `over_batches`, or as keywords. Guarantees: the model is never modified;
the same seed gives the same start and noise; the average case states its Monte Carlo
standard error and whether the value is distinguishable from zero; a NaN/inf base loss is a
`probe.ProbeError`, a bad option a `probe.UsageError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.numerics.checks import check, check_finite
from probe.numerics.loss import BatchedLoss, LossOptions

__all__ = [
    "MEASURES",
    "NORMS",
    "AdaptiveConfig",
    "AscentConfig",
    "AverageConfig",
    "BatchSpread",
    "SharpnessResult",
    "WorstCaseConfig",
    "adaptive_sharpness",
    "average_sharpness",
    "over_batches",
    "worst_case_sharpness",
]

NORMS = ("l2", "linf")


# --- the options of each measure -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AscentConfig(LossOptions):
    """What the two worst-case measures share: radius `eps`, `steps` projected ascent steps of
    `step_size` (default 2.5 * eps / steps), from a random start (`random_start`) seeded by
    `seed`; the loss's options from `LossOptions`."""

    eps: float = 1e-3
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")


@dataclass(frozen=True, kw_only=True)
class WorstCaseConfig(AscentConfig):
    """Keskar et al.'s measure: the box |d_i| <= eps * (|w_i| + 1) (default eps 1e-3)."""


@dataclass(frozen=True, kw_only=True)
class AdaptiveConfig(AscentConfig):
    """ASAM's measure: ||d / |w| ||_norm <= eps (default eps 0.05, `norm` "l2" or "linf")."""

    eps: float = 0.05
    norm: str = "l2"

    def __post_init__(self) -> None:
        check(self.norm in NORMS, "norm", f"must be one of {NORMS}, got {self.norm!r}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class AverageConfig(LossOptions):
    """Average-case: Gaussian noise of standard deviation `eps` (times |w| if `adaptive`),
    `samples` draws (antithetic pairs if `antithetic`), seeded by `seed`; with
    `target_rel_stderr` > 0 more draws, up to `max_samples`, until the standard error is at most
    that fraction of the value."""

    eps: float = 1e-2
    samples: int = 50
    adaptive: bool = False
    antithetic: bool = True
    seed: int = 0
    max_samples: int | None = None
    target_rel_stderr: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.samples >= 2, "samples", f"must be >= 2, got {self.samples}")
        check(
            self.target_rel_stderr >= 0,
            "target_rel_stderr",
            f"must be >= 0, got {self.target_rel_stderr}",
        )
        check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")


@dataclass
class SharpnessResult:
    """One sharpness measure: `increase` = `loss` - `base_loss` (mean for "average").

    `steps` counts ascent steps (worst-case measures; None for "average"); `samples`
    counts the average's random perturbations, each an antithetic pair of two loss
    evaluations when `antithetic` (None for the worst cases). `distinguishable_from_zero`
    is False when |increase| < 2 stderr (the Monte Carlo error could explain the value).
    """

    measure: str  # "worst_case", "adaptive" or "average"
    eps: float
    norm: str
    base_loss: float
    loss: float
    increase: float
    stderr: float | None  # Monte Carlo standard error of the mean increase ("average" only)
    steps: int | None  # projected gradient ascent steps (worst-case measures)
    loss_definition: str
    samples: int | None = None  # random perturbations ("average"): antithetic pairs if `antithetic`
    antithetic: bool | None = None
    n_images: int = 0
    distinguishable_from_zero: bool | None = None
    target_rel_stderr: float | None = (
        None  # "average" with a stopping target: stderr <= target * |increase|
    )
    target_reached: bool | None = None

    def __post_init__(self) -> None:
        if self.stderr is not None and self.distinguishable_from_zero is None:
            self.distinguishable_from_zero = bool(abs(self.increase) >= 2 * self.stderr)


def _ascent(
    f: BatchedLoss, scale: dict[str, torch.Tensor], config: AscentConfig, norm: str
) -> float:
    """Max of f(w + scale * u) over ||u||_norm <= eps by projected gradient ascent.

    In u the constraint is a plain ball or box: an L-inf step moves every entry by
    `step_size` along the sign of the gradient (steepest ascent for that norm), an
    L2 step along the normalised gradient; both are projected back. The default
    step is 2.5 * eps / steps (Madry et al.), so the walk can cross the set.
    """
    eps, steps = config.eps, config.steps
    alpha = config.step_size if config.step_size is not None else 2.5 * eps / steps
    gen = torch.Generator().manual_seed(config.seed)
    u = {n: torch.zeros_like(p) for n, p in f.params.items()}
    if config.random_start:
        for n, p in f.params.items():
            r = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
            u[n] = (eps * r).to(p)
        if norm == "l2":
            _project_l2(u, 0.5 * eps, force=True)
    best = -math.inf
    for _ in range(steps):
        value, g = f.value_and_grad({n: p + scale[n] * u[n] for n, p in f.params.items()})
        best = max(best, value)
        gu = {n: scale[n] * g[n] for n in g}
        if norm == "linf":
            for n in u:
                u[n] = (u[n] + alpha * gu[n].sign()).clamp(-eps, eps)
        else:
            gn = math.sqrt(sum(float(t.pow(2).sum()) for t in gu.values()))
            if gn == 0:
                break
            for n in u:
                u[n] = u[n] + (alpha / gn) * gu[n]
            _project_l2(u, eps)
    return max(best, f.value({n: p + scale[n] * u[n] for n, p in f.params.items()}))


def _project_l2(u: dict[str, torch.Tensor], radius: float, force: bool = False) -> None:
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in u.values()))
    if norm > 0 and (force or norm > radius):
        for n in u:
            u[n] *= radius / norm


def _setup(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: LossOptions
) -> tuple[BatchedLoss, float]:
    """The loss over (x, y) and its finite value at the model's weights."""
    f = config.batched_loss(model, x, y)
    return f, check_finite(f.value())


def _worst_case(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AscentConfig
) -> SharpnessResult:
    """Either worst-case measure, by the type of `config`."""
    f, base = _setup(model, x, y, config)
    if isinstance(config, AdaptiveConfig):
        measure, norm = "adaptive", config.norm
        scale = {n: p.abs() for n, p in f.params.items()}
    else:
        measure, norm = "worst_case", "linf"
        scale = {n: p.abs() + 1 for n, p in f.params.items()}
    top = _ascent(f, scale, config, norm)
    return SharpnessResult(
        measure,
        config.eps,
        norm,
        base,
        top,
        top - base,
        None,
        config.steps,
        f.describe(),
        n_images=f.n_samples,
    )


def worst_case_sharpness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: WorstCaseConfig | None = None,
    **options: Any,
) -> SharpnessResult:
    """Keskar et al.'s sharpness: the largest loss in the box |d_i| <= eps * (|w_i| + 1).

    `config` (default `WorstCaseConfig()`) with `options` (its fields) replacing some fields.
    """
    return _worst_case(model, x, y, WorstCaseConfig.of(config, **options))


def adaptive_sharpness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AdaptiveConfig | None = None,
    **options: Any,
) -> SharpnessResult:
    """Adaptive worst-case sharpness: the largest loss over ||d / |w| ||_norm <= eps.

    Scale-invariant under the rescalings that leave a ReLU network's function
    unchanged; entries with w_i = 0 are not perturbed. `config` (default
    `AdaptiveConfig()`) with `options` replacing some fields.
    """
    return _worst_case(model, x, y, AdaptiveConfig.of(config, **options))


def _average_rises(
    fs: Sequence[BatchedLoss], bases: Sequence[float], config: AverageConfig
) -> torch.Tensor:
    """[len(fs), S] loss rises, the same noise draw d_s on every batch.

    S = `samples`; with `target_rel_stderr` > 0, more draws follow, one at a time up to
    `max_samples`, until the standard error of the sample-weighted mean over the batches
    is at most `target_rel_stderr` times its absolute value.
    """
    samples, target = config.samples, config.target_rel_stderr
    eps, adaptive, antithetic = config.eps, config.adaptive, config.antithetic
    max_samples = max(samples, config.max_samples or samples)
    gen = torch.Generator().manual_seed(config.seed)
    rises = torch.zeros(len(fs), max_samples, dtype=torch.float64)
    w = torch.tensor([float(f.n_samples) for f in fs], dtype=torch.float64)
    w /= w.sum()
    params = fs[0].params
    for s in range(max_samples):
        if s >= samples and target > 0:
            c = w @ rises[:, :s]
            if float(c.std() / math.sqrt(s)) <= target * abs(float(c.mean())):
                return rises[:, :s]
        elif s >= samples:
            return rises[:, :s]
        d = {
            n: eps
            * (p.abs() if adaptive else 1)
            * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            for n, p in params.items()
        }
        for b, f in enumerate(fs):
            up = f.value({n: p + d[n] for n, p in f.params.items()})
            down = f.value({n: p - d[n] for n, p in f.params.items()}) if antithetic else up
            rises[b, s] = 0.5 * (up + down) - bases[b]
    return rises


def _average_result(
    rises: torch.Tensor,
    base: float,
    config: AverageConfig,
    definition: str,
    n_images: int,
    target_rel_stderr: float = 0.0,
) -> SharpnessResult:
    """The average-case result of `rises`; with `target_rel_stderr` > 0, whether it was met."""
    samples = rises.numel()
    mean = float(rises.mean())
    r = SharpnessResult(
        "average",
        config.eps,
        "adaptive" if config.adaptive else "plain",
        base,
        base + mean,
        mean,
        float(rises.std() / math.sqrt(samples)),
        None,
        definition,
        samples=samples,
        antithetic=config.antithetic,
        n_images=n_images,
    )
    if target_rel_stderr > 0:
        r.target_rel_stderr = target_rel_stderr
        r.target_reached = bool(r.stderr <= target_rel_stderr * abs(mean))
    return r


def average_sharpness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AverageConfig | None = None,
    **options: Any,
) -> SharpnessResult:
    """Mean loss increase under Gaussian noise d = eps * s * z, s = |w| if `adaptive` else 1.

    For a quadratic loss the expectation is 0.5 * eps^2 * sum_i H_ii s_i^2. With
    `antithetic` each sample averages d and -d (two evaluations), which cancels the
    gradient term that otherwise dominates the variance away from a minimum. The
    standard error of the Monte Carlo mean is reported. `samples` draws are made; with
    `target_rel_stderr` > 0 more follow (up to `max_samples`) until the standard error
    is at most that fraction of the value, and the result says whether it got there.
    `config` (default `AverageConfig()`) with `options` replacing some fields.
    """
    cfg = AverageConfig.of(config, **options)
    f, base = _setup(model, x, y, cfg)
    rises = _average_rises([f], [base], cfg)[0]
    return _average_result(rises, base, cfg, f.describe(), f.n_samples, cfg.target_rel_stderr)


# --- error bars over the data ------------------------------------------------------------------

MEASURES = {"worst_case": WorstCaseConfig, "adaptive": AdaptiveConfig, "average": AverageConfig}


@dataclass
class BatchSpread:
    """A measure on B disjoint batches and on their union.

    `per_batch` are the increases on each batch (`per_batch_base_loss` their base
    losses), `mean` and `stderr` their mean and standard error over batches (the
    variation over the data; None for B = 1), `combined` the measure on all the
    images as one batch (what a single call on them would give).
    """

    measure: str
    batches: int
    images_per_batch: int
    per_batch: list[float]
    per_batch_base_loss: list[float]
    mean: float
    stderr: float | None
    combined: SharpnessResult
    distinguishable_from_zero: bool | None = None

    def __post_init__(self) -> None:
        if self.stderr is not None and self.distinguishable_from_zero is None:
            self.distinguishable_from_zero = bool(abs(self.mean) >= 2 * self.stderr)


def _spread(values: Sequence[float]) -> tuple[float, float | None]:
    t = torch.tensor(list(values), dtype=torch.float64)
    return float(t.mean()), (float(t.std() / math.sqrt(len(t))) if len(t) > 1 else None)


def over_batches(
    measure: str,
    model: nn.Module,
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    config: AscentConfig | AverageConfig | None = None,
    **options: Any,
) -> BatchSpread:
    """`measure` ("worst_case", "adaptive" or "average") on each (x, y) of `parts` and their union.

    `config` (the measure's config class, `MEASURES[measure]`; default its defaults) with
    `options` replacing some fields. One part: the combined value is that part's (computed once).
    """
    check(measure in MEASURES, "measure", f"must be one of {tuple(MEASURES)}, got {measure!r}")
    check(len(parts) >= 1, "batches", "need at least one batch")
    cfg = MEASURES[measure].of(config, **options)
    if isinstance(cfg, AverageConfig):
        per, combined = _average_over_batches(model, parts, cfg)
    else:
        per = [_worst_case(model, xb, yb, cfg) for xb, yb in parts]
        combined = (
            per[0]
            if len(parts) == 1
            else _worst_case(
                model, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), cfg
            )
        )
    mean, se = _spread([r.increase for r in per])
    return BatchSpread(
        measure,
        len(parts),
        len(parts[0][0]),
        [r.increase for r in per],
        [r.base_loss for r in per],
        mean,
        se,
        combined,
    )


def _average_over_batches(
    model: nn.Module, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: AverageConfig
) -> tuple[list[SharpnessResult], SharpnessResult]:
    """Per-batch average-case results and the combined one, the same noise draws on every batch.

    The combined value is exactly the sample-weighted mean of the per-batch ones (no extra
    evaluation); only it carries the stopping target.
    """
    setups = [_setup(model, xb, yb, cfg) for xb, yb in parts]
    fs, bases = [f for f, _ in setups], [b for _, b in setups]
    rises = _average_rises(fs, bases, cfg)
    per = [
        _average_result(r, b, cfg, f.describe(), f.n_samples)
        for r, b, f in zip(rises, bases, fs, strict=True)
    ]
    weights = torch.tensor([float(f.n_samples) for f in fs], dtype=torch.float64)
    weights /= weights.sum()
    base = float((weights * torch.tensor(bases, dtype=torch.float64)).sum())
    total = sum(f.n_samples for f in fs)
    definition = (
        (
            f"{fs[0].describe()}; combined: the sample-weighted mean over {len(fs)} disjoint "
            f"batches ({total} images), the same noise draws on every batch"
        )
        if len(fs) > 1
        else fs[0].describe()
    )
    combined = _average_result(weights @ rises, base, cfg, definition, total, cfg.target_rel_stderr)
    return per, combined
