"""Rendering and writing a page: the Jinja2 environment, and the swap of a new report/ folder.

The pages are rendered by Jinja2 with autoescaping on for every template (templates/): the
views (probe.report.views) hold plain values only, the templates hold all markup, so every
value is escaped for the context it lands in (docs/report.md, "Escaping"). jinja2 is
imported on first use, so `probe --help` never loads it.

A report directory is built beside the old one and swapped in whole (`atomic.atomic_dir`), so
a reader never sees half a page; a `report/` that probe did not make is never replaced.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

from probe.errors import ProbeError, RunFileError
from probe.io import atomic
from probe.io.paths import lstat_or_none
from probe.report.digest import INDEX, STAMP, STAMP_FORMAT, TEMPLATES
from probe.rundir.readers import clean
from probe.version import __version__


@lru_cache(maxsize=1)
def environment() -> Any:
    """The template environment: autoescaping on for every template, undefined names are
    errors."""
    import jinja2  # heavy: loaded only when a page is rendered

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "allow_nan": False}
    return env


def render(
    template: str, title: str, nav: list[tuple[str, str]], regen: str, view: dict[str, Any]
) -> str:
    """One whole page: `view` holds plain values only; the template escapes each where it
    lands."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        environment()
        .get_template(template)
        .render(title=title, nav=nav, regen=regen, version=__version__, now=now, p=view)
    )


def check_report_dir(report_dir: Path) -> None:
    """Refuse to replace a `report/` probe did not make: a symlink, a file, or a folder holding
    other files."""
    st = lstat_or_none(report_dir)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise RunFileError(
            report_dir, "is a symlink; probe writes no report through a link (remove it)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise RunFileError(report_dir, "is not a directory (move it away to write the report)")
    try:
        other = sorted(n for n in os.listdir(report_dir) if n not in (INDEX, STAMP))
    except OSError as exc:
        raise RunFileError(report_dir, f"cannot list ({exc.strerror or exc})") from None
    if other:
        names = ", ".join(clean(n, 60) for n in other[:5]) + (
            f" and {len(other) - 5} more" if len(other) > 5 else ""
        )
        raise RunFileError(
            report_dir,
            f"holds files probe did not write ({names}); move them away to rebuild the report",
        )


def write_report(report_dir: Path, page: str, digest: str, inputs: dict[str, Any]) -> None:
    """Swap in a new report directory holding the page and the digest it was built from."""
    check_report_dir(report_dir)
    try:
        with atomic.atomic_dir(report_dir) as tmp:
            atomic.write_text(tmp / INDEX, page)
            atomic.write_json(tmp / STAMP, {"format": STAMP_FORMAT, "digest": digest, **inputs})
    except OSError as exc:
        raise ProbeError(f"{report_dir}: cannot write the report ({exc.strerror or exc})") from None
    except ProbeError as exc:  # atomic's one-liner names the temporary file: name the report
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise ProbeError(f"{report_dir}: cannot write the report ({reason})") from None
