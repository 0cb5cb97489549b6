"""A multi-layer perceptron: flatten, `depth` Linear(+BatchNorm)+ReLU(+Dropout), a classifier.

Module names: `flatten`, `hidden.0` ... `hidden.{depth-1}` (each with `linear`,
`bn` when batchnorm is on, `act`, `drop` when dropout > 0) and `classifier`. A
hidden layer's output (after ReLU and dropout, so in eval mode its activation) is
what probe records; the last one is the classifier's input. Weights keep PyTorch's
default Linear init.
"""

from __future__ import annotations

import torch
from torch import nn


class HiddenLayer(nn.Module):
    """Linear -> BatchNorm1d (optional) -> ReLU -> Dropout (optional)."""

    def __init__(
        self, fan_in: int, width: int, dropout: float = 0.0, batchnorm: bool = False
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, width, bias=not batchnorm)
        self.bn = nn.BatchNorm1d(width) if batchnorm else None
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.bn is not None:
            x = self.bn(x)
        x = self.act(x)
        return self.drop(x) if self.drop is not None else x


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 2,
        width: int = 256,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(
            *(
                HiddenLayer(in_features if i == 0 else width, width, dropout, batchnorm)
                for i in range(depth)
            )
        )
        self.classifier = nn.Linear(width if depth else in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.flatten(x)))


def recorded(depth: int) -> list[str]:
    """Each hidden layer's output; with none, the flattened input (the classifier's input)."""
    return [f"hidden.{i}" for i in range(depth)] if depth else ["flatten"]
