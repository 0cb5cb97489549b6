"""`HessianConfig`: every option of a Hessian analysis as one value, checked once when it is made.

The options fall in six groups (the field order below):

- the solve: `top_k` largest (LA) and `smallest` smallest (SA) eigenvalues, by `method`
  ("lanczos", or "power": deflated power iteration, then shifted), converged at relative change
  `tol` and relative residual `residual_tol`, at most `max_iter` products per solve, from
  start vectors seeded by `seed`;
- the trace and density: `trace_samples` products for the trace by `trace_method`
  ("hutchinson" or "hutch++"; 0: no trace), `density_runs` stochastic Lanczos quadrature runs of
  `density_steps` steps (0: no density);
- the loss differentiated (`probe.numerics.loss.BatchedLoss`): `loss_fn` (default mean
  cross-entropy), mini-batches of `batch_size`, BatchNorm `bn` ("eval": running statistics;
  "batch": per-mini-batch statistics, buffers untouched), the analysed parameter names
  `params` (default every one with requires_grad), `dtype` (None: the model's), and
  `weight_decay` (adds 0.5 * wd * ||w||^2);
- the operator: `operator` is "hessian" (default), "ggn" (the generalised Gauss-Newton matrix)
  or a callable building one batch's `LinearOperator` from its `BatchedLoss` (then
  `operator_name` labels it); `hvp` is the Hessian-vector product method;
- products: `product_batch` probe vectors of a trace (Hutchinson, Hutch++) go through one
  batched product (`matmat`: one backward pass of the cached graph for all of them), capped by
  the operator's memory estimate; every width gives the same numbers. Default 1: measured on
  CPU (docs/curvature.md "Batched products") no width was reliably cheaper per product than
  single products;
- batches and blocks: `batches` disjoint equal batches with per-batch eigenpairs by `per_batch`
  ("ritz": Rayleigh-Ritz on the combined Krylov basis, no extra product; "solve": a Lanczos run
  per batch), and `blocks` ("none", "layer" or name patterns) for per-block figures.

A bad value raises `probe.UsageError` naming the option, as `probe analyze --param` does; checks
that need the data or the model (the batch splitting into `batches`, a block pattern matching
no parameter, the length of a warm start) are made when the analysis runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.numerics.checks import check
from probe.numerics.curvature.operators import OPERATORS, OperatorFactory
from probe.numerics.curvature.trace import HUTCHPP_MIN_PRODUCTS, TRACE_METHODS
from probe.numerics.loss import LossOptions

__all__ = ["EIGEN_METHODS", "PER_BATCH_MODES", "HessianConfig"]

EIGEN_METHODS = ("lanczos", "power")
PER_BATCH_MODES = ("ritz", "solve")


@dataclass(frozen=True, kw_only=True)
class HessianConfig(LossOptions):
    """The options of `hessian_analysis` (see the module docstring for each group).

    The loss's fields (`loss_fn`, `batch_size`, `bn`, `params`, `dtype`, `weight_decay`) come
    from `probe.numerics.loss.LossOptions`.
    """

    top_k: int = 1
    smallest: int = 1
    method: str = "lanczos"
    tol: float = 1e-3
    residual_tol: float = 1e-2
    max_iter: int = 100
    seed: int = 0
    trace_samples: int = 0
    trace_method: str = "hutchinson"
    density_runs: int = 0
    density_steps: int = 60
    operator: str | OperatorFactory | None = None
    operator_name: str = "hessian"
    hvp: str = "auto"
    product_batch: int = 1
    batches: int = 1
    per_batch: str = "ritz"
    blocks: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.operator, str):
            check(
                self.operator in OPERATORS,
                "operator",
                f"must be one of {OPERATORS}, got {self.operator!r}",
            )
        self._check_solve()
        self._check_trace()
        check(self.density_runs >= 0, "density_runs", f"must be >= 0, got {self.density_runs}")
        check(self.batches >= 1, "batches", f"must be >= 1, got {self.batches}")
        check(
            self.product_batch >= 1,
            "product_batch",
            f"must be >= 1, got {self.product_batch}",
        )
        check(
            self.per_batch in PER_BATCH_MODES,
            "per_batch",
            f"must be 'ritz' or 'solve', got {self.per_batch!r}",
        )

    def _check_solve(self) -> None:
        check(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        check(self.smallest >= 0, "smallest", f"must be >= 0, got {self.smallest}")
        check(
            self.method in EIGEN_METHODS,
            "method",
            f"must be 'lanczos' or 'power', got {self.method!r}",
        )
        check(self.tol > 0, "tol", f"must be > 0, got {self.tol}")
        check(self.max_iter >= 1, "max_iter", f"must be >= 1, got {self.max_iter}")

    def _check_trace(self) -> None:
        n = self.trace_samples
        check(n == 0 or n >= 2, "trace_samples", f"must be 0 or >= 2, got {n}")
        check(
            self.trace_method in TRACE_METHODS,
            "trace_method",
            f"must be hutchinson or hutch++, got {self.trace_method!r}",
        )
        if self.trace_method != "hutch++":
            return
        check(
            self.batches == 1 and self.blocks.strip() == "none",
            "trace_method",
            "hutch++ estimates one operator's trace: use it with batches=1 and blocks=none "
            "(hutchinson gives per-batch and per-block traces)",
        )
        check(
            n == 0 or n >= HUTCHPP_MIN_PRODUCTS,
            "trace_samples",
            f"Hutch++ needs at least {HUTCHPP_MIN_PRODUCTS} products for a standard error, got {n}",
        )

    @property
    def operator_label(self) -> str:
        """The operator's name in every report: its own, or `operator_name` for a callable."""
        return self.operator if isinstance(self.operator, str) else self.operator_name
