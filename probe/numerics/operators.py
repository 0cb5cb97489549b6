"""Curvature operators (Hessian, generalised Gauss-Newton) and Hutch++ traces.

`probe.numerics.curvature` runs Lanczos, Hutchinson and SLQ on any `LinearOperator`; this
module supplies the operators and a second trace estimator, so the same machinery
answers for either curvature matrix:

- `hessian_operator(loss)`: H v, the existing `HessianOperator` (double backward).
- `ggn_operator(loss)`: G v with G = (1/N) sum_n J_n^T H_n J_n, the generalised
  Gauss-Newton matrix of the mean cross-entropy (Schraudolph, 2002; Martens, 2020).
  J_n is the Jacobian of sample n's logits with respect to the parameters and
  H_n = diag(p_n) - p_n p_n^T the Hessian of the cross-entropy with respect to the
  logits (p_n the softmax). G is positive semi-definite whatever the network (each
  H_n is), equals H where the logits are linear in the parameters, and drops the
  term sum_n sum_c (dL/dz_nc) d^2 z_nc / dw^2 that makes H indefinite.
- `hutchpp_trace(matvec, dim, num_products, rng)`: Hutch++ (Meyer, Musco, Musco and
  Woodruff, 2021): a third of the products sketch the top of the spectrum, whose
  trace is taken exactly, and Hutchinson estimates only the deflated remainder. Its
  variance is far below Hutchinson's when a few eigenvalues carry most of the
  Frobenius mass, and no better when the spectrum is flat.

Both operators keep the rules of `probe.numerics.curvature`: parameters go through
`functional_call`, modules run in `analysis_mode` (eval mode; BatchNorm buffers never
written) and mini-batches are weighted by sample count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp

from probe.numerics.curvature import (
    CACHE_LIMIT,
    BatchedLoss,
    HessianOperator,
    LinearOperator,
    TraceResult,
    analysis_mode,
    check,
    hutchinson_trace,
)

OPERATORS = ("hessian", "ggn")
TRACE_METHODS = ("hutchinson", "hutch++")


def hessian_operator(
    loss: BatchedLoss, method: str = "auto", cache: bool | None = None
) -> LinearOperator:
    """H v of the mean loss (see `probe.numerics.curvature.HessianOperator`)."""
    return HessianOperator(loss, method, cache)


class GGNOperator:
    """G v for the mean cross-entropy: one jvp, the softmax Hessian in closed form, one vjp.

    Per mini-batch: u = J v by forward mode (`torch.func.jvp` through
    `functional_call`), then h = H_n u_n per sample, h_n = p_n * u_n - p_n (p_n . u_n),
    scaled by 1/N, then J^T h by reverse mode. With `cache` (default up to
    CACHE_LIMIT samples, as for the Hessian) the reverse graph of the logits is
    built once per mini-batch and reused by every product; without it each product
    rebuilds it (`torch.func.vjp`). `hvps` counts products, one per call.
    """

    def __init__(self, loss: BatchedLoss, method: str = "auto", cache: bool | None = None):
        check(
            loss.loss_fn is F.cross_entropy,
            "operator",
            "ggn is implemented for the mean cross-entropy loss only (its Hessian in the logits is closed-form)",
        )
        check(
            method in ("auto", "jvp_vjp"),
            "method",
            f"the ggn operator has one method, 'jvp_vjp'; got {method!r}",
        )
        self.loss = loss
        self.cache = loss.n_samples <= CACHE_LIMIT if cache is None else bool(cache)
        self.dim, self.dtype, self.device, self.hvps = loss.dim, loss.dtype, loss.device, 0
        self._graphs: list[tuple[list[torch.Tensor], torch.Tensor]] | None = None

    def _logits(self, xb: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.loss.model, (params, self.loss.fixed), (xb,))

        return f

    def _graph(self, xb: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        leaves = [p.detach().requires_grad_() for p in self.loss.params.values()]
        with analysis_mode(self.loss.model, self.loss.bn):
            out = self._logits(xb)(dict(zip(self.loss.names, leaves, strict=True)))
        return leaves, out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        loss = self.loss
        named = loss.unflatten(v.to(self.dtype))
        if self.cache and self._graphs is None:
            self._graphs = [self._graph(xb) for xb, _, _ in loss.batches]
        total = [torch.zeros(s, dtype=self.dtype, device=self.device) for s in loss.shapes]
        for i, (xb, _, w) in enumerate(loss.batches):
            f = self._logits(xb)
            with analysis_mode(loss.model, loss.bn), torch.no_grad():
                z, u = jvp(f, (loss.params,), (named,))
            p = torch.softmax(z, dim=-1)
            h = (p * u - p * (p * u).sum(-1, keepdim=True)) * (w / len(xb))  # (1/N) H_n J_n v
            if self.cache:
                leaves, out = self._graphs[i]
                parts = torch.autograd.grad(
                    out, leaves, grad_outputs=h, retain_graph=True, allow_unused=True
                )
            else:
                with analysis_mode(loss.model, loss.bn):
                    _, pull = vjp(f, loss.params)
                    back = pull(h)[0]
                parts = [back[n] for n in loss.names]
            for t, g in zip(total, parts, strict=True):
                if g is not None:
                    t.add_(g.detach())
        out = torch.cat([t.reshape(-1) for t in total])
        if loss.weight_decay:  # the GGN of 0.5 * wd * ||w||^2 is its Hessian, wd * I
            out += loss.weight_decay * v
        return out


def ggn_operator(
    loss: BatchedLoss, method: str = "auto", cache: bool | None = None
) -> LinearOperator:
    """G v of the mean cross-entropy (see `GGNOperator`); same signature as `hessian_operator`."""
    return GGNOperator(loss, method, cache)


def make_operator(name: str, loss: BatchedLoss, method: str = "auto") -> LinearOperator:
    """The curvature operator called `name` ("hessian" or "ggn") for `loss`."""
    check(name in OPERATORS, "operator", f"must be one of {OPERATORS}, got {name!r}")
    return (hessian_operator if name == "hessian" else ggn_operator)(loss, method)


# --- Hutch++ -----------------------------------------------------------------------------


def _signs(
    n: int, k: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    return (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1).to(dtype).to(device)


def hutchpp_trace(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    num_products: int,
    rng: torch.Generator | int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TraceResult:
    """Hutch++ estimate of tr(A) from `num_products` products with A (symmetric).

    k = num_products // 3 Rademacher vectors S sketch the range: Q = orth(A S) (k
    products); tr(Q^T A Q) is computed exactly (k products); the remaining
    n = num_products - 2k products are Hutchinson samples of the deflated
    (I - QQ^T) A (I - QQ^T). The estimate is unbiased. `stderr` is the standard error
    of the Hutchinson part given the sketch (the exact part has none); it needs
    n >= 2, else it is NaN. With k at least the rank of A the estimate is exact.
    """
    check(
        num_products >= 3, "trace_samples", f"Hutch++ needs at least 3 products, got {num_products}"
    )
    check(dim >= 1, "dim", f"must be >= 1, got {dim}")
    gen = rng if isinstance(rng, torch.Generator) else torch.Generator().manual_seed(int(rng))
    k = min(num_products // 3, dim)
    n_rest = num_products - 2 * k
    s = _signs(dim, k, gen, dtype, device)
    a_s = torch.stack([matvec(s[:, j]) for j in range(k)], dim=1)
    q, _ = torch.linalg.qr(a_s)
    exact = sum(float(q[:, j] @ matvec(q[:, j])) for j in range(k))
    g = _signs(dim, n_rest, gen, dtype, device)
    g = g - q @ (q.T @ g)
    vals = torch.tensor(
        [float(g[:, j] @ matvec(g[:, j])) for j in range(n_rest)], dtype=torch.float64
    )
    mean = float(vals.mean()) if n_rest else 0.0
    stderr = float(vals.std() / math.sqrt(n_rest)) if n_rest >= 2 else math.nan
    return TraceResult(exact + mean, stderr, num_products, 2 * k + n_rest)


def trace_estimate(method: str, op: LinearOperator, products: int, *, seed: int = 0) -> TraceResult:
    """tr(op) by Hutchinson or Hutch++ at `products` products, with a standard error."""
    check(
        method in TRACE_METHODS, "trace_method", f"must be one of {TRACE_METHODS}, got {method!r}"
    )
    if method == "hutchinson":
        return hutchinson_trace(op, products, seed=seed)
    check(
        products >= 6,
        "trace_samples",
        f"Hutch++ needs at least 6 products for a standard error, got {products}",
    )
    hvps0 = op.hvps
    res = hutchpp_trace(op.matvec, op.dim, products, seed, dtype=op.dtype, device=op.device)
    res.hvps = op.hvps - hvps0
    return res
