"""A gradient check of backpropagation: autograd against central finite differences.

`gradcheck_conv_layers` compares autograd's derivative of the mean cross-entropy with a
Richardson-extrapolated central difference for sampled weights of every conv (or other) layer,
on a float64, eval-mode deep copy of the model on the CPU, with every piecewise-linear choice
(ReLU, clamp, max-pool, ... as aten operations, however the model calls them) frozen so the
differences do not cross kinks. The model passed in is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["GradCheckRow", "gradcheck_conv_layers", "spread_layers"]

# The round-off floor of the Richardson difference in units of float64's epsilon times |L|
# / eps: each loss is a sum over the batch with ~u |L| error, D(h) divides differences by 2h,
# and (4 D(eps/2) - D(eps)) / 3 weighs them by up to 3; 64 leaves a margin of ~8 over that.
RESOLUTION_ULPS = 64


@dataclass(frozen=True)
class GradCheckRow:
    """One sampled conv weight: autograd's derivative vs the central difference."""

    layer: str
    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    kink: bool  # a piecewise op (ReLU, clamp, max-pool, ...) switched at w +- eps
    abs_error: float  # |analytic - numeric|
    resolution: float  # the difference quotient's round-off floor at this loss and eps

    def agrees(self, threshold: float) -> bool:
        """Within `threshold` relative error, or within the floor that float64 finite
        differences can resolve (a gradient of ~1e-13 cannot be checked more closely)."""
        return self.rel_error < threshold or self.abs_error <= self.resolution

    @property
    def below_resolution(self) -> bool:
        """The derivative itself is under the finite differences' floor: not resolvable."""
        return max(abs(self.analytic), abs(self.numeric)) <= self.resolution

    def to_dict(self) -> dict:
        d = asdict(self)
        d["index"] = list(self.index)
        d["below_resolution"] = self.below_resolution
        return d


# --- holding the pieces fixed -----------------------------------------------------------------
#
# A piecewise-linear operation (ReLU, clamp, max-pool, a comparison, ...) makes a discrete
# choice at every element (on or off, which piece, which input wins). Each rule below
# computes that choice and the exact output from the op's own arguments, and rebuilds the
# output from a recorded choice; `_Frozen` applies them to every aten op a forward pass
# dispatches, so F.relu, torch.clamp, x.max(dim) and nn.ReLU are all held alike.


