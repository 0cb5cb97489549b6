"""Curvature of a network's training loss: Hessian and Gauss-Newton spectra, traces and densities.

`hessian_analysis(model, x, y, **options)` (or with a `HessianConfig`) answers the notebook
question in one call: the top and bottom eigenvalues with residuals and converged flags, and
optionally the trace, the spectral density, per-batch and per-layer-block figures, as a
`HessianReport`. Its parts are public for other uses, one job per module:

- `probe.numerics.curvature.linear`: `LinearOperator` (a symmetric matrix known through
  products) and the solvers on it: `power_iteration`, `lanczos`, `ritz_pairs`; dense
  `MatrixOperator` for tests, `MeanOperator` (several batches), `BlockOperator`.
- `probe.numerics.loss` (re-exported here): `BatchedLoss`, the mean loss over a fixed batch as
  a function of named parameters, and `analysis_mode`.
- `probe.numerics.curvature.operators`: `HessianOperator`, `GGNOperator`, `make_operator`.
- `probe.numerics.curvature.trace`: `hutchinson_trace`, `hutchpp_trace`, `trace_estimate`,
  `slq_density`.
- `probe.numerics.curvature.blocks`: `parameter_blocks` (per-layer diagonal blocks).
- `probe.numerics.curvature.config`, `.report`, `.analysis`: `HessianConfig`,
  `HessianReport`, `hessian_analysis` and its steps.

Rules kept throughout (shared/design/curvature-pitfalls.md):
- The model is never mutated: parameters go through `torch.func.functional_call`, BatchNorm is
  in eval mode (or uses batch statistics without touching its buffers), and every module's
  train/eval flag is restored afterwards.
- A batch larger than `batch_size` is split and the mini-batch results are averaged weighted
  by sample count, so the loss is the mean over the whole batch.
- Eigenvalues are labelled LA (largest algebraic), SA (smallest algebraic) or LM (largest
  magnitude, what plain power iteration finds), each with its residual
  ||Hv - lambda v|| / |lambda| and a converged flag that needs both a small relative change and
  a small residual. Ritz values, traces and densities are accumulated in float64; the analysis
  runs in the model's dtype unless `dtype=torch.float64` asks for a float64 copy.
- Seeds fix every random start and probe vector: the same options give the same numbers.
- A bad option raises `probe.UsageError` naming it; a NaN/inf loss raises `probe.ProbeError`.
"""

from probe.numerics.curvature.analysis import hessian_analysis
from probe.numerics.curvature.blocks import (
    BLOCK_MODES,
    OTHER_BLOCK,
    block_indices,
    parameter_blocks,
)
from probe.numerics.curvature.config import HessianConfig
from probe.numerics.curvature.linear import (
    BlockOperator,
    EigenResult,
    LinearOperator,
    MatrixOperator,
    MeanOperator,
    RecordingMeanOperator,
    eigenvector_overlap,
    lanczos,
    power_iteration,
    products,
    ritz_pairs,
)
from probe.numerics.curvature.operators import (
    CACHE_LIMIT,
    HVP_METHODS,
    OPERATORS,
    GGNOperator,
    HessianOperator,
    OperatorFactory,
    ggn_operator,
    hessian_operator,
    make_operator,
)
from probe.numerics.curvature.report import BlockResult, HessianReport
from probe.numerics.curvature.trace import (
    TRACE_METHODS,
    Density,
    TraceResult,
    hutchinson_samples,
    hutchinson_trace,
    hutchpp_trace,
    rademacher,
    slq_density,
    standard_error,
    trace_estimate,
)
from probe.numerics.loss import BN_MODES, BatchedLoss, LossFn, analysis_mode

__all__ = [
    "BLOCK_MODES",
    "BN_MODES",
    "CACHE_LIMIT",
    "HVP_METHODS",
    "OPERATORS",
    "OTHER_BLOCK",
    "TRACE_METHODS",
    "BatchedLoss",
    "BlockOperator",
    "BlockResult",
    "Density",
    "EigenResult",
    "GGNOperator",
    "HessianConfig",
    "HessianOperator",
    "HessianReport",
    "LinearOperator",
    "LossFn",
    "MatrixOperator",
    "MeanOperator",
    "OperatorFactory",
    "RecordingMeanOperator",
    "TraceResult",
    "analysis_mode",
    "block_indices",
    "eigenvector_overlap",
    "ggn_operator",
    "hessian_analysis",
    "hessian_operator",
    "hutchinson_samples",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "make_operator",
    "parameter_blocks",
    "power_iteration",
    "rademacher",
    "products",
    "ritz_pairs",
    "slq_density",
    "standard_error",
    "trace_estimate",
]
