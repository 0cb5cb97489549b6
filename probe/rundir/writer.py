"""The run writer: the one code path that writes a run directory, whichever way the run is made.

`probe train`, `probe.Recorder` and `probe import` each build a `RunPlan`
(probe.rundir.plan) and hand it to a `RunWriter`, which

1. opens the run (`open`): creates the directory, takes its lock (one writer per run,
   probe.rundir.lock), checks it again under the lock with probe.rundir.prepare's rules
   (it may have changed since the caller's first check), replaces an old probe run when
   forced, and removes the temporaries a killed writer left;
2. writes what is stored once (`write_static`): config.json, the probe set, the analysis
   batch;
3. records each epoch (`record`): validates the model, the probe set first so that its
   activations are captured on the way (probe.rundir.validation), then writes the
   activation dump, the checkpoint and metrics.jsonl, in that order, each atomically.
   The checkpoint marks the epoch complete, so a crash at any moment loses at most the
   epoch in progress (docs/run-directory.md, "Completeness and atomicity").

A writer nobody opened opens itself and writes what is stored once at its first record,
so a loop whose first record is refused leaves nothing behind (probe.Recorder). A run
being resumed is taken over with `last_good_checkpoint` and `continue_after`.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from probe.errors import ProbeError, RunFileError, UsageError
from probe.io import atomic, jsonsafe, safeio
from probe.rundir import checkpoint, lock, prepare
from probe.rundir.activations import ActivationRecorder
from probe.rundir.plan import RunPlan
from probe.rundir.run import (
    ANALYSIS_BATCH,
    CONFIG,
    EXAMPLES,
    METRICS,
    PROBE_SET,
    Run,
    activations_name,
    checkpoint_name,
    predictions_name,
)
from probe.rundir.validation import example_logits, validate, weight_norm
from probe.version import __version__

Log = Callable[[str], None]


def resolved_info(device: torch.device, seed: int) -> dict[str, Any]:
    """What config.json records of where the run was written: versions, device, seed."""
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


MAX_METRIC_CHARS = 10_000  # a metric string (an optimizer's name, a note): not a document
MAX_METRIC_KEYS = 1_000
METRICS_ROW_MARGIN = 512  # what the writer adds to each row (val_loss, timings, ...)


def metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why a metrics row could not be read back by probe's JSON reader (None: it could)."""
    if len(metrics) > MAX_METRIC_KEYS:
        return f"{len(metrics):,} metrics, more than {MAX_METRIC_KEYS:,}"
    for k, v in metrics.items():
        if not isinstance(k, str) or len(k) > 200:
            return f"{str(k)[:40]!r}: a metric name is a string of at most 200 characters"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**safeio.MAX_INT_DIGITS:
            return f"{k}: an integer of more than {safeio.MAX_INT_DIGITS} digits"
        if isinstance(v, str) and len(v) > MAX_METRIC_CHARS:
            return f"{k}: a string of {len(v):,} characters (at most {MAX_METRIC_CHARS:,})"
    return None


