"""A gradient check of backpropagation: autograd against central finite differences.

`gradcheck_conv_layers` compares autograd's derivative of the mean cross-entropy with a
Richardson-extrapolated central difference for sampled weights of every conv (or other) layer,
on a float64, eval-mode deep copy of the model on the CPU, with the ReLU/max-pool patterns
frozen so the differences do not cross kinks. The model passed in is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GradCheckRow", "gradcheck_conv_layers"]


@dataclass(frozen=True)
class GradCheckRow:
    """One sampled conv weight: autograd's derivative vs the central difference."""

    layer: str
    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    kink: bool  # a ReLU / max-pool switched at w +- eps (the plain difference would be off)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["index"] = list(self.index)
        return d


class _PatternReLU(nn.Module):
    """ReLU whose on/off pattern can be recorded, then replayed (see `_pattern_copy`).

    One pattern per call in a forward pass: a module called more than once (torchvision's
    ResNet blocks apply one `relu` twice) replays each call's own pattern. `start()` before
    each forward pass rewinds to the first call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode = "record"
        self.masks: list[torch.Tensor] = []
        self.call = 0
        self.switched = False

    def start(self) -> None:
        self.call = 0
        if self.mode == "record":
            self.masks = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = x > 0
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.masks.append(on)
            return x * on
        mask = self.masks[i]
        self.switched |= bool((on != mask).any())
        return x * (mask if self.mode == "replay" else on)


class _PatternPiecewise(_PatternReLU):
    """ReLU6, Hardsigmoid or Hardswish (MobileNets) with its pieces recorded, then replayed.

    Each input falls in one of three pieces (below `lo`, between, at or above `hi`); the
    recorded piece decides which formula applies, as the recorded on/off pattern does for ReLU.
    """

    BOUNDS = {"relu6": (0.0, 6.0), "hardsigmoid": (-3.0, 3.0), "hardswish": (-3.0, 3.0)}

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.BOUNDS[self.kind]
        piece = (x > lo).to(torch.int8) + (x >= hi).to(
            torch.int8
        )  # 0, 1, 2: torch's own boundaries
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.masks.append(piece)
        else:
            self.switched |= bool((piece != self.masks[i]).any())
            if self.mode == "replay":
                piece = self.masks[i]
        zero = torch.zeros_like(x)
        if self.kind == "relu6":
            return torch.where(
                piece == 0, zero, torch.where(piece == 2, torch.full_like(x, 6.0), x)
            )
        gate = torch.where(
            piece == 0, zero, torch.where(piece == 2, torch.ones_like(x), (x + 3) / 6)
        )
        return gate if self.kind == "hardsigmoid" else x * gate


class _PatternMaxPool(nn.Module):
    """Max-pool whose argmax positions can be recorded, then replayed (one set per call).

    Like `_PatternReLU`.
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool
        self.mode = "record"
        self.indices: list[torch.Tensor] = []
        self.call = 0
        self.switched = False

    def start(self) -> None:
        self.call = 0
        if self.mode == "record":
            self.indices = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        out, idx = F.max_pool2d(
            x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode, return_indices=True
        )
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.indices.append(idx)
            return out
        recorded = self.indices[i]
        self.switched |= bool((idx != recorded).any())
        if self.mode == "free":
            return out
        flat = x.flatten(2).gather(2, recorded.flatten(2))
        return flat.view_as(out)


def _pattern_copy(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of `model` whose ReLUs (and ReLU6, Hardsigmoid, Hardswish) and max-pools record."""
    m = copy.deepcopy(model)
    swapped: list[nn.Module] = []
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.ReLU):
            new: nn.Module = _PatternReLU()
        elif isinstance(mod, nn.ReLU6 | nn.Hardsigmoid | nn.Hardswish):
            new = _PatternPiecewise(type(mod).__name__.lower())
        elif isinstance(mod, nn.MaxPool2d):
            new = _PatternMaxPool(mod)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(m.get_submodule(parent_name) if parent_name else m, child, new)
        swapped.append(new)
    return m, swapped


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
    `freeze_kinks` (default) the differences are taken with the ReLU on/off
    pattern and max-pool winners recorded at w held fixed: the same piece autograd
    differentiates, and smooth (the logits are affine in one weight; only the
    softmax curves), so eps can be large enough to keep round-off small.

    Measured (docs/representations.md): unfrozen differences are off by up to
    4e-1 at eps=1e-3 and 6e-3 at 1e-6 (kinks); frozen plain differences reach
    1e-8 but degrade to 2e-5 on a trained model (truncation); frozen Richardson
    at the default eps=1e-3 stayed below 2e-7 on every model tried.
    `kink` says whether the unfrozen function switched a unit at w +- eps,
    i.e. whether freezing mattered for that weight. nn.ReLU, nn.ReLU6,
    nn.Hardsigmoid, nn.Hardswish and nn.MaxPool2d modules are frozen (each call
    of a module used twice replays its own pattern); functional calls (F.relu)
    and other piecewise modules (LeakyReLU, Hardtanh, ...) still add kink noise.

    relative error = |a - n| / max(|a|, |n|, 1e-12); entries whose gradient is
    exactly 0 on both sides therefore report 0.
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
    analytic = {n: m.weight.grad.detach().clone() for n, m in convs}

    probe_model, patterned = _pattern_copy(base)
    probe_model.eval()
    rng = np.random.default_rng(seed)
    rows: list[GradCheckRow] = []

    def f() -> float:
        for mod in patterned:
            mod.start()
        return float(F.cross_entropy(probe_model(x64), y64))

    with torch.no_grad():
        for mod in patterned:
            mod.mode = "record"
        f()
        for mod in patterned:
            mod.mode = "replay" if freeze_kinks else "free"
        for name, _ in convs:
            w = probe_model.get_submodule(name).weight
            k = min(n_samples_per_layer, w.numel())
            picks = np.sort(rng.choice(w.numel(), size=k, replace=False))
            flat = w.view(-1)
            for flat_idx in picks.tolist():
                for mod in patterned:
                    mod.switched = False
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
                kink = any(mod.switched for mod in patterned)
                ana = float(analytic[name].view(-1)[flat_idx])
                rel = abs(ana - num) / max(abs(ana), abs(num), 1e-12)
                idx = tuple(int(i) for i in np.unravel_index(flat_idx, tuple(w.shape)))
                rows.append(GradCheckRow(name, idx, ana, num, rel, kink))
    return rows
