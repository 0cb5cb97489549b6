"""`probe train`: the training loop and the run directory it writes.

The loop is deliberately plain (nanoGPT / airbench style): data are uint8 tensors
on the device, a batch is an index, augmentation and normalisation are batched
tensor ops, and per-step statistics stay on the device until the epoch ends (one
host sync per epoch, not one per step or per parameter).

`train()` checks everything before anything is touched, builds the run's plan
(probe.training.trainplan) and hands each epoch to the run writer
(probe.rundir.writer), which validates it and writes, in this order, the activation
dump, the checkpoint (with optimizer and RNG states), then metrics.jsonl. Every write
is atomic, and the checkpoint is what marks an epoch complete, so a crash at any
moment loses at most the epoch in progress and `--resume` continues bit-for-bit (on
the CPU).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F

from probe.datasets import tensors as data
from probe.errors import UsageError
from probe.numerics.device import resolve_device
from probe.rundir import checkpoint
from probe.rundir.plan import RunPlan
from probe.rundir.prepare import check_path, check_run_dir
from probe.rundir.run import Run
from probe.rundir.validation import model_input
from probe.rundir.writer import RunWriter
from probe.training.config import TrainConfig
from probe.training.trainplan import (
    model_spec,
    preflight,
    refuse_foreign_resume,
    stored_config,
    train_plan,
)

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
    """Learning rate for training epoch `epoch` (1-based); a pure function, so resuming needs no
    scheduler state."""
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


class Trainer:
    """The tensors, model and optimizer of one `probe train` run; `fit()` trains its epochs and
    hands each one to the run writer."""

    def __init__(
        self, plan: RunPlan, cfg: TrainConfig, log: Log | None = None, progress: bool = False
    ):
        self.plan, self.cfg, self.progress = plan, cfg, progress
        self.log: Log = log or (lambda s: None)
        self.spec, self.device, ds = plan.spec, plan.device, plan.dataset
        self.augmentation = ds.augmentation if cfg.augment else None
        self.train_x = ds.train_x[plan.train_indices].to(self.device)
        self.train_y = ds.train_y[plan.train_indices].to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        self.model = self.spec.build().to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg, self.model)
        self.params = [p for p in self.model.parameters()]
        # The compiled module shares the model's parameters and buffers; only training steps
        # call it: validation, dumps and checkpoints use `self.model` itself (no `_orig_mod.`).
        self.forward = compiled(self.model) if cfg.compile else self.model
        self.compile_seconds: float | None = None

    def _input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return model_input(self.plan, x_uint8)

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
        loss_sum, correct, gn_sum, gn_max, ratio_sum = (zero.clone() for _ in range(5))
        steps = range(0, n, cfg.batch_size)
        for start in _bar(steps, f"epoch {epoch}/{cfg.epochs}", self.progress):
            first_compiled = cfg.compile and self.compile_seconds is None
            t_step = time.perf_counter()
            idx = perm[start : start + cfg.batch_size]
            xb = self.train_x[idx]
            if self.augmentation is not None:
                xb = data.augment(xb, self.gen, self.augmentation.pad, self.augmentation.flip)
            x, y = self._input(xb), self.train_y[idx]
            with self._autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            gn = _norm(grads)
            before = torch._foreach_mul(self.params, 1.0)
            opt.step()
            with torch.no_grad():
                delta = torch._foreach_sub(self.params, before)
                ratio = _norm(delta) / _norm(before)
                loss_sum += loss.detach() * y.shape[0]
                correct += (logits.argmax(1) == y).sum()
                gn_sum += gn
                gn_max = torch.maximum(gn_max, gn)
                ratio_sum += ratio
            if first_compiled:
                self._compiled_first_step(t_step)
        k = len(steps)
        stats = torch.stack([loss_sum / n, correct / n, gn_sum / k, gn_max, ratio_sum / k]).tolist()
        names = ("train_loss", "train_acc", "grad_norm_mean", "grad_norm_max", "update_ratio")
        return {**dict(zip(names, stats, strict=True)), "lr": lr}

    def _compiled_first_step(self, started: float) -> None:
        """Report the first compiled step's time: torch.compile builds its kernels then, so this
        is the compile cost a run pays once (per process; `--resume` pays it again)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = seconds = time.perf_counter() - started
        self.log(f"torch.compile: the first training step took {seconds:.1f}s (compiling)")

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """The model, optimizer and random-number states of a checkpoint (resuming)."""
        self.model.load_state_dict(ckpt.model_state)
        checkpoint.restore_optimizer(self.opt, self.model, ckpt)
        set_rng_states(ckpt.rng, self.gen)

    def fit(self, writer: RunWriter, start_epoch: int) -> list[dict[str, Any]]:
        """Train epochs `start_epoch`..`cfg.epochs` (0: the initialisation); `writer` records."""
        for epoch in range(start_epoch, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            metrics: dict[str, Any] = {"epoch": epoch}
            if epoch > 0:
                metrics.update(self.train_epoch(epoch))
                metrics["train_seconds"] = time.perf_counter() - t0
                metrics["images_per_second"] = self.train_x.shape[0] / metrics["train_seconds"]
            metrics = writer.record(
                epoch, self.model, metrics, self.opt, rng=rng_states(self.gen), started=t0
            )
            if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
                self.log(f"warning: epoch {epoch} has non-finite metrics (training diverged?)")
            self.log(summary_line(metrics, self.cfg.epochs))
        return writer.history


def compiled(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """`torch.compile(model)` with the backend `$PROBE_COMPILE_BACKEND` names (default inductor).

    The variable exists for tests and debugging: `aot_eager` traces the same graphs (forward and
    backward through AOTAutograd) without generating C++ kernels, in seconds instead of a minute.
    """
    backend = os.environ.get("PROBE_COMPILE_BACKEND", "inductor")
    try:
        return torch.compile(model, backend=backend)
    except Exception as exc:  # an unknown backend name, or torch.compile unsupported here
        raise UsageError(
            "--compile", f"torch.compile is not available ({str(exc).splitlines()[0][:200]})"
        ) from None


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _bar(it, label: str, show: bool):
    return click.progressbar(it, label=label, file=sys.stderr, show_pos=True) if show else it


def summary_line(m: dict[str, Any], epochs: int) -> str:
    if m["epoch"] == 0:
        return (
            f"epoch 0/{epochs} (init)  val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  "
            f"{m['epoch_seconds']:.1f}s"
        )
    return (
        f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  "
        f"train_acc {m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"val_acc {m['val_acc']:.4f}  grad {m['grad_norm_mean']:.3f}  lr {m['lr']:.4g}  "
        f"{m['epoch_seconds']:.1f}s ({m['images_per_second']:.0f} img/s)"
    )


# --- the command ----------------------------------------------------------------------------------


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def set_threads(n: int | None = None) -> int:
    """Set torch's CPU threads: `n`, or (None) torch's default less the cores the 1-minute
    load average says other jobs keep busy, at least 1. Returns the number set.

    Measured on a 2-core machine (docs/studies.md): 2 threads trained an epoch 1.3x faster
    than 1 when the machine was idle, and 1.2-1.45x slower when another job kept one core
    busy: static OpenMP threads wait for the slowest one."""
    if n is None:
        n = torch.get_num_threads()
        try:
            busy = int(os.getloadavg()[0] + 0.5)
        except OSError:  # no load average on this system
            busy = 0
        n = max(1, min(n, (os.cpu_count() or n) - busy))
    torch.set_num_threads(n)
    return n


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

    `dataset` replaces loading CIFAR-10 (tests and the plugin-author fixture pass small synthetic
    data).
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
        cfg = stored_config(Run(run_dir))
    if cfg is None:
        cfg = TrainConfig()
    device = resolve_device(cfg.device)
    preflight(cfg, run_dir)
    # Loading the data fails (one line) before anything is written; so does a model that does not
    # fit the data set, or is too large.
    ds = dataset or data.load_dataset(cfg.dataset, cfg.data, quiet=quiet)
    plan = train_plan(cfg, ds, run_dir, device, model_spec(cfg, ds))
    with RunWriter(plan, force=force, log=log) as writer:  # one writer per run, locked to the end
        writer.open(resume=resume)  # checked again under the lock: it may have changed meanwhile
        trainer = Trainer(plan, cfg, log, progress)
        start = _resume(writer, trainer) if resume else 0
        if start == 0:
            writer.write_static()
            n = sum(p.numel() for p in trainer.model.parameters())
            log(
                f"training {n:,}-parameter {plan.spec.describe()} on "
                f"{trainer.train_x.shape[0]:,} {cfg.dataset} images, {cfg.epochs} epochs, "
                f"{device}"
                + (f" ({_threads()})" if device.type == "cpu" else "")
                + f"; run directory {run_dir}"
            )
        else:
            if start - 1 > cfg.epochs:  # shrinking a run would make config.json contradict it
                raise UsageError(
                    "--epochs",
                    f"{run_dir} already holds {start - 1} trained epochs; give --epochs "
                    f"{start - 1} or more to continue it (nothing was changed)",
                )
            writer.rewrite_train()
        if start > cfg.epochs:
            writer.write_metrics()  # a kill after the last checkpoint left its metrics unwritten
            log(f"{run_dir} is already complete ({cfg.epochs} epochs)")
            return run_dir
        trainer.fit(writer, start)
    return run_dir


def _resume(writer: RunWriter, trainer: Trainer) -> int:
    """Continue after the newest checkpoint that verifies: the first epoch to train (0: none)."""
    ckpt = writer.last_good_checkpoint()
    if ckpt is None:
        return 0
    cfg = trainer.cfg
    changed = ckpt.config_hash and ckpt.config_hash != cfg.hash()
    if changed and ckpt.epoch > 0 and cfg.schedule != "constant":
        writer.log("warning: the config changed since this checkpoint was written")
    writer.check_model(ckpt)
    trainer.restore(ckpt)
    writer.continue_after(ckpt)
    writer.log(f"resuming {writer.run_dir} after epoch {ckpt.epoch}")
    return ckpt.epoch + 1
