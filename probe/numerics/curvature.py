"""Hessian spectra of the training loss: top/bottom eigenvalues, trace and density.

Everything here works on a `LinearOperator` over the flat parameter vector, so the
same power iteration, Lanczos, Hutchinson and SLQ code runs on a dense test matrix
and on a network's Hessian. The network side is `BatchedLoss` (the mean loss over a
fixed batch as a function of named parameters) and `HessianOperator` (H v for it).

Rules kept throughout (see shared/design/curvature-pitfalls.md):
- The model is never mutated: parameters go through `torch.func.functional_call`,
  BatchNorm is in eval mode (or uses batch statistics without touching its buffers),
  and the module's train/eval flags are restored afterwards.
- A batch larger than `batch_size` is split and the mini-batch results are averaged
  weighted by sample count, so the loss is the mean over the whole batch.
- Eigenvalues are labelled LA (largest algebraic), SA (smallest algebraic) or LM
  (largest magnitude, what plain power iteration finds), each with its residual
  ||Hv - lambda v|| / |lambda| and a converged flag that needs both a small relative
  change and a small residual.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from probe.errors import ProbeError, UsageError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVP_METHODS = ("auto", "double_backward", "forward_over_reverse")
BN_MODES = ("eval", "batch")

# A cached double-backward graph keeps every mini-batch's activations and first-order
# graph alive; above this many samples "auto" rebuilds it for every HVP instead.
CACHE_LIMIT = 1024


# --- checks ------------------------------------------------------------------------------


def check(ok: bool, param: str, message: str) -> None:
    """Raise the one-line `UsageError` naming `param` unless `ok`."""
    if not ok:
        raise UsageError(param, message)


def check_finite(loss: float, what: str = "loss") -> float:
    """A NaN/inf loss at the checkpoint makes every curvature number meaningless."""
    if not math.isfinite(loss):
        raise ProbeError(
            f"the {what} is {loss} at this checkpoint; nothing to analyse "
            "(the weights or the data contain NaN/inf, or training diverged)"
        )
    return loss


# --- the model as a pure function of its parameters --------------------------------------


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` holds a BatchNorm layer (GroupNorm and LayerNorm keep no running statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def require_batchnorm(model: nn.Module, option: str, fallback: str) -> None:
    """`probe.Skip` for a BatchNorm-only option asked of a model without BatchNorm: the result would
    equal the default's (`fallback`), so it is not computed again under another name."""
    if not has_batchnorm(model):
        from probe.errors import Skip

        raise Skip(
            f"{option}: the model has no BatchNorm layer (GroupNorm/LayerNorm keep no running statistics); "
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
            m.forward = TWICE_DIFFERENTIABLE[
                type(m)
            ]  # an instance attribute: nn.Module.__call__ finds it first
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
            f"{name} {wd} over {self.n_samples} samples in {len(self.batches)} mini-batch(es) of <= "
            f"{self.batch_size}, averaged weighted by sample count; {bn}; {len(self.names)} parameter "
            f"tensors ({self.dim} entries); {str(self.dtype).removeprefix('torch.')}"
        )


# --- linear operators ------------------------------------------------------------------


class LinearOperator(Protocol):
    """A symmetric matrix known only through products with vectors of length `dim`."""

    dim: int
    dtype: torch.dtype
    device: torch.device
    hvps: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix as a `LinearOperator` (tests, and small references)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.dim, self.dtype, self.device, self.hvps = (
            matrix.shape[0],
            matrix.dtype,
            matrix.device,
            0,
        )

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        return self.matrix @ v


