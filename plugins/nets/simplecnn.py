"""The course notebook's CNN, unchanged, so layer names (`features.6`) mean what they did there.

conv 3x3 -> BatchNorm -> ReLU per layer, a 2x2 max-pool after every second layer,
channels doubled after every second layer (at most 512), then global average
pooling, a `hidden`-unit layer and the classifier.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """Conv-BN-ReLU stack of `depth` layers; see the module docstring."""

    def __init__(
        self,
        depth: int,
        base_width: int,
        dropout: float,
        hidden: int,
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        self.block_outputs: list[str] = []  # module name whose output is each block's output
        in_ch, ch = in_channels, base_width
        for i in range(depth):
            layers += [
                nn.Conv2d(in_ch, ch, 3, padding=1),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
            ]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            self.block_outputs.append(f"features.{len(layers) - 1}")
            in_ch = ch
            if i % 2 == 1:
                ch = min(ch * 2, 512)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_ch, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.penultimate = "classifier.3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @property
    def recorded_layers(self) -> list[str]:
        """Layers whose activations are dumped: every conv block and the penultimate layer."""
        return [*self.block_outputs, self.penultimate]
