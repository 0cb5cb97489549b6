"""Loss and accuracy surfaces around a checkpoint (Li et al., 2018).

A direction is a dict {parameter name: tensor}, so it survives a change of
parameter order and serves every epoch of a run. Three kinds:
- "filter": Gaussian, rescaled per output channel (filter) to the norm of that
  filter of the weights; 1-D tensors (biases, BatchNorm) are zeroed.
- "random": Gaussian, rescaled as a whole to the norm of the weights; 1-D zeroed.
- "pca": the top two principal directions of the training trajectory (a sequence of
  state dicts), computed through the epochs x epochs Gram matrix of the displacements
  from the centre; the path's projection and the fraction of every step the plane
  captures come with them.

The random draw of each parameter is seeded by (seed, axis, name): the same seed
gives the same Gaussian at every epoch; the filter scaling follows the centre's
weights, as in Li et al.

`center_over_batches` evaluates the centre alone on B disjoint batches: per-batch
loss and accuracy, their mean and standard error (the variation over the data), and
the combined value over all the images (the sample-weighted mean of the per-batch
ones, which is exact: the loss is a mean over images).

A surface is evaluated point by point with `functional_call` (the module is never
modified) in eval mode. BatchNorm "frozen" keeps the centre checkpoint's running
statistics at every point (Li et al.); "recalibrate" re-estimates them per point on
a fixed calibration batch. Arrays are indexed [row = beta (y) index, column = alpha
(x) index], the layout matplotlib's `contour(alpha, beta, loss)` expects. How each point
is evaluated (BatchNorm mode, batch size, loss, points per pass, memory layout) is one
`SurfaceConfig`, taken by `surface`, `surface_rows` and `center_over_batches`, or its
fields as keywords.

Guarantees: the model is never modified (weights, buffers, train/eval flags); loss and
accuracy are accumulated in float64 over mini-batches weighted by sample count; the same
seed gives the same directions; a NaN/inf loss at the centre is a `probe.ProbeError`, a bad
option a `probe.UsageError` naming it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from probe.numerics.checks import check, check_finite
from probe.numerics.loss import LossFn, analysis_mode, split
from probe.numerics.options import Options

__all__ = [
    "BN_MODES",
    "DIRECTION_KINDS",
    "CenterSpread",
    "Direction",
    "Directions",
    "Surface",
    "SurfaceConfig",
    "center_over_batches",
    "grid",
    "pca_directions",
    "random_directions",
    "surface",
    "surface_rows",
]

Direction = dict[str, torch.Tensor]
DIRECTION_KINDS = ("filter", "random")
BN_MODES = ("frozen", "recalibrate")


@dataclass(frozen=True, kw_only=True)
class SurfaceConfig(Options):
    """How each point of a surface is evaluated.

    `bn`: "frozen" keeps the centre checkpoint's BatchNorm statistics at every point (Li et
    al.); "recalibrate" re-estimates them per point on a calibration batch (`calib_x` of the
    functions below). `batch_size`: images per forward pass (results averaged weighted by
    sample count). `loss_fn`: default mean cross-entropy. `points_per_pass` > 1 evaluates that
    many grid points in one vmapped pass (faster on a GPU with small batches, slower on CPU).
    `channels_last` picks the faster convolution layout on CPU.
    """

    bn: str = "frozen"
    batch_size: int = 1024
    loss_fn: LossFn | None = None
    points_per_pass: int = 1
    channels_last: bool = True

    def __post_init__(self) -> None:
        check(self.bn in BN_MODES, "bn", f"must be one of {BN_MODES}, got {self.bn!r}")
        check(
            self.points_per_pass >= 1,
            "points_per_pass",
            f"must be >= 1, got {self.points_per_pass}",
        )


@dataclass
class Directions:
    """One or two directions, how they were made, and (PCA) the projected path."""

    axes: list[Direction]
    kind: str
    seed: int | None = None
    path: np.ndarray | None = None  # (T, 2) coordinates of each state in the plane
    captured: np.ndarray | None = None  # (T-1,) fraction of each step's squared length in the plane
    explained: np.ndarray | None = None  # (2,) fraction of the total squared displacement per axis


# --- random directions ---------------------------------------------------------------


def _generator(seed: int, axis: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{axis}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_directions(
    model: nn.Module,
    n: int = 2,
    *,
    kind: str = "filter",
    seed: int = 0,
    include_bias_bn: bool = False,
) -> Directions:
    """`n` seeded Gaussian directions keyed by parameter name, scaled to `model`'s weights.

    kind="filter" normalises each output channel (dim 0 slice) to the norm of the same
    slice of the weights; kind="random" normalises the whole direction to the norm of
    the (included) weights. 1-D tensors (biases, BatchNorm affine) are zeroed unless
    `include_bias_bn`, in which case they are scaled to their tensor's norm.
    """
    check(kind in DIRECTION_KINDS, "kind", f"must be one of {DIRECTION_KINDS}, got {kind!r}")
    check(n in (1, 2), "n", f"must be 1 or 2, got {n}")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    axes = []
    for axis in range(n):
        d: Direction = {}
        for name, w in params.items():
            g = torch.randn(w.shape, generator=_generator(seed, axis, name), dtype=torch.float32)
            g = g.to(device=w.device, dtype=w.dtype)
            if w.dim() <= 1 and not include_bias_bn:
                g.zero_()
            elif kind == "filter":
                if w.dim() <= 1:
                    g *= w.norm() / (g.norm() + 1e-10)
                else:
                    dims = tuple(range(1, w.dim()))
                    g *= w.pow(2).sum(dims, keepdim=True).sqrt() / (
                        g.pow(2).sum(dims, keepdim=True).sqrt() + 1e-10
                    )
            d[name] = g
        if kind == "random":
            used = [k for k, w in params.items() if w.dim() > 1 or include_bias_bn]
            wn = math.sqrt(sum(float(params[k].pow(2).sum()) for k in used))
            dn = math.sqrt(sum(float(d[k].pow(2).sum()) for k in used))
            for k in used:
                d[k] *= wn / (dn + 1e-10)
        axes.append(d)
    return Directions(axes, kind, seed)


# --- trajectory PCA -------------------------------------------------------------------


def _flat(
    state: Mapping[str, torch.Tensor], center: Mapping[str, torch.Tensor], names: list[str]
) -> torch.Tensor:
    return torch.cat(
        [(state[n].detach().to(center[n]) - center[n]).reshape(-1) for n in names]
    ).double()


def pca_directions(
    model: nn.Module,
    states: Sequence[Mapping[str, torch.Tensor]],
    *,
    mean_center: bool = False,
    max_bytes: int = 1 << 28,
) -> Directions:
    """The plane through `model`'s weights that best captures a training trajectory.

    `states` are state dicts along the trajectory (e.g. one per epoch); it is indexed
    more than once, so pass a lazy sequence to stream them from disk. Only
    `model`'s parameters are used (buffers are not directions). With the
    displacements d_i = w_i - w_centre, the Gram matrix G = D D^T (T x T) is built
    in blocks of at most `max_bytes` of float64 displacements, its top two
    eigenvectors u_k give unit directions e_k = D^T u_k / sqrt(lambda_k) in a second
    streaming pass, and the path coordinates and captured fractions follow from G
    alone. `mean_center` subtracts the mean displacement first (what sklearn's PCA
    in Li et al.'s code does); by default the plane is the best one through the
    centre itself.
    """
    t = len(states)
    check(t >= 2, "states", f"need at least 2 checkpoints for a trajectory, got {t}")
    center = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    names = list(center)
    missing = [n for n in names if n not in states[0]]
    check(not missing, "states", f"state dicts lack parameters {missing[:3]}")
    dim = sum(p.numel() for p in center.values())
    block = max(1, min(t, max_bytes // (8 * dim)))
    gram = torch.zeros(t, t, dtype=torch.float64)
    cache: dict[int, torch.Tensor] = {}
    for i0 in range(0, t, block):
        rows = torch.stack([_flat(states[i], center, names) for i in range(i0, min(t, i0 + block))])
        gram[i0 : i0 + len(rows), i0 : i0 + len(rows)] = (rows @ rows.T).cpu()
        for j0 in range(0, i0, block):
            cols = torch.stack(
                [_flat(states[j], center, names) for j in range(j0, min(t, j0 + block))]
            )
            g = (rows @ cols.T).cpu()
            gram[i0 : i0 + len(rows), j0 : j0 + len(cols)] = g
            gram[j0 : j0 + len(cols), i0 : i0 + len(rows)] = g.T
        if block >= t:
            cache = dict(enumerate(rows))
    g_used = gram
    if mean_center:
        j = torch.eye(t, dtype=torch.float64) - 1.0 / t
        g_used = j @ gram @ j
    lam, u = torch.linalg.eigh(g_used)
    lam, u = lam.flip(0)[:2], u.flip(1)[:, :2]
    check(
        bool(lam[1] > 1e-12 * max(float(lam[0]), 1e-300)),
        "states",
        "the trajectory spans fewer than two directions (are the checkpoints distinct?)",
    )
    coef = u / lam.sqrt()  # e_k = sum_i coef[i, k] d_i (also mean-centred: J u_k = u_k)
    axes: list[Direction] = [{n: torch.zeros_like(p) for n, p in center.items()} for _ in range(2)]
    for i in range(t):
        d = cache[i] if i in cache else _flat(states[i], center, names)
        off = 0
        for n in names:
            k = center[n].numel()
            piece = d[off : off + k].view(center[n].shape)
            for a in range(2):
                axes[a][n] += (float(coef[i, a]) * piece).to(center[n].dtype)
            off += k
    path = (gram @ coef).numpy()  # d_i . e_k
    steps = np.diff(path, axis=0)
    g = gram.numpy()
    step_sq = np.diag(g)[1:] + np.diag(g)[:-1] - 2 * np.diag(g, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        captured = np.where(step_sq > 0, (steps**2).sum(1) / step_sq, np.nan)
    explained = (lam / torch.trace(g_used)).numpy()
    return Directions(axes, "pca", None, path, captured, explained)


# --- evaluating a grid ------------------------------------------------------------------


@dataclass
class Surface:
    """Loss and accuracy on a grid; loss[j, i] is at (alpha[i], beta[j]) (1-D: loss[i])."""

    alpha: np.ndarray
    beta: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    center_loss: float
    center_accuracy: float
    bn: str
    kind: str
    seed: int | None
    n_samples: int


class _GridEvaluator:
    """Mean loss and accuracy over a fixed batch at points centre + a*d1 + b*d2."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        directions: Directions,
        config: SurfaceConfig,
        calib_x: torch.Tensor | None,
    ):
        bn, batch_size = config.bn, config.batch_size
        check(
            bn != "recalibrate" or calib_x is not None,
            "calib_x",
            "is required with bn='recalibrate'",
        )
        self.model, self.bn, self.loss_fn = model, bn, config.loss_fn or F.cross_entropy
        self.center = {k: p.detach() for k, p in model.named_parameters()}
        device = next(iter(self.center.values())).device
        layout = torch.channels_last if config.channels_last else torch.contiguous_format

        def fmt(t: torch.Tensor) -> torch.Tensor:
            return t.contiguous(memory_format=layout) if t.dim() == 4 else t

        self.center = {k: fmt(p) for k, p in self.center.items()}
        self.axes = [
            {k: fmt(d[k].to(p)) for k, p in self.center.items() if k in d} for d in directions.axes
        ]
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.batches = [
            (fmt(xb.to(device)), yb.to(device), w) for xb, yb, w in split(x, y, batch_size)
        ]
        self.calib = (
            [fmt(c.to(device)) for c in calib_x.split(batch_size)] if calib_x is not None else []
        )
        self.points_per_pass = config.points_per_pass
        self.n_samples = len(x)

    def params_at(self, a: float, b: float = 0.0) -> dict[str, torch.Tensor]:
        p = dict(self.center)
        for coef, axis in zip((a, b), self.axes, strict=False):
            if coef:
                for k, d in axis.items():
                    p[k] = p[k] + coef * d
        return p

    def _recalibrated(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fresh BatchNorm statistics at `params`: a cumulative average over the calibration set."""
        bufs = {k: b.clone() for k, b in self.buffers.items()}
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m, m.training, m.momentum) for m in bns]
        try:
            for m in bns:
                m.training, m.momentum = True, None
            for name, m in self.model.named_modules():
                if m in bns and m.track_running_stats:
                    bufs[f"{name}.running_mean"].zero_()
                    bufs[f"{name}.running_var"].fill_(1.0)
                    bufs[f"{name}.num_batches_tracked"].zero_()
            for xb in self.calib:
                functional_call(self.model, (params, bufs), (xb,))
        finally:
            for m, training, momentum in saved:
                m.training, m.momentum = training, momentum
        return bufs

    def _stats(self, out: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point (loss, accuracy) of logits `out` of shape (..., n, classes)."""
        lead = out.shape[:-2]
        flat = out.reshape(-1, out.shape[-2], out.shape[-1])
        loss = torch.stack([self.loss_fn(o, yb) for o in flat]).reshape(lead)
        if out.shape[-1] > 1 and not yb.is_floating_point():
            acc = (out.argmax(-1) == yb).to(torch.float64).mean(-1)
        else:
            acc = torch.full(lead, math.nan, dtype=torch.float64)
        return loss.to(torch.float64), acc

    @torch.no_grad()
    def points(self, coords: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy at each (a, b), averaged over the batch weighted by sample count."""
        loss, acc = np.zeros(len(coords)), np.zeros(len(coords))
        with analysis_mode(self.model, "eval"):
            step = 1 if self.bn == "recalibrate" else self.points_per_pass
            for s in range(0, len(coords), step):
                chunk = coords[s : s + step]
                if len(chunk) == 1:
                    p = self.params_at(*chunk[0])
                    bufs = self._recalibrated(p) if self.bn == "recalibrate" else self.buffers
                    for xb, yb, w in self.batches:
                        lb, ab = self._stats(
                            functional_call(self.model, (p, bufs), (xb,))[None], yb
                        )
                        loss[s] += w * float(lb[0])
                        acc[s] += w * float(ab[0])
                    continue
                ps = [self.params_at(*c) for c in chunk]
                stacked = {k: torch.stack([p[k] for p in ps]) for k in ps[0]}
                for xb, yb, w in self.batches:
                    out = vmap(
                        lambda q, xb=xb: functional_call(self.model, (q, self.buffers), (xb,))
                    )(stacked)
                    lb, ab = self._stats(out, yb)
                    loss[s : s + len(chunk)] += w * lb.cpu().numpy()
                    acc[s : s + len(chunk)] += w * ab.cpu().numpy()
        return loss, acc


def grid(span: tuple[float, float] = (-1.0, 1.0), resolution: int = 21) -> np.ndarray:
    """Evenly spaced coordinates; an odd resolution on a symmetric span includes 0."""
    check(resolution >= 2, "resolution", f"must be >= 2, got {resolution}")
    check(span[0] < span[1], "span", f"must be increasing, got {span}")
    return np.linspace(span[0], span[1], resolution)


def surface_rows(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    directions: Directions,
    alpha: np.ndarray,
    beta: np.ndarray,
    rows: Sequence[int],
    config: SurfaceConfig | None = None,
    *,
    calib_x: torch.Tensor | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of a 2-D surface: arrays (len(rows), len(alpha)) of loss and accuracy.

    Independent of every other row, so a large grid can be split across workers and
    the pieces stacked in row order. `config` (default `SurfaceConfig()`) with `options`
    replacing some of its fields.
    """
    check(len(directions.axes) == 2, "directions", "a 2-D surface needs two directions")
    cfg = SurfaceConfig.of(config, **options)
    ev = _GridEvaluator(model, x, y, directions, cfg, calib_x)
    coords = [(float(a), float(beta[j])) for j in rows for a in alpha]
    loss, acc = ev.points(coords)
    return loss.reshape(len(rows), len(alpha)), acc.reshape(len(rows), len(alpha))


def surface(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    directions: Directions,
    config: SurfaceConfig | None = None,
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    resolution: int = 21,
    span_y: tuple[float, float] | None = None,
    resolution_y: int | None = None,
    calib_x: torch.Tensor | None = None,
    **options: Any,
) -> Surface:
    """A 1-D (one direction) or 2-D (two) surface of loss and accuracy around `model`.

    The grid is `resolution` points over `span` along the first direction (and
    `resolution_y` over `span_y`, default the same, along the second). The centre (the
    model itself) is always evaluated, and a NaN/inf loss there is an error. Loss is the
    mean over `x` (mini-batches weighted by sample count); accuracy is top-1. How each
    point is evaluated: `config` (default `SurfaceConfig()`) with `options` replacing some
    of its fields; `calib_x` is the calibration batch of bn="recalibrate".
    """
    cfg = SurfaceConfig.of(config, **options)
    alpha = grid(span, resolution)
    two_d = len(directions.axes) == 2
    beta = grid(span_y or span, resolution_y or resolution) if two_d else None
    ev = _GridEvaluator(model, x, y, directions, cfg, calib_x)
    c_loss, c_acc = ev.points([(0.0, 0.0)])
    check_finite(float(c_loss[0]))
    if two_d:
        coords = [(float(a), float(b)) for b in beta for a in alpha]
        loss, acc = ev.points(coords)
        loss, acc = loss.reshape(len(beta), len(alpha)), acc.reshape(len(beta), len(alpha))
    else:
        loss, acc = ev.points([(float(a), 0.0) for a in alpha])
    return Surface(
        alpha,
        beta,
        loss,
        acc,
        float(c_loss[0]),
        float(c_acc[0]),
        cfg.bn,
        directions.kind,
        directions.seed,
        ev.n_samples,
    )


# --- the centre over several batches -------------------------------------------------------


@dataclass
class CenterSpread:
    """Centre loss/accuracy on B disjoint batches and on their union (`combined_*`)."""

    batches: int
    images_per_batch: int
    loss: list[float]
    accuracy: list[float]
    loss_mean: float
    loss_stderr: float | None  # over batches; None for one batch
    accuracy_mean: float
    accuracy_stderr: float | None
    combined_loss: float
    combined_accuracy: float
    bn: str


def _mean_se(v: np.ndarray) -> tuple[float, float | None]:
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None)


def center_over_batches(
    model: nn.Module,
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    config: SurfaceConfig | None = None,
    *,
    calib_x: torch.Tensor | None = None,
    **options: Any,
) -> CenterSpread:
    """The centre's loss and accuracy on each (x, y) of `parts`, and combined over all of them.

    One forward pass over each image in all: B batches cost what their union costs.
    A NaN/inf loss on any batch is an error. `config` and `options` as for `surface`.
    """
    check(len(parts) >= 1, "batches", "need at least one batch")
    cfg = SurfaceConfig.of(config, **options)
    none = Directions([], "centre")
    losses, accs, sizes = [], [], []
    for xb, yb in parts:
        lo, ac = _GridEvaluator(model, xb, yb, none, cfg, calib_x).points([(0.0, 0.0)])
        losses.append(check_finite(float(lo[0])))
        accs.append(float(ac[0]))
        sizes.append(len(xb))
    w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    lm, ls = _mean_se(np.asarray(losses))
    am, asd = _mean_se(np.asarray(accs))
    return CenterSpread(
        len(parts),
        len(parts[0][0]),
        losses,
        accs,
        lm,
        ls,
        am,
        asd,
        float(w @ np.asarray(losses)),
        float(w @ np.asarray(accs)),
        cfg.bn,
    )