class HessianOperator:
    """H v of a `BatchedLoss`, summed over mini-batches weighted by sample count.

    method: "double_backward" differentiates the gradient once more; with `cache=True`
    the first-order graph of each mini-batch is built once and reused by every HVP
    (memory grows with the batch). "forward_over_reverse" is `jvp(grad(f))` from
    torch.func and keeps no graph. "auto" is the cached double backward up to
    CACHE_LIMIT samples and the uncached one beyond: measured on CPU
    (bench/bench_curvature.py) one HVP costs 2.3x a gradient cached, 3.4-3.9x
    uncached, and 3.8-3.9x forward-over-reverse. `hvps` counts products (one per
    call, whatever the number of mini-batches).
    """

    def __init__(self, loss: BatchedLoss, method: str = "auto", cache: bool | None = None):
        check(method in HVP_METHODS, "method", f"must be one of {HVP_METHODS}, got {method!r}")
        if method == "auto":
            method = "double_backward"
            cache = loss.n_samples <= CACHE_LIMIT if cache is None else cache
        self.loss, self.method, self.cache = (
            loss,
            method,
            bool(cache) and method == "double_backward",
        )
        self.dim, self.dtype, self.device, self.hvps = loss.dim, loss.dtype, loss.device, 0
        self._graphs: list[tuple[list[torch.Tensor], list[torch.Tensor | None], float]] | None = (
            None
        )

    def _graph(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        leaves = [p.detach().requires_grad_() for p in self.loss.params.values()]
        params = dict(zip(self.loss.names, leaves, strict=True))
        with analysis_mode(self.loss.model, self.loss.bn):
            out = self.loss.batch_loss(params, xb, yb)
        gs = torch.autograd.grad(out, leaves, create_graph=True, allow_unused=True)
        return leaves, list(gs)

    def _double_backward(self, v: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
        if self.cache and self._graphs is None:
            self._graphs = [(*self._graph(xb, yb), w) for xb, yb, w in self.loss.batches]
        graphs = (
            self._graphs
            if self.cache
            else ((*self._graph(xb, yb), w) for xb, yb, w in self.loss.batches)
        )
        total: list[torch.Tensor | None] = [None] * len(v)
        vs = list(v.values())
        for leaves, gs, w in graphs:
            used = [
                (g, vi) for g, vi in zip(gs, vs, strict=True) if g is not None and g.requires_grad
            ]
            if not used:
                continue
            gv = sum((g * vi).sum() for g, vi in used)
            hv = torch.autograd.grad(gv, leaves, retain_graph=self.cache, allow_unused=True)
            for i, h in enumerate(hv):
                if h is not None:
                    total[i] = w * h if total[i] is None else total[i].add_(h, alpha=w)
        return total

    def _forward_over_reverse(self, v: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
        total: list[torch.Tensor | None] = [None] * len(v)
        with analysis_mode(self.loss.model, self.loss.bn):
            for xb, yb, w in self.loss.batches:

                def f(
                    p: dict[str, torch.Tensor], xb: torch.Tensor = xb, yb: torch.Tensor = yb
                ) -> torch.Tensor:
                    return self.loss.batch_loss(p, xb, yb)

                _, hv = jvp(grad(f), (self.loss.params,), (v,))
                for i, n in enumerate(self.loss.names):
                    total[i] = w * hv[n] if total[i] is None else total[i].add_(hv[n], alpha=w)
        return total

    def release(self) -> None:
        """Drop the cached first-order graphs (memory); later products rebuild them per product."""
        self._graphs, self.cache = None, False

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        named = self.loss.unflatten(v.to(self.dtype))
        parts = (
            self._double_backward(named)
            if self.method == "double_backward"
            else self._forward_over_reverse(named)
        )
        out = torch.cat(
            [
                (
                    torch.zeros(s, dtype=self.dtype, device=self.device)
                    if h is None
                    else h.detach()
                ).reshape(-1)
                for h, s in zip(parts, self.loss.shapes, strict=True)
            ]
        )
        if self.loss.weight_decay:
            out += self.loss.weight_decay * v
        return out


# --- eigenvalues ---------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Eigenpairs of one end of the spectrum.

    which: "LA" largest algebraic, "SA" smallest algebraic, "LM" largest magnitude.
    residuals: ||H v - lambda v|| / |lambda| per pair. converged: relative change
    below `tol` and residual below `residual_tol`. hvps: products spent (shared by
    both ends when they come from one Lanczos run).
    """

    which: str
    values: torch.Tensor
    vectors: torch.Tensor  # (k, dim), unit norm
    residuals: torch.Tensor
    converged: torch.Tensor  # bool, (k,)
    method: str
    iterations: int
    hvps: int

    def summary(self) -> dict:
        return {
            "which": self.which,
            "values": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "converged": self.converged.tolist(),
            "method": self.method,
            "iterations": self.iterations,
            "hvps": self.hvps,
        }


def _start(op: LinearOperator, k: int, init: torch.Tensor | None, seed: int) -> torch.Tensor:
    """k start vectors: the rows of `init` (warm start) first, then seeded Gaussians."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(k, op.dim, generator=gen, dtype=torch.float64).to(op.dtype).to(op.device)
    if init is not None:
        init = init.reshape(-1, op.dim).to(op.dtype).to(op.device)
        m = min(k, len(init))
        v[:m] = init[:m]
    return v


def _residual(op: LinearOperator, vec: torch.Tensor, lam: float) -> float:
    return float((op.matvec(vec) - lam * vec).norm()) / max(abs(lam), 1e-30)


def power_iteration(
    op: LinearOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    residual_tol: float = 1e-2,
    max_iter: int = 100,
    init: torch.Tensor | None = None,
    seed: int = 0,
    shift: float = 0.0,
) -> EigenResult:
    """The k largest-magnitude eigenvalues of H - shift*I (plus shift), by deflation.

    Found vectors are projected out of the iterate and of H v (power iteration on
    P H P). Stops per eigenvalue when the relative change of the Rayleigh quotient is
    below `tol` AND the residual ||Hv - lambda v|| / |lambda| is below `residual_tol`
    (relative change alone stops early when two eigenvalues are close); for a deflated
    pair the residual tested is that of P H P, since the true one cannot drop below
    the residuals of the pairs already found, and the true one is reported. With
    shift = the top eigenvalue this finds the other end of the spectrum.
    """
    check(k >= 1, "top_k", f"must be >= 1, got {k}")
    check(tol > 0, "tol", f"must be > 0, got {tol}")
    check(max_iter >= 1, "max_iter", f"must be >= 1, got {max_iter}")
    start, hvps0 = _start(op, k, init, seed), op.hvps
    vals, vecs, res, conv, iters = [], [], [], [], 0
    for i in range(k):
        q = torch.stack(vecs) if vecs else None
        v = start[i]
        lam_prev, lam, r, ok = math.nan, math.nan, math.inf, False
        for _ in range(max_iter):
            if q is not None:
                v = v - q.T @ (q @ v)
            v = v / v.norm()
            w = op.matvec(v) - shift * v
            mu = float(v @ w)
            lam = mu + shift
            r = float((w - mu * v).norm()) / max(abs(lam), 1e-30)  # the true residual
            if q is not None:
                w = w - q.T @ (q @ w)  # P H P: the found pairs are deflated
            r_deflated = float((w - mu * v).norm()) / max(abs(lam), 1e-30)
            iters += 1
            ok = abs(lam - lam_prev) <= tol * abs(lam) and r_deflated <= residual_tol
            if ok:
                break
            lam_prev, v = lam, w
        vals.append(lam)
        vecs.append(v)
        res.append(r)
        conv.append(ok)
    which = "LM" if shift == 0 else ("SA" if shift > 0 else "LA")
    return EigenResult(
        which,
        torch.tensor(vals, dtype=torch.float64),
        torch.stack(vecs),
        torch.tensor(res, dtype=torch.float64),
        torch.tensor(conv),
        "power",
        iters,
        op.hvps - hvps0,
    )


def _lanczos_run(
    op: LinearOperator,
    q0: torch.Tensor,
    steps: int,
    stop: Callable[[torch.Tensor, torch.Tensor, bool], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Lanczos with full reorthogonalisation: basis Q (m, dim), alphas (m,), betas (m,).

    betas[j] couples step j to j+1; betas[-1] is the residual norm of the last step.
    `stop(alphas, betas, breakdown)` is asked after every step. Ends early on
    breakdown (an invariant subspace: the Ritz values are then exact), flagged last.
    """
    steps = min(steps, op.dim)
    q = torch.zeros(steps, op.dim, dtype=op.dtype, device=op.device)
    alphas, betas = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps, dtype=torch.float64)
    q[0] = q0 / q0.norm()
    scale = 0.0
    for j in range(steps):
        w = op.matvec(q[j])
        alphas[j] = float(q[j] @ w)
        basis = q[: j + 1]
        for _ in range(2):  # classical Gram-Schmidt twice ("twice is enough")
            w = w - basis.T @ (basis @ w)
        betas[j] = float(w.norm())
        scale = max(scale, abs(float(alphas[j])), float(betas[j]))
        m, breakdown = j + 1, bool(betas[j] <= 1e-10 * scale)
        done = stop(alphas[:m], betas[:m], breakdown) if stop is not None else False
        if breakdown or done or m == steps:
            return q[:m], alphas[:m], betas[:m], breakdown
        q[j + 1] = w / betas[j]
    raise AssertionError("unreachable")


def _tridiag(alphas: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (ascending) and the eigenvectors of the Lanczos tridiagonal (eigh)."""
    t = torch.diag(alphas) + torch.diag(betas[:-1], 1) + torch.diag(betas[:-1], -1)
    return torch.linalg.eigh(t)


def lanczos(
    op: LinearOperator,
    k: int = 1,
    *,
    smallest: int = 0,
    tol: float = 1e-3,
    residual_tol: float = 1e-2,
    max_iter: int = 100,
    init: torch.Tensor | None = None,
    seed: int = 0,
    verify: bool = True,
) -> tuple[EigenResult, EigenResult | None]:
    """The k largest (LA) and `smallest` smallest (SA) algebraic eigenvalues.

    One Krylov space serves both ends. Full reorthogonalisation keeps the basis
    orthogonal, so the Ritz residual |beta_m * s_m| / |theta| is the true residual;
    a pair is converged when its Ritz value changed by at most `tol` (relative) in
    the last step and its residual is at most `residual_tol`. The run stops when
    every requested pair is converged, on breakdown (exact), or after `max_iter`
    HVPs. A warm start (`init`, rows = previous eigenvectors) starts from their sum.
    With `verify` the returned residuals are recomputed as ||Hv - lambda v|| / |lambda|
    (one more HVP per pair, counted in `hvps`).
    """
    check(k >= 1, "top_k", f"must be >= 1, got {k}")
    check(smallest >= 0, "smallest", f"must be >= 0, got {smallest}")
    check(tol > 0, "tol", f"must be > 0, got {tol}")
    check(max_iter >= 1, "max_iter", f"must be >= 1, got {max_iter}")
    hvps0 = op.hvps
    q0 = _start(op, 1, None, seed)[0]
    if init is not None:
        warm = init.reshape(-1, op.dim).to(op.dtype).to(op.device).sum(0)
        q0 = warm if float(warm.norm()) > 0 else q0
    state: dict = {}

    def ends(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = len(theta)
        return torch.arange(m - 1, max(m - 1 - k, -1), -1), torch.arange(0, min(smallest, m))

    def stop(alphas: torch.Tensor, betas: torch.Tensor, breakdown: bool) -> bool:
        theta, s = _tridiag(alphas, betas)
        res = (betas[-1] * s[-1, :]).abs() / theta.abs().clamp_min(1e-30)
        top, bottom = ends(theta)
        prev = state.get("theta")
        state["theta"], state["s"], state["res"], state["ok"] = theta, s, res, {}
        for name, idx in (("LA", top), ("SA", bottom)):
            if breakdown:
                state["ok"][name] = res[idx] <= residual_tol  # exact Ritz values
                continue
            if prev is None or len(prev) < len(idx):
                state["ok"][name] = torch.zeros(len(idx), dtype=torch.bool)
                continue
            p_ends = ends(prev)[0 if name == "LA" else 1]
            n = min(len(idx), len(p_ends))
            change = torch.full((len(idx),), math.inf, dtype=torch.float64)
            change[:n] = (theta[idx[:n]] - prev[p_ends[:n]]).abs() / theta[idx[:n]].abs().clamp_min(
                1e-30
            )
            state["ok"][name] = (change <= tol) & (res[idx] <= residual_tol)
        return (
            len(top) == k
            and len(bottom) == smallest
            and all(bool(v.all()) for v in state["ok"].values())
        )

    basis, alphas, betas, _ = _lanczos_run(op, q0, max_iter, stop)
    theta, s, res = state["theta"], state["s"], state["res"]
    out: dict[str, EigenResult] = {}
    for name, idx in zip(("LA", "SA"), ends(theta), strict=True):
        if name == "SA" and smallest == 0:
            continue
        vals = theta[idx]
        vecs = s[:, idx].T.to(op.dtype).to(op.device) @ basis
        vecs = vecs / vecs.norm(dim=1, keepdim=True)
        r = res[idx].clone()
        if verify:
            r = torch.tensor(
                [_residual(op, v, float(lam)) for v, lam in zip(vecs, vals, strict=True)],
                dtype=torch.float64,
            )
        ok = state["ok"][name] & (r <= residual_tol)
        out[name] = EigenResult(name, vals, vecs, r, ok, "lanczos", len(alphas), 0)
    for e in out.values():
        e.hvps = op.hvps - hvps0
    return out["LA"], out.get("SA")


def eigenvector_overlap(
    previous: torch.Tensor, current: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """How far the top eigenvectors moved between two checkpoints.

    Returns |<u_i, v_i>| per index and the subspace overlap ||U^T V||_F^2 / k (1 when
    the two spans coincide, insensitive to sign flips and to reordering of close
    eigenvalues).
    """
    u = previous.reshape(-1, previous.shape[-1]).to(torch.float64)
    v = current.reshape(-1, current.shape[-1]).to(torch.float64).to(u.device)
    u, v = u / u.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    m = min(len(u), len(v))
    per = (u[:m] * v[:m]).sum(1).abs()
    qu, _ = torch.linalg.qr(u.T)
    qv, _ = torch.linalg.qr(v.T)
    return per, float((qu.T @ qv).pow(2).sum()) / max(len(u), len(v))


# --- trace and density -----------------------------------------------------------------


@dataclass
class TraceResult:
    """Hutchinson's estimate with its standard error (stderr of the sample mean)."""

    trace: float
    stderr: float
    samples: int
    hvps: int


def _rademacher(op: LinearOperator, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(op.dtype).to(op.device)


def hutchinson_trace(
    op: LinearOperator,
    samples: int = 100,
    *,
    seed: int = 0,
    rel_stderr: float | None = None,
    min_samples: int = 10,
) -> TraceResult:
    """tr(H) ~ mean of v^T H v over Rademacher v, with the standard error of that mean.

    With `rel_stderr`, stops early once stderr <= rel_stderr * |trace| (after
    `min_samples`).
    """
    check(samples >= 2, "trace_samples", f"must be >= 2, got {samples}")
    gen, hvps0, vals = torch.Generator().manual_seed(seed), op.hvps, []
    for i in range(samples):
        v = _rademacher(op, gen)
        vals.append(float(v @ op.matvec(v)))
        if rel_stderr is not None and i + 1 >= min_samples:
            t = torch.tensor(vals, dtype=torch.float64)
            if float(t.std() / math.sqrt(len(t))) <= rel_stderr * abs(float(t.mean())):
                break
    t = torch.tensor(vals, dtype=torch.float64)
    return TraceResult(float(t.mean()), float(t.std() / math.sqrt(len(t))), len(t), op.hvps - hvps0)


@dataclass
class Density:
    """Stochastic Lanczos quadrature: per run, Ritz nodes and their weights (sum 1).

    The spectral density is the average over runs of sum_i w_i delta(x - node_i);
    `curve` smooths it with a Gaussian of width `sigma` for plotting.
    """

    nodes: torch.Tensor  # (runs, steps), padded with 0 where a run broke down early
    weights: torch.Tensor  # (runs, steps), 0 for padding
    hvps: int
    dim: int

    def curve(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        g = grid.to(torch.float64).reshape(-1, 1, 1)
        k = torch.exp(-0.5 * ((g - self.nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (k * self.weights).sum(-1).mean(-1)

    def moment(self, p: int) -> float:
        """Estimate of tr(H^p) / dim."""
        return float((self.weights * self.nodes**p).sum(-1).mean())


def slq_density(op: LinearOperator, runs: int = 5, steps: int = 60, *, seed: int = 0) -> Density:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al., 2019).

    Each run starts Lanczos (full reorthogonalisation) from a Rademacher vector;
    eigh of the tridiagonal gives the nodes and the squared first components of its
    eigenvectors the weights.
    """
    check(runs >= 1, "density_runs", f"must be >= 1, got {runs}")
    check(steps >= 2, "density_steps", f"must be >= 2, got {steps}")
    gen, hvps0 = torch.Generator().manual_seed(seed), op.hvps
    m = min(steps, op.dim)
    nodes, weights = (
        torch.zeros(runs, m, dtype=torch.float64),
        torch.zeros(runs, m, dtype=torch.float64),
    )
    for r in range(runs):
        _, alphas, betas, _ = _lanczos_run(op, _rademacher(op, gen), m)
        theta, s = _tridiag(alphas, betas)
        nodes[r, : len(theta)], weights[r, : len(theta)] = theta, s[0] ** 2
    return Density(nodes, weights, op.hvps - hvps0, op.dim)


# --- several batches and parameter blocks -------------------------------------------------

# Builds the operator of one batch's loss. The default is `HessianOperator`; another
# operator (a Gauss-Newton one, say) plugs in here, and every estimate below uses it.
OperatorFactory = Callable[[BatchedLoss], LinearOperator]
RITZ_LIMIT_BYTES = (
    2 << 30
)  # the combined Krylov basis and each batch's products on it, kept for Rayleigh-Ritz


class MeanOperator:
    """The mean of several operators of one dimension: the operator of the mean loss over equal batches.

    One product costs one product of each part; `hvps` counts products of this operator,
    the parts count their own.
    """

    def __init__(self, parts: Sequence[LinearOperator]):
        check(len(parts) >= 1, "batches", "needs at least one batch")
        self.parts = list(parts)
        first = self.parts[0]
        self.dim, self.dtype, self.device, self.hvps = first.dim, first.dtype, first.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        out = self.parts[0].matvec(v)
        for op in self.parts[1:]:
            out = out + op.matvec(v)
        return out / len(self.parts)


class RecordingMeanOperator(MeanOperator):
    """A MeanOperator that keeps every vector it is applied to and each part's product of it.

    A Lanczos run on the combined operator thus leaves, for every batch b, the
    products H_b V over the whole combined Krylov basis V: a Rayleigh-Ritz pass of each
    H_b on span(V) then costs no product (`ritz_pairs`). Recording stops (and
    `complete` turns False) once the vectors would pass `limit_bytes`.
    """

    def __init__(self, parts: Sequence[LinearOperator], limit_bytes: int):
        super().__init__(parts)
        self.limit_bytes = limit_bytes
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[list[torch.Tensor]] = [[] for _ in self.parts]
        self.complete = True

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        outs = [op.matvec(v) for op in self.parts]
        per_vector = v.numel() * v.element_size() * (len(self.parts) + 1)
        if self.complete and (len(self.inputs) + 1) * per_vector <= self.limit_bytes:
            self.inputs.append(v.detach().clone())
            for store, out in zip(self.outputs, outs, strict=True):
                store.append(out.detach().clone())
        else:
            self.complete = False
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total / len(self.parts)


def ritz_pairs(
    vectors: Sequence[torch.Tensor],
    products: Sequence[torch.Tensor],
    k: int,
    smallest: int,
    residual_tol: float,
) -> tuple[EigenResult, EigenResult | None]:
    """Rayleigh-Ritz of an operator H on span(`vectors`), given `products` = H applied to each vector.

    The span is orthonormalised through the Gram matrix (directions with Gram eigenvalue
    below 1e-10 of the largest are dropped), H is projected on it and the projection
    diagonalised; each Ritz pair's residual ||H u - theta u|| / |theta| is exact, from
    the stored products (H u = sum_i c_i H v_i), with no product spent. A pair is
    converged when that residual is at most `residual_tol`.
    """
    v = torch.stack(list(vectors)).to(torch.float64)
    hv = torch.stack(list(products)).to(torch.float64)
    gram = v @ v.T
    lam, u = torch.linalg.eigh((gram + gram.T) / 2)
    keep = lam > 1e-10 * lam.max().clamp_min(1e-300)
    w = u[:, keep] / lam[keep].sqrt()
    proj = v @ hv.T
    t = w.T @ ((proj + proj.T) / 2) @ w
    theta, s = torch.linalg.eigh(t)
    coef = w @ s  # (m, r): Ritz vector i is coef[:, i] @ v
    m = len(theta)

    def pairs(which: str, idx: torch.Tensor) -> EigenResult:
        vecs = coef[:, idx].T @ v
        hvecs = coef[:, idx].T @ hv
        vals = theta[idx]
        res = (hvecs - vals[:, None] * vecs).norm(dim=1) / vals.abs().clamp_min(1e-30)
        norms = vecs.norm(dim=1, keepdim=True)
        out = (vecs / norms).to(vectors[0].dtype)
        return EigenResult(
            which, vals.clone(), out, res, res <= residual_tol, "rayleigh-ritz", len(vectors), 0
        )

    top = pairs("LA", torch.arange(m - 1, max(m - 1 - k, -1), -1))
    bottom = pairs("SA", torch.arange(0, min(smallest, m))) if smallest else None
    return top, bottom


class BlockOperator:
    """The diagonal block H[idx, idx] of an operator: the full product of v zero-padded outside `idx`, restricted to `idx`."""

    def __init__(self, op: LinearOperator, index: torch.Tensor):
        self.op, self.index = op, index.to(op.device)
        self.dim, self.dtype, self.device, self.hvps = len(index), op.dtype, op.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        full = torch.zeros(self.op.dim, dtype=self.dtype, device=self.device)
        full[self.index] = v.to(self.dtype)
        return self.op.matvec(full)[self.index]


BLOCK_MODES = ("layer", "none")
OTHER_BLOCK = "other"


def parameter_blocks(
    model: nn.Module, names: Sequence[str], spec: str = "layer"
) -> list[tuple[str, list[str]]]:
    """Group parameter names into disjoint blocks: (block name, parameter names), in parameter order.

    "layer": one block per convolution or linear layer (its weight and bias together);
    "none": no blocks; otherwise comma-separated name patterns (fnmatch, e.g.
    "features.*,classifier.*"), each parameter in the first block whose pattern it
    matches. Parameters left over (BatchNorm affine terms under "layer") form one more
    block, "other", so the blocks cover every parameter and their traces add up to the
    full trace.
    """
    import fnmatch

    spec = spec.strip()
    if spec == "none":
        return []
    order = {n: i for i, n in enumerate(names)}
    groups: dict[str, list[str]] = {}
    if spec == "layer":
        for mod_name, module in model.named_modules():
            if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                own = [
                    f"{mod_name}.{n}" if mod_name else n
                    for n, _ in module.named_parameters(recurse=False)
                ]
                own = [n for n in own if n in order]
                if own:
                    groups[mod_name or "(model)"] = own
    else:
        patterns = [p.strip() for p in spec.split(",")]
        check(
            all(patterns),
            "--param blocks",
            f"empty pattern in {spec!r}; give 'layer', 'none' or patterns "
            "like 'features.*,classifier.*'",
        )
        check(
            OTHER_BLOCK not in patterns,
            "--param blocks",
            f"{OTHER_BLOCK!r} is the name of the left-over block",
        )
        taken: set[str] = set()
        for pat in patterns:
            hit = [n for n in names if n not in taken and fnmatch.fnmatchcase(n, pat)]
            check(
                bool(hit),
                "--param blocks",
                f"pattern {pat!r} matches no parameter not already in a block "
                f"(names look like {names[0]!r})",
            )
            groups[pat] = hit
            taken.update(hit)
    used = {n for ns in groups.values() for n in ns}
    rest = [n for n in names if n not in used]
    if rest:
        groups[OTHER_BLOCK] = rest
    return sorted(groups.items(), key=lambda kv: order[kv[1][0]])


def block_indices(loss: BatchedLoss, blocks: Sequence[tuple[str, list[str]]]) -> list[torch.Tensor]:
    """Each block's positions in the flat parameter vector of `loss`."""
    offsets, i = {}, 0
    for n, s in zip(loss.names, loss.shapes, strict=True):
        offsets[n] = (i, i + s.numel())
        i += s.numel()
    return [torch.cat([torch.arange(*offsets[n]) for n in ns]) for _, ns in blocks]


def standard_error(values: Sequence[float] | torch.Tensor) -> float:
    """Standard error of the mean, std (n - 1 in the denominator) / sqrt(n); NaN for fewer than two values."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return float(t.std() / math.sqrt(len(t))) if len(t) >= 2 else math.nan


def hutchinson_samples(
    op: LinearOperator,
    samples: int,
    *,
    seed: int = 0,
    block_id: torch.Tensor | None = None,
    blocks: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """v^T H v for `samples` seeded Rademacher v (the same v for every operator of one seed),
    and, with `block_id` (the block of each coordinate), each block's share v_b^T (H v)_b
    per sample: an unbiased estimate of that diagonal block's trace from the same
    products, whose shares add up to v^T H v exactly."""
    check(samples >= 2, "trace_samples", f"must be >= 2, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    vals = torch.zeros(samples, dtype=torch.float64)
    per_block = torch.zeros(samples, blocks, dtype=torch.float64) if block_id is not None else None
    for i in range(samples):
        v = _rademacher(op, gen)
        prod = v * op.matvec(v)
        vals[i] = float(prod.sum())
        if per_block is not None:
            per_block[i] = torch.zeros(blocks, dtype=torch.float64).index_add_(
                0, block_id, prod.detach().to(torch.float64).cpu()
            )
    return vals, per_block


def _trace(vals: torch.Tensor, hvps: int) -> TraceResult:
    return TraceResult(float(vals.mean()), standard_error(vals), len(vals), hvps)


# --- the whole analysis on a model -------------------------------------------------------


@dataclass
class BlockResult:
    """One parameter block's diagonal Hessian block: its top (LA) eigenpair and its trace."""

    name: str
    params: list[str]
    dim: int
    eigen: EigenResult
    trace: TraceResult | None
    index: torch.Tensor  # the block's positions in the flat parameter vector

    def summary(self) -> dict:
        out = {
            "name": self.name,
            "params": self.params,
            "dim": self.dim,
            "top": float(self.eigen.values[0]),
            "top_residual": float(self.eigen.residuals[0]),
            "top_converged": bool(self.eigen.converged[0]),
            "hvps": self.eigen.hvps,
        }
        if self.trace is not None:
            out["trace"], out["trace_stderr"] = self.trace.trace, self.trace.stderr
        return out


@dataclass
class HessianReport:
    """Everything `hessian_analysis` measured, with the loss it differentiated.

    `eigen`, `trace`, `density` and `blocks` are those of the combined operator (the
    mean loss over all batches). With several batches, `per_batch[b]` holds batch b's
    eigenpairs and `trace_per_batch[b]` its trace; `hvps` counts products over one
    batch (a product of the combined operator counts once per batch).
    """

    loss: float
    loss_definition: str
    eigen: list[EigenResult]
    trace: TraceResult | None
    density: Density | None
    overlap: torch.Tensor | None = None  # |<previous_i, current_i>| for the LA vectors
    subspace_overlap: float | None = None
    hvps: int = 0
    names: list[str] = field(default_factory=list)
    operator: str = "hessian"
    n_batches: int = 1
    images_per_batch: int = 0
    bn: str = "eval"
    dtype: str = "float32"
    per_batch: list[list[EigenResult]] = field(default_factory=list)
    loss_per_batch: list[float] = field(default_factory=list)
    trace_per_batch: list[TraceResult] = field(default_factory=list)
    blocks: list[BlockResult] = field(default_factory=list)

    def get(self, which: str) -> EigenResult | None:
        return next((e for e in self.eigen if e.which == which), None)

    def computed_on(self) -> dict:
        """What every number of this report was computed on."""
        return {
            "operator": self.operator,
            "images": self.n_batches * self.images_per_batch,
            "batches": self.n_batches,
            "images_per_batch": self.images_per_batch,
            "bn": self.bn,
            "dtype": self.dtype,
        }

    def over_batches(self, pos: int) -> dict:
        """Per-batch values of eigen[pos], their mean and standard error, and the combined operator's values."""
        per = (
            torch.stack([e[pos].values for e in self.per_batch])
            if self.per_batch
            else self.eigen[pos].values[None]
        )
        return {
            "per_batch": per.tolist(),
            "mean_over_batches": per.mean(0).tolist(),
            "se_over_batches": [standard_error(per[:, i]) for i in range(per.shape[1])],
            "combined": self.eigen[pos].values.tolist(),
        }

    def summary(self) -> dict:
        out = {
            "loss": self.loss,
            "loss_definition": self.loss_definition,
            "hvps": self.hvps,
            "computed_on": self.computed_on(),
            "eigen": [e.summary() for e in self.eigen],
            "eigenvalues": {e.which: self.over_batches(i) for i, e in enumerate(self.eigen)},
        }
        if self.loss_per_batch:
            out["loss_per_batch"] = self.loss_per_batch
        if self.trace is not None:
            out["trace"] = {
                "trace": self.trace.trace,
                "stderr": self.trace.stderr,
                "samples": self.trace.samples,
                "combined": self.trace.trace,
                "combined_stderr": self.trace.stderr,
            }
            if self.trace_per_batch:
                per = [t.trace for t in self.trace_per_batch]
                out["trace"].update(
                    per_batch=per,
                    per_batch_stderr=[t.stderr for t in self.trace_per_batch],
                    mean_over_batches=sum(per) / len(per),
                    se_over_batches=standard_error(per),
                )
        if self.blocks:
            out["blocks"] = [b.summary() for b in self.blocks]
        if self.overlap is not None:
            out["overlap"] = self.overlap.tolist()
            out["subspace_overlap"] = self.subspace_overlap
        return out


def hessian_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    top_k: int = 1,
    smallest: int = 1,
    method: str = "lanczos",
    trace_samples: int = 0,
    density_runs: int = 0,
    density_steps: int = 60,
    tol: float = 1e-3,
    residual_tol: float = 1e-2,
    max_iter: int = 100,
    init: torch.Tensor | None = None,
    bn: str = "eval",
    weight_decay: float = 0.0,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    params: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    hvp: str = "auto",
    seed: int = 0,
    batches: int = 1,
    blocks: str = "none",
    block_init: dict[str, torch.Tensor] | None = None,
    operator: OperatorFactory | str | None = None,
    operator_name: str = "hessian",
    trace_method: str = "hutchinson",
    per_batch: str = "ritz",
) -> HessianReport:
    """Top-k (LA) and smallest (SA) Hessian eigenvalues, and optionally trace, density and per-block figures.

    method="lanczos" (default) gets both ends from one Krylov space. method="power"
    runs deflated power iteration, which finds the largest-magnitude (LM) eigenvalues,
    then shifted power iteration for the opposite end; the labels say which is which.
    `init` (rows = the previous epoch's LA eigenvectors) warm-starts the run, and the
    report gives their overlap with the new ones.

    batches=B splits x into B disjoint equal batches (x must hold B * n samples). Each
    batch gets its own operator (one cached first-order graph each); the combined
    operator (the mean of the B operators: the Hessian of the mean loss over all of x)
    reuses the batches' graphs and is solved first, from `init`. Each product of it is
    one product of every batch's operator, and those are kept. per_batch="ritz"
    (default): each batch's eigenpairs come from a Rayleigh-Ritz pass of its operator
    on the combined Krylov basis (`ritz_pairs`: no product; residuals exact, converged
    only where they are at most `residual_tol`; top Ritz values are lower bounds), so B
    batches and the combined operator together cost what B one-batch analyses cost.
    per_batch="solve": each batch also gets its own Lanczos run from `init`, converged
    to `tol` (about twice the products; method="power" always solves). The combined
    eigenvalues are not the mean of the per-batch ones; both are reported. Hutchinson uses the same probe
    vectors for every batch, so the combined trace (the mean of the per-batch ones, by
    linearity) costs nothing more, nor do the block traces. `blocks` ("none", "layer"
    or name patterns, see `parameter_blocks`) adds the top eigenpair of each diagonal
    block of the combined operator (warm-started from `block_init[name]`) and, with
    trace samples, each block's trace. `operator` builds one batch's operator from its
    `BatchedLoss` (default: `HessianOperator` with `hvp`; `probe.numerics.operators` has the GGN);
    `operator_name` labels it. `trace_method` is "hutchinson" or "hutch++" (`probe.numerics.operators`;
    one batch, no blocks).
    """
    from probe.numerics.operators import OPERATORS, make_operator, trace_estimate

    if isinstance(
        operator, str
    ):  # a name from probe.numerics.operators: "hessian" keeps the default operator below
        check(operator in OPERATORS, "operator", f"must be one of {OPERATORS}, got {operator!r}")
        operator_name, operator = (
            operator,
            (
                None
                if operator == "hessian"
                else functools.partial(make_operator, operator, method=hvp)
            ),
        )
    check(top_k >= 1, "top_k", f"must be >= 1, got {top_k}")
    check(method in ("lanczos", "power"), "method", f"must be 'lanczos' or 'power', got {method!r}")
    check(
        trace_samples == 0 or trace_samples >= 2,
        "trace_samples",
        f"must be 0 or >= 2, got {trace_samples}",
    )
    check(density_runs >= 0, "density_runs", f"must be >= 0, got {density_runs}")
    check(batches >= 1, "batches", f"must be >= 1, got {batches}")
    check(
        len(x) >= batches and len(x) % batches == 0,
        "batches",
        f"{len(x)} samples do not split into {batches} equal batches",
    )
    n = len(x) // batches
    losses = [
        BatchedLoss(
            model,
            x[b * n : (b + 1) * n],
            y[b * n : (b + 1) * n],
            loss_fn=loss_fn,
            batch_size=batch_size,
            bn=bn,
            params=params,
            dtype=dtype,
            weight_decay=weight_decay,
        )
        for b in range(batches)
    ]
    values = [check_finite(loss.value()) for loss in losses]
    # All batches' graphs are kept while they fit the cache limit together; otherwise each batch's graph is
    # built for its own solves and dropped, and the combined operator rebuilds them per product.
    keep = len(x) <= CACHE_LIMIT
    if operator is None:

        def operator(loss: BatchedLoss) -> LinearOperator:
            return HessianOperator(loss, hvp, cache=(n <= CACHE_LIMIT) if hvp == "auto" else None)

    ops = [operator(loss) for loss in losses]
    dim = ops[0].dim
    check(
        init is None or init.shape[-1] == dim,
        "init",
        f"vectors have length {None if init is None else init.shape[-1]}, the operator has {dim}",
    )
    groups = parameter_blocks(model, losses[0].names, blocks)
    check(
        trace_method in ("hutchinson", "hutch++"),
        "trace_method",
        f"must be hutchinson or hutch++, got {trace_method!r}",
    )
    check(
        trace_method == "hutchinson" or (batches == 1 and not groups),
        "trace_method",
        "hutch++ estimates one operator's trace: use it with batches=1 and blocks=none "
        "(hutchinson gives per-batch and per-block traces)",
    )
    index = block_indices(losses[0], groups)
    block_id = None
    if groups:
        block_id = torch.empty(dim, dtype=torch.long)
        for i, idx in enumerate(index):
            block_id[idx] = i

    def solve(
        op: LinearOperator, start: torch.Tensor | None, k: int = top_k, low: int = smallest
    ) -> list[EigenResult]:
        if method == "lanczos":
            top, bottom = lanczos(
                op,
                k,
                smallest=low,
                tol=tol,
                residual_tol=residual_tol,
                max_iter=max_iter,
                init=start,
                seed=seed,
            )
            return [top] + ([bottom] if bottom is not None else [])
        top = power_iteration(
            op, k, tol=tol, residual_tol=residual_tol, max_iter=max_iter, init=start, seed=seed
        )
        if not low:
            return [top]
        return [
            top,
            power_iteration(
                op,
                low,
                tol=tol,
                residual_tol=residual_tol,
                max_iter=max_iter,
                seed=seed + 1,
                shift=float(top.values[0]),
            ),
        ]

    # The combined operator is solved first, recording each batch's products over its Krylov basis: a
    # Rayleigh-Ritz pass per batch on that basis then gives per-batch eigenpairs with exact residuals for no
    # product (per_batch="ritz"). Refining unconverged ones from their Ritz vectors was measured: it cost more
    # products than solving each batch from `init` (101 against 79 on bench_hessian_batches.py).
    check(
        per_batch in ("ritz", "solve"), "per_batch", f"must be 'ritz' or 'solve', got {per_batch!r}"
    )
    recording = batches > 1 and method == "lanczos" and per_batch == "ritz"
    combined = (
        (RecordingMeanOperator(ops, RITZ_LIMIT_BYTES) if recording else MeanOperator(ops))
        if batches > 1
        else ops[0]
    )
    eigen = solve(combined, init)
    per_batch_eigen: list[list[EigenResult]] = []
    samples: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for b, op in enumerate(ops if batches > 1 else []):
        eig = None
        if recording and combined.complete and combined.inputs:
            eig = [
                e
                for e in ritz_pairs(
                    combined.inputs, combined.outputs[b], top_k, smallest, residual_tol
                )
                if e is not None
            ]
        per_batch_eigen.append(eig if eig is not None else solve(op, init))
        if trace_samples:
            samples.append(
                hutchinson_samples(
                    op, trace_samples, seed=seed, block_id=block_id, blocks=len(groups)
                )
            )
        if not keep and hasattr(op, "release"):
            op.release()
    loss_def = losses[0].describe()
    if batches > 1:
        loss_def = (
            f"{loss_def}; {batches} disjoint batches of {n} samples: per-batch values on each, "
            f"'combined' on the mean loss over all {len(x)} samples"
        )
    report = HessianReport(
        sum(values) / batches,
        loss_def,
        eigen,
        None,
        None,
        names=list(losses[0].names),
        operator=operator_name,
        n_batches=batches,
        images_per_batch=n,
        bn=bn,
        dtype=str(losses[0].dtype).removeprefix("torch."),
        per_batch=per_batch_eigen,
        loss_per_batch=values if batches > 1 else [],
    )
    if init is not None:
        report.overlap, report.subspace_overlap = eigenvector_overlap(init, eigen[0].vectors)
    if trace_samples:
        if trace_method == "hutch++":
            report.trace = trace_estimate("hutch++", combined, trace_samples, seed=seed)
        else:
            if batches == 1:
                samples.append(
                    hutchinson_samples(
                        combined, trace_samples, seed=seed, block_id=block_id, blocks=len(groups)
                    )
                )
            per_hvps = trace_samples
            report.trace_per_batch = (
                [_trace(s, per_hvps) for s, _ in samples] if batches > 1 else []
            )
            report.trace = _trace(torch.stack([s for s, _ in samples]).mean(0), per_hvps * batches)
            per_block = torch.stack([b for _, b in samples]).mean(0) if groups else None
    if density_runs:
        report.density = slq_density(combined, density_runs, density_steps, seed=seed)
    for i, ((name, names), idx) in enumerate(zip(groups, index, strict=True)):
        bop = BlockOperator(combined, idx)
        prev = (block_init or {}).get(name)
        prev = prev if prev is not None and prev.shape[-1] == len(idx) else None
        top = solve(bop, prev, 1, 0)[0]
        tr = _trace(per_block[:, i], 0) if trace_samples else None
        report.blocks.append(BlockResult(name, list(names), len(idx), top, tr, idx))
    report.hvps = sum(op.hvps for op in ops)
    return report
