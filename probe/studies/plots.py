"""The plots of `probe compare`, chosen from what was swept, not from a study's name.

  curves.png         the --metric per epoch, overlaid, grouped by the swept keys
  loss_grid.png      with lr and optimizer swept: loss curves per (optimizer, lr)
  regularizers.png   with dropout, weight_decay or augment swept: accuracy, gap and the
                     headline analysis scalars (e.g. top Hessian eigenvalue, sharpness)
                     against each regulariser

matplotlib is imported only when a plot is drawn (`_pyplot`), so `probe --help` and a
`probe compare --no-plots` never load it. Each file is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probe.io import atomic
from probe.rundir.readers import as_float
from probe.studies.rows import RunRow
from probe.studies.sweep import format_value
from probe.studies.table import BLOW_UP, format_cell, unique

REGULARIZERS = ("dropout", "weight_decay", "augment")


def _pyplot() -> Any:
    """pyplot on the file-only Agg backend, imported on first use (heavy: kept out of start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawers(
    rows: list[RunRow],
    keys: list[str],
    records: list[dict[str, Any]],
    headline: list[tuple[str, str]],
    metric: str,
) -> list[tuple[str, Callable[[Path], bool]]]:
    """(file name, drawer) of every plot `probe compare` may write; a drawer writes its file
    and returns True, or returns False (writing nothing) when what was swept does not call for
    it."""
    return [
        ("curves.png", lambda p: plot_curves(rows, keys, metric, p)),
        ("loss_grid.png", lambda p: plot_loss_grid(rows, keys, records, p)),
        ("regularizers.png", lambda p: plot_regularizers(keys, records, headline, p)),
    ]


@contextmanager
def literal_text() -> Iterator[None]:
    """Labels drawn as they are: `$...$` in a run's name is text, not TeX."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def close_all() -> None:
    """Drop every figure (after a plot failed half-drawn)."""
    _pyplot().close("all")


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
    vals = unique(r.config.get(key) for r in rows)
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
        unique(r.config["optimizer"] for r in rows),
        sorted(unique(r.config["lr"] for r in rows)),
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
        as_float(r.metrics[0].get("val_loss"))
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
    keys: list[str], records: list[dict[str, Any]], headline: list[tuple[str, str]], path: Path
) -> bool:
    """Regularisation study: final val accuracy, gap and each headline scalar (`headline`'s
    columns, e.g. top Hessian eigenvalue and sharpness, where analysed) against each
    regulariser."""
    regs = [k for k in keys if k in REGULARIZERS]
    if not regs:
        return False
    plt = _pyplot()
    panels = [("final_val_acc", "final val accuracy"), ("gap", "train - val accuracy")]
    panels += [(column, column) for column, _ in headline]
    fig, axes = plt.subplots(
        len(regs),
        len(panels),
        figsize=(3.8 * len(panels), 2.9 * len(regs)),
        squeeze=False,
        layout="constrained",
    )
    for i, reg in enumerate(regs):
        values = unique(r[reg] for r in records)
        try:
            values = sorted(values)
        except TypeError:
            pass
        others = [k for k in keys if k != reg]
        for j, (col, title) in enumerate(panels):
            ax = axes[i][j]
            means = []
            for x, v in enumerate(values):
                ys = [
                    as_float(r[col])
                    for r in records
                    if r[reg] == v and math.isfinite(as_float(r[col]))
                ]
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
