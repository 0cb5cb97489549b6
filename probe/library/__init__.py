"""probe's numerics as an in-process API: any `nn.Module` and a batch, no run directory.

`probe.hessian(model, (x, y))` and its siblings take the same parameters, with the same
defaults and checks, as the analysis plugins of the same name (`probe analyze -p hessian`):
the params dataclass and its mapping to the numerics' options are defined here once, and
the plugins import them. Each returns a frozen result (`probe.library.result.Result`) with
`.to_dict()` (the keys the plugin writes), `.plot()` (a matplotlib Figure) and an HTML table
for notebooks. The model is never changed: weights, buffers, train/eval flags and
`requires_grad` are as before the call. docs/from-python.md describes every function.

Names load on first use (PEP 562): importing this package imports no torch. No module here is
named after a function (`probe.library.curvature` holds `hessian`), so importing a module never
hides the function of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE: dict[str, str] = {
    "gradcheck": "probe.library.gradients",
    "GradcheckParams": "probe.library.gradients",
    "GradcheckResult": "probe.library.gradients",
    "hessian": "probe.library.curvature",
    "HessianParams": "probe.library.curvature",
    "HessianResult": "probe.library.curvature",
    "activations": "probe.library.representations",
    "cka": "probe.library.representations",
    "CKAParams": "probe.library.representations",
    "CKAResult": "probe.library.representations",
    "rsm": "probe.library.representations",
    "RSMParams": "probe.library.representations",
    "RSMResult": "probe.library.representations",
    "landscape": "probe.library.surface",
    "LandscapeParams": "probe.library.surface",
    "LandscapeResult": "probe.library.surface",
    "Result": "probe.library.result",
    "sharpness": "probe.library.flatness",
    "spectra": "probe.library.weights",
    "SpectraParams": "probe.library.weights",
    "SpectraResult": "probe.library.weights",
    "SharpnessParams": "probe.library.flatness",
    "SharpnessResult": "probe.library.flatness",
    "as_batch": "probe.library.batch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'probe.library' has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
