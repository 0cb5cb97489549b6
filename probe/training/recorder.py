"""`probe.Recorder`: the run-directory writer, for `probe train` and for any training loop.

A training loop calls `record(epoch, model, optimizer, metrics)` at the end of each
epoch (and once before training, for epoch 0 = the initialisation). The recorder
validates the model on the validation split (the probe set first, so its activations
are captured by forward hooks during that pass), then writes, in this order and each
atomically, the activation dump, the checkpoint and metrics.jsonl: the layout of
docs/run-directory.md, so every analysis and `probe report` work on the result.
`probe train` is built on it (one writer, not two); `probe import` too.

Everything a record could refuse (epochs out of order, a model whose state does not
fit the family it names, metrics that are not JSON numbers, an optimizer state a
checkpoint cannot hold) is checked before a byte of that epoch is written, and the
run directory itself is only created and locked at the first record that passes.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probe.contract.families import ModelSpec
from probe.datasets import tensors as _data
from probe.errors import ProbeError, UsageError
from probe.io import atomic, jsonsafe
from probe.numerics.device import resolve_device
from probe.rundir import activations, checkpoint, lock
from probe.rundir import run as rundir

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
    """The module whose state dict has the family's names: not a DataParallel/DDP or torch.compile wrapper."""
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
    """None when `state` has exactly the tensors of `spec`'s model; else what differs, naming the first keys.

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
) -> ModelSpec:
    """The spec of `model` (a spec, or a family name + params) for `ds`, sized and checked on the meta device."""
    from probe.contract.families import get_family
    from probe.training.model import check_model, input_spec

    if isinstance(model, ModelSpec):
        if model_params:
            raise UsageError(
                "model_params",
                "give parameters inside the ModelSpec, or a family name with model_params",
            )
        spec = model
    elif isinstance(model, str):
        spec = get_family(model, option="--model").spec(
            dict(model_params or {}),
            input_spec(ds.train_x[subset], ds.mean, ds.std),
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


def _resolved(device: torch.device, seed: int) -> dict[str, Any]:
    from probe.version import __version__

    info: dict[str, Any] = {
        "versions": {
            "probe": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "device": str(device),
        "seed": seed,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


class Recorder:
    """Writes a probe run directory from any training loop.

        rec = probe.Recorder("runs/mine", model="resnet", model_params={"depth": 20}, dataset="cifar10",
                             data="~/data/cifar10")
        model = rec.spec.build()
        rec.record(0, model)                                   # the initialisation
        for epoch in range(1, 3):
            ...train one epoch...
            rec.record(epoch, model, optimizer, {"train_loss": loss})
        rec.close()                                            # or use `with probe.Recorder(...) as rec:`

    `model`: a `probe.ModelSpec`, or a family name (`probe models`, or one you registered)
    with `model_params`. `dataset`: a data set name (`probe datasets`; `data` is its
    `--data`) or a `probe.datasets.tensors.Dataset`. The probe set (`probe_set_size` class-stratified
    validation images), the analysis batch (`analysis_batch_size` images of the training
    subset) and the validation order are drawn with `seed` exactly as `probe train` draws
    them; `subset_train_size` (0 = all) names that subset, and `train_indices` gives it
    to the loop. `val_size` validates on fewer images (the probe set plus a seeded rest).
    `epochs` (optional) is the planned number, shown by `probe report`. An existing,
    non-empty `run_dir` is refused unless `force=True` and it is a probe run.
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
        epochs: int | None = None,
        force: bool = False,
        device: str | torch.device = "auto",
        log: Log | None = None,
        _source: dict[str, Any] | None = None,
    ):
        from probe.rundir.prepare import check_path
        from probe.training.config import MAX_IMAGES, MAX_SEED

        self.run_dir = Path(run_dir)
        for name, v, lo in (
            ("probe_set_size", probe_set_size, 10),
            ("analysis_batch_size", analysis_batch_size, 1),
            ("subset_train_size", subset_train_size, 0),
            ("val_batch_size", val_batch_size, 1),
            ("seed", seed, 0),
            ("epochs", 0 if epochs is None else epochs, 0),
        ):
            if type(v) is not int or not lo <= v <= (MAX_SEED if name == "seed" else MAX_IMAGES):
                raise UsageError(name, f"expected a whole number >= {lo}, got {v!r}")
        if val_size is not None and (type(val_size) is not int or val_size < probe_set_size):
            raise UsageError(
                "val_size",
                f"must be a whole number >= probe_set_size ({probe_set_size}), got {val_size!r}",
            )
        check_path(self.run_dir, "run_dir")
        self._check_dir(force)
        self.force = force
        device = resolve_device(device)
        if isinstance(dataset, str):
            ds = _data.load_dataset(dataset, data, quiet=True)
            name = dataset
        elif isinstance(dataset, _data.Dataset):
            _data.check_dataset(dataset, "given")
            ds, name = dataset, getattr(dataset, "source", "given")
        else:
            raise UsageError(
                "dataset",
                f"expected a data set name or a probe.datasets.tensors.Dataset, got {type(dataset).__name__}",
            )
        subset = _data.train_subset(ds, subset_train_size, seed)
        analysis_batch_size = min(analysis_batch_size, len(subset))
        full_maps = tuple(full_maps)
        spec = resolve_spec(model, ds, model_params, subset, val_batch_size, full_maps)
        train: dict[str, Any] = {
            "dataset": name if isinstance(dataset, str) else "given",
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
            "device": device.type,
        }
        self._setup(
            spec,
            ds,
            device,
            train=train,
            config_hash="",
            augmentation=None,
            probe_set_size=probe_set_size,
            analysis_batch_size=analysis_batch_size,
            subset=subset,
            seed=seed,
            val_size=val_size,
            val_batch_size=val_batch_size,
            full_maps=full_maps,
            precision="fp32",
            channels_last=False,
            log=log,
        )
        self.source = _source or {"kind": "recorder"}
        self._epochs_planned = epochs
        self._attached = False

    @classmethod
    def attached(
        cls,
        run_dir: Path,
        spec: ModelSpec,
        ds: _data.Dataset,
        device: torch.device,
        *,
        train: dict[str, Any],
        config_hash: str,
        augmentation: dict[str, Any] | None,
        probe_set_size: int,
        analysis_batch_size: int,
        subset: torch.Tensor,
        seed: int,
        val_size: int | None,
        val_batch_size: int,
        full_maps: tuple[str, ...],
        precision: str,
        channels_last: bool,
        log: Log | None = None,
    ) -> Recorder:
        """A recorder for a caller that has checked, created and locked `run_dir` itself (`probe train`)."""
        self = cls.__new__(cls)
        self.run_dir = run_dir
        self.force = False
        self._setup(
            spec,
            ds,
            device,
            train=train,
            config_hash=config_hash,
            augmentation=augmentation,
            probe_set_size=probe_set_size,
            analysis_batch_size=analysis_batch_size,
            subset=subset,
            seed=seed,
            val_size=val_size,
            val_batch_size=val_batch_size,
            full_maps=full_maps,
            precision=precision,
            channels_last=channels_last,
            log=log,
        )
        self.source = None
        self._epochs_planned = train.get("epochs")
        self._attached = True
        self._opened = True
        return self

    def _setup(
        self,
        spec: ModelSpec,
        ds: _data.Dataset,
        device: torch.device,
        *,
        train: dict[str, Any],
        config_hash: str,
        augmentation: dict[str, Any] | None,
        probe_set_size: int,
        analysis_batch_size: int,
        subset: torch.Tensor,
        seed: int,
        val_size: int | None,
        val_batch_size: int,
        full_maps: tuple[str, ...],
        precision: str,
        channels_last: bool,
        log: Log | None,
    ) -> None:
        self.spec, self.dataset, self.device = spec, ds, device
        self.layers = spec.recorded_layers()
        self.train, self.config_hash, self.augmentation = train, config_hash, augmentation
        self.seed, self.val_batch_size, self.full_maps = seed, val_batch_size, full_maps
        self.precision, self.channels_last = precision, channels_last
        self.log: Log = log or (lambda s: None)
        self.train_indices = subset
        probe_idx = _data.stratified(ds.test_y, min(probe_set_size, len(ds.test_y)), seed)
        rest = torch.ones(len(ds.test_y), dtype=torch.bool)
        rest[probe_idx] = False
        rest_idx = rest.nonzero().flatten()
        if val_size is not None and val_size < len(ds.test_y):  # a seeded, stratified rest
            rest_idx = (
                rest_idx[_data.stratified(ds.test_y[rest_idx], val_size - len(probe_idx), seed + 3)]
                .sort()
                .values
            )
        # The probe set goes first in the validation order: its activations are captured for free.
        self.probe_idx = probe_idx
        self.val_order = torch.cat([probe_idx, rest_idx])
        self.val_x = ds.test_x[self.val_order].to(device)
        self.val_y = ds.test_y[self.val_order].to(device)
        g = torch.Generator().manual_seed(seed + 2)
        self.analysis_src = subset[
            torch.randperm(len(subset), generator=g)[:analysis_batch_size].sort().values
        ]
        self.history: list[dict[str, Any]] = []
        self.last_epoch: int | None = None
        self._opened = False
        self._stack = contextlib.ExitStack()
        self._t_last = time.perf_counter()

    # --- the public API -------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the run's lock (a recorder that recorded nothing leaves nothing behind)."""
        self._stack.close()

    def __del__(
        self,
    ) -> None:  # a loop that never calls close(): release the lock when the recorder goes
        with contextlib.suppress(Exception):
            self._stack.close()

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
        """Validate `model` and write epoch `epoch`'s dump, checkpoint and metrics; returns the metrics row.

        `metrics`: what the loop measured (train_loss, train_acc, lr, ...: JSON numbers or
        strings); the recorder adds val_loss, val_acc, weight_norm and timings. `rng`:
        random-number states to store for resuming (`torch` and `data` CPU generator
        states); without it the global torch state is stored. `started`: the epoch's
        `time.perf_counter()` start (default: the end of the previous record).
        """
        t0 = self._t_last if started is None else started
        model = unwrap(model)
        row = self._check(epoch, model, optimizer, metrics)
        if (
            rng is None and optimizer is not None
        ):  # a checkpoint with optimizer state must hold RNG states
            rng = {"torch": torch.get_rng_state(), "data": torch.get_rng_state()}
        t_val = time.perf_counter()
        was_training = model.training
        recorder = activations.ActivationRecorder(
            model, self.layers, self.full_maps, len(self.probe_idx)
        )
        try:
            row.update(self.validate(model, recorder))
        finally:
            recorder.close()
            model.train(was_training)
        row["val_seconds"] = time.perf_counter() - t_val
        row["weight_norm"] = weight_norm(model)
        if not self._opened:
            self._open()
        t_out = time.perf_counter()
        recorder.write(self.run_dir / rundir.activations_name(epoch), epoch)
        row["epoch_seconds"] = (
            time.perf_counter() - t0
        )  # the checkpoint's own copy: before its write
        checkpoint.save(
            self.run_dir / rundir.checkpoint_name(epoch),
            epoch=epoch,
            model=model,
            spec=self.spec,
            metrics=row,
            config_hash=self.config_hash,
            optimizer=optimizer,
            rng=rng,
        )
        row["output_seconds"] = time.perf_counter() - t_out
        row["epoch_seconds"] = time.perf_counter() - t0
        self.history = [h for h in self.history if h["epoch"] < epoch] + [row]
        self.last_epoch = epoch
        if not self._attached and self._epochs_planned is None:
            self.train["epochs"] = epoch  # `probe report` shows the epochs recorded so far
            self._write_config()
        write_metrics(self.run_dir, self.history)
        self._t_last = time.perf_counter()
        return row

    # --- checks: before anything of the epoch is written ------------------------------------------
    def _check(
        self, epoch: Any, model: Any, optimizer: Any, metrics: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        if type(epoch) is not int or not 0 <= epoch < 10**9:
            raise UsageError("epoch", f"expected a whole number >= 0, got {epoch!r}")
        if self.last_epoch is not None and epoch != self.last_epoch + 1:
            raise UsageError(
                "epoch",
                f"epoch {epoch} recorded after epoch {self.last_epoch}; record each epoch once, "
                f"in order (next: {self.last_epoch + 1}); nothing was written",
            )
        if not isinstance(model, torch.nn.Module):
            raise UsageError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
        p = next(model.parameters(), None)
        if (
            p is not None
            and p.device != self.device
            and not (p.device.type == self.device.type == "cuda" and self.device.index is None)
        ):
            raise UsageError(
                "device",
                f"epoch {epoch}: the model is on {p.device}, the recorder validates on "
                f"{self.device}; create the recorder with device={str(p.device)!r}",
            )
        if self._attached:  # probe train built the model from the spec itself
            return {"epoch": epoch, **(metrics or {})}
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
        if optimizer is not None:
            self._check_optimizer(epoch, model, optimizer)
            if epoch > 0 and "lr" not in row:
                row["lr"] = float(optimizer.param_groups[0]["lr"])
        return row

    def _check_optimizer(self, epoch: int, model: torch.nn.Module, optimizer: Any) -> None:
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
                            f"({str(v.dtype).removeprefix('torch.')}), which a probe checkpoint cannot "
                            "store (SGD and Adam(W) states only); record with optimizer=None"
                        )

    def _check_dir(self, force: bool) -> None:
        from probe.rundir.prepare import _has_content, check_run_dir

        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise UsageError("run_dir", f"{d} exists and is not a directory")
        if d.is_dir() and not force and _has_content(d):
            raise UsageError(
                "run_dir",
                f"{d} already exists and is not empty; pick another run directory, or pass "
                "force=True (--force) to replace the probe run there",
            )
        check_run_dir(
            d, resume=False, force=force
        )  # force: only a probe run holding nothing foreign is replaced

    # --- writing -----------------------------------------------------------------------------------
    def _open(self) -> None:
        """Create and lock the run directory, replace an old run (force), and write what is stored once."""
        from probe.rundir.prepare import (
            _has_content,
            check_run_dir,
            clear_run,
            remove_training_temps,
        )

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProbeError(
                f"{self.run_dir}: cannot create the run directory ({exc.strerror or exc})"
            ) from None
        self._stack.enter_context(
            lock.hold(self.run_dir, command=(self.source or {}).get("kind", "record"))
        )
        try:
            check_run_dir(self.run_dir, resume=False, force=self.force, locked=True)
            if self.force and _has_content(self.run_dir):
                clear_run(self.run_dir)
            remove_training_temps(self.run_dir)
            self.write_static(_resolved(self.device, self.seed))
        except BaseException:
            self._stack.close()
            raise
        self._opened = True

    def _config(self, resolved: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "format": "probe-run/1",
            "train": self.train,
            "model_spec": self.spec.to_dict(),
            "num_params": sum(p.numel() for p in self.spec.skeleton().parameters()),
            "augmentation": self.augmentation,
            "config_hash": self.config_hash,
            "data_source": self.dataset.source,
            "classes": list(self.dataset.classes),
            **resolved,
        }
        if self.source is not None:
            config["source"] = self.source
        return config

    def _write_config(self) -> None:
        atomic.write_json(self.run_dir / rundir.CONFIG, self._config(self._resolved_info))

    def write_static(self, resolved: dict[str, Any]) -> None:
        """config.json, the probe set and the analysis batch: what the first epoch stores once."""
        from safetensors.torch import save_file

        self._resolved_info = resolved
        self._write_config()
        ds = self.dataset
        for rel, x, y, idx in (
            (
                rundir.PROBE_SET,
                ds.test_x[self.probe_idx],
                ds.test_y[self.probe_idx],
                self.probe_idx,
            ),
            (
                rundir.ANALYSIS_BATCH,
                ds.train_x[self.analysis_src],
                ds.train_y[self.analysis_src],
                self.analysis_src,
            ),
        ):
            tensors = {
                "images": x.contiguous(),
                "labels": y.contiguous(),
                "indices": idx.contiguous(),
            }
            atomic.write_with(self.run_dir / rel, lambda tmp, t=tensors: save_file(t, str(tmp)))

    # --- validation ----------------------------------------------------------------------------------
    def _input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = _data.normalize(x_uint8, self.spec.mean, self.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def validate(
        self, model: torch.nn.Module, recorder: activations.ActivationRecorder
    ) -> dict[str, float]:
        """Loss and accuracy over the validation split in eval mode; the probe set's activations go to `recorder`."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = self.val_x.shape[0]
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )
        for start in range(0, n, self.val_batch_size):
            x = self._input(self.val_x[start : start + self.val_batch_size])
            y = self.val_y[start : start + self.val_batch_size]
            with autocast:
                logits = model(x).float()
            recorder.after_batch(logits)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return {"val_loss": loss_sum.item() / n, "val_acc": correct.item() / n}


def weight_norm(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(list(model.parameters())))
        ).item()


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl whole and atomically (it is tiny), so it is never torn by us."""
    lines = [jsonsafe.dumps(row, sort_keys=True) for row in history]
    atomic.write_text(run_dir / rundir.METRICS, "\n".join(lines) + "\n")
