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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .curvature import BatchedLoss, LossFn, check, check_finite

NORMS = ("l2", "linf")


@dataclass
class SharpnessResult:
    """One sharpness measure: `increase` = `loss` - `base_loss` (mean for "average")."""

    measure: str  # "worst_case", "adaptive" or "average"
    eps: float
    norm: str
    base_loss: float
    loss: float
    increase: float
    stderr: float | None  # of the mean increase ("average" only)
    steps: int  # ascent steps, or samples for "average"
    loss_definition: str


def _ascent(f: BatchedLoss, scale: dict[str, torch.Tensor], eps: float, norm: str, steps: int,
            step_size: float | None, random_start: bool, seed: int) -> float:
    """Max of f(w + scale * u) over ||u||_norm <= eps by projected gradient ascent.

    In u the constraint is a plain ball or box: an L-inf step moves every entry by
    `step_size` along the sign of the gradient (steepest ascent for that norm), an
    L2 step along the normalised gradient; both are projected back. The default
    step is 2.5 * eps / steps (Madry et al.), so the walk can cross the set.
    """
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    gen = torch.Generator().manual_seed(seed)
    u = {n: torch.zeros_like(p) for n, p in f.params.items()}
    if random_start:
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


def _setup(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss_fn: LossFn | None,
           batch_size: int, params: Sequence[str] | None, dtype: torch.dtype | None) -> tuple[BatchedLoss, float]:
    check(eps > 0, "eps", f"must be > 0, got {eps}")
    f = BatchedLoss(model, x, y, loss_fn=loss_fn, batch_size=batch_size, params=params, dtype=dtype)
    return f, check_finite(f.value())


def worst_case_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-3,
                         steps: int = 20, step_size: float | None = None, random_start: bool = True,
                         seed: int = 0, batch_size: int = 256, loss_fn: LossFn | None = None,
                         params: Sequence[str] | None = None, dtype: torch.dtype | None = None) -> SharpnessResult:
    """Keskar et al.'s sharpness: the largest loss in the box |d_i| <= eps * (|w_i| + 1)."""
    check(steps >= 1, "steps", f"must be >= 1, got {steps}")
    f, base = _setup(model, x, y, eps, loss_fn, batch_size, params, dtype)
    scale = {n: p.abs() + 1 for n, p in f.params.items()}
    top = _ascent(f, scale, eps, "linf", steps, step_size, random_start, seed)
    return SharpnessResult("worst_case", eps, "linf", base, top, top - base, None, steps, f.describe())


def adaptive_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.05,
                       norm: str = "l2", steps: int = 20, step_size: float | None = None,
                       random_start: bool = True, seed: int = 0, batch_size: int = 256,
                       loss_fn: LossFn | None = None, params: Sequence[str] | None = None,
                       dtype: torch.dtype | None = None) -> SharpnessResult:
    """Adaptive worst-case sharpness: the largest loss over ||d / |w| ||_norm <= eps.

    Scale-invariant under the rescalings that leave a ReLU network's function
    unchanged; entries with w_i = 0 are not perturbed.
    """
    check(norm in NORMS, "norm", f"must be one of {NORMS}, got {norm!r}")
    check(steps >= 1, "steps", f"must be >= 1, got {steps}")
    f, base = _setup(model, x, y, eps, loss_fn, batch_size, params, dtype)
    scale = {n: p.abs() for n, p in f.params.items()}
    top = _ascent(f, scale, eps, norm, steps, step_size, random_start, seed)
    return SharpnessResult("adaptive", eps, norm, base, top, top - base, None, steps, f.describe())


def average_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-2,
                      samples: int = 20, adaptive: bool = False, antithetic: bool = True, seed: int = 0,
                      batch_size: int = 256,
                      loss_fn: LossFn | None = None, params: Sequence[str] | None = None,
                      dtype: torch.dtype | None = None) -> SharpnessResult:
    """Mean loss increase under Gaussian noise d = eps * s * z, s = |w| if `adaptive` else 1.

    For a quadratic loss the expectation is 0.5 * eps^2 * sum_i H_ii s_i^2. With
    `antithetic` each sample averages d and -d (two evaluations), which cancels the
    gradient term that otherwise dominates the variance away from a minimum. The
    standard error of the Monte Carlo mean is reported.
    """
    check(samples >= 2, "samples", f"must be >= 2, got {samples}")
    f, base = _setup(model, x, y, eps, loss_fn, batch_size, params, dtype)
    gen = torch.Generator().manual_seed(seed)
    rises = []
    for _ in range(samples):
        d = {n: eps * (w.abs() if adaptive else 1) * torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w)
             for n, w in f.params.items()}
        up = f.value({n: w + d[n] for n, w in f.params.items()})
        down = f.value({n: w - d[n] for n, w in f.params.items()}) if antithetic else up
        rises.append(0.5 * (up + down) - base)
    t = torch.tensor(rises, dtype=torch.float64)
    return SharpnessResult("average", eps, "adaptive" if adaptive else "plain", base, base + float(t.mean()),
                           float(t.mean()), float(t.std() / math.sqrt(samples)), samples, f.describe())
