"""JSON-safe values: the one cleaner of what probe writes as JSON.

Result data, parameters, failure records, metrics rows and `ctx.out.json` all pass
through `jsonable`, so no file probe writes ever holds a bare NaN (which strict JSON
readers refuse) or a value `json.dumps` cannot encode.
"""

from __future__ import annotations

import json
import math
from typing import Any


def jsonable(obj: Any, nonfinite: str = "null", _depth: int = 0) -> Any:
    """`obj` as plain JSON that `json.dumps(..., allow_nan=False)` always accepts.

    Keys become strings, tuples lists, numpy values Python ones, bytes text, other
    objects their `str`. A non-finite float becomes null (`nonfinite="null"`: result
    data, where it means "no value") or its name "nan"/"inf"/"-inf" (`"str"`:
    parameters and failure records, where the value itself is the information).
    """
    if _depth > 64:
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return (
            None
            if nonfinite == "null"
            else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
        )
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v, nonfinite, _depth + 1) for v in items]
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace")
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        try:
            return jsonable(obj.tolist(), nonfinite, _depth + 1)
        except Exception:
            return str(obj)
    return str(obj)


def dumps(obj: Any, nonfinite: str = "null", **kw: Any) -> str:
    """JSON text of `obj` (cleaned by `jsonable`); never holds a bare NaN."""
    return json.dumps(jsonable(obj, nonfinite), allow_nan=False, **kw)
