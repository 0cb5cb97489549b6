"""The `Context`: an analysis's only door into a run, and its only way to write.

An analysis never needs to know the file layout. It asks the context for the run's
epochs, a model rebuilt in eval mode on the chosen device (a fresh module, so
nothing it does can reach the checkpoint file), the weights in network order,
activations by layer and epoch (read lazily from HDF5), the stored probe set and
analysis batch, the metrics and the config; and it writes through `ctx.out`
(arrays to HDF5, JSON, scalars, per-layer tables, matplotlib figures to PNG) into
its own result directory.

Every read is checked against the analysis's declared `needs` (an undeclared read
is refused) and recorded, as it is opened, with its fingerprint: the result's
cache key covers exactly what the job read (see probe/results.py), so reading
epoch 0 from a job of epoch 29 keys that result on epoch 0's checkpoint as well.
"""

from __future__ import annotations

import contextvars
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.analysis.executor import Task
from probe.analysis.progress import progress
from probe.errors import ProbeError, Skip, UsageError
from probe.io.jsonsafe import jsonable as _clean  # noqa: F401 (kept for plugins that imported it)
from probe.rundir import results
from probe.rundir.run import (
    ANALYSIS_BATCH,
    CONFIG,
    EXAMPLES,
    PROBE_SET,
    DataBatch,
    Run,
    activations_name,
    checkpoint_name,
    predictions_name,
)

if TYPE_CHECKING:  # numpy is imported when a job computes, not by the cache check
    import numpy as np
    import torch


class ResultWriter:
    """Writes one analysis result's files into its (temporary) result directory.

    JSON-bound values (`scalar`, `json`, `layer_scalars`, the manifest) hold no
    non-finite float: NaN and infinities become null. Arrays (`arrays`,
    `layer_arrays`) keep them as IEEE values.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.scalars: dict[str, Any] = {}
        self.layer_tables: dict[str, dict[str, Any]] = {}  # the manifest's "layer_scalars"
        self.files: list[str] = []
        self.captions: dict[str, str] = {}

    def _path(self, name: str, suffix: str) -> Path:
        if (
            not isinstance(name, str)
            or not name
            or "/" in name
            or "\\" in name
            or name.startswith(".")
            or "\0" in name
        ):
            raise ValueError(f"result file names are plain names, got {name!r}")
        fname = name if name.endswith(suffix) else name + suffix
        self.files.append(fname)
        return self.dir / fname

    def figure(self, name: str, fig: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure as `<name>.png` and close it (also when saving fails).

        `caption`: one line on how to read it, shown under the figure in the report.
        """
        import matplotlib.pyplot as plt

        try:
            path = self._path(name, ".png")
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
        finally:
            plt.close(fig)
        if caption:
            self.captions[path.name] = caption
        return path

    def arrays(self, name: str, attrs: dict[str, Any] | None = None, **arrays: Any) -> Path:
        """Save named arrays to `<name>.h5` (gzip-compressed), with optional attributes
        (dicts and lists are stored as JSON text)."""
        import h5py

        path = self._path(name, ".h5")
        with h5py.File(path, "w") as f:
            _set_attrs(f, attrs)
            for k, v in arrays.items():
                _dataset(f, k, v)
        return path

    def layer_arrays(
        self, name: str, per_layer: Mapping[str, Any], attrs: dict[str, Any] | None = None
    ) -> Path:
        """Ragged per-layer arrays into `<name>.h5`: one group per layer, in the order given.

        `per_layer` maps a layer name to an array (stored as the group's `values`
        dataset) or to a dict of named arrays (one dataset each). The file attribute
        `layers` lists the layer names in order (JSON). Layer names must not hold "/".
        """
        import h5py

        layers = [str(k) for k in per_layer]
        for layer in layers:
            if not layer or "/" in layer or layer in (".", ".."):
                raise ValueError(f"layer names must be non-empty and hold no '/', got {layer!r}")
        path = self._path(name, ".h5")
        with h5py.File(path, "w") as f:
            _set_attrs(f, attrs)
            f.attrs["layers"] = json.dumps(layers)
            for layer, value in zip(layers, per_layer.values(), strict=True):
                g = f.create_group(layer)
                items = value.items() if isinstance(value, Mapping) else (("values", value),)
                for k, v in items:
                    _dataset(g, str(k), v)
        return path

    def json(self, name: str, obj: Any) -> Path:
        """Write `obj` to `<name>.json` (keys sorted; numpy values converted; NaN/inf: null)."""
        path = self._path(name, ".json")
        path.write_text(results.dumps(obj, indent=2, sort_keys=True) + "\n")
        return path

    def scalar(self, name: str, value: float | int | bool | str | None) -> None:
        """A headline number, gathered into the manifest for `probe compare` and the report
        (`<analysis>.<name>`). NaN/inf become None."""
        self.scalars[str(name)] = _scalar_value(value, f"scalar {name!r}")

    def layer_scalars(self, name: str, table: Mapping[str, Mapping[str, Any]]) -> Path:
        """Per-layer scalars `{layer: {metric: value}}`, in network order, to `<name>.json`
        and to the manifest (`probe compare` shows each as `<analysis>.<metric>.<layer>`).

        The JSON file is `{"layers": [...], "metrics": [...], "values": {layer: {metric: value}}}`;
        NaN/inf become null.
        """
        layers = [str(k) for k in table]
        metrics: list[str] = []
        values: dict[str, dict[str, Any]] = {}
        for layer, row in zip(layers, table.values(), strict=True):
            if not isinstance(row, Mapping):
                raise ValueError(
                    f"layer_scalars {name!r}: layer {layer!r} maps to {type(row).__name__}, "
                    "not a dict"
                )
            values[layer] = {}
            for metric, v in row.items():
                metric = str(metric)
                if metric not in metrics:
                    metrics.append(metric)
                values[layer][metric] = _scalar_value(v, f"layer_scalars {name!r} {layer}.{metric}")
        entry = {"layers": layers, "metrics": metrics, "values": values}
        path = self.json(name, entry)
        self.layer_tables[path.stem] = entry
        return path

    def path(self, name: str) -> Path:
        """A path for a file type the helpers above do not cover (written by the caller)."""
        return self._path(name, "")


