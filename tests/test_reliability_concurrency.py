"""Issue 7.5: concurrent use never corrupts a result or reads a partial file as complete.

Two `probe analyze` processes on one run at once (both recomputing the same
results), and `probe analyze` run over and over while `probe train` is still
writing the run: every command succeeds, every result directory is whole, the
analyses see only finished epochs, and the training ends exactly as it would alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from reliability_helpers import (
    PLUGIN_PRELUDE,
    TINY_ARGS,
    Zygote,
    assert_bitwise_equal,
    check_run_files,
    final_state,
    make_png_folder,
    temp_files,
    wait_for,
)

from probe.rundir.results import MANIFEST, iter_failures, read_manifest
from probe.rundir.run import Run

ANALYZE = ["-p", "peek", "-p", "census", "-e", "all"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("concurrency")
    data = make_png_folder(root / "data")
    zygote = Zygote(root / "logs", root / "cache")
    yield {"root": root, "data": data, "zygote": zygote}
    zygote.close()


def train_args(run_dir: Path, data: Path, epochs: int) -> list[str]:
    return [
        "train",
        "--run-dir",
        str(run_dir),
        "--data",
        str(data),
        *TINY_ARGS,
        "--epochs",
        str(epochs),
    ]


def assert_results_whole(run_dir: Path) -> dict[str, dict]:
    """Every result directory has its manifest and every file it lists, readable;
    nothing half-done is left."""
    run = Run(run_dir)
    found = {}
    for manifest in sorted((run_dir / "analyses").glob(f"*/*/*/{MANIFEST}")):
        m = read_manifest(manifest.parent)
        assert m is not None, manifest
        assert set(m["files"]) | {MANIFEST} == {p.name for p in manifest.parent.iterdir()}, (
            manifest.parent
        )
        for name in m["files"]:
            p = manifest.parent / name
            if name.endswith(".h5"):
                with h5py.File(p, "r") as f:
                    f.visititems(lambda _n, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
            elif name.endswith(".json"):
                json.loads(p.read_text())
            elif name.endswith(".png"):
                assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        found[manifest.parent.relative_to(run_dir).as_posix()] = m
    assert temp_files(run_dir / "analyses") == []
    assert list(iter_failures(run)) == []
    return found


_WRITER = """
import sys
from pathlib import Path
from probe.io import atomic
base, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(150):
    with atomic.atomic_dir(base / f"r{i % 4}") as tmp:
        (tmp / "a.txt").write_text(tag)
        (tmp / "manifest.json").write_text(tag)
"""


def test_two_processes_renaming_the_same_result_directories(tmp_path: Path) -> None:
    """The race two `probe analyze` runs have, hammered: both always succeed and
    leave whole results only.

    (Before the fix, a rename that lost the race failed with ENOTEMPTY or ENOENT and
    left .tmp/.old directories behind.)
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), tag], stderr=subprocess.PIPE, text=True
        )
        for tag in ("A", "B")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]  # no .tmp or .old left
    for d in tmp_path.iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["a.txt", "manifest.json"]
        assert (d / "a.txt").read_text() == (d / "manifest.json").read_text()  # one writer's, whole


def test_two_analyze_commands_at_once(world) -> None:
    zygote = world["zygote"]
    run_dir = world["root"] / "both"
    assert zygote.run(train_args(run_dir, world["data"], 2)).exit_code == 0
    for _ in range(
        3
    ):  # both recompute the same results, renaming them into place at about the same moments
        a = zygote.start(
            ["analyze", str(run_dir), *ANALYZE, "--force", "-q"], prelude=PLUGIN_PRELUDE
        )
        b = zygote.start(
            ["analyze", str(run_dir), *ANALYZE, "--force", "-q"], prelude=PLUGIN_PRELUDE
        )
        for child in (a.wait(), b.wait()):
            assert child.exit_code == 0, child.output
            assert child.output.strip().splitlines()[-1] == "4 computed, 0 cached, 0 failed", (
                child.output
            )
        results = assert_results_whole(run_dir)
        assert len(results) == 4  # peek epochs 0-2, census
    check_run_files(run_dir)


