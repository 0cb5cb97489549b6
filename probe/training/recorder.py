"""`probe.Recorder`: a run directory from any training loop (docs/own-loop.md).

A training loop calls `record(epoch, model, optimizer, metrics)` at the end of each
epoch (and once before training, for epoch 0 = the initialisation). The recorder
checks what it was given, then hands the epoch to the run writer
(probe.rundir.writer.RunWriter), which validates the model on the validation split
(the probe set first, so its activations are captured by forward hooks during that
pass) and writes, in this order and each atomically, the activation dump, the
checkpoint and metrics.jsonl: the layout of docs/run-directory.md, so every analysis
and `probe report` work on the result. `probe train` and `probe import` write through
the same writer, from the same kind of plan (probe.rundir.plan.RunPlan).

Everything a record could refuse (epochs out of order, a model whose state does not
fit the family it names, metrics that are not JSON numbers, an optimizer state a
checkpoint cannot hold) is checked before a byte of that epoch is written, and the
run directory itself is only created and locked at the first record that passes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from probe.contract.families import ModelSpec, get_family
from probe.datasets import tensors as _data
from probe.errors import ProbeError, UsageError
from probe.numerics.device import resolve_device
from probe.rundir import checkpoint
from probe.rundir.plan import RunPlan
from probe.rundir.prepare import check_new_run_dir, check_path
from probe.rundir.run import MAX_EXAMPLES
from probe.rundir.writer import RunWriter
from probe.training.config import MAX_IMAGES, MAX_SEED
from probe.training.model import check_model, input_spec
from probe.training.normalization import (
    ASSUMED_DATA,
    GIVEN,
    SPEC,
    NormalizationAssumed,
    assumption_line,
    check_normalization,
)

Log = Callable[[str], None]

# Metrics the recorder measures itself; a loop's metrics may not name them.
RESERVED = (
    "epoch",
    "val_loss",
    "val_acc",
    "val_seconds",
    "weight_norm",
    "epoch_seconds",
    "output_seconds",
)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict has the family's names: not a DataParallel/DDP or torch.compile
    wrapper."""
    while True:
        inner = (
            getattr(model, "module", None)
            if type(model).__name__ in ("DataParallel", "DistributedDataParallel")
            else getattr(model, "_orig_mod", None)
        )
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def state_mismatch(
    spec: ModelSpec, state: Mapping[str, torch.Tensor], *, cast: bool = False
) -> str | None:
    """None when `state` has exactly the tensors of `spec`'s model; else what differs, naming the
    first keys.

    Compared against the model built on the meta device (nothing allocated). With
    `cast`, a floating tensor of another floating dtype counts as fitting (import casts it).
    """
    want = spec.skeleton().state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    bad = []
    for k, w in want.items():
        if k in state:
            g = state[k]
            same_dtype = g.dtype == w.dtype or (
                cast and g.dtype.is_floating_point and w.dtype.is_floating_point
            )
            if tuple(g.shape) != tuple(w.shape) or not same_dtype:
                bad.append(f"{k} (expected {_kind(w)}, got {_kind(g)})")
    parts = []
    for what, keys in (("missing", missing), ("mismatched", bad), ("unexpected", extra)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{what} {', '.join(keys[:3])}{more}")
    return "; ".join(parts) or None


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def resolve_spec(
    model: ModelSpec | str,
    ds: _data.Dataset,
    model_params: Mapping[str, Any] | None,
    subset: torch.Tensor,
    batch_size: int,
    full_maps: tuple[str, ...],
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> ModelSpec:
    """The spec of `model` (a spec, or a family name + params) for `ds`, sized and checked on the
    meta device. `norm`: the (mean, std) the model was trained with (None: a ModelSpec's own,
    or the data set's statistics)."""
    if isinstance(model, ModelSpec):
        if model_params:
            raise UsageError(
                "model_params",
                "give parameters inside the ModelSpec, or a family name with model_params",
            )
        spec = model
        if norm is not None:
            spec = dataclasses.replace(
                spec, input=dataclasses.replace(spec.input, mean=norm[0], std=norm[1])
            )
    elif isinstance(model, str):
        spec = get_family(model, option="--model").spec(
            dict(model_params or {}),
            input_spec(ds.train_x[subset], *(norm or (ds.mean, ds.std))),
            len(ds.classes),
        )
    else:
        raise UsageError(
            "model", f"expected a family name or a probe.ModelSpec, got {type(model).__name__}"
        )
    h, w = ds.train_x.shape[2:]
    if (spec.in_channels, *spec.image_size) != tuple(
        ds.train_x.shape[1:]
    ) or spec.num_classes != len(ds.classes):
        raise UsageError(
            "model",
            f"{spec.describe()} does not fit the data set's {ds.train_x.shape[1]}x{h}x{w} "
            f"images of {len(ds.classes)} classes",
        )
    check_model(spec, batch_size, full_maps=full_maps)
    return spec


def _check_sizes(sizes: Mapping[str, Any], val_size: Any, probe_set_size: Any) -> None:
    """Whole numbers in their ranges (seed: torch's 64 bits), before anything is loaded."""
    lows = {"probe_set_size": 10, "analysis_batch_size": 1, "val_batch_size": 1}
    for name, v in sizes.items():
        lo = lows.get(name, 0)
        hi = {"seed": MAX_SEED, "example_records": MAX_EXAMPLES}.get(name, MAX_IMAGES)
        if type(v) is not int or not lo <= v <= hi:
            raise UsageError(name, f"expected a whole number >= {lo}, got {v!r}")
    if val_size is not None and (type(val_size) is not int or val_size < probe_set_size):
        raise UsageError(
            "val_size",
            f"must be a whole number >= probe_set_size ({probe_set_size}), got {val_size!r}",
        )


def _load_dataset(dataset: str | _data.Dataset, data: str | None) -> _data.Dataset:
    if isinstance(dataset, str):
        return _data.load_dataset(dataset, data, quiet=True)
    if isinstance(dataset, _data.Dataset):
        _data.check_dataset(dataset, "given")
        return dataset
    raise UsageError(
        "dataset",
        "expected a data set name or a probe.datasets.tensors.Dataset, "
        f"got {type(dataset).__name__}",
    )


class Recorder:
    """Writes a probe run directory from any training loop.

        rec = probe.Recorder("runs/mine", model="resnet", model_params={"depth": 20},
                             dataset="cifar10", data="~/data/cifar10")
        model = rec.spec.build()
        rec.record(0, model)                           # the initialisation
        for epoch in range(1, 3):
            ...train one epoch...
            rec.record(epoch, model, optimizer, {"train_loss": loss})
        rec.close()                                    # or `with probe.Recorder(...) as rec:`

    `model`: a `probe.ModelSpec`, or a family name (`probe models`, or one you registered)
    with `model_params`. `dataset`: a data set name (`probe datasets`; `data` is its
    `--data`) or a `probe.datasets.tensors.Dataset`. The probe set (`probe_set_size`
    class-stratified validation images), the analysis batch (`analysis_batch_size` images of
    the training subset) and the validation order are drawn with `seed` exactly as
    `probe train` draws them (one `probe.rundir.plan.RunPlan`); `subset_train_size` (0 = all)
    names that subset, and `train_indices` gives it to the loop. `val_size` validates on fewer
    images (the probe set plus a seeded rest). `example_records` class-stratified training
    images have their logits recorded after every epoch (`forgetting`; 0: none). `epochs`
    (optional) is the planned number, shown by
    `probe report`. `mean`/`std` (one per channel, on the [0, 1] scale) or `normalize` (a
    torchvision `transforms.Normalize`) are the normalisation the model was trained with:
    every validation and analysis feeds it images normalised so; without them the data
    set's statistics are assumed and a `NormalizationAssumed` warning says so (a
    `probe.ModelSpec` carries its own). An existing, non-empty `run_dir` is refused unless
    `force=True` and it is a probe run. The files are written by the run writer
    (`probe.rundir.writer.RunWriter`) that `probe train` and `probe import` write through too.
    """

    def __init__(
        self,
        run_dir: str | Path,
        model: ModelSpec | str,
        dataset: str | _data.Dataset,
        *,
        model_params: Mapping[str, Any] | None = None,
        data: str | None = None,
        probe_set_size: int = 1000,
        analysis_batch_size: int = 1024,
        subset_train_size: int = 0,
        seed: int = 0,
        val_size: int | None = None,
        val_batch_size: int = 256,
        full_maps: tuple[str, ...] = (),
        example_records: int = 1000,
        epochs: int | None = None,
        force: bool = False,
        device: str | torch.device = "auto",
        log: Log | None = None,
        mean: Any = None,
        std: Any = None,
        normalize: Any = None,
        _source: dict[str, Any] | None = None,
    ):
        run_dir = Path(run_dir)
        sizes = {
            "probe_set_size": probe_set_size,
            "analysis_batch_size": analysis_batch_size,
            "subset_train_size": subset_train_size,
            "val_batch_size": val_batch_size,
            "seed": seed,
            "epochs": 0 if epochs is None else epochs,
            "example_records": example_records,
        }
        _check_sizes(sizes, val_size, probe_set_size)
        check_path(run_dir, "run_dir")
        check_new_run_dir(run_dir, force)
        dev = resolve_device(device)
        ds = _load_dataset(dataset, data)
        subset = _data.train_subset(ds, subset_train_size, seed)
        analysis_batch_size = min(analysis_batch_size, len(subset))
        full_maps = tuple(full_maps)
        norm = check_normalization(mean, std, normalize, int(ds.train_x.shape[1]))
        spec = resolve_spec(model, ds, model_params, subset, val_batch_size, full_maps, norm)
        normalization = _normalization(model, norm, spec)
        # config.json's `train` table: what a recorder knows, in probe train's key names.
        train: dict[str, Any] = {
            "dataset": dataset if isinstance(dataset, str) else "given",
            "data": data,
            "model": spec.family,
            "model_params": [f"{k}={v}" for k, v in sorted(spec.params.items())],
            "epochs": epochs,
            "subset_train_size": subset_train_size,
            "seed": seed,
            "probe_set_size": probe_set_size,
            "analysis_batch_size": analysis_batch_size,
            "val_batch_size": val_batch_size,
            "val_size": val_size,
            "full_maps": list(full_maps),
            "example_records": example_records,
            "device": dev.type,
            "normalization": normalization,
        }
        plan = RunPlan(
            run_dir=run_dir,
            spec=spec,
            dataset=ds,
            device=dev,
            train=train,
            train_indices=subset,
            seed=seed,
            probe_set_size=probe_set_size,
            analysis_batch_size=analysis_batch_size,
            val_size=val_size,
            val_batch_size=val_batch_size,
            full_maps=full_maps,
            example_records=example_records,
            source=_source or {"kind": "recorder"},
        )
        self.writer = RunWriter(plan, force=force, log=log)

    # --- what the loop reads ----------------------------------------------------------------------
    @property
    def plan(self) -> RunPlan:
        return self.writer.plan

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def spec(self) -> ModelSpec:
        """The model's spec: `rec.spec.build()` is a fresh model of it."""
        return self.plan.spec

    @property
    def dataset(self) -> _data.Dataset:
        return self.plan.dataset

    @property
    def device(self) -> torch.device:
        """Where the recorder validates: the model must be there."""
        return self.plan.device

    @property
    def train_indices(self) -> torch.Tensor:
        """The training subset (indices into the training split): the loop trains on it."""
        return self.plan.train_indices

    @property
    def probe_idx(self) -> torch.Tensor:
        return self.plan.probe_indices

    @property
    def val_order(self) -> torch.Tensor:
        return self.plan.val_order

    @property
    def val_x(self) -> torch.Tensor:
        return self.writer.val_x

    @property
    def val_y(self) -> torch.Tensor:
        return self.writer.val_y

    @property
    def val_batch_size(self) -> int:
        return self.plan.val_batch_size

    @property
    def layers(self) -> list[str]:
        return self.plan.layers

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics rows recorded so far (metrics.jsonl)."""
        return self.writer.history

    @property
    def last_epoch(self) -> int | None:
        return self.writer.last_epoch

    # --- the public API -------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the run's lock (a recorder that recorded nothing leaves nothing behind)."""
        self.writer.close()

    def record(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        rng: dict[str, torch.Tensor] | None = None,
        started: float | None = None,
    ) -> dict[str, Any]:
        """Validate `model` and write epoch `epoch`'s dump, checkpoint and metrics; returns the
        metrics row.

        `metrics`: what the loop measured (train_loss, train_acc, lr, ...: JSON numbers or
        strings); the recorder adds val_loss, val_acc, weight_norm and timings. `rng`:
        random-number states to store for resuming (`torch` and `data` CPU generator
        states); without it the global torch state is stored. `started`: the epoch's
        `time.perf_counter()` start (default: the end of the previous record).
        """
        model = unwrap(model)
        row = self._check(epoch, model, optimizer, metrics)
        if rng is None and optimizer is not None:  # a checkpoint with optimizer state holds RNG
            rng = {"torch": torch.get_rng_state(), "data": torch.get_rng_state()}
        return self.writer.record(epoch, model, row, optimizer, rng=rng, started=started)

    # --- checks: before anything of the epoch is written ------------------------------------------
    def _check(
        self, epoch: Any, model: Any, optimizer: Any, metrics: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        self.writer.check_epoch(epoch)
        self._check_model(epoch, model)
        row = _checked_metrics(epoch, metrics)
        if optimizer is not None:
            _check_optimizer(epoch, model, optimizer)
            if epoch > 0 and "lr" not in row:
                row["lr"] = float(optimizer.param_groups[0]["lr"])
        return row

    def _check_model(self, epoch: int, model: Any) -> None:
        if not isinstance(model, torch.nn.Module):
            raise UsageError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
        p, dev = next(model.parameters(), None), self.device
        if (
            p is not None
            and p.device != dev
            and not (p.device.type == dev.type == "cuda" and dev.index is None)
        ):
            raise UsageError(
                "device",
                f"epoch {epoch}: the model is on {p.device}, the recorder validates on "
                f"{dev}; create the recorder with device={str(p.device)!r}",
            )
        why = state_mismatch(self.spec, model.state_dict())
        if why:
            raise ProbeError(
                f"epoch {epoch}: the model's state does not fit {self.spec.describe()} ({why}); "
                "nothing was written"
            )
        modules = dict(model.named_modules())
        missing = [n for n in self.layers if n not in modules]
        if missing:
            raise ProbeError(
                f"epoch {epoch}: the model has no module {missing[0]!r} (a recorded layer of "
                f"{self.spec.family}); nothing was written"
            )


def _normalization(model: Any, norm: Any, spec: ModelSpec) -> str:
    """config.json's `train.normalization`: given, or assumed (then warned, in one line)."""
    if norm is not None:
        return GIVEN
    if isinstance(model, ModelSpec):
        return SPEC
    line = assumption_line(spec.mean, spec.std, "mean=(R,G,B), std=(R,G,B) or normalize=")
    warnings.warn(line, NormalizationAssumed, stacklevel=3)
    return ASSUMED_DATA


def _checked_metrics(epoch: int, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The start of a metrics row from a loop's `metrics`: names the recorder does not measure,
    JSON numbers or strings."""
    row: dict[str, Any] = {"epoch": epoch}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or k in RESERVED:
            raise UsageError(
                "metrics",
                f"epoch {epoch}: {k!r} is measured by the recorder (or not a name); "
                f"leave out {', '.join(RESERVED)}",
            )
        if torch.is_tensor(v) and v.numel() == 1:
            v = v.item()
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise UsageError(
                "metrics", f"epoch {epoch}: {k} is a {type(v).__name__}, not a number or string"
            )
        row[k] = v
    return row


def _check_optimizer(epoch: int, model: torch.nn.Module, optimizer: Any) -> None:
    """An optimizer of the model's parameters whose state a probe checkpoint can hold."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(
            "optimizer", f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    ids = {id(p) for p in model.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                raise ProbeError(
                    f"epoch {epoch}: the optimizer holds a tensor that is not a parameter of the "
                    "model; nothing was written"
                )
            for key, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and (
                    key not in checkpoint.OPTIMIZER_STATE_KEYS or v.dtype != torch.float32
                ):
                    raise ProbeError(
                        f"epoch {epoch}: {type(optimizer).__name__} keeps {key!r} "
                        f"({str(v.dtype).removeprefix('torch.')}), which a probe checkpoint "
                        "cannot store (SGD and Adam(W) states only); record with optimizer=None"
                    )
