"""The `probe report` command: a static HTML page for a run or a sweep (probe.report.pages)."""

from __future__ import annotations

import click

from probe.report.pages import report


@click.command(
    "report", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
# checked by `report`, so every bad path is a one-line error
@click.argument("path", type=click.Path())
@click.option(
    "--force", is_flag=True, help="Rewrite the pages even when their inputs are unchanged."
)
def report_command(path: str, force: bool) -> None:
    """Write a static HTML page for a run or a sweep, and print its path.

    \b
    probe report runs/base      # runs/base/report/index.html
    probe report sweeps/opt     # the sweep's comparison page, and each run's page

    The page opens straight from disk, offline. It is rebuilt only when the run's
    config, metrics or analysis results changed. Files of the run that cannot be
    used (damaged, of the wrong shape, or pointing outside the run) are skipped
    with a warning on stderr and listed on the page.
    """
    result = report(path, force=force)
    if result.written:
        click.echo(f"wrote {result.path}")
    else:
        click.echo(f"up to date (inputs unchanged, nothing rewritten): {result.path}")
