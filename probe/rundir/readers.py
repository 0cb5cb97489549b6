"""Readers of a run's and a sweep's untrusted files, shared by `probe report`, `probe compare`
and `probe sweep`.

Every file of a run or sweep folder may be crafted (docs/report.md, "Escaping and untrusted
files"), so each is read through probe.io.safeio only (a regular file, not a link, FIFO or
device, bounded in size, nesting and integer length, confined `within=` its run or sweep
folder) and then checked against its shape. A file that only costs its own part of a page or
a table is skipped with one warning (`read_or_warn`, through the caller's `Warn`); only what
makes the output impossible is an error.

Read here: metrics.jsonl rows (`read_metrics`), the result manifests, failure and skip records
under RUN/analyses (`scan_analyses`), a sweep's sweep.json (`read_sweep_file`) and its
status.json (`read_status`, the one reader of it). Nothing here renders or decides what a page
shows; probe.report and probe.studies do that with what these return.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import click

from probe.errors import ProbeError, RunFileError
from probe.io import safeio
from probe.io.paths import lstat_or_none
from probe.io.text import clean
from probe.rundir.results import MANIFEST, RESULT_FORMAT
from probe.rundir.run import ANALYSES, METRICS, metrics_row_problem

# A sweep folder: sweep.json (what `probe sweep` was asked, with its points) and status.json
# (its record of past attempts); each point is an ordinary run directory beside them.
SWEEP_FILE = "sweep.json"
STATUS_FILE = "status.json"
STATUS_LIMIT = 16 << 20  # a status file of a 10,000-point sweep with tracebacks is a few MB

EPOCH_DIR = re.compile(r"^epoch_(\d+)$")  # a per-epoch result folder, `epoch_0005`

Warn = Callable[[str], None]
SKIPPED = object()  # what `read_or_warn` returns for a file it did not read


# --- one warning per file --------------------------------------------------------------------


def warn_stderr(message: str) -> None:
    """The default `warn`: one line on stderr."""
    click.echo(f"warning: {clean(message, 500)}", err=True)


def read_or_warn(read: Callable[..., Any], path: Path, warn: Warn, then: str, **kwargs: Any) -> Any:
    """`read(path, **kwargs)` (a probe.io.safeio reader), or SKIPPED: a file that is not there is
    simply absent, one that cannot be read (a link, a FIFO, too large, too deep) is one warning,
    `<why>; <then>`."""
    try:
        return read(path, **kwargs)
    except safeio.MissingFileError:
        return SKIPPED
    except RunFileError as exc:
        warn(f"{exc}; {then}")
        return SKIPPED


# --- values of untrusted JSON ----------------------------------------------------------------


def is_int(v: Any) -> bool:
    """An integer that is not a boolean (JSON's `true` is an int to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float that is not a boolean."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def as_float(v: Any) -> float:
    """A metric value as a float; NaN for anything else (strings, booleans, integers too large
    for a float)."""
    if not is_number(v):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.nan


# --- metrics.jsonl, sweep.json, status.json --------------------------------------------------


def read_metrics(run_path: Path, warn: Warn) -> list[dict[str, Any]]:
    """metrics.jsonl rows with an integer `epoch`; a torn last line is dropped, other bad lines
    are warned about."""
    p = run_path / METRICS
    lines = read_or_warn(safeio.read_jsonl_lines, p, warn, "no metrics shown", within=run_path)
    rows = []
    for n, row in [] if lines is SKIPPED else lines:
        if isinstance(row, RunFileError):
            warn(f"{row}; line skipped")
        elif not isinstance(row, dict) or not is_int(row.get("epoch")):
            warn(f"{p}: line {n} is not a metrics record (no integer 'epoch'); line skipped")
        elif why := metrics_row_problem(row):
            warn(f"{p}: line {n}: {why}; line skipped")
        else:
            rows.append(row)
    return rows


def read_sweep_file(sweep_dir: Path) -> Any:
    """sweep.json of a sweep folder (any JSON value); unreadable is one error, as nothing can be
    shown without it."""
    try:
        return safeio.read_json(sweep_dir / SWEEP_FILE, within=sweep_dir)
    except RunFileError as exc:
        raise ProbeError(f"{exc} (not a readable sweep file)") from None


def read_status(sweep_dir: Path, warn: Warn = warn_stderr) -> dict[str, dict[str, Any]]:
    """status.json's runs, {point name: entry}: each entry a JSON object whose `state` and
    `error`, where present, are strings.

    It is only a record of past attempts (the run directories are the truth) and untrusted: its
    keys are only ever looked up, never used as paths. An absent file is no record; one that
    cannot be read (at most `STATUS_LIMIT` bytes, in the sweep folder), or is not a status, is one
    warning, and so is each entry of another shape; each is then ignored.
    """
    p = sweep_dir / STATUS_FILE
    d = read_or_warn(safeio.read_json, p, warn, "ignored", max_bytes=STATUS_LIMIT, within=sweep_dir)
    if d is SKIPPED:
        return {}
    runs = d.get("runs") if isinstance(d, dict) else None
    if not isinstance(runs, dict):
        warn(f"{p}: not a sweep status (no 'runs' object); ignored")
        return {}
    out = {}
    for name, entry in runs.items():
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k, ""), str) for k in ("state", "error")
        ):
            warn(
                f"{p}: the entry of {clean(repr(name), 80)} is not a status "
                "(state and error strings); ignored"
            )
            continue
        out[name] = entry
    return out


