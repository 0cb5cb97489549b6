"""`Result`: what every in-process analysis returns, one shape for all of them.

A frozen dataclass whose fields are the headline numbers; `data` (not shown in the repr)
holds the full JSON-safe record, the same keys the analysis plugin writes, which
`to_dict()` returns. `plot()` draws it with the plugin's own drawing code (a matplotlib
Figure made without pyplot, safe without a display), `_repr_html_()` is the small table a
notebook shows, `__repr__` one readable line per headline field.
"""

from __future__ import annotations

import copy
import dataclasses
import html
from typing import Any, ClassVar

from probe.io.jsonsafe import jsonable

__all__ = ["Result", "short"]


def short(value: Any, limit: int = 8) -> str:
    """A value as a short readable string (long sequences cut, floats to 6 significant digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "shape") and hasattr(value, "tolist"):  # numpy arrays, tensors
        shape = tuple(value.shape)
        if len(shape) and int(getattr(value, "size", 0) or 0) > 36:
            return f"<{type(value).__name__} of shape {shape}>"
        return short(value.tolist(), limit)
    if isinstance(value, (list, tuple)):
        items = [short(v, limit) for v in value[:limit]]
        more = f", ... ({len(value)} in all)" if len(value) > limit else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(value, dict):
        keys = list(value)[:limit]
        more = ", ..." if len(value) > limit else ""
        return "{" + ", ".join(f"{k}: {short(value[k], limit)}" for k in keys) + more + "}"
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of every result: headline fields (the subclass's), `data` (the full record) and the
    analysis's name, plus how to draw it (`_draw`, by the subclass)."""

    analysis: ClassVar[str] = "result"

    data: dict = dataclasses.field(repr=False, compare=False, kw_only=True)

    def to_dict(self) -> dict:
        """The full record, JSON-safe (NaN/inf as None), with the keys the plugin writes."""
        return copy.deepcopy(jsonable(self.data))

    def headline(self) -> dict[str, Any]:
        """The headline fields and their values (the fields shown in the repr)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}

    def plot(self) -> Any:
        """A matplotlib Figure of the result, drawn by the plugin's code; made without pyplot, so
        it needs no display and changes no backend (`fig.savefig(...)`, or a notebook shows it)."""
        return self._draw()

    def _draw(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no figure")

    def __repr__(self) -> str:
        body = ",\n".join(f"  {k}={short(v)}" for k, v in self.headline().items())
        return f"{type(self).__name__}(\n{body}\n)"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td>{html.escape(short(v))}</td></tr>"
            for k, v in self.headline().items()
        )
        title = html.escape(f"probe.{self.analysis}")
        return f"<table><caption>{title}</caption>{rows}</table>"
