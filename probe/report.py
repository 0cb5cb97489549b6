"""`probe report`: one static HTML page per run, and a comparison page per sweep.

The pages are meant to be opened straight from disk, years later, on a machine
without probe or a network: CSS and JavaScript are inline, the metric curves are
inline SVG drawn from metrics.jsonl (so a run with no analyses still gets a useful
page), and analysis figures are referenced by relative path (`../analyses/...`),
so the page keeps working when the run directory is copied or moved whole.

Nothing is left out silently: every installed analysis with no result is listed
with the `probe analyze` command that computes it, and every failure with its
error and the command that retries it.

A page is rebuilt only when its inputs changed: a digest of everything the page
shows (config, metrics, result manifests, failure records, installed analyses,
this module's own source) is stored in `report/inputs.json`; when it matches,
nothing is rewritten. The report directory is built beside the old one and
swapped in whole (`atomic.atomic_dir`), so a reader never sees half a page.

This module imports nothing heavy at import time (no torch, no matplotlib), so
`probe --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from . import atomic
from .errors import NotARunError, ProbeError

REPORT_DIR = "report"
INDEX = "index.html"
STAMP = "inputs.json"
STAMP_FORMAT = "probe-report/1"

# Preferred section order; analyses not named here follow alphabetically.
ORDER = ("curves", "filters", "projection", "rsm", "cka", "gradcheck", "hessian", "landscape", "sharpness")

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
    ("loss", ("train_loss", "val_loss"), None,
     "Mean training loss per epoch and validation loss at its end; validation rising while training falls means overfitting."),
    ("accuracy", ("train_acc", "val_acc"), (0.0, 1.0),
     "Training and validation accuracy per epoch; the vertical distance between them is the generalisation gap."),
    ("gradient norm", ("grad_norm_mean", "grad_norm_max"), None,
     "Global L2 norm of the gradient per step, mean and max over the epoch; spikes in the max warn of instability."),
    ("weight norm", ("weight_norm",), None,
     "L2 norm of all parameters at the end of each epoch; steady growth without weight decay is normal."),
    ("update ratio", ("update_ratio",), None,
     "Mean ||Δw|| / ||w|| per step; around 1e-3 is healthy, far above means a too-large learning rate."),
    ("learning rate", ("lr",), None, "Learning rate used in each epoch (the schedule)."),
    ("time", ("train_seconds", "val_seconds", "epoch_seconds"), None,
     "Wall-clock seconds per epoch: training, validation, and everything including writing outputs."),
)
SWEEP_METRICS = (("val_acc", (0.0, 1.0)), ("train_acc", (0.0, 1.0)), ("val_loss", None), ("train_loss", None))
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_EPOCH_IN_NAME = re.compile(r"^(?P<stem>.*?)[_-]?epoch[_-]?(?P<n>\d+)$")
_IMAGE = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


# --- what a run holds ------------------------------------------------------------------------------------

@dataclass
class Group:
    """All results of one analysis with one parameter set (variant), across epochs."""

    analysis: str
    variant: str
    scope: str
    params: dict[str, Any]
    results: list[tuple[int | None, Path, dict[str, Any]]] = field(default_factory=list)

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


def installed_analyses() -> tuple[dict[str, Installed], str]:
    """The analyses of `probe.plugins.registry()`, and a note if they could not be listed."""
    from .analysis import params_dict
    from .plugins import registry

    try:
        reg = registry()
    except ProbeError as exc:  # e.g. two plugins registering the same analysis name
        return {}, str(exc)
    broken = [f"plugin {i.name} ({i.dist} {i.version}) did not load: {i.error}".replace("  ", " ")
              for i in reg.plugins.values() if i.status == "error"]
    out = {}
    for name, a in sorted(reg.analyses.items()):
        try:
            defaults = params_dict(a.params())
        except Exception:  # a params class without defaults: the commands simply name no --param
            defaults = {}
        out[name] = Installed(name, a.scope, a.summary, defaults, dict(a.figure_captions), {
            "name": name, "scope": a.scope, "summary": a.summary, "version": a.version, "provider": a.provider,
            "provider_version": a.provider_version, "defaults": _jsonable(defaults), "captions": dict(a.figure_captions)})
    return out, "; ".join(broken)


def collect_groups(run: Any) -> list[Group]:
    """The run's results grouped by (analysis, variant), in report order."""
    from .results import iter_results

    groups: dict[tuple[str, str], Group] = {}
    for path, m in iter_results(run):
        name = str(m.get("analysis") or path.parent.parent.name)
        variant = str(m.get("variant") or path.parent.name)
        scope = m.get("scope") or ("epoch" if _EPOCH_DIR.match(path.name) else "run")
        g = groups.setdefault((name, variant), Group(name, variant, scope, m.get("params") or {}))
        epoch = m.get("epoch")
        if epoch is None and (match := _EPOCH_DIR.match(path.name)):
            epoch = int(match.group(1))
        g.results.append((epoch if scope == "epoch" else None, path, m))
    for g in groups.values():
        g.results.sort(key=lambda r: -1 if r[0] is None else r[0])
    return sorted(groups.values(), key=lambda g: (_order(g.analysis), g.variant != "default", g.variant))


def collect_failures(run: Any, groups: list[Group]) -> list[dict[str, Any]]:
    """Failure records that no later success has superseded."""
    from .results import iter_failures

    done = {(g.analysis, g.variant, e) for g in groups for e, _, _ in g.results}
    out = []
    for f in iter_failures(run):
        key = (f.get("analysis"), f.get("variant", "default"), f.get("epoch"))
        if key not in done:
            out.append(f)
    return sorted(out, key=lambda f: (_order(str(f.get("analysis"))), str(f.get("variant")), f.get("epoch") or -1))


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def caption(analysis: str, fname: str, manifest: dict[str, Any], installed: Installed | None) -> str:
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


