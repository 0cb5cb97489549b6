"""`mlp`: a multi-layer perceptron on the flattened image (for 28x28 data sets, but any input size).

flatten -> `depth` hidden layers Linear(+BatchNorm1d)+ReLU(+Dropout) of `width`
units -> a linear classifier. With batchnorm on, the hidden Linear layers have no
bias (BatchNorm's shift replaces it). The network code is in probe_plugins.nets.mlp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import probe


@dataclass(frozen=True)
class Params:
    depth: int = probe.param(
        2, "Hidden layers (0: a linear classifier on the pixels).", min=0, max=64
    )
    width: int = probe.param(256, "Units per hidden layer.", min=1, max=65536)
    dropout: float = probe.param(
        0.0, "Dropout probability after each hidden layer's ReLU.", min=0.0, max=0.95
    )
    batchnorm: bool = probe.param(False, "BatchNorm1d between each hidden Linear and its ReLU.")


def build(params: Params, input: Any, num_classes: int) -> Any:
    from .nets.mlp import MLP

    h, w = input.size
    return MLP(
        input.channels * h * w,
        num_classes,
        params.depth,
        params.width,
        params.dropout,
        params.batchnorm,
    )


def layers(model: Any, params: Params) -> list[str]:
    """Each hidden layer's output, the last one being the classifier's input."""
    from .nets.mlp import recorded

    return recorded(params.depth)


@probe.hookimpl
def register_models(register: Any) -> None:
    register(
        probe.ModelFamily(
            name="mlp",
            build=build,
            params=Params,
            layers=layers,
            version="1",
            summary="Multi-layer perceptron on the flattened image: depth hidden ReLU layers "
            "of width units.",
        )
    )
