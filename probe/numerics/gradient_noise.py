"""Gradient noise from per-example gradients: noise scale, signal-to-noise ratio, diversity.

For a model with parameters theta and per-example losses l_i (cross-entropy by default),
the per-example gradients g_i = grad l_i(theta) of n images give, per parameter block
(a layer: every parameter of one module) and for the whole model:

- the mean gradient G = (1/n) sum_i g_i (the gradient of the mean loss) and |G|;
- tr(Sigma) = (1/(n-1)) sum_i |g_i - G|^2, the trace of the per-example covariance;
- **B_simple** = tr(Sigma) / |G_true|^2 (McCandlish et al., 2018, "An Empirical Model of
  Large-Batch Training", eq. 2.3 and appendix A), the critical batch size's simple
  estimate: the batch size at which the gradient's noise equals its signal. |G_true|^2
  is estimated without bias as |G|^2 - tr(Sigma)/n (their appendix A with B_small = 1,
  B_big = n); when that is <= 0 the noise swamps the signal at n images and B_simple is
  None (the result says so). `b_simple_biased` = tr(Sigma) / |G|^2 is always defined and
  smaller;
- the gradient signal-to-noise ratio (Liu et al., 2020, "Understanding Why Neural Networks
  Generalize Well Through GSNR of Parameters"): per parameter j, r_j = G_j^2 / var_i(g_ij)
  (variance with ddof=1), averaged over the block's parameters whose variance is not zero
  (those are counted apart);
- the gradient diversity (Yin et al., 2018, "Gradient Diversity: a Key Ingredient for
  Scalable Distributed Learning"): Delta = sum_i |g_i|^2 / |sum_i g_i|^2, in [1/n, inf);
  Yin et al. bound the batch size that keeps mini-batch SGD's speed-up by n * Delta.

Per-example gradients come from `torch.func` (`vmap(grad(functional_call(...)))`), in
chunks of `chunk` images, with the model in eval mode: dropout off and BatchNorm using its
running statistics. (In train mode BatchNorm normalises each image with its batch's
statistics, so a "per-example" gradient would depend on the other images.) The model is
never modified: parameters go in as a dict. Statistics are accumulated per chunk in
float64 (mean and sum of squared deviations, merged with Chan et al.'s pairwise update),
so no n x P array is ever held.

Peak memory, P parameters, the largest parameter tensor P_max, `chunk` images:
chunk x P x (4 or 8: the gradients' dtype) for one chunk's per-example gradients,
+ chunk x P_max x 8 for one tensor's float64 copy, + 2 x P x 8 for the running statistics,
+ the activations of a forward and backward pass of `chunk` images (`memory_bound` gives
the first three). The loss differentiated is the data term only: weight decay adds the
same vector to every g_i and moves none of the noise statistics but |G|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from probe.numerics.checks import check
from probe.numerics.loss import analysis_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def layer_of(name: str) -> str:
    """The module a parameter belongs to (`features.0.weight` -> `features.0`)."""
    return name.rpartition(".")[0] or name


def _inputs(
    model: nn.Module, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's parameters and buffers as detached tensors (cast to `dtype` when given)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    params = {k: cast(p) for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: cast(b) for k, b in model.named_buffers()}
    return params, buffers


def per_example_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
    with_loss: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{parameter name: [n, *shape]} gradients of each example's loss, eval mode, in one pass.

    `loss_fn(logits, targets)` is called on a batch of one (default: cross-entropy).
    `dtype`: compute in this floating dtype (the model is not cast; a copy of its tensors
    goes in). `with_loss`: also return the [n] per-example losses. For many images use
    `gradient_noise`, which chunks.
    """
    loss_fn = loss_fn or F.cross_entropy
    params, buffers = _inputs(model, dtype)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    if dtype is not None and y.is_floating_point():
        y = y.to(dtype)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    with analysis_mode(model, "eval"):
        grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(params, x, y)
    return (grads, losses) if with_loss else grads


@dataclass
class RunningMoments:
    """Per-parameter mean and sum of squared deviations over examples (float64), chunk by chunk."""

    n: int = 0
    mean: dict[str, torch.Tensor] = field(default_factory=dict)
    m2: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, name: str, g: torch.Tensor) -> None:
        """Merge a chunk [k, *shape] of one parameter's per-example gradients; `count` after."""
        g = g.to(torch.float64)
        k = g.shape[0]
        mb = g.mean(0)
        m2b = ((g - mb) ** 2).sum(0)
        if name not in self.mean:
            self.mean[name], self.m2[name] = mb, m2b
            return
        n = self.n
        delta = mb - self.mean[name]
        self.mean[name] = self.mean[name] + delta * (k / (n + k))
        self.m2[name] = self.m2[name] + m2b + delta**2 * (n * k / (n + k))

    def count(self, k: int) -> None:
        self.n += k


