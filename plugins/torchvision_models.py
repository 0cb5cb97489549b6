"""`torchvision`: any classification architecture of torchvision.models, untrained (weights=None).

`arch` names it (`resnet18`, `mobilenet_v3_small`, `vgg11`, ...). Any input channel
count works for the CNN families (the stem conv is rebuilt for it); transformers
(ViT, Swin, MaxViT) are refused, since their blocks' outputs are token sequences,
not the 2-D or 4-D activations probe records. The input size must be one the
architecture can take (AlexNet and Inception v3 need more than 32x32): `build` says
so in one line. The code is in probe_plugins.nets.torchvision_models; this module
imports neither torch nor torchvision (validating a non-default `arch` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import probe

DEFAULT_ARCH = "resnet18"


@dataclass(frozen=True)
class Params:
    arch: str = probe.param(
        DEFAULT_ARCH,
        "A torchvision.models classification architecture, e.g. resnet18, "
        "mobilenet_v3_small, vgg11_bn, densenet121, convnext_tiny (not ViT/Swin/MaxViT).",
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", self.arch):
            raise ValueError(
                f"arch must be a torchvision model name such as resnet18, got {self.arch[:40]!r}"
            )
        if self.arch == DEFAULT_ARCH:
            # checked by the tests: registration builds the defaults and must not import torchvision
            return
        try:
            from .nets.torchvision_models import check_arch
        except ImportError as exc:
            raise ValueError(f"the torchvision family needs torchvision ({exc})") from None
        check_arch(self.arch)


def build(params: Params, input: Any, num_classes: int) -> Any:
    from .nets.torchvision_models import build as build_tv

    return build_tv(params.arch, input, num_classes)


def layers(model: Any, params: Params) -> list[str]:
    """Stage outputs (per architecture, else probe's default_layers), then the penultimate layer."""
    from .nets.torchvision_models import layers as tv_layers

    return tv_layers(model, params.arch)


@probe.hookimpl
def register_models(register: Any) -> None:
    register(
        probe.ModelFamily(
            name="torchvision",
            build=build,
            params=Params,
            layers=layers,
            version="1",
            summary="Any torchvision.models classification CNN by name "
            "(arch=resnet18, vgg11, ...), weights=None.",
        )
    )
