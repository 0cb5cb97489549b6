"""Issue 7.1/7.2 (and issue 2's resume promise): a crash or a failed write never
loses or corrupts a run.

Real processes are SIGKILLed at 20 seeded moments (during training, during the
activation dump, during the checkpoint write, during the metrics write, during the
first files): afterwards every file in the run directory is complete and readable,
and `probe train --resume` ends with bitwise the same checkpoints, dumps and metrics
as a run never interrupted. A write that fails (file too large, disk full) is one
line naming the file, earlier epochs stay intact, and the run resumes once space is
back. The children are forked from a zygote (see reliability_helpers) so the loop
takes seconds, and one test drives the real `probe` console script end to end.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    CHILD_ENV,
    SMALL,
    TINY_ARGS,
    Zygote,
    assert_bitwise_equal,
    check_run_files,
    make_png_folder,
    one_error_line,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    temp_files,
    train_small,
    wait_for,
)

from probe.errors import ProbeError
from probe.io import atomic
from probe.rundir import activations
from probe.rundir.run import Run

DELAY = 0.1  # PROBE_TEST_DELAY_WRITES: each write holds its temporary file open this long


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny PNG dataset, a zygote, and the reference run trained without interruption."""
    root = tmp_path_factory.mktemp("crash")
    data = make_png_folder(root / "data")
    zygote = Zygote(root / "logs", root / "cache")
    ref = root / "reference"
    child = zygote.run(train_args(ref, data))
    assert child.exit_code == 0, child.output
    yield {"root": root, "data": data, "zygote": zygote, "ref": ref, "ref_state": run_state(ref)}
    zygote.close()


def train_args(run_dir: Path, data: Path) -> list[str]:
    return ["train", "--run-dir", str(run_dir), "--data", str(data), *TINY_ARGS]


def run_state(run_dir: Path) -> dict:
    """Everything a run computed, timings aside: per epoch the checkpoint tensors, the dump
    arrays, the metrics."""
    from safetensors.torch import load_file

    run = Run(run_dir)
    timing = ("_seconds", "_per_second")
    state = {
        "epochs": run.epochs(),
        "metrics": [{k: v for k, v in m.items() if not k.endswith(timing)} for m in run.metrics()],
    }
    for e in run.epochs():
        state[f"ckpt{e}"] = load_file(str(run.checkpoint_path(e)))
        info = activations.read(run.activations_path(e))
        dump = {
            layer: torch.from_numpy(activations.read(run.activations_path(e), layer))
            for layer in info["layers"]
        }
        dump["logits"] = torch.from_numpy(activations.read(run.activations_path(e), None, "logits"))
        state[f"dump{e}"] = dump
        state[f"pred{e}"] = load_file(str(run_dir / f"predictions/epoch_{e:04d}.safetensors"))
    return state


def assert_same_run(run_dir: Path, ref: dict) -> None:
    got = run_state(run_dir)
    assert got["epochs"] == ref["epochs"]
    assert got["metrics"] == ref["metrics"]
    for e in ref["epochs"]:
        assert_bitwise_equal(got[f"ckpt{e}"], ref[f"ckpt{e}"])
        assert_bitwise_equal(got[f"dump{e}"], ref[f"dump{e}"])
        assert_bitwise_equal(got[f"pred{e}"], ref[f"pred{e}"])


# --- the kill loop --------------------------------------------------------------------------------


def moments(seed: int = 7, n: int = 20) -> list[tuple[str, object, float]]:
    """(phase, epoch or file, fraction): every phase of every epoch once,
    then seeded extra picks."""
    rng = random.Random(seed)
    out: list[tuple[str, object, float]] = [
        ("static", "config.json", rng.random()),
        ("static", "data/probe_set.safetensors", rng.random()),
        ("dump", 0, rng.random()),
        ("checkpoint", 0, rng.random()),
    ]
    out += [
        (phase, e, rng.random())
        for e in (1, 2, 3)
        for phase in ("train", "dump", "checkpoint", "metrics")
    ]
    while len(out) < n:
        out.append((rng.choice(["train", "dump", "checkpoint"]), rng.randint(1, 3), rng.random()))
    return out


