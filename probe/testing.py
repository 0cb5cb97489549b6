"""Test helpers for probe and for plugin authors: a tiny, real run made in seconds.

Installed as a pytest plugin (entry point `pytest11`), so any test can ask for the
`probe_run` fixture: a run directory trained for 2 epochs on synthetic CIFAR-shaped
data with a width-4 CNN, with every file a real run has.

    def test_my_analysis(probe_run):
        from probe.analysis.runner import run_analyses
        (outcome,) = run_analyses(probe_run, ["my-analysis"], "last")
        assert outcome.status == "ok"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from probe.contract.families import FAMILY_OPTIONS
from probe.contract.registry import PluginInfo, Registry, lookup, reset_registry
from probe.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from probe.training.config import FIELDS, TrainConfig

TINY = dict(
    epochs=2,
    subset_train_size=0,
    batch_size=32,
    val_batch_size=64,
    base_width=4,
    probe_set_size=40,
    analysis_batch_size=64,
    lr=0.05,
    optimizer="SGD_mom",
    seed=0,
    device="cpu",
)


def synthetic_dataset(
    n_train: int = 320,
    n_test: int = 120,
    seed: int = 0,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
):
    """CIFAR-shaped (or `channels` x `size` x `size`) uint8 images, learnable in an epoch.

    Each class sets a colour and a stripe pattern, plus noise. Normalised with CIFAR-10's
    statistics when RGB, else with their own.
    """
    import torch

    from probe.datasets.tensors import Dataset  # torch

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(num_classes, channels, 1, 1, generator=g) * 160 + 40
    stripes = (
        torch.arange(size).view(1, 1, 1, size) % (torch.arange(num_classes).view(-1, 1, 1, 1) + 2)
        == 0
    ).float() * 50

    def split(n: int):
        y = torch.arange(n) % num_classes
        noise = torch.randn(n, channels, size, size, generator=g) * 30
        x = (base[y] + stripes[y] + noise).clamp(0, 255).to(torch.uint8)
        return x, y

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    classes = (
        CIFAR10_CLASSES[:num_classes]
        if num_classes <= 10
        else tuple(f"class{i}" for i in range(num_classes))
    )
    rgb = channels == 3
    return Dataset(
        train_x,
        train_y,
        test_x,
        test_y,
        classes=classes,
        source="synthetic",
        mean=CIFAR10_MEAN if rgb else None,
        std=CIFAR10_STD if rgb else None,
    )


def registry_with(*plugin_objs: Any) -> Any:
    """Register plugin objects (or modules) in-process as the process-wide registry; returns it.

    For testing a plugin without installing it: `registry_with(MyPlugin())`, then
    `run_analyses(probe_run, ["mine"], "last")`. Reset it afterwards with
    `probe.contract.registry.reset_registry(None)` (probe's own tests use a `fresh_registry`
    fixture).
    """
    reg = Registry()
    for i, obj in enumerate(plugin_objs):
        reg.register(obj, PluginInfo(f"test{i}", "tests", "tests", "0"))
    reset_registry(reg)
    return reg


def make_tiny_run(run_dir: str | Path, dataset: Any = None, **overrides: Any) -> Path:
    """Train a tiny run into `run_dir` (about 2-5 s on a laptop CPU).

    `overrides` are TrainConfig fields (`model="resnet"`, `model_params=("depth=8",)`);
    `dataset` replaces the synthetic CIFAR-shaped data (e.g. `synthetic_dataset(channels=1,
    size=28)` for an MLP).
    """
    from probe.training.loop import train  # torch

    # TINY's older options (base_width) only where the family takes them
    family = lookup("models", overrides.get("model", FIELDS["model"].default))
    takes = family.options if family is not None else {}
    tiny = {k: v for k, v in TINY.items() if k not in FAMILY_OPTIONS or k in takes}
    cfg = TrainConfig(**{**tiny, **overrides})
    return train(run_dir, cfg, quiet=True, dataset=dataset or synthetic_dataset(seed=cfg.seed))


def make_image_folder(
    root: Path, n_train: int = 3, n_test: int = 2, classes: int = 10, seed: int = 0
) -> Path:
    """A tiny CIFAR-like folder dataset: root/{train,test}/<class>/NNNN.png."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    d / f"{i:04d}.png"
                )
    return root


@pytest.fixture(scope="session")
def probe_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("probe-template") / "run")


@pytest.fixture
def probe_run(probe_run_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of a tiny trained run (epochs 0-2), safe to analyse and modify."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(probe_run_template, dst)
    return dst
