"""Runs and sweeps read as the rows of `probe compare`'s table (and of the sweep report page).

A row holds one run's training config, its per-epoch metrics, the numeric scalars of its
analysis results and its state (finished, partial, failed, damaged, not started). Every file
is read through probe.rundir.readers (bounded, link-free, confined to its run or sweep folder):
a sweep point whose name would leave the sweep folder (checked by probe.io.paths, as
`probe sweep` checks it), a damaged run, a status.json or manifest of the wrong shape is
skipped with a one-line warning.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.contract.analysis import Analysis
from probe.contract.registry import registry
from probe.errors import ProbeError, UsageError
from probe.io.paths import ConfinementError, child_dir, lstat_or_none
from probe.rundir.readers import (
    SWEEP_FILE,
    Warn,
    as_float,
    clean,
    is_number,
    read_metrics,
    read_status,
    read_sweep_file,
    scan_analyses,
    warn_stderr,
)
from probe.rundir.run import Run


@dataclass
class RunRow:
    """One run, as the table and the plots see it."""

    path: Path
    label: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    state: str = "finished"
    error: str = ""
    started: bool = True

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of one metric; missing or non-finite values become NaN."""
        xs, ys = [], []
        for m in self.metrics:
            if key in m:
                xs.append(as_float(m["epoch"]))
                ys.append(as_float(m[key]))
        return xs, ys


def installed_analyses() -> dict[str, Analysis]:
    """The analyses installed now, by name (empty if the plugins cannot be listed, e.g. two
    registering one name: then every version counts and no headline column is shown)."""
    try:
        return dict(registry().analyses)
    except ProbeError:
        return {}


def analysis_scalars(
    run_dir: Path, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> dict[str, float]:
    """Numeric scalars of the newest result of each analysis (default variant preferred, last
    epoch), read from the checked manifests of `readers.scan_analyses`, keyed as
    `probe.rundir.results.scalars` keys them (`<analysis>.<scalar>`).

    With `versions` (analysis -> installed version), results of other versions are left out,
    as the report leaves them out.
    """
    results, _ = scan_analyses(Path(run_dir), warn)
    if versions:
        results = [
            (p, m)
            for p, m in results
            if versions.get(p.parent.parent.name, str(m.get("version", "1")))
            == str(m.get("version", "1"))
        ]
    # The last entry wins: other variants first, then the default one, each by ascending epoch.
    results.sort(
        key=lambda r: (r[1].get("variant", r[0].parent.name) == "default", r[1].get("epoch") or -1)
    )
    out: dict[str, float] = {}
    for path, m in results:
        for k, v in (m.get("scalars") or {}).items():
            if is_number(v):
                out[f"{path.parent.parent.name}.{k}"] = v
    return out


def read_run(
    path: Path, label: str, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> RunRow:
    """One run's row; a missing or damaged config.json is a one-line RunFileError."""
    run_config = Run(path).config  # not a run, or a damaged config.json: one RunFileError
    cfg = dict(run_config["train"])
    spec = run_config.get("model_spec")
    if isinstance(spec, dict) and isinstance(spec.get("params"), dict):
        cfg.update(  # `model.depth`, as sweeps name them
            {
                f"model.{k}": v
                for k, v in spec["params"].items()
                if isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
            }
        )
    metrics = read_metrics(path, warn)
    last = metrics[-1]["epoch"] if metrics else -1
    want = cfg.get("epochs")
    if isinstance(want, int) and not isinstance(want, bool):
        state = "finished" if last >= want else f"partial ({max(last, 0)}/{want} epochs)"
    else:
        state = f"partial ({max(last, 0)}/? epochs)"
    return RunRow(path, label, cfg, metrics, analysis_scalars(path, warn, versions), state)


def read_sweep(
    sweep_dir: Path, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> tuple[list[RunRow], list[str]]:
    """The runs of a sweep in grid order (failed ones included), and its swept keys."""
    path = sweep_dir / SWEEP_FILE
    d = read_sweep_file(sweep_dir)
    if not isinstance(d, dict) or not isinstance(d.get("points"), list):
        raise ProbeError(f"{path}: not a readable sweep file (no 'points' list)")
    swept = d.get("swept") if isinstance(d.get("swept"), list) else d.get("grid")
    if not isinstance(swept, list | dict) or not all(isinstance(k, str) for k in swept):
        raise ProbeError(f"{path}: not a readable sweep file (no 'grid' object)")
    keys = list(swept)  # JSON keys are sorted; "swept" keeps the order
    status = read_status(sweep_dir, warn)
    rows, seen = [], set()
    for i, p in enumerate(d["points"]):
        name = p.get("name") if isinstance(p, dict) else None
        try:  # one folder name inside the sweep, not a link (as `probe sweep` checks it)
            run_dir = child_dir(sweep_dir, name, f"{path}: point {i + 1}")
        except ConfinementError as exc:
            warn(f"{clean(exc, 480)}; skipped")
            continue
        st = lstat_or_none(run_dir)
        problem = (
            ("is listed twice" if name in seen else None)
            or ("has no 'values' object" if not isinstance(p.get("values", {}), dict) else None)
            or ("is not a directory" if st is not None and not stat.S_ISDIR(st.st_mode) else None)
        )
        if problem:
            warn(f"{path}: point {i + 1} ({clean(repr(name), 80)}) {problem}; skipped")
            continue
        seen.add(name)
        row = _point_row(run_dir, name, dict(p.get("values") or {}), warn, versions)
        entry = status.get(name, {})
        if entry.get("state") == "failed":
            row.state, row.error = "failed", entry.get("error", "")
        rows.append(row)
    return rows, keys


def _point_row(
    run_dir: Path, name: str, values: dict[str, Any], warn: Warn, versions: dict[str, str] | None
) -> RunRow:
    """A sweep point's row: its run, a damaged run, or a point not started (its grid values)."""
    if lstat_or_none(run_dir / "config.json") is None:
        return RunRow(run_dir, name, values, state="not started", started=False)
    try:  # a link or FIFO there is a damaged run, said so
        return read_run(run_dir, name, warn, versions)
    except ProbeError as exc:
        warn(f"{exc}; {name} shown as damaged")
        return RunRow(run_dir, name, values, state="damaged", error=clean(exc), started=False)


def collect(
    paths: Sequence[str], warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> tuple[list[RunRow], list[str]]:
    """Runs from every path (a sweep directory or a run directory) and the keys that vary.

    `versions` (analysis -> installed version) keeps analysis scalars of those versions only.
    """
    rows: list[RunRow] = []
    keys: list[str] = []
    multiple = len(paths) > 1
    for p in paths:
        path = Path(p)
        if lstat_or_none(path / SWEEP_FILE) is not None:
            sweep_rows, sweep_keys = read_sweep(path, warn, versions)
            if multiple:
                for r in sweep_rows:
                    r.label = f"{path.name}/{r.label}"
            rows += sweep_rows
            keys += [k for k in sweep_keys if k not in keys]
        else:
            rows.append(read_run(path, str(p), warn, versions))
    if not rows:
        raise UsageError("PATH", "no runs found")
    # Keys that differ between the runs, beyond the grids (e.g. runs trained by hand).
    # Runs not started yet carry only their grid values, so they cannot say what else differs.
    started = [r for r in rows if r.started]
    for key in started[0].config if started else {}:
        if (
            key not in keys
            and key not in ("data", "device")
            and len({json.dumps(r.config[key], default=str) for r in started if key in r.config})
            > 1
        ):
            keys.append(key)
    return rows, keys
