"""`Options`: what every option value of probe.numerics shares (`HessianConfig`, ...).

An analysis's options are one frozen dataclass, checked once in `__post_init__` (a bad value
raises `probe.UsageError` naming it). A numerics function takes that value, or its fields as
keywords, or both (`fn(model, x, y, config, top_k=3)`: the keywords replace the config's
fields); `Options.of` is that rule, in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from probe.errors import UsageError

__all__ = ["Options"]


class Options:
    """A mixin for frozen dataclasses of options: `of(config, **options)`."""

    @classmethod
    def of(cls, config: Self | None = None, **options: Any) -> Self:
        """`config` (default: all defaults) with `options` replacing some fields, checked again.

        An unknown keyword is a TypeError, as for any Python function.
        """
        if config is not None and not isinstance(config, cls):
            raise UsageError("config", f"expected a {cls.__name__}, got {type(config).__name__}")
        base = config if config is not None else cls()
        return dataclasses.replace(base, **options) if options else base
