"""The model a training config describes: its spec, size and fit, checked before allocating it.

Families themselves are plugins (probe.contract.families is the contract; the
built-in ones live in plugins/). This module turns `probe train`'s options into a
`ModelSpec` for a data set (through the family's alias table for the older
options: probe.training.config.family_params), and sizes that model on the meta
device: its parameter count and an estimate of its training memory bound what probe
will build, and a forward pass there shows that the data set's images fit the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from probe.contract.cifar10 import CIFAR10_CLASSES, CIFAR10_INPUT, CIFAR10_MEAN, CIFAR10_STD
from probe.contract.families import (
    MAX_MODEL_PARAMS,
    MAX_TRAIN_BYTES,
    InputSpec,
    ModelSpec,
    _scalar,
    default_layers,
    get_family,
)
from probe.contract.modulespec import (
    MODULE_FAMILY,
    check_factory_ref,
    factory_ref,
    layout_of,
)
from probe.errors import UsageError
from probe.training.config import TrainConfig, family_params, parse_pairs


def simplecnn_spec(
    depth: int = 4,
    base_width: int = 32,
    dropout: float = 0.0,
    hidden: int = 256,
    num_classes: int = 10,
    input: InputSpec = CIFAR10_INPUT,
) -> ModelSpec:
    """The spec of the default family's network, made by the family (for tests and benchmarks)."""
    raw = {"depth": depth, "base_width": base_width, "dropout": dropout, "hidden": hidden}
    return get_family("simplecnn").spec(raw, input, num_classes)


def count_params(spec: ModelSpec) -> int:
    """Parameter count of the model `spec` describes, built on the meta device (no memory)."""
    return spec.num_params()


def spec_from_config(cfg: TrainConfig, input: InputSpec, num_classes: int) -> ModelSpec:
    """The spec of the model `cfg` trains on a data set of `input` images and `num_classes` classes.

    `--model-param` sets the family's parameters; the older `--model-depth`,
    `--base-width`, `--target-params` and `--dropout` set the ones the family's alias
    table names (for the default family, simplecnn, the same fields; giving one both
    ways is an error); with a family that takes none of them they must stay at their
    defaults (`family_params`).
    """
    fam = get_family(cfg.model, option="--model")
    return fam.spec(family_params(cfg, fam), input, num_classes)


