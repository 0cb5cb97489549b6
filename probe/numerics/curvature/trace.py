"""Traces and spectral densities of a symmetric operator from its products alone.

- `hutchinson_trace`: tr(A) ~ mean of v^T A v over seeded Rademacher v, with the standard
  error of that mean (optionally stopping at a relative standard error).
- `hutchinson_samples`: the raw v^T A v per probe, and each parameter block's share of it
  (unbiased block traces that add up exactly to the full sample).
- `hutchpp_trace` (Meyer, Musco, Musco and Woodruff, 2021): a third of the products sketch the
  top of the spectrum, whose trace is taken exactly, and Hutchinson estimates only the deflated
  remainder: far lower variance than Hutchinson's when a few eigenvalues carry most of the
  Frobenius mass, no better when the spectrum is flat.
- `trace_estimate(method, op, products)`: either, by name.
- `slq_density`: the eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al., 2019).

Guarantees: probe vectors come from a seeded generator (the same `seed` gives the same
vectors for every operator of one dimension, so traces of several batches share them);
samples and estimates are float64 whatever the operator's dtype; every estimate carries its
standard error (NaN where fewer than two samples make one) and the products it spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from probe.numerics.checks import check
from probe.numerics.curvature.linear import (
    LinearOperator,
    lanczos_run,
    tridiagonal_eigh,
)
from probe.numerics.curvature.linear import (
    products as batched_products,
)

__all__ = [
    "HUTCHPP_MIN_PRODUCTS",
    "TRACE_METHODS",
    "Density",
    "TraceResult",
    "hutchinson_samples",
    "hutchinson_trace",
    "hutchpp_trace",
    "rademacher",
    "slq_density",
    "standard_error",
    "trace_estimate",
    "trace_of_samples",
]

TRACE_METHODS = ("hutchinson", "hutch++")
HUTCHPP_MIN_PRODUCTS = (
    6  # for a standard error: a third sketches, a third is exact, two samples left
)


# Below this many degrees of freedom a sample standard error is itself too noisy to trust as
# a +-1 s.e. bar (measured for Hutch++: at 2 samples |z| > 4 in 15 % of seeds, at 3 |z| > 2 in
# 19 %); such an estimate is flagged, and its 95 % interval uses Student's t quantile.
MIN_RELIABLE_DOF = 9


@dataclass
class TraceResult:
    """A trace estimate with its standard error (stderr of the sample mean).

    `dof`: degrees of freedom of that standard error (the samples it was computed from,
    minus one; for Hutch++ only its Hutchinson part). `ci95()` is the 95 % half-width from
    Student's t at `dof`, honest at small budgets where 2 x stderr is not;
    `stderr_reliable` is False below MIN_RELIABLE_DOF."""

    trace: float
    stderr: float
    samples: int
    hvps: int
    dof: int | None = None

    def __post_init__(self) -> None:
        if self.dof is None:
            self.dof = self.samples - 1

    @property
    def stderr_reliable(self) -> bool:
        return self.dof is not None and self.dof >= MIN_RELIABLE_DOF and math.isfinite(self.stderr)

    def ci95(self) -> float:
        if self.dof is None or self.dof < 1 or not math.isfinite(self.stderr):
            return math.nan
        from scipy.stats import t  # scikit-learn's dependency; only when asked

        return float(t.ppf(0.975, self.dof)) * self.stderr

    def error_summary(self) -> dict:
        return {
            "stderr_dof": self.dof,
            "ci95_halfwidth": self.ci95(),
            "stderr_reliable": self.stderr_reliable,
        }


def rademacher(op: LinearOperator, gen: torch.Generator) -> torch.Tensor:
    """One random +-1 vector of `op`'s length, dtype and device, drawn from `gen`."""
    return (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(op.dtype).to(op.device)


def hutchinson_trace(
    op: LinearOperator,
    samples: int = 100,
    *,
    seed: int = 0,
    rel_stderr: float | None = None,
    min_samples: int = 10,
    width: int = 1,
) -> TraceResult:
    """tr(H) ~ mean of v^T H v over Rademacher v, with the standard error of that mean.

    With `rel_stderr`, stops early once stderr <= rel_stderr * |trace| (after
    `min_samples`). `width` probes go through one batched product (`products`); the vectors
    are drawn one after another from the seed as at width 1, so every width gives the same
    samples; an early stop inside a batch drops that batch's later samples (their products
    are still counted).
    """
    check(samples >= 2, "trace_samples", f"must be >= 2, got {samples}")
    check(width >= 1, "product_batch", f"must be >= 1, got {width}")
    gen, hvps0, vals = torch.Generator().manual_seed(seed), op.hvps, []
    done = False
    for start in range(0, samples, width):
        vs = torch.stack([rademacher(op, gen) for _ in range(min(width, samples - start))])
        for vhv in (vs * batched_products(op, vs, width)).sum(1).tolist():
            vals.append(float(vhv))
            if rel_stderr is not None and len(vals) >= min_samples:
                t = torch.tensor(vals, dtype=torch.float64)
                if float(t.std() / math.sqrt(len(t))) <= rel_stderr * abs(float(t.mean())):
                    done = True
                    break
        if done:
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
        _, alphas, betas, _ = lanczos_run(op, rademacher(op, gen), m)
        theta, s = tridiagonal_eigh(alphas, betas)
        nodes[r, : len(theta)], weights[r, : len(theta)] = theta, s[0] ** 2
    return Density(nodes, weights, op.hvps - hvps0, op.dim)


def standard_error(values: Sequence[float] | torch.Tensor) -> float:
    """Standard error of the mean, std (n - 1 in the denominator) / sqrt(n); NaN below 2 values."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return float(t.std() / math.sqrt(len(t))) if len(t) >= 2 else math.nan


def hutchinson_samples(
    op: LinearOperator,
    samples: int,
    *,
    seed: int = 0,
    block_id: torch.Tensor | None = None,
    blocks: int = 0,
    width: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """v^T H v for `samples` seeded Rademacher v (the same v for every operator of one seed),
    and, with `block_id` (the block of each coordinate), each block's share v_b^T (H v)_b
    per sample: an unbiased estimate of that diagonal block's trace from the same
    products, whose shares add up to v^T H v exactly. `width` probes share one batched
    product (`products`); the vectors, and so the samples, are those of width 1."""
    check(samples >= 2, "trace_samples", f"must be >= 2, got {samples}")
    check(width >= 1, "product_batch", f"must be >= 1, got {width}")
    gen = torch.Generator().manual_seed(seed)
    vals = torch.zeros(samples, dtype=torch.float64)
    per_block = torch.zeros(samples, blocks, dtype=torch.float64) if block_id is not None else None
    for start in range(0, samples, width):
        vs = torch.stack([rademacher(op, gen) for _ in range(min(width, samples - start))])
        prods = vs * batched_products(op, vs, width)
        for j, prod in enumerate(prods):
            vals[start + j] = float(prod.sum())
            if per_block is not None:
                per_block[start + j] = torch.zeros(blocks, dtype=torch.float64).index_add_(
                    0, block_id, prod.detach().to(torch.float64).cpu()
                )
    return vals, per_block


def trace_of_samples(vals: torch.Tensor, hvps: int) -> TraceResult:
    """The Hutchinson estimate of samples `vals` (mean, its standard error) that cost `hvps`."""
    return TraceResult(float(vals.mean()), standard_error(vals), len(vals), hvps)


# --- Hutch++ --------------------------------------------------------------------------------


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
    matmat: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TraceResult:
    """Hutch++ estimate of tr(A) from `num_products` products with A (symmetric).

    k = num_products // 3 Rademacher vectors S sketch the range: Q = orth(A S) (k
    products); tr(Q^T A Q) is computed exactly (k products); the remaining
    n = num_products - 2k products are Hutchinson samples of the deflated
    (I - QQ^T) A (I - QQ^T). The estimate is unbiased. `stderr` is the standard error
    of the Hutchinson part given the sketch (the exact part has none), on n - 1 degrees of
    freedom (`dof`); it needs n >= 2, else it is NaN, and below MIN_RELIABLE_DOF + 1
    samples (about 30 products) it is flagged `stderr_reliable=False` with a t-based
    `ci95()`. With k at least the rank of A the estimate is exact. `matmat` (rows [m, dim]
    -> their products as rows) replaces the column-by-column `matvec` calls with batched
    ones: the same vectors, the same estimate to float rounding.
    """
    check(
        num_products >= 3, "trace_samples", f"Hutch++ needs at least 3 products, got {num_products}"
    )
    check(dim >= 1, "dim", f"must be >= 1, got {dim}")
    gen = rng if isinstance(rng, torch.Generator) else torch.Generator().manual_seed(int(rng))
    k = min(num_products // 3, dim)
    n_rest = num_products - 2 * k
    s = _signs(dim, k, gen, dtype, device)

    def columns(m: torch.Tensor) -> torch.Tensor:  # A m, column by column or batched
        if matmat is not None:
            return matmat(m.T.contiguous()).T
        return torch.stack([matvec(m[:, j]) for j in range(m.shape[1])], dim=1)

    a_s = columns(s)
    q, _ = torch.linalg.qr(a_s)
    exact = float((q * columns(q)).sum()) if k else 0.0
    g = _signs(dim, n_rest, gen, dtype, device)
    g = g - q @ (q.T @ g)
    vals = (g * columns(g)).sum(0).to(torch.float64) if n_rest else torch.zeros(0)
    mean = float(vals.mean()) if n_rest else 0.0
    stderr = float(vals.std() / math.sqrt(n_rest)) if n_rest >= 2 else math.nan
    return TraceResult(exact + mean, stderr, num_products, 2 * k + n_rest, dof=n_rest - 1)


def trace_estimate(
    method: str, op: LinearOperator, products: int, *, seed: int = 0, width: int = 1
) -> TraceResult:
    """tr(op) by Hutchinson or Hutch++ at `products` products, with a standard error;
    `width` products per batched pass (the same estimate at every width)."""
    check(
        method in TRACE_METHODS, "trace_method", f"must be one of {TRACE_METHODS}, got {method!r}"
    )
    if method == "hutchinson":
        return hutchinson_trace(op, products, seed=seed, width=width)
    check(
        products >= HUTCHPP_MIN_PRODUCTS,
        "trace_samples",
        f"Hutch++ needs at least {HUTCHPP_MIN_PRODUCTS} products for a standard error, "
        f"got {products}",
    )
    hvps0 = op.hvps
    res = hutchpp_trace(
        op.matvec,
        op.dim,
        products,
        seed,
        dtype=op.dtype,
        device=op.device,
        matmat=(lambda m: batched_products(op, m, width)) if width > 1 else None,
    )
    res.hvps = op.hvps - hvps0
    return res
