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
- `probe.numerics.forgetting`: example forgetting and data maps from per-epoch predictions
  (`example_history`).

Names are loaded on first use (PEP 562), so `import probe.numerics.device` from a light
module does not import torch.

What every function guarantees: the model is never mutated (weights, buffers, train/eval
flags and `requires_grad` are as before the call); numbers that need it are accumulated in
float64 (representations, Ritz values, traces; `dtype=torch.float64` runs a whole curvature
analysis on a float64 copy); seeds fix every random draw, so the same call gives the same
numbers; a number that may be wrong says so (converged flags, residuals, standard errors);
a bad argument raises `probe.UsageError` naming it, a NaN/inf loss `probe.ProbeError`.
Options of an analysis are one frozen value (`HessianConfig`, `SurfaceConfig`, ...) checked
once; every function also takes its fields as keywords.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name is defined (module, or module and its name there); `from probe.numerics
# import X` imports that module on first use.
_WHERE: dict[str, str | tuple[str, str]] = {
    "check": "probe.numerics.checks",
    "check_finite": "probe.numerics.checks",
    "BatchedLoss": "probe.numerics.curvature",
    "BlockResult": "probe.numerics.curvature",
    "Density": "probe.numerics.curvature",
    "EigenResult": "probe.numerics.curvature",
    "GGNOperator": "probe.numerics.curvature",
    "HessianConfig": "probe.numerics.curvature",
    "HessianOperator": "probe.numerics.curvature",
    "HessianReport": "probe.numerics.curvature",
    "LinearOperator": "probe.numerics.curvature",
    "MatrixOperator": "probe.numerics.curvature",
    "TraceResult": "probe.numerics.curvature",
    "eigenvector_overlap": "probe.numerics.curvature",
    "ggn_operator": "probe.numerics.curvature",
    "hessian_analysis": "probe.numerics.curvature",
    "hessian_operator": "probe.numerics.curvature",
    "hutchinson_trace": "probe.numerics.curvature",
    "hutchpp_trace": "probe.numerics.curvature",
    "lanczos": "probe.numerics.curvature",
    "make_operator": "probe.numerics.curvature",
    "parameter_blocks": "probe.numerics.curvature",
    "power_iteration": "probe.numerics.curvature",
    "ritz_pairs": "probe.numerics.curvature",
    "slq_density": "probe.numerics.curvature",
    "standard_error": "probe.numerics.curvature",
    "trace_estimate": "probe.numerics.curvature",
    "ExampleHistory": "probe.numerics.forgetting",
    "example_history": "probe.numerics.forgetting",
    "GradCheckRow": "probe.numerics.gradcheck",
    "gradcheck_conv_layers": "probe.numerics.gradcheck",
    "CenterSpread": "probe.numerics.landscape",
    "Directions": "probe.numerics.landscape",
    "Surface": "probe.numerics.landscape",
    "SurfaceConfig": "probe.numerics.landscape",
    "center_over_batches": "probe.numerics.landscape",
    "grid": "probe.numerics.landscape",
    "pca_directions": "probe.numerics.landscape",
    "random_directions": "probe.numerics.landscape",
    "surface": "probe.numerics.landscape",
    "surface_rows": "probe.numerics.landscape",
    "LossOptions": "probe.numerics.loss",
    "analysis_mode": "probe.numerics.loss",
    "has_batchnorm": "probe.numerics.loss",
    "require_batchnorm": "probe.numerics.loss",
    "split_batches": "probe.numerics.loss",
    "CKA_ESTIMATORS": "probe.numerics.representations",
    "EpochProjection": "probe.numerics.representations",
    "PCAResult": "probe.numerics.representations",
    "RSMSummary": "probe.numerics.representations",
    "cka_matrix": "probe.numerics.representations",
    "cosine_rsm": "probe.numerics.representations",
    "linear_cka": "probe.numerics.representations",
    "pca": "probe.numerics.representations",
    "pca_across_epochs": "probe.numerics.representations",
    "procrustes_align": "probe.numerics.representations",
    "rsm_class_summary": "probe.numerics.representations",
    "tsne": "probe.numerics.representations",
    "tsne_backend": "probe.numerics.representations",
    "AdaptiveConfig": "probe.numerics.sharpness",
    "AverageConfig": "probe.numerics.sharpness",
    "BatchSpread": "probe.numerics.sharpness",
    "SharpnessResult": "probe.numerics.sharpness",
    "WorstCaseConfig": "probe.numerics.sharpness",
    "adaptive_sharpness": "probe.numerics.sharpness",
    "average_sharpness": "probe.numerics.sharpness",
    "sharpness_over_batches": ("probe.numerics.sharpness", "over_batches"),
    "worst_case_sharpness": "probe.numerics.sharpness",
    "ALPHA_BAND": "probe.numerics.spectra",
    "EVALS_THRESH": "probe.numerics.spectra",
    "PowerLawFit": "probe.numerics.spectra",
    "fit_power_law": "probe.numerics.spectra",
    "layer_spectrum": "probe.numerics.spectra",
    "spectrum_row": "probe.numerics.spectra",
    "weight_layers": "probe.numerics.spectra",
    "weight_spectra": "probe.numerics.spectra",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    # in a function: the names' modules import torch, and a light caller must not pay for it
    if name not in _WHERE:
        raise AttributeError(f"module 'probe.numerics' has no attribute {name!r}")
    where = _WHERE[name]
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
