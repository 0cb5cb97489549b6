"""Progress lines with the time left, on stderr, only on an interactive terminal.

tqdm (a well-kept progress bar library) draws them: per job in `probe analyze`, and within a
job wherever an analysis iterates through `Context.progress` (Hessian epochs, grid rows, the
pieces sent to an executor). Off with `--quiet` or when stderr is not a terminal, so nothing is
ever mixed into result files or into the stdout lines scripts and tests parse. A job running in
a child process (`--timeout`) draws its own lines on the same stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["enabled", "progress"]


def enabled(quiet: bool) -> bool:
    """Progress is drawn unless quiet, and only on an interactive stderr."""
    return not quiet and sys.stderr.isatty()


def progress(
    items: Iterable[Any],
    label: str,
    *,
    quiet: bool,
    total: int | None = None,
    describe: Callable[[Any], str] | None = None,
) -> Iterator[Any]:
    """`items`, with a tqdm line (count, rate, time left) on stderr when `enabled`."""
    if not enabled(quiet):
        yield from items
        return
    from tqdm import tqdm  # only on a terminal

    with tqdm(items, desc=label, total=total, file=sys.stderr, leave=False, unit="") as bar:
        for item in bar:
            if describe is not None:
                bar.set_postfix_str(describe(item), refresh=False)
            yield item