# --- the shapes of result manifests, failure and skip records --------------------------------


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


Fields = dict[str, tuple[Callable[[Any], bool], str]]

# field: (check, what it must be). A field present with another type skips the file.
MANIFEST_FIELDS: Fields = {
    "analysis": (lambda v: isinstance(v, str), "a string"),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: isinstance(v, str) or is_int(v), "a string"),
    "provider": (_opt_str, "a string"),
    "provider_version": (_opt_str, "a string"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "scope": (lambda v: v in ("epoch", "run"), '"epoch" or "run"'),
    "epoch": (lambda v: v is None or is_int(v), "an integer or null"),
    "epochs": (lambda v: isinstance(v, list) and all(is_int(e) for e in v), "a list of integers"),
    "files": (
        lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v),
        "a list of file names",
    ),
    "scalars": (
        lambda v: isinstance(v, dict) and all(_scalar(x) for x in v.values()),
        "an object of numbers or strings",
    ),
    "captions": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of strings",
    ),
    "created": (_opt_str, "a string"),
    "seconds": (lambda v: v is None or is_number(v), "a number"),
}
FAILURE_FIELDS: Fields = {
    "analysis": MANIFEST_FIELDS["analysis"],
    "variant": MANIFEST_FIELDS["variant"],
    "epoch": MANIFEST_FIELDS["epoch"],
    "params": MANIFEST_FIELDS["params"],
    "status": (_opt_str, "a string"),
    "error": (_opt_str, "a string"),
    "traceback": (_opt_str, "a string"),
    "created": (_opt_str, "a string"),
}
# `<epoch_NNNN|run>.skipped.json`: an analysis that does not apply to the model (probe.Skip),
# with its reason.
SKIP_FIELDS: Fields = {
    **{k: FAILURE_FIELDS[k] for k in ("analysis", "variant", "epoch", "params", "created")},
    "status": (lambda v: v == "skipped", "'skipped'"),
    "reason": (_opt_str, "a string"),
}


def shape_problem(
    d: Any, fields: Fields, required: Iterable[str], expect: dict[str, Any]
) -> str | None:
    """Why `d` does not fit `fields` (a missing required field, a wrong type, a value that
    contradicts where the file lies: `expect`), or None when it fits."""
    if not isinstance(d, dict):
        return "not a JSON object"
    for k in required:
        if k not in d:
            return f"no {k!r} field"
    for k, (ok, what) in fields.items():
        if k in d and not ok(d[k]):
            return f"{k!r} is not {what}"
    for k, want in expect.items():
        if k in d and d[k] != want:
            return f"{k!r} is {clean(repr(d[k]), 60)} but its folder says {clean(repr(want), 60)}"
    return None


