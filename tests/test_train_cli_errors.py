"""Issue 2.9: bad input to `probe train` is one error line naming the option, exit
code 2, nothing written.

Unknown optimizer or depth, a negative epoch count, a missing data directory, an
existing run directory without --resume or --force (and the contradictory or
empty-handed variants): checked before anything is created or changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import make_png_folder, probe_cli


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PROBE_CACHE in the test's folder, to show nothing is written there either."""
    path = tmp_path / "cache"
    monkeypatch.setenv("PROBE_CACHE", str(path))
    monkeypatch.delenv("PROBE_DATA", raising=False)
    return path


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def error_line(result, option: str) -> str:
    """The one line of a usage error (click's own errors add a usage hint above it)
    that names `option`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, result.output
    assert option in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--optimizer", "Nesterov"], "--optimizer"),
        (["--model-depth", "5"], "--model-depth"),
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "three"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--dropout", "1.5"], "--dropout"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_option_values(tmp_path: Path, cache: Path, args: list[str], option: str) -> None:
    data = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    run_dir = tmp_path / "run"
    result = probe_cli("train", "--run-dir", run_dir, "--data", data, "--quiet", *args)
    error_line(result, option)
    assert not run_dir.exists() and not cache.exists()


@pytest.mark.parametrize("layout", ["missing", "no-test-split", "empty-classes", "a-file"])
def test_missing_or_malformed_data_directory(tmp_path: Path, cache: Path, layout: str) -> None:
    data = tmp_path / "data"
    if layout == "no-test-split":
        make_png_folder(data, n_train=1, n_test=1)
        for p in sorted((data / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (data / "test").rmdir()
    elif layout == "empty-classes":
        (data / "train" / "cat").mkdir(parents=True)
        (data / "test" / "cat").mkdir(parents=True)
    elif layout == "a-file":
        data.write_text("not a folder")
    run_dir = tmp_path / "run"
    result = probe_cli("train", "--run-dir", run_dir, "--data", data, "--quiet", "--epochs", "1")
    line = error_line(result, "--data")
    assert str(data) in line
    assert not run_dir.exists() and not cache.exists()


def _existing_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text('{"format": "probe-run/1", "train": {"epochs": 1}}')
    (run_dir / "checkpoints" / "epoch_0000.safetensors").write_bytes(b"placeholder")
    return run_dir


@pytest.mark.parametrize(
    ("flags", "option"),
    [
        ([], "--run-dir"),  # exists, neither --resume nor --force
        (["--resume", "--force"], "--resume"),
        (["--resume", "--optimizer", "Adam"], "--resume"),  # resume keeps the stored config
    ],
)
def test_existing_run_directory_is_not_touched(
    tmp_path: Path, cache: Path, flags: list[str], option: str
) -> None:
    data = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    run_dir = _existing_run(tmp_path)
    before = tree(run_dir)
    result = probe_cli("train", "--run-dir", run_dir, "--data", data, "--quiet", *flags)
    line = error_line(result, option)
    assert str(run_dir) in line or option != "--run-dir"
    assert tree(run_dir) == before
    assert not cache.exists()


def test_force_refuses_a_directory_that_is_not_a_run(tmp_path: Path, cache: Path) -> None:
    data = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = probe_cli("train", "--run-dir", precious, "--data", data, "--quiet", "--force")
    error_line(result, "--force")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_resume_of_a_directory_without_a_run(tmp_path: Path, cache: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = probe_cli("train", "--run-dir", empty, "--resume", "--quiet")
    line = error_line(result, "--resume")
    assert str(empty) in line
    assert list(empty.iterdir()) == []


def test_run_dir_that_is_a_file(tmp_path: Path, cache: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = probe_cli("train", "--run-dir", target, "--quiet")
    error_line(result, "--run-dir")
    assert target.read_text() == "x"


# --- issue 12.11: the same command line with --resume added continues the run ---------------------

SMALL_CLI = [
    "--subset-train-size",
    "0",
    "--base-width",
    "2",
    "--probe-set-size",
    "10",
    "--analysis-batch-size",
    "4",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--full-maps",
    "features.2",
]


def test_the_same_command_line_with_resume_continues_the_run(tmp_path: Path, cache: Path) -> None:
    data = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    run_dir = tmp_path / "run"
    command = ["train", "--run-dir", run_dir, "--data", data, "--quiet", *SMALL_CLI]
    assert probe_cli(*command, "--epochs", "1").exit_code == 0
    result = probe_cli(*command, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"epoch_{e:04d}.safetensors" for e in range(3)
    ]
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{data}"\nbase_width = 2\nfull_maps = ["features.2"]\nepochs = 3\n')
    result = probe_cli("train", "--run-dir", run_dir, "--config", toml, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert len(list((run_dir / "checkpoints").iterdir())) == 4
    before = tree(run_dir)
    toml.write_text("base_width = 4\nseed = 3\n")
    result = probe_cli(
        "train",
        "--run-dir",
        run_dir,
        "--config",
        toml,
        "--resume",
        "--quiet",
        "--lr",
        "0.5",
        "--full-maps",
        "features.2,features.6",
    )
    line = error_line(result, "--resume")
    assert line == (
        f"error: --resume: continues the stored config of {run_dir}/config.json; only --epochs and "
        f"--device may change, but base_width in {toml} (stored 2, given 4); --lr (stored 0.01, "
        "given 0.5); --full-maps (stored ['features.2'], given ['features.2', 'features.6'])"
    )
    assert tree(run_dir) == before


def test_force_checks_every_option_before_deleting(tmp_path: Path, cache: Path) -> None:
    data = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    run_dir = tmp_path / "run"
    assert (
        probe_cli(
            "train", "--run-dir", run_dir, "--data", data, "--quiet", *SMALL_CLI, "--epochs", "1"
        ).exit_code
        == 0
    )
    before = tree(run_dir)
    for flags, option in (
        (["--full-maps", "features.99"], "--full-maps"),
        (["--data", tmp_path / "nope"], "--data"),
        (["--base-width", "0"], "--base-width"),
    ):
        result = probe_cli(
            "train", "--run-dir", run_dir, "--data", data, "--quiet", *SMALL_CLI, "--force", *flags
        )
        error_line(result, option)
        assert tree(run_dir) == before


def test_resume_with_fewer_epochs_than_trained_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """`--resume --epochs 1` on a 2-epoch run would leave config.json saying 1 epoch
    beside 2 checkpoints."""
    import dataclasses

    from probe.errors import UsageError
    from probe.rundir.run import Run
    from probe.testing import make_tiny_run, synthetic_dataset
    from probe.training.loop import train
    from probe.training.trainplan import stored_config

    run = make_tiny_run(tmp_path / "run", epochs=2)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    cfg = dataclasses.replace(stored_config(Run(run)), epochs=1)
    with pytest.raises(
        UsageError, match=r"^--epochs: .* already holds 2 trained epochs; give --epochs 2 or more"
    ):
        train(run, cfg, resume=True, quiet=True, dataset=synthetic_dataset())
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_threads_auto_leaves_the_cores_other_jobs_keep_busy(monkeypatch) -> None:
    import os

    import torch

    from probe.cli import parse_threads
    from probe.errors import UsageError
    from probe.training import loop

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
        monkeypatch.setattr(os, "cpu_count", lambda: 4)
        monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
        assert loop.set_threads(None) == 2  # two of four cores busy
        monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
        assert loop.set_threads(None) == 1  # never below one
        assert loop.set_threads(3) == 3
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)
    assert parse_threads("auto") is None and parse_threads("2") == 2
    for bad in ("0", "1025", "two", "\uff12"):
        with pytest.raises(UsageError, match=r"^--threads: expected a whole number from 1"):
            parse_threads(bad)
