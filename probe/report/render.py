"""`probe report`: one static HTML page per run, and a comparison page per sweep.

The pages are meant to be opened straight from disk, years later, on a machine
without probe or a network: CSS and JavaScript are inline, the metric curves are
inline SVG drawn from metrics.jsonl (so a run with no analyses still gets a useful
page), and analysis figures are referenced by relative path (`../analyses/...`),
so the page keeps working when the run directory is copied or moved whole.

Nothing is left out silently: every installed analysis with no result is listed
with the `probe analyze` command that computes it, every failure with its error
and the command that retries it, results of an older version of an analysis with
the command that recomputes them, and every file that could not be used with why.

Every file of a run or sweep is untrusted input (docs/report.md, "Escaping"):
  * it is read through probe.io.safeio only, confined `within=` its run or sweep folder:
    a regular file, not a symlink, FIFO or device, bounded in size, nesting and
    integer length (safeio's limits); manifests, failure records, sweep and status
    files are checked against their shape, and a file that cannot be read or does
    not fit is skipped with a one-line warning (`read_or_warn`; on stderr and on the
    page), never a traceback;
  * files a manifest names are linked only when they are regular files inside
    their own result folder, reached without a symlink;
  * the page is rendered by Jinja2 with autoescaping on (templates in
    probe/templates/): Python collects plain values, the templates hold the markup,
    so every value is escaped for the context it lands in (text, quoted attribute,
    inline JSON through `tojson`); URLs are only ever relative paths built here
    from percent-encoded path parts.

A page is rebuilt only when its inputs changed: a digest of everything the page
shows (config, metrics, result manifests, failure records, installed analyses,
this module's source and templates) is stored in `report/inputs.json`; when it
matches, nothing is rewritten. The report directory is built beside the old one
and swapped in whole (`atomic.atomic_dir`), so a reader never sees half a page.

This module imports nothing heavy at import time (no torch, no matplotlib, not
even jinja2), so `probe --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import click

from probe.errors import NotARunError, ProbeError, RunFileError
from probe.io import atomic, safeio
from probe.io.paths import is_regular, lstat_or_none

REPORT_DIR = "report"
INDEX = "index.html"
STAMP = "inputs.json"
STAMP_FORMAT = "probe-report/1"

# Preferred section order; analyses not named here follow alphabetically.
ORDER = (
    "curves",
    "filters",
    "projection",
    "rsm",
    "cka",
    "gradcheck",
    "hessian",
    "landscape",
    "sharpness",
)

# One line per analysis on what its figures show and how to read them, used when
# a result's manifest carries no caption of its own.
CAPTIONS: dict[str, str] = {
    "curves": "Loss, accuracy, gradient norm and generalisation gap per epoch; a widening gap while "
    "training loss keeps falling means overfitting.",
    "filters": "First-layer convolution filters shown as colour patches; smooth oriented edges and colour "
    "blobs mean the layer has learned, salt-and-pepper noise means it has not (yet).",
    "projection": "The probe images' activations projected to 2-D and coloured by class; tighter, "
    "better-separated class clusters mean more linearly separable features.",
    "rsm": "Representational similarity matrix of the probe images sorted by class; bright blocks on "
    "the diagonal mean the layer represents images of one class alike.",
    "cka": "Linear CKA similarity between layers or epochs (0 to 1); values near 1 mean two "
    "representations are the same up to rotation and scale.",
    "gradcheck": "Backpropagated against finite-difference gradients per parameter tensor; relative errors "
    "far below 1e-3 mean the gradients are computed correctly.",
    "hessian": "Top eigenvalues of the loss Hessian on the analysis batch; larger values mean a sharper "
    "minimum, and gradient descent is stable only while the top one stays below 2/lr.",
    "landscape": "Training loss along random filter-normalised directions around the weights; a wide, flat "
    "basin means a minimum robust to weight perturbations.",
    "sharpness": "Loss increase under small weight perturbations of a given radius; lower means a flatter "
    "minimum, which often goes with better generalisation.",
}

# The run page's metric charts: title, metrics drawn, fixed y range, how to read it.
METRIC_CHARTS: tuple[tuple[str, tuple[str, ...], tuple[float, float] | None, str], ...] = (
    (
        "loss",
        ("train_loss", "val_loss"),
        None,
        "Mean training loss per epoch and validation loss at its end; validation rising while training falls means overfitting.",
    ),
    (
        "accuracy",
        ("train_acc", "val_acc"),
        (0.0, 1.0),
        "Training and validation accuracy per epoch; the vertical distance between them is the generalisation gap.",
    ),
    (
        "gradient norm",
        ("grad_norm_mean", "grad_norm_max"),
        None,
        "Global L2 norm of the gradient per step, mean and max over the epoch; spikes in the max warn of instability.",
    ),
    (
        "weight norm",
        ("weight_norm",),
        None,
        "L2 norm of all parameters at the end of each epoch; steady growth without weight decay is normal.",
    ),
    (
        "update ratio",
        ("update_ratio",),
        None,
        "Mean ||Δw|| / ||w|| per step; around 1e-3 is healthy, far above means a too-large learning rate.",
    ),
    ("learning rate", ("lr",), None, "Learning rate used in each epoch (the schedule)."),
    (
        "time",
        ("train_seconds", "val_seconds", "epoch_seconds"),
        None,
        "Wall-clock seconds per epoch: training, validation, and everything including writing outputs.",
    ),
)
SWEEP_METRICS = (
    ("val_acc", (0.0, 1.0)),
    ("train_acc", (0.0, 1.0)),
    ("val_loss", None),
    ("train_loss", None),
)
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_EPOCH_IN_NAME = re.compile(r"^(?P<stem>.*?)[_-]?epoch[_-]?(?P<n>\d+)$")
_IMAGE = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


# --- reading untrusted files --------------------------------------------------------------------------------
# Every file of a run or sweep folder may be crafted: report and compare read each one
# through probe.io.safeio (regular files only, bounded, confined `within=` their folder).
# A file that only costs its own part of the page is skipped with one warning
# (`read_or_warn`); only what makes the page impossible is an error.

Warn = Callable[[str], None]
SKIPPED = object()  # what `read_or_warn` returns for a file it did not read


def clean(text: Any, limit: int = 300) -> str:
    """`text` made safe for one terminal line: control and bidi characters shown escaped, long text cut."""
    s = "".join(
        c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else f"\\u{ord(c):04x}"
        for c in str(text)[: limit * 2]
    )
    return s if len(s) <= limit else s[: limit - 1] + "…"


def warn_stderr(message: str) -> None:
    """The default `warn`: one line on stderr."""
    click.echo(f"warning: {clean(message, 500)}", err=True)


def read_or_warn(read: Callable[..., Any], path: Path, warn: Warn, then: str, **kwargs: Any) -> Any:
    """`read(path, **kwargs)` (a probe.io.safeio reader), or SKIPPED: a file that is not there is simply
    absent, one that cannot be read (a link, a FIFO, too large, too deep) is one warning, `<why>; <then>`."""
    try:
        return read(path, **kwargs)
    except safeio.MissingFileError:
        return SKIPPED
    except RunFileError as exc:
        warn(f"{exc}; {then}")
        return SKIPPED


def read_sweep_file(sweep_dir: Path) -> Any:
    """sweep.json of a sweep folder (any JSON value); unreadable is one error, as nothing can be shown without it."""
    from probe.studies.sweep import SWEEP_FILE

    try:
        return safeio.read_json(sweep_dir / SWEEP_FILE, within=sweep_dir)
    except RunFileError as exc:
        raise ProbeError(f"{exc} (not a readable sweep file)") from None


def read_metrics(run_path: Path, warn: Warn) -> list[dict[str, Any]]:
    """metrics.jsonl rows with an integer `epoch`; a torn last line is dropped, other bad lines are warned about."""
    from probe.rundir.run import METRICS

    p = run_path / METRICS
    lines = read_or_warn(safeio.read_jsonl_lines, p, warn, "no metrics shown", within=run_path)
    rows = []
    for n, row in [] if lines is SKIPPED else lines:
        if isinstance(row, RunFileError):
            warn(f"{row}; line skipped")
        elif not isinstance(row, dict) or not _is_int(row.get("epoch")):
            warn(f"{p}: line {n} is not a metrics record (no integer 'epoch'); line skipped")
        else:
            rows.append(row)
    return rows


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _num(v: Any) -> float:
    """A metric value as a float; NaN for anything else (strings, booleans, integers too large for a float)."""
    if not _is_num(v):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.nan


# --- the shapes of the files read ---------------------------------------------------------------------------


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


# field: (check, what it must be). A field present with another type skips the file.
MANIFEST_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "analysis": (lambda v: isinstance(v, str), "a string"),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: isinstance(v, str) or _is_int(v), "a string"),
    "provider": (_opt_str, "a string"),
    "provider_version": (_opt_str, "a string"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "scope": (lambda v: v in ("epoch", "run"), '"epoch" or "run"'),
    "epoch": (lambda v: v is None or _is_int(v), "an integer or null"),
    "epochs": (lambda v: isinstance(v, list) and all(_is_int(e) for e in v), "a list of integers"),
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
    "seconds": (lambda v: v is None or _is_num(v), "a number"),
}
FAILURE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "analysis": MANIFEST_FIELDS["analysis"],
    "variant": MANIFEST_FIELDS["variant"],
    "epoch": MANIFEST_FIELDS["epoch"],
    "params": MANIFEST_FIELDS["params"],
    "status": (_opt_str, "a string"),
    "error": (_opt_str, "a string"),
    "traceback": (_opt_str, "a string"),
    "created": (_opt_str, "a string"),
}
# `<epoch_NNNN|run>.skipped.json`: an analysis that does not apply to the model (probe.Skip), with its reason.
SKIP_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: FAILURE_FIELDS[k] for k in ("analysis", "variant", "epoch", "params", "created")},
    "status": (lambda v: v == "skipped", "'skipped'"),
    "reason": (_opt_str, "a string"),
}


def shape_problem(
    d: Any,
    fields: dict[str, tuple[Callable[[Any], bool], str]],
    required: Iterable[str],
    expect: dict[str, Any],
) -> str | None:
    """Why `d` does not fit `fields` (a missing required field, a wrong type, a value that contradicts
    where the file lies: `expect`), or None when it fits."""
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
    """Where a file a manifest names lies, if the page may link it.

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


