"""The loss over a fixed batch as a function of named parameters, and the mode it is analysed in.

Every curvature, landscape and sharpness number is a function of the weights with the data
held fixed. `BatchedLoss` is that function: the mean loss (default cross-entropy) over a batch,
split into mini-batches of `batch_size` whose results are averaged weighted by sample count (so
it is the mean over the whole batch whatever the split), of the parameters analysed (the rest
and every buffer held fixed), optionally in another dtype (float64 for references) and with the
L2 term 0.5 * wd * ||w||^2.

Guarantees:
- The model is never mutated: parameters go through `torch.func.functional_call`, and
  `analysis_mode` (eval mode; BatchNorm with its running statistics, or with per-mini-batch
  statistics but its buffers never written) restores every module's train/eval flag,
  `track_running_stats` and forward on exit, also on an error.
- Bad arguments raise `probe.UsageError` naming the parameter (`probe.numerics.checks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from probe.errors import Skip
from probe.numerics.checks import check
from probe.numerics.options import Options

__all__ = [
    "BN_MODES",
    "TWICE_DIFFERENTIABLE",
    "BatchedLoss",
    "LossFn",
    "LossOptions",
    "analysis_mode",
    "has_batchnorm",
    "require_batchnorm",
    "split",
    "split_batches",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BN_MODES = ("eval", "batch")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` holds a BatchNorm layer (GroupNorm, LayerNorm keep no running statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def require_batchnorm(model: nn.Module, option: str, fallback: str) -> None:
    """`probe.Skip` for a BatchNorm-only option asked of a model without BatchNorm: the result would
    equal the default's (`fallback`), so it is not computed again under another name."""
    if not has_batchnorm(model):
        raise Skip(
            f"{option}: the model has no BatchNorm layer "
            "(GroupNorm/LayerNorm keep no running statistics); "
            f"{fallback} gives the same result"
        )


def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3) / 6


def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3) / 6


# torch implements no second derivative of hardsigmoid/hardswish (MobileNetV3's activations):
# a Hessian-vector product through them raises. The same functions written with relu6 have one
# (hardsigmoid's is 0 almost everywhere, as for ReLU), so they stand in while an analysis runs.
TWICE_DIFFERENTIABLE: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Hardsigmoid: _hardsigmoid,
    nn.Hardswish: _hardswish,
}


