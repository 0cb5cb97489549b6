"""The notebook's CNN family, and the small JSON spec that rebuilds it.

`SimpleCNN` keeps the notebook's module layout (`features.N`, `classifier.N`), so
layer names such as `features.6` mean the same thing in probe as in the notebook:
conv 3x3 -> BatchNorm -> ReLU per layer, a 2x2 max-pool after every second layer,
channels doubled after every second layer, then global average pooling, a
256-unit hidden layer and the 10-way classifier.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .modelsize import param_count, train_bytes

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model; stored as JSON in every checkpoint."""

    depth: int = 4
    base_width: int = 32
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3
    hidden: int = 256
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    arch: str = "SimpleCNN"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | Path = "model spec") -> ModelSpec:
        """Parse a stored spec (bounded in depth and integer length); a bad one raises ValueError or RunFileError."""
        from .safeio import loads_json

        d = loads_json(text, source=source)
        if not isinstance(d, dict) or d.get("arch") != "SimpleCNN":
            raise ValueError(f"unsupported model spec {text[:80]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model spec keys {sorted(unknown)}")
        for k in ("mean", "std"):
            if k in d:
                if not isinstance(d[k], list) or len(d[k]) > 64:
                    raise ValueError(f"{k} must be a short list of numbers")
                d[k] = tuple(d[k])
        return cls(**d)

    def build(self) -> SimpleCNN:
        return SimpleCNN(self)


class SimpleCNN(nn.Module):
    """Conv-BN-ReLU stack of `depth` layers; see the module docstring."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        self.block_outputs: list[str] = []  # module name whose output is each block's output
        in_ch, ch = spec.in_channels, spec.base_width
        for i in range(spec.depth):
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            self.block_outputs.append(f"features.{len(layers) - 1}")
            in_ch = ch
            if i % 2 == 1:
                ch = min(ch * 2, 512)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_ch, spec.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.num_classes),
        )
        self.penultimate = "classifier.3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @property
    def recorded_layers(self) -> list[str]:
        """Layers whose activations are dumped: every conv block and the penultimate layer."""
        return [*self.block_outputs, self.penultimate]

    def conv_layers(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)]


def count_params(spec: ModelSpec) -> int:
    """Parameter count of the model `spec` describes, without allocating it."""
    return param_count(spec.depth, spec.base_width, in_channels=spec.in_channels, hidden=spec.hidden,
                       num_classes=spec.num_classes)


def estimate_train_bytes(spec: ModelSpec, batch_size: int, image_size: int = 32) -> int:
    """Rough float32 training memory of `spec` at `batch_size` (probe.modelsize.train_bytes)."""
    return train_bytes(spec.depth, spec.base_width, batch_size, in_channels=spec.in_channels, hidden=spec.hidden,
                       num_classes=spec.num_classes, image_size=image_size)


def width_for_params(depth: int, target: int, **spec_kw) -> int:
    """The base width whose model has the parameter count closest to `target`.

    Used to compare depths at about equal parameter count (`--target-params`).
    """
    best = min(range(1, 513), key=lambda w: abs(count_params(ModelSpec(depth=depth, base_width=w, **spec_kw)) - target))
    return best


def spec_from_config(cfg) -> ModelSpec:
    width = cfg.base_width
    if cfg.target_params is not None:
        width = width_for_params(cfg.model_depth, cfg.target_params, dropout=cfg.dropout)
    return ModelSpec(depth=cfg.model_depth, base_width=width, dropout=cfg.dropout)
