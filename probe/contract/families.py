"""The spec every checkpoint stores to rebuild its model, and the installed family that builds it.

A family (`probe.contract.records.ModelFamily`) is a name, a typed parameters
dataclass (the `probe.param` machinery that analyses use), a builder
`(params, input, num_classes) -> nn.Module`, and the layers whose activations are
recorded by default (block outputs, then the penultimate layer: the input of the
classifier). A plugin registers it from `register_models`:

    @probe.hookimpl
    def register_models(register):
        register(probe.ModelFamily(name="mlp", summary="...", params=Params, build=build))

The spec stored in each checkpoint and in config.json names the family, its
version and provider, the parameters with defaults filled, the input (channels,
size, normalisation) and the number of classes:

    {"family": "resnet", "family_version": "1", "provider": "probe-cnn",
     "params": {"depth": 20, ...},
     "input": {"channels": 3, "size": [32, 32], "mean": [...], "std": [...]}, "num_classes": 10}

A spec never names code to import: only installed families are built (`get_family`
looks them up in the registry). Specs of the first format (`{"arch": "SimpleCNN",
"depth": ..., ...}`) are read as family `simplecnn`. This module imports no torch;
building does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.contract.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from probe.contract.modulespec import MODULE_FAMILY, ModuleLayout, build_module
from probe.contract.records import (
    FAMILY_OPTIONS,
    FamilyRecord,
    InputSpec,
    OptionAlias,
    SizeEstimate,
)
from probe.contract.registry import installed, lookup
from probe.errors import UsageError
from probe.io.safeio import loads_json

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_CHANNELS = 64
MAX_SIZE = 4096
MAX_CLASSES = 100_000
MAX_MODEL_PARAMS = 2**31  # what probe will build, from a file or from options
# estimated training memory (weights, optimizer state, activations of a batch) probe will allow
MAX_TRAIN_BYTES = 64 << 30

__all__ = [
    "FAMILY_OPTIONS",
    "MAX_MODEL_PARAMS",
    "MAX_TRAIN_BYTES",
    "FamilyNotInstalled",
    "InputSpec",
    "ModelFamily",
    "ModelSpec",
    "OptionAlias",
    "SizeEstimate",
    "default_layers",
    "get_family",
]


@dataclass(frozen=True)
class ModelFamily(FamilyRecord):
    """A model family a plugin provides. See docs/writing-a-plugin.md, "Model families".

    Its fields and checks are `probe.contract.records.FamilyRecord`'s (the record the
    registry collects); this class adds `spec`, the `ModelSpec` of given parameters.
    """

    def spec(
        self,
        raw: Mapping[str, Any],
        input: InputSpec,
        num_classes: int,
        option: str = "--model-param",
    ) -> ModelSpec:
        """The spec of this family with parameters `raw` (checked, defaults filled) for `input`."""
        params = dataclasses.asdict(self.make_params(raw, option))
        return ModelSpec(self.name, params, input, num_classes, self.version, self.provider)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: JSON in each checkpoint and in config.json."""

    family: str
    params: Mapping[str, Any]
    input: InputSpec
    num_classes: int
    family_version: str = "1"
    # where the family came from: informs, never selects
    provider: str = field(default="", compare=False)
    _legacy: bool = field(default=False, compare=False, repr=False)
    # family `module` (a user's own class, probe.contract.modulespec): its layout and reference
    module: ModuleLayout | None = None

    @property
    def is_module(self) -> bool:
        """A user's own class (no family): rebuilt only under the user's `--trust-code`."""
        return self.module is not None

    def __hash__(
        self,
    ) -> int:  # params is a dict: hash the stored form (specs key caches of layer shapes)
        return hash(self.to_json())

    # What most readers need, without knowing the spec's layout.
    @property
    def mean(self) -> tuple[float, ...]:
        return self.input.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.input.std

    @property
    def in_channels(self) -> int:
        return self.input.channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input.size

    def to_dict(self) -> dict[str, Any]:
        out = {
            "family": self.family,
            "family_version": self.family_version,
            "provider": self.provider,
            "params": dict(self.params),
            "input": self.input.to_dict(),
            "num_classes": self.num_classes,
        }
        if self.module is not None:
            out["module"] = self.module.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        """`resnet(depth=20, shortcut=A)` on 3x32x32, 10 classes: for log lines and errors."""
        ps = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        h, w = self.input.size
        name = self.module.factory if self.module is not None else self.family
        return f"{name}({ps}) on {self.input.channels}x{h}x{w}, {self.num_classes} classes"

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "model spec") -> ModelSpec:
        """Parse a stored spec, checking every field's type and size; a bad one raises ValueError.

        The family's own parameters are checked when the model is built (`family_params`).
        """
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        if "arch" in d:
            return _from_legacy(d)
        known = {"family", "family_version", "provider", "params", "input", "num_classes", "module"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model spec keys {sorted(unknown)[:5]}")
        family = d.get("family")
        if not isinstance(family, str) or not _NAME.match(family):
            raise ValueError(f"family must be a family name, got {str(family)[:40]!r}")
        version, provider = d.get("family_version", "1"), d.get("provider", "")
        if (
            not isinstance(version, str)
            or len(version) > 64
            or not isinstance(provider, str)
            or len(provider) > 200
        ):
            raise ValueError("family_version and provider must be short strings")
        params = d.get("params", {})
        if not isinstance(params, dict) or len(params) > 64:
            raise ValueError("params must be an object of at most 64 entries")
        for k, v in params.items():
            if not isinstance(k, str) or len(k) > 64 or not _scalar(v):
                raise ValueError(
                    f"params: {str(k)[:40]!r} must map to a number, string, bool or null"
                )
        if (family == MODULE_FAMILY) != ("module" in d):
            raise ValueError(f"family {MODULE_FAMILY!r} and the key 'module' go together")
        module = ModuleLayout.from_dict(d["module"]) if "module" in d else None
        return cls(
            family,
            dict(params),
            _input(d.get("input")),
            _count(d.get("num_classes"), "num_classes", MAX_CLASSES),
            version,
            provider,
            module=module,
        )

    @classmethod
    def from_json(cls, text: str, source: str | Path = "model spec") -> ModelSpec:
        """Parse stored JSON (bounded depth, integer length); bad: ValueError or RunFileError."""
        return cls.from_dict(loads_json(text, source=source), source)

    # --- building -----------------------------------------------------------------------------
    def family_obj(self) -> ModelFamily:
        return get_family(self.family, provider=self.provider)

    def state_layout(self) -> dict[str, tuple[str, tuple[int, ...], bool]]:
        """Every state tensor of the model: name -> (dtype name, shape, is a parameter), in
        state-dict order; from the stored layout, or the family's model on the meta device."""
        if self.module is not None:
            return {n: (d, s, p) for n, d, s, p in self.module.state}
        model = self.skeleton()
        params = {n for n, _ in model.named_parameters()}
        return {
            n: (str(t.dtype).removeprefix("torch."), tuple(t.shape), n in params)
            for n, t in model.state_dict().items()
        }

    def num_params(self) -> int:
        """The model's parameter count, without memory (the layout, or the meta device)."""
        if self.module is not None:
            return self.module.num_params()
        return sum(p.numel() for p in self.skeleton().parameters())

    def family_params(self) -> Any:
        """The family's params dataclass for this spec; a refused value is a ValueError."""
        if self.module is not None:
            return dict(self.params)
        fam = self.family_obj()
        try:
            return fam.make_params(dict(self.params), option="model spec")
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("model spec: ")) from None

    def build(self) -> Any:
        """A freshly initialised model on torch's default device (the meta device sizes it).

        A user's own class (`is_module`) is built only under the user's `CodeTrust`
        (probe.contract.modulespec.build_module); else this raises `CodeNotTrusted`, a Skip.
        """
        if self.module is not None:
            return build_module(self.module, self.params)
        fam = self.family_obj()
        return fam.build(self.family_params(), self.input, self.num_classes)

    def skeleton(self) -> Any:
        """The model built on the meta device: its names, shapes and parameter count, no memory."""
        import torch

        with torch.device("meta"):
            return self.build()

    def recorded_layers(self) -> list[str]:
        """The layers whose activations are dumped, in network order, the penultimate layer last."""
        if self.module is not None:
            return list(self.module.layers)
        fam = self.family_obj()
        model = self.skeleton()
        if fam.layers is not None:
            return list(fam.layers(model, self.family_params()))
        return default_layers(model, self.input)


