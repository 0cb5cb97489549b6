"""`probe compare`: one table and a few plots across runs or whole sweeps.

The table (printed, and written as table.csv) has, per run, the final and best
validation accuracy, the epoch of the best, training accuracy, the generalisation
gap, analysis scalars such as the top Hessian eigenvalue and sharpness where they
were computed, a stability verdict and the training wall time.

Plots are chosen from what was swept, not from a study's name:
  curves.png         the --metric per epoch, overlaid, grouped by the swept keys
  loss_grid.png      with lr and optimizer swept: loss curves per (optimizer, lr)
  regularizers.png   with dropout, weight_decay or augment swept: accuracy, gap,
                     sharpness and top Hessian eigenvalue against each regulariser

Every file of a run or sweep is untrusted: it is read through probe.io.safeio (bounded,
link-free, confined to its run or sweep folder), as the report reads it. A sweep point
whose name would leave the sweep folder (checked by probe.io.paths, as `probe sweep`
checks it), a damaged run, a status.json or manifest of the wrong shape is skipped
with a one-line warning.
Cells of table.csv that a spreadsheet would run as a formula get a leading `'`, and
the terminal table shows control characters escaped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from probe.errors import ProbeError, UsageError
from probe.io import atomic, safeio
from probe.io.paths import ConfinementError, child_dir, is_link, lstat_or_none
from probe.report.render import (
    SKIPPED,
    Warn,
    _num,
    clean,
    read_metrics,
    read_or_warn,
    read_sweep_file,
    warn_stderr,
)

REGULARIZERS = ("dropout", "weight_decay", "augment")
# Stability verdicts, from the per-epoch metrics (see `stability`).
DIVERGED, STALLED, OSCILLATING, CONVERGED = "diverged", "stalled", "oscillating", "converged"
BLOW_UP = 1.5  # an epoch's train loss above 1.5x the loss at initialisation: it blew up
NO_PROGRESS = 0.98  # final train loss >= 98% of the loss at initialisation: it has not learned yet
LOSS_RISE = 0.02  # an epoch whose train loss is 2% above the previous one's
ACC_DROP = 0.05  # or whose validation accuracy is 5 points below the previous one's


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

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric; missing or non-finite values become NaN."""
        xs, ys = [], []
        for m in self.metrics:
            if key in m:
                xs.append(_num(m["epoch"]))
                ys.append(_num(m[key]))
        return xs, ys


# --- reading runs and sweeps ------------------------------------------------------------------------------


