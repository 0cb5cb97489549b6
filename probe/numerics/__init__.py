"""The numerics of every analysis, on any `nn.Module` and batch: the library behind the plugins.

Functions and operators over models and tensors: no run directory, no plugin, no file. The
analysis plugins are thin layers over them, and so is the in-process API. Every name in
`__all__` is stable; import them from here (`from probe.numerics import hessian_analysis`) or
from the module that defines them:

- `probe.numerics.curvature`: Hessian and Gauss-Newton spectra (`hessian_analysis` with a
  `HessianConfig`, returning a `HessianReport`), and its parts: linear operators and
  solvers (`lanczos`, `power_iteration`, `ritz_pairs`), the operators (`HessianOperator`,
  `GGNOperator`), traces (`hutchinson_trace`, `hutchpp_trace`) and densities (`slq_density`).
- `probe.numerics.loss`: `BatchedLoss` (the mean loss over a batch as a function of named
  parameters), `analysis_mode`, `split_batches`, and `LossOptions`.
- `probe.numerics.landscape`: loss surfaces around a checkpoint (`surface` with a
  `SurfaceConfig`, `random_directions`, `pca_directions`, `center_over_batches`).
- `probe.numerics.sharpness`: worst-case, adaptive and average-case sharpness
  (`WorstCaseConfig`, `AdaptiveConfig`, `AverageConfig`; `sharpness_over_batches`).
- `probe.numerics.representations`: PCA, t-SNE, RSM and CKA of activations.
- `probe.numerics.spectra`: WeightWatcher's weight-matrix spectra (`weight_spectra`).
- `probe.numerics.gradcheck`: autograd against finite differences.
- `probe.numerics.probing`: linear probes (`linear_probe`: stratified k-fold logistic regression).
- `probe.numerics.collapse`: neural collapse NC1-NC4 (`neural_collapse`).
- `probe.numerics.gradient_noise`: per-example gradients and their noise scale, SNR and
  diversity (`per_example_gradients`, `gradient_noise`).
- `probe.numerics.interpolation`: loss along straight lines between weights and its barrier
  (`interpolation_path`, `linear_mode_barrier`).

What every function guarantees: the model is never mutated (weights, buffers, train/eval
flags and `requires_grad` are as before the call); numbers that need it are accumulated in
float64 (representations, Ritz values, traces; `dtype=torch.float64` runs a whole curvature
analysis on a float64 copy); seeds fix every random draw, so the same call gives the same
numbers; a number that may be wrong says so (converged flags, residuals, standard errors);
a bad argument raises `probe.UsageError` naming it, a NaN/inf loss `probe.ProbeError`.
Options of an analysis are one frozen value (`HessianConfig`, `SurfaceConfig`, ...) checked
once; every function also takes its fields as keywords.
"""

from probe.numerics.checks import check, check_finite
from probe.numerics.curvature import (
    BatchedLoss,
    BlockResult,
    Density,
    EigenResult,
    GGNOperator,
    HessianConfig,
    HessianOperator,
    HessianReport,
    LinearOperator,
    MatrixOperator,
    TraceResult,
    eigenvector_overlap,
    ggn_operator,
    hessian_analysis,
    hessian_operator,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    make_operator,
    parameter_blocks,
    power_iteration,
    ritz_pairs,
    slq_density,
    standard_error,
    trace_estimate,
)
from probe.numerics.gradcheck import GradCheckRow, gradcheck_conv_layers
from probe.numerics.landscape import (
    CenterSpread,
    Directions,
    Surface,
    SurfaceConfig,
    center_over_batches,
    grid,
    pca_directions,
    random_directions,
    surface,
    surface_rows,
)
from probe.numerics.loss import (
    LossOptions,
    analysis_mode,
    has_batchnorm,
    require_batchnorm,
    split_batches,
)
from probe.numerics.representations import (
    CKA_ESTIMATORS,
    EpochProjection,
    PCAResult,
    RSMSummary,
    cka_matrix,
    cosine_rsm,
    linear_cka,
    pca,
    pca_across_epochs,
    procrustes_align,
    rsm_class_summary,
    tsne,
    tsne_backend,
)
from probe.numerics.sharpness import (
    AdaptiveConfig,
    AverageConfig,
    BatchSpread,
    SharpnessResult,
    WorstCaseConfig,
    adaptive_sharpness,
    average_sharpness,
    worst_case_sharpness,
)
from probe.numerics.sharpness import over_batches as sharpness_over_batches
from probe.numerics.spectra import (
    ALPHA_BAND,
    EVALS_THRESH,
    PowerLawFit,
    fit_power_law,
    layer_spectrum,
    spectrum_row,
    weight_layers,
    weight_spectra,
)

__all__ = [
    "ALPHA_BAND",
    "CKA_ESTIMATORS",
    "EVALS_THRESH",
    "AdaptiveConfig",
    "AverageConfig",
    "BatchSpread",
    "BatchedLoss",
    "BlockResult",
    "CenterSpread",
    "Density",
    "Directions",
    "EigenResult",
    "EpochProjection",
    "GGNOperator",
    "GradCheckRow",
    "HessianConfig",
    "HessianOperator",
    "HessianReport",
    "LinearOperator",
    "LossOptions",
    "MatrixOperator",
    "PCAResult",
    "PowerLawFit",
    "RSMSummary",
    "SharpnessResult",
    "Surface",
    "SurfaceConfig",
    "TraceResult",
    "WorstCaseConfig",
    "adaptive_sharpness",
    "analysis_mode",
    "average_sharpness",
    "center_over_batches",
    "check",
    "check_finite",
    "cka_matrix",
    "cosine_rsm",
    "eigenvector_overlap",
    "fit_power_law",
    "ggn_operator",
    "gradcheck_conv_layers",
    "grid",
    "has_batchnorm",
    "hessian_analysis",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "layer_spectrum",
    "linear_cka",
    "make_operator",
    "parameter_blocks",
    "pca",
    "pca_across_epochs",
    "pca_directions",
    "power_iteration",
    "procrustes_align",
    "random_directions",
    "require_batchnorm",
    "ritz_pairs",
    "rsm_class_summary",
    "sharpness_over_batches",
    "slq_density",
    "spectrum_row",
    "split_batches",
    "standard_error",
    "surface",
    "surface_rows",
    "trace_estimate",
    "tsne",
    "tsne_backend",
    "weight_layers",
    "weight_spectra",
    "worst_case_sharpness",
]
