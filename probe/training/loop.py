"""`probe train`: the training loop and the run directory it writes.

The loop is deliberately plain (nanoGPT / airbench style): data are uint8 tensors
on the device, a batch is an index, augmentation and normalisation are batched
tensor ops, and per-step statistics stay on the device until the epoch ends (one
host sync per epoch, not one per step or per parameter).

Each epoch ends by writing, in this order: the activation dump, the checkpoint
(with optimizer and RNG states), then metrics.jsonl. Every write is atomic, and the
checkpoint is what marks an epoch complete, so a crash at any moment loses at most
the epoch in progress and `--resume` continues bit-for-bit (on the CPU).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probe.contract.families import ModelSpec
from probe.datasets import tensors as data
from probe.errors import ProbeError, RunFileError, UsageError
from probe.io import atomic
from probe.numerics.device import resolve_device
from probe.rundir import checkpoint, lock
from probe.rundir import run as rundir
from probe.rundir.prepare import (
    _has_content,
    check_path,
    check_run_dir,
    clear_run,
    preflight,
    remove_training_temps,
)
from probe.training.config import TrainConfig
from probe.training.model import check_model, input_spec, spec_from_config
from probe.training.recorder import Recorder, write_metrics
from probe.training.recorder import _resolved as recorder_resolved

Log = Callable[[str], None]


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "SGD_mom":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "Adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for training epoch `epoch` (1-based); a pure function, so resume needs no scheduler state."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(1, cfg.epochs)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** ((epoch - 1) // cfg.step_size)
    return cfg.lr


def rng_states(gen: torch.Generator) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    gen.set_state(states["data"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def model_spec(cfg: TrainConfig, ds: data.Dataset) -> ModelSpec:
    """The spec of the model `cfg` trains on `ds`, sized and checked on the meta device (nothing allocated).

    The input is the data set's image shape and normalisation (computed on the
    training subset when the data set gives none). Also checks `--full-maps`
    against the model's layers. Every problem is one UsageError naming the option.
    """
    subset = data.train_subset(ds, cfg.subset_train_size, cfg.seed)
    spec = spec_from_config(cfg, input_spec(ds.train_x[subset], ds.mean, ds.std), len(ds.classes))
    check_model(spec, max(cfg.batch_size, cfg.val_batch_size), full_maps=cfg.full_maps)
    return spec


class Trainer:
    """Holds the tensors, model and optimizer of one run; `fit()` runs the epochs, a `probe.Recorder` writes them."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        device: torch.device,
        ds: data.Dataset,
        log: Log,
        progress: bool,
        spec: ModelSpec | None = None,
    ):
        self.run_dir, self.cfg, self.device, self.log, self.progress = (
            run_dir,
            cfg,
            device,
            log,
            progress,
        )
        self.spec = spec or model_spec(cfg, ds)
        self.augmentation = ds.augmentation if cfg.augment else None
        subset = data.train_subset(ds, cfg.subset_train_size, cfg.seed)
        self.train_x = ds.train_x[subset].to(device)
        self.train_y = ds.train_y[subset].to(device)
        # The one writer of the run directory: the probe set, validation order and analysis batch are its.
        self.recorder = Recorder.attached(
            run_dir,
            self.spec,
            ds,
            device,
            train=cfg.to_dict(),
            config_hash=cfg.hash(),
            augmentation=self.augmentation.to_dict() if self.augmentation else None,
            probe_set_size=cfg.probe_set_size,
            analysis_batch_size=cfg.analysis_batch_size,
            subset=subset,
            seed=cfg.seed,
            val_size=cfg.val_size,
            val_batch_size=cfg.val_batch_size,
            full_maps=cfg.full_maps,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            log=log,
        )
        self.probe_idx, self.val_order = self.recorder.probe_idx, self.recorder.val_order
        self.ds = ds
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        self.model = self.spec.build().to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg, self.model)
        self.params = [p for p in self.model.parameters()]

    def write_static(self, resolved: dict[str, Any]) -> None:
        self.recorder.write_static(resolved)

    # --- one epoch ----------------------------------------------------------------------------------
    def _input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = data.normalize(x_uint8, self.spec.mean, self.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self):
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, model, opt = self.cfg, self.model, self.opt
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        zero = torch.zeros((), device=self.device)
        loss_sum, correct, gn_sum, gn_max, ratio_sum = (
            zero.clone(),
            zero.clone(),
            zero.clone(),
            zero.clone(),
            zero.clone(),
        )
        steps = range(0, n, cfg.batch_size)
        bar = _bar(steps, f"epoch {epoch}/{cfg.epochs}", self.progress)
        for start in bar:
            idx = perm[start : start + cfg.batch_size]
            xb = self.train_x[idx]
            if self.augmentation is not None:
                xb = data.augment(xb, self.gen, self.augmentation.pad, self.augmentation.flip)
            x, y = self._input(xb), self.train_y[idx]
            with self._autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            gn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            before = torch._foreach_mul(self.params, 1.0)
            opt.step()
            with torch.no_grad():
                delta = torch._foreach_sub(self.params, before)
                ratio = torch.linalg.vector_norm(
                    torch.stack(torch._foreach_norm(delta))
                ) / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
                b = y.shape[0]
                loss_sum += loss.detach() * b
                correct += (logits.argmax(1) == y).sum()
                gn_sum += gn
                gn_max = torch.maximum(gn_max, gn)
                ratio_sum += ratio
        nsteps = len(steps)
        stats = torch.stack(
            [loss_sum / n, correct / n, gn_sum / nsteps, gn_max, ratio_sum / nsteps]
        ).tolist()
        return {
            "train_loss": stats[0],
            "train_acc": stats[1],
            "grad_norm_mean": stats[2],
            "grad_norm_max": stats[3],
            "update_ratio": stats[4],
            "lr": lr,
        }

    def finish_epoch(self, epoch: int, metrics: dict[str, Any], t0: float) -> dict[str, Any]:
        """Validate (recording activations), then write dump, checkpoint and metrics, in that order (the recorder)."""
        row = self.recorder.record(
            epoch, self.model, self.opt, metrics, rng=rng_states(self.gen), started=t0
        )
        metrics.clear()
        metrics.update(row)
        return metrics

    def fit(self, start_epoch: int, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cfg = self.cfg
        self.recorder.history = list(history)
        self.recorder.last_epoch = start_epoch - 1 if start_epoch > 0 else None
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            metrics: dict[str, Any] = {"epoch": epoch}
            if epoch > 0:
                metrics.update(self.train_epoch(epoch))
                metrics["train_seconds"] = time.perf_counter() - t0
                metrics["images_per_second"] = self.train_x.shape[0] / metrics["train_seconds"]
            self.finish_epoch(epoch, metrics, t0)
            if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
                self.log(f"warning: epoch {epoch} has non-finite metrics (training diverged?)")
            self.log(summary_line(metrics, cfg.epochs))
        return self.recorder.history


def _bar(it, label: str, show: bool):
    if not show:
        return it
    import click

    return click.progressbar(it, label=label, file=sys.stderr, show_pos=True)


def summary_line(m: dict[str, Any], epochs: int) -> str:
    if m["epoch"] == 0:
        return f"epoch 0/{epochs} (init)  val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  {m['epoch_seconds']:.1f}s"
    return (
        f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  grad {m['grad_norm_mean']:.3f}  "
        f"lr {m['lr']:.4g}  {m['epoch_seconds']:.1f}s ({m['images_per_second']:.0f} img/s)"
    )


# --- resuming ---------------------------------------------------------------------------------------


def last_good_epoch(run: rundir.Run, log: Log) -> checkpoint.Checkpoint | None:
    """The newest checkpoint that loads and verifies; damaged later ones are reported and skipped."""
    for epoch in reversed(run.epochs()):
        try:
            return run.load_checkpoint(epoch)
        except RunFileError as exc:
            log(f"warning: {exc}; resuming from an earlier epoch")
    return None


def refuse_foreign_resume(run_dir: Path) -> None:
    """`--resume` continues only what probe train wrote: a recorded or imported run is one line saying why not."""
    source = rundir.Run(run_dir).config.get("source")
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind == "import":
        raise UsageError(
            "--resume",
            f"{run_dir} was made by `probe import`: its checkpoints carry no optimizer state, "
            "so probe train cannot continue it (analyse it, or train a new run)",
        )
    if kind is not None:
        raise UsageError(
            "--resume",
            f"{run_dir} was written by probe.Recorder from another training loop; continue it "
            "in that loop, probe train cannot",
        )


def train(
    run_dir: str | Path,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    progress: bool | None = None,
    log: Log | None = None,
    dataset: data.Dataset | None = None,
) -> Path:
    """Train `cfg` into `run_dir` (or continue it with resume=True); returns the run directory.

    `dataset` replaces loading CIFAR-10 (tests and the plugin-author fixture pass small synthetic data).
    """
    run_dir = Path(run_dir)
    log = log or ((lambda s: None) if quiet else (lambda s: print(s, flush=True)))
    progress = (not quiet and sys.stderr.isatty()) if progress is None else progress
    # Everything is checked before anything is touched: the directory, every option, the data.
    check_path(run_dir)
    check_run_dir(run_dir, resume=resume, force=force)
    if resume:
        refuse_foreign_resume(run_dir)
    if resume and cfg is None:
        cfg = rundir.Run(run_dir).train_config()
    if cfg is None:
        cfg = TrainConfig()
    device = resolve_device(cfg.device)
    preflight(cfg, run_dir)
    ds = dataset or data.load_dataset(
        cfg.dataset, cfg.data, quiet=quiet
    )  # fails (one line) before anything is written
    spec = model_spec(cfg, ds)  # so do a model that does not fit the data set, or is too large
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbeError(
            f"{run_dir}: cannot create the run directory ({exc.strerror or exc})"
        ) from None
    with lock.hold(run_dir):  # one writer per run; held until the last epoch is written
        check_run_dir(
            run_dir, resume=resume, force=force, locked=True
        )  # it may have changed while we loaded data
        if force and _has_content(run_dir):
            clear_run(run_dir)
        remove_training_temps(run_dir)  # what a killed process was writing
        return _train_locked(run_dir, cfg, device, ds, log, progress, resume, spec)


def _train_locked(
    run_dir: Path,
    cfg: TrainConfig,
    device: torch.device,
    ds: data.Dataset,
    log: Log,
    progress: bool,
    resume: bool,
    spec: ModelSpec,
) -> Path:
    trainer = Trainer(run_dir, cfg, device, ds, log, progress, spec)
    history: list[dict[str, Any]] = []
    start = 0
    if resume:
        run = rundir.Run(run_dir)
        ckpt = last_good_epoch(run, log)
        if ckpt is not None:
            if (
                ckpt.config_hash
                and ckpt.config_hash != cfg.hash()
                and ckpt.epoch > 0
                and cfg.schedule != "constant"
            ):
                log("warning: the config changed since this checkpoint was written")
            if ckpt.spec != trainer.spec:
                raise RunFileError(
                    ckpt.path,
                    f"holds a different model ({ckpt.spec.describe()}) than {rundir.CONFIG} "
                    f"describes ({trainer.spec.describe()})",
                )
            trainer.model.load_state_dict(ckpt.model_state)
            checkpoint.restore_optimizer(trainer.opt, trainer.model, ckpt)
            set_rng_states(ckpt.rng, trainer.gen)
            start = ckpt.epoch + 1
            try:
                history = [m for m in run.metrics() if m["epoch"] <= ckpt.epoch]
            except RunFileError as exc:  # the checkpoints hold each epoch's metrics too
                log(f"warning: {exc}; rebuilding {rundir.METRICS} from the checkpoints")
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
            log(f"resuming {run_dir} after epoch {ckpt.epoch}")
    if start == 0:
        trainer.write_static(_resolved(cfg, device))
        n = sum(p.numel() for p in trainer.model.parameters())
        log(
            f"training {n:,}-parameter {trainer.spec.describe()} on {trainer.train_x.shape[0]:,} {cfg.dataset} images, "
            f"{cfg.epochs} epochs, {device}; run directory {run_dir}"
        )
    else:
        if (
            start - 1 > cfg.epochs
        ):  # shrinking a run would make config.json contradict its checkpoints
            raise UsageError(
                "--epochs",
                f"{run_dir} already holds {start - 1} trained epochs; give --epochs {start - 1} "
                "or more to continue it (nothing was changed)",
            )
        atomic.write_json(
            run_dir / rundir.CONFIG, {**rundir.Run(run_dir).config, "train": cfg.to_dict()}
        )
    if start > cfg.epochs:
        write_metrics(
            run_dir, history
        )  # a kill after the last checkpoint left its metrics line unwritten
        log(f"{run_dir} is already complete ({cfg.epochs} epochs)")
        return run_dir
    trainer.fit(start, history)
    return run_dir


def _resolved(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    return recorder_resolved(device, cfg.seed)
