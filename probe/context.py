"""The `Context`: an analysis's only door into a run, and its only way to write.

An analysis never needs to know the file layout. It asks the context for the run's
epochs, a model rebuilt in eval mode on the chosen device (a fresh module, so
nothing it does can reach the checkpoint file), activations by layer and epoch
(read lazily from HDF5), the stored probe set and analysis batch, the metrics and
the config; and it writes through `ctx.out` (arrays to HDF5, JSON, scalars,
matplotlib figures to PNG) into its own result directory.

Accessors check the analysis's declared `needs`, because the cache key is built
from the checksums of exactly those inputs: an undeclared read could go stale.
"""

from __future__ import annotations

import contextvars
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ProbeError
from .rundir import DataBatch, Run


class ResultWriter:
    """Writes one analysis result's files into its (temporary) result directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.scalars: dict[str, Any] = {}
        self.files: list[str] = []
        self.captions: dict[str, str] = {}

    def _path(self, name: str, suffix: str) -> Path:
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"result file names are plain names, got {name!r}")
        fname = name if name.endswith(suffix) else name + suffix
        self.files.append(fname)
        return self.dir / fname

    def figure(self, name: str, fig: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure as PNG (and close it). `caption`: one line on how to read it."""
        import matplotlib.pyplot as plt

        path = self._path(name, ".png")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        if caption:
            self.captions[path.name] = caption
        return path

    def arrays(self, name: str, attrs: dict[str, Any] | None = None, **arrays: Any) -> Path:
        """Save named arrays to `<name>.h5` (gzip-compressed), with optional attributes."""
        import h5py

        path = self._path(name, ".h5")
        with h5py.File(path, "w") as f:
            for k, v in (attrs or {}).items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
            for k, v in arrays.items():
                arr = np.asarray(v)
                kw = {"compression": "gzip"} if arr.size > 1024 and arr.dtype.kind in "fiub" else {}
                f.create_dataset(k, data=arr, **kw)
        return path

    def json(self, name: str, obj: Any) -> Path:
        path = self._path(name, ".json")
        path.write_text(json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")
        return path

    def scalar(self, name: str, value: float | int | bool | str | None) -> None:
        """A headline number, gathered into the manifest for `probe compare` and the report."""
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        if hasattr(value, "item"):
            value = value.item()
        self.scalars[name] = value

    def path(self, name: str) -> Path:
        """A path for a file type the helpers above do not cover."""
        return self._path(name, "")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# The executor pieces of a job go to (`probe analyze --workers/--dask-workers/--scheduler`);
# None: run them in this process. A context variable, so the runner needs no plumbing.
EXECUTOR: contextvars.ContextVar[Any] = contextvars.ContextVar("probe_executor", default=None)


class Context:
    """What one analysis job sees. Created by the runner, one per job."""

    def __init__(self, run: Run, analysis: Any, params: Any, epochs: list[int], epoch: int | None,
                 device: str, out: ResultWriter, quiet: bool = False, inputs: dict[str, str] | None = None):
        self.run = run
        self.inputs = inputs or {}  # run-relative path -> SHA-256 of the files this job may read
        self.analysis = analysis
        self.params = params
        self.epochs = epochs
        self.epoch = epoch
        self.device = device
        self.out = out
        self.quiet = quiet

    # --- reading ----------------------------------------------------------------------------------------
    def _need(self, *names: str) -> None:
        if not set(names) & self.analysis.needs:
            raise ProbeError(f"analysis {self.analysis.name!r} reads {names[0]} without declaring needs={{{names[0]!r}}}")

    def all_epochs(self) -> list[int]:
        """Every complete epoch of the run (not only the selected ones)."""
        return self.run.epochs()

    def checksum(self, epoch: int | None = None) -> str:
        """SHA-256 of the checkpoint file of `epoch`, as used in the cache key (for provenance)."""
        from .rundir import checkpoint_name

        return self.inputs.get(checkpoint_name(self._epoch(epoch)), "")

    def config(self) -> dict[str, Any]:
        self._need("config")
        return self.run.config

    def metrics(self) -> list[dict[str, Any]]:
        self._need("metrics")
        return self.run.metrics()

    def checkpoint(self, epoch: int | None = None):
        """The checkpoint (model state as fresh tensors, spec, metrics) of `epoch`."""
        self._need("checkpoint", "model", "trajectory")
        return self.run.load_checkpoint(self._epoch(epoch))

    def model(self, epoch: int | None = None):
        """A fresh model for `epoch`, in eval mode, on the analysis device."""
        self._need("model", "checkpoint")
        return self.run.model(self._epoch(epoch), self.device)

    def layers(self, epoch: int | None = None) -> list[str]:
        """The recorded layers of the activation dumps, in network order."""
        from . import activations

        self._need("activations")
        return activations.read(self.run.activations_path(self._epoch(epoch)))["layers"]

    def resolve_layer(self, name: str, epoch: int | None = None, option: str = "--param layer") -> str:
        """`penultimate` -> the last recorded layer; any other name must be a recorded layer."""
        from .errors import UsageError

        layers = self.layers(epoch)
        if name == "penultimate":
            return layers[-1]
        if name not in layers:
            raise UsageError(option, f"{name!r} is not a recorded layer (recorded: {', '.join(layers)})")
        return name

    def activations(self, layer: str, epoch: int | None = None, kind: str = "pooled") -> np.ndarray:
        """float32 activations of the probe set at `layer` (`kind`: pooled [P, C], maps [P, C, H, W], logits)."""
        from . import activations

        self._need("activations")
        return np.asarray(activations.read(self.run.activations_path(self._epoch(epoch)), layer, kind), dtype=np.float32)

    def probe_set(self) -> DataBatch:
        self._need("probe_set")
        return self.run.probe_set()

    def analysis_batch(self) -> DataBatch:
        self._need("analysis_batch")
        return self.run.analysis_batch()

    def class_names(self) -> list[str]:
        return list(self.run.config.get("classes") or [str(i) for i in range(10)])

    def _epoch(self, epoch: int | None) -> int:
        if epoch is None:
            if self.epoch is None:
                raise ProbeError(f"analysis {self.analysis.name!r} is run-scoped: pass an epoch")
            return self.epoch
        return epoch

    # --- splitting a job into pieces --------------------------------------------------------------------
    @property
    def executor(self) -> Any:
        """The executor `map` uses, or None when pieces run in this process."""
        return EXECUTOR.get()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], label: str = "") -> list[Any]:
        """`[fn(item) for item in items]`, on the executor when one is configured.

        The same executor as sweeps: local worker processes or a Dask cluster. `fn`
        and the items must pickle (a module-level function, or functools.partial of
        one), and each piece must be independent of the others (grid rows, epochs).
        A failed piece fails the job, naming the piece.
        """
        items = list(items)
        executor = self.executor
        if executor is None:
            return [fn(item) for item in self.progress(items, label, total=len(items))]
        from .executor import Task

        tasks = [Task(f"{self.analysis.name}[{i}]", fn, (item,)) for i, item in enumerate(items)]
        done: dict[str, Any] = {}
        for outcome in self.progress(executor.run(tasks), f"{label} on {executor.describe()}", total=len(tasks)):
            if not outcome.ok:
                raise ProbeError(f"{self.analysis.name}: piece {outcome.key} failed on {executor.describe()}: {outcome.error}")
            done[outcome.key] = outcome.value
        return [done[t.key] for t in tasks]

    # --- feedback ---------------------------------------------------------------------------------------
    def progress(self, items: Iterable[Any], label: str = "", total: int | None = None) -> Iterator[Any]:
        """Iterate with a progress bar on an interactive terminal."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        import click

        with click.progressbar(items, length=total, label=f"{self.analysis.name}: {label}", file=sys.stderr) as bar:
            yield from bar

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.analysis.name}: {message}", file=sys.stderr)