def analyze_command(run_display: str, analysis: str, epochs: str, params: dict[str, Any] | None = None,
                    defaults: dict[str, Any] | None = None) -> str:
    """The `probe analyze` command that (re)computes one analysis, with its non-default parameters."""
    parts = ["probe", "analyze", shlex.quote(run_display), "--plugin", shlex.quote(analysis), "--epochs", shlex.quote(epochs)]
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

def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _code_digest(*modules: str) -> str:
    """This module's source (and the named ones'): a changed report layout is a changed input."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in modules:
        p = Path(__file__).with_name(name)
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_digest(run: Any, display: str, installed: dict[str, Installed], note: str = "") -> str:
    """A digest of everything the run page shows; equal digests mean an identical page."""
    from .rundir import ANALYSES, CONFIG, METRICS

    root = run.path
    files = [CONFIG, METRICS]
    if (root / ANALYSES).is_dir():
        files += sorted(str(p.relative_to(root)) for p in (root / ANALYSES).glob("*/*/*/manifest.json"))
        files += sorted(str(p.relative_to(root)) for p in (root / ANALYSES).glob("*/*/*.failed.json"))
    blob = {
        "format": STAMP_FORMAT, "code": _code_digest(), "display": display, "epochs": run.epochs(),
        "files": {rel: _sha(root / rel) for rel in files},
        "installed": [i.fingerprint for i in installed.values()], "note": note,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(report_dir: Path, digest: str) -> bool:
    try:
        stamp = json.loads((report_dir / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("digest") == digest and (report_dir / INDEX).is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_report(report_dir: Path, page: str, digest: str, inputs: dict[str, Any]) -> None:
    """Swap in a new report directory holding the page and the digest it was built from."""
    try:
        with atomic.atomic_dir(report_dir) as tmp:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a report is for sharing
            atomic.write_text(tmp / INDEX, page)
            atomic.write_json(tmp / STAMP, {"format": STAMP_FORMAT, "digest": digest, **inputs})
    except OSError as exc:
        raise ProbeError(f"{report_dir}: cannot write the report ({exc.strerror or exc})") from None


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


def report_run(run_dir: str | Path, *, force: bool = False, display: str | None = None,
               installed: tuple[dict[str, Installed], str] | None = None) -> PageResult:
    """Write RUN/report/index.html unless it is up to date; return what happened."""
    from .rundir import Run

    run = Run(run_dir)
    display = display or str(run_dir)
    inst, note = installed if installed is not None else installed_analyses()
    groups = collect_groups(run)
    failures = collect_failures(run, groups)
    epochs = run.epochs()
    have = {g.analysis for g in groups} | {str(f.get("analysis")) for f in failures}
    missing = [i for name, i in inst.items() if name not in have]
    digest = run_digest(run, display, inst, note)
    report_dir = run.path / REPORT_DIR
    counts = dict(results=sum(len(g.results) for g in groups), failures=len(failures), missing=len(missing))
    if not force and _up_to_date(report_dir, digest):
        return PageResult(report_dir / INDEX, False, digest, **counts)
    page = render_run(run, display, groups, failures, missing, inst, note, epochs)
    _write_report(report_dir, page, digest, {"kind": "run", "path": display})
    return PageResult(report_dir / INDEX, True, digest, **counts)


def sweep_table(sweep_dir: Path) -> tuple[list[Any], list[str], list[str], list[dict[str, Any]]]:
    """The comparison rows of a sweep: `probe compare`'s own, so page and terminal agree.

    Returns (runs, swept keys, columns, records), as `compare.collect` + `compare.table`.
    """
    from . import compare
    from .sweep import SWEEP_FILE

    rows, keys = compare.collect([str(sweep_dir)])
    # A point not started yet has no config, so every config key looks "swept" to
    # `collect`; keep the grid's keys and those that differ between started runs.
    try:
        grid = set(json.loads((sweep_dir / SWEEP_FILE).read_text()).get("grid") or {})
    except (OSError, ValueError, AttributeError):
        grid = set()
    started = [r for r in rows if (Path(r.path) / "config.json").is_file()]
    keys = [k for k in keys if k in grid or len({json.dumps(r.config.get(k), default=str) for r in started}) > 1]
    columns, records = compare.table(rows, keys)
    return rows, keys, columns, records


def report_sweep(sweep_dir: str | Path, *, force: bool = False, display: str | None = None,
                 echo: Callable[[str], None] = click.echo) -> PageResult:
    """Write each run's page, then SWEEP/report/index.html, each only if its inputs changed."""
    from .sweep import STATUS_FILE, SWEEP_FILE

    sweep_dir = Path(sweep_dir)
    display = display or str(sweep_dir)
    try:
        spec = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{sweep_dir / SWEEP_FILE}: not a readable sweep file ({exc})") from None
    installed = installed_analyses()
    rows, keys, columns, records = sweep_table(sweep_dir)
    pages: dict[str, PageResult] = {}
    for row in rows:
        if (Path(row.path) / "config.json").is_file():
            pages[row.label] = report_run(row.path, force=force, display=f"{display.rstrip('/')}/{row.label}",
                                          installed=installed)
    written = sum(p.written for p in pages.values())
    echo(f"{len(pages)} run page{'s' if len(pages) != 1 else ''}: {written} written, {len(pages) - written} up to date")
    blob = {"format": STAMP_FORMAT, "code": _code_digest("compare.py", "sweep.py"), "display": display,
            "sweep": _sha(sweep_dir / SWEEP_FILE), "status": _sha(sweep_dir / STATUS_FILE),
            "runs": {k: p.digest for k, p in sorted(pages.items())}, "labels": [r.label for r in rows]}
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
    report_dir = sweep_dir / REPORT_DIR
    if not force and _up_to_date(report_dir, digest):
        return PageResult(report_dir / INDEX, False, digest)
    page = render_sweep(sweep_dir, display, spec, rows, keys, columns, records, pages)
    _write_report(report_dir, page, digest, {"kind": "sweep", "path": display})
    return PageResult(report_dir / INDEX, True, digest)


