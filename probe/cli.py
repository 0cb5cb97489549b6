"""The `probe` command line: parse, then delegate. No torch import at start-up.

Each command lives with the code it drives (train.py, analyze.py, sweep.py, ...);
this module only turns options into calls and `ProbeError`s into one-line errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from probe.analysis import runner
from probe.analysis.executor import make_executor
from probe.analysis.progress import enabled as progress_enabled
from probe.analysis.runner import describe, run_analyses, summary_line
from probe.contract.analysis import split_params
from probe.contract.registry import add_plugin_commands, installed, registry
from probe.errors import ProbeError, UsageError
from probe.io.text import clean
from probe.rundir.prepare import check_path
from probe.rundir.results import dumps
from probe.rundir.run import CONFIG, Run
from probe.training.config import (
    FIELDS,
    TrainConfig,
    field_type,
    flag,
    from_dict,
    load_toml,
    make_config,
)

# Errors are one line; one naming many files (e.g. a list of missing keys) is cut here.
MESSAGE_LIMIT = 2000
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Commands that live with the code they drive, imported only when used or listed.
LAZY_COMMANDS = {
    "sweep": "probe.studies.sweep:sweep_command",
    "compare": "probe.studies.compare:compare_command",
    "report": "probe.report.command:report_command",
    "import": "probe.training.importer:import_command",
    "barrier": "probe.studies.barrier:barrier_command",
}


class ProbeGroup(click.Group):
    """Loads the commands in LAZY_COMMANDS on demand, and turns ProbeError into
    `error: ...` on one line with its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attr = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's own usage errors, like ours, are one line: `error: ...` and exit code 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "probe"
            click.echo(
                f"error: {clean(exc.format_message(), MESSAGE_LIMIT)} (see `{where} --help`)",
                err=True,
            )
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {clean(exc.format_message(), MESSAGE_LIMIT)}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProbeError as exc:
            click.echo(f"error: {clean(exc, MESSAGE_LIMIT)}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=ProbeGroup, context_settings=CONTEXT)
@click.version_option(package_name="probe-cnn", prog_name="probe")
def cli() -> None:
    """Train a CNN on CIFAR-10, keep everything it produced, and analyse it offline.

    \b
    probe train --run-dir runs/base --data ../shared/data/cifar10
    probe analyze runs/base --plugin filters --epochs 0,5,last
    probe plugins --verbose
    """


def config_options(fn: Callable) -> Callable:
    """One option per TrainConfig field, named like it (--batch-size, --augment/--no-augment...)."""
    for f in reversed(dataclasses.fields(TrainConfig)):
        typ, meta = field_type(f), f.metadata
        default = f.default if f.default is not None else None
        shown = (
            f" [default: {', '.join(default) if isinstance(default, tuple) else default}]"
            if default not in (None, ())
            else ""
        )
        help_text = meta["help"] + shown
        name = flag(f.name)
        if typ is bool:
            decl = [f"{name}/--no-{name[2:]}"]
            opt = click.option(*decl, f.name, default=None, help=help_text)
        elif "choices" in meta:
            choice_type = click.Choice([str(c) for c in meta["choices"]], case_sensitive=True)
            opt = click.option(name, f.name, type=choice_type, default=None, help=help_text)
        elif typ is tuple and meta.get("pairs"):
            opt = click.option(
                name.removesuffix("s"), f.name, multiple=True, help=help_text, metavar="KEY=VALUE"
            )
        elif typ is tuple:
            opt = click.option(name, f.name, default=None, help=help_text, metavar="LAYERS")
        else:
            opt = click.option(name, f.name, type=typ, default=None, help=help_text)
        fn = opt(fn)
    return fn


def _overrides(kw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in kw.items():
        if value is None or value == ():
            continue
        f = FIELDS[name]
        if field_type(f) is int and "choices" in f.metadata:  # click gives the choice as a str
            value = int(value)
        elif f.metadata.get("pairs"):
            value = tuple(value)
        elif field_type(f) is tuple:
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        out[name] = value
    return out


# What `--resume` may change: more epochs extend the run; the device does not change what is
# trained.
RESUMABLE = ("epochs", "device")


def _same_value(key: str, stored: Any, given: Any) -> bool:
    """Whether a value given on resume equals the stored one (a list is a tuple; a data path may be
    spelt otherwise)."""
    if isinstance(given, tuple):
        given = list(given)
    if (
        stored == given
        and type(stored) is type(given)
        or (isinstance(stored, float) and stored == given)
    ):
        return True
    if key == "data" and isinstance(stored, str) and isinstance(given, str):
        try:
            return Path(stored).expanduser().resolve() == Path(given).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
    return False


def _resumed_config(
    run_dir: Path, file_values: dict[str, Any], overrides: dict[str, Any], config_file: str | None
) -> TrainConfig:
    """The stored config with --epochs/--device applied; any other option must equal what is stored.

    So the same command line with --resume added continues the run; a real change is
    refused, naming each differing key with its stored and given values.
    """
    if not os.path.lexists(run_dir / CONFIG):
        raise UsageError("--resume", f"{run_dir} holds no run to resume (no {CONFIG})")
    stored = Run(run_dir).config["train"]  # a link, FIFO or damaged config: one line naming it
    given = {**file_values, **overrides}
    differ = []
    for key, value in given.items():
        if key in RESUMABLE:
            continue
        if key not in stored and value == FIELDS[key].default:
            continue  # a key newer than the run, at its default: what the run was trained with
        if key not in stored or not _same_value(key, stored[key], value):
            source = flag(key) if key in overrides else f"{key} in {config_file}"
            was = repr(stored[key]) if key in stored else "absent"
            shown = list(value) if isinstance(value, tuple) else value
            differ.append(f"{source} (stored {was}, given {shown!r})")
    if differ:
        raise UsageError(
            "--resume",
            f"continues the stored config of {run_dir / CONFIG}; only --epochs and --device "
            f"may change, but {'; '.join(differ)}",
        )
    resumed = {k: v for k, v in given.items() if k in RESUMABLE}
    return from_dict({**stored, **resumed}, str(run_dir / CONFIG))


def parse_threads(text: str) -> int | None:
    """--threads: a whole number from 1 to 1024, or auto (None)."""
    if text.strip().lower() == "auto":
        return None
    if not re.fullmatch(r"[0-9]{1,4}", text.strip()) or not 1 <= int(text) <= 1024:
        raise UsageError(
            "--threads", f"expected a whole number from 1 to 1024 or auto, got {text!r}"
        )
    return int(text)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--run-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where the run directory is written.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of config keys; flags override it.",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --run-dir from its last complete epoch."
)
@click.option("--force", is_flag=True, help="Replace an existing run in --run-dir.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option(
    "--threads",
    default="auto",
    show_default=True,
    metavar="N|auto",
    help="CPU threads for training. auto: torch's default less the cores other jobs keep busy "
    "(the 1-minute load average), at least 1: on a shared 2-core machine with one core busy, "
    "2 threads made an epoch 1.2-1.45x slower than 1 (docs/studies.md).",
)
@config_options
def train(
    run_dir: str,
    config_file: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    threads: str,
    **kw: Any,
) -> None:
    """Train a CNN and write a self-contained run directory.

    Defaults are the course notebook's CONFIG. Every option is also a key of the
    --config TOML file (underscores or dashes). With --resume, the stored config is
    used: the same command line with --resume added continues the run, and only
    --epochs and --device may differ from what is stored.
    """
    if resume and force:
        raise UsageError("--resume", "--resume and --force contradict each other; pick one")
    overrides = _overrides(kw)
    file_values = load_toml(config_file) if config_file else {}
    try:  # every value checked, also the ones --resume compares
        cfg = make_config(file_values, overrides)
    except TypeError as exc:
        raise UsageError("--config", str(exc)) from None
    n_threads = parse_threads(threads)
    # here: `probe --help` imports no torch
    from probe.training.loop import set_threads
    from probe.training.loop import train as run_training

    set_threads(n_threads)  # the training's first line says how many

    check_path(Path(run_dir))  # a name too long for the filesystem, before anything looks at it
    if resume:
        cfg = _resumed_config(Path(run_dir), file_values, overrides, config_file)

    path = run_training(run_dir, cfg, resume=resume, force=force, quiet=quiet)
    if not quiet:
        click.echo(f"run directory: {path}")


def _dry_run(run_dir, names, epochs, routed, force: bool, reg, device: str) -> None:
    """The plan, each job cached or to compute, and the estimate of those to compute."""
    estimate: list[str] = []
    planned = runner.dry_run(
        run_dir,
        names,
        epochs,
        routed,
        force=force,
        registry=reg,
        on_estimate=estimate.extend,
        device=device,
    )
    for label, status in planned:
        click.echo(f"{status:>16}  {label}")
    todo = sum(status == "to compute" for _, status in planned)
    click.echo(f"{len(planned)} jobs: {len(planned) - todo} cached, {todo} to compute")
    for line in estimate:
        click.echo(f"estimate: {line}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--plugin",
    "-p",
    "plugins",
    multiple=True,
    help="Analysis to run (repeatable). See `probe plugins`.",
)
@click.option("--all", "run_all", is_flag=True, help="Run every installed analysis.")
@click.option(
    "--epochs",
    "-e",
    default=None,
    help="all, last, first, 0,5,last, 2-6 or ::5 [default: all for run-wide analyses, last "
    "otherwise].",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Analysis parameter (repeatable); ANALYSIS.KEY=VALUE targets one analysis.",
)
@click.option("--force", is_flag=True, help="Recompute even when a cached result matches.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--quiet", "-q", is_flag=True, help="Only print failures and the summary.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Run each job in a child process and kill it after SECONDS (status: timeout).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Send the independent pieces of a job (landscape grid rows, per-epoch Hessian pieces) to "
    "N local worker processes.",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(min=1),
    default=None,
    help="...to a local Dask cluster of N workers.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="...to an existing Dask scheduler (tcp://host:8786).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the jobs this command would run, each cached or to compute, and estimate how long "
    "those to compute take (one unit of work timed on the model); compute and write nothing.",
)
def analyze(
    run_dir: str,
    plugins: tuple[str, ...],
    run_all: bool,
    epochs: str | None,
    params: tuple[str, ...],
    force: bool,
    device: str,
    quiet: bool,
    timeout: float | None,
    workers: int | None,
    dask_workers: int | None,
    scheduler: str | None,
    dry_run: bool,
) -> None:
    """Run analyses over a saved run, offline.

    Results go to RUN_DIR/analyses/<analysis>/; rerunning with the same inputs and
    parameters returns the cached result at once. Exits 1 if any analysis failed.
    """
    reg = registry()
    # Disabled analyses (name clashes, bad defaults) are warned about; the others still run.
    for line in reg.problems():
        click.echo(f"warning: {line}", err=True)
    Run(run_dir)  # a clear error for a directory that is not a run, before anything else
    if run_all:
        plugins = tuple(sorted(reg.analyses))
    if not plugins:
        raise UsageError(
            "--plugin",
            "name at least one analysis or use --all (installed: "
            f"{', '.join(sorted(reg.analyses)) or 'none'})",
        )
    analyses = [reg.get(p) for p in dict.fromkeys(plugins)]
    routed = split_params(list(params), analyses)
    if dry_run:
        _dry_run(run_dir, [a.name for a in analyses], epochs, routed, force, reg, device)
        return

    def announce(lines: list[str]) -> None:
        for line in lines:
            click.echo(f"estimate: {line}", err=True)

    def report(o) -> None:
        if o.failed or o.status == "skipped":
            click.echo(o.line(), err=True)
        elif not quiet:
            click.echo(o.line())

    executor = None
    if workers is not None or dask_workers is not None or scheduler is not None:
        # An unreachable scheduler: one line, nothing run.
        executor = make_executor(workers, scheduler, dask_workers)
    try:
        outcomes = run_analyses(
            run_dir,
            [a.name for a in analyses],
            epochs,
            routed,
            device=device,
            force=force,
            quiet=quiet,
            registry=reg,
            on_outcome=report,
            timeout=timeout,
            executor=executor,
            # on a terminal only: the estimate times one unit of work on the model first
            on_estimate=announce if progress_enabled(quiet) else None,
        )
    finally:
        if executor is not None:
            executor.close()
    click.echo(summary_line(outcomes))
    if any(o.status in ("failed", "timeout") for o in outcomes):
        logs = Path(run_dir) / "logs"
        if logs.is_dir() and any(logs.iterdir()):  # a read-only run has none to point to
            click.echo(f"tracebacks: {logs}", err=True)
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--verbose", "-v", is_flag=True, help="Show each analysis's parameters, scope and inputs."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(verbose: bool, as_json: bool) -> None:
    """List installed plugins, their status and versions, and their analyses."""
    reg = registry()
    # strict JSON: a non-finite default (allow_nonfinite) is written as "nan"/"inf", never bare NaN
    if as_json:
        click.echo(
            dumps(
                {
                    "plugins": [dataclasses.asdict(p) for p in reg.plugins.values()],
                    "analyses": [describe(a) for a in reg.analyses.values()],
                    "disabled": [
                        dataclasses.asdict(d) | {"message": reg.describe_disabled(d)}
                        for d in reg.disabled
                    ],
                    "notes": reg.notes,
                },
                "str",
                indent=2,
            )
        )
        return
    for info in reg.plugins.values():
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name} [{info.status}] {info.dist}{version}")
        if info.error:
            click.echo(f"    error: {info.error}")
        for name in info.analyses:
            a = reg.analyses[name]
            click.echo(f"    {a.name}: {a.summary}")
            if verbose:
                click.echo(
                    f"        scope: {a.scope}; needs: {', '.join(sorted(a.needs))}; "
                    f"version {a.version}"
                )
                for spec in a.param_specs():
                    click.echo(f"        --param {spec.describe()}")
        for name in info.models:
            click.echo(f"    model family {name}: {reg.models[name].summary}")
        for name in info.datasets:
            click.echo(f"    data set {name}: {reg.datasets[name].summary}")
        for cmd in info.commands:
            click.echo(f"    command: probe {cmd}")
    if not reg.plugins:
        click.echo("no plugins installed")
    problems = reg.problems()
    if problems:
        click.echo(
            f"\n{len(problems)} problem{'s' if len(problems) > 1 else ''} "
            "(the other analyses work):"
        )
    for line in problems:
        click.echo(f"  {line}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the installed model families and their parameters (`probe train --model NAME --model-param KEY=VALUE`).

    \b
    probe train --run-dir runs/r20 --model resnet --model-param depth=20
    probe train --run-dir runs/r56-noshort --model resnet --model-param depth=56 --model-param shortcut=none
    """  # noqa: E501 (click prints the docstring as `probe models --help`: its lines stay whole)
    fams = installed("models")
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": f.name,
                        "summary": f.summary,
                        "version": f.version,
                        "provider": f.provider,
                        "provider_version": f.provider_version,
                        "params": [
                            {
                                "name": s.name,
                                "type": s.type.__name__,
                                "default": s.default,
                                "help": s.help,
                                "choices": s.choices,
                                "min": s.min,
                                "max": s.max,
                            }
                            for s in f.param_specs()
                        ],
                    }
                    for f in fams.values()
                ],
                indent=2,
            )
        )
        return
    for name in sorted(fams):
        f = fams[name]
        click.echo(
            f"{name} ({f.provider} {f.provider_version}, family version {f.version}): {f.summary}"
        )
        for spec in f.param_specs():
            click.echo(f"    --model-param {spec.describe()}")
    if not fams:
        click.echo("no model families installed")


@cli.command(context_settings=CONTEXT)
def datasets() -> None:
    """List the installed image data sets (`probe train --dataset NAME [--data DIR]`)."""
    sources = installed("datasets")
    for name in sorted(sources):
        s = sources[name]
        click.echo(f"{name} ({s.provider} {s.provider_version}): {s.summary}")
    if not sources:
        click.echo("no data sets installed")


def main() -> None:
    add_plugin_commands(cli)
    cli(prog_name="probe")


if __name__ == "__main__":
    sys.exit(main())
