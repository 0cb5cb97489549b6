"""The two checks every numerics function makes: arguments named in one line, and a finite loss.

A bad argument raises `probe.UsageError` naming the parameter (`top_k: must be >= 1, got 0`),
the message the CLI prints for the same `--param`; a NaN/inf loss at the point analysed raises
`probe.ProbeError`, because every curvature, landscape or sharpness number computed from it would
be meaningless. Neither imports anything heavy.
"""

from __future__ import annotations

import math

from probe.errors import ProbeError, UsageError

__all__ = ["check", "check_finite"]


def check(ok: bool, param: str, message: str) -> None:
    """Raise the one-line `UsageError` naming `param` unless `ok`."""
    if not ok:
        raise UsageError(param, message)


def check_finite(loss: float, what: str = "loss") -> float:
    """`loss` itself if finite; else the `ProbeError` that says why nothing can be analysed."""
    if not math.isfinite(loss):
        raise ProbeError(
            f"the {what} is {loss} at this checkpoint; nothing to analyse "
            "(the weights or the data contain NaN/inf, or training diverged)"
        )
    return loss