def _pieces(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    """0 below `lo`, 2 above `hi`, 1 between (autograd's derivative is 1 only there)."""
    below = torch.zeros_like(x, dtype=torch.bool) if lo is None else x < lo
    above = torch.zeros_like(x, dtype=torch.bool) if hi is None else x > hi
    return (~below).to(torch.int8) + above.to(torch.int8)


def _clamped(piece: torch.Tensor, x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    out = x
    if lo is not None:
        out = torch.where(piece == 0, torch.as_tensor(lo, dtype=x.dtype), out)
    if hi is not None:
        out = torch.where(piece == 2, torch.as_tensor(hi, dtype=x.dtype), out)
    return out


def _gate(piece: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Hardsigmoid on recorded pieces (-3 and 3 are torch's boundaries)."""
    return torch.where(piece == 0, 0.0, torch.where(piece == 2, 1.0, x / 6 + 0.5)).to(x.dtype)


def _hard_pieces(x: torch.Tensor) -> torch.Tensor:
    return (x > -3).to(torch.int8) + (x >= 3).to(torch.int8)


def _pooled(idx: torch.Tensor, x: torch.Tensor, spatial: int) -> torch.Tensor:
    """The pooled values at recorded argmax positions (flat indices within each plane)."""
    start = x.dim() - spatial
    return x.flatten(start).gather(-1, idx.flatten(start)).view_as(idx)


def _select(indices: torch.Tensor, x: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
    picked = x.gather(dim, indices if keepdim else indices.unsqueeze(dim))
    return picked if keepdim else picked.squeeze(dim)


def _dims(x: torch.Tensor, dims: Any) -> list[int]:
    """amax/amin's `dim` argument as a list of non-negative dims (empty: all of them)."""
    return list(range(x.dim())) if dims in (None, [], ()) else [d % x.dim() for d in dims]


def _extreme_mask(x: torch.Tensor, out: torch.Tensor, dims: Any, keepdim: bool) -> torch.Tensor:
    dims = _dims(x, dims)
    if not keepdim:
        for d in sorted(dims):
            out = out.unsqueeze(d)
    return x == out


def _spread(mask: torch.Tensor, x: torch.Tensor, dims: Any, keepdim: bool) -> torch.Tensor:
    """amax/amin from a recorded mask of winners; ties share, as autograd's derivative does."""
    dims = _dims(x, dims)
    m = mask.to(x.dtype)
    return (x * m).sum(dims, keepdim=keepdim) / m.sum(dims, keepdim=keepdim)


aten = torch.ops.aten
# op: (choice(args) -> (choice, exact output), rebuild(choice, args) -> output)
_RULES: dict[Any, tuple[Any, Any]] = {}


def _out(op: Any, choice: Any) -> Any:
    return lambda *a, **k: (choice(*a, **k), op(*a, **k))


def _elementwise(op: Any, choice: Any, rebuild: Any) -> None:
    _RULES[op] = (_out(op, choice), rebuild)


for _op in (aten.relu.default, aten.relu_.default):
    _elementwise(_op, lambda x: x > 0, lambda m, x: torch.where(m, x, 0.0).to(x.dtype))
for _op in (aten.leaky_relu.default, aten.leaky_relu_.default):
    _elementwise(_op, lambda x, s=0.01: x > 0, lambda m, x, s=0.01: torch.where(m, x, x * s))
for _op in (aten.threshold.default, aten.threshold_.default):
    _elementwise(_op, lambda x, t, v: x > t, lambda m, x, t, v: torch.where(m, x, v).to(x.dtype))
for _op in (aten.clamp.default, aten.clamp_.default, aten.clamp.Tensor, aten.clamp_.Tensor):
    _elementwise(
        _op,
        lambda x, lo=None, hi=None, **_: _pieces(x, lo, hi),
        lambda p, x, lo=None, hi=None, **_: _clamped(p, x, lo, hi),
    )
for _op in (aten.clamp_min.default, aten.clamp_min_.default):
    _elementwise(_op, lambda x, lo: _pieces(x, lo, None), lambda p, x, lo: _clamped(p, x, lo, None))
for _op in (aten.clamp_max.default, aten.clamp_max_.default):
    _elementwise(_op, lambda x, hi: _pieces(x, None, hi), lambda p, x, hi: _clamped(p, x, None, hi))
for _op in (aten.hardtanh.default, aten.hardtanh_.default):  # F.relu6 and nn.ReLU6 too
    _elementwise(
        _op,
        lambda x, lo=-1.0, hi=1.0: _pieces(x, lo, hi),
        lambda p, x, lo=-1.0, hi=1.0: _clamped(p, x, lo, hi),
    )
for _op in (aten.hardsigmoid.default, aten.hardsigmoid_.default):
    _elementwise(_op, _hard_pieces, _gate)
for _op in (aten.hardswish.default, aten.hardswish_.default):
    _elementwise(_op, _hard_pieces, lambda p, x: x * _gate(p, x))
_elementwise(aten.abs.default, lambda x: x >= 0, lambda m, x: torch.where(m, x, -x))
_elementwise(aten.maximum.default, lambda a, b: a > b, lambda m, a, b: torch.where(m, a, b))
_elementwise(aten.minimum.default, lambda a, b: a < b, lambda m, a, b: torch.where(m, a, b))


def _discrete(op: Any) -> None:
    """An op whose output is itself the choice (x > 0 for a torch.where, argmax, sign): computed
    once, replayed as recorded."""

    def choice(*a: Any, **k: Any) -> Any:
        out = op(*a, **k)
        return out, out

    _RULES[op] = (choice, lambda rec, *a, **k: rec)


for _name in ("gt", "lt", "ge", "le", "eq", "ne"):
    for _overload in ("Scalar", "Tensor"):
        _discrete(getattr(getattr(aten, _name), _overload))
for _op in (aten.sign.default, aten.argmax.default, aten.argmin.default):
    _discrete(_op)


def _with_indices(op: Any, spatial: int) -> tuple[Any, Any]:
    def choice(*a: Any, **k: Any) -> Any:
        out = op(*a, **k)
        return out[1], out

    return choice, lambda idx, x, *a, **k: (_pooled(idx, x, spatial), idx)


for _op, _spatial in (
    (aten.max_pool2d_with_indices.default, 2),
    (aten.max_pool3d_with_indices.default, 3),
    (aten.adaptive_max_pool2d.default, 2),
    (aten.adaptive_max_pool3d.default, 3),
):
    _RULES[_op] = _with_indices(_op, _spatial)


def _reduce_with_indices(op: Any) -> tuple[Any, Any]:
    def choice(x: Any, dim: int, keepdim: bool = False) -> Any:
        out = op(x, dim, keepdim)
        return out[1], out

    def rebuild(idx: Any, x: Any, dim: int, keepdim: bool = False) -> Any:
        return _select(idx, x, dim, keepdim), idx

    return choice, rebuild


_RULES[aten.max.dim] = _reduce_with_indices(aten.max.dim)
_RULES[aten.min.dim] = _reduce_with_indices(aten.min.dim)


def _reduce_by_mask(op: Any) -> tuple[Any, Any]:
    def choice(x: Any, dim: Any = (), keepdim: bool = False) -> Any:
        out = op(x, dim, keepdim)
        return _extreme_mask(x, out, dim, keepdim), out

    return choice, lambda m, x, dim=(), keepdim=False: _spread(m, x, dim, keepdim)


_RULES[aten.amax.default] = _reduce_by_mask(aten.amax.default)
_RULES[aten.amin.default] = _reduce_by_mask(aten.amin.default)


class _Frozen(TorchDispatchMode):
    """Records the choice of every piecewise operation in a forward pass, then replays it.

    `mode`: "record" (run normally, remember each choice, call by call), "replay" (rebuild
    every output from the recorded choice: the function of the piece autograd
    differentiated, smooth in the weights) or "free" (run normally). In "replay" and
    "free", `switched` turns true when an input would have chosen differently, i.e. the
    step crossed a kink. `start()` rewinds to the first call before each forward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode = "record"
        self.records: list[tuple[Any, Any]] = []
        self.call = 0
        self.switched = False

    def start(self) -> None:
        self.call = 0
        if self.mode == "record":
            self.records = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is None:
            return func(*args, **kwargs)
        choose, rebuild = rule
        # An in-place op (nn.ReLU(inplace=True)) runs on a copy; its input stays as it was
        # for the rebuild, and receives the result last.
        in_place = func._schema.name.endswith("_")
        work = (args[0].clone(), *args[1:]) if in_place else args
        choice, out = choose(*work, **kwargs)
        i, self.call = self.call, self.call + 1
        if self.mode != "record":
            out = self._replayed(i, func, choice, out, rebuild, args, kwargs)
        else:
            self.records.append((func, choice))
        return args[0].copy_(out) if in_place else out

    def _replayed(
        self, i: int, func: Any, choice: Any, out: Any, rebuild: Any, args: Any, kwargs: Any
    ) -> Any:
        if i >= len(self.records) or self.records[i][0] is not func:
            raise RuntimeError(
                "gradcheck: the forward pass did not repeat its piecewise operations (control "
                "flow that depends on the weights?); check with freeze_kinks=False"
            )
        recorded = self.records[i][1]
        self.switched |= bool((choice != recorded).any())
        if self.mode == "free":
            return out
        return rebuild(recorded, *args, **kwargs)


def spread_layers(n: int, at_most: int | None) -> list[int]:
    """Indices of at most `at_most` of `n` layers, evenly spread, first and last included."""
    if at_most is None or at_most >= n:
        return list(range(n))
    if at_most <= 1:
        return [0][:at_most]
    return sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


def gradcheck_conv_layers(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_samples_per_layer: int = 8,
    eps: float = 1e-3,
    seed: int = 0,
    *,
    freeze_kinks: bool = True,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d,),
    max_layers: int | None = None,
) -> list[GradCheckRow]:
    """Compare autograd with central differences for sampled weights of every conv layer
    (every module of `layer_types`: `(nn.Linear,)` checks an MLP's layers).

    Runs on a float64, eval-mode deep copy on the CPU: float32 (the notebook's
    choice) limits the difference quotient to ~1e-3 relative error, and train-mode
    BatchNorm would both make the loss depend on batch statistics and update the
    running statistics of the model being checked. `model` is never modified.

    The loss is mean cross-entropy over (`x`, `y`); `x` is a normalised float
    batch. For each conv weight, `n_samples_per_layer` entries are drawn with
    `seed`, and the numeric derivative is the Richardson-extrapolated central
    difference (4 D(eps/2) - D(eps)) / 3, D(h) = (L(w + h) - L(w - h)) / (2h),
    whose error is O(eps^4) instead of O(eps^2).

    ReLU and max-pool make the loss piecewise smooth. Autograd gives the derivative
    of the piece the weights lie on, but a perturbation crossing a kink anywhere in
    the batch (likely with ~10^5 units per layer) spoils the difference quotient
    for reasons that have nothing to do with backprop being wrong. With
    `freeze_kinks` (default) the differences are taken with every piecewise choice
    recorded at w held fixed: the same piece autograd differentiates, and smooth, so
    eps can be large enough to keep round-off small. The choices are recorded at the
    level of the aten operations the forward pass dispatches (a TorchDispatchMode), not
    of module types, so `F.relu`, `torch.relu`, `clamp`, `F.max_pool2d`, `hardtanh`
    (ReLU6), Hardsigmoid, Hardswish, LeakyReLU, `threshold`, `abs`, `maximum`/`minimum`,
    `max`/`min` over a dimension, `amax`/`amin`, adaptive max-pooling, comparisons
    (`x > 0` in a `torch.where`), `sign` and `argmax` are held alike, each call of an
    operation with its own record. `kink` says whether an input chose differently at
    w +- eps, i.e. whether freezing mattered for that weight.

    Measured (docs/representations.md): unfrozen differences are off by up to
    4e-1 at eps=1e-3 and 6e-3 at 1e-6 (kinks); frozen plain differences reach
    1e-8 but degrade to 2e-5 on a trained model (truncation); frozen Richardson
    at the default eps=1e-3 stayed below 2e-7 on every model tried.

    `max_layers` (None: all) checks at most that many of the layers, evenly spread from the
    first to the last (`spread_layers`): each check costs four forward passes of the whole
    model, so checking every layer of a deep model costs depth x depth; with a bound it grows
    linearly in depth.

    relative error = |a - n| / max(|a|, |n|); entries whose gradient is exactly 0 on
    both sides report 0. A derivative near float64's finite-difference resolution
    (`resolution` = 64 u max(|L|, 1) / eps, about 3e-11 at L = 2.3, eps = 1e-3; a
    MobileNet's squeeze-excitation weights have gradients of ~1e-13) cannot be checked
    to a relative error: `GradCheckRow.agrees` accepts an absolute error within it, and
    `below_resolution` marks such weights.
    """
    if eps <= 0:
        raise ValueError("eps must be positive")
    base = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    for p in base.parameters():
        p.requires_grad_(True)
        p.grad = None
    x64 = x.detach().to(device="cpu", dtype=torch.float64)
    y64 = y.detach().to(device="cpu", dtype=torch.long)

    loss = F.cross_entropy(base(x64), y64)
    loss.backward()
    convs = [(n, m) for n, m in base.named_modules() if isinstance(m, layer_types)]
    convs = [convs[i] for i in spread_layers(len(convs), max_layers)]
    analytic = {n: m.weight.grad.detach().clone() for n, m in convs}

    frozen = _Frozen()
    rng = np.random.default_rng(seed)
    rows: list[GradCheckRow] = []

    def f() -> float:
        frozen.start()
        with frozen:
            return float(F.cross_entropy(base(x64), y64))

    with torch.no_grad():
        frozen.mode = "record"
        loss_at_w = f()
        frozen.mode = "replay" if freeze_kinks else "free"
        # Below this the difference quotient is round-off: float64 losses carry ~u |L| each,
        # and (4 D(eps/2) - D(eps)) / 3 divides differences of them by eps/3 (docstring).
        resolution = (
            RESOLUTION_ULPS * float(np.finfo(np.float64).eps) * max(abs(loss_at_w), 1.0) / eps
        )
        for name, _ in convs:
            w = base.get_submodule(name).weight
            k = min(n_samples_per_layer, w.numel())
            picks = np.sort(rng.choice(w.numel(), size=k, replace=False))
            flat = w.view(-1)
            for flat_idx in picks.tolist():
                frozen.switched = False
                orig = float(flat[flat_idx])

                def central(h: float, flat=flat, flat_idx=flat_idx, orig=orig) -> float:
                    flat[flat_idx] = orig + h
                    lp = f()
                    flat[flat_idx] = orig - h
                    lm = f()
                    flat[flat_idx] = orig
                    return (lp - lm) / (2 * h)

                # Richardson: D(h) = f' + c h^2 + O(h^4), so (4 D(h/2) - D(h)) / 3 = f' + O(h^4)
                num = (4 * central(eps / 2) - central(eps)) / 3
                ana = float(analytic[name].view(-1)[flat_idx])
                rel = abs(ana - num) / max(abs(ana), abs(num), 1e-300)
                idx = tuple(int(i) for i in np.unravel_index(flat_idx, tuple(w.shape)))
                rows.append(
                    GradCheckRow(
                        name, idx, ana, num, rel, frozen.switched, abs(ana - num), resolution
                    )
                )
    return rows
