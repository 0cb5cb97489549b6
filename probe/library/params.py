"""Keyword parameters of an in-process call checked as `probe analyze --param` checks them.

The same `ParamSpec` rules (type, choices, bounds, finiteness) and the same params dataclass,
so `probe.hessian(model, batch, top_k=0)` fails as `--param top_k=0` does, with the parameter
named first: `probe.UsageError("top_k", "probe.hessian: must be >= 1, got 0")`. Values are
typed (a string where an int is wanted is an error, not parsed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from probe.contract.params import param_specs
from probe.errors import UsageError

__all__ = ["make"]

T = TypeVar("T")


def make(cls: type[T], values: Mapping[str, Any], analysis: str) -> T:
    """`cls(**values)`, each value checked against its `probe.param`; errors name the parameter."""
    owner = f"probe.{analysis}"
    specs = {s.name: s for s in param_specs(cls, owner)}
    checked = {}
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise UsageError(key, f"{owner} has no parameter {key!r} (its parameters: {known})")
        problem = spec.problem(value)
        if problem:
            raise UsageError(key, f"{owner}: {problem}")
        is_int = isinstance(value, int) and not isinstance(value, bool)
        checked[key] = float(value) if spec.type is float and is_int else value
    try:
        return cls(**checked)
    except (ValueError, TypeError) as exc:
        # the params' own cross-checks start with the parameter they are about
        first = str(exc).split(" ", 1)[0]
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        raise UsageError(first if first in names else "params", f"{owner}: {exc}") from None