def linkable(result_dir: Path, name: str) -> tuple[Path | None, str | None]:
    """Where a file a manifest names lies, if a page may link it.

    (path, None): a regular file inside `result_dir`, reached without a symlink;
    (None, None): simply not there (any more); (None, why): refused.
    """
    if not name or "\x00" in name or "\\" in name:
        return None, "is not a file name"
    pp = PurePosixPath(name)
    if pp.is_absolute():
        return None, "is an absolute path"
    if any(part in ("..", ".") for part in name.split("/")) or len(pp.parts) > 8:
        return None, "leaves its result folder"
    cur = result_dir
    for i, part in enumerate(pp.parts):
        cur = cur / part
        st = lstat_or_none(cur)
        if st is None:
            return None, None
        if stat.S_ISLNK(st.st_mode):
            return None, "is a symlink"
        last = i == len(pp.parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if not last and not stat.S_ISDIR(st.st_mode):
            return None, None
    return cur, None


# --- RUN/analyses ----------------------------------------------------------------------------

Result = tuple[Path, dict[str, Any]]  # a result folder and its checked manifest


def scan_analyses(run_path: Path, warn: Warn) -> tuple[list[Result], list[dict[str, Any]]]:
    """Every result (folder, checked manifest) and failure record of a run, confined to
    RUN/analyses.

    Skip records (`.skipped.json`) come with the failure records, with `status` "skipped".

    A manifest's `files` keep only names `linkable` in their folder; every file that does not
    fit its shape, or lies where it says it does not, is warned about and skipped.
    """
    root = run_path / ANALYSES
    st = lstat_or_none(root)
    if st is None or not stat.S_ISDIR(st.st_mode):
        if st is not None:
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            warn(f"{root}: {kind}; no results shown")
        return [], []
    results: list[Result] = []
    failures: list[dict[str, Any]] = []
    for a in _folders(root, warn):
        for v in _folders(Path(a.path), warn):
            for r in _entries(Path(v.path), warn):
                _scan_entry(run_path, a.name, v.name, r, warn, results, failures)
    return results, failures


def _scan_entry(
    run_path: Path,
    analysis: str,
    variant: str,
    r: os.DirEntry[str],
    warn: Warn,
    results: list[Result],
    failures: list[dict[str, Any]],
) -> None:
    """One entry of RUN/analyses/<analysis>/<variant>/: a result folder, a failure or a skip
    record (added to `results` or `failures` once checked), or nothing of probe's."""
    path = Path(r.path)
    epoch_dir = EPOCH_DIR.match(r.name.removesuffix(".failed.json").removesuffix(".skipped.json"))
    epoch = int(epoch_dir.group(1)) if epoch_dir else None
    expect = {"analysis": analysis, "variant": variant, "epoch": epoch}
    for suffix, fields, required in (
        (".skipped.json", SKIP_FIELDS, ("analysis", "status")),
        (".failed.json", FAILURE_FIELDS, ("analysis",)),
    ):
        if r.name.endswith(suffix):
            if epoch_dir or r.name == "run" + suffix:
                record = _read_checked(path, run_path, fields, required, expect, warn)
                if record is not None:
                    failures.append({"variant": variant, "epoch": epoch, **record})
            return
    if not r.is_dir(follow_symlinks=False) or not (epoch_dir or r.name == "run"):
        return
    scope = "epoch" if epoch_dir else "run"
    m = _read_checked(
        path / MANIFEST,
        run_path,
        MANIFEST_FIELDS,
        ("format", "analysis"),
        {**expect, "scope": scope},
        warn,
    )
    if m is None:  # no manifest (not a result, or not yet), or one warned about
        return
    if m.get("format") != RESULT_FORMAT:
        warn(f"{path / MANIFEST}: format is not {RESULT_FORMAT}; skipped")
        return
    files = []
    for name in m.get("files") or []:
        where, why = linkable(path, name)
        if why:
            warn(f"{path / MANIFEST}: file {clean(repr(name), 120)} {why}; not linked")
        elif where is not None:
            files.append(name)
    results.append((path, {**m, "files": files}))


def _entries(d: Path, warn: Warn) -> list[os.DirEntry[str]]:
    """The entries of `d` but temporaries (`.name`); symlinks are warned about and left out."""
    try:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        warn(f"{d}: cannot list ({exc.strerror or exc}); skipped")
        return []
    out = []
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_symlink():
            warn(f"{e.path}: a symlink; skipped (probe follows no link out of a run)")
            continue
        out.append(e)
    return out


def _folders(d: Path, warn: Warn) -> list[os.DirEntry[str]]:
    return [e for e in _entries(d, warn) if e.is_dir(follow_symlinks=False)]


def _read_checked(
    path: Path,
    run_path: Path,
    fields: Fields,
    required: Iterable[str],
    expect: dict[str, Any],
    warn: Warn,
) -> dict[str, Any] | None:
    """A manifest or failure record of the run at `run_path` that fits its shape, else None
    (warned about unless absent)."""
    d = read_or_warn(
        safeio.read_json, path, warn, "skipped", max_bytes=safeio.MAX_CONFIG_BYTES, within=run_path
    )
    if d is SKIPPED:
        return None
    problem = shape_problem(d, fields, required, expect)
    if problem:
        warn(f"{path}: {problem}; skipped")
        return None
    return d
