"""What happened to one analysis job (`Outcome`), and how `probe analyze` prints it.

Every job ends in one status: ok (computed now), cached (a valid result was found), skipped
(the analysis does not apply, `probe.Skip`), failed or timeout. `Outcome.line()` is the one
line the command prints per job, `summary_line` its last line; both are part of the CLI's
promised output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATUSES", "Outcome", "one_line", "summary_line"]

STATUSES = ("ok", "cached", "skipped", "failed", "timeout")


@dataclass
class Outcome:
    """What happened to one job."""

    analysis: str
    epoch: int | None
    status: str  # ok | cached | skipped | failed | timeout
    seconds: float = 0.0
    path: Path | None = None
    error: str = ""
    traceback: str = ""
    warning: str = ""  # e.g. new files outside the result folder while the job ran (see run_job)
    reason: str = ""  # why a skipped job does not apply (one line, from probe.Skip)

    @property
    def label(self) -> str:
        return f"{self.analysis} " + (f"epoch {self.epoch}" if self.epoch is not None else "(run)")

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout")

    def line(self) -> str:
        """How `probe analyze` prints this outcome (one line)."""
        if self.status == "skipped":
            return f"skipped: {self.label}: {self.reason}"
        if self.failed:
            return f"{self.status.upper()} {self.label}: {self.error}"
        return f"{self.status:>6} {self.label} ({self.seconds:.1f}s) -> {self.path}"


def summary_line(outcomes: list[Outcome]) -> str:
    """`N computed, N cached, N failed` (skipped, timed out when any): the command's last line."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    timed_out = f", {counts['timeout']} timed out" if counts["timeout"] else ""
    return (
        f"{counts['ok']} computed, {counts['cached']} cached{skipped}, "
        f"{counts['failed']} failed{timed_out}"
    )


def one_line(text: str) -> str:
    """The first non-blank line of `text`, at most 500 characters (a skip reason as printed)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "does not apply")[:500]