def _scalar_value(value: Any, what: str) -> Any:
    if hasattr(value, "item") and callable(
        value.item
    ):  # numpy / torch scalars: numpy's float32 is no float
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise ValueError(
                f"{what}: expected one number, got an array of shape {getattr(value, 'shape', '?')}"
            ) from None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(
            f"{what}: expected a number, bool, str or None, got {type(value).__name__}"
        )
    return value


def _set_attrs(obj: Any, attrs: dict[str, Any] | None) -> None:
    for k, v in (attrs or {}).items():
        obj.attrs[k] = results.dumps(v) if isinstance(v, (dict, list, tuple)) else v


def _dataset(group: Any, key: str, value: Any) -> None:
    import numpy as np

    arr = np.asarray(value)
    kw = {"compression": "gzip"} if arr.size > 1024 and arr.dtype.kind in "fiub" else {}
    group.create_dataset(key, data=arr, **kw)


@dataclass(frozen=True)
class LayerParams:
    """One module's parameters, as `ctx.parameters()` lists them (network order).

    `name`: the module's name (`features.0`), the prefix of its `model_state` keys;
    `type`: its class name (`Conv2d`, `BatchNorm2d`, `Linear`); `weight`/`bias`:
    float32 numpy copies (None if absent); `tensors`: every parameter and buffer
    the module itself holds, by short name (`running_mean`, ...).
    """

    name: str
    type: str
    weight: np.ndarray | None
    bias: np.ndarray | None
    tensors: dict[str, np.ndarray]


def open_figures() -> set[int]:
    """The numbers of the pyplot figures open now (none if pyplot is not loaded)."""
    plt = sys.modules.get("matplotlib.pyplot")
    return set(plt.get_fignums()) if plt is not None else set()


