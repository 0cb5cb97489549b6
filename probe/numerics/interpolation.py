"""Loss and accuracy along the straight line between two sets of weights, and its barrier.

Goodfellow, Vinyals & Saxe (2015, "Qualitatively characterizing neural network
optimization problems") evaluated theta(alpha) = (1 - alpha) theta_a + alpha theta_b from
the initialisation (alpha = 0) to the trained weights (alpha = 1) and found the loss
falling monotonically along it. Frankle et al. (2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis") asked whether two solutions are connected by such a line
without a rise in loss; the barrier of a segment is

    max over alpha of  L(theta(alpha)) - [(1 - alpha) L(theta_a) + alpha L(theta_b)],

the loss above the straight line between the endpoint losses (0 at the endpoints, so
never negative on a grid that includes them; Frankle et al. report the same for the
error, measured from the endpoints' mean). Here the maximum is over the evaluated grid
of alphas: a lower bound of the maximum over the whole segment.

Every floating tensor of the two state dicts is interpolated with `torch.lerp`, exact at
both ends; integer buffers (BatchNorm's `num_batches_tracked`) come from the nearer end.
BatchNorm statistics:
- "kept": the running mean and variance are interpolated like the weights, so the
  endpoints are the checkpoints exactly (their own eval-mode losses);
- "recalibrate": at every alpha they are re-estimated from `calib_x` (a cumulative
  average over its mini-batches, as `torch.optim.swa_utils.update_bn`), because the
  interpolated statistics of two networks do not describe the interpolated network's
  activations (the usual cause of a spurious barrier between BatchNorm networks).
The model is evaluated in eval mode through `functional_call`: it is never modified and
the state dicts are never written to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from probe.errors import ProbeError
from probe.numerics.checks import check
from probe.numerics.loss import LossFn, analysis_mode, split

BN_MODES = ("kept", "recalibrate")
State = Mapping[str, torch.Tensor]


def check_states(model: nn.Module, a: State, b: State) -> None:
    """Both states hold exactly the model's parameters and buffers, with the same shapes."""
    want = {k: v.shape for k, v in [*model.named_parameters(), *model.named_buffers()]}
    for name, state in (("state_a", a), ("state_b", b)):
        missing, extra = set(want) - set(state), set(state) - set(want)
        check(
            not missing and not extra,
            name,
            f"does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]})",
        )
        bad = [k for k in want if tuple(state[k].shape) != tuple(want[k])]
        check(not bad, name, f"has tensors of other shapes than the model's: {bad[:3]}")


