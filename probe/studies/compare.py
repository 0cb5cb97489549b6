"""`probe compare`: one table and a few plots across runs or whole sweeps.

The command reads the runs (probe.studies.rows), prints the table (probe.studies.table: the
swept values, accuracies, gap, the headline scalars the installed analyses declare, such as
the top Hessian eigenvalue and sharpness, stability and wall time) and writes table.csv and
the plots (probe.studies.plots) into --out.

Every file of a run or sweep is untrusted: it is read through probe.rundir.readers (bounded,
link-free, confined to its run or sweep folder), as the report reads it; what does not fit is
skipped with a one-line warning (docs/report.md, "Escaping and untrusted files").
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from probe.errors import ProbeError, UsageError
from probe.io import atomic
from probe.io.paths import is_link, lstat_or_none
from probe.rundir.readers import SWEEP_FILE, clean
from probe.studies.plots import close_all, drawers, literal_text
from probe.studies.rows import collect, installed_analyses
from probe.studies.table import (
    headline_columns,
    render,
    scalar_columns,
    stability_summary,
    table,
    to_csv,
)


def compare(
    paths: Sequence[str],
    out: Path | None,
    metric: str,
    plots: bool,
    echo: Callable[[str], None] = click.echo,
) -> list[Path]:
    """Print the table; write table.csv and the plots into `out`; return the files written."""
    analyses = installed_analyses()
    rows, keys = collect(paths, versions={name: a.version for name, a in analyses.items()})
    known = {k for r in rows for m in r.metrics for k in m}
    if known and metric not in known:
        raise UsageError(
            "--metric",
            f"{metric!r} is not a per-epoch metric of these runs "
            f"(have: {', '.join(sorted(known))})",
        )
    columns, records = table(rows, keys)
    show_run = not all(lstat_or_none(Path(p) / SWEEP_FILE) is not None for p in paths)
    echo(render(columns, records, keys, show_run=show_run, analyses=analyses))
    try:
        summary = stability_summary(records, keys)
    except (TypeError, ValueError, KeyError):  # values of mixed types in a crafted config
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
        headline = headline_columns(scalar_columns(columns, keys), analyses)
        for name, draw in drawers(rows, keys, records, headline, metric):
            try:
                with literal_text():  # labels come from run folders: `$...$` is text, not TeX
                    if _write(out, name, draw):
                        written.append(out / name)
            except (
                TypeError,
                ValueError,
                KeyError,
            ) as exc:  # what a crafted config makes unplottable
                close_all()
                why = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                click.echo(f"warning: {name} not drawn ({clean(why, 160)})", err=True)
    return written


def _write(out: Path, name: str, writer: Callable[[Path], Any]) -> Any:
    """Run one writer of `out/name`; a directory that cannot be made or written is one line
    (ProbeError)."""
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
