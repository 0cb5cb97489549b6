"""The `Analysis` record a plugin registers, and its typed parameters.

An analysis declares what it is (name, one-line summary, version), what it
consumes (`needs`), whether it runs once per epoch or once over the selected
epochs (`scope`), and its parameters as a frozen dataclass whose fields are the
`--param` keys:

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str = probe.param("classifier.3", "Layer whose activations are projected.")
        perplexity: float = probe.param(30.0, "t-SNE perplexity.", min=2)

Values are parsed and checked (type, finiteness, choices, min/max, then the
class's own `__post_init__`) before anything runs; a bad one is a one-line error
naming it. NaN compares false with every bound, so a float parameter refuses nan,
inf and -inf unless it was declared with `allow_nonfinite=True`. Defaults are
checked by the same rules when the plugin registers (`Analysis.check_params`): an
analysis whose own default it would refuse is disabled, not run with it.
This module imports no torch, so registering analyses costs nothing at start-up.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probe.errors import UsageError

# "trajectory": the job may read the checkpoint of any complete epoch (not only its own), so
# its cache key covers them all.
NEEDS = frozenset(
    {
        "checkpoint",
        "model",
        "activations",
        "probe_set",
        "analysis_batch",
        "metrics",
        "config",
        "trajectory",
    }
)
SCOPES = ("epoch", "run")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def param(
    default: Any,
    help: str,
    *,
    choices: tuple | list | None = None,
    min: float | None = None,
    max: float | None = None,
    allow_nonfinite: bool = False,
) -> Any:
    """Declare one analysis parameter: its default, help text, and allowed values.

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
    """For analyses without parameters."""


@dataclass(frozen=True)
class Analysis:
    """One analysis a plugin provides. See docs/writing-a-plugin.md ("Reference").

    Besides what it runs on, an analysis says how the report and `probe compare` present it,
    so that neither names any analysis (a third party's is shown exactly like a built-in one):
    `report_order` places its section on a run's page (lower first, then by name; built-ins use
    10 to 130, the default puts it after them), `caption` is the one line on how to read its
    figures when a figure has no caption of its own, and `headline` maps the scalars that
    `probe compare` shows as columns of its terminal table to their column labels (a scalar's
    `<name>_se`, where a result has it, is shown beside it as `value ± se`).
    """

    # The default `report_order`: after every built-in analysis.
    DEFAULT_REPORT_ORDER: typing.ClassVar[int] = 1000

    name: str
    run: Callable[[Any], Any]
    summary: str
    params: type = NoParams
    needs: frozenset[str] = frozenset({"checkpoint"})
    scope: str = "epoch"
    version: str = "1"
    figure_captions: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    provider_version: str = ""
    report_order: int = DEFAULT_REPORT_ORDER
    caption: str = ""
    headline: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"analysis name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        if self.scope not in SCOPES:
            raise ValueError(
                f"analysis {self.name!r}: scope must be one of {SCOPES}, got {self.scope!r}"
            )
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(
                f"analysis {self.name!r}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}"
            )
        if not dataclasses.is_dataclass(self.params):
            raise ValueError(f"analysis {self.name!r}: params must be a dataclass type")
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"analysis {self.name!r}: summary must be one line")
        # One type, so manifests and reports never compare "2" with 2.
        if not isinstance(self.version, str) or not self.version.strip():
            hint = str(self.version).strip() if isinstance(self.version, int | float) else "1"
            raise ValueError(
                f'analysis {self.name!r}: version must be a non-empty str (e.g. version="{hint}"), '
                f"got {type(self.version).__name__} {self.version!r}"
            )
        self._check_presentation()

    def _check_presentation(self) -> None:
        """`report_order`, `caption` and `headline`, each refused with one line if malformed."""
        order = self.report_order
        if not isinstance(order, int) or isinstance(order, bool):
            raise ValueError(
                f"analysis {self.name!r}: report_order must be an int (lower comes first), "
                f"got {type(order).__name__} {order!r}"
            )
        if not isinstance(self.caption, str) or "\n" in self.caption:
            raise ValueError(f"analysis {self.name!r}: caption must be one line of text")
        if not isinstance(self.headline, Mapping):
            raise ValueError(
                f"analysis {self.name!r}: headline must map scalar names to column labels, "
                f'e.g. {{"top_eigenvalue": "top_eig"}}, got {type(self.headline).__name__}'
            )
        for scalar, label in self.headline.items():
            if not isinstance(scalar, str) or not scalar.strip() or "\n" in scalar:
                raise ValueError(
                    f"analysis {self.name!r}: headline scalar {scalar!r} must be a scalar's name"
                )
            if not isinstance(label, str) or not label.strip() or "\n" in label or len(label) > 40:
                raise ValueError(
                    f"analysis {self.name!r}: headline label {label!r} of {scalar!r} must be "
                    "one line of 1 to 40 characters"
                )
        object.__setattr__(self, "headline", dict(self.headline))  # a copy the caller cannot change

    def check_params(self) -> None:
        """Raise a one-line ValueError if the params class cannot be described or its defaults break its own rules.

        Called when the plugin registers: an analysis that fails it is disabled
        (shown by `probe plugins`) instead of failing later, on some user's run.
        """
        check_params(self.params, self.name)

    def with_provider(self, provider: str, version: str) -> Analysis:
        return dataclasses.replace(self, provider=provider, provider_version=version)

    def param_specs(self) -> list[ParamSpec]:
        return param_specs(self.params, self.name)

    def make_params(self, raw: Mapping[str, str | Any]) -> Any:
        """Parse `--param` strings (or typed values) into the params dataclass, checking each."""
        return make_params(self.params, raw, self.name, "--param")


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
        """Why `value` (already of the parsed type, or not) is not allowed, or None; shared by --param and defaults."""
        if value is None and self.default is None:
            return None
        as_float = (
            self.type is float and isinstance(value, int) and not isinstance(value, bool)
        )  # 1 for 1.0
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


# --- the typed-parameters machinery, shared by analyses, model families and data sets ---------------


def param_specs(params: type, owner: str) -> list[ParamSpec]:
    """The fields of a params dataclass declared with `probe.param`, as ParamSpecs (`owner` names it in errors)."""
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
    """Parse `KEY=VALUE` strings (or typed values) into the params dataclass, checking each; errors name `option`."""
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
    """Raise a one-line ValueError if `params` cannot be described or its defaults break its own rules."""
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