def _tmp_of(run_dir: Path, rel: str) -> bool:
    p = run_dir / rel
    return p.parent.is_dir() and any(p.parent.glob(f".{p.name}.*.tmp"))


def _reached(run_dir: Path, phase: str, where: object) -> bool:
    if phase == "static":
        return _tmp_of(run_dir, str(where))
    e = int(where)  # type: ignore[arg-type]
    if phase == "dump":
        return _tmp_of(run_dir, f"activations/epoch_{e:04d}.h5")
    if phase == "checkpoint":
        return _tmp_of(run_dir, f"checkpoints/epoch_{e:04d}.safetensors")
    if phase == "metrics":
        return (run_dir / f"checkpoints/epoch_{e:04d}.safetensors").exists() and _tmp_of(
            run_dir, "metrics.jsonl"
        )
    try:  # train: epoch e-1 fully written (its metrics line too), so epoch e is being trained
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
        return any(json.loads(r)["epoch"] == e - 1 for r in rows)
    except (OSError, ValueError):
        return False


def _what_was_hit(run_dir: Path) -> str:
    temps = temp_files(run_dir)
    if any(p.name.endswith(".h5.tmp") for p in temps):
        return "dump write"
    if any(p.parent.name == "checkpoints" for p in temps):
        return "checkpoint write"
    return "other write" if temps else "training or validation"


def test_sigkill_at_20_moments_then_resume_is_bitwise_identical(world) -> None:
    zygote, data, ref_state = world["zygote"], world["data"], world["ref_state"]
    hits: Counter[str] = Counter()
    for i, (phase, where, frac) in enumerate(moments()):
        run_dir = world["root"] / f"kill-{i:02d}"
        child = zygote.start(train_args(run_dir, data), env={"PROBE_TEST_DELAY_WRITES": str(DELAY)})
        reached = wait_for(
            lambda r=run_dir, p=phase, w=where, c=child: _reached(r, p, w) or not c.alive(),
            timeout=60,
        )
        assert reached
        time.sleep(frac * (0.05 if phase == "train" else DELAY))  # a seeded moment inside the phase
        child.kill()
        child.wait()
        label = f"moment {i} ({phase} {where})"
        if not child.killed:  # it finished first: that moment was missed (the machine was slow)
            assert child.exit_code == 0, child.output
            hits["missed"] += 1
            continue
        hits[_what_was_hit(run_dir)] += 1

        # Nothing half-written: every file that is not a temporary file is complete and readable.
        if (run_dir / "config.json").exists():
            check_run_files(run_dir)
            recover = ["train", "--run-dir", str(run_dir), "--resume", "--quiet"]
        else:
            # killed before the first file was in place: nothing to resume, the
            # same command starts over
            assert [
                p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
            ] == [], label
            recover = train_args(run_dir, data)
        done = zygote.run(recover)
        assert done.exit_code == 0, f"{label}: {done.output}"
        assert temp_files(run_dir) == [], label
        check_run_files(run_dir)
        assert_same_run(run_dir, ref_state)
    print(f"kill moments hit: {dict(hits)}")
    assert hits["missed"] <= 4, hits
    for kind in ("dump write", "checkpoint write", "training or validation"):
        assert hits[kind] >= 1, hits