@contextlib.contextmanager
def analysis_mode(model: nn.Module, bn: str = "eval") -> Iterator[None]:
    """Eval mode for every module (no dropout, no running-statistics updates).

    With bn="batch", BatchNorm layers normalise with the statistics of each mini-batch
    but still never write their running buffers (track_running_stats is switched off
    for the duration). Hardsigmoid and Hardswish modules compute the same function in a
    twice-differentiable form (`TWICE_DIFFERENTIABLE`). All is restored on exit.
    """
    check(bn in BN_MODES, "bn", f"must be one of {BN_MODES}, got {bn!r}")
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    swapped = [
        m for m in model.modules() if type(m) in TWICE_DIFFERENTIABLE and "forward" not in vars(m)
    ]
    try:
        for m in swapped:
            # an instance attribute: nn.Module.__call__ finds it first
            m.forward = TWICE_DIFFERENTIABLE[type(m)]
        model.eval()
        if bn == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.training, m.track_running_stats = True, False
        yield
    finally:
        for m in swapped:
            vars(m).pop("forward", None)
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def split(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Mini-batches with their weight n_b / N, so weighted sums are means over the batch."""
    n = len(x)
    check(n > 0, "x", "the batch is empty")
    check(len(y) == n, "y", f"has {len(y)} entries for {n} inputs")
    check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
    return [
        (x[i : i + batch_size], y[i : i + batch_size], min(batch_size, n - i) / n)
        for i in range(0, n, batch_size)
    ]


def split_batches(
    x: torch.Tensor, y: torch.Tensor, batches: int, n_images: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` disjoint consecutive slices of `n_images` each from the start of (x, y)."""
    check(batches >= 1, "batches", f"must be >= 1, got {batches}")
    check(n_images >= 1, "n_images", f"must be >= 1, got {n_images}")
    check(
        batches * n_images <= len(x),
        "batches",
        f"batches * n_images = {batches} * {n_images} = {batches * n_images} exceeds the {len(x)} "
        "stored analysis images; lower batches or n_images, or train with a larger "
        "--analysis-batch-size",
    )
    return [
        (x[i * n_images : (i + 1) * n_images], y[i * n_images : (i + 1) * n_images])
        for i in range(batches)
    ]


class BatchedLoss:
    """The mean loss over a fixed batch, as a function of (some of) the named parameters.

    `params` picks the parameters analysed (default: all with requires_grad); the rest
    and all buffers are held fixed. With `dtype` the analysis runs on copies in that
    dtype (float64 for reference checks). `weight_decay` adds 0.5 * wd * ||w||^2 over
    the analysed parameters, so H gains wd * I; by default it is excluded.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        loss_fn: LossFn | None = None,
        batch_size: int = 256,
        bn: str = "eval",
        params: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        weight_decay: float = 0.0,
    ):
        check(bn in BN_MODES, "bn", f"must be one of {BN_MODES}, got {bn!r}")
        check(weight_decay >= 0, "weight_decay", f"must be >= 0, got {weight_decay}")
        named = dict(model.named_parameters())
        names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
        unknown = [n for n in names if n not in named]
        check(not unknown, "params", f"not parameters of the model: {unknown}")
        check(bool(names), "params", "no parameters to analyse")

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        self.model, self.bn, self.weight_decay = model, bn, weight_decay
        self.loss_fn = loss_fn or F.cross_entropy
        self.names = names
        self.params = {n: cast(named[n]) for n in names}
        self.fixed = {n: cast(p) for n, p in named.items() if n not in self.params}
        self.fixed.update({n: cast(b) for n, b in model.named_buffers()})
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        x = x.to(self.device)
        x = x.to(self.dtype) if x.is_floating_point() else x
        self.batches = split(x, y.to(self.device), batch_size)
        self.n_samples = len(x)
        self.batch_size = batch_size
        self.shapes = [self.params[n].shape for n in names]
        self.dim = sum(p.numel() for p in self.params.values())

    # flat <-> named
    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes, strict=True):
            k = s.numel()
            out[n] = flat[i : i + k].view(s)
            i += k
        return out

    def batch_loss(
        self, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss of one mini-batch; call inside `analysis_mode`."""
        out = functional_call(self.model, (params, self.fixed), (xb,))
        return self.loss_fn(out, yb)

    def _decay(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * sum((p * p).sum() for p in params.values())

    @torch.no_grad()
    def value(self, params: dict[str, torch.Tensor] | None = None) -> float:
        """The loss at `params` (default: the model's own), averaged over the batch."""
        params = self.params if params is None else params
        with analysis_mode(self.model, self.bn):
            total = sum(w * self.batch_loss(params, xb, yb) for xb, yb, w in self.batches)
        return float(total + self._decay(params))

    def value_and_grad(
        self, params: dict[str, torch.Tensor] | None = None
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and gradient at `params`; parameters the loss does not use get zeros."""
        params = self.params if params is None else params
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        total, grads = 0.0, {n: torch.zeros_like(p) for n, p in params.items()}
        with analysis_mode(self.model, self.bn):
            for xb, yb, w in self.batches:
                loss = w * self.batch_loss(leaves, xb, yb)
                gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                for n, g in zip(leaves, gs, strict=True):
                    if g is not None:
                        grads[n] += g
                total += float(loss.detach())
        if self.weight_decay:
            for n, p in params.items():
                grads[n] += self.weight_decay * p
        return total + float(self._decay(params)), grads

    def describe(self) -> str:
        """Which loss is differentiated, in words (goes into every report)."""
        name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        name = "mean cross-entropy" if self.loss_fn is F.cross_entropy else f"mean {name}"
        wd = (
            f"+ 0.5*{self.weight_decay:g}*||w||^2 (weight decay included)"
            if self.weight_decay
            else "(weight decay excluded)"
        )
        bn = (
            "BatchNorm in eval mode (running statistics)"
            if self.bn == "eval"
            else "BatchNorm with per-mini-batch statistics (buffers untouched)"
        )
        return (
            f"{name} {wd} over {self.n_samples} samples in {len(self.batches)} mini-batch(es) "
            f"of <= {self.batch_size}, averaged weighted by sample count; {bn}; "
            f"{len(self.names)} parameter "
            f"tensors ({self.dim} entries); {str(self.dtype).removeprefix('torch.')}"
        )


@dataclass(frozen=True, kw_only=True)
class LossOptions(Options):
    """Which loss is differentiated: the options of `BatchedLoss`, as a value other options extend.

    `loss_fn` (default mean cross-entropy), mini-batches of `batch_size`, BatchNorm `bn`
    ("eval" or "batch"), the analysed parameter names `params` (default: every one with
    requires_grad; kept as a tuple), `dtype` (None: the model's) and `weight_decay`.
    """

    loss_fn: LossFn | None = None
    batch_size: int = 256
    bn: str = "eval"
    params: tuple[str, ...] | None = None
    dtype: torch.dtype | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.params is not None:  # any sequence of names; kept as a tuple (a value)
            object.__setattr__(self, "params", tuple(self.params))
        check(self.bn in BN_MODES, "bn", f"must be one of {BN_MODES}, got {self.bn!r}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")

    def batched_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> BatchedLoss:
        """The loss these options define, over (x, y)."""
        return BatchedLoss(
            model,
            x,
            y,
            loss_fn=self.loss_fn,
            batch_size=self.batch_size,
            bn=self.bn,
            params=self.params,
            dtype=self.dtype,
            weight_decay=self.weight_decay,
        )
