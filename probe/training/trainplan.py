"""From `probe train`'s config to the run plan its writer writes, and the checks made first.

Everything `probe train` could refuse is refused before anything is touched:
`preflight` checks what needs no data (the run directory's path, the model family and
data set being installed, and for CIFAR-10, whose image shape is known without loading
it, the model itself); `model_spec` checks the model against the loaded data set. The
plan (probe.rundir.plan.RunPlan) then fixes the training subset, the probe set, the
validation order and the analysis batch from the config's seed, as probe.Recorder's
plan does from its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from probe.contract.datasets import get_source
from probe.contract.families import ModelSpec, get_family
from probe.datasets import tensors as data
from probe.errors import UsageError
from probe.rundir.plan import RunPlan
from probe.rundir.prepare import check_path
from probe.rundir.run import CONFIG, Run
from probe.training.config import TrainConfig, from_dict
from probe.training.model import (
    CIFAR10_CLASSES,
    CIFAR10_INPUT,
    check_model,
    input_spec,
    spec_from_config,
)


def preflight(cfg: TrainConfig, run_dir: Path, option: str = "--run-dir") -> None:
    """Everything training would reject later that needs no data, checked before anything is
    touched.

    The run directory's path (`check_path`), that `--model` and `--dataset` are
    installed, and for CIFAR-10 (whose image shape is known without loading it)
    the model itself: its size, its fit, and `--full-maps` layer names, on the meta
    device (nothing allocated). Other data sets are checked the same way once
    loaded (`model_spec`). `option` names what to fix in a path error (`--run-dir`,
    or a sweep point).
    """
    check_path(run_dir, option)
    get_family(cfg.model, option="--model")
    get_source(cfg.dataset)
    if cfg.dataset != "cifar10":
        return
    spec = spec_from_config(cfg, CIFAR10_INPUT, len(CIFAR10_CLASSES))
    check_model(spec, max(cfg.batch_size, cfg.val_batch_size), full_maps=cfg.full_maps)


def model_spec(cfg: TrainConfig, ds: data.Dataset) -> ModelSpec:
    """The spec of the model `cfg` trains on `ds`, sized and checked on the meta device (nothing
    allocated).

    The input is the data set's image shape and normalisation (computed on the
    training subset when the data set gives none). Also checks `--full-maps`
    against the model's layers. Every problem is one UsageError naming the option.
    """
    subset = data.train_subset(ds, cfg.subset_train_size, cfg.seed)
    spec = spec_from_config(cfg, input_spec(ds.train_x[subset], ds.mean, ds.std), len(ds.classes))
    check_model(spec, max(cfg.batch_size, cfg.val_batch_size), full_maps=cfg.full_maps)
    return spec


def train_plan(
    cfg: TrainConfig,
    ds: data.Dataset,
    run_dir: Path,
    device: torch.device,
    spec: ModelSpec | None = None,
) -> RunPlan:
    """The plan of training `cfg` on `ds` into `run_dir` (`spec`: model_spec(cfg, ds), if known)."""
    augmentation = ds.augmentation if cfg.augment else None
    return RunPlan(
        run_dir=run_dir,
        spec=spec or model_spec(cfg, ds),
        dataset=ds,
        device=device,
        train=cfg.to_dict(),
        train_indices=data.train_subset(ds, cfg.subset_train_size, cfg.seed),
        seed=cfg.seed,
        probe_set_size=cfg.probe_set_size,
        analysis_batch_size=cfg.analysis_batch_size,
        val_size=cfg.val_size,
        val_batch_size=cfg.val_batch_size,
        full_maps=cfg.full_maps,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        config_hash=cfg.hash(),
        augmentation=augmentation.to_dict() if augmentation else None,
        example_records=cfg.example_records,
    )


def stored_config(run: Run) -> TrainConfig:
    """The config a run of probe train was trained with (config.json's `train`), values checked."""
    return from_dict(run.config["train"], str(run.path / CONFIG))


def refuse_foreign_resume(run_dir: Path) -> None:
    """`--resume` continues only what probe train wrote: a recorded or imported run is one line
    saying why not."""
    source = Run(run_dir).config.get("source")
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
