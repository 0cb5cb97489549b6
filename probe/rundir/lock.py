"""One writer per run: `probe train` holds an exclusive lock on its run directory.

Two trainings writing one run (a `train R` and, meanwhile, a `train R --force`)
would interleave config, checkpoints and metrics of different runs into one that
`--resume` then accepts. So every training (fresh, `--resume`, `--force`) takes
`RUN/.probe-train.lock` with `flock(LOCK_EX | LOCK_NB)` before it changes anything,
and a second writer stops with one line naming the holder (pid, host, start time)
written into the file. The kernel drops an flock when its process dies, however it
dies, so a lock left by a killed training is stale by construction and simply taken
over. Readers (`probe analyze`, `report`, `compare`) never take it: an analysis of a
run being trained keeps working.

The file is removed when the lock is released. A second process may have opened
it just before; it then holds a lock on a file no longer in the directory, so a
taker checks after locking that the file it locked is still the one at the path,
and retries otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from probe.errors import ProbeError, UsageError

LOCK_FILE = ".probe-train.lock"
_MAX_HOLDER_BYTES = 4096  # what we read of a holder record: the file is in an untrusted folder


def _holder_text(fd: int) -> str:
    """`pid 123 on host since 2026-...` from the record the holder wrote (whatever the file has)."""
    try:
        raw = os.pread(fd, _MAX_HOLDER_BYTES, 0)
        d = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        d = None
    if not isinstance(d, dict):
        return "another process (its lock record is not readable yet)"
    pid, host, started = d.get("pid"), d.get("host"), d.get("started")
    pid = pid if type(pid) is int else "?"
    host = str(host)[:100] if isinstance(host, str) else "?"
    started = str(started)[:40] if isinstance(started, str) else "?"
    return f"pid {pid} on {host} since {started}"


# Never follow a link, never block on a FIFO someone left under the lock file's name.
_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ProbeError(
                f"{path}: is a symbolic link; remove it (probe keeps its lock file inside the run)"
            ) from None
        raise ProbeError(
            f"{path.parent}: cannot lock the run for writing ({exc.strerror or exc})"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ProbeError(
            f"{path}: is not a regular file; remove it (probe keeps its lock file there)"
        )
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and stat.S_ISREG(b.st_mode)


def holder(run_dir: str | Path) -> str | None:
    """Who holds the training lock of `run_dir` now (None if nobody); takes nothing."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(fd)
        except OSError:
            return None
        return None
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken


def busy_error(run_dir: str | Path, who: str) -> UsageError:
    return UsageError(
        "--run-dir",
        f"{run_dir} is being trained by {who}; wait for it to finish or stop it "
        "(one training writes a run at a time)",
    )


def _lock_soon(fd: int, patience: float = 0.25) -> None:
    """flock(LOCK_EX) without waiting for a holder, but past a `holder()` peek (a shared lock held
    for microseconds)."""
    end = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def hold(run_dir: str | Path, command: str = "train") -> Iterator[Path]:
    """Hold the training lock of `run_dir` (which must exist) for the `with` block.

    Raises `UsageError` (exit 2) naming the holder if another process has it, and a
    one-line `ProbeError` if the lock file cannot be created (a read-only run).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    for _ in range(50):
        fd = _open(path)
        try:
            _lock_soon(fd)
        except BlockingIOError:
            who = _holder_text(fd)
            os.close(fd)
            raise busy_error(run_dir, who) from None
        except OSError as exc:
            os.close(fd)
            raise ProbeError(f"{path}: cannot lock the run ({exc.strerror or exc})") from None
        if _same_file(fd, path):
            break
        # the previous holder removed the file between our open and our lock: take the new one
        os.close(fd)
    else:
        raise ProbeError(f"{path}: cannot lock the run (the lock file keeps being replaced)")
    record: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass  # the lock is what counts; the record only names the holder
    try:
        yield path
    finally:
        if _same_file(fd, path):
            with contextlib.suppress(OSError):
                # while still holding it: a waiting taker then sees a new file and retries
                os.unlink(path)
        os.close(fd)