def report(path: str | Path, *, force: bool = False, echo: Callable[[str], None] = click.echo) -> PageResult:
    """The page for a run directory or a sweep directory, whichever `path` is."""
    from .rundir import CONFIG
    from .sweep import SWEEP_FILE

    p = Path(path)
    if not p.is_dir():
        raise NotARunError(p, "is a file, not a run or sweep directory" if p.exists() else "no such directory")
    if (p / SWEEP_FILE).is_file():
        return report_sweep(p, force=force, display=str(path), echo=echo)
    if (p / CONFIG).is_file():
        return report_run(p, force=force, display=str(path))
    raise NotARunError(p, f"neither a run directory (no {CONFIG}) nor a sweep directory (no {SWEEP_FILE}); "
                          "make one with `probe train --run-dir DIR` or `probe sweep SPEC --out DIR`")


@click.command("report", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("path", type=click.Path())  # checked by `report`, so every bad path is a one-line error
@click.option("--force", is_flag=True, help="Rewrite the pages even when their inputs are unchanged.")
def report_command(path: str, force: bool) -> None:
    """Write a static HTML page for a run or a sweep, and print its path.

    \b
    probe report runs/base      # runs/base/report/index.html
    probe report sweeps/opt     # the sweep's comparison page, and each run's page

    The page opens straight from disk, offline. It is rebuilt only when the run's
    config, metrics or analysis results changed.
    """
    result = report(path, force=force)
    if result.written:
        click.echo(f"wrote {result.path}")
    else:
        click.echo(f"up to date (inputs unchanged, nothing rewritten): {result.path}")


# --- HTML: the run page ----------------------------------------------------------------------------------------

def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _rel(report_dir: Path, target: Path) -> str:
    """A URL relative to the report directory (one level below the run), safe in an attribute."""
    parts = target.relative_to(report_dir.parent).parts
    return "../" + "/".join(quote(p) for p in parts)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("true" if v else "false")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if not v:
            return "-"
        items = [_fmt(x) for x in v]
        return ", ".join(items) if len(items) <= 12 else ", ".join(items[:12]) + f", … ({len(items)} items)"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _kv_table(items: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in items)
    return f'<table class="{cls}">{rows}</table>'


def _section(sid: str, title: str, body: str, sub: str = "") -> str:
    sub_html = f'<p class="sub">{sub}</p>' if sub else ""
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{sub_html}{body}</section>'


def _summary_cards(run: Any, metrics: list[dict[str, Any]], epochs: list[int]) -> str:
    cfg = run.config
    want = cfg.get("train", {}).get("epochs")
    trained = [m for m in metrics if isinstance(m.get("val_acc"), (int, float))]
    cards = [("epochs", f"{epochs[-1] if epochs else '-'} / {want if want is not None else '?'}")]
    if trained:
        last = trained[-1]
        best = max(trained, key=lambda m: m["val_acc"] if math.isfinite(m["val_acc"]) else -1)
        cards.append(("final val acc", f"{last['val_acc']:.3f}"))
        cards.append(("best val acc", f"{best['val_acc']:.3f} @ {best['epoch']}"))
        if isinstance(last.get("train_acc"), (int, float)):
            cards.append(("train acc", f"{last['train_acc']:.3f}"))
            cards.append(("gap", f"{last['train_acc'] - last['val_acc']:+.3f}"))
    if cfg.get("num_params") is not None:
        cards.append(("parameters", f"{cfg['num_params']:,}"))
    secs = sum(m.get("epoch_seconds") or 0 for m in metrics if isinstance(m.get("epoch_seconds"), (int, float)))
    if secs:
        cards.append(("train time", f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>' for k, v in cards) + "</div>"


def _config_section(run: Any) -> str:
    cfg = run.config
    train = cfg.get("train", {})
    spec = cfg.get("model_spec", {})
    other = [(k, v) for k, v in cfg.items() if k not in ("train", "model_spec", "versions", "classes")]
    other += [(f"versions.{k}", v) for k, v in (cfg.get("versions") or {}).items()]
    if cfg.get("classes"):
        other.append(("classes", cfg["classes"]))
    body = ('<div class="cols">'
            f'<div><h3>training</h3>{_kv_table(train.items())}</div>'
            f'<div><h3>model</h3>{_kv_table(spec.items())}</div>'
            f'<div><h3>run</h3>{_kv_table(other)}</div></div>'
            f'<details><summary>config.json</summary><pre>{esc(json.dumps(cfg, indent=2, sort_keys=True))}</pre></details>')
    return _section("config", "Config", body, "The resolved configuration the run was trained with (config.json).")


def _metrics_section(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return _section("metrics", "Training curves", '<p class="empty">metrics.jsonl holds no epochs yet.</p>')
    charts = []
    drawn: set[str] = set()
    for title, keys, ylim, how in METRIC_CHARTS:
        series = [_metric_series(metrics, k, PALETTE[i]) for i, k in enumerate(keys)]
        series = [s for s in series if s.points]
        if not series:
            continue
        drawn.update(keys)
        charts.append(_figure_svg(svg_chart(title, series, ylim=ylim), how))
    extra = sorted({k for m in metrics for k, v in m.items() if k != "epoch" and k not in drawn
                    and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for k in extra:
        s = _metric_series(metrics, k, PALETTE[0])
        if s.points:
            charts.append(_figure_svg(svg_chart(k.replace("_", " "), [s]), f"{k} per epoch, from metrics.jsonl."))
    cols = ["epoch", *[k for _, keys, _, _ in METRIC_CHARTS for k in keys if any(k in m for m in metrics)], *extra]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body_rows = "".join("<tr>" + "".join(f"<td>{esc(_fmt(m.get(c)))}</td>" for c in cols) + "</tr>" for m in metrics)
    table = f'<details><summary>metrics.jsonl as a table</summary><div class="scroll"><table class="data"><tr>{head}</tr>{body_rows}</table></div></details>'
    return _section("metrics", "Training curves", f'<div class="grid">{"".join(charts)}</div>{table}',
                    "Drawn from metrics.jsonl; epoch 0 is the initialisation (validation only). Hover a point for its value.")


def _metric_series(metrics: list[dict[str, Any]], key: str, color: str) -> Series:
    pts = [(m["epoch"], _num(m.get(key))) for m in metrics if key in m and isinstance(m.get("epoch"), (int, float))]
    return Series(key.replace("_", " "), pts, color)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _figure_svg(svg: str, cap: str) -> str:
    return f'<figure class="chart">{svg}<figcaption>{esc(cap)}</figcaption></figure>'


def _figures_of(files: Sequence[str]) -> list[str]:
    return [f for f in files if f.lower().endswith(_IMAGE)]


def _other_files(report_dir: Path, path: Path, files: Sequence[str]) -> str:
    links = [f'<a href="{esc(_rel(report_dir, path / f))}">{esc(f)}</a>' for f in files
             if not f.lower().endswith(_IMAGE) and (path / f).exists()]
    return f'<p class="files">data: {" · ".join(links)}</p>' if links else ""


def _img(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def _group_section(g: Group, report_dir: Path, inst: Installed | None, failures: list[dict[str, Any]],
                   run_display: str) -> str:
    title = g.analysis if g.variant == "default" else f"{g.analysis} ({g.variant})"
    sid = f"a-{g.analysis}-{g.variant}"
    first = g.results[-1][2]
    meta = [f"scope: {'per epoch' if g.scope == 'epoch' else 'whole run'}",
            f"version {first.get('version', '?')}", f"provider {first.get('provider') or '?'} {first.get('provider_version') or ''}".rstrip()]
    if g.variant != "default" and g.params:
        meta.append("params: " + ", ".join(f"{k}={_param_text(v)}" for k, v in sorted(g.params.items())))
    sub = esc((inst.summary + " · " if inst else "") + " · ".join(meta))
    if g.scope == "epoch":
        body = _epoch_browser(sid, g, report_dir, inst)
    else:
        body = "".join(_run_result(report_dir, path, m, g.analysis, inst) for _, path, m in g.results)
    mine = [f for f in failures if f.get("analysis") == g.analysis and f.get("variant", "default") == g.variant]
    if mine:
        eps = ", ".join("run" if f.get("epoch") is None else str(f["epoch"]) for f in mine)
        body += f'<p class="warn">also failed for epoch(s) {esc(eps)}; see <a href="#missing">missing and failed</a>.</p>'
    return _section(sid, title, body, sub)


def _run_result(report_dir: Path, path: Path, m: dict[str, Any], analysis: str, inst: Installed | None) -> str:
    files = list(m.get("files") or [])
    figs = [f for f in _figures_of(files) if (path / f).exists()]
    parts = []
    # Run-wide results may still hold one figure per epoch (`<stem>_epoch_0005.png`): browse those.
    series: dict[str, dict[int, str]] = {}
    for f in figs:
        match = _EPOCH_IN_NAME.match(f.rsplit(".", 1)[0])
        if match:
            series.setdefault(match.group("stem") or "figure", {})[int(match.group("n"))] = f
    series = {k: v for k, v in series.items() if len(v) > 1}
    in_series = {f for v in series.values() for f in v.values()}
    for f in figs:
        if f not in in_series:
            parts.append(f'<figure>{_img(_rel(report_dir, path / f), f)}<figcaption>{esc(caption(analysis, f, m, inst))}</figcaption></figure>')
    for stem, by_epoch in sorted(series.items()):
        data = {"epochs": sorted(by_epoch), "figures": {stem: {str(e): {
            "src": _rel(report_dir, path / f), "caption": caption(analysis, f, m, inst)} for e, f in by_epoch.items()}}}
        parts.append(_browser_html(f"s-{analysis}-{path.parent.name}-{stem}", data, [stem], ""))
    if m.get("scalars"):
        parts.append(_kv_table(sorted(m["scalars"].items()), "kv scalars"))
    parts.append(_other_files(report_dir, path, files))
    if m.get("epochs"):
        parts.append(f'<p class="files">over epochs {esc(_fmt(m["epochs"]))}</p>')
    return "".join(parts)


def _epoch_browser(sid: str, g: Group, report_dir: Path, inst: Installed | None) -> str:
    names: list[str] = []
    figures: dict[str, dict[str, dict[str, str]]] = {}
    for e, path, m in g.results:
        for f in _figures_of(m.get("files") or []):
            if not (path / f).exists():
                continue
            if f not in figures:
                names.append(f)
                figures[f] = {}
            figures[f][str(e)] = {"src": _rel(report_dir, path / f), "caption": caption(g.analysis, f, m, inst)}
    data = {"epochs": g.epochs, "figures": figures}
    scalar_names = sorted({k for _, _, m in g.results for k in (m.get("scalars") or {})})
    table = ""
    if scalar_names:
        head = "<tr><th>epoch</th>" + "".join(f"<th>{esc(k)}</th>" for k in scalar_names) + "</tr>"
        rows = "".join(f'<tr data-epoch="{e}"><td>{e}</td>' + "".join(
            f"<td>{esc(_fmt((m.get('scalars') or {}).get(k)))}</td>" for k in scalar_names) + "</tr>"
            for e, _, m in g.results)
        table = f'<div class="scroll"><table class="data scalars">{head}{rows}</table></div>'
    last_path, last_m = g.results[-1][1], g.results[-1][2]
    files = _other_files(report_dir, last_path, last_m.get("files") or []).replace("data:", f"data (epoch {g.epochs[-1]}):", 1)
    if not names:  # numbers only: the table already shows every epoch, a slider would add nothing
        return table + files
    return _browser_html(sid, data, names, table + files)


def _browser_html(sid: str, data: dict[str, Any], names: list[str], extra: str) -> str:
    """Figures of several epochs behind one slider; the data is inline JSON, the page never reloads."""
    epochs = data["epochs"]
    last = str(epochs[-1])
    figs = []
    for n in names:
        entry = data["figures"][n].get(last)
        img = _img(entry["src"], n) if entry else '<img alt="" hidden>'
        cap = entry["caption"] if entry else ""
        figs.append(f'<figure data-fig="{esc(n)}">{img}<p class="absent"{"" if not entry else " hidden"}>'
                    f'not computed for this epoch</p><figcaption>{esc(cap)}</figcaption></figure>')
    blob = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    n = len(epochs)
    control = (f'<div class="epoch-control"><button type="button" class="prev" title="previous epoch">◀</button>'
               f'<input type="range" class="epoch-slider" min="0" max="{n - 1}" step="1" value="{n - 1}" aria-label="epoch"'
               f'{" disabled" if n < 2 else ""}>'
               f'<button type="button" class="next" title="next epoch">▶</button>'
               f'<span class="epoch-label">epoch {esc(last)} ({n} of {n})</span>'
               f'<span class="epoch-list">epochs: {esc(", ".join(map(str, epochs)))}</span></div>')
    return (f'<div class="epochs" id="{esc(sid)}-browser">{control}<script type="application/json" class="epoch-data">'
            f'{blob}</script><div class="figs">{"".join(figs)}</div>{extra}</div>')


def _missing_section(run_display: str, missing: list[Installed], failures: list[dict[str, Any]],
                     inst: dict[str, Installed], note: str, epochs: list[int]) -> str:
    parts = []
    if note:
        parts.append(f'<p class="warn">Some analyses may be missing from this list: {esc(note)}</p>')
    if missing:
        rows = "".join(
            f'<tr><td>{esc(i.name)}</td><td>{esc(i.summary)}</td>'
            f'<td><code class="cmd">{esc(analyze_command(run_display, i.name, suggested_epochs(i.scope, epochs)))}</code></td></tr>'
            for i in missing)
        parts.append('<h3>Not computed</h3><p class="sub">Installed analyses with no result in this run.</p>'
                     f'<table class="data"><tr><th>analysis</th><th>what it shows</th><th>command</th></tr>{rows}</table>')
    if failures:
        rows = []
        for f in failures:
            name = str(f.get("analysis"))
            i = inst.get(name)
            epoch = f.get("epoch")
            cmd = analyze_command(run_display, name, str(epoch) if epoch is not None else "all", f.get("params") or {},
                                  i.defaults if i else None)
            tb = f.get("traceback") or ""
            rows.append(f'<tr><td>{esc(name)}{"" if f.get("variant", "default") == "default" else " (" + esc(f.get("variant")) + ")"}</td>'
                        f'<td>{esc("run" if epoch is None else epoch)}</td><td class="err">{esc(f.get("error", ""))}'
                        f'{f"<details><summary>traceback</summary><pre>{esc(tb)}</pre></details>" if tb else ""}</td>'
                        f'<td><code class="cmd">{esc(cmd)}</code></td><td>{esc(f.get("created", ""))}</td></tr>')
        parts.append('<h3>Failed</h3><p class="sub">The last attempt of these jobs raised an error; '
                     'the command retries them (full logs in logs/).</p><table class="data"><tr><th>analysis</th>'
                     f'<th>epoch</th><th>error</th><th>command</th><th>when</th></tr>{"".join(rows)}</table>')
    if not parts:
        parts.append('<p class="ok">Every installed analysis has results in this run; none failed.</p>')
    return _section("missing", "Missing and failed analyses", "".join(parts))


def render_run(run: Any, display: str, groups: list[Group], failures: list[dict[str, Any]], missing: list[Installed],
               inst: dict[str, Installed], note: str, epochs: list[int]) -> str:
    report_dir = run.path / REPORT_DIR
    metrics = run.metrics()
    sections = [_config_section(run), _metrics_section(metrics)]
    nav = [("config", "config"), ("metrics", "training curves")]
    if not groups:
        sections.append(_section("analyses", "Analyses", '<p class="empty">No analysis results yet; '
                                 'the commands below compute them.</p>'))
    for g in groups:
        sections.append(_group_section(g, report_dir, inst.get(g.analysis), failures, display))
        nav.append((f"a-{g.analysis}-{g.variant}", g.analysis if g.variant == "default" else f"{g.analysis}·{g.variant[:8]}"))
    n_bad = len(missing) + len(failures)
    sections.append(_missing_section(display, missing, failures, inst, note, epochs))
    nav.append(("missing", f"missing & failed ({n_bad})" if n_bad else "missing & failed"))
    name = run.path.resolve().name
    head = (f'<header><h1>{esc(name)}</h1><p class="sub">run directory <code>{esc(display)}</code> · '
            f'{esc(run.config.get("data_source", ""))}</p>{_summary_cards(run, metrics, epochs)}</header>')
    return _page(f"probe report: {name}", head, nav, "".join(sections), f"probe report {shlex.quote(display)}")


# --- HTML: the sweep page ----------------------------------------------------------------------------------------

def _colors(n: int) -> list[str]:
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    return [f"hsl({round(360 * i / n)},65%,42%)" for i in range(n)]


def _sort_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(float(v))
    return str(v)


def render_sweep(sweep_dir: Path, display: str, spec: dict[str, Any], rows: list[Any], keys: list[str],
                 columns: list[str], records: list[dict[str, Any]], pages: dict[str, PageResult]) -> str:
    from .compare import format_cell, stability_summary

    colors = dict(zip([r.label for r in rows], _colors(len(rows)), strict=True))
    shown = [c for c in columns if c == "run" or any(format_cell(r.get(c), c) not in ("-", "") for r in records)]
    head = "".join(f'<th title="click to sort">{esc(c)}</th>' for c in shown) + '<th title="click to sort">analyses</th>'
    body = []
    for rec, row in zip(records, rows, strict=True):
        label = row.label
        cells = []
        for c in shown:
            text = esc(format_cell(rec.get(c), c))
            if c == "run":
                swatch = f'<span class="sw" style="background:{colors[label]}"></span>'
                link = f'<a href="../{esc(quote(label))}/report/index.html">{esc(label)}</a>' if label in pages else esc(label)
                cells.append(f'<td class="run" data-v="{esc(label)}">{swatch}{link}</td>')
            else:
                wrap = ' class="wrap"' if c == "error" else ""
                cells.append(f'<td{wrap} data-v="{esc(_sort_value(rec.get(c)))}">{text}</td>')
        p = pages.get(label)
        if p:
            summary = f"{p.results} results" + (f", {p.failures} failed" if p.failures else "") + (f", {p.missing} missing" if p.missing else "")
            cells.append(f'<td data-v="{p.results}">{esc(summary)}</td>')
        else:
            cells.append('<td data-v="">-</td>')
        body.append(f'<tr data-run="{esc(label)}">{"".join(cells)}</tr>')
    table = (f'<div class="scroll"><table class="data sortable"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    try:
        stab = stability_summary(records, keys)
    except (TypeError, ValueError, KeyError):  # decorative; never lose the page over it
        stab = ""
    stab_html = f"<pre>{esc(stab)}</pre>" if stab else ""
    sections = [_section("table", "Comparison", table + stab_html,
                         "One row per grid point, as <code>probe compare</code> prints it; click a header to sort, "
                         "a run to open its page, hover a row to pick out its curves.")]
    charts = []
    for metric, ylim in SWEEP_METRICS:
        series = [Series(r.label, [(x, y) for x, y in zip(*r.series(metric), strict=True)], colors[r.label], key=r.label)
                  for r in rows]
        series = [s for s in series if s.points]
        if series:
            charts.append(_figure_svg(svg_chart(metric.replace("_", " "), series, ylim=ylim, legend=False),
                                      f"{metric} per epoch for every run of the sweep, one colour per run (legend below)."))
    legend = '<ul class="legend">' + "".join(
        f'<li data-run="{esc(r.label)}"><span class="sw" style="background:{colors[r.label]}"></span>{esc(r.label)}</li>'
        for r in rows if r.metrics) + "</ul>"
    sections.append(_section("curves", "Curves", f'<div class="grid">{"".join(charts) or "<p class=empty>no metrics yet</p>"}</div>{legend}',
                             "Overlaid per-epoch metrics of all runs."))
    links = "".join(
        f'<li><a href="../{esc(quote(r.label))}/report/index.html">{esc(r.label)}</a> <span class="sub">{esc(r.state)}</span></li>'
        if r.label in pages else f'<li>{esc(r.label)} <span class="sub">{esc(r.state)}{": " + esc(r.error) if r.error else ""}</span></li>'
        for r in rows)
    sections.append(_section("runs", "Run pages", f"<ul>{links}</ul>"))
    grid = spec.get("grid") or {}
    grid_text = " × ".join(f"{k} ∈ {{{', '.join(_param_text(v) for v in vs)}}}" for k, vs in grid.items())
    plugins = (spec.get("analyze") or {}).get("plugins") or []
    name = spec.get("name") or sweep_dir.resolve().name
    desc = f'<p>{esc(spec["description"])}</p>' if spec.get("description") else ""
    head_html = (f'<header><h1>sweep: {esc(name)}</h1>{desc}<p class="sub">sweep directory <code>{esc(display)}</code> · '
                 f'{esc(grid_text)} = {len(rows)} runs' + (f' · analyses: {esc(", ".join(plugins))}' if plugins else "") + "</p></header>")
    nav = [("table", "comparison"), ("curves", "curves"), ("runs", "run pages")]
    return _page(f"probe sweep report: {name}", head_html, nav, "".join(sections), f"probe report {shlex.quote(display)}")


# --- HTML: shared frame --------------------------------------------------------------------------------------------

def _page(title: str, header: str, nav: list[tuple[str, str]], body: str, regen: str) -> str:
    from . import __version__

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    nav_html = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="probe {esc(__version__)}"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><nav>{nav_html}</nav><main>{header}{body}"
            f'<footer>Written by probe {esc(__version__)} at {esc(now)}; rebuild with <code>{esc(regen)}</code>.</footer>'
            f"</main><script>{JS}</script></body></html>\n")


CSS = """
:root{--fg:#1d2330;--mut:#5b6475;--bd:#dde1e8;--bg:#fff;--alt:#f5f7fa;--acc:#2563eb}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
nav{position:sticky;top:0;z-index:5;background:#1d2330;padding:6px 16px;display:flex;flex-wrap:wrap;gap:4px 14px}
nav a{color:#cfd8ea;text-decoration:none;font-size:13px}nav a:hover{color:#fff}
main{max-width:1280px;margin:0 auto;padding:12px 20px 40px}
h1{margin:10px 0 2px;font-size:24px}h2{margin:0 0 4px;font-size:19px}h3{margin:10px 0 4px;font-size:15px}
section{border-top:1px solid var(--bd);padding:16px 0}
.sub{color:var(--mut);margin:0 0 10px;font-size:13px}.empty,.ok{color:var(--mut)}.warn,.err{color:#b42318}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:var(--alt);padding:1px 4px;border-radius:3px}
code.cmd{user-select:all;white-space:pre-wrap;overflow-wrap:anywhere}pre{background:var(--alt);padding:8px;overflow:auto;font-size:12px;max-height:420px}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}.card{border:1px solid var(--bd);border-radius:6px;padding:6px 12px;min-width:110px}
.card .k{color:var(--mut);font-size:12px}.card .v{font-size:18px;font-weight:600}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:14px}
table{border-collapse:collapse;font-size:13px}table.kv th{text-align:left;font-weight:500;color:var(--mut);padding:2px 12px 2px 0;vertical-align:top}
table.kv td{padding:2px 0;word-break:break-word}table.data th,table.data td{border:1px solid var(--bd);padding:3px 8px;text-align:left;vertical-align:top}
table.data th{background:var(--alt)}table.data tr.current td{background:#fff4cc}.scroll{overflow-x:auto}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}table.sortable th[data-dir=asc]::after{content:" ▲"}table.sortable th[data-dir=desc]::after{content:" ▼"}
table.sortable tbody tr:hover td{background:#eef3ff}table.sortable td{white-space:nowrap}table.sortable td.wrap{white-space:normal;min-width:260px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(390px,1fr));gap:12px}
figure{margin:8px 0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid var(--bd);background:#fff}
figcaption{color:var(--mut);font-size:13px;margin-top:3px;max-width:900px}figure.chart{margin:0;border:1px solid var(--bd);border-radius:6px;padding:6px}
svg.chart{width:100%;height:auto;display:block}svg.chart text{font:11px system-ui,sans-serif;fill:#444}svg.chart .title{font-size:13px;font-weight:600;fill:#1d2330}
svg.chart .grid line{stroke:#eceff3}svg.chart .axis{stroke:#9aa3b2}svg.chart .series path{fill:none;stroke-width:1.8}
svg.chart .series.dim{opacity:.12}svg.chart .series.hl path{stroke-width:3.2}
.epoch-control{display:flex;align-items:center;gap:8px;flex-wrap:wrap;background:var(--alt);border:1px solid var(--bd);border-radius:6px;padding:6px 10px;margin:6px 0}
.epoch-control input[type=range]{width:min(420px,60vw)}.epoch-control button{font-size:13px;padding:2px 9px;cursor:pointer}
.epoch-label{font-weight:600;min-width:140px}.epoch-list{color:var(--mut);font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:14px}.files{color:var(--mut);font-size:12px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px}ul.legend li{cursor:default}
footer{border-top:1px solid var(--bd);margin-top:20px;padding-top:10px;color:var(--mut);font-size:12px}
"""

JS = r"""
(function(){
function browser(box){
  var data=JSON.parse(box.querySelector('script.epoch-data').textContent);
  var slider=box.querySelector('input.epoch-slider'),label=box.querySelector('.epoch-label');
  var figs=box.querySelectorAll('figure[data-fig]'),rows=box.querySelectorAll('tr[data-epoch]');
  var n=data.epochs.length;
  function srcs(i){var out=[];Object.keys(data.figures).forEach(function(k){var e=data.figures[k][String(data.epochs[i])];if(e)out.push(e.src);});return out;}
  function show(i){
    i=Math.max(0,Math.min(n-1,i));slider.value=i;var e=String(data.epochs[i]);
    label.textContent='epoch '+e+' ('+(i+1)+' of '+n+')';
    figs.forEach(function(f){
      var entry=data.figures[f.getAttribute('data-fig')][e],img=f.querySelector('img');
      f.querySelector('.absent').hidden=!!entry;img.hidden=!entry;
      if(entry){if(img.getAttribute('src')!==entry.src)img.setAttribute('src',entry.src);img.alt=f.getAttribute('data-fig')+' at epoch '+e;
        f.querySelector('figcaption').textContent=entry.caption;}
    });
    rows.forEach(function(r){r.classList.toggle('current',r.getAttribute('data-epoch')===e);});
    [i-1,i+1].forEach(function(j){if(j>=0&&j<n)srcs(j).forEach(function(s){(new Image()).src=s;});});
  }
  slider.addEventListener('input',function(){show(+slider.value);});
  box.querySelector('.prev').addEventListener('click',function(){show(+slider.value-1);});
  box.querySelector('.next').addEventListener('click',function(){show(+slider.value+1);});
  show(+slider.value);
}
document.querySelectorAll('.epochs').forEach(browser);
function key(td){return td?td.getAttribute('data-v'):'';}
document.querySelectorAll('table.sortable').forEach(function(t){
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
    var asc=th.getAttribute('data-dir')!=='asc';
    Array.prototype.forEach.call(ths,function(o){o.removeAttribute('data-dir');});
    th.setAttribute('data-dir',asc?'asc':'desc');
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a.cells[i]),y=key(b.cells[i]);
      if(x===''||y==='')return x===y?0:(x===''?1:-1);
      var nx=parseFloat(x),ny=parseFloat(y),c;
      c=(!isNaN(nx)&&!isNaN(ny)&&String(nx)!=='NaN'&&/^[-+0-9.eE]+$/.test(x)&&/^[-+0-9.eE]+$/.test(y))?nx-ny:x.localeCompare(y,undefined,{numeric:true});
      return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  });});
});
function pick(run){document.querySelectorAll('svg.chart .series[data-run]').forEach(function(s){
  var me=s.getAttribute('data-run')===run;s.classList.toggle('dim',run!==null&&!me);s.classList.toggle('hl',run!==null&&me);});}
document.querySelectorAll('tr[data-run],ul.legend li[data-run]').forEach(function(el){
  el.addEventListener('mouseenter',function(){pick(el.getAttribute('data-run'));});
  el.addEventListener('mouseleave',function(){pick(null);});
});
})();
"""


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


def svg_chart(title: str, series: list[Series], *, ylim: tuple[float, float] | None = None,
              log: bool | None = None, legend: bool = True, width: int = 440, height: int = 250) -> str:
    """A small line chart as inline SVG: no plotting library, no file, readable offline.

    The y axis goes logarithmic (log=None: automatically) when every value is
    positive and they span more than a factor of 30, as diverging losses do.
    """
    finite = [(x, y) for s in series for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
    ml, mr, mt, mb = 52, 12, 24, 34
    pw, ph = width - ml - mr, height - mt - mb
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}">',
           f'<text class="title" x="{ml}" y="15">{esc(title)}</text>']
    if not finite:
        out.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle">no finite values</text></svg>')
        return "".join(out)
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

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        v = math.log10(y) if log else y
        return mt + ph - (v - y0) / (y1 - y0) * ph

    out.append('<g class="grid">')
    if log:
        yticks = [10.0 ** k for k in range(math.floor(y0), math.ceil(y1) + 1) if y0 - 1e-9 <= k <= y1 + 1e-9]
        if len(yticks) < 3:
            yticks = sorted({m * 10.0 ** k for k in range(math.floor(y0), math.ceil(y1) + 1) for m in (1, 2, 5)
                             if y0 - 1e-9 <= math.log10(m * 10.0 ** k) <= y1 + 1e-9})
    else:
        yticks = nice_ticks(y0, y1)
    for t in yticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>')
    xticks = [t for t in nice_ticks(x0, x1, 6, integer=True) if x0 <= t <= x1]
    for t in xticks:
        out.append(f'<line y1="{mt}" y2="{mt + ph}" x1="{sx(t):.1f}" x2="{sx(t):.1f}"/>')
    out.append("</g>")
    out.append(f'<path class="axis" fill="none" d="M{ml},{mt} V{mt + ph} H{ml + pw}"/>')
    for t in yticks:
        out.append(f'<text x="{ml - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>')
    for t in xticks:
        out.append(f'<text x="{sx(t):.1f}" y="{mt + ph + 15}" text-anchor="middle">{_tick_label(t)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 3}" text-anchor="middle">epoch{" (log y)" if log else ""}</text>')
    few = sum(len(s.points) for s in series) <= 80
    for s in series:
        run = f' data-run="{esc(s.key)}"' if s.key is not None else ""
        out.append(f'<g class="series"{run}><title>{esc(s.label)}</title>')
        segs, cur = [], []
        for x, y in s.points:
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log):
                cur.append(f"{sx(x):.1f},{sy(y):.1f}")
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        d = " ".join("M" + " L".join(seg) for seg in segs)
        if d:
            out.append(f'<path d="{d}" stroke="{s.color}"/>')
        if few:
            for x, y in s.points:
                if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log):
                    out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}">'
                               f"<title>{esc(s.label)}: epoch {_fmt(x)}, {_fmt(y)}</title></circle>")
        out.append("</g>")
    if legend and len(series) > 1:  # one row at the right of the title line, laid out from the right edge
        cursor = width - mr
        for s in reversed(series):
            w = 6.6 * len(s.label)
            out.append(f'<line x1="{cursor - w - 18:.1f}" x2="{cursor - w - 5:.1f}" y1="11" y2="11" stroke="{s.color}" stroke-width="2.5"/>'
                       f'<text x="{cursor:.1f}" y="15" text-anchor="end">{esc(s.label)}</text>')
            cursor -= w + 28
    out.append("</svg>")
    return "".join(out)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
