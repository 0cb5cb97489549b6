"""The one input rule of the representation numerics: samples x features, in float64.

Activations come as numpy arrays or torch tensors of any dtype, feature maps as [N, C, H, W];
`as_samples` turns each into an [N, D] float64 numpy array (a copy on the CPU), so every
similarity and projection is computed in float64 whatever the model's dtype.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_samples"]


def as_samples(X: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N, ...] -> [N, D] float64; feature maps [N, C, H, W] are flattened per sample.

    A 1-D input is a ValueError (it has no samples axis to keep).
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        raise ValueError("expected samples x features, got a 1-D array")
    return X.reshape(X.shape[0], -1)
