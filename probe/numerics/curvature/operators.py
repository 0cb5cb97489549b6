"""The curvature operators of a network's loss: Hessian- and Gauss-Newton-vector products.

Each is a `LinearOperator` (`probe.numerics.curvature.linear`) over the flat vector of the
parameters a `BatchedLoss` analyses, so every solver and trace estimator runs on either:

- `HessianOperator` / `hessian_operator(loss)`: H v of the mean loss, by double backward (the
  first-order graph of each mini-batch cached and reused by every product, up to
  `CACHE_LIMIT` samples) or forward-over-reverse (`torch.func.jvp(grad(f))`, no graph kept).
- `GGNOperator` / `ggn_operator(loss)`: G v with G = (1/N) sum_n J_n^T H_n J_n, the
  generalised Gauss-Newton matrix of the mean cross-entropy (Schraudolph, 2002; Martens,
  2020). J_n is the Jacobian of sample n's logits with respect to the parameters and
  H_n = diag(p_n) - p_n p_n^T the Hessian of the cross-entropy with respect to the logits
  (p_n the softmax). G is positive semi-definite whatever the network (each H_n is), equals H
  where the logits are linear in the parameters, and drops the term
  sum_n sum_c (dL/dz_nc) d^2 z_nc / dw^2 that makes H indefinite.
- `make_operator(name, loss)`: either by name ("hessian" or "ggn").

Guarantees: the model is never mutated (parameters go through `functional_call`, modules run
in `analysis_mode`: eval mode, BatchNorm buffers never written); mini-batches are weighted by
sample count, so a product is that of the mean loss over the whole batch; products are in the
loss's dtype (float64 with `BatchedLoss(dtype=torch.float64)`); the weight-decay term adds
wd * v; `hvps` counts products (one per call, whatever the number of mini-batches).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp, vmap

from probe.numerics.checks import check
from probe.numerics.curvature.linear import LinearOperator
from probe.numerics.loss import BatchedLoss, analysis_mode

__all__ = [
    "ACTIVATION_COPIES",
    "CACHE_LIMIT",
    "PRODUCT_MEMORY_BYTES",
    "HVP_METHODS",
    "OPERATORS",
    "GGNOperator",
    "HessianOperator",
    "OperatorFactory",
    "activation_bytes",
    "ggn_operator",
    "hessian_operator",
    "make_operator",
    "max_width",
]

HVP_METHODS = ("auto", "double_backward", "forward_over_reverse")
OPERATORS = ("hessian", "ggn")

# A cached double-backward graph keeps every mini-batch's activations and first-order
# graph alive; above this many samples "auto" rebuilds it for every HVP instead.
CACHE_LIMIT = 1024

# Builds the operator of one batch's loss. The default is `HessianOperator`; another
# operator (a Gauss-Newton one, say) plugs in here, and every estimate uses it.
OperatorFactory = Callable[[BatchedLoss], LinearOperator]


# Batched products (`matmat`) replicate a mini-batch's backward intermediates once per vector;
# the width of one batched pass is capped so that they stay under this many bytes.
PRODUCT_MEMORY_BYTES = 2 << 30

# Held per vector of a batched product, in units of one forward's activation bytes: the
# double backward's tangent of every activation, its gradient, and the product of both with
# the saved tensors (an estimate, `max_width`; docs/curvature.md "Batched products").
ACTIVATION_COPIES = 4


def activation_bytes(loss: BatchedLoss) -> int:
    """Bytes of every leaf module's output in one forward of the loss's largest mini-batch:
    the unit in which a batched product's extra memory is estimated (one forward, no grad)."""
    total = [0]

    def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in loss.model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        xb, _, _ = max(loss.batches, key=lambda b: len(b[0]))
        with analysis_mode(loss.model, loss.bn), torch.no_grad():
            functional_call(loss.model, (loss.params, loss.fixed), (xb,))
    finally:
        for h in handles:
            h.remove()
    return total[0] + xb.numel() * xb.element_size()


