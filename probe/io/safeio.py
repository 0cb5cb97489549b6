"""Reading untrusted files: regular files only, bounded in size, depth and integer length.

Every file in a run, sweep or cache folder is untrusted input (docs/reliability.md,
"Threat model"): a crafted or careless folder can hold a symbolic link to
/dev/zero or to a file outside the run, a FIFO that blocks a reader forever, a
1 GB config.json, JSON nested 10,000 deep (RecursionError) or a 5,000-digit
integer (Python's int-string limit, ValueError). Each reader here turns all of
those into one `RunFileError` naming the file, before anything large is read or
allocated. The API is stable; other modules call it:

    open_regular(path, max_bytes=None, *, within=None) -> BinaryIO
        Open a regular file for reading (os.open with O_NOFOLLOW | O_NONBLOCK, so a
        FIFO never blocks); refuse a symbolic link, FIFO, device, socket or
        directory, and a file larger than `max_bytes`. With `within`, the file's
        real folder must lie inside that folder (no link in between leads out).
        A missing file raises `MissingFileError` (a RunFileError that is also a
        FileNotFoundError, so `except FileNotFoundError` keeps working).
    read_bytes(path, max_bytes=..., *, within=None) -> bytes
    read_text(path, max_bytes=..., *, within=None) -> str          (UTF-8)
    loads_json(text, *, source, max_depth=..., max_int_digits=...) -> Any
    read_json(path, *, max_bytes=..., max_depth=..., within=None) -> Any
    read_jsonl(path, *, max_bytes=..., max_depth=..., within=None,
               skip_torn_tail=True) -> list[Any]
    read_jsonl_lines(path, ...) -> list[(line number, value or RunFileError)]
        As read_jsonl, but a bad line is handed back (as its error) instead of raised.
    read_toml(path, *, max_bytes=..., max_depth=..., within=None) -> dict
    sha256_file(path, max_bytes=None, *, within=None) -> str (hex)
    regular_path(path, max_bytes=None, *, within=None)  (context manager) -> str
        For libraries that want a file name (safetensors, h5py): the file is
        checked and held open as by open_regular, and the name handed out is
        /proc/self/fd/N, so the library reads the very file that was checked.

Errors are `RunFileError(path, message)`: `<path>: <message>` on one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from probe.errors import RunFileError

# config.json, manifests and metrics are kilobytes; a long run's metrics a few MB
MAX_JSON_BYTES = 64 << 20
MAX_CONFIG_BYTES = 1 << 20  # config.json, a manifest, a failure record: kilobytes
MAX_TOML_BYTES = 1 << 20  # config and sweep files are written by hand
MAX_DEPTH = 64  # probe's own files nest 4 deep at most
# A file that declares more than this but stores under a sixteenth of it is sparse: probe never
# writes one, and reading it would hash or decode gigabytes of zeros (a 4 KB file declaring 6 GB).
SPARSE_MIN_BYTES = 256 << 20
MAX_INT_DIGITS = (
    40  # enough for any 128-bit integer; Python refuses > 4,300 digits with a ValueError
)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


class MissingFileError(RunFileError, FileNotFoundError):
    """A file that does not exist (catchable as RunFileError or FileNotFoundError)."""


class NotJSONError(RunFileError):
    """Text that does not parse as JSON (as opposed to JSON that is too deep or holds a huge
    integer)."""


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _check_within(path: Path, within: str | Path) -> None:
    real = os.path.realpath(path.parent)
    root = os.path.realpath(within)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise RunFileError(
            path,
            f"lies outside {within} through a symbolic link (resolves to {real}); probe reads "
            "nothing outside it",
        )


def open_regular(
    path: str | Path,
    max_bytes: int | None = None,
    *,
    within: str | Path | None = None,
    follow_links: bool = False,
) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file of at most `max_bytes` bytes.

    The file is opened with O_NOFOLLOW | O_NONBLOCK and checked with fstat on the
    open descriptor, so what is checked is what is read: a symlink (even to
    /dev/zero), a FIFO, a device, a socket or a directory is refused at once,
    never hashed or read forever. `follow_links=True` (a user's data folder, which
    may be a tree of links) opens a link's target, checked the same way.
    """
    path = Path(path)
    if within is not None:
        _check_within(path, within)
    nofollow = 0 if follow_links else os.O_NOFOLLOW
    flags = os.O_RDONLY | nofollow | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MissingFileError(path, "does not exist") from None
    except OSError as exc:
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise RunFileError(
                path, "is a symbolic link, not a regular file (probe does not follow links here)"
            ) from None
        raise RunFileError(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunFileError(path, f"is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise RunFileError(
                path, f"is {st.st_size:,} bytes, more than the {max_bytes:,} allowed for this file"
            )
        stored = getattr(st, "st_blocks", None)
        if stored is not None and st.st_size > SPARSE_MIN_BYTES and stored * 512 * 16 < st.st_size:
            raise RunFileError(
                path,
                f"declares {st.st_size:,} bytes but stores {stored * 512:,} (a sparse file: "
                "not one probe writes)",
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(
    path: str | Path,
    max_bytes: int = MAX_JSON_BYTES,
    *,
    within: str | Path | None = None,
    follow_links: bool = False,
) -> bytes:
    """The whole file, refusing more than `max_bytes` even if it grows while being read."""
    path = Path(path)
    with open_regular(path, max_bytes, within=within, follow_links=follow_links) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise RunFileError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise RunFileError(path, f"is more than the {max_bytes:,} bytes allowed for this file")
    return data


def read_text(
    path: str | Path, max_bytes: int = MAX_JSON_BYTES, *, within: str | Path | None = None
) -> str:
    path = Path(path)
    try:
        return read_bytes(path, max_bytes, within=within).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(path, f"is not UTF-8 text (byte {exc.start})") from None


def json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped, without recursion."""
    if text.count("[") + text.count("{") == 0:
        return 0
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _parse_int(max_digits: int):
    def parse(s: str) -> int:
        if len(s.lstrip("-")) > max_digits:
            raise ValueError(
                f"an integer of {len(s.lstrip('-')):,} digits (at most {max_digits} allowed)"
            )
        return int(s)

    return parse


def loads_json(
    text: str | bytes,
    *,
    source: str | Path,
    max_depth: int = MAX_DEPTH,
    max_int_digits: int = MAX_INT_DIGITS,
) -> Any:
    """Parse JSON text; too deep, too-long integers or malformed text is one RunFileError naming
    `source`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunFileError(source, f"is not UTF-8 text (byte {exc.start})") from None
    if json_depth(text) > max_depth:
        raise RunFileError(source, f"is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_int=_parse_int(max_int_digits))
    except json.JSONDecodeError as exc:
        raise NotJSONError(
            source, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # the digit limit, ours or Python's
        raise RunFileError(source, f"holds {_short(exc)}") from None
    except RecursionError:
        raise RunFileError(source, f"is nested more than {max_depth} levels deep") from None


def read_json(
    path: str | Path,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    within: str | Path | None = None,
) -> Any:
    """A JSON file, bounded in size, nesting and integer length; any problem is one RunFileError."""
    return loads_json(read_text(path, max_bytes, within=within), source=path, max_depth=max_depth)


def read_jsonl(
    path: str | Path,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    within: str | Path | None = None,
    skip_torn_tail: bool = True,
    numbered: bool = False,
) -> list[Any]:
    """One JSON value per non-empty line; a malformed last line (a crash mid-append) is skipped if
    asked.

    With `numbered`, (line number, value) pairs. An error names the file and the
    line: `<path>: line N is not JSON`, `<path>: line N is nested more than 64 levels deep`.
    """
    rows: list[Any] = []
    for n, value in read_jsonl_lines(
        path, max_bytes=max_bytes, max_depth=max_depth, within=within, skip_torn_tail=skip_torn_tail
    ):
        if isinstance(value, RunFileError):
            raise value from None
        rows.append((n, value) if numbered else value)
    return rows


def read_jsonl_lines(
    path: str | Path,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    within: str | Path | None = None,
    skip_torn_tail: bool = True,
) -> list[tuple[int, Any]]:
    """(line number, value) per non-empty line, for readers that skip a bad line rather than the
    file.

    A line that does not parse comes back with, as its value, the RunFileError that
    `read_jsonl` raises for it (`<path>: line N ...`; nothing JSON parses to is one);
    the file itself (a link, too large, not UTF-8) is still one RunFileError raised.
    """
    path = Path(path)
    lines = read_text(path, max_bytes, within=within).splitlines()
    rows: list[tuple[int, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            value: Any = loads_json(line, source=path, max_depth=max_depth)
        except NotJSONError:
            if skip_torn_tail and i == len(lines) - 1:
                continue
            value = NotJSONError(path, f"line {i + 1} is not JSON")
        except RunFileError as exc:
            value = RunFileError(path, f"line {i + 1} {str(exc)[len(str(path)) + 2 :]}")
        rows.append((i + 1, value))
    return rows


def _depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d)
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            deepest = max(deepest, d)
            stack += [(x, d + 1) for x in v]
    return deepest


def read_toml(
    path: str | Path,
    *,
    max_bytes: int = MAX_TOML_BYTES,
    max_depth: int = MAX_DEPTH,
    within: str | Path | None = None,
) -> dict[str, Any]:
    """A TOML file, bounded in size, nesting and integer length; any problem is one RunFileError."""
    path = Path(path)
    text = read_text(path, max_bytes, within=within)
    try:
        data = tomllib.loads(text, parse_float=float)
    except tomllib.TOMLDecodeError as exc:
        raise RunFileError(path, f"is not valid TOML ({exc})") from None
    except RecursionError:
        raise RunFileError(path, f"is nested more than {max_depth} levels deep") from None
    except ValueError:  # Python's int-string digit limit (4,300 digits)
        raise RunFileError(path, f"holds an integer of more than {MAX_INT_DIGITS} digits") from None
    if _depth(data) > max_depth:
        raise RunFileError(path, f"is nested more than {max_depth} levels deep")
    stack: list[Any] = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += v.values()
        elif isinstance(v, list):
            stack += v
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**MAX_INT_DIGITS:
            raise RunFileError(path, f"holds an integer of more than {MAX_INT_DIGITS} digits")
    return data


def sha256_file(
    path: str | Path, max_bytes: int | None = None, *, within: str | Path | None = None
) -> str:
    """SHA-256 (hex) of a regular file; a link, FIFO or device is refused before a byte is
    hashed."""
    path = Path(path)
    h = hashlib.sha256()
    with open_regular(path, max_bytes, within=within) as fh:
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        except OSError as exc:
            raise RunFileError(path, f"cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


@contextmanager
def regular_path(
    path: str | Path, max_bytes: int | None = None, *, within: str | Path | None = None
) -> Iterator[str]:
    """A file name for the checked regular file `path`, valid inside the `with` block (see the
    module docstring)."""
    with open_regular(path, max_bytes, within=within) as fh:
        fd_path = f"/proc/self/fd/{fh.fileno()}"
        yield fd_path if os.path.exists(fd_path) else str(path)


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_JSON_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_TOML_BYTES",
    "MissingFileError",
    "NotJSONError",
    "json_depth",
    "loads_json",
    "open_regular",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "read_jsonl_lines",
    "read_text",
    "read_toml",
    "regular_path",
    "sha256_file",
]