def _scalar(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return (
        v is None or isinstance(v, (bool, int, str)) and (not isinstance(v, str) or len(v) <= 200)
    )


def _count(v: Any, name: str, most: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= most:
        raise ValueError(f"{name} must be a whole number in 1..{most}, got {str(v)[:40]}")
    return v


def _floats(v: Any, name: str, n: int) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ValueError(f"{name} must be a list of {n} numbers (one per channel)")
    if not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise ValueError(f"{name} must hold finite numbers")
    return tuple(float(x) for x in v)


def _input(d: Any) -> InputSpec:
    if not isinstance(d, dict) or set(d) - {"channels", "size", "mean", "std"}:
        raise ValueError("input must be an object with channels, size, mean and std")
    channels = _count(d.get("channels"), "input.channels", MAX_CHANNELS)
    size = d.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError("input.size must be [height, width]")
    size = (_count(size[0], "input.size", MAX_SIZE), _count(size[1], "input.size", MAX_SIZE))
    std = _floats(d.get("std"), "input.std", channels)
    if any(s <= 0 for s in std):
        raise ValueError("input.std must be positive")
    return InputSpec(channels, size, _floats(d.get("mean"), "input.mean", channels), std)


_LEGACY_KEYS = {
    "arch",
    "depth",
    "base_width",
    "dropout",
    "num_classes",
    "in_channels",
    "hidden",
    "mean",
    "std",
}


def _from_legacy(d: dict[str, Any]) -> ModelSpec:
    """The first format: `{"arch": "SimpleCNN", depth, base_width, dropout, num_classes,
    in_channels, hidden, mean, std}`, without mean and std when they were CIFAR-10's."""
    if d.get("arch") != "SimpleCNN":
        raise ValueError(f"unsupported model spec arch {str(d.get('arch'))[:40]!r}")
    unknown = set(d) - _LEGACY_KEYS
    if unknown:
        raise ValueError(f"unknown model spec keys {sorted(unknown)[:5]}")
    channels = _count(d.get("in_channels", 3), "in_channels", MAX_CHANNELS)
    params = {k: d[k] for k in ("depth", "base_width", "dropout", "hidden") if k in d}
    for k, v in params.items():
        if not _scalar(v):
            raise ValueError(f"{k} must be a number")
    inp = InputSpec(
        channels,
        (32, 32),
        _floats(d.get("mean", CIFAR10_MEAN), "mean", channels),
        _floats(d.get("std", CIFAR10_STD), "std", channels),
    )
    return ModelSpec(
        "simplecnn",
        params,
        inp,
        _count(d.get("num_classes", 10), "num_classes", MAX_CLASSES),
        "1",
        "probe-cnn",
        _legacy=True,
    )


# --- finding families ----------------------------------------------------------------------


def get_family(name: str, provider: str = "", option: str | None = None) -> ModelFamily:
    """The installed family `name`; else one line naming it (and its distribution, where known)."""
    fam = lookup("models", name) if name != MODULE_FAMILY else None
    if fam is not None:
        return fam
    known = ", ".join(sorted(installed("models"))) or "none"
    where = (
        f" (provided by the distribution {provider!r}: pip install {provider})" if provider else ""
    )
    msg = f"model family {name!r} is not installed{where}; installed families: {known}"
    if option:
        raise UsageError(option, msg)
    raise FamilyNotInstalled(msg)


class FamilyNotInstalled(ValueError):
    """A spec names a family that no installed plugin provides."""


def default_layers(model: Any, inp: InputSpec) -> list[str]:
    """Recorded layers for a family that names none: its top-level blocks, then the penultimate.

    `model` is on the meta device (`ModelSpec.skeleton`). Runs one forward pass there,
    noting the order in which modules finish. The classifier is the last `nn.Linear` to
    run; the penultimate layer is the last module before it whose per-sample output size
    equals the classifier's input size. Block outputs are the top-level children that ran
    before the penultimate layer and give 2-D or 4-D outputs.
    """
    import torch
    from torch import nn

    order: list[tuple[str, Any, tuple[int, ...]]] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = []

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        if torch.is_tensor(out):
            order.append((names[id(mod)], mod, tuple(out.shape)))

    for n, m in model.named_modules():
        if n:
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(2, inp.channels, *inp.size))
    finally:
        for h in hooks:
            h.remove()
    linears = [i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "the model has no nn.Linear classifier; give the family a layers() function"
        )
    last = linears[-1]
    width = order[last][1].in_features
    penult = next(
        (
            order[i][0]
            for i in range(last - 1, -1, -1)
            if math.prod(order[i][2][1:]) == width and len(order[i][2]) in (2, 4)
        ),
        None,
    )
    top = {n for n, _ in model.named_children()}
    ran = [n for n, _, s in order[:last] if n in top and len(s) in (2, 4) and n != penult]
    blocks = list(dict.fromkeys(ran))
    return [*blocks, penult] if penult else blocks
