"""Small models shared by the curvature tests (test_sharpness, test_landscape,
test_batches_sharpness_landscape, test_curvature, test_operators): a linear regression whose
squared-error loss is exactly quadratic (closed-form gradient and Hessian), and a tiny CNN with
BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

from probe.training.model import simplecnn_spec


class Linear(nn.Module):
    """x @ w: with the squared error its loss is exactly quadratic in w."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return x @ self.w


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def regression(d: int = 4, n: int = 200, seed: int = 0, at_minimum: bool = False):
    """(model, x, y, Hessian) for L(w) = mean (x.w - y)^2: gradient 2 X^T (Xw - y) / n,
    Hessian 2 X^T X / n."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.5, 2.0, d, dtype=torch.float64
    )
    y = x @ torch.linspace(-1, 1, d, dtype=torch.float64) + 0.3 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    w = (
        torch.linalg.lstsq(x, y).solution
        if at_minimum
        else torch.linspace(1.5, -0.5, d, dtype=torch.float64)
    )
    return Linear(w), x, y, 2 * x.T @ x / n


def warm_batchnorm(
    model: nn.Module,
    shape: tuple[int, ...],
    scale: float,
    shift: float,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Three train-mode passes of shifted noise, so BatchNorm's running statistics differ from
    any batch's (an eval-mode bug then shows); returns the model in eval mode."""
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(*shape, dtype=dtype) * scale + shift)
    return model.eval()


def small_cnn(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN in eval mode whose BatchNorm running statistics differ from batch statistics,
    and n random 16x16 images with labels (seeded: the same every call)."""
    torch.manual_seed(0)
    model = warm_batchnorm(
        simplecnn_spec(depth=2, base_width=4, hidden=8).build(), (16, 3, 16, 16), 1.5, 0.3
    )
    return model, torch.randn(n, 3, 16, 16), torch.randint(0, 10, (n,))
