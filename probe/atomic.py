"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every file probe writes goes through here: written to a temporary name in the same
directory, flushed and fsync'd, then renamed over the target (rename is atomic on
POSIX within one filesystem), and the directory is fsync'd so the rename survives
a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ProbeError


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


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it over `target`.

    For writers (h5py, safetensors, matplotlib) that want a file name rather than
    a file object. On any exception the temporary file is removed and the target
    is untouched; an OSError (disk full, file too large, permission) becomes a
    one-line `ProbeError` naming the target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ProbeError(f"{target}: could not write ({exc.strerror or exc}); nothing was replaced") from exc
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
    in place, so a reader never finds a directory that is half old, half new.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
