"""The numerics behind probe's representation analyses, free of plotting and plugins.

The notebook ran these with library defaults in float32 on one random training batch, which
made them hard to trust and impossible to compare across epochs. Everything here computes in
float64, is seeded where randomness enters, and is checked in tests against an independent
computation. Two jobs, one module each:

- `probe.numerics.representations.projections`: `pca`, `pca_across_epochs`,
  `procrustes_align`, `tsne`, `tsne_backend`.
- `probe.numerics.representations.similarity`: `cosine_rsm`, `rsm_class_summary`,
  `linear_cka`, `cka_matrix`.

The gradient check that used to live here is `probe.numerics.gradcheck`.
"""

from probe.numerics.representations.arrays import as_samples
from probe.numerics.representations.projections import (
    EpochProjection,
    PCAResult,
    TSNEBackend,
    pca,
    pca_across_epochs,
    procrustes_align,
    tsne,
    tsne_backend,
)
from probe.numerics.representations.similarity import (
    CKA_ESTIMATORS,
    RSMSummary,
    cka_matrix,
    cosine_rsm,
    linear_cka,
    rsm_class_summary,
)

__all__ = [
    "CKA_ESTIMATORS",
    "EpochProjection",
    "PCAResult",
    "RSMSummary",
    "TSNEBackend",
    "as_samples",
    "cka_matrix",
    "cosine_rsm",
    "linear_cka",
    "pca",
    "pca_across_epochs",
    "procrustes_align",
    "rsm_class_summary",
    "tsne",
    "tsne_backend",
]
