"""Building pages: read a run or a sweep, take the digest of what its page shows, and render
and write the page only when that digest changed.

`probe report RUN` writes RUN/report/index.html; `probe report SWEEP` writes each run's page,
then the sweep's comparison page, whose table is `probe compare`'s own (probe.studies.rows and
probe.studies.table), so page and terminal agree. A damaged run costs its own page, not the
sweep's; every file that cannot be used is one warning, on stderr and on the page.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from probe.errors import NotARunError, ProbeError, RunFileError
from probe.io.paths import is_regular, lstat_or_none
from probe.report.digest import INDEX, REPORT_DIR, STAMP_FORMAT, code_digest, digest, up_to_date
from probe.report.model import Installed, PageResult, installed_analyses, read_run
from probe.report.render import render, write_report
from probe.report.views import run_nav, run_view, sweep_view
from probe.rundir.readers import STATUS_FILE, SWEEP_FILE, Warn, read_sweep_file, warn_stderr
from probe.rundir.run import CONFIG
from probe.studies import rows as rows_module
from probe.studies import sweep as sweep_module
from probe.studies import table as table_module
from probe.studies.rows import RunRow, collect
from probe.studies.table import table


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
    inputs = data.digest()
    report_dir = data.path / REPORT_DIR
    counts = dict(
        results=sum(len(g.results) for g in data.groups),
        failures=len(data.failures),
        missing=len(data.missing),
        warnings=data.warnings,
    )
    if not force and up_to_date(report_dir, inputs):
        return PageResult(report_dir / INDEX, False, inputs, **counts)
    page = render(
        "run.html.j2",
        f"probe report: {data.path.resolve().name}",
        run_nav(data),
        f"probe report {shlex.quote(display)}",
        run_view(data),
    )
    write_report(report_dir, page, inputs, {"kind": "run", "path": display})
    return PageResult(report_dir / INDEX, True, inputs, **counts)


def read_sweep_spec(sweep_dir: Path) -> dict[str, Any]:
    """sweep.json as far as the page shows it: name, description, grid and analyses, each of
    the right type."""
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
) -> tuple[list[RunRow], list[str], list[str], list[dict[str, Any]]]:
    """The comparison rows of a sweep: `probe compare`'s own, so page and terminal agree.

    Returns (runs, swept keys, columns, records), as `rows.collect` + `table.table`;
    analysis scalars only of the `versions` installed (analysis -> version).
    """
    rows, keys = collect([str(sweep_dir)], warn=warn, versions=versions)
    # A point not started yet has no config, so every config key looks "swept" to
    # `collect`; keep the grid's keys and those that differ between started runs.
    grid = set(read_sweep_spec(sweep_dir)["grid"])
    started = [r for r in rows if r.started]
    keys = [
        k
        for k in keys
        if k in grid or len({json.dumps(r.config.get(k), default=str) for r in started}) > 1
    ]
    columns, records = table(rows, keys)
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
    plural = "s" if len(pages) != 1 else ""
    echo(f"{len(pages)} run page{plural}: {written} written, {len(pages) - written} up to date")
    status = sweep_dir / STATUS_FILE
    inputs = digest(
        {
            "format": STAMP_FORMAT,
            "code": code_digest(rows_module, table_module, sweep_module),
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
    if not force and up_to_date(report_dir, inputs):
        return PageResult(report_dir / INDEX, False, inputs, warnings=warnings)
    name = spec["name"] or sweep_dir.resolve().name
    page = render(
        "sweep.html.j2",
        f"probe sweep report: {name}",
        [("table", "comparison"), ("curves", "curves"), ("runs", "run pages")],
        f"probe report {shlex.quote(display)}",
        sweep_view(display, spec, name, rows, keys, columns, records, pages, warnings),
    )
    write_report(report_dir, page, inputs, {"kind": "sweep", "path": display})
    return PageResult(report_dir / INDEX, True, inputs, warnings=warnings)


def report(
    path: str | Path, *, force: bool = False, echo: Callable[[str], None] = click.echo
) -> PageResult:
    """The page for a run directory or a sweep directory, whichever `path` is."""
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
