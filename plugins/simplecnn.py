"""The `simplecnn` model family: the course notebook's network (probe's default model).

Its parameters are also `probe train`'s `--model-depth`, `--base-width`,
`--target-params` and `--dropout` options, which predate model families; with
`--model simplecnn` (the default) they and `--model-param` set the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import probe


@dataclass(frozen=True)
class Params:
    depth: int = probe.param(
        4, "Conv layers (a 2x2 max-pool after every second one).", min=1, max=64
    )
    base_width: int = probe.param(
        32,
        "Channels of the first conv layer (doubled every two layers, at most 512).",
        min=1,
        max=65536,
    )
    dropout: float = probe.param(
        0.0, "Dropout after each block and in the classifier.", min=0.0, max=0.99
    )
    hidden: int = probe.param(
        256, "Units of the hidden classifier layer (the penultimate layer).", min=1, max=65536
    )


def build(params: Params, input: Any, num_classes: int) -> Any:
    from probe_plugins.nets.simplecnn import SimpleCNN

    return SimpleCNN(
        params.depth, params.base_width, params.dropout, params.hidden, input.channels, num_classes
    )


def layers(model: Any, params: Params) -> list[str]:
    return model.recorded_layers


@probe.hookimpl
def register_models(register):
    register(
        probe.ModelFamily(
            name="simplecnn",
            build=build,
            params=Params,
            layers=layers,
            summary="The course notebook's CNN: conv-BN-ReLU layers, max-pool every second layer, GAP, a hidden layer.",
        )
    )
