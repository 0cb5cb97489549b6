"""The comparison table of `probe compare` (and of the sweep report page): its records, the
stability verdicts, and its text for the terminal and for table.csv.

The table has, per run, the final and best validation accuracy, the epoch of the best,
training accuracy, the generalisation gap, every numeric analysis scalar, a stability verdict
and the training wall time. The terminal shows a fixed set of columns plus the *headline*
scalars that the installed analyses declare (`Analysis.headline`, e.g. hessian's top
eigenvalue, sharpness's worst case), so no analysis is named here; the CSV has every column.
Cells of table.csv that a spreadsheet would run as a formula get a leading `'`, and the
terminal table shows control characters escaped.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from probe.contract.analysis import Analysis
from probe.rundir.readers import as_float, clean
from probe.studies.rows import RunRow, installed_analyses
from probe.studies.sweep import format_value

# Stability verdicts, from the per-epoch metrics (see `stability`).
DIVERGED, STALLED, OSCILLATING, CONVERGED = "diverged", "stalled", "oscillating", "converged"
BLOW_UP = 1.5  # an epoch's train loss above 1.5x the loss at initialisation: it blew up
NO_PROGRESS = 0.98  # final train loss >= 98% of the loss at initialisation: it has not learned yet
LOSS_RISE = 0.02  # an epoch whose train loss is 2% above the previous one's
ACC_DROP = 0.05  # or whose validation accuracy is 5 points below the previous one's

SE_SUFFIX = "_se"  # `NAME_se`, when a run has it, is shown beside a headline NAME as `value ± se`
# The terminal's labels of the table's own columns.
SHORT = {
    "final_val_acc": "val_acc",
    "best_val_acc": "best_val",
    "best_epoch": "@epoch",
    "final_train_acc": "train_acc",
    "train_seconds": "time",
}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# --- what the table says about a run ---------------------------------------------------------


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
    if any(not math.isfinite(as_float(v)) for v in values):
        return DIVERGED
    start = as_float(metrics[0].get("val_loss")) if metrics[0].get("epoch") == 0 else math.log(10)
    losses = [as_float(m.get("train_loss")) for m in trained]
    if max(losses) > BLOW_UP * start or losses[-1] > (1 + LOSS_RISE) * start:
        return DIVERGED
    if losses[-1] >= NO_PROGRESS * start:
        return STALLED
    accs = [as_float(m.get("val_acc")) for m in trained]
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
            trained,
            key=lambda m: as_float(m["val_acc"]) if math.isfinite(as_float(m["val_acc"])) else -1,
        )
        out.update(
            final_val_acc=as_float(last["val_acc"]),
            best_val_acc=as_float(best["val_acc"]),
            best_epoch=best["epoch"],
            final_train_acc=as_float(last.get("train_acc")),
            final_train_loss=as_float(last.get("train_loss")),
        )
        out["gap"] = out["final_train_acc"] - out["final_val_acc"]
    out["stability"] = stability(row.metrics)
    seconds = [as_float(m.get("epoch_seconds")) for m in row.metrics]
    out["train_seconds"] = sum(s for s in seconds if math.isfinite(s)) if row.metrics else math.nan
    return out


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


def headline_columns(
    names: Iterable[str], analyses: Mapping[str, Analysis]
) -> list[tuple[str, str]]:
    """(column, label) of the headline scalars among the scalar columns `names`: each analysis's
    declared `headline` (`<analysis>.<scalar>` -> label), in report order (`report_order`, then
    name). A label that two columns share, or one of the table's own, becomes the column's name.
    """
    have = set(names)
    found = [
        (f"{a.name}.{scalar}", label)
        for a in sorted(analyses.values(), key=lambda a: (a.report_order, a.name))
        for scalar, label in a.headline.items()
        if f"{a.name}.{scalar}" in have
    ]
    taken = Counter(label for _, label in found)
    own = {*SHORT.values(), "run", "gap", "stability", "state"}
    return [(c, c if taken[label] > 1 or label in own else label) for c, label in found]


def format_cell(v: Any, col: str) -> str:
    """One cell's text: `-` for nothing, `on`/`off` for flags, accuracies to 3 decimals."""
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
    columns: list[str],
    records: list[dict[str, Any]],
    keys: list[str],
    show_run: bool = False,
    analyses: Mapping[str, Analysis] | None = None,
) -> str:
    """A plain fixed-width table for the terminal (the CSV has every column).

    Its analysis columns are the headline scalars of `analyses` (default: those installed).
    """
    if analyses is None:
        analyses = installed_analyses()
    headline = headline_columns(scalar_columns(columns, keys), analyses)
    short = {**SHORT, **dict(headline)}
    shown = [
        *(["run"] if show_run or not keys else []),
        *keys,
        "final_val_acc",
        "best_val_acc",
        "best_epoch",
        "final_train_acc",
        "gap",
        *[c for c, _ in headline],
        "stability",
        "train_seconds",
    ]
    if any(r["state"] != "finished" for r in records):
        shown.append("state")
    with_se = {c for c, _ in headline}

    def cell(r: dict[str, Any], c: str) -> str:
        text, se = format_cell(r.get(c), c), r.get(c + SE_SUFFIX)
        if c in with_se and isinstance(se, float) and math.isfinite(se) and text != "-":
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


def csv_text(v: Any) -> Any:
    """A CSV cell: NaN empty; text a spreadsheet would run as a formula (`=`, `+`, `-`, `@`)
    quoted with `'`."""
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def to_csv(columns: list[str], records: list[dict[str, Any]]) -> str:
    """table.csv's text: every column, every record."""
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
    opts = unique(r["optimizer"] for r in records)
    lrs = sorted(unique(r["lr"] for r in records))
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


def unique(values: Iterable[Any]) -> list[Any]:
    """`values` without repeats, in first-seen order (works for unhashable values too)."""
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