def test_analyze_while_train_is_writing(world) -> None:
    zygote, data = world["zygote"], world["data"]
    alone = world["root"] / "alone"
    assert zygote.run(train_args(alone, data, 6)).exit_code == 0
    run_dir = world["root"] / "live"
    trainer = zygote.start(train_args(run_dir, data, 6), env={"PROBE_TEST_DELAY_WRITES": "0.2"})
    assert wait_for(lambda: (run_dir / "checkpoints/epoch_0000.safetensors").exists(), timeout=60)
    seen = []
    while trainer.alive():
        child = zygote.run(["analyze", str(run_dir), *ANALYZE, "-q"], prelude=PLUGIN_PRELUDE)
        assert child.exit_code == 0, child.output
        census = json.loads((run_dir / "analyses/census/default/run/census.json").read_text())
        assert census["epochs"] == list(
            range(len(census["epochs"]))
        )  # finished epochs, in order, no gaps
        # metrics rows never precede their checkpoint (census asserts it against the checkpoints
        # present when it reads them). Each epoch writes its dump, then its checkpoint, then its
        # metrics row, so when `analyze` planned epochs 0..k, rows 0..k-1 were already written; row
        # k may still be on its way (or, like later epochs' rows, already there)
        assert census["metric_epochs"] == list(range(len(census["metric_epochs"])))
        assert len(census["metric_epochs"]) >= len(census["epochs"]) - 1
        seen.append(len(census["epochs"]))
    assert trainer.wait().exit_code == 0, trainer.output
    assert len(seen) >= 2 and seen == sorted(seen), (
        seen
    )  # it ran several times while epochs were being added
    assert seen[0] < 7, seen
    final = zygote.run(["analyze", str(run_dir), *ANALYZE, "-q"], prelude=PLUGIN_PRELUDE)
    assert final.exit_code == 0, final.output
    results = assert_results_whole(run_dir)
    assert sorted(r for r in results if r.startswith("analyses/peek/")) == [
        f"analyses/peek/default/epoch_{e:04d}" for e in range(7)
    ]
    assert results["analyses/census/default/run"]["epochs"] == list(range(7))
    assert check_run_files(run_dir) == list(range(7))
    assert_bitwise_equal(
        final_state(run_dir), final_state(alone)
    )  # the analyses changed nothing it wrote


def test_one_writer_per_run(world) -> None:
    """Issue 11.3: a second `probe train` on a run being trained (fresh, --force, --resume) exits
    2 naming the holder and changes nothing; a lock left by a SIGKILLed training is stale and
    taken over by --resume."""
    import socket

    from probe.rundir.lock import LOCK_FILE

    zygote, data = world["zygote"], world["data"]
    run_dir = world["root"] / "one-writer"
    trainer = zygote.start(train_args(run_dir, data, 5), env={"PROBE_TEST_DELAY_WRITES": "0.2"})
    assert wait_for(lambda: (run_dir / "checkpoints/epoch_0000.safetensors").exists(), timeout=60)
    record = json.loads((run_dir / LOCK_FILE).read_text())
    assert record["pid"] == trainer.pid and record["host"] == socket.gethostname()
    holder = (
        f"is being trained by pid {trainer.pid} on {socket.gethostname()} since "
        f"{record['started']}; wait for it to finish or stop it (one training "
        "writes a run at a time)"
    )
    others = [
        zygote.start(args)
        for args in (
            [*train_args(run_dir, data, 4), "--force", "--optimizer", "Adam"],
            ["train", "--run-dir", str(run_dir), "--resume", "--epochs", "4", "--quiet"],
            train_args(run_dir, data, 4),
        )
    ]
    for child in others:
        child.wait()
        assert child.exit_code == 2, child.output
        assert child.output.strip() == f"error: --run-dir: {run_dir} {holder}"
    assert trainer.alive()  # the refusals did not disturb it
    assert trainer.wait().exit_code == 0, trainer.output
    assert not (run_dir / LOCK_FILE).exists()  # released (and removed) when it ended
    assert check_run_files(run_dir) == list(range(6))
    assert Run(run_dir).config["train"]["optimizer"] == "SGD_mom"  # one writer's run, whole

    killed_dir = world["root"] / "killed-writer"
    victim = zygote.start(train_args(killed_dir, data, 3), env={"PROBE_TEST_DELAY_WRITES": "0.2"})
    assert wait_for(
        lambda: (killed_dir / "checkpoints/epoch_0001.safetensors").exists(), timeout=60
    )
    victim.kill()
    assert victim.wait().killed
    assert (
        json.loads((killed_dir / LOCK_FILE).read_text())["pid"] == victim.pid
    )  # left behind, but stale
    resumed = zygote.run(["train", "--run-dir", str(killed_dir), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert check_run_files(killed_dir) == [0, 1, 2, 3]
    assert not (killed_dir / LOCK_FILE).exists()


def test_a_killed_analysis_leaves_temporaries_the_next_one_removes(world) -> None:
    """Issue 11.7: SIGKILL mid-job leaves `.<name>.<pid>.<random>.tmp` under analyses/; the next
    analyze removes them (their process is gone) and nothing else."""
    zygote = world["zygote"]
    run_dir = world["root"] / "killed-analysis"
    assert zygote.run(train_args(run_dir, world["data"], 1)).exit_code == 0
    mine = (
        run_dir / "analyses" / "peek" / ".my-notes.tmp"
    )  # a name probe does not make: never removed
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    job = zygote.start(
        ["analyze", str(run_dir), *ANALYZE, "-q"],
        prelude=PLUGIN_PRELUDE,
        env={"PROBE_TEST_DELAY_WRITES": "1"},
    )
    assert wait_for(lambda: any(p != mine for p in temp_files(run_dir / "analyses")), timeout=60)
    job.kill()
    assert job.wait().killed
    left = [p for p in temp_files(run_dir / "analyses") if p != mine]
    assert left and all(f".{job.pid}." in p.name for p in left), left
    again = zygote.run(["analyze", str(run_dir), *ANALYZE, "-q"], prelude=PLUGIN_PRELUDE)
    assert again.exit_code == 0, again.output
    assert temp_files(run_dir / "analyses") == [mine] and mine.read_text() == "mine"
    mine.unlink()
    assert len(assert_results_whole(run_dir)) == 3  # peek epochs 0-1, census
