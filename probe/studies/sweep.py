"""`probe sweep`: train every point of a grid, then run the chosen analyses on each.

A sweep file is TOML with a base config, a grid of swept keys and the analyses to
run after each training:

    name = "optimizer"
    [base]                      # any `probe train` key
    epochs = 20
    target_params = 150000
    [grid]                      # every combination is one run
    optimizer = ["SGD", "SGD_mom", "Adam"]
    lr = [0.001, 0.01, 0.1]
    [analyze]                   # optional
    plugins = ["hessian", "sharpness"]
    epochs = "last"
    [analyze.params.hessian]
    top_k = 1

A grid key `model.<parameter>` sweeps one parameter of the model family
(`model = "resnet"` in [base], `model.depth = [20, 56]`, `model.shortcut = ["A", "none"]`).

Each grid point is an ordinary run directory under the sweep directory, named after
its swept values (`optimizer=SGD,lr=0.001`), so `probe analyze`, `probe compare`
and everything else work on it unchanged. The whole file is checked, and every
point's config built, before anything trains. Rerunning skips finished points and
resumes the others from their last complete epoch; a point that fails is recorded
in status.json with its error while the rest go on.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from probe.analysis.executor import Task, make_executor
from probe.analysis.runner import run_analyses
from probe.contract.analysis import split_params
from probe.contract.registry import registry
from probe.errors import ProbeError, UsageError
from probe.io import atomic
from probe.io.paths import child_dir
from probe.rundir.readers import STATUS_FILE, SWEEP_FILE, read_status
from probe.rundir.run import CONFIG, Run
from probe.training.config import FIELDS, TrainConfig, coerce, from_dict, read_toml

FORMAT = "probe-sweep/1"
TOP_KEYS = ("name", "description", "base", "grid", "analyze")
ANALYZE_KEYS = ("plugins", "epochs", "params")
# Grid points one sweep may hold: a 1.7 kB file of seven keys of 40 values names 1.6e11.
MAX_POINTS = 10_000
# What may differ between a finished run and the sweep asking for it again: more
# epochs extend a run (as `probe train --resume --epochs` does); the device does not
# change what is trained. Anything else means the run is not this grid point.
RESUMABLE_CHANGES = ("epochs", "device")
MODEL_PREFIX = "model."  # grid keys `model.<parameter>` sweep one parameter of the model family
_EPOCH_PART = re.compile(r"^(all|last|first|::[1-9]\d*|\d+-\d+|\d+)$")


@dataclass(frozen=True)
class Analyses:
    """What `[analyze]` asks for after each training."""

    plugins: tuple[str, ...] = ()
    epochs: str = "last"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"plugins": list(self.plugins), "epochs": self.epochs, "params": self.params}


@dataclass(frozen=True)
class Point:
    """One grid point: its swept values, its full config and its run directory name."""

    name: str
    values: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file."""

    path: Path
    name: str
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    analyses: Analyses

    def points(self) -> list[Point]:
        """Every combination of the grid, in file order (the first key varies slowest)."""
        keys = list(self.grid)
        points, seen = [], {}
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            name = point_name(values)
            if name in seen:
                raise UsageError(
                    f"{self.path} [grid]",
                    f"two points share the directory name {name!r} ({seen[name]} and {values})",
                )
            seen[name] = values
            config = {
                **self.base,
                **{k: v for k, v in values.items() if not k.startswith(MODEL_PREFIX)},
            }
            swept = tuple(
                f"{k.removeprefix(MODEL_PREFIX)}={format_value(v)}"
                for k, v in values.items()
                if k.startswith(MODEL_PREFIX)
            )
            if swept:  # `model.depth = [20, 56]`: one model parameter per grid key
                config["model_params"] = (*config.get("model_params", ()), *swept)
            try:
                cfg = TrainConfig(**config)
            except UsageError as exc:
                raise UsageError(f"{self.path}: point {name}", str(exc)) from None
            points.append(Point(name, values, cfg))
        return points

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "spec_file": str(self.path),
            "base": _plain(self.base),
            "grid": _plain(self.grid),
            "analyze": self.analyses.to_dict(),
        }


