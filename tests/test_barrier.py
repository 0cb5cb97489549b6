"""`probe barrier`: the loss barrier between sweep runs that differ only in seed.

Reference: the two runs' checkpoints are read here, their weights interpolated by hand at
every point of the path and each model evaluated on its own in eval mode; the barrier is
the largest loss above the chord between the two end losses (Frankle et al. 2020).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from probe.analysis.executor import InlineExecutor
from probe.cli import cli
from probe.rundir.run import Run
from probe.studies.barrier import BARRIERS_FILE, barriers
from probe.studies.sweep import load_spec, run_sweep
from probe.testing import make_image_folder

SEEDS = """
name = "seeds"
[base]
epochs = 1
subset_train_size = 0
batch_size = 32
val_batch_size = 64
probe_set_size = 20
analysis_batch_size = 32
base_width = 4
device = "cpu"
[grid]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("barrier")
    data = make_image_folder(root / "data", n_train=8, n_test=3)
    (root / "sweep.toml").write_text(SEEDS)
    spec = load_spec(root / "sweep.toml", {"data": str(data)})
    with InlineExecutor() as executor:
        assert run_sweep(spec, root / "out", executor, echo=lambda s: None) == 0
    return root / "out"


def hand_path(run_a: Run, run_b: Run, epoch: int, alphas: list[float]) -> list[float]:
    """Eval-mode loss at each alpha, the weights and BatchNorm buffers interpolated by hand."""
    a = run_a.load_checkpoint(epoch)
    b = run_b.load_checkpoint(epoch)
    batch = run_a.analysis_batch()
    x, y = batch.normalized("cpu"), batch.labels
    losses = []
    for alpha in alphas:
        state = {
            k: (1 - alpha) * v.double() + alpha * b.model_state[k].double()
            if v.is_floating_point()
            else v
            for k, v in a.model_state.items()
        }
        model = a.build_model("cpu").double()
        model.load_state_dict(state)
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model.eval()(x.double()), y)))
    return losses


def test_barrier_matches_a_hand_interpolation(seed_sweep):
    lines: list[str] = []
    result = barriers(seed_sweep, points=5, echo=lambda s, **_: lines.append(s))
    [pair] = result["pairs"]
    assert {pair["seed_a"], pair["seed_b"]} == {0, 1} and pair["epoch"] == 1
    assert pair["bn"] == "kept" and result["bn"] == "kept"
    assert len(lines) == 1 and lines[0].startswith("[1/1] seed=0 ~ seed=1 (epoch 1): loss barrier")

    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert pair["alphas"] == pytest.approx(alphas)
    ref = hand_path(Run(seed_sweep / "seed=0"), Run(seed_sweep / "seed=1"), 1, alphas)
    assert pair["loss"] == pytest.approx(ref, rel=1e-4, abs=1e-5)
    chord = [(1 - t) * ref[0] + t * ref[-1] for t in alphas]
    assert pair["loss_barrier"] == pytest.approx(
        max(r - c for r, c in zip(ref, chord, strict=True)), rel=1e-3, abs=1e-5
    )
    stored = json.loads((seed_sweep / BARRIERS_FILE).read_text())
    assert stored["format"] == "probe-barriers/1" and stored["pairs"][0]["loss"] == pair["loss"]


def test_a_run_with_itself_has_no_barrier(seed_sweep):
    from probe.numerics.interpolation import linear_mode_barrier

    run = Run(seed_sweep / "seed=0")
    ckpt = run.load_checkpoint(1)
    batch = run.analysis_batch()
    seg = linear_mode_barrier(
        ckpt.build_model("cpu"),
        ckpt.model_state,
        ckpt.model_state,
        batch.normalized("cpu"),
        batch.labels,
        points=5,
    )
    assert seg.loss_barrier == pytest.approx(0.0, abs=1e-6)


def test_cli_recalibrated_and_the_one_line_refusals(seed_sweep, tmp_path):
    result = CliRunner().invoke(
        cli, ["barrier", str(seed_sweep), "--points", "3", "--bn", "recalibrate"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((seed_sweep / BARRIERS_FILE).read_text())["pairs"][0]["bn"] == "recalibrate"

    result = CliRunner().invoke(cli, ["barrier", str(seed_sweep), "--epoch", "7"])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        .splitlines()[-1]
        .endswith(
            "no two finished runs differ only in seed with a checkpoint of epoch 7 in both "
            "(add e.g. seed = [0, 1] to the sweep's [grid])"
        )
    )
    result = CliRunner().invoke(cli, ["barrier", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path}: not a sweep directory (no sweep.json)" in result.output