def test_real_probe_command_killed_mid_checkpoint_and_resumed(world, tmp_path: Path) -> None:
    """The installed `probe` script, a real SIGKILL while epoch 2's checkpoint is being
    written, then --resume."""
    exe = Path(sys.executable).with_name("probe")
    env = {
        **os.environ,
        **CHILD_ENV,
        "PROBE_CACHE": str(world["root"] / "cache"),
        "PROBE_TEST_DELAY_WRITES": "0.4",
    }
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [str(exe), *train_args(run_dir, world["data"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(
            lambda: (
                _tmp_of(run_dir, "checkpoints/epoch_0002.safetensors") or proc.poll() is not None
            ),
            timeout=120,
        )
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, out
    assert Run(run_dir).epochs() == [0, 1]
    check_run_files(run_dir)
    env.pop("PROBE_TEST_DELAY_WRITES")
    done = subprocess.run(
        [str(exe), "train", "--run-dir", str(run_dir), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "after epoch 1" in done.stdout
    assert temp_files(run_dir) == []
    assert_same_run(run_dir, world["ref_state"])


def test_killed_while_writing_config_the_same_command_starts_over(world, tmp_path: Path) -> None:
    """Only a temporary file left: not 'already exists', not 'not a probe run'."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".config.json.abc123.tmp").write_text('{"form')
    done = world["zygote"].run(train_args(run_dir, world["data"]))
    assert done.exit_code == 0, done.output
    assert temp_files(run_dir) == []
    assert_same_run(run_dir, world["ref_state"])


# --- failed writes: file too large, disk full -----------------------------------------------------


def test_file_size_limit_is_one_line_naming_the_file_and_the_run_resumes(
    world, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE below epoch 1's checkpoint (SIGXFSZ ignored, so the write gets EFBIG)."""
    ref = Run(world["ref"])
    sizes = {
        p.relative_to(ref.path).as_posix(): p.stat().st_size
        for p in ref.path.rglob("*")
        if p.is_file()
    }
    before = [
        v
        for k, v in sizes.items()
        if k != "checkpoints/epoch_0001.safetensors"
        and (
            k.endswith("0000.safetensors")
            or k.endswith("_0000.h5")
            or k.endswith("_0001.h5")
            or k.startswith("data/")
            or k in ("config.json", "metrics.jsonl")
        )
    ]
    limit = max(before) + 1024
    assert limit < sizes["checkpoints/epoch_0001.safetensors"], sizes
    run_dir = tmp_path / "run"
    child = world["zygote"].run(train_args(run_dir, world["data"]), fsize=limit)
    assert child.exit_code == 1, child.output
    line = one_error_line(child.output)
    assert line.startswith(
        f"error: {run_dir / 'checkpoints/epoch_0001.safetensors'}: could not write"
    ), line
    assert "too large" in line.lower()
    assert check_run_files(run_dir) == [0]
    assert temp_files(run_dir) == []
    done = world["zygote"].run(["train", "--run-dir", str(run_dir), "--resume", "--quiet"])
    assert done.exit_code == 0, done.output
    assert_same_run(run_dir, world["ref_state"])


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory):
    from probe.testing import synthetic_dataset
    from probe.training.config import TrainConfig

    cfg = TrainConfig(**{**SMALL, "epochs": 3})
    ref = train_small(tmp_path_factory.mktemp("small") / "ref", epochs=3)
    return cfg, synthetic_dataset(n_train=80, n_test=40, seed=cfg.seed), run_state(ref)


@pytest.mark.parametrize(
    ("folder", "name", "nth", "complete"),
    [
        ("activations", "epoch_0002.h5", 1, [0, 1]),
        ("checkpoints", "epoch_0002.safetensors", 1, [0, 1]),
        (
            "",
            "metrics.jsonl",
            3,
            [0, 1, 2],
        ),  # the third metrics write: epoch 2 is complete, its line not yet written
        ("data", "analysis_batch.safetensors", 1, []),
    ],
)
def test_disk_full_fails_naming_the_file_keeps_earlier_epochs_and_resumes(
    small_reference,
    tmp_path: Path,
    monkeypatch,
    folder: str,
    name: str,
    nth: int,
    complete: list[int],
) -> None:
    """ENOSPC from the fsync of one write, after half the file reached the disk (in process)."""
    from probe.training.loop import train

    cfg, ds, ref_state = small_reference
    run_dir = tmp_path / "run"
    seen = []
    real_fsync = os.fsync

    def full_disk_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent == run_dir / folder and path.name.startswith(f".{name}."):
            seen.append(path)
            if len(seen) == nth:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", full_disk_fsync)
    with pytest.raises(ProbeError) as info:
        train(run_dir, cfg, quiet=True, dataset=ds)
    monkeypatch.undo()
    target = run_dir / folder / name
    assert (
        str(info.value)
        == f"{target}: could not write (No space left on device); nothing was replaced"
    )
    assert temp_files(run_dir) == []
    assert check_run_files(run_dir) == complete
    train(run_dir, cfg, resume=True, quiet=True, dataset=ds)  # space is back
    assert_same_run(run_dir, ref_state)
