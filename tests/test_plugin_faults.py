"""Issue 7.6: a faulty plugin never harms the run or the other analyses, and the
report says what happened.

A plugin that raises, one that hangs past `--timeout` (and started a process of its
own), one whose process dies, one that writes outside its result folder, one that
changes a run file: the others finish, the run directory is as it was (new files
are named in a warning, never removed: who made them cannot be told), and each
fault is one line in the output and a `.failed.json` record.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    check_run_files,
    copy_of,
    install_test_plugins,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    probe_cli,
    train_small,
    wait_for,
)

from probe import Analysis
from probe.analysis.runner import run_analyses
from probe.contract.registry import reset_registry
from probe.rundir.results import iter_failures

STATE: dict[str, Path] = {}  # where the hanging plugin leaves the pid of the process it started


def _boom(ctx) -> None:
    raise RuntimeError(f"boom at epoch {ctx.epoch}")


def _hang(ctx) -> None:
    child = subprocess.Popen(["sleep", "600"])
    STATE["pidfile"].write_text(str(child.pid))
    time.sleep(600)


def _die(ctx) -> None:
    os._exit(3)


def _vandal(ctx) -> None:
    run = ctx.run.path
    (run / "stray.txt").write_text("left behind")
    (run / "junk" / "deep").mkdir(parents=True)
    (run / "junk" / "deep" / "x.bin").write_bytes(b"\0" * 10)
    (run / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    ctx.out.scalar("done", True)


def _tamper(ctx) -> None:
    config = ctx.run.path / "config.json"
    config.write_text(config.read_text() + " ")
    (ctx.run.path / "metrics.jsonl").unlink()


FAULTY = [
    Analysis(name="boom", run=_boom, needs={"checkpoint"}, summary="Raises."),
    Analysis(name="hang", run=_hang, scope="run", needs={"checkpoint"}, summary="Never returns."),
    Analysis(name="die", run=_die, scope="run", needs={"checkpoint"}, summary="Its process exits."),
    Analysis(
        name="vandal",
        run=_vandal,
        scope="run",
        needs={"checkpoint"},
        summary="Writes into the run.",
    ),
    Analysis(
        name="tamper", run=_tamper, scope="run", needs={"checkpoint"}, summary="Changes run files."
    ),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small(tmp_path_factory.mktemp("faults") / "run")  # epochs 0, 1, 2


@pytest.fixture
def run_dir(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path)


@pytest.fixture(autouse=True)
def plugins(tmp_path: Path):
    STATE["pidfile"] = tmp_path / "grandchild.pid"
    yield install_test_plugins(*FAULTY)
    reset_registry(None)


def fingerprint(run_dir: Path) -> dict[str, bytes]:
    """Every file outside analyses/ and logs/, with its contents."""
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] not in ("analyses", "logs")
    }


def failures(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith(("FAILED ", "TIMEOUT ")):
            label, _, error = line.partition(": ")
            out[label] = error
    return out


def leftovers(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "analyses").rglob(".*") if p.name.endswith((".tmp", ".old"))]


# What `boom` and `vandal` print over the template's epochs 0, 1, 2, in every test that runs them.
BOOM_AND_VANDAL = {
    "FAILED boom epoch 0": "RuntimeError: boom at epoch 0",
    "FAILED boom epoch 1": "RuntimeError: boom at epoch 1",
    "FAILED boom epoch 2": "RuntimeError: boom at epoch 2",
}
VANDAL_WARNING = (
    "warning: vandal (run): new files outside its result folder while it ran (left in place): "
    "checkpoints/notes.txt, junk/deep/x.bin, stray.txt"
)
VANDAL_FILES = {
    "checkpoints/notes.txt": b"not a checkpoint",
    "junk/deep/x.bin": b"\0" * 10,
    "stray.txt": b"left behind",
}


def remove_vandal_files(run_dir: Path) -> None:
    """What the user does after reading the warning (probe itself removes
    nothing it did not make)."""
    for rel in VANDAL_FILES:
        (run_dir / rel).unlink()
    (run_dir / "junk/deep").rmdir()
    (run_dir / "junk").rmdir()


def test_raising_and_vandal_plugins_in_process(run_dir: Path) -> None:
    before = fingerprint(run_dir)
    result = probe_cli("analyze", run_dir, "-p", "boom", "-p", "vandal", "-p", "peek", "-e", "all")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert failures(result.stderr) == BOOM_AND_VANDAL, result.stderr
    assert VANDAL_WARNING in result.stderr.splitlines(), result.stderr
    assert result.stdout.splitlines()[-1] == "4 computed, 0 cached, 3 failed"
    assert fingerprint(run_dir) == {
        **before,
        **VANDAL_FILES,
    }  # new files named, kept; nothing else touched
    assert (run_dir / "analyses/vandal/default/run/manifest.json").is_file()  # its result is kept
    remove_vandal_files(run_dir)
    check_run_files(run_dir)
    assert len(list((run_dir / "analyses/peek/default").glob("epoch_*/manifest.json"))) == 3
    recorded = {(f["analysis"], f["epoch"]): f for f in iter_failures(_run(run_dir))}
    assert set(recorded) == {("boom", 0), ("boom", 1), ("boom", 2)}
    assert "Traceback" in recorded[("boom", 1)]["traceback"]
    assert list((run_dir / "logs").glob("analyze-*.log"))


def test_timeout_kills_a_hanging_plugin_and_what_it_started(run_dir: Path) -> None:
    before = fingerprint(run_dir)
    t0 = time.monotonic()
    result = probe_cli(
        "analyze",
        run_dir,
        "-p",
        "hang",
        "-p",
        "die",
        "-p",
        "boom",
        "-p",
        "vandal",
        "-p",
        "peek",
        "-e",
        "all",
        "--timeout",
        "4",
    )
    took = time.monotonic() - t0
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert failures(result.stderr) == {
        "TIMEOUT hang (run)": "timed out after 4 s (killed)",
        "FAILED die (run)": "the analysis process died (exit code 3)",
        **BOOM_AND_VANDAL,
    }, result.stderr
    assert VANDAL_WARNING in result.stderr.splitlines(), result.stderr
    assert result.stdout.splitlines()[-1] == "4 computed, 0 cached, 4 failed, 1 timed out"
    assert took < 60
    grandchild = int(STATE["pidfile"].read_text())
    assert wait_for(lambda: not _alive(grandchild), timeout=10), (
        "the process the plugin started is still running"
    )
    assert fingerprint(run_dir) == {**before, **VANDAL_FILES}
    remove_vandal_files(run_dir)
    check_run_files(run_dir)
    assert leftovers(run_dir) == []  # the killed job's unfinished result folder is gone
    hang = json.loads((run_dir / "analyses/hang/default/run.failed.json").read_text())
    assert hang["status"] == "timeout" and hang["error"] == "timed out after 4 s (killed)"
    assert len(list((run_dir / "analyses/peek/default").glob("epoch_*/manifest.json"))) == 3


def test_a_plugin_that_changes_run_files_is_reported_by_name(run_dir: Path) -> None:
    (outcome,) = run_analyses(run_dir, ["tamper"], registry=install_test_plugins(*FAULTY))
    assert outcome.status == "failed"
    assert outcome.error == "changed run files: config.json, metrics.jsonl (deleted)"
    assert outcome.path is None and not (run_dir / "analyses/tamper/default/run").exists()


def test_a_cached_result_is_not_rerun_in_a_child(run_dir: Path) -> None:
    first = run_analyses(run_dir, ["peek"], "all", timeout=30)
    again = run_analyses(run_dir, ["peek"], "all", timeout=30)
    assert [o.status for o in first] == ["ok"] * 3 and [o.status for o in again] == ["cached"] * 3


def _run(run_dir: Path):
    from probe.rundir.run import Run

    return Run(run_dir)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
