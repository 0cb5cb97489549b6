"""`resnet`: the CIFAR ResNets of He et al. 2016 (section 4.2), depth 6n+2, shortcut A, B or none.

ResNet-20/32/44/56/110 have 0.27M/0.46M/0.66M/0.85M/1.7M parameters (He et al.,
Table 6) at width 1 with option A. `shortcut=none` is Li et al. 2018's
"noshort" network (loss-landscape visualisation). The network code is in
probe_plugins.nets.resnet, imported only when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import probe


@dataclass(frozen=True)
class Params:
    depth: int = probe.param(
        20,
        "Layers: 6n+2 (20, 32, 44, 56, 110, ...): n basic blocks in each of 3 stages.",
        min=8,
        max=1202,
    )
    width: int = probe.param(
        1, "Channel multiplier: the stages have 16/32/64 times width channels.", min=1, max=64
    )
    shortcut: str = probe.param(
        "A",
        "Skip connections: A = identity with zero-padded channels and stride-2 "
        "subsampling (He et al.'s option A, parameter-free); B = 1x1 conv + BN projection "
        "where the shape changes; none = no skip connections (Li et al. 2018's noshort).",
        choices=("A", "B", "none"),
    )

    def __post_init__(self) -> None:
        if (self.depth - 2) % 6:
            n = (self.depth - 2) // 6
            raise ValueError(
                f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {self.depth}; "
                f"nearest: {6 * n + 2} or {6 * n + 8}"
            )


def build(params: Params, input: Any, num_classes: int) -> Any:
    from .nets.resnet import CifarResNet

    return CifarResNet(params.depth, params.width, params.shortcut, input.channels, num_classes)


def layers(model: Any, params: Params) -> list[str]:
    """The stem's output (after ReLU), each stage's, then the global average pool (penultimate)."""
    return ["relu", "layer1", "layer2", "layer3", "avgpool"]


@probe.hookimpl
def register_models(register: Any) -> None:
    register(
        probe.ModelFamily(
            name="resnet",
            build=build,
            params=Params,
            layers=layers,
            version="1",
            summary="CIFAR ResNet-(6n+2) of He et al. 2016 (ResNet-20/32/44/56/110), "
            "shortcut option A, B or none.",
        )
    )
