"""The views: the plain values each template shows (strings, numbers, lists; charts
pre-rendered as inline SVG), built from a `RunData` or a sweep's comparison rows.

Nothing here writes markup or escapes anything: the templates do, for the context each value
lands in. The only URLs made here are relative paths of percent-encoded parts (`_rel`), so no
value read from a run can become a scheme, a query, a fragment or a `..` step.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from probe.report.charts import PALETTE, Series, svg_chart
from probe.report.digest import REPORT_DIR
from probe.report.model import Group, Installed, PageResult, RunData, fmt
from probe.rundir.readers import as_float, is_int, is_number
from probe.studies.rows import RunRow
from probe.studies.table import format_cell, stability_summary

# The run page's metric charts: title, metrics drawn, fixed y range, how to read it.
METRIC_CHARTS: tuple[tuple[str, tuple[str, ...], tuple[float, float] | None, str], ...] = (
    (
        "loss",
        ("train_loss", "val_loss"),
        None,
        "Mean training loss per epoch and validation loss at its end; validation rising while "
        "training falls means overfitting.",
    ),
    (
        "accuracy",
        ("train_acc", "val_acc"),
        (0.0, 1.0),
        "Training and validation accuracy per epoch; the vertical distance between them is the "
        "generalisation gap.",
    ),
    (
        "gradient norm",
        ("grad_norm_mean", "grad_norm_max"),
        None,
        "Global L2 norm of the gradient per step, mean and max over the epoch; spikes in the max "
        "warn of instability.",
    ),
    (
        "weight norm",
        ("weight_norm",),
        None,
        "L2 norm of all parameters at the end of each epoch; steady growth without weight decay "
        "is normal.",
    ),
    (
        "update ratio",
        ("update_ratio",),
        None,
        "Mean ||Δw|| / ||w|| per step; around 1e-3 is healthy, far above means a too-large "
        "learning rate.",
    ),
    ("learning rate", ("lr",), None, "Learning rate used in each epoch (the schedule)."),
    (
        "time",
        ("train_seconds", "val_seconds", "epoch_seconds"),
        None,
        "Wall-clock seconds per epoch: training, validation, and everything including writing "
        "outputs.",
    ),
)
SWEEP_METRICS = (
    ("val_acc", (0.0, 1.0)),
    ("train_acc", (0.0, 1.0)),
    ("val_loss", None),
    ("train_loss", None),
)
_EPOCH_IN_NAME = re.compile(r"^(?P<stem>.*?)[_-]?epoch[_-]?(?P<n>\d+)$")
_IMAGE = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def caption(
    analysis: str, fname: str, manifest: dict[str, Any], installed: Installed | None
) -> str:
    """The manifest's caption for this file, else the installed analysis's `figure_captions`
    entry, else its `caption`, else a generic one naming the file and the analysis."""
    stem = fname.rsplit(".", 1)[0]
    for table in (manifest.get("captions") or {}, installed.captions if installed else {}):
        for key in (fname, stem):
            if table.get(key):
                return str(table[key])
    if installed and installed.caption:
        return installed.caption
    what = f": {installed.summary}" if installed and installed.summary else ""
    return f"Figure {fname} of the {analysis} analysis{what}"


def analyze_command(
    run_display: str,
    analysis: str,
    epochs: str,
    params: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> str:
    """The `probe analyze` command that (re)computes one analysis, with its non-default
    parameters."""
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
    """`all` for run-wide analyses; about six evenly spaced epochs (always the last) for
    per-epoch ones."""
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


def _rel(report_dir: Path, target: Path) -> str:
    """A URL relative to the report directory (one level below the run): each path part
    percent-encoded, so no part can become a scheme (`javascript:`), a query or a fragment."""
    parts = target.relative_to(report_dir.parent).parts
    if ".." in parts:
        raise ValueError(f"{target}: a link may not leave the run")
    return "../" + "/".join(quote(p, safe="") for p in parts)


def _items(d: Any, name: str) -> list[tuple[str, str]]:
    return [(str(k), fmt(v)) for k, v in d.items()] if isinstance(d, dict) else [(name, fmt(d))]


def _cards(
    cfg: dict[str, Any], metrics: list[dict[str, Any]], epochs: list[int]
) -> list[tuple[str, str]]:
    want = cfg["train"].get("epochs")
    trained = [m for m in metrics if is_number(m.get("val_acc"))]
    cards = [
        ("epochs", f"{epochs[-1] if epochs else '-'} / {fmt(want) if want is not None else '?'}")
    ]
    if trained:
        last = trained[-1]
        best = max(
            trained,
            key=lambda m: as_float(m["val_acc"]) if math.isfinite(as_float(m["val_acc"])) else -1,
        )
        cards.append(("final val acc", f"{as_float(last['val_acc']):.3f}"))
        cards.append(("best val acc", f"{as_float(best['val_acc']):.3f} @ {best['epoch']}"))
        if is_number(last.get("train_acc")):
            cards.append(("train acc", f"{as_float(last['train_acc']):.3f}"))
            cards.append(("gap", f"{as_float(last['train_acc']) - as_float(last['val_acc']):+.3f}"))
    if is_int(cfg.get("num_params")):
        cards.append(("parameters", f"{cfg['num_params']:,}"))
    secs = sum(s for m in metrics if math.isfinite(s := as_float(m.get("epoch_seconds"))))
    if secs:
        source = cfg.get("source")
        imported = isinstance(source, dict) and source.get("kind") == "import"
        # an import trains nothing: its epoch time is validation and the dumps
        label = "import time (validation and dumps)" if imported else "train time"
        cards.append((label, f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"))
    norm = cfg["train"].get("normalization")
    if isinstance(norm, str):  # probe.Recorder and probe import: given, or assumed (said here)
        cards.append(("input normalisation", _normalization_text(norm, cfg.get("model_spec"))))
    return cards


def _normalization_text(norm: str, spec: Any) -> str:
    """`given`, or what was assumed with its values (one line: the run's mean and std)."""
    norm = norm[:80]  # config.json is untrusted: a line, not a page
    inp = spec.get("input") if isinstance(spec, dict) else None
    if not norm.startswith("assumed") or not isinstance(inp, dict):
        return fmt(norm)
    mean, std = inp.get("mean"), inp.get("std")
    if not (isinstance(mean, list) and isinstance(std, list)):
        return fmt(norm)
    values = [",".join(f"{as_float(v):.4g}" for v in vs[:8]) for vs in (mean, std)]
    return fmt(f"{norm} (mean {values[0]}, std {values[1]})")


def _config_view(cfg: dict[str, Any]) -> dict[str, Any]:
    other = [
        (str(k), fmt(v))
        for k, v in cfg.items()
        if k not in ("train", "model_spec", "versions", "classes")
    ]
    versions = cfg.get("versions")
    other += (
        [(f"versions.{k}", fmt(v)) for k, v in versions.items()]
        if isinstance(versions, dict)
        else ([("versions", fmt(versions))] if versions is not None else [])
    )
    if cfg.get("classes"):
        other.append(("classes", fmt(cfg["classes"])))
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
        {
            k
            for m in metrics
            for k, v in m.items()
            if k != "epoch" and k not in drawn and is_number(v)
        }
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
        "rows": [[fmt(m.get(c)) for c in cols] for m in metrics],
    }