def check_model(
    spec: ModelSpec,
    batch_size: int,
    option: str = "--model",
    full_maps: tuple[str, ...] = (),
    skeleton: Any = None,
) -> int:
    """Size the model on the meta device and run one forward pass there; return its parameter count.

    Refuses, in one line naming `option`: a model of more than MAX_MODEL_PARAMS
    parameters or an estimated training memory above MAX_TRAIN_BYTES (weights,
    gradients, two optimizer buffers, and every module's output for one batch,
    kept for the backward pass), images the model cannot take (a forward pass
    that fails or does not give [N, num_classes] logits), and `--full-maps` names
    that are not modules of the model. `skeleton`: the model on the meta device, when the
    spec cannot build it (a user's own class: a copy of the user's instance).
    """
    import torch

    h, w = spec.input.size
    where = f"{spec.describe()}"
    try:
        model = spec.skeleton() if skeleton is None else skeleton
    except (ValueError, TypeError) as exc:
        raise UsageError(option, f"cannot build {where}: {exc}") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_MODEL_PARAMS:
        raise UsageError(
            option, f"{where} has {n:,} parameters, more than the {MAX_MODEL_PARAMS:,} probe allows"
        )
    outputs = []
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out: outputs.append(out.numel() if torch.is_tensor(out) else 0)
        )
        for _, m in model.named_modules()
    ]
    try:
        with torch.device("meta"), torch.no_grad():
            # eval: BatchNorm of a 1x1 map
            logits = model.eval()(torch.empty(1, spec.input.channels, h, w))
    except Exception as exc:  # any error of the model's own forward: the images do not fit it
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(
            option,
            f"{where} cannot take {spec.input.channels}x{h}x{w} images ({first}); pick a "
            "family or parameters for this data set",
        ) from None
    finally:
        for hk in hooks:
            hk.remove()
    if not torch.is_tensor(logits) or tuple(logits.shape) != (1, spec.num_classes):
        shape = list(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise UsageError(
            option,
            f"{where} gives outputs {shape} for one image, not [1, {spec.num_classes}] logits",
        )
    need = 16 * n + 4 * batch_size * sum(outputs)
    if need > MAX_TRAIN_BYTES:
        raise UsageError(
            option,
            f"{where} needs about {need / 2**30:,.0f} GiB to train at batch size {batch_size}, "
            f"more than the {MAX_TRAIN_BYTES >> 30} GiB probe allows; use a smaller model or batch",
        )
    unknown = [name for name in full_maps if name not in dict(model.named_modules())]
    if unknown:
        raise UsageError(
            "--full-maps",
            f"unknown layer(s) {', '.join(unknown)}; recorded layers are "
            f"{', '.join(spec.recorded_layers())}",
        )
    return n


def module_spec(
    model: Any,
    factory: Any,
    kwargs: Mapping[str, Any] | None,
    input: InputSpec,
    num_classes: int,
) -> tuple[ModelSpec, Any]:
    """(the spec of a user's own `model` instance, its meta copy): family `module`, its layout
    from one forward pass on the meta device (the user's model is not touched), and a
    reference to `factory` (a "pkg.mod:fn" string or a callable) or else to the model's class.
    Nothing is called or imported: the reference is for `probe analyze --trust-code`."""
    if factory is None:
        ref = factory_ref(type(model))
    elif isinstance(factory, str):
        ref = check_factory_ref(factory)
    elif callable(factory):
        ref = factory_ref(factory, "model_factory")
    else:
        raise UsageError("model_factory", f"expected 'pkg.mod:fn' or a function, got {factory!r}")
    params = dict(kwargs or {})
    if len(params) > 64 or not all(isinstance(k, str) and _scalar(v) for k, v in params.items()):
        raise UsageError(
            "model_params", "the factory's keyword arguments must be JSON numbers, strings or bools"
        )
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_MODEL_PARAMS:
        raise UsageError("model", f"the model has {n:,} parameters, more than probe allows")
    layout, skeleton = layout_of(model, ref, input, default_layers)
    spec = ModelSpec(MODULE_FAMILY, params, input, num_classes, module=layout)
    return spec, skeleton


def input_spec(
    images: Any, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> InputSpec:
    """The model input for uint8 [N, C, H, W] `images`: the data set's normalisation or theirs."""
    import torch

    c, h, w = images.shape[1:]
    if (
        mean is None or std is None
    ):  # float64 sums over chunks of images: never a float copy of the whole set
        total = torch.zeros(c, dtype=torch.float64)
        squares = torch.zeros(c, dtype=torch.float64)
        for start in range(0, len(images), 1024):
            x = images[start : start + 1024].to(torch.float64).div_(255.0)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        n = len(images) * h * w
        m = total / n
        var = (squares - n * m.square()).clamp_min(0) / max(n - 1, 1)
        mean = tuple(round(v, 6) for v in m.tolist())
        std = tuple(round(max(v, 1e-6), 6) for v in var.sqrt().tolist())
    if len(mean) != c or len(std) != c or not all(math.isfinite(v) for v in (*mean, *std)):
        raise UsageError(
            "--dataset",
            f"the data set's mean/std have {len(mean)}/{len(std)} entries for {c}-channel images",
        )
    return InputSpec(
        int(c), (int(h), int(w)), tuple(float(v) for v in mean), tuple(float(v) for v in std)
    )


__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_INPUT",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MAX_TRAIN_BYTES",
    "ModelSpec",
    "check_model",
    "count_params",
    "input_spec",
    "module_spec",
    "parse_pairs",
    "simplecnn_spec",
    "spec_from_config",
]