# --- reading a sweep file -------------------------------------------------------------------------


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and check a sweep file; `overrides` (from --set) replace base values.

    Every problem is one `UsageError` naming the file, the table and the key.
    """
    path = Path(path)
    raw = read_toml(path, "SPEC")
    for key in raw:
        if key not in TOP_KEYS:
            raise UsageError(
                str(path), f"unknown key {key!r} (a sweep file has {', '.join(TOP_KEYS)})"
            )
    name = raw.get("name", path.stem)
    description = raw.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise UsageError(str(path), f"{key}: expected a string, got {type(value).__name__}")
    base = _table(raw, "base", path)
    base = {k.replace("-", "_"): v for k, v in base.items()}
    base = {k: coerce(k, v, f"{path} [base]") for k, v in base.items()}
    grid = _read_grid(_table(raw, "grid", path), path)
    for key in grid:
        if key in base:
            raise UsageError(f"{path} [grid]", f"{key} is both swept and set in [base]; keep one")
    for key, value in (overrides or {}).items():
        if key in grid:
            raise UsageError(
                "--set", f"{key} is swept by {path}; it cannot be set for the whole sweep"
            )
        base[key] = coerce(key, value, "--set")
    if base.get("data"):  # workers may start elsewhere: give them an absolute path
        base["data"] = str(Path(base["data"]).expanduser().resolve())
    analyses = _read_analyses(_table(raw, "analyze", path), path)
    return SweepSpec(path, name, description, base, grid, analyses)


def _table(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(str(path), f"{key} must be a table ([{key}]), got {type(value).__name__}")
    return value


def _read_grid(table: dict[str, Any], path: Path) -> dict[str, list[Any]]:
    where = f"{path} [grid]"
    if not table:
        raise UsageError(
            where, "the grid is empty; list at least one key with its values, e.g. lr = [0.01, 0.1]"
        )
    grid: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key.startswith(
            MODEL_PREFIX
        ):  # a model-family parameter: scalars, checked by the family at preflight
            ok = (
                isinstance(values, list)
                and values
                and all(isinstance(v, (bool, int, float, str)) for v in values)
            )
            if not ok or not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_]{0,63}", key.removeprefix(MODEL_PREFIX)
            ):
                raise UsageError(
                    where,
                    f"{key}: expected model.<parameter> = [values], e.g. model.depth = [20, 56]",
                )
            if len(set(map(repr, values))) < len(values):
                raise UsageError(where, f"{key}: a value is listed twice in {values!r}")
            grid[key] = list(values)
            continue
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise UsageError(
                where, f"unknown config key {key!r} (known keys: {', '.join(sorted(FIELDS))})"
            )
        if not isinstance(values, list):
            raise UsageError(
                where, f"{key}: expected a list of values, got {type(values).__name__} {values!r}"
            )
        if not values:
            raise UsageError(where, f"{key}: the list of values is empty")
        checked = [coerce(key, v, where) for v in values]
        if len(set(map(repr, checked))) < len(checked):
            raise UsageError(where, f"{key}: a value is listed twice in {values!r}")
        grid[key] = checked
    n_points = math.prod(len(v) for v in grid.values())  # counted, never expanded, first
    if n_points > MAX_POINTS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        raise UsageError(
            where,
            f"{n_points:,} points ({sizes}), more than the {MAX_POINTS:,} a sweep may hold; "
            "split it into several sweeps",
        )
    return grid


def _read_analyses(table: dict[str, Any], path: Path) -> Analyses:
    where = f"{path} [analyze]"
    for key in table:
        if key not in ANALYZE_KEYS:
            raise UsageError(where, f"unknown key {key!r} (known: {', '.join(ANALYZE_KEYS)})")
    plugins = table.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UsageError(where, f"plugins: expected a list of analysis names, got {plugins!r}")
    epochs = table.get("epochs", "last")
    if not isinstance(epochs, str) or not all(
        _EPOCH_PART.match(p.strip()) for p in epochs.split(",")
    ):
        raise UsageError(where, f"epochs: expected all, last, 0,5,last, 2-6 or ::5, got {epochs!r}")
    params = table.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise UsageError(
            where, "params: expected one table per analysis, e.g. [analyze.params.hessian]"
        )
    for name in params:
        if name not in plugins:
            raise UsageError(
                where, f"params: {name!r} has parameters but is not in plugins {plugins}"
            )
    return Analyses(tuple(plugins), epochs, params)


def check_plugins(spec: SweepSpec) -> None:
    """Fail now, not after hours of training, if an analysis is not installed or a parameter is
    wrong."""
    if not spec.analyses.plugins:
        return

    reg = registry()
    for name in spec.analyses.plugins:
        try:
            reg.get(name).make_params(spec.analyses.params.get(name, {}))
        except UsageError as exc:
            raise UsageError(f"{spec.path} [analyze]", str(exc).split(": ", 1)[-1]) from None


def with_params(spec: SweepSpec, pairs: tuple[str, ...]) -> SweepSpec:
    """Apply `--param` pairs (as `probe analyze --param`) over the file's analysis parameters."""
    if not spec.analyses.plugins:
        raise UsageError("--param", f"{spec.path} runs no analyses (no [analyze] plugins)")

    check_plugins(spec)
    routed = split_params(list(pairs), [registry().get(name) for name in spec.analyses.plugins])
    merged = {
        name: {**spec.analyses.params.get(name, {}), **routed.get(name, {})}
        for name in spec.analyses.plugins
    }
    merged = {name: values for name, values in merged.items() if values}
    return dataclasses.replace(spec, analyses=dataclasses.replace(spec.analyses, params=merged))