class RunWriter:
    """Writes one run directory from its plan (module docstring). Use it as a context manager,
    or call `close()`: that releases the lock."""

    def __init__(self, plan: RunPlan, *, force: bool = False, log: Log | None = None):
        self.plan = plan
        self.run_dir = plan.run_dir
        self.force = force
        self.log: Log = log or (lambda s: None)
        # The validation split in the plan's order, on the device once for every epoch.
        self.val_x = plan.dataset.test_x[plan.val_order].to(plan.device)
        self.val_y = plan.dataset.test_y[plan.val_order].to(plan.device)
        ex = plan.example_indices
        self.examples_x = plan.dataset.train_x[ex].to(plan.device) if len(ex) else None
        self.history: list[dict[str, Any]] = []
        self.last_epoch: int | None = None
        self._stack = contextlib.ExitStack()
        self._opened = False
        self._resolved: dict[str, Any] = {}
        self._t_last = time.perf_counter()

    # --- opening and closing ---------------------------------------------------------------------
    def open(self, *, resume: bool = False) -> None:
        """Create and lock the run directory; check it under the lock; replace an old run (force);
        remove the temporaries of a killed writer."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProbeError(
                f"{self.run_dir}: cannot create the run directory ({exc.strerror or exc})"
            ) from None
        self._stack.enter_context(lock.hold(self.run_dir, command=self.plan.command))
        try:
            prepare.check_run_dir(self.run_dir, resume=resume, force=self.force, locked=True)
            if self.force and prepare.has_content(self.run_dir):
                prepare.clear_run(self.run_dir)
            prepare.remove_training_temps(self.run_dir)  # what a killed process was writing
        except BaseException:
            self._stack.close()
            raise
        self._opened = True

    def close(self) -> None:
        """Release the run's lock (a writer that wrote nothing leaves nothing behind)."""
        self._stack.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a loop that never calls close(): release the lock at the end
        with contextlib.suppress(Exception):
            self._stack.close()

    def _open_at_first_record(self) -> None:
        self.open()
        try:
            self.write_static()
        except BaseException:
            self._stack.close()
            self._opened = False
            raise

    # --- what is stored once ----------------------------------------------------------------------
    def write_static(self) -> None:
        """config.json, then the probe set and the analysis batch (images, labels, indices)."""
        from safetensors.torch import save_file  # as probe.rundir.checkpoint does

        self._resolved = resolved_info(self.plan.device, self.plan.seed)
        self._write_config()
        ds, probe, batch = self.plan.dataset, self.plan.probe_indices, self.plan.analysis_indices
        stored = [
            (PROBE_SET, ds.test_x[probe], ds.test_y[probe], probe),
            (ANALYSIS_BATCH, ds.train_x[batch], ds.train_y[batch], batch),
        ]
        ex = self.plan.example_indices
        if len(ex):
            stored.append((EXAMPLES, ds.train_x[ex], ds.train_y[ex], ex))
        for rel, x, y, idx in stored:
            tensors = {
                "images": x.contiguous(),
                "labels": y.contiguous(),
                "indices": idx.contiguous(),
            }
            atomic.write_with(self.run_dir / rel, lambda tmp, t=tensors: save_file(t, str(tmp)))

    def _write_config(self) -> None:
        # A plan without a planned number of epochs shows the epochs recorded so far.
        epochs = self.last_epoch if self.plan.train.get("epochs") is None else None
        atomic.write_json(self.run_dir / CONFIG, self.plan.config(self._resolved, epochs))

    def rewrite_train(self) -> None:
        """Resuming: config.json's `train` table becomes the plan's (more epochs, a device)."""
        stored = Run(self.run_dir).config
        atomic.write_json(self.run_dir / CONFIG, {**stored, "train": dict(self.plan.train)})

    # --- resuming ---------------------------------------------------------------------------------
    def last_good_checkpoint(self) -> checkpoint.Checkpoint | None:
        """The newest checkpoint that loads and verifies; later damaged ones are logged, skipped."""
        run = Run(self.run_dir)
        for epoch in reversed(run.epochs()):
            try:
                return run.load_checkpoint(epoch)
            except RunFileError as exc:
                self.log(f"warning: {exc}; resuming from an earlier epoch")
        return None

    def check_model(self, ckpt: checkpoint.Checkpoint) -> None:
        """Refuse to continue a checkpoint of another model than the plan's."""
        if ckpt.spec != self.plan.spec:
            raise RunFileError(
                ckpt.path,
                f"holds a different model ({ckpt.spec.describe()}) than {CONFIG} "
                f"describes ({self.plan.spec.describe()})",
            )

    def continue_after(self, ckpt: checkpoint.Checkpoint) -> None:
        """Take the run over after `ckpt`'s epoch: the metrics up to it (from metrics.jsonl, else
        from the checkpoints, which hold each epoch's row too); later checkpoints are removed."""
        run = Run(self.run_dir)
        if not run.has_examples():  # a run begun before per-example records: none are added
            self.examples_x = None
        try:
            history = [m for m in run.metrics() if m["epoch"] <= ckpt.epoch]
        except RunFileError as exc:
            self.log(f"warning: {exc}; rebuilding {METRICS} from the checkpoints")
            history = []
        have = {m["epoch"] for m in history}
        history += [
            run.load_checkpoint(e).metrics
            for e in run.epochs()
            if e <= ckpt.epoch and e not in have
        ]
        history.sort(key=lambda m: m["epoch"])
        for e in run.epochs():
            if e > ckpt.epoch:
                run.checkpoint_path(e).unlink(missing_ok=True)
                (self.run_dir / predictions_name(e)).unlink(missing_ok=True)
        self.history, self.last_epoch = history, ckpt.epoch

    # --- one epoch --------------------------------------------------------------------------------
    def check_epoch(self, epoch: Any) -> None:
        """Each epoch once, in order: anything else is one line, before anything is written."""
        if type(epoch) is not int or not 0 <= epoch < 10**9:
            raise UsageError("epoch", f"expected a whole number >= 0, got {epoch!r}")
        if self.last_epoch is not None and epoch != self.last_epoch + 1:
            raise UsageError(
                "epoch",
                f"epoch {epoch} recorded after epoch {self.last_epoch}; record each epoch once, "
                f"in order (next: {self.last_epoch + 1}); nothing was written",
            )

    def record(
        self,
        epoch: int,
        model: torch.nn.Module,
        metrics: Mapping[str, Any],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        rng: dict[str, torch.Tensor] | None = None,
        started: float | None = None,
    ) -> dict[str, Any]:
        """Validate `model`, then write epoch `epoch`'s dump, checkpoint and metrics (its row).

        `metrics`: what the caller measured (checked by the caller); the row adds val_loss,
        val_acc, val_seconds, weight_norm, epoch_seconds and output_seconds. `started`: the
        epoch's `time.perf_counter()` start (default: the end of the previous record).
        """
        t0 = self._t_last if started is None else started
        self.check_epoch(epoch)
        self.check_writable(epoch, metrics, rng, optimizer is not None)
        row: dict[str, Any] = {"epoch": epoch, **metrics}
        t_val = time.perf_counter()
        was_training = model.training
        dump = ActivationRecorder(
            model, self.plan.layers, self.plan.full_maps, len(self.plan.probe_indices)
        )
        try:
            row.update(validate(self.plan, model, self.val_x, self.val_y, dump))
        finally:
            dump.close()
            model.train(was_training)
        logits = None
        if self.examples_x is not None:  # after the dump's hooks are gone: not in the dump
            try:
                logits = example_logits(self.plan, model, self.examples_x)
            finally:
                model.train(was_training)
        row["val_seconds"] = time.perf_counter() - t_val
        row["weight_norm"] = weight_norm(model)
        if not self._opened:
            self._open_at_first_record()
        t_out = time.perf_counter()
        dump.write(self.run_dir / activations_name(epoch), epoch)
        if logits is not None:  # before the checkpoint, which completes the epoch
            from safetensors.torch import save_file

            atomic.write_with(
                self.run_dir / predictions_name(epoch),
                lambda tmp: save_file({"logits": logits}, str(tmp)),
            )
        # the checkpoint's own copy: before its write
        row["epoch_seconds"] = time.perf_counter() - t0
        checkpoint.save(
            self.run_dir / checkpoint_name(epoch),
            epoch=epoch,
            model=model,
            spec=self.plan.spec,
            metrics=row,
            config_hash=self.plan.config_hash,
            optimizer=optimizer,
            rng=rng,
        )
        row["output_seconds"] = time.perf_counter() - t_out
        row["epoch_seconds"] = time.perf_counter() - t0
        self.history = [h for h in self.history if h["epoch"] < epoch] + [row]
        self.last_epoch = epoch
        if self.plan.train.get("epochs") is None:
            self._write_config()
        self.write_metrics()
        self._t_last = time.perf_counter()
        return row

    def check_writable(
        self, epoch: int, metrics: Mapping[str, Any], rng: Any, with_optimizer: bool
    ) -> None:
        """Refuse, before a byte of the epoch is written, what a reader of the run would refuse:
        metric values its JSON reader rejects (integers over 40 digits, strings over
        MAX_METRIC_CHARS), a metrics.jsonl over the reader's 64 MiB, random-number states a
        checkpoint cannot hold, and a run directory that was removed while recording."""
        why = metrics_problem(metrics)
        if why is None:
            row = jsonsafe.dumps({"epoch": epoch, **metrics}, sort_keys=True)
            total = len(row) + sum(len(jsonsafe.dumps(h, sort_keys=True)) for h in self.history)
            if total + METRICS_ROW_MARGIN * (len(self.history) + 1) > safeio.MAX_JSON_BYTES:
                why = (
                    f"metrics.jsonl would pass the {safeio.MAX_JSON_BYTES >> 20} MiB its "
                    "reader accepts"
                )
        if why:
            raise UsageError("metrics", f"epoch {epoch}: {why}; nothing was written")
        if rng is not None:
            if not isinstance(rng, Mapping):
                raise UsageError("rng", f"expected a dict of tensors, got {type(rng).__name__}")
            why = checkpoint.rng_problem(dict(rng), required=with_optimizer)
            if why:
                raise UsageError("rng", f"epoch {epoch}: {why}; nothing was written")
        if self._opened and not (self.run_dir / CONFIG).is_file():
            raise ProbeError(
                f"{self.run_dir}: the run directory was removed or emptied while recording "
                f"(no {CONFIG}); epoch {epoch} was not written"
            )

    def write_metrics(self) -> None:
        """Rewrite metrics.jsonl whole and atomically (it is tiny), so it is never torn by us."""
        lines = [jsonsafe.dumps(row, sort_keys=True) for row in self.history]
        atomic.write_text(self.run_dir / METRICS, "\n".join(lines) + "\n")
