"""`probe compare`: the numbers in the table, the stability verdicts, CSV and plots.

Runs here are written by hand (config.json and metrics.jsonl are all compare
reads), so each test controls exactly what the curves look like.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.cli import ProbeGroup
from probe.studies import rows as study_rows
from probe.studies import table as study_table
from probe.studies.compare import compare_command
from probe.studies.sweep import STATUS_FILE, SWEEP_FILE, point_name
from probe.studies.table import stability
from probe.training.config import TrainConfig


def metrics(
    train_loss: list[float], val_acc: list[float], train_acc: list[float] | None = None
) -> list[dict]:
    """Epoch 0 (init, val only) plus one row per training epoch."""
    train_acc = train_acc or [min(0.99, a + 0.05) for a in val_acc]
    rows = [{"epoch": 0, "val_loss": 2.30, "val_acc": 0.10, "epoch_seconds": 1.0}]
    for e, (tl, va, ta) in enumerate(zip(train_loss, val_acc, train_acc, strict=True), 1):
        rows.append(
            {
                "epoch": e,
                "train_loss": tl,
                "train_acc": ta,
                "val_loss": tl + 0.1,
                "val_acc": va,
                "epoch_seconds": 10.0,
            }
        )
    return rows


def write_run(path: Path, rows: list[dict], **cfg) -> Path:
    path.mkdir(parents=True)
    train = TrainConfig(**{"epochs": len(rows) - 1, **cfg}).to_dict()
    (path / "config.json").write_text(json.dumps({"format": "probe-run/1", "train": train}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sweep(
    root: Path, grid: dict, curves: dict[str, list[dict]], failed: dict[str, str] | None = None
) -> Path:
    import itertools

    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        name = point_name(values)
        points.append({"name": name, "values": values})
        if name in curves:
            write_run(root / name, curves[name], **values)
    (root / SWEEP_FILE).write_text(
        json.dumps(
            {
                "format": "probe-sweep/1",
                "grid": dict(sorted(grid.items())),
                "swept": list(grid),
                "points": points,
            }
        )
    )
    runs = {p["name"]: {"state": "done"} for p in points if p["name"] in curves}
    runs.update({k: {"state": "failed", "error": v} for k, v in (failed or {}).items()})
    (root / STATUS_FILE).write_text(json.dumps({"runs": runs}))
    return root


def invoke(*args):
    group = ProbeGroup()
    group.add_command(compare_command)
    return CliRunner().invoke(group, ["compare", *map(str, args)])


STEADY = metrics([2.0, 1.6, 1.3], [0.30, 0.40, 0.45])
BUMPY = metrics([2.0, 1.5, 1.7], [0.30, 0.40, 0.42])
STUCK = metrics([2.31, 2.30, 2.29], [0.10, 0.10, 0.10])
BLOWN_UP = metrics([9.0, 2.4, 2.31], [0.10, 0.10, 0.10])


def test_stability_verdicts():
    assert stability(STEADY) == "converged"
    assert stability(BUMPY) == "oscillating"
    assert (
        stability(metrics([2.0, 1.5, 1.4], [0.40, 0.30, 0.45])) == "oscillating"
    )  # val accuracy fell 10 points
    assert stability(STUCK) == "stalled"
    assert stability(BLOWN_UP) == "diverged"
    assert (
        stability(metrics([2.2, 2.4, 2.37], [0.12, 0.10, 0.10])) == "diverged"
    )  # ended 3% above the initial 2.30
    assert (
        stability(metrics([2.34, 2.33, 2.32], [0.10, 0.10, 0.10])) == "stalled"
    )  # within 2% of it: noise
    assert stability(metrics([2.0, float("nan"), 1.0], [0.3, 0.3, 0.3])) == "diverged"
    nan_row = metrics([2.0, 1.5], [0.3, 0.4])
    nan_row[-1]["train_loss"] = None  # how train.py writes a non-finite loss
    assert stability(nan_row) == "diverged"
    assert stability(metrics([], [])) == ""


def test_summary_numbers():
    rows = metrics([2.0, 1.5, 1.2], [0.30, 0.50, 0.45], [0.35, 0.60, 0.70])
    s = study_table.summarize(study_rows.RunRow(Path("x"), "x", {}, rows))
    assert s["final_val_acc"] == 0.45 and s["best_val_acc"] == 0.50 and s["best_epoch"] == 2
    assert s["final_train_acc"] == 0.70
    assert math.isclose(s["gap"], 0.25)
    assert s["train_seconds"] == 31.0
    assert s["stability"] == "converged"


def test_optimizer_sweep_table_csv_and_plots(tmp_path):
    grid = {"optimizer": ["SGD", "Adam"], "lr": [0.01, 0.1], "model_depth": [2, 4]}
    curves = {}
    for opt in grid["optimizer"]:
        for lr in grid["lr"]:
            for d in grid["model_depth"]:
                name = point_name({"optimizer": opt, "lr": lr, "model_depth": d})
                curves[name] = (
                    BLOWN_UP if (opt, lr) == ("Adam", 0.1) else BUMPY if lr == 0.1 else STEADY
                )
    failed_name = point_name({"optimizer": "SGD", "lr": 0.01, "model_depth": 4})
    del curves[failed_name]
    sweep = write_sweep(
        tmp_path / "opt", grid, curves, failed={failed_name: "RuntimeError: out of memory"}
    )

    result = invoke(sweep)
    assert result.exit_code == 0, result.output
    out = result.output
    header = out.splitlines()[0].split()
    assert (
        header[:3] == ["optimizer", "lr", "model_depth"]
        and "best_val" in header
        and "state" in header
    )
    assert "failed" in out
    assert "optimizer \\ lr  0.01  0.1" in out
    assert "Adam            CC    DD" in out and "SGD             C-    OO" in out

    written = sweep / "compare"
    assert {p.name for p in written.iterdir()} == {"table.csv", "curves.png", "loss_grid.png"}
    with open(written / "table.csv") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 8
    failed = next(r for r in records if r["run"] == failed_name)
    assert (
        failed["state"] == "failed"
        and failed["error"] == "RuntimeError: out of memory"
        and failed["final_val_acc"] == ""
    )
    first = records[0]
    assert (
        first["optimizer"] == "SGD"
        and float(first["best_val_acc"]) == 0.45
        and first["stability"] == "converged"
    )


def test_regularization_sweep_plots_against_each_regularizer(tmp_path, monkeypatch):
    grid = {"dropout": [0.0, 0.5], "weight_decay": [0.0, 0.0005], "augment": [True, False]}
    curves = {
        point_name(dict(zip(grid, c, strict=True))): STEADY
        for c in [
            (d, w, a)
            for d in grid["dropout"]
            for w in grid["weight_decay"]
            for a in grid["augment"]
        ]
    }
    sweep = write_sweep(tmp_path / "reg", grid, curves)
    # Analysis scalars come from probe.rundir.results; stand in for the hessian
    # and sharpness analyses.
    monkeypatch.setattr(
        study_rows,
        "analysis_scalars",
        lambda run_dir, *args: {
            "hessian.top_eigenvalue": 12.5,
            "sharpness.worst_case": 0.031,
            "other.value": 1.0,
        },
    )
    result = invoke(sweep, "--out", tmp_path / "cmp", "--metric", "train_loss")
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header[:3] == ["dropout", "weight_decay", "augment"]
    assert "top_eig" in header and "sharpness" in header and "other.value" not in header
    assert "12.5" in result.output and "on " in result.output
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {
        "table.csv",
        "curves.png",
        "regularizers.png",
    }
    assert "other.value" in (tmp_path / "cmp" / "table.csv").read_text().splitlines()[0]


def test_runs_given_by_path_show_the_keys_that_differ(tmp_path, monkeypatch):
    a = write_run(tmp_path / "runs" / "a", STEADY, lr=0.01)
    b = write_run(tmp_path / "runs" / "b", BUMPY, lr=0.1)
    monkeypatch.chdir(tmp_path)
    result = invoke(a, b, "--no-plots")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["run", "lr"]
    assert lines[2].split()[:2] == [str(a), "0.01"]
    assert (tmp_path / "compare" / "table.csv").exists()
    assert not (tmp_path / "compare" / "curves.png").exists()


def test_unknown_metric_and_not_a_run_are_one_line(tmp_path):
    a = write_run(tmp_path / "a", STEADY)
    result = invoke(a, "--metric", "val_accuracy", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert result.output.strip().startswith(
        "error: --metric: 'val_accuracy' is not a per-epoch metric"
    )
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty")
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "not a probe run directory" in result.output


def test_which_scalars_are_shown_as_top_eigenvalue_and_sharpness():
    names = [
        "hessian.eigenvalue_min",
        "hessian.top_eigenvalue",
        "hessian.trace",
        "sharpness.average",
        "sharpness.worst_case",
        "curves.final_gap",
    ]
    analyses = study_rows.installed_analyses()  # the built-ins declare them (Analysis.headline)
    assert study_table.headline_columns(names, analyses) == [
        ("hessian.top_eigenvalue", "top_eig"),
        ("sharpness.worst_case", "sharpness"),
    ]
    assert study_table.headline_columns(["curves.x"], analyses) == []


@pytest.mark.parametrize(
    "value, col, text",
    [
        (0.4567, "final_val_acc", "0.457"),
        (True, "augment", "on"),
        (float("nan"), "gap", "-"),
        (125.2, "train_seconds", "125s"),
    ],
)
def test_format_cell(value, col, text):
    assert study_table.format_cell(value, col) == text


def test_a_sweep_with_a_point_not_started_compares_cleanly(tmp_path):
    """A point without a run yet carries only its grid values: it must not make every config key
    look swept, nor break the optimizer x lr stability summary."""
    import json

    from probe.studies.sweep import SWEEP_FILE
    from probe.testing import make_tiny_run

    sweep = tmp_path / "sweep"
    values = [
        {"optimizer": "Adam", "lr": 0.001},
        {"optimizer": "SGD_mom", "lr": 0.05},
    ]  # the first not started
    points = [{"name": f"optimizer={v['optimizer']},lr={v['lr']}", "values": v} for v in values]
    sweep.mkdir()
    (sweep / SWEEP_FILE).write_text(
        json.dumps(
            {
                "points": points,
                "swept": ["optimizer", "lr"],
                "grid": {"optimizer": ["SGD_mom", "Adam"], "lr": [0.05, 0.001]},
            }
        )
    )
    make_tiny_run(sweep / points[1]["name"], epochs=1)
    rows, keys = study_rows.collect([str(sweep)])
    assert keys == ["optimizer", "lr"]
    assert [r.state for r in rows] == ["not started", "finished"]
    columns, records = study_table.table(rows, keys)
    assert "SGD_mom" in study_table.stability_summary(records, keys)
