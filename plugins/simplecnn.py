"""The `simplecnn` model family: the course notebook's network (probe's default model).

Its parameters are also `probe train`'s `--model-depth`, `--base-width`,
`--target-params` and `--dropout` options, which predate model families; with
`--model simplecnn` (the default) they and `--model-param` set the same fields. The
alias table (`OPTIONS`) says which; `--target-params` picks the base width whose
model has about that many parameters. `estimate` sizes the model by arithmetic
alone, so `probe train --base-width 60000` is refused in one line before torch is
imported. The network code is in probe_plugins.nets.simplecnn, imported only when a
model is built.
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


# --- the size by arithmetic alone (no torch) ------------------------------------------------


def param_count(
    depth: int, base_width: int, *, in_channels: int = 3, hidden: int = 256, num_classes: int = 10
) -> int:
    """Parameters: conv weight + bias and BatchNorm weight + bias per layer, then the classifier."""
    total, in_ch, ch = 0, in_channels, base_width
    for i in range(depth):
        total += in_ch * ch * 9 + ch + 2 * ch
        in_ch = ch
        if i % 2 == 1:
            ch = min(ch * 2, 512)
    return total + in_ch * hidden + hidden + hidden * num_classes + num_classes


def train_bytes(
    depth: int,
    base_width: int,
    batch_size: int,
    *,
    in_channels: int = 3,
    hidden: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
) -> int:
    """Rough float32 training memory at `batch_size`: to refuse absurd sizes, not a peak prediction.

    Weights, gradients and two optimizer moments (4 copies of the parameters), and
    the activations autograd keeps for a batch: about three tensors per conv layer
    (conv, BatchNorm and ReLU outputs), plus the input.
    """
    per_sample, ch, side = in_channels * image_size * image_size, base_width, image_size
    for i in range(depth):
        per_sample += 3 * ch * side * side
        if i % 2 == 1:
            side = max(side // 2, 1)
            ch = min(ch * 2, 512)
    params = param_count(
        depth, base_width, in_channels=in_channels, hidden=hidden, num_classes=num_classes
    )
    return 4 * (4 * params + batch_size * per_sample)


def width_for_params(
    depth: int, target: int, *, in_channels: int = 3, hidden: int = 256, num_classes: int = 10
) -> int:
    """The base width (1..512) whose model has the parameter count closest to `target`."""
    return min(
        range(1, 513),
        key=lambda w: abs(
            param_count(depth, w, in_channels=in_channels, hidden=hidden, num_classes=num_classes)
            - target
        ),
    )


def estimate(params: Params, batch_size: int) -> probe.SizeEstimate:
    """The model's size on CIFAR-shaped input, before the data set is known (the cost check)."""
    return probe.SizeEstimate(
        parameters=param_count(params.depth, params.base_width),
        train_bytes=train_bytes(params.depth, params.base_width, batch_size),
        model=f"a depth-{params.depth} model of base width {params.base_width}",
        param="base_width",
    )


# `probe train`'s options that predate model families -> the parameters they set
OPTIONS = {
    "model_depth": "depth",
    "base_width": "base_width",
    "dropout": "dropout",
    "target_params": probe.OptionAlias(
        "base_width", lambda target, params: width_for_params(params.depth, target)
    ),
}


# --- the family ------------------------------------------------------------------------------


def build(params: Params, input: Any, num_classes: int) -> Any:
    from probe_plugins.nets.simplecnn import SimpleCNN  # torch, when a model is built

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
            options=OPTIONS,
            estimate=estimate,
            summary="The course notebook's CNN: conv-BN-ReLU layers, max-pool every second layer, "
            "GAP, a hidden layer.",
        )
    )