def point_name(values: dict[str, Any]) -> str:
    """`optimizer=SGD,lr=0.001` (a model parameter by its own name: `depth=56`): readable, and a
    safe directory name."""
    return ",".join(
        f"{k.removeprefix(MODEL_PREFIX)}={_safe(format_value(v))}" for k, v in values.items()
    )


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        return "+".join(v) or "none"
    return str(v)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set epochs=3` pairs; the value is read as TOML (so 3 is an int), else as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError("--set", f"expected KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key] = value
    return out


# --- the state of each point on disk --------------------------------------------------------------


def point_dir(sweep_dir: str | Path, name: object) -> Path:
    """The run directory of the point called `name` (as read from sweep.json): one folder name
    inside `sweep_dir`, not a link. A name like `/some/other/dir` or `../x` is a one-line error
    naming sweep.json."""
    return child_dir(sweep_dir, name, f"{Path(sweep_dir) / SWEEP_FILE}: point")


def preflight_points(spec: SweepSpec, sweep_dir: Path) -> None:
    """What training would reject, for every point, before anything trains (and in --dry-run).

    Each point's config is built (ranges of every value), then checked as `probe train`
    checks it: `--full-maps` layer names against that point's model, the run
    directory's name and path length against the filesystem. Imports torch.
    """
    from probe.training.trainplan import preflight

    for point in spec.points():
        where = (
            f"{spec.path}: point {point.name if len(point.name) <= 60 else point.name[:60] + '...'}"
        )
        try:
            preflight(point.config, sweep_dir / point.name, option=where)
        except UsageError as exc:
            if exc.option == where:
                raise
            raise UsageError(where, str(exc)) from None


def write_status(sweep_dir: Path, runs: dict[str, dict[str, Any]]) -> None:
    atomic.write_json(sweep_dir / STATUS_FILE, {"format": FORMAT, "runs": runs})


def run_complete(run_dir: Path, cfg: TrainConfig) -> bool:
    """Training of this run has reached its last epoch (checked from files, without torch)."""
    try:
        return cfg.epochs in Run(run_dir).epochs()
    except ProbeError:
        return False


def check_existing(run_dir: Path, point: Point) -> None:
    """A run already in the point's directory must be that point (up to more epochs)."""
    if not (run_dir / CONFIG).is_file():
        return
    stored = Run(run_dir).config.get("train", {})
    wanted = point.config.to_dict()
    for key, value in wanted.items():
        if key in RESUMABLE_CHANGES or key not in stored:
            continue
        if stored[key] != value and not (isinstance(value, list) and stored[key] == list(value)):
            raise UsageError(
                str(run_dir),
                f"holds a run with {key}={stored[key]!r}, but the sweep asks for {value!r}; "
                "remove that directory, or sweep into another --out",
            )


def plan(
    spec: SweepSpec, sweep_dir: Path
) -> tuple[list[Point], list[Point], dict[str, dict[str, Any]]]:
    """Split the points into finished ones and ones to run (new, interrupted, failed, or
    trained but without the analyses the file now asks for)."""
    status = read_status(sweep_dir)
    wanted = spec.analyses.to_dict()
    done, todo = [], []
    for point in spec.points():
        # a link there would make training write elsewhere
        run_dir = point_dir(sweep_dir, point.name)
        check_existing(run_dir, point)
        entry = status.get(point.name, {})
        finished = (
            entry.get("state") == "done"
            and run_complete(run_dir, point.config)
            and (not spec.analyses.plugins or entry.get("analyze") == wanted)
        )
        (done if finished else todo).append(point)
    return done, todo, status


# --- what runs on a worker ------------------------------------------------------------------------


def run_point(run_dir: str, config: dict[str, Any], analyses: dict[str, Any]) -> dict[str, Any]:
    """Train one grid point (resuming what is there), then run its analyses.

    A top-level function of plain arguments, so it pickles to any worker.
    """
    from probe.training.loop import train

    path = Path(run_dir)
    cfg = from_dict(config, str(path))
    train(path, cfg, resume=(path / CONFIG).is_file(), quiet=True)
    if analyses.get("plugins"):
        outcomes = run_analyses(
            path,
            list(analyses["plugins"]),
            analyses["epochs"],
            analyses["params"],
            device=cfg.device,
        )
        failed = [o for o in outcomes if o.status == "failed"]
        if (
            failed
        ):  # the trained run stays; a rerun retries only the failed analyses (the rest are cached)
            raise ProbeError(
                f"analysis {failed[0].label} failed: {failed[0].error}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
            )
    return final_metrics(path)


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last epoch's validation accuracy and loss, for the progress line."""
    rows = Run(run_dir).metrics()
    last = rows[-1] if rows else {}
    return {
        "epoch": last.get("epoch"),
        "val_acc": last.get("val_acc"),
        "train_loss": last.get("train_loss"),
    }


def warm_data(points: list[Point]) -> None:
    """Decode (or download) each dataset once here, so N workers do not all do it at once."""
    from probe.datasets.tensors import load_dataset

    for name, source in sorted({(p.config.dataset, p.config.data or "") for p in points}):
        load_dataset(name, source or None, quiet=False)


# --- the command ----------------------------------------------------------------------------------


def run_sweep(
    spec: SweepSpec, sweep_dir: Path, executor: Any, *, echo: Any = click.echo, warm: bool = True
) -> int:
    """Run the sweep's unfinished points on `executor`; returns the number that failed."""
    sweep_dir = sweep_dir.resolve()  # workers elsewhere need absolute paths
    done, todo, status = plan(spec, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(
        sweep_dir / SWEEP_FILE,
        {
            "format": FORMAT,
            **spec.to_dict(),
            "swept": list(spec.grid),
            "points": [
                {"name": p.name, "values": _plain(p.values), "config_hash": p.config.hash()}
                for p in spec.points()
            ],
        },
    )
    total = len(done) + len(todo)
    echo(
        f"sweep {spec.name}: {total} run{'s' if total != 1 else ''} in {sweep_dir}"
        + (f", {len(done)} already finished" if done else "")
    )
    if not todo:
        return 0
    if warm:
        warm_data(todo)
    echo(f"running {len(todo)} on {executor.describe()}")
    tasks = [
        Task(
            p.name,
            run_point,
            (str(sweep_dir / p.name), p.config.to_dict(), spec.analyses.to_dict()),
        )
        for p in todo
    ]
    failed: dict[str, str] = {}
    width = len(str(len(todo)))
    for i, outcome in enumerate(executor.run(tasks), 1):
        entry: dict[str, Any] = {
            "state": "done" if outcome.ok else "failed",
            "seconds": round(outcome.seconds, 1),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if outcome.ok:
            entry["analyze"] = spec.analyses.to_dict()
            acc = (outcome.value or {}).get("val_acc")
            detail = (
                f"val_acc {acc:.4f}"
                if isinstance(acc, float) and math.isfinite(acc)
                else "val_acc n/a"
            )
            echo(
                f"[{i:>{width}}/{len(todo)}] done    {outcome.key}  {detail}  "
                f"{_duration(outcome.seconds)}"
            )
        else:
            entry.update(error=outcome.error, traceback=outcome.traceback)
            failed[outcome.key] = outcome.error or "unknown error"
            echo(f"[{i:>{width}}/{len(todo)}] FAILED  {outcome.key}  {outcome.error}")
        status[outcome.key] = entry
        write_status(sweep_dir, status)
    ok = len(todo) - len(failed)
    echo(
        f"{total} runs: {len(done) + ok} finished"
        + (f" ({len(done)} skipped, already finished)" if done else "")
        + (f", {len(failed)} failed" if failed else "")
    )
    for key, err in failed.items():
        echo(f"  failed: {key}: {err}")
    if failed:
        echo(
            f"tracebacks are in {sweep_dir / STATUS_FILE}; rerun the same command to retry the "
            "failed runs"
        )
    return len(failed)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


@click.command(
    "sweep", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Sweep directory; one run directory per grid point.",
)
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a [base] key for the whole sweep (repeatable), e.g. --set epochs=3.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="Dataset directory for every run (else the file's data key, else $PROBE_DATA).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Local worker processes; the cores are divided between them [default: half the cores, at "
    "most 4; 0 = in this process].",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run on this Dask scheduler (tcp://host:8786); run directories must be on a filesystem "
    "the workers share.",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(min=1),
    help="Start a local Dask cluster with this many worker processes.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Analysis parameter over the file's [analyze.params] (repeatable); ANALYSIS.KEY=VALUE "
    "targets one analysis.",
)
@click.option(
    "--no-analyze", is_flag=True, help="Train only; a later run without it adds the analyses."
)
@click.option("--dry-run", is_flag=True, help="Check the file and list the runs; train nothing.")
def sweep_command(
    spec_file: str,
    out: str,
    set_: tuple[str, ...],
    data: str | None,
    workers: int | None,
    scheduler: str | None,
    dask_workers: int | None,
    params: tuple[str, ...],
    no_analyze: bool,
    dry_run: bool,
) -> None:
    """Train every point of a grid (a TOML file), then run its analyses.

    \b
    probe sweep examples/studies/optimizer.toml --out sweeps/opt
    probe sweep examples/studies/regularization.toml --out sweeps/reg --scheduler tcp://host:8786
    probe compare sweeps/opt

    Rerunning the same command skips finished runs and resumes the others. A run
    that fails is recorded in OUT/status.json; the rest go on, and the command
    exits with status 1.
    """
    overrides = parse_set(set_)
    if data is not None:
        if not Path(data).is_dir():
            raise UsageError("--data", f"{data} is not a directory")
        overrides["data"] = str(Path(data).resolve())
    spec = load_spec(spec_file, overrides)
    if params:
        spec = with_params(spec, params)
    if no_analyze:
        spec = dataclasses.replace(spec, analyses=Analyses())
    sweep_dir = Path(out)
    preflight_points(spec, sweep_dir.resolve())
    done, todo, _ = plan(spec, sweep_dir.resolve())
    check_plugins(spec)
    if dry_run:
        finished = {p.name for p in done}
        for p in spec.points():
            state = (
                "finished"
                if p.name in finished
                else "resume"
                if (sweep_dir / p.name).exists()
                else "new"
            )
            click.echo(f"{state:<9} {sweep_dir / p.name}")
        click.echo(
            f"{len(done) + len(todo)} runs, {len(todo)} to run; analyses: "
            f"{', '.join(spec.analyses.plugins) or 'none'}"
        )
        return

    start = time.perf_counter()
    with make_executor(workers, scheduler, dask_workers) as executor:
        failed = run_sweep(spec, sweep_dir, executor, warm=scheduler is None)
    click.echo(f"took {_duration(time.perf_counter() - start)}; next: probe compare {sweep_dir}")
    if failed:
        click.get_current_context().exit(1)
