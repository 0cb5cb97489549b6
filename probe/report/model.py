"""What a run's page shows, read and checked once: its results grouped by analysis and
variant, its failures and skips, the installed analyses it is compared with.

Everything here is plain values (dataclasses of strings, numbers, lists and paths) built from
the run's files through probe.rundir.readers; the views (probe.report.views) turn them into
what the templates show, and the digest of a `RunData` decides whether the page is rebuilt.
The analyses themselves say where their section goes and how their figures read
(`Analysis.report_order`, `Analysis.caption`): nothing here names one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.contract.analysis import Analysis, params_dict
from probe.contract.registry import registry
from probe.errors import ProbeError
from probe.report.digest import STAMP_FORMAT, code_digest, digest
from probe.rundir.readers import EPOCH_DIR, Result, Warn, read_metrics, scan_analyses
from probe.rundir.run import Run

Entry = tuple[int | None, Path, dict[str, Any]]  # (epoch or None for run-wide, folder, manifest)


@dataclass
class Group:
    """All results of one analysis with one parameter set (variant), across epochs."""

    analysis: str
    variant: str
    scope: str
    params: dict[str, Any]
    results: list[Entry] = field(default_factory=list)
    older: list[Entry] = field(default_factory=list)

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
    order: int = Analysis.DEFAULT_REPORT_ORDER  # Analysis.report_order
    caption: str = ""  # Analysis.caption


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


def installed_analyses() -> tuple[dict[str, Installed], str]:
    """The analyses of `probe.contract.registry.registry()`, and a note if they could not be
    listed."""
    try:
        reg = registry()
    except ProbeError as exc:  # e.g. two plugins registering the same analysis name
        return {}, str(exc)
    broken = [
        f"plugin {i.name} ({i.dist} {i.version}) did not load: {i.error}".replace("  ", " ")
        for i in reg.plugins.values()
        if i.status == "error"
    ]
    return {name: _installed(a) for name, a in sorted(reg.analyses.items())}, "; ".join(broken)


def _installed(a: Analysis) -> Installed:
    try:
        defaults = params_dict(a.params())
    except Exception:  # a params class without defaults: the commands simply name no --param
        defaults = {}
    return Installed(
        a.name,
        a.scope,
        a.summary,
        defaults,
        dict(a.figure_captions),
        {
            "name": a.name,
            "scope": a.scope,
            "summary": a.summary,
            "version": str(a.version),
            "provider": a.provider,
            "provider_version": a.provider_version,
            "defaults": _jsonable(defaults),
            "captions": dict(a.figure_captions),
            "report_order": a.report_order,
            "caption": a.caption,
        },
        str(a.version),
        a.report_order,
        a.caption,
    )


def section_order(analysis: str, inst: Mapping[str, Installed]) -> tuple[int, str]:
    """Where an analysis's sections go: by its declared `report_order`, then by name; one that
    is not installed (no declaration to go by) comes where a default one would."""
    i = inst.get(analysis)
    return (i.order if i else Analysis.DEFAULT_REPORT_ORDER, analysis)


def collect_groups(results: list[Result], inst: Mapping[str, Installed]) -> list[Group]:
    """Checked results (`readers.scan_analyses`) grouped by (analysis, variant), in report
    order."""
    groups: dict[tuple[str, str], Group] = {}
    for path, m in results:
        name, variant = path.parent.parent.name, path.parent.name
        match = EPOCH_DIR.match(path.name)
        scope = "epoch" if match else "run"
        g = groups.setdefault((name, variant), Group(name, variant, scope, m.get("params") or {}))
        g.results.append((int(match.group(1)) if match else None, path, m))
    for g in groups.values():
        g.results.sort(key=lambda r: -1 if r[0] is None else r[0])
    return sorted(
        groups.values(),
        key=lambda g: (section_order(g.analysis, inst), g.variant != "default", g.variant),
    )


def current_versions(
    groups: list[Group], inst: Mapping[str, Installed]
) -> tuple[list[Group], list[Group]]:
    """Keep each installed analysis's results of its current `version`; older ones move to
    `Group.older`.

    Returns (groups with current results, groups with older-version results only). An analysis
    that is not installed keeps all its results: there is no current version to compare with.
    """
    shown, outdated = [], []
    for g in groups:
        i = inst.get(g.analysis)
        if i is not None:
            g.older = [r for r in g.results if str(r[2].get("version", "1")) != i.version]
            g.results = [r for r in g.results if str(r[2].get("version", "1")) == i.version]
        (shown if g.results else outdated).append(g)
    return shown, outdated


def collect_failures(
    failures: list[dict[str, Any]], groups: list[Group], inst: Mapping[str, Installed]
) -> list[dict[str, Any]]:
    """Failure records that no later success has superseded, in report order."""
    done = {(g.analysis, g.variant, e) for g in groups for e, _, _ in g.results}
    out = [f for f in failures if (f["analysis"], f["variant"], f["epoch"]) not in done]
    return sorted(
        out,
        key=lambda f: (
            section_order(f["analysis"], inst),
            f["variant"],
            -1 if f["epoch"] is None else f["epoch"],
        ),
    )


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
    skipped: list[dict[str, Any]] = field(default_factory=list)  # analyses that do not apply

    def digest(self) -> str:
        return digest(
            {
                "format": STAMP_FORMAT,
                "code": code_digest(),
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
    run = Run(run_dir)
    warnings: list[str] = []

    def note(msg: str) -> None:
        warnings.append(msg)
        warn(msg)

    config = run.config  # bounded, link-free, checked to hold a 'train' table; else one error
    metrics = read_metrics(run.path, note)
    inst, plugin_note = installed
    results, records = scan_analyses(run.path, note)
    groups, outdated = current_versions(collect_groups(results, inst), inst)
    failures = collect_failures([f for f in records if f.get("status") != "skipped"], groups, inst)
    skipped = collect_failures([f for f in records if f.get("status") == "skipped"], groups, inst)
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


def fmt(v: Any) -> str:
    """A value as a page shows it: `-` for nothing, 4 significant digits, long lists cut."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("true" if v else "false")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        if not v:
            return "-"
        items = [fmt(x) for x in v[:13]]
        return ", ".join(items) if len(v) <= 12 else ", ".join(items[:12]) + f", … ({len(v)} items)"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
