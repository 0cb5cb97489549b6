"""The model a training config describes: its spec, size and fit, checked before anything is allocated.

Families themselves are plugins (probe/families.py is the contract; the built-in
ones live in plugins/). This module turns `probe train`'s options into a
`ModelSpec` for a data set, and sizes that model on the meta device: its
parameter count and an estimate of its training memory bound what probe will
build, and a forward pass there shows that the data set's images fit the model.
"""

from __future__ import annotations

import math
from typing import Any

from probe.contract.families import MAX_MODEL_PARAMS, InputSpec, ModelSpec, get_family
from probe.errors import UsageError
from probe.training.modelsize import param_count as simplecnn_param_count
from probe.training.modelsize import width_for_params as _width_for_params

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_INPUT = InputSpec(3, (32, 32), CIFAR10_MEAN, CIFAR10_STD)

# `probe train`'s options that predate model families: fields of the simplecnn family.
SIMPLECNN_OPTIONS = {"model_depth": "depth", "base_width": "base_width", "dropout": "dropout"}
MAX_TRAIN_BYTES = (
    64 << 30
)  # estimated training memory (weights, optimizer state, activations of a batch)


def simplecnn_spec(
    depth: int = 4,
    base_width: int = 32,
    dropout: float = 0.0,
    hidden: int = 256,
    num_classes: int = 10,
    input: InputSpec = CIFAR10_INPUT,
) -> ModelSpec:
    """The spec of the notebook's CNN (tests, benchmarks and the plugin-author fixture build it directly)."""
    return ModelSpec(
        "simplecnn",
        {"depth": depth, "base_width": base_width, "dropout": dropout, "hidden": hidden},
        input,
        num_classes,
        "1",
        "probe-cnn",
    )


def count_params(spec: ModelSpec) -> int:
    """Parameter count of the model `spec` describes, built on the meta device (nothing allocated)."""
    return sum(p.numel() for p in spec.skeleton().parameters())


def width_for_params(depth: int, target: int, **kw: Any) -> int:
    """The simplecnn base width whose model has the parameter count closest to `target` (`--target-params`)."""
    return _width_for_params(depth, target, **kw)


def parse_pairs(
    pairs: tuple[str, ...] | list[str], option: str = "--model-param"
) -> dict[str, str]:
    """`("depth=56", "shortcut=none")` -> {"depth": "56", "shortcut": "none"}; a malformed or repeated key is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(option, f"expected KEY=VALUE, got {pair!r}")
        if key in out:
            raise UsageError(option, f"{key} is given twice")
        out[key] = value.strip()
    return out


def spec_from_config(cfg: Any, input: InputSpec, num_classes: int) -> ModelSpec:
    """The spec of the model `cfg` trains on a data set of `input` images and `num_classes` classes.

    `--model-param` sets the family's parameters. For the default family,
    simplecnn, the older `--model-depth`, `--base-width`, `--target-params` and
    `--dropout` set the same fields (giving one both ways is an error); with any
    other family they must stay at their defaults.
    """
    from probe.training.config import FIELDS, flag

    fam = get_family(cfg.model, option="--model")
    raw: dict[str, Any] = parse_pairs(cfg.model_params)
    if fam.name == "simplecnn":
        legacy = {p: getattr(cfg, o) for o, p in SIMPLECNN_OPTIONS.items()}
        if cfg.target_params is not None:
            legacy["base_width"] = width_for_params(
                int(raw.get("depth", cfg.model_depth)), cfg.target_params
            )
        for o, p in [*SIMPLECNN_OPTIONS.items(), ("target_params", "base_width")]:
            if p in raw and getattr(cfg, o) != FIELDS[o].default:
                raise UsageError("--model-param", f"{p} is also set by {flag(o)}; give it one way")
        raw = {**legacy, **raw}
    else:
        for o in [*SIMPLECNN_OPTIONS, "target_params"]:
            if getattr(cfg, o) != FIELDS[o].default:
                raise UsageError(
                    flag(o),
                    f"applies to --model simplecnn only; give {fam.name}'s parameters with "
                    f"--model-param KEY=VALUE (see `probe models`)",
                )
    return fam.spec(raw, input, num_classes)


def check_model(
    spec: ModelSpec, batch_size: int, option: str = "--model", full_maps: tuple[str, ...] = ()
) -> int:
    """Size the model on the meta device and run one forward pass there; returns its parameter count.

    Refuses, in one line naming `option`: a model of more than MAX_MODEL_PARAMS
    parameters or an estimated training memory above MAX_TRAIN_BYTES (weights,
    gradients, two optimizer buffers, and every module's output for one batch,
    kept for the backward pass), images the model cannot take (a forward pass
    that fails or does not give [N, num_classes] logits), and `--full-maps` names
    that are not modules of the model.
    """
    import torch

    h, w = spec.input.size
    where = f"{spec.describe()}"
    try:
        model = spec.skeleton()
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
            logits = model.eval()(
                torch.empty(1, spec.input.channels, h, w)
            )  # eval: BatchNorm of a 1x1 map
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


def input_spec(
    images: Any, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> InputSpec:
    """The model input for uint8 [N, C, H, W] `images`: the data set's normalisation, else theirs (per channel)."""
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
    "ModelSpec",
    "check_model",
    "count_params",
    "input_spec",
    "simplecnn_param_count",
    "simplecnn_spec",
    "spec_from_config",
    "width_for_params",
]
