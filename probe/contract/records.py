"""The records a model-family or data-set plugin registers: the family record and `DataSource`.

Frozen values, checked when they are made (names, one-line summaries, versions,
callables). The registry (probe.contract.registry) collects them. `probe.ModelFamily`
is `probe.contract.families.ModelFamily`: this module's `FamilyRecord` plus `spec()`,
which makes the `ModelSpec` every checkpoint stores; a spec finds its family through
the registry, so it lives above it. No torch import: registering costs nothing at start-up.

    @probe.hookimpl
    def register_models(register):
        register(probe.ModelFamily(name="mlp", summary="...", params=Params, build=build))

    @probe.hookimpl
    def register_datasets(register):
        register(probe.DataSource(name="mnist", summary="...", load=load))

A family may also take `probe train`'s options that predate model families
(`FAMILY_OPTIONS`: `--model-depth`, `--base-width`, `--target-params`, `--dropout`):
its `options` table says which parameter each one sets, and its `estimate` lets
probe refuse an absurd size from the options alone, before importing torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probe.contract.params import NoParams, check_params, make_params, param_specs

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# `probe train`'s options (TrainConfig fields) that predate model families, in the order they are
# checked: a family's `options` may map them to its parameters; any other family refuses them.
FAMILY_OPTIONS = ("model_depth", "base_width", "dropout", "target_params")


@dataclass(frozen=True)
class InputSpec:
    """What the model is fed: `channels` x `size` (height, width) images, normalised per channel."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class OptionAlias:
    """How one of `FAMILY_OPTIONS` sets a family parameter (an entry of `ModelFamily.options`).

    `param` is the parameter it sets. Without `value`, the option's value is the
    parameter's; with it, `value(option_value, params)` computes the parameter from
    the option and the family's other parameters (`params`: the family's params
    dataclass from the plain aliases and `--model-param`), e.g. a width from a target
    parameter count. An option whose value is None (not given) sets nothing.
    """

    param: str
    value: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True)
class SizeEstimate:
    """A family's arithmetic estimate of a model's size (`ModelFamily.estimate`), without torch.

    `model` names the model in the refusal ("a depth-4 model of base width 60000");
    `param` is the parameter whose option the refusal names (the option that set it).
    """

    parameters: int
    train_bytes: int
    model: str
    param: str


@dataclass(frozen=True)
class FamilyRecord:
    """What a model family is (`probe.ModelFamily` adds `spec`). See docs/writing-a-plugin.md.

    `build(params, input, num_classes)` returns a freshly initialised `nn.Module` mapping
    a normalised float batch [N, C, H, W] to logits [N, num_classes]; it must work on
    the meta device (probe sizes a model there before allocating it).
    `layers(model, params)` lists the recorded layers (module names) in network
    order, the penultimate layer last; without it probe picks them (`default_layers`).
    `options` maps `probe train` options of `FAMILY_OPTIONS` to parameters (a
    parameter name, or an `OptionAlias`); the option's value, its default included,
    sets the parameter unless `--model-param` gives it. `estimate(params, batch_size)`
    returns a `SizeEstimate` from arithmetic alone, so a model sized only by those
    options is refused before the data set is loaded or torch imported.
    """

    name: str
    build: Callable[[Any, InputSpec, int], Any]
    summary: str
    params: type = NoParams
    layers: Callable[[Any, Any], list[str]] | None = None
    version: str = "1"
    provider: str = ""
    provider_version: str = ""
    options: Mapping[str, str | OptionAlias] = field(default_factory=dict)
    estimate: Callable[[Any, int], SizeEstimate] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"model family name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        if not dataclasses.is_dataclass(self.params):
            raise ValueError(f"model family {self.name!r}: params must be a dataclass type")
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"model family {self.name!r}: summary must be one line")
        if not isinstance(self.version, str) or not self.version.strip():
            raise ValueError(f"model family {self.name!r}: version must be a non-empty str")
        if not callable(self.build):
            raise ValueError(f"model family {self.name!r}: build must be callable")
        if self.estimate is not None and not callable(self.estimate):
            raise ValueError(f"model family {self.name!r}: estimate must be callable")
        object.__setattr__(self, "options", self._aliases())

    def _aliases(self) -> dict[str, OptionAlias]:
        """`options`, each entry an OptionAlias, checked against FAMILY_OPTIONS and `params`."""
        if not isinstance(self.options, Mapping):
            raise ValueError(f"model family {self.name!r}: options must be a mapping")
        fields = {f.name for f in dataclasses.fields(self.params)}
        out = {}
        for option, alias in self.options.items():
            if option not in FAMILY_OPTIONS:
                raise ValueError(
                    f"model family {self.name!r}: option {option!r} is not one of "
                    f"{', '.join(FAMILY_OPTIONS)}"
                )
            alias = OptionAlias(alias) if isinstance(alias, str) else alias
            if not isinstance(alias, OptionAlias) or alias.param not in fields:
                raise ValueError(
                    f"model family {self.name!r}: option {option!r} must name one of its "
                    f"parameters ({', '.join(sorted(fields)) or 'none'})"
                )
            if alias.value is not None and not callable(alias.value):
                raise ValueError(
                    f"model family {self.name!r}: option {option!r}: value must be callable"
                )
            out[option] = alias
        return out

    def with_provider(self, provider: str, version: str) -> FamilyRecord:
        return dataclasses.replace(self, provider=provider, provider_version=version)

    def check_params(self) -> None:
        check_params(self.params, f"model family {self.name!r}")

    def param_specs(self) -> list[Any]:
        return param_specs(self.params, self.name)

    def make_params(self, raw: Mapping[str, Any], option: str = "--model-param") -> Any:
        return make_params(self.params, raw, self.name, option)


@dataclass(frozen=True)
class Augmentation:
    """Batch-wise training augmentation: random crops with `pad` pixels of zero padding, h-flips."""

    pad: int = 4
    flip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"pad": self.pad, "flip": self.flip}


@dataclass(frozen=True)
class DataSource:
    """An image data set a plugin provides. See docs/writing-a-plugin.md, "Data sets".

    `load(data, quiet)` returns a `probe.datasets.Dataset`: uint8 images [N, C, H, W]
    and int64 labels per split, the class names, the per-channel normalisation (None:
    computed on the training subset) and the default augmentation. `data` is the
    user's `--data DIR` (a local copy), or None to fetch the data set (with a checked
    download) or fail with one line saying where to put it.
    """

    name: str
    load: Callable[[str | None, bool], Any]
    summary: str
    version: str = "1"
    provider: str = ""
    provider_version: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"data set name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"data set {self.name!r}: summary must be one line")
        if not isinstance(self.version, str) or not self.version.strip():
            raise ValueError(f"data set {self.name!r}: version must be a non-empty str")
        if not callable(self.load):
            raise ValueError(f"data set {self.name!r}: load must be callable")

    def with_provider(self, provider: str, version: str) -> DataSource:
        return dataclasses.replace(self, provider=provider, provider_version=version)
