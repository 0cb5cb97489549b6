"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every file probe writes goes through here: written to a temporary name in the same
directory, flushed and fsync'd, then renamed over the target (rename is atomic on
POSIX within one filesystem), and the directory is fsync'd so the rename survives
a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from probe.errors import ProbeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _test_pause() -> None:
    """Test hook: PROBE_TEST_DELAY_WRITES=SECONDS holds every write open that long.

    The crash tests set it in a child process so that a SIGKILL can land while a
    temporary file exists (before and after its writer ran); unset, it costs nothing.
    """
    delay = os.environ.get("PROBE_TEST_DELAY_WRITES")
    if delay:
        time.sleep(float(delay) / 2)


# Writers that are not Python file objects report I/O failures in their own types:
# safetensors "I/O error: File too large (os error 27)", h5py "errno = 28, error message = ...".
_IO_ERROR = re.compile(r"os error \d+|errno = \d+|I/O error", re.IGNORECASE)


def _io_reason(exc: BaseException) -> str | None:
    """A short reason if `exc` is a failed write (disk full, file too large, ...), else None."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if _IO_ERROR.search(text):
        return (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it over `target`.

    For writers (h5py, safetensors, matplotlib) that want a file name rather than
    a file object. The temporary name holds the process id (`.<name>.<pid>.<random>.tmp`),
    so what a killed writer left can be told from another process's write in progress
    (`remove_stale_temps`). On any exception the temporary file is removed and the target
    is untouched; a failed write (disk full, file too large, permission; an OSError
    or a writer's own I/O error) becomes a one-line `ProbeError` naming the target.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=suffix + ".tmp", dir=target.parent
        )
    except OSError as exc:  # a read-only or full folder, a name too long: one line, nothing written
        raise ProbeError(
            f"{target}: could not write ({exc.strerror or exc}); nothing was replaced"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600; give the file the usual permissions
    try:
        _test_pause()
        yield tmp
        os.chmod(tmp, mode)  # after the writer: safetensors re-creates the file as 0600
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _test_pause()
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except ProbeError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        reason = _io_reason(exc)
        if reason is None:
            raise
        raise ProbeError(f"{target}: could not write ({reason}); nothing was replaced") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    """Atomically replace `target` with `data`."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (NaN is refused: it is not JSON)."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_with(target: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Atomically create `target` by calling `writer(tmp_path)`."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it into place on success.

    If `target` already exists it is swapped out and removed after the new one is
    in place, so a reader never finds a directory that is half old, half new. The
    temporary name holds the process id (`.<name>.<pid>.<random>.tmp`), so what a
    killed process left behind can be told from another process's work in progress.
    A `target` that is a symbolic link is refused (one line): swapping it would
    replace, and then delete, whatever folder it points to.
    """
    target = Path(target)
    _refuse_link(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
            )
        )
    except OSError as exc:  # a read-only or full folder, a name too long: one line, nothing written
        raise ProbeError(
            f"{target}: could not write ({exc.strerror or exc}); nothing was replaced"
        ) from exc
    # mkdtemp makes 0700; results are read by reports and other users
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_dir(tmp)
        _swap_into_place(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_link(target: Path) -> None:
    if os.path.islink(target):
        raise ProbeError(
            f"{target}: is a symbolic link; probe replaces only folders it made, never a link's "
            "target (remove the link)"
        )


def _swap_into_place(tmp: Path, target: Path, attempts: int = 10) -> None:
    """Rename directory `tmp` to `target`, moving a directory already there out of the way.

    Another process may put the same result in place at the same moment (two
    `probe analyze` on one run): a rename that loses that race (ENOTEMPTY, or
    ENOENT when the other moved the old one away first) is retried, so both
    succeed and the last one wins.
    """
    olds: list[Path] = []
    try:
        for attempt in range(attempts):
            try:
                # checked again at the swap: it may have been put there meanwhile
                _refuse_link(target)
                if os.path.lexists(target):
                    old = Path(
                        tempfile.mkdtemp(
                            prefix=f".{target.name}.{os.getpid()}.",
                            suffix=".old",
                            dir=target.parent,
                        )
                    )
                    olds.append(old)
                    os.replace(target, old)  # onto an empty directory: allowed
                os.replace(tmp, target)
                return
            except OSError as exc:
                if (
                    exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST)
                    or attempt == attempts - 1
                ):
                    raise
    finally:
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


# --- what killed writers left ---------------------------------------------------------------------

# `.<name>.<pid>.<random>[<suffix>].tmp` (atomic_path, atomic_dir) and `.<name>.<pid>.<random>.old`
# (a swapped-out result folder); mkstemp's random part is 8 of [a-z0-9_].
_PROBE_TEMP = re.compile(r"^\..+\.(\d{1,10})\.[a-z0-9_]{8}(\.[A-Za-z0-9]{1,12})?\.(tmp|old)$")


def temp_owner(name: str) -> int | None:
    """The process id in a probe temporary's name, or None if `name` is not one."""
    m = _PROBE_TEMP.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(root: str | Path, depth: int) -> list[Path]:
    """Remove probe temporaries under `root` (at most `depth` folders down) whose writer is dead.

    Only names probe makes (`.<name>.<pid>.<random>.tmp|.old`) are touched, only when
    that process no longer exists on this host, and never through a link: a link
    with such a name, or anything else, is left alone. Returns what was removed.
    """
    root = Path(root)
    removed: list[Path] = []
    if os.path.islink(root) or not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        stale = [
            n
            for n in [*dirs, *files]
            if (pid := temp_owner(n)) is not None and pid != os.getpid() and not pid_alive(pid)
        ]
        dirs[:] = [d for d in dirs if temp_owner(d) is None and level < depth]
        for name in stale:
            p = Path(folder) / name
            try:
                if os.path.islink(p):
                    continue
                if p.is_dir():
                    shutil.rmtree(p)  # rmtree never follows links inside
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
