"""The training configuration: one dataclass, every field a CLI flag and a TOML key.

Defaults are the course notebook's CONFIG (batch 128, val batch 256, 30 epochs, a
10,000-image training subset, lr 0.01, momentum 0.9, no weight decay, plain SGD,
depth 4, no dropout, augmentation on, seed 42). `probe train --help` is generated
from the field metadata below, so the help text and the config file cannot drift.

The options that predate model families (`FAMILY_OPTIONS`: --model-depth,
--base-width, --target-params, --dropout) mean what the chosen family's alias table
(`ModelFamily.options`) says; `family_params` applies it, and `check_cost` refuses a
model its family's `estimate` finds too large, before torch is imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.contract.families import (
    FAMILY_OPTIONS,
    MAX_MODEL_PARAMS,
    MAX_TRAIN_BYTES,
    ModelFamily,
)
from probe.contract.registry import installed, lookup
from probe.errors import RunFileError, UsageError
from probe.io import safeio

OPTIMIZERS = ("SGD", "SGD_mom", "Adam", "AdamW")
SCHEDULES = ("constant", "cosine", "step")
DEPTHS = (2, 4, 8)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")

# Bounds tied to cost (docs/reliability.md, "Bounds"): checked before anything is allocated.
# torch.manual_seed's range is 64 bits; training also seeds with seed + 1 and seed + 2
MAX_SEED = 2**63 - 1
MAX_LR = 10.0  # learning rate, weight decay and step-decay factor: far above anything that trains
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_IMAGES = 10_000_000  # image counts (subset, probe set, analysis batch); CIFAR-10 has 60,000
ANALYSIS_BATCH_DEFAULT = 1024
MAX_WIDTH = 65_536  # the model spec's own bound; the memory estimate below is the real limit
MAX_PARAMS = MAX_MODEL_PARAMS


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the run directory is not part of it)."""

    data: str | None = _f(
        None,
        "A local copy of the data set: for cifar10 a directory with train/ and test/ "
        "class folders; "
        "for the others their release files or class folders (else $PROBE_DATA, else download "
        "with torchvision's checked downloader).",
    )
    dataset: str = _f(
        "cifar10",
        "Image data set (see `probe datasets`): cifar10, cifar100, mnist, fashion-mnist, svhn, "
        "folder, or one a plugin adds.",
        name_pattern=True,
    )
    model: str = _f(
        "simplecnn",
        "Model family (see `probe models`): simplecnn (the notebook's CNN), resnet, mlp, "
        "torchvision, or one a plugin adds.",
        name_pattern=True,
    )
    model_params: tuple[str, ...] = _f(
        (),
        "A parameter of the model family, KEY=VALUE (repeatable; see `probe models`), "
        "e.g. --model resnet --model-param depth=56 --model-param shortcut=none.",
        pairs=True,
    )
    epochs: int = _f(30, "Training epochs (epoch 0 is the initialisation).", min=0, max=MAX_EPOCHS)
    batch_size: int = _f(128, "Training mini-batch size.", min=1, max=MAX_BATCH)
    val_batch_size: int = _f(256, "Validation batch size.", min=1, max=MAX_BATCH)
    subset_train_size: int = _f(
        10_000,
        "Seeded random subset of the 50,000 training images (0 = all).",
        min=0,
        max=MAX_IMAGES,
    )
    optimizer: str = _f("SGD", "Optimizer.", choices=OPTIMIZERS)
    lr: float = _f(0.01, "Learning rate.", min_excl=0.0, max=MAX_LR)
    momentum: float = _f(0.9, "Momentum (used by SGD_mom).", min=0.0, max=1.0)
    weight_decay: float = _f(0.0, "Weight decay (decoupled for AdamW).", min=0.0, max=MAX_LR)
    schedule: str = _f("constant", "Learning-rate schedule.", choices=SCHEDULES)
    step_size: int = _f(10, "Epochs between decays for the step schedule.", min=1, max=MAX_EPOCHS)
    gamma: float = _f(0.1, "Decay factor for the step schedule.", min_excl=0.0, max=MAX_LR)
    model_depth: int = _f(
        4,
        "Number of conv layers (--model simplecnn; the same as --model-param depth=N).",
        choices=DEPTHS,
    )
    base_width: int = _f(
        32,
        "Channels of the first conv layer, doubled every two layers (--model simplecnn).",
        min=1,
        max=MAX_WIDTH,
    )
    target_params: int | None = _f(
        None,
        "Pick the base width so the model has about this many parameters (--model simplecnn).",
        min=1,
        max=MAX_PARAMS,
    )
    dropout: float = _f(
        0.0,
        "Dropout probability after each block and in the classifier (--model simplecnn).",
        min=0.0,
        max_excl=1.0,
    )
    augment: bool = _f(
        True, "Random crop (4-pixel padding) and horizontal flip, batch-wise on the device."
    )
    seed: int = _f(
        42,
        "Seed for the subset, the probe set, initialisation, shuffling and augmentation.",
        min=0,
        max=MAX_SEED,
    )
    device: str = _f("auto", "Training device.", choices=DEVICES)
    precision: str = _f(
        "fp32",
        "Training precision (bf16 = autocast; checkpoints stay float32).",
        choices=PRECISIONS,
    )
    channels_last: bool = _f(True, "Use the channels-last memory format for convolutions.")
    compile: bool = _f(
        False,
        "Compile the training step with torch.compile (inductor); the first step's compile time "
        "is reported. Off by default: on this project's 2-core CPU it paid for ResNet-20 "
        "(1.16-1.25x per step after about 66 s of compiling) but not for the default CNN.",
    )
    probe_set_size: int = _f(
        1000,
        "Class-stratified validation images whose activations are dumped each epoch.",
        min=10,
        max=MAX_IMAGES,
    )
    analysis_batch_size: int = _f(
        ANALYSIS_BATCH_DEFAULT,
        "Un-augmented training images stored for offline loss-based analyses "
        "(the default is clipped to a smaller --subset-train-size).",
        min=1,
        max=MAX_IMAGES,
    )
    full_maps: tuple[str, ...] = _f(
        (),
        "Layers whose full feature maps are dumped (comma-separated; pooled channels are always "
        "dumped).",
    )
    val_size: int | None = _f(
        None,
        "Validate on the probe set plus a seeded, class-stratified rest, N images in all "
        "(at least --probe-set-size) [default: all]; for quick runs while developing a plugin.",
    )
    example_records: int = _f(
        1000,
        "Class-stratified training images whose logits (eval mode, un-augmented) are recorded "
        "after every epoch, for `forgetting` and data maps (0: none).",
        min=0,
        max=100_000,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        check_cost(self)
        if (
            self.val_size is not None and self.val_size < self.probe_set_size
        ):  # the probe set is part of validation
            raise UsageError(
                "--val-size",
                f"must be >= --probe-set-size ({self.probe_set_size}), got {self.val_size}",
            )
        # Drawn from the training subset: a size asked for beyond it is an error; the default
        # (1024) is clipped to a smaller subset, as it always was, so a small run needs no option.
        if (
            self.subset_train_size
            and self.analysis_batch_size > self.subset_train_size
            and self.analysis_batch_size != ANALYSIS_BATCH_DEFAULT
        ):
            raise UsageError(
                "--analysis-batch-size",
                f"must be <= --subset-train-size ({self.subset_train_size}), "
                f"got {self.analysis_batch_size}",
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["full_maps"] = list(self.full_maps)
        d["model_params"] = list(self.model_params)
        return d

    def hash(self) -> str:
        """A short, stable fingerprint of everything that changes the trained weights."""
        d = self.to_dict()
        # where and how it ran (compiled or not), how much it validated on and which predictions
        # it recorded do not change the weights (a compiled step differs by float rounding only)
        for k in ("device", "val_size", "example_records", "compile"):
            d.pop(k)
        for k in (
            NEWER_KEYS
        ):  # at their defaults they leave the fingerprint of runs made before them unchanged
            if d[k] == _default(k):
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NEWER_KEYS = ("dataset", "model", "model_params")  # added with model families and data sets


def _default(name: str) -> Any:
    d = FIELDS[name].default
    return list(d) if isinstance(d, tuple) else d


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(f: dataclasses.Field) -> type:
    """The scalar type of a config field (its annotation is a string)."""
    t = str(f.type)
    for name, typ in (
        ("bool", bool),
        ("int", int),
        ("float", float),
        ("tuple", tuple),
        ("str", str),
    ):
        if t.startswith(name):
            return typ
    raise TypeError(t)


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Raise a one-line UsageError naming the option when `value` is not allowed."""
    opt = flag(f.name)
    typ = field_type(f)
    if value is None:
        if "None" in str(f.type):
            return
        raise UsageError(opt, "a value is required")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise UsageError(opt, f"{value} is too large") from None
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise UsageError(opt, f"must be a finite number, got {value}")
    if typ is tuple:
        _check_strings(f, value, opt)
        return
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UsageError(opt, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
    _check_allowed(f.metadata, value, opt)


def _check_strings(f: dataclasses.Field, value: Any, opt: str) -> None:
    """A list field's value: at most 64 short strings (KEY=VALUE pairs or layer names)."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise UsageError(
            opt,
            "expected a list of KEY=VALUE strings"
            if f.metadata.get("pairs")
            else "expected a list of layer names",
        )
    if len(value) > 64 or any(len(v) > 256 for v in value):
        raise UsageError(opt, "at most 64 entries of at most 256 characters")
    if f.metadata.get("pairs"):
        parse_pairs(value, opt)


def _check_allowed(m: Mapping[str, Any], value: Any, opt: str) -> None:
    """A scalar value of the field's type against its metadata: name pattern, choices, bounds."""
    if m.get("name_pattern") and not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", value):
        raise UsageError(
            opt, f"{value[:40]!r} is not a name (lower-case letters, digits, '-' or '_')"
        )
    if "choices" in m and value not in m["choices"]:
        raise UsageError(opt, f"{value!r} is not one of {', '.join(map(str, m['choices']))}")
    if "min" in m and value < m["min"]:
        raise UsageError(opt, f"must be >= {m['min']}, got {value}")
    if "min_excl" in m and value <= m["min_excl"]:
        raise UsageError(opt, f"must be > {m['min_excl']}, got {value}")
    if "max_excl" in m and value >= m["max_excl"]:
        raise UsageError(opt, f"must be < {m['max_excl']}, got {value}")
    if "max" in m and value > m["max"]:
        raise UsageError(opt, f"must be <= {m['max']}, got {value}")


def parse_pairs(
    pairs: tuple[str, ...] | list[str], option: str = "--model-param"
) -> dict[str, str]:
    """`("depth=56", "shortcut=none")` -> {"depth": "56", "shortcut": "none"}.

    A malformed or repeated key is an error naming `option`.
    """
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


def family_params(cfg: TrainConfig, fam: ModelFamily) -> dict[str, Any]:
    """The raw parameters `cfg` gives family `fam`: `--model-param` and the older options it takes.

    Each option of FAMILY_OPTIONS the family's alias table names sets that parameter
    (its value, default included; None sets nothing) unless `--model-param` gives it,
    and giving it both ways is an error; a computed alias (`OptionAlias.value`) is
    evaluated on the family's parameters from the rest. An option the family does not
    take must stay at its default.
    """
    raw: dict[str, Any] = parse_pairs(cfg.model_params)
    for o in FAMILY_OPTIONS:
        if getattr(cfg, o) == FIELDS[o].default:
            continue
        if o not in fam.options:
            raise UsageError(
                flag(o),
                f"applies to {_takers(o)} only; give {fam.name}'s parameters with "
                f"--model-param KEY=VALUE (see `probe models`)",
            )
        p = fam.options[o].param
        if p in raw:
            raise UsageError("--model-param", f"{p} is also set by {flag(o)}; give it one way")
    applied = [o for o in _setters(fam, cfg) if fam.options[o].value is None]
    merged = {**{fam.options[o].param: getattr(cfg, o) for o in applied}, **raw}
    computed = [o for o in _setters(fam, cfg) if fam.options[o].value is not None]
    if computed:
        params = fam.make_params(merged)
        for o in computed:
            merged[fam.options[o].param] = fam.options[o].value(getattr(cfg, o), params)
    return merged


def _setters(fam: ModelFamily, cfg: TrainConfig, param: str | None = None) -> list[str]:
    """The options of `fam`'s alias table that set a parameter (`param`), in the order they apply.

    Plain aliases first, then computed ones.
    """
    given = [o for o in FAMILY_OPTIONS if o in fam.options and getattr(cfg, o) is not None]
    if param is not None:
        given = [o for o in given if fam.options[o].param == param]
    return sorted(given, key=lambda o: fam.options[o].value is not None)  # computed ones apply last


def _takers(option: str) -> str:
    """`--model a or --model b`: the installed families whose alias table takes `option`."""
    names = [n for n, f in sorted(installed("models").items()) if option in f.options]
    return " or ".join(f"--model {n}" for n in names) or "no installed model family"


def check_cost(cfg: TrainConfig) -> None:
    """Refuse a model whose parameters or training memory exceed the bounds, naming its option.

    For a family with an `estimate` and no `--model-param` (the model is sized by
    options alone) the estimate is arithmetic, with no torch import, so
    `--base-width 60000` is one line, not an attempt to allocate terabytes. Any other
    model is sized on the meta device once the data set is known
    (probe.training.model.check_model), which also reports an option the family refuses.
    """
    fam = lookup("models", cfg.model)
    if fam is None or fam.estimate is None or cfg.model_params:
        return
    try:
        params = fam.make_params(family_params(cfg, fam))
    except UsageError:
        return  # reported, naming the option, when the spec is made (spec_from_config)
    batch = max(cfg.batch_size, cfg.val_batch_size)
    est = fam.estimate(params, batch)
    setters = _setters(fam, cfg, est.param)  # the option that set what the estimate names
    opt = flag(setters[-1] if setters else "model")
    if est.parameters > MAX_PARAMS:
        raise UsageError(
            opt,
            f"{est.model} has {est.parameters:,} parameters, more than the {MAX_PARAMS:,} "
            f"probe allows; use a smaller {opt}",
        )
    if est.train_bytes > MAX_TRAIN_BYTES:
        raise UsageError(
            opt,
            f"{est.model} needs about {est.train_bytes / 2**30:,.0f} GiB to train at batch size "
            f"{batch}, more than the {MAX_TRAIN_BYTES >> 30} GiB probe allows; use a smaller "
            f"{opt} or batch size",
        )


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert a TOML/JSON value to the field's type, or raise naming `source`."""
    if name not in FIELDS:
        known = ", ".join(sorted(FIELDS))
        raise UsageError(source, f"unknown config key {name!r} (known keys: {known})")
    f = FIELDS[name]
    typ = field_type(f)
    if (
        typ is tuple and f.metadata.get("pairs") and isinstance(value, dict)
    ):  # a TOML table {depth = 56}
        value = tuple(
            f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in value.items()
        )
    elif typ is tuple:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        elif isinstance(value, list):
            value = tuple(value)
    try:
        check_value(f, value)
    except UsageError as exc:
        raise UsageError(f"{source}: {name}", str(exc).split(": ", 1)[1]) from None
    return value


def read_toml(path: str | Path, option: str) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed one is a UsageError naming `option`, the file."""
    path = Path(path)
    try:
        return safeio.read_toml(path)
    except safeio.MissingFileError:
        raise UsageError(option, f"{path} does not exist") from None
    except RunFileError as exc:  # a link, FIFO, too large, too deep, malformed: `<path>: <what>`
        raise UsageError(option, str(exc)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into checked field values (flat keys, or a [train] table)."""
    raw = read_toml(path, "--config")
    if "train" in raw and isinstance(raw["train"], dict):
        raw = raw["train"]
    return {k.replace("-", "_"): coerce(k.replace("-", "_"), v, str(path)) for k, v in raw.items()}


def make_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the config file, then command-line flags."""
    values = {
        **(file_values or {}),
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    return TrainConfig(**values)


def from_dict(d: dict[str, Any], source: str) -> TrainConfig:
    """Rebuild a config stored in a run (config.json), checking every value."""
    if not isinstance(d, dict):
        raise UsageError(source, "expected a JSON object")
    # `normalization`: written by probe.Recorder and probe import (docs/run-directory.md), whose
    # runs probe train does not resume; probe train normalises with the data set's statistics
    values = {k: coerce(k, v, source) for k, v in d.items() if k != "normalization"}
    try:
        return TrainConfig(**values)
    except UsageError as exc:  # a bound across fields (check_cost): name the file too
        raise UsageError(source, str(exc)) from None