def close_new_figures(before: set[int]) -> None:
    """Close the figures a job opened and left open (the caller's own stay open)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in set(plt.get_fignums()) - before:
        plt.close(num)


# The executor pieces of a job go to (`probe analyze --workers/--dask-workers/--scheduler`);
# None: run them in this process. A context variable, so the runner needs no plumbing.
EXECUTOR: contextvars.ContextVar[Any] = contextvars.ContextVar("probe_executor", default=None)


class Context:
    """What one analysis job sees. Created by the runner, one per job.

    `inputs` holds every input the job has read so far (input name -> fingerprint,
    see probe/results.py); the runner stores it in the manifest and keys the result on it.
    """

    def __init__(
        self,
        run: Run,
        analysis: Any,
        params: Any,
        epochs: list[int],
        epoch: int | None,
        device: str,
        out: ResultWriter,
        quiet: bool = False,
        fingerprints: Callable[[str], str] | None = None,
    ):
        self.run = run
        self.inputs: dict[str, str] = {}
        self._examples: DataBatch | None = None  # read once: example_logits needs its size
        self._fingerprints = fingerprints or results.Fingerprints(run, persistent=False)
        self.analysis = analysis
        self.params = params
        self.epochs = epochs
        self.epoch = epoch
        self.device = device
        self.out = out
        self.quiet = quiet

    # --- reading: each read is checked against `needs` and recorded ---------------------------
    def _need(self, *names: str) -> None:
        if not set(names) & self.analysis.needs:
            raise ProbeError(
                f"analysis {self.analysis.name!r} reads {names[0]} without declaring "
                f"needs={{{names[0]!r}}}"
            )

    def _record(self, name: str) -> str:
        """Fingerprint input `name` and add it to this job's inputs (its cache key)."""
        if name not in self.inputs:
            self.inputs[name] = self._fingerprints(name)
        return self.inputs[name]

    def declare_reads(
        self, checkpoints: Iterable[int] = (), activations: Iterable[int] = ()
    ) -> None:
        """Record inputs the job reads without going through this Context.

        For files opened elsewhere, e.g. by the pieces of `ctx.map` in worker
        processes (`ctx.declare_reads(checkpoints=ctx.epochs)` before mapping a
        function that loads each epoch's model). Reads through the Context
        (`ctx.checkpoint(0)`, `ctx.model(0)`, ...) are recorded by themselves.
        """
        checkpoints, activations = list(checkpoints), list(activations)
        if checkpoints:
            self._need("checkpoint", "model", "trajectory")
        if activations:
            self._need("activations")
        for e in checkpoints:
            self._record(checkpoint_name(self._epoch(e)))
        for e in activations:
            self._record(activations_name(self._epoch(e)))

    def all_epochs(self, upto: int | None = None) -> list[int]:
        """Every complete epoch of the run (not only the selected ones), or those <= `upto`.

        The list is an input: a result that used it is recomputed when it changes
        (pass `upto` when later epochs do not matter, so extending the run keeps it).
        """
        if upto is not None:
            upto = self._epoch(upto)
        self._record(results.epochs_input(upto))
        have = self.run.epochs()
        return have if upto is None else [e for e in have if e <= upto]

    def checksum(self, epoch: int | None = None) -> str:
        """SHA-256 of the checkpoint file of `epoch` (for provenance); a read of that checkpoint."""
        self._need("checkpoint", "model", "trajectory")
        return self._record(checkpoint_name(self._epoch(epoch)))

    def config(self) -> dict[str, Any]:
        """config.json as results are keyed on it: without where training ran and for how long.

        Left out: `train.epochs`, `train.device`, `train.data`, `device`, `device_name`,
        `versions`, `config_hash`, `data_source`; so extending or moving a run keeps results.
        Use `all_epochs()` for the epochs.
        """
        self._need("config")
        self._record(CONFIG)
        return results.keyed_config(self.run.config)

    def metrics(self, epochs: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl rows, one per epoch; only those of `epochs` if given.

        The key covers the rows returned: read `ctx.metrics(ctx.epochs)` when only the
        job's epochs matter, so the rows later training appends do not recompute it.
        """
        self._need("metrics")
        sel = None if epochs is None else sorted({self._epoch(e) for e in epochs})
        self._record(results.metrics_input(sel))
        return results.metrics_rows(self.run.metrics(), sel)

    def checkpoint(self, epoch: int | None = None):
        """The checkpoint (model state as fresh tensors, spec, metrics) of `epoch` (any; recorded).

        `model_state` is a dict in state-dict key order sorted by name (`features.10.weight`
        before `features.3.weight`); use `ctx.parameters()` for the layers in network order.
        """
        self._need("checkpoint", "trajectory")
        return self._load_checkpoint(epoch)

    def _load_checkpoint(self, epoch: int | None):
        e = self._epoch(epoch)
        self._record(checkpoint_name(e))
        return self.run.load_checkpoint(e)

    def model(self, epoch: int | None = None):
        """A fresh model for `epoch` (any epoch; recorded), in eval mode, on the analysis device."""
        self._need("model")
        return self._load_checkpoint(epoch).build_model(self.device)

    def parameters(self, epoch: int | None = None) -> list[LayerParams]:
        """The weights of `epoch`, one `LayerParams` per module that holds parameters, in network
        order (module registration order: `features.0`, `features.1`, ..., `features.10`,
        `classifier.1`, ...), with each module's name and type. Needs `checkpoint` or `model`."""
        self._need("checkpoint", "model", "trajectory")

        from probe.rundir.checkpoint import _check_spec

        ckpt = self._load_checkpoint(epoch)
        _check_spec(ckpt.spec, ckpt.path)
        skeleton = ckpt.spec.skeleton()
        layers = []
        for mname, module in skeleton.named_modules():
            own = [n for n, _ in module.named_parameters(recurse=False)]
            if not own:
                continue
            own += [n for n, _ in module.named_buffers(recurse=False)]
            tensors = {}
            for n in own:
                t = ckpt.model_state.get(f"{mname}.{n}")
                if t is not None:
                    t = t.detach().cpu()
                    tensors[n] = (t.float() if t.is_floating_point() else t).numpy().copy()
            layers.append(
                LayerParams(
                    mname,
                    type(module).__name__,
                    tensors.get("weight"),
                    tensors.get("bias"),
                    tensors,
                )
            )
        return layers

    def layers(self, epoch: int | None = None) -> list[str]:
        """The recorded layers of the activation dumps, in network order."""
        from probe.rundir import activations

        self._need("activations")
        e = self._epoch(epoch)
        self._record(activations_name(e))
        return activations.read(self.run.activations_path(e))["layers"]

    def resolve_layer(
        self, name: str, epoch: int | None = None, option: str = "--param layer"
    ) -> str:
        """`penultimate` -> the last recorded layer; any other name must be a recorded layer."""
        layers = self.layers(epoch)
        if name == "penultimate":
            return layers[-1]
        if name not in layers:
            raise UsageError(
                option, f"{name!r} is not a recorded layer (recorded: {', '.join(layers)})"
            )
        return name

    def activations(self, layer: str, epoch: int | None = None, kind: str = "pooled") -> np.ndarray:
        """float32 activations of the probe set at `layer`.

        `kind`: pooled [P, C], maps [P, C, H, W], logits.
        """
        import numpy as np

        from probe.rundir import activations

        self._need("activations")
        e = self._epoch(epoch)
        self._record(activations_name(e))
        return np.asarray(
            activations.read(self.run.activations_path(e), layer, kind), dtype=np.float32
        )

    def probe_set(self) -> DataBatch:
        self._need("probe_set")
        self._record(PROBE_SET)
        self._record(CONFIG)  # normalised with the model spec's mean and std
        return self.run.probe_set()

    def analysis_batch(self) -> DataBatch:
        self._need("analysis_batch")
        self._record(ANALYSIS_BATCH)
        self._record(CONFIG)
        return self.run.analysis_batch()

    def examples(self) -> DataBatch:
        """The recorded training examples (images, labels, indices): the images whose logits
        the run recorded after every epoch. A run without them (made before they existed, or
        with --example-records 0) makes the analysis skip, in one line."""
        self._need("examples")
        self._record(EXAMPLES)
        self._record(CONFIG)
        if not self.run.has_examples():
            raise Skip(
                "this run records no per-example predictions (made before they existed, or "
                "with --example-records 0); train or record it again to have them"
            )
        if self._examples is None:
            self._examples = self.run.examples()
        return self._examples

    def example_logits(self, epoch: int | None = None) -> torch.Tensor:
        """Epoch `epoch`'s logits of `examples()` (float32 [examples, classes]), recorded in
        eval mode on the un-augmented images after that epoch (epoch 0: at initialisation)."""
        self._need("examples")
        e = self._epoch(epoch)
        self._record(predictions_name(e))
        n = len(self.examples().labels)
        return self.run.example_logits(e, n, len(self.class_names()))

    def class_names(self) -> list[str]:
        """The class names of config.json (a read of config.json; needs nothing)."""
        self._record(CONFIG)
        return list(self.run.config.get("classes") or [str(i) for i in range(10)])

    def pyplot(self) -> Any:
        """`matplotlib.pyplot`, with the non-interactive Agg backend unless pyplot is imported.

        Figures saved with `ctx.out.figure` are closed; any the job leaves open are
        closed by the runner after the job.
        """
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt

    def _epoch(self, epoch: int | None) -> int:
        if epoch is None:
            if self.epoch is None:
                raise ProbeError(f"analysis {self.analysis.name!r} is run-scoped: pass an epoch")
            return self.epoch
        if hasattr(epoch, "item") and not isinstance(epoch, (int, float)):
            epoch = epoch.item()  # numpy / torch integers
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 10**9:
            raise ProbeError(
                f"analysis {self.analysis.name!r}: epoch must be a non-negative integer, "
                f"got {epoch!r}"
            )
        return int(epoch)

    # --- splitting a job into pieces ------------------------------------------------------------
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
        tasks = [Task(f"{self.analysis.name}[{i}]", fn, (item,)) for i, item in enumerate(items)]
        done: dict[str, Any] = {}
        for outcome in self.progress(
            executor.run(tasks), f"{label} on {executor.describe()}", total=len(tasks)
        ):
            if not outcome.ok:
                raise ProbeError(
                    f"{self.analysis.name}: piece {outcome.key} failed on "
                    f"{executor.describe()}: {outcome.error}"
                )
            done[outcome.key] = outcome.value
        return [done[t.key] for t in tasks]

    # --- feedback -------------------------------------------------------------------------------
    def progress(
        self, items: Iterable[Any], label: str = "", total: int | None = None
    ) -> Iterator[Any]:
        """Iterate with a progress line (done, rate, time left) on an interactive terminal; cheap
        otherwise (probe.analysis.progress)."""
        yield from progress(items, f"{self.analysis.name}: {label}", quiet=self.quiet, total=total)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.analysis.name}: {message}", file=sys.stderr)