def scan_analyses(
    run_path: Path, warn: Warn
) -> tuple[list[tuple[Path, dict[str, Any]]], list[dict[str, Any]]]:
    """Every result (folder, checked manifest) and failure record of a run, confined to RUN/analyses.

    Skip records (`.skipped.json`) come with the failure records, with `status` "skipped".

    A manifest's `files` keep only names `linkable` in their folder; every file that
    does not fit its shape, or lies where it says it does not, is warned about and skipped.
    """
    from probe.rundir.results import MANIFEST, RESULT_FORMAT
    from probe.rundir.run import ANALYSES

    root = run_path / ANALYSES
    st = lstat_or_none(root)
    if st is None or not stat.S_ISDIR(st.st_mode):
        if st is not None:
            warn(
                f"{root}: {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'}; no results shown"
            )
        return [], []
    results: list[tuple[Path, dict[str, Any]]] = []
    failures: list[dict[str, Any]] = []
    for a in _entries(root, warn):
        if not a.is_dir(follow_symlinks=False):
            continue
        for v in _entries(Path(a.path), warn):
            if not v.is_dir(follow_symlinks=False):
                continue
            for r in _entries(Path(v.path), warn):
                path = Path(r.path)
                epoch_dir = _EPOCH_DIR.match(
                    r.name.removesuffix(".failed.json").removesuffix(".skipped.json")
                )
                epoch = int(epoch_dir.group(1)) if epoch_dir else None
                expect = {"analysis": a.name, "variant": v.name}
                if r.name.endswith(".skipped.json"):
                    if epoch_dir or r.name == "run.skipped.json":
                        skip = _read_checked(
                            path,
                            run_path,
                            SKIP_FIELDS,
                            ("analysis", "status"),
                            {**expect, "epoch": epoch},
                            warn,
                        )
                        if skip is not None:
                            failures.append({"variant": v.name, "epoch": epoch, **skip})
                elif r.name.endswith(".failed.json"):
                    if epoch_dir or r.name == "run.failed.json":
                        failure = _read_checked(
                            path,
                            run_path,
                            FAILURE_FIELDS,
                            ("analysis",),
                            {**expect, "epoch": epoch},
                            warn,
                        )
                        if failure is not None:
                            failures.append({"variant": v.name, "epoch": epoch, **failure})
                elif r.is_dir(follow_symlinks=False) and (epoch_dir or r.name == "run"):
                    m = _read_checked(
                        path / MANIFEST,
                        run_path,
                        MANIFEST_FIELDS,
                        ("format", "analysis"),
                        {**expect, "epoch": epoch, "scope": "epoch" if epoch_dir else "run"},
                        warn,
                    )
                    if m is None:  # no manifest (not a result, or not yet), or one warned about
                        continue
                    if m.get("format") != RESULT_FORMAT:
                        warn(f"{path / MANIFEST}: format is not {RESULT_FORMAT}; skipped")
                        continue
                    files = []
                    for name in m.get("files") or []:
                        where, why = linkable(path, name)
                        if why:
                            warn(
                                f"{path / MANIFEST}: file {clean(repr(name), 120)} {why}; not linked"
                            )
                        elif where is not None:
                            files.append(name)
                    results.append((path, {**m, "files": files}))
    return results, failures


