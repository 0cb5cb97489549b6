"""The run writer as one unit: one plan, one order of writes, the same files from every front.

`probe train`, `probe import` and `probe.Recorder` build a RunPlan and write through one
RunWriter (probe/rundir/writer.py). Here: the writer's order of writes and its lock, that
the three fronts draw the same plan from the same seed and sizes, and that for one model
they write the same stored batches, dumps, checkpoint weights and validation metrics.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import probe
from probe.errors import UsageError
from probe.io import atomic
from probe.rundir.lock import LOCK_FILE
from probe.rundir.run import TRAIN_DEFAULTS, Run
from probe.rundir.writer import RunWriter
from probe.testing import TINY, make_tiny_run, synthetic_dataset
from probe.training.config import TrainConfig
from probe.training.importer import import_checkpoints
from probe.training.trainplan import train_plan

# probe train as import and the recorder validate: not channels-last, their validation batch size.
SHARED = dict(channels_last=False, val_batch_size=256, probe_set_size=40, analysis_batch_size=64)


def tiny_plan(run_dir: Path, **overrides):
    cfg = TrainConfig(**{**TINY, **SHARED, **overrides})
    return cfg, train_plan(cfg, synthetic_dataset(seed=cfg.seed), run_dir, torch.device("cpu"))


def test_the_writer_writes_in_the_documented_order_under_its_lock(tmp_path, monkeypatch):
    """config, probe set, analysis batch, recorded examples; then per epoch dump, the examples'
    logits, checkpoint, metrics; all locked."""
    _, plan = tiny_plan(tmp_path / "run")
    written: list[tuple[str, bool]] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        rel = Path(dst).relative_to(plan.run_dir).as_posix()
        written.append((rel, (plan.run_dir / LOCK_FILE).exists()))

    model = plan.spec.build()
    with RunWriter(plan) as writer:
        writer.open()
        monkeypatch.setattr(atomic.os, "replace", spy)
        writer.write_static()
        for epoch in (0, 1):
            writer.record(epoch, model, {"train_loss": 1.0} if epoch else {})
        monkeypatch.undo()
        assert (plan.run_dir / LOCK_FILE).exists()
    assert not (plan.run_dir / LOCK_FILE).exists()  # released on leaving the with block
    names = [n for n, _ in written]
    assert names == [
        "config.json",
        "data/probe_set.safetensors",
        "data/analysis_batch.safetensors",
        "data/examples.safetensors",
        "activations/epoch_0000.h5",
        "predictions/epoch_0000.safetensors",
        "checkpoints/epoch_0000.safetensors",
        "metrics.jsonl",
        "activations/epoch_0001.h5",
        "predictions/epoch_0001.safetensors",
        "checkpoints/epoch_0001.safetensors",
        "metrics.jsonl",
    ]
    assert all(locked for _, locked in written)
    rows = Run(plan.run_dir).metrics()
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["train_loss"] == 1.0


def test_a_second_writer_of_one_run_is_refused_while_the_first_holds_it(tmp_path):
    _, plan = tiny_plan(tmp_path / "run")
    with RunWriter(plan) as first:
        first.open()
        with pytest.raises(UsageError, match="is being trained by pid"):
            RunWriter(plan).open()
    second = RunWriter(plan)
    second.open()  # the first let go
    second.close()


def test_epochs_go_to_the_writer_once_and_in_order(tmp_path):
    _, plan = tiny_plan(tmp_path / "run")
    model = plan.spec.build()
    with RunWriter(plan) as writer:  # never opened: it opens itself at the first record
        writer.record(0, model, {})
        assert (plan.run_dir / "config.json").is_file() and (plan.run_dir / LOCK_FILE).exists()
        with pytest.raises(UsageError, match=r"epoch 0 recorded after epoch 0.*next: 1"):
            writer.record(0, model, {})
    assert Run(plan.run_dir).epochs() == [0]


def test_the_three_fronts_draw_the_same_plan_from_the_same_seed(tmp_path):
    cfg, trained = tiny_plan(tmp_path / "a")
    rec = probe.Recorder(
        tmp_path / "c",
        model=trained.spec,
        dataset=trained.dataset,
        probe_set_size=cfg.probe_set_size,
        analysis_batch_size=cfg.analysis_batch_size,
        seed=cfg.seed,
        device="cpu",
    )
    recorded = rec.plan
    for field in ("train_indices", "probe_indices", "val_order", "analysis_indices"):
        assert torch.equal(getattr(recorded, field), getattr(trained, field)), field
    assert recorded.layers == trained.layers and recorded.spec == trained.spec
    rec.close()
    assert not (tmp_path / "c").exists()  # a recorder that recorded nothing made nothing


def test_the_three_fronts_write_the_same_files_for_one_model(tmp_path):
    """A trained run, the same checkpoints imported, and recorded from a loop: the same bytes of
    stored batches, the same dumps, weights and validation metrics; config.json differs only
    where docs/run-directory.md says ("Runs probe did not train")."""
    cfg = TrainConfig(**{**TINY, **SHARED})
    ds = synthetic_dataset(seed=cfg.seed)
    trained = Run(make_tiny_run(tmp_path / "trained", dataset=ds, **SHARED))
    sizes = dict(probe_set_size=40, analysis_batch_size=64, seed=cfg.seed, device="cpu")
    spec = trained.load_checkpoint(0).spec
    imported = Run(
        import_checkpoints(trained.path / "checkpoints", tmp_path / "imp", spec, ds, **sizes)
    )
    with probe.Recorder(tmp_path / "rec", model=spec, dataset=ds, epochs=2, **sizes) as rec:
        for epoch in trained.epochs():
            rec.record(epoch, trained.model(epoch))
    recorded = Run(tmp_path / "rec")
    for rel in ("data/probe_set.safetensors", "data/analysis_batch.safetensors"):
        want = (trained.path / rel).read_bytes()
        assert (imported.path / rel).read_bytes() == want == (recorded.path / rel).read_bytes()
    for run in (imported, recorded):
        assert run.epochs() == trained.epochs() == [0, 1, 2]
        for epoch in run.epochs():
            assert_same_dump(run.activations_path(epoch), trained.activations_path(epoch))
            a = load_file(run.checkpoint_path(epoch))
            b = load_file(trained.checkpoint_path(epoch))
            assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("model/"))
        for got, want in zip(run.metrics(), trained.metrics(), strict=True):
            for key in ("epoch", "val_loss", "val_acc", "weight_norm"):
                assert got[key] == want[key], (run.path.name, got["epoch"], key)
        differ = {
            k
            for k in trained.config.keys() | run.config.keys()
            if trained.config.get(k) != run.config.get(k)
        }
        assert differ == {"train", "source", "config_hash", "augmentation"}, differ
        assert run.config["train"]["epochs"] == 2


def assert_same_dump(got: Path, want: Path) -> None:
    with h5py.File(got) as f, h5py.File(want) as g:
        assert dict(f.attrs).keys() == dict(g.attrs).keys()
        assert f.attrs["format"] == g.attrs["format"] and f.attrs["epoch"] == g.attrs["epoch"]
        assert [str(x) for x in f.attrs["layers"]] == [str(x) for x in g.attrs["layers"]]
        assert sorted(f["pooled"]) == sorted(g["pooled"]) and sorted(f["maps"]) == sorted(g["maps"])
        for name in f["pooled"]:
            np.testing.assert_array_equal(f["pooled"][name][()], g["pooled"][name][()])
        np.testing.assert_array_equal(f["logits"][()], g["logits"][()])


def test_the_format_defaults_of_a_train_table_are_probe_trains():
    """What a `train` table lacks is read (and keyed) as these: every config key is
    there, at its default."""
    for f in dataclasses.fields(TrainConfig):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        have = TRAIN_DEFAULTS[f.name]
        assert (list(have) if isinstance(have, tuple) else have) == default, f.name