@dataclass
class NoiseStats:
    """The noise statistics of one parameter block (or of the whole model, `name` "all")."""

    name: str
    parameters: int
    grad_norm: float  # |G|, the mean gradient's norm
    grad_norm_sq_unbiased: float  # |G|^2 - tr(Sigma)/n, McCandlish et al.'s estimate of |G_true|^2
    trace_cov: float  # tr(Sigma), per-example covariance (ddof=1)
    b_simple: float | None  # tr(Sigma) / |G_true|^2 estimate; None when that estimate is <= 0
    b_simple_biased: float | None  # tr(Sigma) / |G|^2
    snr: float | None  # mean over parameters of G_j^2 / var_j (parameters with var_j > 0)
    snr_median: float | None
    diversity: float | None  # sum_i |g_i|^2 / |sum_i g_i|^2
    zero_variance: int  # parameters whose per-example gradient never varies (left out of snr)


def block_stats(name: str, mean: torch.Tensor, m2: torch.Tensor, n: int) -> NoiseStats:
    """`NoiseStats` from the flat float64 means [P] and squared-deviation sums [P] of n examples."""
    g2 = float(mean.pow(2).sum())
    trace = float(m2.sum()) / (n - 1)
    unbiased = g2 - trace / n
    var = m2 / (n - 1)
    varying = var > 0
    ratio = mean[varying].pow(2) / var[varying]
    sum_sq = float(m2.sum()) + n * g2  # sum_i |g_i|^2
    return NoiseStats(
        name=name,
        parameters=int(mean.numel()),
        grad_norm=math.sqrt(g2),
        grad_norm_sq_unbiased=unbiased,
        trace_cov=trace,
        b_simple=trace / unbiased if unbiased > 0 else None,
        b_simple_biased=trace / g2 if g2 > 0 else None,
        snr=float(ratio.mean()) if ratio.numel() else None,
        snr_median=float(ratio.median()) if ratio.numel() else None,
        diversity=sum_sq / (n * n * g2) if g2 > 0 else None,
        zero_variance=int((~varying).sum()),
    )


@dataclass
class GradientNoise:
    """Noise statistics per block (network order) and of the whole model, and how they were made."""

    blocks: list[NoiseStats]
    total: NoiseStats
    n_images: int
    chunk: int
    dtype: str
    memory_bound_bytes: int
    loss: float  # mean loss over the images
    mode: str = "eval (dropout off, BatchNorm running statistics)"
    notes: list[str] = field(default_factory=list)


def memory_bound(model: nn.Module, chunk: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of per-example gradients, one float64 tensor copy and the float64 statistics."""
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    p, p_max = sum(sizes), max(sizes, default=0)
    item = torch.empty((), dtype=dtype).element_size()
    return chunk * p * item + chunk * p_max * 8 + 2 * p * 8


def _notes(blocks: list[NoiseStats], total: NoiseStats, n: int) -> list[str]:
    notes = []
    swamped = [b.name for b in [*blocks, total] if b.b_simple is None and b.trace_cov > 0]
    if swamped:
        notes.append(
            f"B_simple undefined for {', '.join(swamped)}: |G|^2 - tr(Sigma)/n <= 0, the noise "
            f"exceeds the signal at n = {n} images (the critical batch size is above n or the "
            "gradient is ~0); b_simple_biased is given instead"
        )
    still = [b.name for b in blocks if b.zero_variance]
    if still:
        notes.append(
            f"parameters with zero per-example gradient variance (dead units or unused "
            f"parameters) left out of the SNR in: {', '.join(still)}"
        )
    return notes


def gradient_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk: int = 64,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype = torch.float32,
) -> GradientNoise:
    """Per-block and whole-model gradient noise statistics of `model` on (x, y), eval mode.

    Per-example gradients are computed `chunk` images at a time and reduced to float64
    running moments; peak memory is `memory_bound(model, chunk, dtype)` plus one chunk's
    activations. `dtype` float64 computes the gradients on a float64 copy of the tensors.
    """
    n = len(x)
    check(n >= 2, "n_images", f"the noise statistics need at least 2 images, got {n}")
    check(len(y) == n, "y", f"has {len(y)} entries for {n} inputs")
    check(chunk >= 1, "chunk", f"must be >= 1, got {chunk}")
    moments = RunningMoments()
    loss_fn = loss_fn or F.cross_entropy
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    cast = None if dtype == next(model.parameters()).dtype else dtype
    loss_sum = 0.0
    for s in range(0, n, chunk):
        grads, losses = per_example_gradients(
            model, x[s : s + chunk], y[s : s + chunk], loss_fn=loss_fn, dtype=cast, with_loss=True
        )
        for name in names:
            moments.add(name, grads.pop(name))
        moments.count(len(losses))
        loss_sum += float(losses.double().sum())
    order: list[str] = []
    for name in names:
        if layer_of(name) not in order:
            order.append(layer_of(name))
    flat = {layer: [name for name in names if layer_of(name) == layer] for layer in order}

    def joined(which: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
        return torch.cat([which[k].reshape(-1) for k in keys])

    blocks = [
        block_stats(layer, joined(moments.mean, keys), joined(moments.m2, keys), n)
        for layer, keys in flat.items()
    ]
    total = block_stats("all", joined(moments.mean, names), joined(moments.m2, names), n)
    return GradientNoise(
        blocks=blocks,
        total=total,
        n_images=n,
        chunk=chunk,
        dtype=str(dtype).removeprefix("torch."),
        memory_bound_bytes=memory_bound(model, chunk, dtype),
        loss=loss_sum / n,
        notes=_notes(blocks, total, n),
    )