def interpolate_states(a: State, b: State, alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating tensor; integer tensors from the nearer end."""
    out = {}
    for k, ta in a.items():
        tb = b[k].to(ta.device)
        if ta.is_floating_point():
            out[k] = torch.lerp(ta, tb.to(ta.dtype), float(alpha))
        else:
            out[k] = (ta if alpha < 0.5 else tb).clone()
    return out


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrated(
    model: nn.Module, state: State, calib_x: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """A copy of `state` whose BatchNorm running statistics are re-estimated on `calib_x`.

    The statistics are reset and then averaged cumulatively (momentum None) over the
    mini-batches of `calib_x`, BatchNorm in train mode, every other module in eval mode.
    """
    check(len(calib_x) >= 2, "calib_x", f"needs at least 2 images, got {len(calib_x)}")
    new = {k: v.clone() for k, v in state.items()}
    bns = _batchnorms(model)
    for name, _ in bns:
        new[f"{name}.running_mean"].zero_()
        new[f"{name}.running_var"].fill_(1.0)
        new[f"{name}.num_batches_tracked"].zero_()
    saved = [(m, m.training, m.momentum) for _, m in bns]
    try:
        with analysis_mode(model, "eval"):
            for _, m in bns:
                m.training, m.momentum = True, None
            for xb in calib_x.split(batch_size):
                functional_call(model, new, (xb,))  # writes the running statistics into `new`
    finally:
        for m, training, momentum in saved:
            m.training, m.momentum = training, momentum
    return new


@torch.no_grad()
def evaluate(
    model: nn.Module,
    state: State,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) of the model with `state` on (x, y), eval mode, float64 sums."""
    loss_fn = loss_fn or F.cross_entropy
    loss = acc = 0.0
    with analysis_mode(model, "eval"):
        for xb, yb, w in split(x, y, batch_size):
            out = functional_call(model, dict(state), (xb,))
            loss += w * float(loss_fn(out, yb))
            if out.dim() == 2 and out.shape[1] > 1 and not yb.is_floating_point():
                acc += w * float((out.argmax(1) == yb).double().mean())
            else:
                acc = math.nan
    return loss, acc


@dataclass
class Segment:
    """Loss and accuracy along one straight segment, with its barriers."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    bn: str
    n_images: int
    loss_barrier: float  # max_alpha L(alpha) - lerp(L(0), L(1), alpha), on the grid
    loss_barrier_alpha: float
    error_barrier: float  # the same for the error 1 - accuracy
    error_barrier_alpha: float
    error_barrier_mean: float  # Frankle et al.: max error minus the endpoints' mean error
    monotonic: bool  # the loss never rises from one grid point to the next (Goodfellow et al.)


def barrier(alphas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(height, alpha) of max_alpha values(alpha) - the straight line between the end values.

    `alphas` must start at 0 and end at 1 (the endpoints the line joins)."""
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    check(
        len(a) >= 2 and a[0] == 0.0 and a[-1] == 1.0,
        "alphas",
        "must run from 0 to 1, both included",
    )
    line = (1 - a) * v[0] + a * v[-1]
    i = int(np.argmax(v - line))
    return float(v[i] - line[i]), float(a[i])


def alpha_grid(points: int) -> np.ndarray:
    """`points` evenly spaced alphas from 0 to 1, both included."""
    check(points >= 2, "points", f"must be >= 2, got {points}")
    return np.linspace(0.0, 1.0, points)


def interpolation_path(
    model: nn.Module,
    state_a: State,
    state_b: State,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alphas: Sequence[float] | None = None,
    bn: str = "kept",
    calib_x: torch.Tensor | None = None,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    channels_last: bool = True,
) -> Segment:
    """Loss and accuracy at theta(alpha) for each alpha (default 11 points on [0, 1]).

    `model` gives the architecture only; `state_a`/`state_b` are full state dicts of it
    (parameters and buffers, e.g. two checkpoints' `model_state`). `bn`: "kept" or
    "recalibrate" (then `calib_x` is required). Loss values must be finite.
    `channels_last`: evaluate with 4-D tensors in the channels-last layout (the same
    numbers up to float rounding; faster convolutions on CPU, as in training).
    """
    check(bn in BN_MODES, "bn", f"must be one of {BN_MODES}, got {bn!r}")
    check(bn != "recalibrate" or calib_x is not None, "calib_x", "is required with bn=recalibrate")
    check_states(model, state_a, state_b)
    device = next(iter(model.parameters())).device
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def fmt(t: torch.Tensor) -> torch.Tensor:  # conv weights and images: the faster CPU layout
        t = t.to(device)
        return t.contiguous(memory_format=layout) if t.dim() == 4 else t

    a = {k: fmt(v) for k, v in state_a.items()}
    b = {k: fmt(v) for k, v in state_b.items()}
    x, y = fmt(x), y.to(device)
    calib_x = fmt(calib_x) if calib_x is not None else None
    grid = alpha_grid(11) if alphas is None else np.asarray(alphas, dtype=np.float64)
    loss, acc = np.zeros(len(grid)), np.zeros(len(grid))
    for i, alpha in enumerate(grid):
        state = interpolate_states(a, b, float(alpha))
        if bn == "recalibrate":
            state = recalibrated(model, state, calib_x, batch_size)
        loss[i], acc[i] = evaluate(model, state, x, y, batch_size=batch_size, loss_fn=loss_fn)
    if not np.all(np.isfinite(loss)):
        bad = float(grid[int(np.argmin(np.isfinite(loss)))])
        raise ProbeError(f"the loss is not finite at alpha={bad:g} on the interpolation path")
    lb, la = barrier(grid, loss)
    eb, ea = barrier(grid, 1.0 - acc) if np.all(np.isfinite(acc)) else (math.nan, math.nan)
    err = 1.0 - acc
    return Segment(
        alphas=grid,
        loss=loss,
        accuracy=acc,
        bn=bn,
        n_images=len(x),
        loss_barrier=lb,
        loss_barrier_alpha=la,
        error_barrier=eb,
        error_barrier_alpha=ea,
        error_barrier_mean=float(np.max(err) - 0.5 * (err[0] + err[-1])),
        monotonic=bool(np.all(np.diff(loss) <= 1e-12 * np.maximum(1.0, np.abs(loss[:-1])))),
    )


def linear_mode_barrier(
    model: nn.Module,
    state_a: State,
    state_b: State,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    points: int = 11,
    bn: str = "kept",
    calib_x: torch.Tensor | None = None,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    channels_last: bool = True,
) -> Segment:
    """The linear-mode-connectivity barrier between two weight sets of one architecture.

    For two runs that differ only in seed (Frankle et al., 2020), pass their final state
    dicts; `Segment.loss_barrier` is the barrier on a grid of `points` alphas. A state
    with itself gives 0.
    """
    return interpolation_path(
        model,
        state_a,
        state_b,
        x,
        y,
        alphas=alpha_grid(points),
        bn=bn,
        calib_x=calib_x,
        batch_size=batch_size,
        loss_fn=loss_fn,
        channels_last=channels_last,
    )
