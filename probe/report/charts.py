"""Small line charts as inline SVG: no plotting library, no file, readable offline years later.

The geometry (ranges, ticks, paths, legend) is computed here from plain numbers; the template
chart.svg.j2 writes it, escaping every label, so a run's metric names and labels land in the
page as text only (docs/report.md, "Escaping").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from probe.report.model import fmt
from probe.report.render import environment
from probe.rundir.readers import as_float

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
# Margins of the plot area inside the chart: left, right, top, bottom.
ML, MR, MT, MB = 52, 12, 24, 34


@dataclass
class Series:
    """One line of a chart: (x, y) points (NaN or inf breaks the line), a colour, an optional
    run key."""

    label: str
    points: list[tuple[float, float]]
    color: str
    key: str | None = None


@dataclass(frozen=True)
class _Frame:
    """The plot area (pixels) and the data range it shows; y in log10 units when `log`."""

    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float
    log: bool

    def sx(self, x: float) -> float:
        return ML + (x - self.x0) / (self.x1 - self.x0) * self.width

    def sy(self, y: float) -> float:
        v = math.log10(y) if self.log else y
        return MT + self.height - (v - self.y0) / (self.y1 - self.y0) * self.height


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
    """A small line chart as inline SVG (a `markupsafe.Markup`).

    The y axis goes logarithmic (log=None: automatically) when every value is positive and
    they span more than a factor of 30, as diverging losses do.
    """
    points = [[(as_float(x), as_float(y)) for x, y in s.points] for s in series]
    finite = [(x, y) for pts in points for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    pw, ph = width - ML - MR, height - MT - MB
    c: dict[str, Any] = {
        "title": title,
        "width": width,
        "height": height,
        "ml": ML,
        "mt": MT,
        "right": ML + pw,
        "bottom": MT + ph,
        "cx": ML + pw / 2,
        "cy": MT + ph / 2,
        "empty": not finite,
    }
    frame = _frame(finite, pw, ph, ylim, log) if finite else None
    if frame is None:  # nothing finite, or values near the float limits
        return _markup({**c, "empty": True})
    yticks = _y_ticks(frame)
    xticks = [
        t for t in nice_ticks(frame.x0, frame.x1, 6, integer=True) if frame.x0 <= t <= frame.x1
    ]
    few = sum(len(p) for p in points) <= 80  # few enough points to give each a hover dot
    c.update(
        log=frame.log,
        ygrid=[f"{frame.sy(t):.1f}" for t in yticks],
        xgrid=[f"{frame.sx(t):.1f}" for t in xticks],
        ylabels=[(f"{frame.sy(t) + 4:.1f}", _tick_label(t)) for t in yticks],
        xlabels=[(f"{frame.sx(t):.1f}", _tick_label(t)) for t in xticks],
        series=[_line(s, pts, frame, few) for s, pts in zip(series, points, strict=True)],
        legend=_legend(series, width - MR) if legend and len(series) > 1 else [],
    )
    return _markup(c)


def _markup(c: dict[str, Any]) -> Any:
    from markupsafe import Markup  # with jinja2: loaded only when a page is rendered

    return Markup(environment().get_template("chart.svg.j2").render(c=c))


def _frame(
    finite: list[tuple[float, float]],
    pw: float,
    ph: float,
    ylim: tuple[float, float] | None,
    log: bool | None,
) -> _Frame | None:
    """The data range to show (padded, or `ylim` when every value fits it), or None when it
    cannot be drawn (a span beyond the float range)."""
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
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if not (math.isfinite(y1 - y0) and math.isfinite(x1 - x0)):
        return None
    return _Frame(pw, ph, x0, x1, y0, y1, bool(log))


def _y_ticks(f: _Frame) -> list[float]:
    """Powers of ten on a log axis (with 2 and 5 between when fewer than three), else round
    values."""
    if not f.log:
        return nice_ticks(f.y0, f.y1)
    powers = range(math.floor(f.y0), math.ceil(f.y1) + 1)
    ticks = [10.0**k for k in powers if f.y0 - 1e-9 <= k <= f.y1 + 1e-9]
    if len(ticks) >= 3:
        return ticks
    return sorted(
        {
            m * 10.0**k
            for k in powers
            for m in (1, 2, 5)
            if f.y0 - 1e-9 <= math.log10(m * 10.0**k) <= f.y1 + 1e-9
        }
    )


def _line(s: Series, pts: list[tuple[float, float]], f: _Frame, few: bool) -> dict[str, Any]:
    """One series as SVG path data: a segment per finite run of points, dots when `few`."""
    segs: list[list[str]] = []
    cur: list[str] = []
    dots = []
    for x, y in pts:
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not f.log):
            cur.append(f"{f.sx(x):.1f},{f.sy(y):.1f}")
            if few:
                dots.append(
                    (f"{f.sx(x):.1f}", f"{f.sy(y):.1f}", f"{s.label}: epoch {fmt(x)}, {fmt(y)}")
                )
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return {
        "label": s.label,
        "key": s.key,
        "color": s.color,
        "dots": dots,
        "d": " ".join("M" + " L".join(seg) for seg in segs),
    }


def _legend(series: list[Series], right: float) -> list[dict[str, Any]]:
    """One row at the right of the title line, laid out from the right edge."""
    out = []
    cursor = right
    for s in reversed(series):
        w = 6.6 * len(s.label)
        out.append(
            {
                "x1": f"{cursor - w - 18:.1f}",
                "x2": f"{cursor - w - 5:.1f}",
                "x": f"{cursor:.1f}",
                "color": s.color,
                "label": s.label,
            }
        )
        cursor -= w + 28
    return out