def analysis_scalars(
    run_dir: Path, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> dict[str, float]:
    """Numeric scalars of the newest result of each analysis (default variant preferred, last epoch),
    read from the checked manifests of `report.scan_analyses`, as `probe.rundir.results.scalars` keys them.

    With `versions` (analysis -> installed version), results of other versions are left
    out, as the report leaves them out.
    """
    from probe.report.render import scan_analyses

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
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{path.parent.parent.name}.{k}"] = v
    return out


def read_run(
    path: Path, label: str, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> RunRow:
    """One run's row; a missing or damaged config.json is a one-line RunFileError."""
    from probe.rundir.run import Run

    run_config = Run(path).config  # not a run, or a damaged config.json: one RunFileError
    cfg = dict(run_config["train"])
    spec = run_config.get("model_spec")
    if isinstance(spec, dict) and isinstance(
        spec.get("params"), dict
    ):  # `model.depth`, as sweeps name them
        cfg.update(
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


def read_status(sweep_dir: Path, warn: Warn) -> dict[str, dict[str, str]]:
    """status.json's runs: {name: {"state": str, "error": str}}; entries of another shape are warned about."""
    from probe.studies.sweep import STATUS_FILE

    p = sweep_dir / STATUS_FILE
    d = read_or_warn(safeio.read_json, p, warn, "ignored", within=sweep_dir)
    if d is SKIPPED:
        return {}
    runs = d.get("runs") if isinstance(d, dict) else None
    if not isinstance(runs, dict):
        warn(f"{p}: not a sweep status (no 'runs' object); ignored")
        return {}
    out = {}
    for name, st in runs.items():
        if not isinstance(st, dict) or not all(
            isinstance(st.get(k, ""), str) for k in ("state", "error")
        ):
            warn(
                f"{p}: the entry of {clean(repr(name), 80)} is not a status (state and error strings); ignored"
            )
            continue
        out[name] = {"state": st.get("state", ""), "error": st.get("error", "")}
    return out


def read_sweep(
    sweep_dir: Path, warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> tuple[list[RunRow], list[str]]:
    """The runs of a sweep in grid order (failed ones included), and its swept keys."""
    from probe.studies.sweep import SWEEP_FILE

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
        try:  # one folder name inside the sweep, not a link (probe.io.paths, as `probe sweep` checks it)
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
        row = None
        if (
            lstat_or_none(run_dir / "config.json") is not None
        ):  # a link or FIFO there is a damaged run, said so
            try:
                row = read_run(run_dir, name, warn, versions)
            except ProbeError as exc:
                warn(f"{exc}; {name} shown as damaged")
                row = RunRow(
                    run_dir,
                    name,
                    dict(p.get("values") or {}),
                    state="damaged",
                    error=clean(exc),
                    started=False,
                )
        if row is None:
            row = RunRow(
                run_dir, name, dict(p.get("values") or {}), state="not started", started=False
            )
        st = status.get(name, {})
        if st.get("state") == "failed":
            row.state, row.error = "failed", st.get("error", "")
        rows.append(row)
    return rows, keys


def collect(
    paths: Sequence[str], warn: Warn = warn_stderr, versions: dict[str, str] | None = None
) -> tuple[list[RunRow], list[str]]:
    """Runs from every path (a sweep directory or a run directory) and the keys that vary.

    `versions` (analysis -> installed version) keeps analysis scalars of those versions only.
    """
    from probe.studies.sweep import SWEEP_FILE

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


# --- what the table says about a run ---------------------------------------------------------------------


def stability(metrics: list[dict[str, Any]]) -> str:
    """A verdict on the optimisation, from the per-epoch training loss and val accuracy.

    The reference is the loss at initialisation (epoch 0's validation loss, about
    ln 10 for ten classes).
    diverged:    a loss became non-finite, an epoch's training loss exceeded 1.5x the
                 initial loss, or training ended more than 2% above the initial loss.
    stalled:     the final training loss is within 2% of the initial loss: too slow
                 to learn anything in this budget (neither diverged nor converging).
    oscillating: it learned, but the training loss rose by more than 2% from one
                 epoch to the next, or validation accuracy fell by more than 5 points.
    converged:   the loss went down steadily.
    """
    trained = [m for m in metrics if m.get("epoch", 0) > 0]
    if not trained:
        return ""
    values = [m.get(k) for m in metrics for k in ("train_loss", "val_loss") if k in m]
    if any(not math.isfinite(_num(v)) for v in values):
        return DIVERGED
    start = _num(metrics[0].get("val_loss")) if metrics[0].get("epoch") == 0 else math.log(10)
    losses = [_num(m.get("train_loss")) for m in trained]
    if max(losses) > BLOW_UP * start or losses[-1] > (1 + LOSS_RISE) * start:
        return DIVERGED
    if losses[-1] >= NO_PROGRESS * start:
        return STALLED
    accs = [_num(m.get("val_acc")) for m in trained]
    if any(b > a * (1 + LOSS_RISE) for a, b in zip(losses, losses[1:], strict=False)) or any(
        a - b > ACC_DROP for a, b in zip(accs, accs[1:], strict=False)
    ):
        return OSCILLATING
    return CONVERGED


def summarize(row: RunRow) -> dict[str, Any]:
    """The table's numbers for one run (NaN where there is nothing to show)."""
    trained = [m for m in row.metrics if "val_acc" in m]
    out: dict[str, Any] = {
        "final_val_acc": math.nan,
        "best_val_acc": math.nan,
        "best_epoch": None,
        "final_train_acc": math.nan,
        "gap": math.nan,
        "final_train_loss": math.nan,
    }
    if trained:
        last = trained[-1]
        best = max(
            trained, key=lambda m: _num(m["val_acc"]) if math.isfinite(_num(m["val_acc"])) else -1
        )
        out.update(
            final_val_acc=_num(last["val_acc"]),
            best_val_acc=_num(best["val_acc"]),
            best_epoch=best["epoch"],
            final_train_acc=_num(last.get("train_acc")),
            final_train_loss=_num(last.get("train_loss")),
        )
        out["gap"] = out["final_train_acc"] - out["final_val_acc"]
    out["stability"] = stability(row.metrics)
    seconds = [_num(m.get("epoch_seconds")) for m in row.metrics]
    out["train_seconds"] = sum(s for s in seconds if math.isfinite(s)) if row.metrics else math.nan
    return out


# Scalars that qualify another one (its standard error over batches, ...), never the value shown.
NOT_VALUES = ("_se", "_stderr", "mean_over")
SE_SUFFIX = "_se"  # `NAME_se`, when a run has it, is shown beside NAME as `value ± se`


def hessian_key(names: list[str]) -> str | None:
    """The analysis scalar shown as the top Hessian eigenvalue (every scalar is in the CSV)."""
    return _find(
        names,
        "hessian",
        ("top", "max", "lambda", "eig"),
        avoid=("min", "small", "bottom", "@", *NOT_VALUES),
    )


def sharpness_key(names: list[str]) -> str | None:
    """The analysis scalar shown as sharpness: the worst-case one if there are several."""
    return _find(names, "sharp", ("worst", "sharp"), avoid=("@", *NOT_VALUES))


def _find(
    names: list[str], analysis: str, prefer: tuple[str, ...], avoid: tuple[str, ...]
) -> str | None:
    names = [
        k for k in sorted(names) if analysis in k.lower() and not any(a in k.lower() for a in avoid)
    ]
    for word in prefer:
        for k in names:
            if word in k.lower().split(".", 1)[-1]:
                return k
    return names[0] if names else None


def table(rows: list[RunRow], keys: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one record per run: swept values, summary numbers, every analysis scalar."""
    scalar_names = sorted({k for r in rows for k in r.scalars})
    columns = [
        "run",
        *keys,
        "state",
        "final_val_acc",
        "best_val_acc",
        "best_epoch",
        "final_train_acc",
        "gap",
        "final_train_loss",
        *scalar_names,
        "stability",
        "train_seconds",
        "error",
    ]
    records = []
    for r in rows:
        rec = {
            "run": r.label,
            **{k: r.config.get(k) for k in keys},
            "state": r.state,
            **summarize(r),
            **{k: r.scalars.get(k, math.nan) for k in scalar_names},
            "error": r.error,
        }
        records.append(rec)
    return columns, records


def scalar_columns(columns: list[str], keys: list[str]) -> list[str]:
    """The table's analysis-scalar columns (between final_train_loss and stability)."""
    return columns[columns.index("final_train_loss") + 1 : columns.index("stability")]


def format_cell(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        if col in ("final_val_acc", "best_val_acc", "final_train_acc", "gap"):
            return f"{v:.3f}"
        if col == "train_seconds":
            return f"{v:.0f}s"
        return f"{v:.4g}"
    return str(v)


def render(
    columns: list[str], records: list[dict[str, Any]], keys: list[str], show_run: bool = False
) -> str:
    """A plain fixed-width table for the terminal (the CSV has every column)."""
    scalars = scalar_columns(columns, keys)
    hessian, sharp = hessian_key(scalars), sharpness_key(scalars)
    short = {
        "final_val_acc": "val_acc",
        "best_val_acc": "best_val",
        "best_epoch": "@epoch",
        "final_train_acc": "train_acc",
        "train_seconds": "time",
    }
    if hessian:
        short[hessian] = "top_eig"
    if sharp:
        short[sharp] = "sharpness"
    shown = [
        *(["run"] if show_run or not keys else []),
        *keys,
        "final_val_acc",
        "best_val_acc",
        "best_epoch",
        "final_train_acc",
        "gap",
        *[c for c in (hessian, sharp) if c],
        "stability",
        "train_seconds",
    ]
    if any(r["state"] != "finished" for r in records):
        shown.append("state")

    def cell(r: dict[str, Any], c: str) -> str:
        text, se = format_cell(r.get(c), c), r.get(c + SE_SUFFIX)
        if c in (hessian, sharp) and isinstance(se, float) and math.isfinite(se) and text != "-":
            text += f" ± {format_cell(se, c)}"
        return text

    cells = [[clean(short.get(c, c), 80) for c in shown]] + [
        [clean(cell(r, c), 80) for c in shown] for r in records
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(v: Any) -> Any:
    """A CSV cell: NaN empty; text a spreadsheet would run as a formula (`=`, `+`, `-`, `@`) quoted with `'`."""
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def to_csv(columns: list[str], records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(
        buf, fieldnames=[csv_text(c) for c in columns], extrasaction="ignore", lineterminator="\n"
    )
    w.writeheader()
    for r in records:
        w.writerow({csv_text(c): csv_text(r.get(c)) for c in columns})
    return buf.getvalue()


def stability_summary(records: list[dict[str, Any]], keys: list[str]) -> str:
    """optimizer x lr: the verdicts of the runs in each cell (e.g. over depths)."""
    if "optimizer" not in keys or "lr" not in keys:
        return ""
    records = [r for r in records if r.get("optimizer") is not None and r.get("lr") is not None]
    opts = _unique(r["optimizer"] for r in records)
    lrs = sorted(_unique(r["lr"] for r in records))
    letter = {DIVERGED: "D", STALLED: "S", OSCILLATING: "O", CONVERGED: "C", "": "-"}
    rest = [k for k in keys if k not in ("optimizer", "lr")]
    head = ["optimizer \\ lr", *[format_value(lr) for lr in lrs]]
    cells = [head]
    for opt in opts:
        line = [opt]
        for lr in lrs:
            rs = [r for r in records if r["optimizer"] == opt and r["lr"] == lr]
            line.append("".join(letter.get(r["stability"], "?") for r in rs) or " ")
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    out = ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() for c in cells]
    order = f" (one letter per run, in order of {', '.join(rest)})" if rest else ""
    return "\n".join(
        ["stability: C converged, O oscillating, S stalled, D diverged, - no metrics" + order, *out]
    )


def format_value(v: Any) -> str:
    from probe.studies.sweep import format_value as fmt

    return fmt(v)


def _unique(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


# --- plots -----------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic.write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )
    _pyplot().close(fig)


def _styles(values: list[Any], kind: str) -> dict[str, Any]:
    if kind == "color":
        import matplotlib

        cmap = matplotlib.colormaps["viridis" if len(values) > 4 else "tab10"]
        n = max(1, len(values) - 1)
        return {
            json.dumps(v): (cmap(i / n) if len(values) > 4 else cmap(i))
            for i, v in enumerate(values)
        }
    dashes = ["-", "--", ":", "-."]
    return {json.dumps(v): dashes[i % len(dashes)] for i, v in enumerate(values)}


def _sorted_values(rows: list[RunRow], key: str) -> list[Any]:
    vals = _unique(r.config.get(key) for r in rows)
    try:
        return sorted(vals)
    except TypeError:
        return vals


def plot_curves(rows: list[RunRow], keys: list[str], metric: str, path: Path) -> bool:
    """`metric` per epoch: a panel per value of the first key, color and dashes for the next two."""
    rows = [r for r in rows if r.series(metric)[0]]
    if not rows:
        return False
    plt = _pyplot()
    panel_key = keys[0] if len(keys) >= 2 else None
    color_key = keys[1] if len(keys) >= 2 else (keys[0] if keys else None)
    dash_key = keys[2] if len(keys) >= 3 else None
    panels = _sorted_values(rows, panel_key) if panel_key else [None]
    colors = _styles(_sorted_values(rows, color_key), "color") if color_key else {}
    dashes = _styles(_sorted_values(rows, dash_key), "dash") if dash_key else {}
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.2 * len(panels), 3.4),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, pv in zip(axes[0], panels, strict=True):
        for r in rows:
            if panel_key and r.config.get(panel_key) != pv:
                continue
            xs, ys = r.series(metric)
            label = (
                ", ".join(f"{k}={format_value(r.config.get(k))}" for k in keys if k != panel_key)
                or r.label
            )
            ax.plot(
                xs,
                ys,
                label=label,
                lw=1.4,
                color=colors.get(json.dumps(r.config.get(color_key))) if color_key else None,
                linestyle=dashes.get(json.dumps(r.config.get(dash_key)), "-") if dash_key else "-",
            )
        ax.set_title(f"{panel_key}={format_value(pv)}" if panel_key else metric)
        _epoch_axis(ax)
    axes[0][0].set_ylabel(metric)
    if metric.endswith("loss"):
        _clip_losses(axes[0], rows, metric)
    _legend_outside(fig, axes[0])
    _save(fig, path)
    return True


def plot_loss_grid(
    rows: list[RunRow], keys: list[str], records: list[dict[str, Any]], path: Path
) -> bool:
    """Optimisation study: training (solid) and validation (dashed) loss, optimizer x lr."""
    if "optimizer" not in keys or "lr" not in keys:
        return False
    rows = [r for r in rows if r.metrics]
    if not rows:
        return False
    plt = _pyplot()
    opts, lrs = (
        _unique(r.config["optimizer"] for r in rows),
        sorted(_unique(r.config["lr"] for r in rows)),
    )
    rest = [k for k in keys if k not in ("optimizer", "lr")]
    colors = _styles(_sorted_values(rows, rest[0]), "color") if rest else {}
    verdict = {r["run"]: r["stability"] for r in records}
    fig, axes = plt.subplots(
        len(opts),
        len(lrs),
        figsize=(3.6 * len(lrs), 2.8 * len(opts)),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for i, opt in enumerate(opts):
        for j, lr in enumerate(lrs):
            ax = axes[i][j]
            for r in rows:
                if r.config["optimizer"] != opt or r.config["lr"] != lr:
                    continue
                c = colors.get(json.dumps(r.config.get(rest[0]))) if rest else None
                label = ", ".join(f"{k}={format_value(r.config.get(k))}" for k in rest) or r.label
                ax.plot(
                    *r.series("train_loss"),
                    color=c,
                    lw=1.4,
                    label=f"{label} ({verdict.get(r.label, '')})",
                )
                ax.plot(*r.series("val_loss"), color=c, lw=1.0, linestyle="--")
            ax.set_title(f"{opt}, lr={format_value(lr)}", fontsize=9)
            _epoch_axis(ax, label=i == len(opts) - 1)
            if ax.lines:
                ax.legend(fontsize=6, loc="lower left")
            if j == 0:
                ax.set_ylabel("loss (solid train, dashed val)")
    _clip_losses([ax for row in axes for ax in row], rows, "train_loss")
    _save(fig, path)
    return True


def _epoch_axis(ax: Any, label: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if label:
        ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _clip_losses(axes: list[Any], rows: list[RunRow], metric: str) -> None:
    """Scale loss axes to the runs that learned; a blown-up curve leaves through the top.

    Otherwise one diverged run (a loss of 30) flattens every other curve into a line.
    """
    values = [y for r in rows for y in r.series(metric)[1] if math.isfinite(y)]
    start = sorted(
        _num(r.metrics[0].get("val_loss"))
        for r in rows
        if r.metrics and r.metrics[0].get("epoch") == 0
    )
    if not values:
        return
    top = BLOW_UP**0.5 * start[len(start) // 2] if start else max(values)
    bottom = min(values)
    for ax in axes:
        ax.set_ylim(bottom - 0.05 * (top - bottom), top)
        if any(y > top for line in ax.lines for y in line.get_ydata() if math.isfinite(y)):
            ax.text(
                0.98,
                0.97,
                "some curves leave the top",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=6,
                alpha=0.7,
            )


def _legend_outside(fig: Any, axes: Any) -> None:
    """One legend for all panels, to the right of them, so it hides no curve."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7)


def plot_regularizers(
    columns: list[str], keys: list[str], records: list[dict[str, Any]], path: Path
) -> bool:
    """Regularisation study: final val accuracy, gap, sharpness and top Hessian eigenvalue
    (where analysed) against each regulariser."""
    regs = [k for k in keys if k in REGULARIZERS]
    if not regs:
        return False
    plt = _pyplot()
    scalars = scalar_columns(columns, keys)
    panels = [("final_val_acc", "final val accuracy"), ("gap", "train - val accuracy")]
    panels += [(k, k) for k in (sharpness_key(scalars), hessian_key(scalars)) if k]
    fig, axes = plt.subplots(
        len(regs),
        len(panels),
        figsize=(3.8 * len(panels), 2.9 * len(regs)),
        squeeze=False,
        layout="constrained",
    )
    for i, reg in enumerate(regs):
        values = _unique(r[reg] for r in records)
        try:
            values = sorted(values)
        except TypeError:
            pass
        others = [k for k in keys if k != reg]
        for j, (col, title) in enumerate(panels):
            ax = axes[i][j]
            means = []
            for x, v in enumerate(values):
                ys = [_num(r[col]) for r in records if r[reg] == v and math.isfinite(_num(r[col]))]
                ax.scatter([x] * len(ys), ys, s=14, alpha=0.6, color="tab:blue")
                means.append(sum(ys) / len(ys) if ys else math.nan)
            ax.plot(range(len(values)), means, color="black", lw=1.5, marker="o", label="mean")
            ax.set_xticks(
                range(len(values)),
                [format_cell(v, reg) if isinstance(v, bool) else format_value(v) for v in values],
            )
            ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set_xlabel(reg)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0 and others:
                ax.text(
                    0.02,
                    0.02,
                    f"dots: runs over {', '.join(others)}",
                    transform=ax.transAxes,
                    fontsize=6,
                    alpha=0.7,
                )
    _save(fig, path)
    return True


# --- the command ------------------------------------------------------------------------------------------


def compare(
    paths: Sequence[str],
    out: Path | None,
    metric: str,
    plots: bool,
    echo: Callable[[str], None] = click.echo,
) -> list[Path]:
    """Print the table; write table.csv and the plots into `out`; return the files written."""
    from probe.studies.sweep import SWEEP_FILE

    rows, keys = collect(paths, versions=installed_versions())
    known = {k for r in rows for m in r.metrics for k in m}
    if known and metric not in known:
        raise UsageError(
            "--metric",
            f"{metric!r} is not a per-epoch metric of these runs (have: {', '.join(sorted(known))})",
        )
    columns, records = table(rows, keys)
    echo(
        render(
            columns,
            records,
            keys,
            show_run=not all(lstat_or_none(Path(p) / SWEEP_FILE) is not None for p in paths),
        )
    )
    try:
        summary = stability_summary(records, keys)
    except (
        TypeError,
        ValueError,
        KeyError,
    ):  # values of mixed types in a crafted config: no summary
        summary = ""
    if summary:
        echo("")
        echo(summary)
    written: list[Path] = []
    if out is None:
        return written
    _write(out, "table.csv", lambda p: atomic.write_text(p, to_csv(columns, records)))
    written.append(out / "table.csv")
    if plots:
        import matplotlib

        for name, draw in (
            ("curves.png", lambda p: plot_curves(rows, keys, metric, p)),
            ("loss_grid.png", lambda p: plot_loss_grid(rows, keys, records, p)),
            ("regularizers.png", lambda p: plot_regularizers(columns, keys, records, p)),
        ):
            try:  # labels come from run folders: `$...$` in one is text, not TeX
                with matplotlib.rc_context({"text.parse_math": False}):
                    if _write(out, name, draw):
                        written.append(out / name)
            except (
                TypeError,
                ValueError,
                KeyError,
            ) as exc:  # values a crafted config makes unplottable
                _pyplot().close("all")
                why = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                click.echo(f"warning: {name} not drawn ({clean(why, 160)})", err=True)
    return written


def installed_versions() -> dict[str, str]:
    """analysis -> the version installed now (empty if the plugins cannot be listed: then every version counts)."""
    from probe.report.render import installed_analyses

    inst, _ = installed_analyses()
    return {name: i.version for name, i in inst.items()}


def _write(out: Path, name: str, writer: Callable[[Path], Any]) -> Any:
    """Run one writer of `out/name`; a directory that cannot be made or written is one line (ProbeError)."""
    st = lstat_or_none(out)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise ProbeError(f"{out}: not a directory; give another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return writer(out / name)
    except OSError as exc:
        raise ProbeError(f"{out / name}: cannot write ({exc.strerror or exc})") from None


@click.command(
    "compare", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--metric", default="val_acc", show_default=True, help="Per-epoch metric drawn in curves.png."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where table.csv and the plots go [default: SWEEP/compare for one sweep, else ./compare].",
)
@click.option("--no-plots", is_flag=True, help="Only the table and table.csv.")
def compare_command(paths: tuple[str, ...], metric: str, out: str | None, no_plots: bool) -> None:
    """Compare runs and sweeps: a table of accuracies, gap, sharpness and stability, and plots.

    \b
    probe compare sweeps/opt
    probe compare runs/a runs/b runs/c --metric val_acc
    """
    from probe.studies.sweep import SWEEP_FILE

    if out is None:
        one_sweep = len(paths) == 1 and lstat_or_none(Path(paths[0]) / SWEEP_FILE) is not None
        out = str(Path(paths[0]) / "compare") if one_sweep else "compare"
        if is_link(out):
            raise ProbeError(
                f"{out}: a symlink; probe writes nothing through a link (remove it or give --out)"
            )
    written = compare(paths, Path(out), metric, plots=not no_plots)
    click.echo("")
    click.echo("wrote " + ", ".join(str(p) for p in written))
