"""The input normalisation a model was trained with: given once, or assumed and said so.

A model's accuracy depends on the mean/std its images are normalised with. probe
cannot read them from a state dict, so `probe import --mean/--std` and
`probe.Recorder(mean=, std=, normalize=)` take them; without them probe assumes the
data set's statistics and says so in one line (a `probe.ModelSpec` carries its own
input normalisation: it counts as given), naming the values and the option that sets them. The run's
`config.json` records which it was (`train.normalization`, docs/run-directory.md).
"""

from __future__ import annotations

import math
from typing import Any

from probe.errors import UsageError

GIVEN = "given"
ASSUMED_DATA = "assumed: data set statistics"
SPEC = "given: the ModelSpec's input"


def _floats(values: Any, name: str) -> tuple[float, ...]:
    if hasattr(values, "tolist"):  # a tensor or an array
        values = values.tolist()
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(float(v) for v in values)
        if any(isinstance(v, bool) for v in values):
            raise TypeError
    except (TypeError, ValueError):
        raise UsageError(name, f"expected numbers, one per channel, got {values!r}") from None
    return out


def parse_channels(text: str | None, option: str) -> tuple[float, ...] | None:
    """`--mean 0.49,0.48,0.45` as floats (None when the option is not given)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(
            option, f"expected comma-separated numbers, one per channel (R,G,B), got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(option, f"values must be finite, got {text!r}")
    if option == "--std" and any(v <= 0 for v in values):
        raise UsageError(option, f"std must be positive, got {text!r}")
    return values


def from_normalize(normalize: Any) -> tuple[Any, Any]:
    """(mean, std) of a torchvision `transforms.Normalize` (an in-place one is refused: it
    would change the caller's tensors, and probe normalises its own copies)."""
    if not (hasattr(normalize, "mean") and hasattr(normalize, "std")):
        raise UsageError(
            "normalize",
            f"expected a torchvision.transforms.Normalize, got {type(normalize).__name__}",
        )
    if getattr(normalize, "inplace", False):
        raise UsageError(
            "normalize", "an inplace Normalize is refused: give Normalize(mean, std) (not inplace)"
        )
    return normalize.mean, normalize.std


def check_normalization(
    mean: Any,
    std: Any,
    normalize: Any,
    channels: int,
    *,
    options: tuple[str, str] = ("mean", "std"),
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the caller gave, checked: one finite number per channel, std > 0; None when
    neither was given. `options`: the names an error says (--mean/--std on the command line)."""
    if normalize is not None:
        if mean is not None or std is not None:
            raise UsageError("normalize", "give normalize= or mean= and std=, not both")
        mean, std = from_normalize(normalize)
        options = ("normalize", "normalize")
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        missing = options[0] if mean is None else options[1]
        raise UsageError(missing, f"give {options[0]} and {options[1]} together")
    m, s = _floats(mean, options[0]), _floats(std, options[1])
    for name, v in ((options[0], m), (options[1], s)):
        if len(v) != channels:
            raise UsageError(
                name, f"{len(v)} value(s) for {channels}-channel images: give one per channel"
            )
        if not all(math.isfinite(x) for x in v):
            raise UsageError(name, f"values must be finite, got {', '.join(map(str, v))}")
    if any(x <= 0 for x in s):
        raise UsageError(options[1], f"std must be positive, got {', '.join(map(str, s))}")
    return m, s


def _values(v: tuple[float, ...]) -> str:
    return ",".join(f"{x:.4g}" for x in v)


class NormalizationAssumed(UserWarning):
    """Warned by `probe.Recorder` when no normalisation was given and it assumed one."""


def assumption_line(mean: tuple[float, ...], std: tuple[float, ...], option: str) -> str:
    """The one line saying that probe assumed the data set's statistics, and what sets others."""
    return (
        f"normalisation assumed: the data set's statistics (mean {_values(mean)}, "
        f"std {_values(std)}); if the model was trained with others, give them with {option}"
    )
