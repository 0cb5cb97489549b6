"""Typed parameters: how analyses and model families declare theirs, and how values are checked.

A plugin declares its parameters as a frozen dataclass whose fields are `probe.param`s:

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str = probe.param("classifier.3", "Layer whose activations are projected.")
        perplexity: float = probe.param(30.0, "t-SNE perplexity.", min=2)

Values are parsed and checked (type, finiteness, choices, min/max, then the
class's own `__post_init__`) before anything runs; a bad one is a one-line error
naming it. NaN compares false with every bound, so a float parameter refuses nan,
inf and -inf unless it was declared with `allow_nonfinite=True`. Defaults are
checked by the same rules when the plugin registers (`check_params`): an entry
whose own default it would refuse is disabled, not run with it. No torch import.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe.errors import UsageError

if TYPE_CHECKING:
    from probe.contract.analysis import Analysis

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,40}")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:[0-9]{1,400}(?:\.[0-9]{0,400})?|\.[0-9]{1,400})(?:[eE][+-]?[0-9]{1,4})?"
    r"|[+-]?(?:nan|inf|infinity)",
    re.IGNORECASE,
)


def param(
    default: Any,
    help: str,
    *,
    choices: tuple | list | None = None,
    min: float | None = None,
    max: float | None = None,
    allow_nonfinite: bool = False,
) -> Any:
    """Declare one parameter (of an analysis or a model family): default, help text, allowed values.

    `min`/`max` are inclusive bounds; `allow_nonfinite=True` lets a float parameter
    take nan, inf and -inf (refused otherwise, since nan passes every bound).
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "min": min,
        "max": max,
        "allow_nonfinite": bool(allow_nonfinite),
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoParams:
    """For an analysis or a model family without parameters."""