def _metric_series(metrics: list[dict[str, Any]], key: str, color: str) -> Series:
    return Series(
        key.replace("_", " "),
        [(m["epoch"], as_float(m.get(key))) for m in metrics if key in m],
        color,
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
        f"version {fmt(first.get('version', '?'))}",
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
    versions = sorted({fmt(m.get("version", "1")) for _, _, m in g.older})
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
        "scalars": [(k, fmt(v)) for k, v in sorted((m.get("scalars") or {}).items())],
        "files": _file_links(report_dir, path, files),
        "epochs": fmt(m["epochs"]) if m.get("epochs") else "",
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
                {"epoch": e, "cells": [fmt((m.get("scalars") or {}).get(k)) for k in scalar_names]}
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
    """The plain values the run template shows (strings, numbers, lists; charts pre-rendered
    by `svg_chart`)."""
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
        "data_source": fmt(d.config.get("data_source", "")),
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


def run_nav(d: RunData) -> list[tuple[str, str]]:
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


# --- the sweep page ------------------------------------------------------------------------------


def _colors(n: int) -> list[str]:
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    return [f"hsl({round(360 * i / n)},65%,42%)" for i in range(n)]


def _sort_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if is_number(v):
        return repr(as_float(v))
    return str(v)


def sweep_view(
    display: str,
    spec: dict[str, Any],
    name: str,
    rows: list[RunRow],
    keys: list[str],
    columns: list[str],
    records: list[dict[str, Any]],
    pages: dict[str, PageResult],
    warnings: list[str],
) -> dict[str, Any]:
    """The plain values the sweep template shows."""
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
                    "caption": f"{metric} per epoch for every run of the sweep, one colour per "
                    "run (legend below).",
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
