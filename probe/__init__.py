"""probe: train a CNN on CIFAR-10, keep everything the training produced, analyse it offline.

The public API for plugin authors is importable from here without importing torch:
`hookimpl`, `Analysis`, `Context`, `LayerParams` (what `ctx.parameters()` lists), `ProbeError`,
`UsageError`, `RunFileError`, `Skip` (an analysis that does not apply), `load_model`, `load_checkpoint`, `Run`;
`Recorder` (the run-directory writer, for any training loop); for model-family and data-set plugins
`ModelFamily`, `InputSpec`, `ModelSpec`, `DataSource`, `Augmentation`.
"""

from __future__ import annotations

from typing import Any

from probe.contract.hookspecs import hookimpl
from probe.errors import NotARunError, ProbeError, RunFileError, Skip, UsageError
from probe.version import __version__

__all__ = [
    "Analysis",
    "Augmentation",
    "Context",
    "DataSource",
    "InputSpec",
    "LayerParams",
    "ModelFamily",
    "ModelSpec",
    "NotARunError",
    "ProbeError",
    "Recorder",
    "Run",
    "RunFileError",
    "Skip",
    "UsageError",
    "__version__",
    "hookimpl",
    "load_checkpoint",
    "load_model",
    "param",
]


def load_model(path: Any, device: Any = "cpu") -> Any:
    """Rebuild the model stored in a checkpoint file, from that file alone, in eval mode."""
    from probe.rundir.checkpoint import load_model as _load_model

    return _load_model(path, device)


def load_checkpoint(path: Any) -> Any:
    """Read and verify a checkpoint: its model state, spec, epoch, metrics."""
    from probe.rundir.checkpoint import load

    return load(path)


def __getattr__(name: str) -> Any:
    # Lazy, so `import probe` (and `probe --help`) never pays for torch.
    if name in ("Analysis", "param", "NoParams"):
        from probe.contract import analysis

        return getattr(analysis, name)
    if name in ("ModelFamily", "InputSpec", "ModelSpec"):
        from probe.contract import families

        return getattr(families, name)
    if name in ("DataSource", "Augmentation"):
        from probe.contract import datasets

        return getattr(datasets, name)
    if name in ("Context", "LayerParams"):
        from probe.analysis import context

        return getattr(context, name)
    if name == "Recorder":
        from probe.training.recorder import Recorder

        return Recorder
    if name == "Run":
        from probe.rundir.run import Run

        return Run
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