def _read_checked(
    path: Path,
    run_path: Path,
    fields: dict[str, tuple[Callable[[Any], bool], str]],
    required: Iterable[str],
    expect: dict[str, Any],
    warn: Warn,
) -> dict[str, Any] | None:
    """A manifest or failure record of the run at `run_path` that fits its shape, else None (warned about unless absent)."""
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


# --- what a run holds ------------------------------------------------------------------------------------


@dataclass
class Group:
    """All results of one analysis with one parameter set (variant), across epochs."""

    analysis: str
    variant: str
    scope: str
    params: dict[str, Any]
    results: list[tuple[int | None, Path, dict[str, Any]]] = field(default_factory=list)
    older: list[tuple[int | None, Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def epochs(self) -> list[int]:
        return sorted(e for e, _, _ in self.results if e is not None)


@dataclass
class Installed:
    """What the report needs to know about an installed analysis."""

    name: str
    scope: str
    summary: str
    defaults: dict[str, Any]
    captions: dict[str, str]
    fingerprint: dict[str, Any]
    version: str = "1"


def installed_analyses() -> tuple[dict[str, Installed], str]:
    """The analyses of `probe.contract.registry.registry()`, and a note if they could not be listed."""
    from probe.contract.analysis import params_dict
    from probe.contract.registry import registry

    try:
        reg = registry()
    except ProbeError as exc:  # e.g. two plugins registering the same analysis name
        return {}, str(exc)
    broken = [
        f"plugin {i.name} ({i.dist} {i.version}) did not load: {i.error}".replace("  ", " ")
        for i in reg.plugins.values()
        if i.status == "error"
    ]
    out = {}
    for name, a in sorted(reg.analyses.items()):
        try:
            defaults = params_dict(a.params())
        except Exception:  # a params class without defaults: the commands simply name no --param
            defaults = {}
        out[name] = Installed(
            name,
            a.scope,
            a.summary,
            defaults,
            dict(a.figure_captions),
            {
                "name": name,
                "scope": a.scope,
                "summary": a.summary,
                "version": str(a.version),
                "provider": a.provider,
                "provider_version": a.provider_version,
                "defaults": _jsonable(defaults),
                "captions": dict(a.figure_captions),
            },
            str(a.version),
        )
    return out, "; ".join(broken)


def collect_groups(results: list[tuple[Path, dict[str, Any]]]) -> list[Group]:
    """Checked results (`scan_analyses`) grouped by (analysis, variant), in report order."""
    groups: dict[tuple[str, str], Group] = {}
    for path, m in results:
        name, variant = path.parent.parent.name, path.parent.name
        match = _EPOCH_DIR.match(path.name)
        scope = "epoch" if match else "run"
        g = groups.setdefault((name, variant), Group(name, variant, scope, m.get("params") or {}))
        g.results.append((int(match.group(1)) if match else None, path, m))
    for g in groups.values():
        g.results.sort(key=lambda r: -1 if r[0] is None else r[0])
    return sorted(
        groups.values(), key=lambda g: (_order(g.analysis), g.variant != "default", g.variant)
    )


def current_versions(
    groups: list[Group], inst: dict[str, Installed]
) -> tuple[list[Group], list[Group]]:
    """Keep each installed analysis's results of its current `version`; older ones move to `Group.older`.

    Returns (groups with current results, groups with older-version results only).
    An analysis that is not installed keeps all its results: there is no current version to compare with.
    """
    shown, outdated = [], []
    for g in groups:
        i = inst.get(g.analysis)
        if i is not None:
            g.older = [r for r in g.results if str(r[2].get("version", "1")) != i.version]
            g.results = [r for r in g.results if str(r[2].get("version", "1")) == i.version]
        (shown if g.results else outdated).append(g)
    return shown, outdated


def collect_failures(failures: list[dict[str, Any]], groups: list[Group]) -> list[dict[str, Any]]:
    """Failure records that no later success has superseded."""
    done = {(g.analysis, g.variant, e) for g in groups for e, _, _ in g.results}
    out = [f for f in failures if (f["analysis"], f["variant"], f["epoch"]) not in done]
    return sorted(
        out,
        key=lambda f: (
            _order(f["analysis"]),
            f["variant"],
            -1 if f["epoch"] is None else f["epoch"],
        ),
    )


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def caption(
    analysis: str, fname: str, manifest: dict[str, Any], installed: Installed | None
) -> str:
    """The manifest's caption for this file, else the analysis's declared one, else built-in, else generic."""
    stem = fname.rsplit(".", 1)[0]
    for table in (manifest.get("captions") or {}, installed.captions if installed else {}):
        for key in (fname, stem):
            if table.get(key):
                return str(table[key])
    if analysis in CAPTIONS:
        return CAPTIONS[analysis]
    what = f": {installed.summary}" if installed and installed.summary else ""
    return f"Figure {fname} of the {analysis} analysis{what}"


def analyze_command(
    run_display: str,
    analysis: str,
    epochs: str,
    params: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> str:
    """The `probe analyze` command that (re)computes one analysis, with its non-default parameters."""
    parts = [
        "probe",
        "analyze",
        shlex.quote(run_display),
        "--plugin",
        shlex.quote(analysis),
        "--epochs",
        shlex.quote(epochs),
    ]
    for k, v in sorted((params or {}).items()):
        if defaults is not None and k in defaults and defaults[k] == v:
            continue
        parts += ["--param", shlex.quote(f"{k}={_param_text(v)}")]
    return " ".join(parts)


def suggested_epochs(scope: str, epochs: list[int]) -> str:
    """`all` for run-wide analyses; about six evenly spaced epochs (always the last) for per-epoch ones."""
    if scope == "run" or len(epochs) <= 6:
        return "all"
    step = max(1, math.ceil(epochs[-1] / 5))
    return f"::{step}"


def _param_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


# --- the input digest ------------------------------------------------------------------------------------

TEMPLATES = Path(__file__).with_name("templates")


def _code_digest(*modules: str) -> str:
    """This module's source, its templates (and the named modules'): a changed layout is a changed input."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for p in [*(Path(__file__).with_name(m) for m in modules), *sorted(TEMPLATES.iterdir())]:
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _digest(blob: Any) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(report_dir: Path, digest: str) -> bool:
    try:  # confined to the run or sweep: a linked report/ is never read, and refused when written
        stamp = safeio.read_json(
            report_dir / STAMP, max_bytes=safeio.MAX_CONFIG_BYTES, within=report_dir.parent
        )
    except RunFileError:
        return False
    return (
        isinstance(stamp, dict) and stamp.get("digest") == digest and is_regular(report_dir / INDEX)
    )


def check_report_dir(report_dir: Path) -> None:
    """Refuse to replace a `report/` probe did not make: a symlink, a file, or a folder holding other files."""
    st = lstat_or_none(report_dir)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise RunFileError(
            report_dir, "is a symlink; probe writes no report through a link (remove it)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise RunFileError(report_dir, "is not a directory (move it away to write the report)")
    try:
        other = sorted(n for n in os.listdir(report_dir) if n not in (INDEX, STAMP))
    except OSError as exc:
        raise RunFileError(report_dir, f"cannot list ({exc.strerror or exc})") from None
    if other:
        names = ", ".join(clean(n, 60) for n in other[:5]) + (
            f" and {len(other) - 5} more" if len(other) > 5 else ""
        )
        raise RunFileError(
            report_dir,
            f"holds files probe did not write ({names}); move them away to rebuild the report",
        )


def _write_report(report_dir: Path, page: str, digest: str, inputs: dict[str, Any]) -> None:
    """Swap in a new report directory holding the page and the digest it was built from."""
    check_report_dir(report_dir)
    try:
        with atomic.atomic_dir(report_dir) as tmp:
            atomic.write_text(tmp / INDEX, page)
            atomic.write_json(tmp / STAMP, {"format": STAMP_FORMAT, "digest": digest, **inputs})
    except OSError as exc:
        raise ProbeError(f"{report_dir}: cannot write the report ({exc.strerror or exc})") from None
    except (
        ProbeError
    ) as exc:  # atomic's own one-liner names the temporary file: name the report instead
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise ProbeError(f"{report_dir}: cannot write the report ({reason})") from None


# --- building pages ------------------------------------------------------------------------------------------


@dataclass
class PageResult:
    """One page: where it is, whether it was (re)written, and the digest of its inputs."""

    path: Path
    written: bool
    digest: str
    results: int = 0
    failures: int = 0
    missing: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunData:
    """Everything a run's page shows, read and checked once (the digest is taken over it)."""

    path: Path
    display: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    epochs: list[int]
    groups: list[Group]
    outdated: list[Group]
    failures: list[dict[str, Any]]
    missing: list[Installed]
    inst: dict[str, Installed]
    note: str
    warnings: list[str]
    skipped: list[dict[str, Any]] = field(
        default_factory=list
    )  # analyses that do not apply (probe.Skip)

    def digest(self) -> str:
        return _digest(
            {
                "format": STAMP_FORMAT,
                "code": _code_digest(),
                "display": self.display,
                "epochs": self.epochs,
                "config": self.config,
                "metrics": self.metrics,
                "failures": self.failures,
                "note": self.note,
                "results": [
                    [str(p.relative_to(self.path)), m]
                    for g in self.groups + self.outdated
                    for _, p, m in g.results + g.older
                ],
                "installed": [i.fingerprint for i in self.inst.values()],
                "warnings": self.warnings,
                **({"skipped": self.skipped} if self.skipped else {}),
            }
        )


def read_run(
    run_dir: str | Path, display: str, installed: tuple[dict[str, Installed], str], warn: Warn
) -> RunData:
    """Read and check everything a run's page shows; problems with single files are warnings."""
    from probe.rundir.run import Run

    run = Run(run_dir)
    warnings: list[str] = []

    def note(msg: str) -> None:
        warnings.append(msg)
        warn(msg)

    config = run.config  # bounded, link-free, checked to hold a 'train' table; else one error
    metrics = read_metrics(run.path, note)
    inst, plugin_note = installed
    results, failure_records = scan_analyses(run.path, note)
    groups, outdated = current_versions(collect_groups(results), inst)
    failures = collect_failures(
        [f for f in failure_records if f.get("status") != "skipped"], groups
    )
    skipped = collect_failures([f for f in failure_records if f.get("status") == "skipped"], groups)
    have = {g.analysis for g in groups + outdated} | {f["analysis"] for f in failures + skipped}
    missing = [i for name, i in inst.items() if name not in have]
    return RunData(
        run.path,
        display,
        config,
        metrics,
        run.epochs(),
        groups,
        outdated,
        failures,
        missing,
        inst,
        plugin_note,
        warnings,
        skipped,
    )


def report_run(
    run_dir: str | Path,
    *,
    force: bool = False,
    display: str | None = None,
    installed: tuple[dict[str, Installed], str] | None = None,
    warn: Warn = warn_stderr,
) -> PageResult:
    """Write RUN/report/index.html unless it is up to date; return what happened."""
    display = display or str(run_dir)
    data = read_run(
        run_dir, display, installed if installed is not None else installed_analyses(), warn
    )
    digest = data.digest()
    report_dir = data.path / REPORT_DIR
    counts = dict(
        results=sum(len(g.results) for g in data.groups),
        failures=len(data.failures),
        missing=len(data.missing),
        warnings=data.warnings,
    )
    if not force and _up_to_date(report_dir, digest):
        return PageResult(report_dir / INDEX, False, digest, **counts)
    page = render(
        "run.html.j2",
        f"probe report: {data.path.resolve().name}",
        _run_nav(data),
        f"probe report {shlex.quote(display)}",
        run_view(data),
    )
    _write_report(report_dir, page, digest, {"kind": "run", "path": display})
    return PageResult(report_dir / INDEX, True, digest, **counts)


def read_sweep_spec(sweep_dir: Path) -> dict[str, Any]:
    """sweep.json as far as the page shows it: name, description, grid and analyses, each of the right type."""
    from probe.studies.sweep import SWEEP_FILE

    spec = read_sweep_file(sweep_dir)
    if not isinstance(spec, dict):
        raise RunFileError(sweep_dir / SWEEP_FILE, "not a sweep file (not a JSON object)")
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    analyze = spec.get("analyze") if isinstance(spec.get("analyze"), dict) else {}
    plugins = analyze.get("plugins") if isinstance(analyze.get("plugins"), list) else []
    return {
        "name": spec.get("name") if isinstance(spec.get("name"), str) else "",
        "description": spec.get("description") if isinstance(spec.get("description"), str) else "",
        "grid": {str(k): (v if isinstance(v, list) else [v]) for k, v in grid.items()},
        "plugins": [str(p) for p in plugins],
    }


def sweep_table(
    sweep_dir: Path, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> tuple[list[Any], list[str], list[str], list[dict[str, Any]]]:
    """The comparison rows of a sweep: `probe compare`'s own, so page and terminal agree.

    Returns (runs, swept keys, columns, records), as `compare.collect` + `compare.table`;
    analysis scalars only of the `versions` installed (analysis -> version).
    """
    from probe.studies import compare

    rows, keys = compare.collect([str(sweep_dir)], warn=warn, versions=versions)
    # A point not started yet has no config, so every config key looks "swept" to
    # `collect`; keep the grid's keys and those that differ between started runs.
    grid = set(read_sweep_spec(sweep_dir)["grid"])
    started = [r for r in rows if r.started]
    keys = [
        k
        for k in keys
        if k in grid or len({json.dumps(r.config.get(k), default=str) for r in started}) > 1
    ]
    columns, records = compare.table(rows, keys)
    return rows, keys, columns, records


def report_sweep(
    sweep_dir: str | Path,
    *,
    force: bool = False,
    display: str | None = None,
    echo: Callable[[str], None] = click.echo,
    warn: Warn = warn_stderr,
) -> PageResult:
    """Write each run's page, then SWEEP/report/index.html, each only if its inputs changed."""
    from probe.studies.sweep import STATUS_FILE

    sweep_dir = Path(sweep_dir)
    display = display or str(sweep_dir)
    warnings: list[str] = []
    said: set[str] = set()

    def once(msg: str) -> None:  # compare's table and each run's page read the same manifests
        if msg not in said:
            said.add(msg)
            warn(msg)

    def note(msg: str) -> None:
        warnings.append(msg)
        once(msg)

    spec = read_sweep_spec(sweep_dir)
    installed = installed_analyses()
    rows, keys, columns, records = sweep_table(
        sweep_dir, note, {n: i.version for n, i in installed[0].items()}
    )
    pages: dict[str, PageResult] = {}
    for row in rows:
        if row.started:
            try:
                pages[row.label] = report_run(
                    row.path,
                    force=force,
                    display=f"{display.rstrip('/')}/{row.label}",
                    installed=installed,
                    warn=once,
                )
            except ProbeError as exc:  # one damaged run costs its own page, not the sweep's
                note(f"{exc}; no page for {row.label}")
    written = sum(p.written for p in pages.values())
    echo(
        f"{len(pages)} run page{'s' if len(pages) != 1 else ''}: {written} written, {len(pages) - written} up to date"
    )
    status = sweep_dir / STATUS_FILE
    digest = _digest(
        {
            "format": STAMP_FORMAT,
            "code": _code_digest("compare.py", "sweep.py"),
            "display": display,
            "spec": spec,
            "status": [[r.label, r.state, r.error] for r in rows],
            "status_file": is_regular(status),
            "records": records,
            "keys": keys,
            "warnings": warnings,
            "runs": {k: p.digest for k, p in sorted(pages.items())},
        }
    )
    report_dir = sweep_dir / REPORT_DIR
    if not force and _up_to_date(report_dir, digest):
        return PageResult(report_dir / INDEX, False, digest, warnings=warnings)
    name = spec["name"] or sweep_dir.resolve().name
    page = render(
        "sweep.html.j2",
        f"probe sweep report: {name}",
        [("table", "comparison"), ("curves", "curves"), ("runs", "run pages")],
        f"probe report {shlex.quote(display)}",
        sweep_view(display, spec, name, rows, keys, columns, records, pages, warnings),
    )
    _write_report(report_dir, page, digest, {"kind": "sweep", "path": display})
    return PageResult(report_dir / INDEX, True, digest, warnings=warnings)


def report(
    path: str | Path, *, force: bool = False, echo: Callable[[str], None] = click.echo
) -> PageResult:
    """The page for a run directory or a sweep directory, whichever `path` is."""
    from probe.rundir.run import CONFIG
    from probe.studies.sweep import SWEEP_FILE

    p = Path(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError) as exc:
        reason = (
            "no such directory"
            if isinstance(exc, FileNotFoundError)
            else f"cannot open ({getattr(exc, 'strerror', None) or exc})"
        )
        raise NotARunError(p, reason) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotARunError(p, "is a file, not a run or sweep directory")
    if lstat_or_none(p / SWEEP_FILE) is not None:
        return report_sweep(p, force=force, display=str(path), echo=echo)
    if lstat_or_none(p / CONFIG) is not None:
        return report_run(p, force=force, display=str(path))
    raise NotARunError(
        p,
        f"neither a run directory (no {CONFIG}) nor a sweep directory (no {SWEEP_FILE}); "
        "make one with `probe train --run-dir DIR` or `probe sweep SPEC --out DIR`",
    )


@click.command(
    "report", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.argument(
    "path", type=click.Path()
)  # checked by `report`, so every bad path is a one-line error
@click.option(
    "--force", is_flag=True, help="Rewrite the pages even when their inputs are unchanged."
)
def report_command(path: str, force: bool) -> None:
    """Write a static HTML page for a run or a sweep, and print its path.

    \b
    probe report runs/base      # runs/base/report/index.html
    probe report sweeps/opt     # the sweep's comparison page, and each run's page

    The page opens straight from disk, offline. It is rebuilt only when the run's
    config, metrics or analysis results changed. Files of the run that cannot be
    used (damaged, of the wrong shape, or pointing outside the run) are skipped
    with a warning on stderr and listed on the page.
    """
    result = report(path, force=force)
    if result.written:
        click.echo(f"wrote {result.path}")
    else:
        click.echo(f"up to date (inputs unchanged, nothing rewritten): {result.path}")


# --- rendering: Jinja2 with autoescaping ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def environment() -> Any:
    """The template environment: autoescaping on for every template, undefined names are errors."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "allow_nan": False}
    return env


def render(
    template: str, title: str, nav: list[tuple[str, str]], regen: str, view: dict[str, Any]
) -> str:
    """One whole page: `view` holds plain values only; the template escapes each where it lands."""
    from probe.version import __version__

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        environment()
        .get_template(template)
        .render(title=title, nav=nav, regen=regen, version=__version__, now=now, p=view)
    )


def _rel(report_dir: Path, target: Path) -> str:
    """A URL relative to the report directory (one level below the run): each path part percent-encoded,
    so no part can become a scheme (`javascript:`), a query or a fragment."""
    parts = target.relative_to(report_dir.parent).parts
    if ".." in parts:
        raise ValueError(f"{target}: a link may not leave the run")
    return "../" + "/".join(quote(p, safe="") for p in parts)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("true" if v else "false")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        if not v:
            return "-"
        items = [_fmt(x) for x in v[:13]]
        return ", ".join(items) if len(v) <= 12 else ", ".join(items[:12]) + f", … ({len(v)} items)"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _items(d: Any, name: str) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in d.items()] if isinstance(d, dict) else [(name, _fmt(d))]


def _cards(
    cfg: dict[str, Any], metrics: list[dict[str, Any]], epochs: list[int]
) -> list[tuple[str, str]]:
    want = cfg["train"].get("epochs")
    trained = [m for m in metrics if _is_num(m.get("val_acc"))]
    cards = [
        ("epochs", f"{epochs[-1] if epochs else '-'} / {_fmt(want) if want is not None else '?'}")
    ]
    if trained:
        last = trained[-1]
        best = max(
            trained, key=lambda m: _num(m["val_acc"]) if math.isfinite(_num(m["val_acc"])) else -1
        )
        cards.append(("final val acc", f"{_num(last['val_acc']):.3f}"))
        cards.append(("best val acc", f"{_num(best['val_acc']):.3f} @ {best['epoch']}"))
        if _is_num(last.get("train_acc")):
            cards.append(("train acc", f"{_num(last['train_acc']):.3f}"))
            cards.append(("gap", f"{_num(last['train_acc']) - _num(last['val_acc']):+.3f}"))
    if _is_int(cfg.get("num_params")):
        cards.append(("parameters", f"{cfg['num_params']:,}"))
    secs = sum(s for m in metrics if math.isfinite(s := _num(m.get("epoch_seconds"))))
    if secs:
        cards.append(("train time", f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"))
    return cards


def _config_view(cfg: dict[str, Any]) -> dict[str, Any]:
    other = [
        (str(k), _fmt(v))
        for k, v in cfg.items()
        if k not in ("train", "model_spec", "versions", "classes")
    ]
    versions = cfg.get("versions")
    other += (
        [(f"versions.{k}", _fmt(v)) for k, v in versions.items()]
        if isinstance(versions, dict)
        else ([("versions", _fmt(versions))] if versions is not None else [])
    )
    if cfg.get("classes"):
        other.append(("classes", _fmt(cfg["classes"])))
    return {
        "train": _items(cfg["train"], "train"),
        "model": _items(cfg.get("model_spec", {}), "model_spec"),
        "run": other,
        "json": json.dumps(cfg, indent=2, sort_keys=True),
    }


def _metrics_view(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not metrics:
        return None
    charts = []
    drawn: set[str] = set()
    for title, keys, ylim, how in METRIC_CHARTS:
        series = [
            s
            for s in (_metric_series(metrics, k, PALETTE[i]) for i, k in enumerate(keys))
            if s.points
        ]
        if series:
            drawn.update(keys)
            charts.append({"svg": svg_chart(title, series, ylim=ylim), "caption": how})
    extra = sorted(
        {k for m in metrics for k, v in m.items() if k != "epoch" and k not in drawn and _is_num(v)}
    )
    for k in extra:
        s = _metric_series(metrics, k, PALETTE[0])
        if s.points:
            charts.append(
                {
                    "svg": svg_chart(k.replace("_", " "), [s]),
                    "caption": f"{k} per epoch, from metrics.jsonl.",
                }
            )
    cols = [
        "epoch",
        *[k for _, keys, _, _ in METRIC_CHARTS for k in keys if any(k in m for m in metrics)],
        *extra,
    ]
    return {
        "charts": charts,
        "cols": cols,
        "rows": [[_fmt(m.get(c)) for c in cols] for m in metrics],
    }


def _metric_series(metrics: list[dict[str, Any]], key: str, color: str) -> Series:
    return Series(
        key.replace("_", " "), [(m["epoch"], _num(m.get(key))) for m in metrics if key in m], color
    )


def _figures_of(files: Iterable[str]) -> list[str]:
    return [f for f in files if f.lower().endswith(_IMAGE)]


def _file_links(report_dir: Path, path: Path, files: Iterable[str]) -> list[tuple[str, str]]:
    return [(_rel(report_dir, path / f), f) for f in files if not f.lower().endswith(_IMAGE)]


def _browser(
    bid: str,
    data: dict[str, Any],
    names: list[str],
    table: dict[str, Any] | None = None,
    files: list[tuple[str, str]] | None = None,
    files_label: str = "data",
) -> dict[str, Any]:
    """Figures of several epochs behind one slider; `data` becomes inline JSON (`tojson`)."""
    epochs = data["epochs"]
    last = str(epochs[-1])
    figs = []
    for n in names:
        entry = data["figures"][n].get(last)
        figs.append(
            {
                "name": n,
                "src": entry["src"] if entry else "",
                "caption": entry["caption"] if entry else "",
            }
        )
    return {
        "id": bid,
        "data": data,
        "n": len(epochs),
        "last": last,
        "epochs_text": ", ".join(map(str, epochs)),
        "figs": figs,
        "table": table,
        "files": files or [],
        "files_label": files_label,
    }


def _group_view(
    g: Group, report_dir: Path, inst: Installed | None, failures: list[dict[str, Any]], display: str
) -> dict[str, Any]:
    title = g.analysis if g.variant == "default" else f"{g.analysis} ({g.variant})"
    sid = f"a-{g.analysis}-{g.variant}"
    first = g.results[-1][2]
    meta = [
        f"scope: {'per epoch' if g.scope == 'epoch' else 'whole run'}",
        f"version {_fmt(first.get('version', '?'))}",
        f"provider {first.get('provider') or '?'} {first.get('provider_version') or ''}".rstrip(),
    ]
    if g.variant != "default" and g.params:
        meta.append(
            "params: " + ", ".join(f"{k}={_param_text(v)}" for k, v in sorted(g.params.items()))
        )
    view: dict[str, Any] = {
        "sid": sid,
        "title": title,
        "sub": (inst.summary + " · " if inst else "") + " · ".join(meta),
        "browser": None,
        "table": None,
        "files": [],
        "files_label": "data",
        "run_results": [],
        "older": None,
        "failed_epochs": "",
    }
    if g.scope == "epoch":
        _epoch_view(view, g, report_dir, inst)
    else:
        view["run_results"] = [
            _run_result(report_dir, path, m, g.analysis, inst) for _, path, m in g.results
        ]
    if g.older:
        view["older"] = _older(g, display, inst)
    mine = [f for f in failures if f["analysis"] == g.analysis and f["variant"] == g.variant]
    view["failed_epochs"] = ", ".join(
        "run" if f["epoch"] is None else str(f["epoch"]) for f in mine
    )
    return view


def _older(g: Group, display: str, inst: Installed | None) -> dict[str, Any]:
    """How many results of older versions a group holds, and the command that recomputes them
    (a new version is a new cache key, so the plain command does)."""
    epochs = sorted({e for e, _, _ in g.older if e is not None})
    spec = "all" if g.scope == "run" or not epochs else ",".join(map(str, epochs))
    versions = sorted({_fmt(m.get("version", "1")) for _, _, m in g.older})
    return {
        "count": len(g.older),
        "versions": ", ".join(versions),
        "current": inst.version if inst else "?",
        "name": g.analysis if g.variant == "default" else f"{g.analysis} ({g.variant})",
        "command": analyze_command(
            display, g.analysis, spec, g.params, inst.defaults if inst else None
        ),
    }


def _run_result(
    report_dir: Path, path: Path, m: dict[str, Any], analysis: str, inst: Installed | None
) -> dict[str, Any]:
    files = m["files"]
    figs = _figures_of(files)
    # Run-wide results may still hold one figure per epoch (`<stem>_epoch_0005.png`): browse those.
    series: dict[str, dict[int, str]] = {}
    for f in figs:
        match = _EPOCH_IN_NAME.match(f.rsplit(".", 1)[0])
        if match:
            series.setdefault(match.group("stem") or "figure", {})[int(match.group("n"))] = f
    series = {k: v for k, v in series.items() if len(v) > 1}
    in_series = {f for v in series.values() for f in v.values()}
    browsers = []
    for stem, by_epoch in sorted(series.items()):
        data = {
            "epochs": sorted(by_epoch),
            "figures": {
                stem: {
                    str(e): {
                        "src": _rel(report_dir, path / f),
                        "caption": caption(analysis, f, m, inst),
                    }
                    for e, f in by_epoch.items()
                }
            },
        }
        browsers.append(_browser(f"s-{analysis}-{path.parent.name}-{stem}", data, [stem]))
    return {
        "figures": [
            {"src": _rel(report_dir, path / f), "name": f, "caption": caption(analysis, f, m, inst)}
            for f in figs
            if f not in in_series
        ],
        "browsers": browsers,
        "scalars": [(k, _fmt(v)) for k, v in sorted((m.get("scalars") or {}).items())],
        "files": _file_links(report_dir, path, files),
        "epochs": _fmt(m["epochs"]) if m.get("epochs") else "",
    }


def _epoch_view(view: dict[str, Any], g: Group, report_dir: Path, inst: Installed | None) -> None:
    names: list[str] = []
    figures: dict[str, dict[str, dict[str, str]]] = {}
    for e, path, m in g.results:
        for f in _figures_of(m["files"]):
            if f not in figures:
                names.append(f)
                figures[f] = {}
            figures[f][str(e)] = {
                "src": _rel(report_dir, path / f),
                "caption": caption(g.analysis, f, m, inst),
            }
    scalar_names = sorted({k for _, _, m in g.results for k in (m.get("scalars") or {})})
    table = (
        {
            "head": scalar_names,
            "rows": [
                {"epoch": e, "cells": [_fmt((m.get("scalars") or {}).get(k)) for k in scalar_names]}
                for e, _, m in g.results
            ],
        }
        if scalar_names
        else None
    )
    last_path, last_m = g.results[-1][1], g.results[-1][2]
    files, label = (
        _file_links(report_dir, last_path, last_m["files"]),
        f"data (epoch {g.epochs[-1]})",
    )
    if not names:  # numbers only: the table already shows every epoch, a slider would add nothing
        view.update(table=table, files=files, files_label=label)
        return
    view["browser"] = _browser(
        view["sid"], {"epochs": g.epochs, "figures": figures}, names, table, files, label
    )


def run_view(d: RunData) -> dict[str, Any]:
    """The plain values the run template shows (strings, numbers, lists; charts pre-rendered by `svg_chart`)."""
    report_dir = d.path / REPORT_DIR
    failures = []
    for f in d.failures:
        i = d.inst.get(f["analysis"])
        epoch = f["epoch"]
        failures.append(
            {
                "name": f["analysis"],
                "variant": f["variant"],
                "epoch": "run" if epoch is None else epoch,
                "error": f.get("error") or "",
                "traceback": f.get("traceback") or "",
                "created": f.get("created") or "",
                "command": analyze_command(
                    d.display,
                    f["analysis"],
                    str(epoch) if epoch is not None else "all",
                    f.get("params") or {},
                    i.defaults if i else None,
                ),
            }
        )
    return {
        "name": d.path.resolve().name,
        "display": d.display,
        "data_source": _fmt(d.config.get("data_source", "")),
        "cards": _cards(d.config, d.metrics, d.epochs),
        "config": _config_view(d.config),
        "metrics": _metrics_view(d.metrics),
        "groups": [
            _group_view(g, report_dir, d.inst.get(g.analysis), d.failures, d.display)
            for g in d.groups
        ],
        "missing": [
            {
                "name": i.name,
                "summary": i.summary,
                "command": analyze_command(d.display, i.name, suggested_epochs(i.scope, d.epochs)),
            }
            for i in d.missing
        ],
        "outdated": [_older(g, d.display, d.inst.get(g.analysis)) for g in d.outdated],
        "failures": failures,
        "note": d.note,
        "skipped": d.warnings,
        "not_applicable": [
            {
                "name": f["analysis"],
                "variant": f["variant"],
                "epoch": "run" if f["epoch"] is None else f["epoch"],
                "reason": f.get("reason") or "",
            }
            for f in d.skipped
        ],
    }


def _run_nav(d: RunData) -> list[tuple[str, str]]:
    nav = [("config", "config"), ("metrics", "training curves")]
    nav += [
        (
            f"a-{g.analysis}-{g.variant}",
            g.analysis if g.variant == "default" else f"{g.analysis}·{g.variant[:8]}",
        )
        for g in d.groups
    ]
    n_bad = len(d.missing) + len(d.failures) + len(d.outdated)
    nav.append(("missing", f"missing & failed ({n_bad})" if n_bad else "missing & failed"))
    return nav


# --- the sweep page ----------------------------------------------------------------------------------------------


def _colors(n: int) -> list[str]:
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    return [f"hsl({round(360 * i / n)},65%,42%)" for i in range(n)]


def _sort_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if _is_num(v):
        return repr(_num(v))
    return str(v)


def sweep_view(
    display: str,
    spec: dict[str, Any],
    name: str,
    rows: list[Any],
    keys: list[str],
    columns: list[str],
    records: list[dict[str, Any]],
    pages: dict[str, PageResult],
    warnings: list[str],
) -> dict[str, Any]:
    """The plain values the sweep template shows."""
    from probe.studies.compare import format_cell, stability_summary

    colors = dict(zip([r.label for r in rows], _colors(len(rows)), strict=True))
    shown = [
        c
        for c in columns
        if c == "run" or any(format_cell(r.get(c), c) not in ("-", "") for r in records)
    ]
    view_rows = []
    for rec, row in zip(records, rows, strict=True):
        p = pages.get(row.label)
        view_rows.append(
            {
                "label": row.label,
                "color": colors[row.label],
                "state": row.state,
                "error": row.error,
                "href": f"../{quote(row.label, safe='')}/report/index.html" if p else "",
                "has_metrics": bool(row.metrics),
                "cells": [
                    {
                        "run": c == "run",
                        "wrap": c == "error",
                        "sort": _sort_value(rec.get(c)),
                        "text": format_cell(rec.get(c), c),
                    }
                    for c in shown
                ],
                "analyses": (
                    f"{p.results} results"
                    + (f", {p.failures} failed" if p.failures else "")
                    + (f", {p.missing} missing" if p.missing else "")
                )
                if p
                else "-",
                "analyses_sort": str(p.results) if p else "",
            }
        )
    try:
        stab = stability_summary(records, keys)
    except (TypeError, ValueError, KeyError):  # decorative; never lose the page over it
        stab = ""
    charts = []
    for metric, ylim in SWEEP_METRICS:
        series = [
            s
            for s in (
                Series(
                    r.label, list(zip(*r.series(metric), strict=True)), colors[r.label], key=r.label
                )
                for r in rows
            )
            if s.points
        ]
        if series:
            charts.append(
                {
                    "svg": svg_chart(metric.replace("_", " "), series, ylim=ylim, legend=False),
                    "caption": f"{metric} per epoch for every run of the sweep, one colour per run (legend below).",
                }
            )
    grid_text = " × ".join(
        f"{k} ∈ {{{', '.join(_param_text(v) for v in vs)}}}" for k, vs in spec["grid"].items()
    )
    return {
        "name": name,
        "description": spec["description"],
        "display": display,
        "grid_text": grid_text,
        "plugins": ", ".join(spec["plugins"]),
        "columns": shown,
        "rows": view_rows,
        "stability": stab,
        "charts": charts,
        "skipped": warnings,
    }


# --- inline SVG charts ------------------------------------------------------------------------------------------------


@dataclass
class Series:
    """One line of a chart: (x, y) points (NaN or inf breaks the line), a colour, an optional run key."""

    label: str
    points: list[tuple[float, float]]
    color: str
    key: str | None = None


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


def svg_chart(
    title: str,
    series: list[Series],
    *,
    ylim: tuple[float, float] | None = None,
    log: bool | None = None,
    legend: bool = True,
    width: int = 440,
    height: int = 250,
) -> Any:
    """A small line chart as inline SVG (a `markupsafe.Markup`): no plotting library, no file, readable offline.

    The geometry is computed here; chart.svg.j2 writes it, escaping every label. The
    y axis goes logarithmic (log=None: automatically) when every value is positive
    and they span more than a factor of 30, as diverging losses do.
    """
    from markupsafe import Markup

    points = [[(_num(x), _num(y)) for x, y in s.points] for s in series]
    finite = [(x, y) for pts in points for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    ml, mr, mt, mb = 52, 12, 24, 34
    pw, ph = width - ml - mr, height - mt - mb
    c: dict[str, Any] = {
        "title": title,
        "width": width,
        "height": height,
        "ml": ml,
        "mt": mt,
        "right": ml + pw,
        "bottom": mt + ph,
        "cx": ml + pw / 2,
        "cy": mt + ph / 2,
        "empty": not finite,
    }
    if not finite:
        return Markup(environment().get_template("chart.svg.j2").render(c=c))
    xs = [x for x, _ in finite]
    ys = [y for _, y in finite]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if log is None:
        log = ylim is None and min(ys) > 0 and max(ys) / min(ys) > 30
    if log and min(ys) <= 0:
        log = False
    if ylim is not None and min(ys) >= ylim[0] and max(ys) <= ylim[1]:
        y0, y1 = ylim
    elif log:
        y0, y1 = math.log10(min(ys)), math.log10(max(ys))
    else:
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.06 or (abs(y0) * 0.1 or 1.0)
        y0, y1 = y0 - pad, y1 + pad
    if y1 == y0 or not math.isfinite(y1 - y0) or not math.isfinite(x1 - x0):
        y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 == y0 else (y0, y1)
        if not (math.isfinite(y1 - y0) and math.isfinite(x1 - x0)):  # values near the float limits
            return Markup(environment().get_template("chart.svg.j2").render(c={**c, "empty": True}))

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        v = math.log10(y) if log else y
        return mt + ph - (v - y0) / (y1 - y0) * ph

    if log:
        yticks = [
            10.0**k for k in range(math.floor(y0), math.ceil(y1) + 1) if y0 - 1e-9 <= k <= y1 + 1e-9
        ]
        if len(yticks) < 3:
            yticks = sorted(
                {
                    m * 10.0**k
                    for k in range(math.floor(y0), math.ceil(y1) + 1)
                    for m in (1, 2, 5)
                    if y0 - 1e-9 <= math.log10(m * 10.0**k) <= y1 + 1e-9
                }
            )
    else:
        yticks = nice_ticks(y0, y1)
    xticks = [t for t in nice_ticks(x0, x1, 6, integer=True) if x0 <= t <= x1]
    c.update(
        log=log,
        ygrid=[f"{sy(t):.1f}" for t in yticks],
        xgrid=[f"{sx(t):.1f}" for t in xticks],
        ylabels=[(f"{sy(t) + 4:.1f}", _tick_label(t)) for t in yticks],
        xlabels=[(f"{sx(t):.1f}", _tick_label(t)) for t in xticks],
        series=[],
        legend=[],
    )
    few = sum(len(p) for p in points) <= 80
    for s, pts in zip(series, points, strict=True):
        segs: list[list[str]] = []
        cur: list[str] = []
        dots = []
        for x, y in pts:
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log):
                cur.append(f"{sx(x):.1f},{sy(y):.1f}")
                if few:
                    dots.append(
                        (f"{sx(x):.1f}", f"{sy(y):.1f}", f"{s.label}: epoch {_fmt(x)}, {_fmt(y)}")
                    )
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        c["series"].append(
            {
                "label": s.label,
                "key": s.key,
                "color": s.color,
                "dots": dots,
                "d": " ".join("M" + " L".join(seg) for seg in segs),
            }
        )
    if (
        legend and len(series) > 1
    ):  # one row at the right of the title line, laid out from the right edge
        cursor = width - mr
        for s in reversed(series):
            w = 6.6 * len(s.label)
            c["legend"].append(
                {
                    "x1": f"{cursor - w - 18:.1f}",
                    "x2": f"{cursor - w - 5:.1f}",
                    "x": f"{cursor:.1f}",
                    "color": s.color,
                    "label": s.label,
                }
            )
            cursor -= w + 28
    return Markup(environment().get_template("chart.svg.j2").render(c=c))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