def max_width(op: HessianOperator | GGNOperator, limit_bytes: int | None = None) -> int:
    """The widest batched product whose replicated intermediates fit `limit_bytes`
    (default PRODUCT_MEMORY_BYTES): ACTIVATION_COPIES x `activation_bytes` per vector."""
    if op._width is None:
        op._width = activation_bytes(op.loss) * ACTIVATION_COPIES
    limit = PRODUCT_MEMORY_BYTES if limit_bytes is None else limit_bytes
    return max(1, int(limit // max(op._width, 1)))


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
        self._width: int | None = None

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
        return self._backward_products(list(v.values()), batched=False)

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

    def _batched_double_backward(self, vs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """k products in one pass: the cached graph's backward with k batched grad_outputs.

        `vs` holds one [k, *shape] tensor per parameter. autograd vmaps the backward over
        the k vectors (`is_grads_batched`), so the graph's intermediates are replicated k
        times for the duration (see `product_width`)."""
        return self._backward_products(vs, batched=True)

    def _backward_products(
        self, vs: list[torch.Tensor], *, batched: bool
    ) -> list[torch.Tensor | None]:
        """Sum over mini-batches of w * d(g . v)/dw, each batch's gradient graph g built once
        (cached) or per product. v is the backward's grad_outputs, not the scalar sum(g * v),
        which added a forward mul, a sum and their backward per parameter tensor to every
        product; `batched`: each v is [k, *shape], k products in one backward."""
        if self.cache and self._graphs is None:
            self._graphs = [(*self._graph(xb, yb), w) for xb, yb, w in self.loss.batches]
        graphs = (
            self._graphs
            if self.cache
            else ((*self._graph(xb, yb), w) for xb, yb, w in self.loss.batches)
        )
        total: list[torch.Tensor | None] = [None] * len(vs)
        for leaves, gs, w in graphs:
            used = [
                (g, vi) for g, vi in zip(gs, vs, strict=True) if g is not None and g.requires_grad
            ]
            if not used:
                continue
            hv = torch.autograd.grad(
                [g for g, _ in used],
                leaves,
                grad_outputs=[vi for _, vi in used],
                retain_graph=self.cache,
                allow_unused=True,
                is_grads_batched=batched,
            )
            for i, h in enumerate(hv):
                if h is not None:
                    total[i] = w * h if total[i] is None else total[i].add_(h, alpha=w)
        return total

    def max_width(self) -> int:
        """The most vectors one batched product takes within PRODUCT_MEMORY_BYTES."""
        return max_width(self)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """H V for the rows of `vectors` [k, dim]: the rows' products in one backward pass of
        the cached graph where the method is the double backward (else one product per row).
        Row i equals `matvec(vectors[i])` to float rounding; `hvps` grows by k."""
        if self.method != "double_backward" or len(vectors) == 1:
            return torch.stack([self.matvec(v) for v in vectors])
        self.hvps += len(vectors)
        k, vectors = len(vectors), vectors.to(self.dtype)
        vs, i = [], 0
        for s in self.loss.shapes:
            vs.append(vectors[:, i : i + s.numel()].reshape(k, *s))
            i += s.numel()
        parts = self._batched_double_backward(vs)
        out = torch.cat(
            [
                (
                    torch.zeros(k, s.numel(), dtype=self.dtype, device=self.device)
                    if h is None
                    else h.detach().reshape(k, -1)
                )
                for h, s in zip(parts, self.loss.shapes, strict=True)
            ],
            dim=1,
        )
        if self.loss.weight_decay:
            out += self.loss.weight_decay * vectors
        return out

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


def hessian_operator(
    loss: BatchedLoss, method: str = "auto", cache: bool | None = None
) -> LinearOperator:
    """H v of the mean loss (see `HessianOperator`)."""
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
            "ggn is implemented for the mean cross-entropy loss only "
            "(its Hessian in the logits is closed-form)",
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
        self._width: int | None = None

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

    def max_width(self) -> int:
        """The most vectors one batched product takes within PRODUCT_MEMORY_BYTES."""
        return max_width(self)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """G V for the rows of `vectors` [k, dim] in one batched pass (row i equals
        `matvec(vectors[i])` to float rounding); `hvps` grows by k."""
        if len(vectors) == 1:
            return self.matvec(vectors[0]).reshape(1, -1)
        self.hvps += len(vectors)
        return _ggn_matmat(self, vectors)


def _ggn_matmat(self: GGNOperator, vectors: torch.Tensor) -> torch.Tensor:
    """G V for the rows of `vectors` [k, dim]: the k jvps vmapped, the softmax Hessian per row,
    then one batched backward of the logits' graph (cached) or a vmapped vjp."""
    loss, k = self.loss, len(vectors)
    vectors = vectors.to(self.dtype)
    named, i = {}, 0
    for n, s in zip(loss.names, loss.shapes, strict=True):
        named[n] = vectors[:, i : i + s.numel()].reshape(k, *s)
        i += s.numel()
    if self.cache and self._graphs is None:
        self._graphs = [self._graph(xb) for xb, _, _ in loss.batches]
    total = [torch.zeros(k, *s, dtype=self.dtype, device=self.device) for s in loss.shapes]
    for b, (xb, _, w) in enumerate(loss.batches):
        f = self._logits(xb)
        with analysis_mode(loss.model, loss.bn), torch.no_grad():
            zs, u = vmap(lambda t, f=f: jvp(f, (loss.params,), (t,)))(named)
        z = zs[0]
        p = torch.softmax(z, dim=-1)
        h = (p * u - p * (p * u).sum(-1, keepdim=True)) * (w / len(xb))
        if self.cache:
            leaves, out = self._graphs[b]
            parts = torch.autograd.grad(
                out,
                leaves,
                grad_outputs=h,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        else:
            with analysis_mode(loss.model, loss.bn):
                _, pull = vjp(f, loss.params)
                back = vmap(pull)(h)[0]
            parts = [back[n] for n in loss.names]
        for t, g in zip(total, parts, strict=True):
            if g is not None:
                t.add_(g.detach())
    out = torch.cat([t.reshape(k, -1) for t in total], dim=1)
    if loss.weight_decay:
        out += loss.weight_decay * vectors
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
