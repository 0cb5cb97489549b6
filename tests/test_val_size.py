"""`probe train --val-size N`: validation on the probe set plus a seeded, class-stratified
rest (issue 12 item 10).

The probe set stays the first part of validation, so its activation dumps and the
trained weights are the same as with the whole validation set; only val_loss and
val_acc are computed on fewer images.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from probe.cli import cli
from probe.datasets import tensors as data
from probe.errors import UsageError
from probe.rundir import activations
from probe.rundir.plan import RunPlan
from probe.rundir.run import Run
from probe.testing import TINY, make_tiny_run, synthetic_dataset
from probe.training.config import TrainConfig
from probe.training.trainplan import stored_config, train_plan

VAL = 60  # of the synthetic set's 120 test images; the tiny run's probe set is 40


def plan_of(tmp_path: Path, **overrides) -> RunPlan:
    """The plan probe train draws for TINY with `overrides` (its probe set and validation order)."""
    cfg = TrainConfig(**{**TINY, **overrides})
    return train_plan(cfg, synthetic_dataset(seed=cfg.seed), tmp_path, torch.device("cpu"))


def test_the_subset_is_the_probe_set_then_a_stratified_seeded_rest(tmp_path):
    full, small = plan_of(tmp_path), plan_of(tmp_path, val_size=VAL)
    assert len(full.val_order) == 120 and len(small.val_order) == VAL
    assert torch.equal(small.probe_indices, full.probe_indices)
    assert torch.equal(
        small.val_order[:40], full.val_order[:40]
    )  # the probe set comes first, unchanged
    rest = small.val_order[40:]
    assert len(set(rest.tolist()) | set(small.probe_indices.tolist())) == VAL  # no image twice
    assert rest.tolist() == sorted(rest.tolist())
    labels = synthetic_dataset(seed=0).test_y
    assert Counter(labels[small.val_order].tolist()) == {
        c: 6 for c in range(10)
    }  # 4 probe + 2 rest per class
    assert torch.equal(plan_of(tmp_path, val_size=VAL).val_order, small.val_order)  # seeded
    assert not torch.equal(plan_of(tmp_path, val_size=VAL, seed=1).val_order[40:], rest)
    assert len(plan_of(tmp_path, val_size=1000).val_order) == 120  # more than there is: all
    assert plan_of(tmp_path, val_size=40).val_order.tolist() == full.val_order[:40].tolist()


def test_a_val_size_below_the_probe_set_is_a_usage_error(tmp_path):
    with pytest.raises(
        UsageError, match=r"^--val-size: must be >= --probe-set-size \(40\), got 39$"
    ):
        TrainConfig(**{**TINY, "val_size": 39})
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["train", "--run-dir", str(run_dir), "--val-size", "5", "--data", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == "error: --val-size: must be >= --probe-set-size (1000), got 5"
    assert not run_dir.exists()
    assert (
        TrainConfig(val_size=2000).hash() == TrainConfig().hash()
    )  # it does not change the weights


def test_a_small_validation_changes_only_the_validation_metrics(probe_run_template, tmp_path):
    full = probe_run_template  # the same TINY config without --val-size
    small = make_tiny_run(tmp_path / "small", val_size=VAL)
    assert stored_config(Run(small)).val_size == VAL
    ds = synthetic_dataset(seed=0)
    order = plan_of(tmp_path, val_size=VAL).val_order
    x = data.normalize(ds.test_x[order], *_stats(small))
    for epoch in (0, 1, 2):
        for layer in activations.read(Run(full).activations_path(epoch))[
            "layers"
        ]:  # probe set: unchanged
            np.testing.assert_array_equal(
                activations.read(Run(small).activations_path(epoch), layer),
                activations.read(Run(full).activations_path(epoch), layer),
            )
        a, b = (
            Run(full).load_checkpoint(epoch).model_state,
            Run(small).load_checkpoint(epoch).model_state,
        )
        assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
        with torch.no_grad():
            logits = Run(small).model(epoch)(x)
        m = {r["epoch"]: r for r in Run(small).metrics()}[epoch]
        assert m["val_acc"] == (logits.argmax(1) == ds.test_y[order]).sum().item() / VAL
        assert m["val_loss"] == pytest.approx(
            F.cross_entropy(logits, ds.test_y[order]).item(), rel=1e-4
        )
    acc_small = [r["val_acc"] * VAL for r in Run(small).metrics()]
    assert all(abs(v - round(v)) < 1e-6 for v in acc_small)  # counts of VAL images
    assert [r.get("train_loss") for r in Run(small).metrics()] == [
        r.get("train_loss") for r in Run(full).metrics()
    ]


def _stats(run: Path) -> tuple:
    spec = Run(run).load_checkpoint(0).spec
    return spec.mean, spec.std
