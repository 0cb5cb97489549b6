"""Helpers for the reliability tests: a tiny image folder, a process that forks `probe`, run checks.

Crash tests need many real processes to SIGKILL. Starting Python and importing torch
costs seconds per process on a loaded 2-core machine, so a *zygote* imports probe and
torch once and forks a child per command: each child is a real, separate process
running the real `probe` command line (`probe.cli.cli`), and is killed with a real
SIGKILL, but starts in milliseconds. The zygote itself never runs torch code, so
forking it is safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# A run of 3 epochs on 80 training images: a few hundred milliseconds of training per run.
TINY_ARGS = ["--epochs", "3", "--batch-size", "16", "--val-batch-size", "32", "--subset-train-size", "0",
             "--base-width", "4", "--probe-set-size", "10", "--analysis-batch-size", "8", "--optimizer", "SGD_mom",
             "--lr", "0.05", "--seed", "0", "--device", "cpu", "--quiet"]

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def make_png_folder(root: Path, n_train: int = 8, n_test: int = 3, classes: int = 10, seed: int = 0) -> Path:
    """A CIFAR-shaped folder dataset of random PNGs: root/{train,test}/<class>/NNNN.png."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


_ZYGOTE = r"""
import json, os, resource, signal, sys
os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
import torch
torch.set_num_threads(1)
import torch._dynamo, torch.optim  # the first optimizer imports dynamo: seconds, so once here
import h5py, safetensors.torch, probe.cli, probe.train, probe.analyze, probe.context  # noqa: F401
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sys.stdin.close()
            os.environ.update(req.get("env", {}))
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1); os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
            if req.get("fsize"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversize write raises EFBIG instead
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            exec(req.get("prelude", ""), {})
            try:
                probe.cli.cli.main(req["args"], prog_name="probe", standalone_mode=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"pid": pid, "status": status}) + "\n"); out.flush()
"""


class Child:
    """One forked `probe` command: its pid, and (after `wait`) how it ended and what it printed."""

    def __init__(self, zygote: Zygote, pid: int, log: Path):
        self.zygote, self.pid, self.log = zygote, pid, log
        self.status: int | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 60) -> Child:
        if self.status is None:
            msg = self.zygote._read(timeout)
            assert msg["pid"] == self.pid, msg
            self.status = msg["status"]
        return self

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (dead, not yet reaped by the zygote) still accepts signal 0
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    @property
    def killed(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == 9

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Zygote:
    """A Python process with torch and probe imported that forks one `probe` child at a time."""

    def __init__(self, logs: Path, cache: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n = 0
        env = {**os.environ, **CHILD_ENV, "PROBE_CACHE": str(cache)}
        env.pop("PROBE_TEST_DELAY_WRITES", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"zygote did not start: {line!r}"

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the probe child did not finish in time")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return json.loads(line)

    def start(self, args: list[str], *, env: dict[str, str] | None = None, fsize: int | None = None,
              prelude: str = "") -> Child:
        """Fork a child running `probe ARGS` (one at a time: wait for it before starting another)."""
        self.n += 1
        log = self.logs / f"child-{self.n:03d}.log"
        req = {"args": args, "env": env or {}, "log": str(log), "fsize": fsize, "prelude": prelude}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return Child(self, self._read(30)["pid"], log)

    def run(self, args: list[str], **kw: Any) -> Child:
        return self.start(args, **kw).wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate, timeout: float = 30, poll: float = 0.002) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` passes (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


def temp_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes under `run_dir` (`.<name>.<random>.tmp`)."""
    return sorted(p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".old")))


def check_run_files(run_dir: Path) -> list[int]:
    """Assert every file of a run directory is complete and readable; returns the complete epochs.

    Temporary files are not part of the run and are skipped; everything else must
    parse: JSON, every metrics line, every checkpoint (verified), every dataset of
    every activation dump, the stored data batches.
    """
    import h5py
    from safetensors.torch import load_file

    from probe import activations, checkpoint
    from probe.rundir import Run

    run = Run(run_dir)
    assert isinstance(run.config["train"], dict)
    epochs = run.epochs()
    for p in sorted(run_dir.rglob("*")):
        if p.is_dir() or any(part.startswith(".") for part in p.relative_to(run_dir).parts):
            continue
        rel = p.relative_to(run_dir).as_posix()
        if rel == "config.json":
            json.loads(p.read_text())
        elif rel == "metrics.jsonl":
            rows = [json.loads(line) for line in p.read_text().splitlines()]  # no torn line: written whole
            assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
            assert {r["epoch"] for r in rows} <= set(epochs), (rows, epochs)
        elif rel.startswith("checkpoints/"):
            ckpt = checkpoint.load(p)
            ckpt.build_model()
        elif rel.startswith("activations/"):
            with h5py.File(p, "r") as f:
                assert f.attrs["format"] == activations.FORMAT
                names: list[str] = []
                f.visit(lambda n, names=names: names.append(n))
                for n in names:
                    if isinstance(f[n], h5py.Dataset):
                        f[n][()]
        elif rel.startswith("data/"):
            assert set(load_file(str(p))) == {"images", "labels", "indices"}
        else:
            raise AssertionError(f"unexpected file in a run directory: {rel}")
    for e in epochs:  # the dump is written before the checkpoint that completes an epoch
        assert run.activations_path(e).is_file(), e
    return epochs


def checkpoint_digests(run_dir: Path) -> dict[int, str]:
    """content_sha256 of every checkpoint: equal digests mean bitwise equal tensors and metadata."""
    from probe import checkpoint
    from probe.rundir import Run

    run = Run(run_dir)
    return {e: checkpoint.read_metadata(run.checkpoint_path(e))["content_sha256"] for e in run.epochs()}


def final_state(run_dir: Path) -> dict[str, Any]:
    """The final checkpoint's tensors (model, optimizer and RNG states)."""
    from safetensors.torch import load_file

    from probe.rundir import Run

    run = Run(run_dir)
    return load_file(str(run.checkpoint_path(run.epochs()[-1])))


def assert_bitwise_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def one_error_line(text: str) -> str:
    """The output of a failed command: exactly one non-empty line, never a traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]
