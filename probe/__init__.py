"""probe: train a CNN on CIFAR-10, keep everything the training produced, analyse it offline.

The public API for plugin authors is importable from here without importing torch:
`hookimpl`, `Analysis`, `param`, `Context`, `LayerParams` (what `ctx.parameters()` lists),
`ProbeError`, `UsageError`, `RunFileError`, `Skip` (an analysis that does not apply),
`load_model`, `load_checkpoint`, `Run`; `Recorder` (the run-directory writer, for any
training loop); `analyze` (what `probe analyze` does, returning the results); for
model-family and data-set plugins `ModelFamily` (with `OptionAlias` and `SizeEstimate`),
`InputSpec`, `ModelSpec`, `default_layers`, `DataSource`, `Augmentation`. A plugin imports
only `probe` and the modules in `PUBLIC_MODULES` (e.g. `probe.datasets`, what a data-set
plugin builds on); never a `_private` name.

The numerics run in-process on any `nn.Module` and batch, no run directory needed
(docs/from-python.md): `probe.hessian(model, (x, y))`, `probe.activations`, `probe.cka`, ...
(from `probe.library`, loaded on first use).
"""

from __future__ import annotations

from typing import Any

from probe import analyze  # a callable module: probe.analyze(run_dir, analyses, ...); no torch
from probe import library as _library
from probe.analysis.context import Context, LayerParams
from probe.contract.analysis import Analysis, Cost, NoParams, RunInfo, param
from probe.contract.datasets import Augmentation, DataSource
from probe.contract.families import (
    InputSpec,
    ModelFamily,
    ModelSpec,
    OptionAlias,
    SizeEstimate,
    default_layers,
)
from probe.contract.hookspecs import hookimpl
from probe.errors import NotARunError, ProbeError, RunFileError, Skip, UsageError
from probe.report.pages import report as _report
from probe.rundir.run import Run
from probe.version import __version__

# The in-process analyses (docs/from-python.md): probe.hessian(model, batch, ...) and the rest,
# loaded on first use from probe.library (which imports torch only when one runs).
_LIBRARY = (
    "activations",
    "cka",
    "gradcheck",
    "hessian",
    "landscape",
    "rsm",
    "sharpness",
    "spectra",
)

# The modules (relative to `probe`) a plugin may import besides `probe` itself; everything else is
# probe's own and may change. tests/test_architecture.py holds the built-in plugins to this.
PUBLIC_MODULES = (  # each with the modules under it; a `_private` name is never public
    "datasets",
    "errors",
    "library",
    "numerics",
    "testing",
)

__all__ = [
    "PUBLIC_MODULES",
    "Analysis",
    "Augmentation",
    "Context",
    "Cost",
    "DataSource",
    "InputSpec",
    "LayerParams",
    "ModelFamily",
    "ModelSpec",
    "NoParams",
    "NotARunError",
    "OptionAlias",
    "ProbeError",
    "Recorder",
    "Run",
    "RunInfo",
    "RunFileError",
    "SizeEstimate",
    "Skip",
    "UsageError",
    "__version__",
    "analyze",
    "default_layers",
    "hookimpl",
    "load_checkpoint",
    "load_model",
    "param",
    "write_report",
    *sorted(_LIBRARY),
]


def load_model(path: Any, device: Any = "cpu") -> Any:
    """Rebuild the model stored in a checkpoint file, from that file alone, in eval mode."""
    from probe.rundir.checkpoint import load_model as _load_model  # torch

    return _load_model(path, device)


def load_checkpoint(path: Any) -> Any:
    """Read and verify a checkpoint: its model state, spec, epoch, metrics."""
    from probe.rundir.checkpoint import load  # torch

    return load(path)


def write_report(path: Any, force: bool = False) -> Any:
    """What `probe report PATH` does: the static page of a run or sweep (rebuilt only when its
    inputs changed, unless `force`); returns a record with the page's `path` and `written`."""
    return _report(path, force=force)


def __getattr__(name: str) -> Any:
    # Lazy, so `import probe` (and `probe --help`) never pays for torch.
    if name == "Recorder":
        from probe.training.recorder import Recorder

        return Recorder
    if name in _LIBRARY:
        return getattr(_library, name)
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
