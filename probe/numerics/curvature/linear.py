"""Symmetric linear operators known through their products, and the eigen-solvers that run on them.

Nothing here knows about networks: a `LinearOperator` is anything with `dim`, `dtype`,
`device`, a product counter `hvps` and `matvec(v)`, so the same power iteration, Lanczos and
Rayleigh-Ritz code runs on a dense test matrix (`MatrixOperator`) and on a network's Hessian
(`probe.numerics.curvature.operators`).

- `power_iteration`: deflated power iteration for the largest-magnitude (LM) eigenvalues, or,
  shifted, for the opposite end of the spectrum.
- `lanczos`: the largest (LA) and smallest (SA) algebraic eigenvalues from one Krylov space,
  with full reorthogonalisation (`lanczos_run`), so a Ritz residual is the true residual.
- `ritz_pairs`: Rayleigh-Ritz of an operator on a stored basis and its stored products, exact
  residuals for no product.
- `MeanOperator`, `RecordingMeanOperator`, `BlockOperator`: the mean of several operators
  (several batches), one that also keeps every product, a diagonal block.

Guarantees: eigenvalues are labelled LA, SA or LM; each comes with its residual
||Hv - lambda v|| / |lambda| and a converged flag that needs both a small relative change and a
small residual; start vectors are seeded (`seed`), so a run is reproducible; Ritz values and
vectors are computed in float64 and vectors returned in the operator's dtype, unit norm. Bad
arguments raise `probe.UsageError` naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from probe.numerics.checks import check

__all__ = [
    "BlockOperator",
    "EigenResult",
    "LinearOperator",
    "MatrixOperator",
    "MeanOperator",
    "RecordingMeanOperator",
    "eigenvector_overlap",
    "lanczos",
    "lanczos_run",
    "power_iteration",
    "products",
    "ritz_pairs",
    "tridiagonal_eigh",
]


class LinearOperator(Protocol):
    """A symmetric matrix known only through products with vectors of length `dim`."""

    dim: int
    dtype: torch.dtype
    device: torch.device
    hvps: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def products(op: LinearOperator, vectors: torch.Tensor, width: int = 1) -> torch.Tensor:
    """The products of `op` with each row of `vectors` [k, dim], as rows [k, dim].

    Up to `width` rows go to the operator at once through its `matmat` where it has one (the
    network operators: one batched backward pass for several vectors); an operator without
    it, or width 1, gets one `matvec` per row. An operator's `max_width()` (its memory
    estimate, `probe.numerics.curvature.operators.max_width`) caps the width. Either way row
    i of the result is op @ row i, equal to `matvec` of that row to float rounding, and
    `op.hvps` grows by k.
    """
    check(width >= 1, "product_batch", f"must be >= 1, got {width}")
    cap = getattr(op, "max_width", None)
    width = min(width, cap()) if cap is not None and width > 1 else width
    matmat = getattr(op, "matmat", None)
    if width == 1 or matmat is None or len(vectors) <= 1:
        return torch.stack([op.matvec(v) for v in vectors]) if len(vectors) else vectors
    return torch.cat([matmat(vectors[i : i + width]) for i in range(0, len(vectors), width)])


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

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        self.hvps += len(vectors)
        return vectors @ self.matrix.T


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


def rayleigh(op: LinearOperator, vec: torch.Tensor) -> tuple[float, float]:
    """(v^T H v, ||H v - (v^T H v) v|| / |v^T H v|) for a unit vector v: one product.

    The Rayleigh quotient is the value of the vector itself (the best one for it: it
    minimises the residual over all scalars), and for a symmetric H some eigenvalue
    lies within ||H v - rq v|| of it; within ||r||^2 / gap where the gap to the rest
    of the spectrum is known."""
    hv = op.matvec(vec)
    rq = float(vec.to(torch.float64) @ hv.to(torch.float64))
    return rq, float((hv - rq * vec).norm()) / max(abs(rq), 1e-30)


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


def lanczos_run(
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


def tridiagonal_eigh(
    alphas: torch.Tensor, betas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
    With `verify` (default) each returned vector's value is its Rayleigh quotient v^T H v
    and its residual ||Hv - lambda v|| / |lambda| is recomputed from one more HVP per pair
    (counted in `hvps`): the numbers belong to the stored vectors, and some eigenvalue
    lies within residual * |lambda| of each (`rayleigh`).
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
        theta, s = tridiagonal_eigh(alphas, betas)
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

    basis, alphas, betas, _ = lanczos_run(op, q0, max_iter, stop)
    theta, s, res = state["theta"], state["s"], state["res"]
    out: dict[str, EigenResult] = {}
    for name, idx in zip(("LA", "SA"), ends(theta), strict=True):
        if name == "SA" and smallest == 0:
            continue
        vals = theta[idx]
        vecs = s[:, idx].T.to(op.dtype).to(op.device) @ basis
        vecs = vecs / vecs.norm(dim=1, keepdim=True)
        r = res[idx].clone()
        if verify:  # the value and residual of each stored vector, not the Ritz estimate
            rq = [rayleigh(op, v) for v in vecs]
            vals = torch.tensor([v for v, _ in rq], dtype=torch.float64)
            r = torch.tensor([rr for _, rr in rq], dtype=torch.float64)
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


def ritz_pairs(
    vectors: Sequence[torch.Tensor],
    products: Sequence[torch.Tensor],
    k: int,
    smallest: int,
    residual_tol: float,
) -> tuple[EigenResult, EigenResult | None]:
    """Rayleigh-Ritz of an operator H on span(`vectors`), given `products` = H times each vector.

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


class MeanOperator:
    """The mean of several operators of one dimension: that of the mean loss over equal batches.

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

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """Rows of products, each part batched (`products` at the rows' width)."""
        self.hvps += len(vectors)
        out = products(self.parts[0], vectors, len(vectors))
        for op in self.parts[1:]:
            out = out + products(op, vectors, len(vectors))
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
        return self.matmat(v.reshape(1, -1))[0]

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """Rows of products (each part batched); every row and its parts' products recorded."""
        self.hvps += len(vectors)
        outs = [products(op, vectors, len(vectors)) for op in self.parts]
        for i, v in enumerate(vectors):
            per_vector = v.numel() * v.element_size() * (len(self.parts) + 1)
            if self.complete and (len(self.inputs) + 1) * per_vector <= self.limit_bytes:
                self.inputs.append(v.detach().clone())
                for store, out in zip(self.outputs, outs, strict=True):
                    store.append(out[i].detach().clone())
            else:
                self.complete = False
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total / len(self.parts)


class BlockOperator:
    """The diagonal block H[idx, idx] of an operator.

    Its product is the full product of v zero-padded outside `idx`, restricted to `idx`.
    """

    def __init__(self, op: LinearOperator, index: torch.Tensor):
        self.op, self.index = op, index.to(op.device)
        self.dim, self.dtype, self.device, self.hvps = len(index), op.dtype, op.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvps += 1
        full = torch.zeros(self.op.dim, dtype=self.dtype, device=self.device)
        full[self.index] = v.to(self.dtype)
        return self.op.matvec(full)[self.index]

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        self.hvps += len(vectors)
        full = torch.zeros(len(vectors), self.op.dim, dtype=self.dtype, device=self.device)
        full[:, self.index] = vectors.to(self.dtype)
        return products(self.op, full, len(vectors))[:, self.index]