@dataclass(frozen=True)
class ParamSpec:
    """A parameter as shown by `probe plugins --verbose` and parsed from `--param`."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    allow_nonfinite: bool = False

    def describe(self) -> str:
        extra = []
        if self.choices:
            extra.append("one of " + "|".join(map(str, self.choices)))
        if self.min is not None:
            extra.append(f">= {self.min}")
        if self.max is not None:
            extra.append(f"<= {self.max}")
        if self.allow_nonfinite:
            extra.append("nan/inf allowed")
        rng = f" ({', '.join(extra)})" if extra else ""
        return f"{self.name} ({self.type.__name__}, default {self.default!r}){rng}: {self.help}"

    def parse(self, value: Any, analysis: str, option: str = "--param") -> Any:
        where = f"{option} {self.name}"
        if isinstance(value, str) and self.type is not str:
            text = value.strip()
            try:
                if self.type is bool:
                    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = text.lower() in ("true", "1", "yes")
                elif text.lower() in ("none", "null") and self.default is None:
                    value = None
                else:
                    # ASCII numerals only: Python's int() and float() also take fullwidth and
                    # Arabic-Indic digits and "1_000", which no one means on a command line
                    pattern = _INT_TEXT if self.type is int else _FLOAT_TEXT
                    if self.type in (int, float) and not pattern.fullmatch(text):
                        raise ValueError
                    value = self.type(text)
            except ValueError:
                raise UsageError(
                    where, f"{analysis}: expected {self.type.__name__}, got {text!r}"
                ) from None
        if value is None and self.default is None:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise UsageError(where, f"{analysis}: {value} is too large for a float") from None
        problem = self.problem(value)
        if problem:
            raise UsageError(where, f"{analysis}: {problem}")
        return value

    def problem(self, value: Any) -> str | None:
        """Why `value` (parsed or not) is not allowed, or None; shared by --param and defaults."""
        if value is None and self.default is None:
            return None
        # 1 for 1.0
        as_float = self.type is float and isinstance(value, int) and not isinstance(value, bool)
        if not (isinstance(value, self.type) or as_float) or (
            self.type is int and isinstance(value, bool)
        ):
            return f"expected {self.type.__name__}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value) and not self.allow_nonfinite:
            return f"must be a finite number, got {value}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        if self.min is not None and value < self.min:
            return f"must be >= {self.min}, got {value}"
        if self.max is not None and value > self.max:
            return f"must be <= {self.max}, got {value}"
        return None


def _scalar_type(hint: Any, owner: str, name: str) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    t = args[0] if args else hint
    if t not in (int, float, str, bool):
        raise ValueError(
            f"{owner}: parameter {name!r} must be int, float, str or bool (or Optional of one)"
        )
    return t


def param_specs(params: type, owner: str) -> list[ParamSpec]:
    """The `probe.param` fields of a params dataclass as ParamSpecs (errors name `owner`)."""
    hints = typing.get_type_hints(params)
    return [
        ParamSpec(
            f.name,
            _scalar_type(hints[f.name], owner, f.name),
            f.default,
            f.metadata.get("help", ""),
            f.metadata.get("choices"),
            f.metadata.get("min"),
            f.metadata.get("max"),
            bool(f.metadata.get("allow_nonfinite", False)),
        )
        for f in dataclasses.fields(params)
    ]


def make_params(params: type, raw: Mapping[str, str | Any], owner: str, option: str) -> Any:
    """Parse `KEY=VALUE` strings (or typed values) into the params dataclass, checking each.

    An error names `option` and `owner`.
    """
    specs = {s.name: s for s in param_specs(params, owner)}
    values = {}
    for key, value in raw.items():
        if key not in specs:
            known = ", ".join(specs) or "none"
            raise UsageError(option, f"{owner} has no parameter {key!r} (its parameters: {known})")
        values[key] = specs[key].parse(value, owner, option)
    try:
        return params(**values)
    except (ValueError, TypeError) as exc:
        raise UsageError(option, f"{owner}: {exc}") from None


def check_params(params: type, owner: str) -> None:
    """A one-line ValueError if `params` cannot be described or its defaults break its rules."""
    try:
        specs = param_specs(params, owner)  # a field of an unsupported type raises here
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix(f"{owner}: ")) from None
    except Exception as exc:  # an annotation typing cannot resolve
        raise ValueError(
            f"cannot read the parameter types of {params.__name__} ({type(exc).__name__}: {exc})"
        ) from None
    for f in dataclasses.fields(params):
        if f.default is dataclasses.MISSING:
            raise ValueError(
                f"parameter {f.name!r} has no default; declare it with probe.param(default, help)"
            )
    for spec in specs:
        problem = spec.problem(spec.default)
        if problem:
            raise ValueError(
                f"parameter {spec.name!r}: its default {spec.default!r} is refused by its own "
                f"declaration ({problem})"
            )
    try:
        params()
    except Exception as exc:
        raise ValueError(
            f"the defaults of {params.__name__} are refused by its own checks "
            f"({type(exc).__name__}: {exc})"
        ) from None


def params_dict(params: Any) -> dict[str, Any]:
    """The parameters with defaults filled, as plain JSON-able values (part of the cache key)."""
    return dataclasses.asdict(params)


def split_params(pairs: list[str], analyses: list[Analysis]) -> dict[str, dict[str, str]]:
    """Route `--param k=v` / `--param analysis.k=v` to the analyses that declare `k`."""
    out: dict[str, dict[str, str]] = {a.name: {} for a in analyses}
    by_name = {a.name: a for a in analyses}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError("--param", f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        target, _, pname = (
            key.rpartition(".") if "." in key and key.split(".", 1)[0] in by_name else ("", "", key)
        )
        if target:
            out[target][pname] = value
            continue
        takers = [a.name for a in analyses if pname in {s.name for s in a.param_specs()}]
        if not takers:
            known = "; ".join(
                f"{a.name}: {', '.join(s.name for s in a.param_specs()) or 'none'}"
                for a in analyses
            )
            raise UsageError("--param", f"no selected analysis has a parameter {pname!r} ({known})")
        for t in takers:
            out[t][pname] = value
    return out
