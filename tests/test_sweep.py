"""`probe sweep`: checking the file, naming the runs, failures, resume, local vs Dask.

The runs are real but tiny (a width-4 CNN, one epoch on 80 random images) on a
folder dataset made here, so the whole file takes well under a minute.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.analysis import executor as ex
from probe.analysis.executor import DaskExecutor, InlineExecutor, LocalExecutor
from probe.cli import ProbeGroup
from probe.errors import UsageError
from probe.studies.sweep import (
    STATUS_FILE,
    SWEEP_FILE,
    load_spec,
    point_name,
    run_sweep,
    sweep_command,
)
from probe.testing import make_image_folder

TINY = """
name = "tiny"
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
lr = [0.01, 0.1]
optimizer = ["SGD", "Adam"]
"""


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes of random 32x32 PNGs: 8 per class to train on, 3 to validate."""
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=8, n_test=3)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "probe-cache"))


def spec_file(tmp_path: Path, text: str = TINY, extra: str = "") -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(text + extra)
    return p


def cli(*args: str):
    group = ProbeGroup()
    group.add_command(sweep_command)
    return CliRunner().invoke(group, ["sweep", *map(str, args)])


# --- the sweep file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate = 3\n" + TINY, "unknown key 'learning_rate' (a sweep file has"),
        (
            TINY.replace("base_width = 4", "base_widht = 4"),
            "[base]: unknown config key 'base_widht'",
        ),
        (TINY.replace("lr = [0.01, 0.1]", "lrr = [0.01, 0.1]"), "[grid]: unknown config key 'lrr'"),
        (TINY.split("[grid]")[0], "the grid is empty"),
        (TINY.split("[grid]")[0] + "[grid]\n", "the grid is empty"),
        (TINY.replace("lr = [0.01, 0.1]", "lr = []"), "lr: the list of values is empty"),
        (
            TINY.replace("lr = [0.01, 0.1]", 'lr = [0.01, "fast"]'),
            "lr: expected float, got str 'fast'",
        ),
        (TINY.replace("lr = [0.01, 0.1]", "lr = 0.01"), "lr: expected a list of values"),
        (
            TINY.split("[grid]")[0]
            + "[grid]\n"
            + "".join(
                f"{k} = [{', '.join(str(v) for v in range(1, 41))}]\n"
                for k in (
                    "seed",
                    "epochs",
                    "batch_size",
                    "base_width",
                    "step_size",
                    "target_params",
                )
            )
            + "lr = ["
            + ", ".join(f"0.{i:03d}" for i in range(1, 41))
            + "]\n",
            "[grid]: 163,840,000,000 points (40 seed x 40 epochs x 40 batch_size x 40 base_width"
            " x 40 step_size x 40 target_params x 40 lr), more than the 10,000 a sweep may hold;"
            " split it into several sweeps",
        ),
        (
            TINY.replace('optimizer = ["SGD", "Adam"]', 'optimizer = ["SGD", "Adamm"]'),
            "'Adamm' is not one of",
        ),
        (TINY.replace("epochs = 1", 'epochs = "one"'), "epochs: expected int"),
        (TINY.replace("epochs = 1", "lr = 0.5"), "lr is both swept and set in [base]"),
        (
            TINY + '[analyze]\nplugins = ["curves"]\nepochs = "lastt"\n',
            "epochs: expected all, last",
        ),
        (
            TINY + '[analyze]\nplugins = ["no-such-analysis"]\n',
            "unknown analysis 'no-such-analysis'",
        ),
        (
            TINY + '[analyze]\nplugins = ["curves"]\n[analyze.params.curves]\nlog_los = true\n',
            "has no parameter 'log_los'",
        ),
        ("[grid\n", "is not valid TOML"),
    ],
)
def test_bad_sweep_file_is_one_line_before_anything_runs(tmp_path, text, message):
    out = tmp_path / "out"
    result = cli(spec_file(tmp_path, text), "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert not out.exists()


def test_set_cannot_override_a_swept_key(tmp_path):
    result = cli(spec_file(tmp_path), "--out", tmp_path / "out", "--set", "lr=0.5")
    assert result.exit_code == 2 and "--set: lr is swept" in result.output


def test_points_are_named_after_their_swept_values(tmp_path):
    spec = load_spec(
        spec_file(tmp_path, TINY.replace("base_width = 4", "base_width = 4\naugment = false")),
        {"epochs": 3},
    )
    points = spec.points()
    assert [p.name for p in points] == [
        "lr=0.01,optimizer=SGD",
        "lr=0.01,optimizer=Adam",
        "lr=0.1,optimizer=SGD",
        "lr=0.1,optimizer=Adam",
    ]
    assert points[3].config.lr == 0.1 and points[3].config.optimizer == "Adam"
    assert all(p.config.epochs == 3 and p.config.augment is False for p in points)
    assert (
        point_name({"weight_decay": 0.0005, "augment": True, "data": "a/b"})
        == "weight_decay=0.0005,augment=true,data=a_b"
    )


def test_dry_run_lists_the_runs_and_trains_nothing(tmp_path):
    out = tmp_path / "out"
    result = cli(spec_file(tmp_path), "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "new       " + str(out / "lr=0.1,optimizer=Adam") in result.output
    assert "4 runs, 4 to run" in result.output
    assert not out.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_starts_nothing(tmp_path, monkeypatch, fake_data):
    pytest.importorskip("distributed")
    monkeypatch.setattr(ex, "CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "out"
    result = cli(
        spec_file(tmp_path),
        "--out",
        out,
        "--data",
        fake_data,
        "--scheduler",
        f"tcp://127.0.0.1:{_closed_port()}",
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "cannot reach the Dask scheduler" in result.output
    assert not out.exists()


# --- running --------------------------------------------------------------------------------------


def runs_of(sweep_dir: Path) -> dict[str, tuple[dict, list[dict]]]:
    """Each run's config and metrics, without timings (`*_seconds`, `*_per_second`)."""
    out = {}
    for p in sorted(sweep_dir.iterdir()):
        if (p / "config.json").exists():
            train = json.loads((p / "config.json").read_text())["train"]
            metrics = [
                {
                    k: v
                    for k, v in json.loads(line).items()
                    if not k.endswith(("_seconds", "_per_second"))
                }
                for line in (p / "metrics.jsonl").read_text().splitlines()
            ]
            out[p.name] = (train, metrics)
    return out


@pytest.mark.slow
def test_local_and_dask_executors_produce_the_same_runs(tmp_path, fake_data):
    pytest.importorskip("distributed")
    spec = load_spec(
        spec_file(tmp_path, TINY.replace("lr = [0.01, 0.1]", "lr = [0.05]")),
        {"data": str(fake_data)},
    )
    # One local worker (each new process pays seconds to import torch), two Dask workers;
    # one thread each, as sums in another order would differ in the last bits.
    with LocalExecutor(workers=1, threads_per_worker=1) as e:
        assert run_sweep(spec, tmp_path / "local", e, echo=lambda s: None) == 0
    with DaskExecutor(n_workers=2) as e:
        assert run_sweep(spec, tmp_path / "dask", e, echo=lambda s: None) == 0
    local, dask = runs_of(tmp_path / "local"), runs_of(tmp_path / "dask")
    assert sorted(local) == ["lr=0.05,optimizer=Adam", "lr=0.05,optimizer=SGD"]
    assert local == dask
    for name in local:
        assert (
            json.loads((tmp_path / "dask" / STATUS_FILE).read_text())["runs"][name]["state"]
            == "done"
        )


def test_a_failed_run_is_recorded_the_rest_finish_and_rerun_resumes(tmp_path, fake_data):
    out = tmp_path / "out"
    spec = spec_file(tmp_path, TINY, '[analyze]\nplugins = ["curves"]\n')
    blocked = out / "lr=0.1,optimizer=SGD"
    blocked.mkdir(parents=True)
    (blocked / "notes.txt").write_text("not a run")  # train() refuses to write over it

    result = cli(spec, "--out", out, "--data", fake_data, "--workers", "0")
    assert result.exit_code == 1, result.output
    assert "FAILED  lr=0.1,optimizer=SGD  --run-dir:" in result.output
    assert "4 runs: 3 finished, 1 failed" in result.output
    status = json.loads((out / STATUS_FILE).read_text())["runs"]
    assert status["lr=0.1,optimizer=SGD"]["state"] == "failed"
    assert "already exists" in status["lr=0.1,optimizer=SGD"]["error"]
    assert json.loads((out / SWEEP_FILE).read_text())["swept"] == ["lr", "optimizer"]

    # Fix the cause and interrupt another run (its last epoch lost): only those two run again.
    (blocked / "notes.txt").unlink()
    (out / "lr=0.01,optimizer=Adam" / "checkpoints" / "epoch_0001.safetensors").unlink()
    untouched = (out / "lr=0.01,optimizer=SGD" / "metrics.jsonl").stat().st_mtime_ns
    result = cli(spec, "--out", out, "--data", fake_data, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "4 runs in" in result.output and "2 already finished" in result.output
    assert "[1/2] done" in result.output and "[2/2] done" in result.output
    assert (out / "lr=0.01,optimizer=SGD" / "metrics.jsonl").stat().st_mtime_ns == untouched
    assert all(
        v["state"] == "done" for v in json.loads((out / STATUS_FILE).read_text())["runs"].values()
    )

    result = cli(spec, "--out", out, "--data", fake_data, "--workers", "0")
    assert result.exit_code == 0 and "4 already finished" in result.output
    assert all((p / "analyses" / "curves").is_dir() for p in out.iterdir() if p.is_dir())


def test_analyses_skipped_with_no_analyze_are_added_by_a_later_run(tmp_path, fake_data):
    out = tmp_path / "out"
    spec = spec_file(
        tmp_path,
        TINY.replace('optimizer = ["SGD", "Adam"]', 'optimizer = ["SGD"]'),
        '[analyze]\nplugins = ["curves"]\n',
    )
    result = cli(spec, "--out", out, "--data", fake_data, "--workers", "0", "--no-analyze")
    assert result.exit_code == 0, result.output
    assert not any((p / "analyses").exists() for p in out.iterdir())
    result = cli(spec, "--out", out, "--data", fake_data, "--workers", "0")
    assert result.exit_code == 0 and "running 2 on" in result.output
    assert all((p / "analyses" / "curves").is_dir() for p in out.iterdir() if p.is_dir())


def test_a_different_run_in_the_way_is_refused_before_training(tmp_path, fake_data):
    spec = load_spec(
        spec_file(tmp_path, TINY.replace('optimizer = ["SGD", "Adam"]', 'optimizer = ["SGD"]')),
        {"data": str(fake_data)},
    )
    out = tmp_path / "out"
    assert run_sweep(spec, out, InlineExecutor(), echo=lambda s: None) == 0
    changed = load_spec(
        spec_file(tmp_path, TINY.replace('optimizer = ["SGD", "Adam"]', 'optimizer = ["SGD"]')),
        {"data": str(fake_data), "seed": 7},
    )
    with pytest.raises(UsageError, match="holds a run with seed=42, but the sweep asks for 7"):
        run_sweep(changed, out, InlineExecutor(), echo=lambda s: None)
    # More epochs extend the runs instead.
    longer = load_spec(
        spec_file(tmp_path, TINY.replace('optimizer = ["SGD", "Adam"]', 'optimizer = ["SGD"]')),
        {"data": str(fake_data), "epochs": 2},
    )
    assert run_sweep(longer, out, InlineExecutor(), echo=lambda s: None) == 0
    assert [m["epoch"] for m in runs_of(out)["lr=0.1,optimizer=SGD"][1]] == [0, 1, 2]


def test_param_sets_analysis_parameters_and_is_checked_first(tmp_path):
    curves = spec_file(tmp_path, TINY, '[analyze]\nplugins = ["curves"]\n')
    result = cli(curves, "--out", tmp_path / "out", "--param", "log_loss=true", "--dry-run")
    assert result.exit_code == 0, result.output
    result = cli(curves, "--out", tmp_path / "out", "--param", "log_los=true")
    assert (
        result.exit_code == 2 and "no selected analysis has a parameter 'log_los'" in result.output
    )
    result = cli(spec_file(tmp_path), "--out", tmp_path / "out", "--param", "log_loss=true")
    assert result.exit_code == 2 and "runs no analyses" in result.output
    assert not (tmp_path / "out").exists()


def test_model_parameters_are_swept_by_their_own_names(tmp_path):
    text = """
name = "skip"
[base]
model = "resnet"
model_params = ["width=1"]
epochs = 1
[grid]
"model.depth" = [8, 14]
"model.shortcut" = ["A", "none"]
"""
    points = load_spec(spec_file(tmp_path, text)).points()
    assert [p.name for p in points] == [
        "depth=8,shortcut=A",
        "depth=8,shortcut=none",
        "depth=14,shortcut=A",
        "depth=14,shortcut=none",
    ]
    assert points[1].config.model_params == ("width=1", "depth=8", "shortcut=none")
    with pytest.raises(UsageError, match=r"model.depth: expected model.<parameter> = \[values\]"):
        load_spec(spec_file(tmp_path, text.replace("[8, 14]", "8")))
