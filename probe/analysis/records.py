"""What a job leaves beside its result folder, and how the cache reads it back.

- A finished result is valid (`is_hit`) while its manifest's key over the job's identity and
  its inputs' fingerprints still matches (`probe.rundir.results.is_cached`).
- A skip record `<epoch_NNNN|run>.skipped.json` (`record_skip`) holds the reason and the key
  over the inputs read before the analysis said it does not apply; while it holds
  (`cached_skip`) the job is answered from it without running.
- A failure record `<epoch_NNNN|run>.failed.json` (`record_failure`) holds the error and its
  traceback for `probe report`.

Records are best effort: every value is cleaned to plain JSON first, and if the disk refuses
one, the folders made for it are removed again (`remove_empty_folders`), never left empty.
Reading the cache imports no torch and runs no plugin code (`cached_outcome`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import os
from pathlib import Path
from typing import Any

from probe.analysis.job import Job
from probe.analysis.outcome import Outcome, one_line
from probe.contract.modulespec import TRUST
from probe.errors import ProbeError
from probe.io import atomic, safeio
from probe.io.paths import confined
from probe.rundir import results
from probe.rundir import run as rundir
from probe.rundir.results import RESULT_FORMAT, Fingerprints, is_cached, read_manifest
from probe.rundir.run import Run

__all__ = [
    "FINGERPRINTS",
    "cached_outcome",
    "cached_skip",
    "fingerprints",
    "is_hit",
    "record_failure",
    "record_skip",
    "remove_empty_folders",
]

# The fingerprints of the command's run (one per `run_analyses`, so each file is hashed once);
# a context variable, so a job (in this process or a forked child) finds it without plumbing.
FINGERPRINTS: contextvars.ContextVar[Fingerprints | None] = contextvars.ContextVar(
    "probe_fingerprints", default=None
)


def fingerprints(run: Run) -> Fingerprints:
    """The command's fingerprints of `run`, or (outside a command) fresh ones kept in memory."""
    fps = FINGERPRINTS.get()
    return (
        fps if fps is not None and fps.run.path == run.path else Fingerprints(run, persistent=False)
    )


def source_of(job: Job, fps: Fingerprints) -> str | None:
    """The analysis's source digest in development mode (part of the key), else None."""
    return fps.source(job.analysis) if results.dev_mode() else None


def is_hit(job: Job, fps: Fingerprints, source: str | None) -> bool:
    """Whether the finished result at `job.target` is still valid (see results.is_cached)."""
    existing = read_manifest(job.target)
    if existing is None or not results.result_intact(job.target, existing, fps):
        return False  # absent, or its manifest or files changed since it was sealed
    if source is None:  # outside development mode a development-mode result is valid too
        recorded = existing.get("source")
        source = recorded if isinstance(recorded, str) else None
    return is_cached(existing, job.identity(source), fps)


def cached_skip(job: Job, fps: Fingerprints, source: str | None) -> Outcome | None:
    """The skipped outcome if the job's skip record still holds (same identity, same inputs)."""
    path = job.skipped_record
    if not os.path.lexists(path):
        return None
    try:
        record = safeio.read_json(path, max_bytes=safeio.MAX_CONFIG_BYTES, within=job.run.path)
    except ProbeError:
        return None
    if (
        not isinstance(record, dict)
        or record.get("status") != "skipped"
        or not isinstance(record.get("reason"), str)
    ):
        return None
    if not is_cached(record, job.identity(source), fps):
        return None
    if record.get("needs_code") is True and TRUST.get() is not None:
        return None  # skipped for want of --trust-code, which this command gives: run it
    return Outcome(job.name, job.epoch, "skipped", 0.0, None, reason=one_line(record["reason"]))


def cached_outcome(job: Job) -> Outcome | None:
    """The job's outcome if its result is cached, else None; imports no torch, runs no plugin code.

    `run_analyses` asks this first, so a command whose jobs are all cached does no
    more than read manifests and fingerprint the inputs they list.
    """
    try:
        fps = fingerprints(job.run)
        source = source_of(job, fps)
        if is_hit(job, fps, source):
            return Outcome(job.name, job.epoch, "cached", 0.0, job.target)
        return cached_skip(job, fps, source)
    except Exception:  # anything odd: let the job itself run (and report it)
        pass
    return None


def record_failure(job: Job, outcome: Outcome) -> None:
    """Leave `<epoch_NNNN|run>.failed.json` beside where the result would be.

    Every value is cleaned to plain JSON first (NaN parameters, odd keys, bytes in
    an error), so the record can always be written; if the disk refuses it, the
    folders made for the result are removed again, never left empty.
    """
    target = job.target
    try:
        # checked again: a plugin may have put a link there
        confined(job.run.path, target.relative_to(job.run.path))
        record = _record(
            job,
            status=outcome.status,
            error=outcome.error,
            traceback=outcome.traceback,
        )
        atomic.write_json(job.failed_record, record)
    except Exception:  # best effort: the outcome is reported on the terminal anyway
        remove_empty_folders(job.run, target.parent)


def record_skip(
    job: Job, outcome: Outcome, key: str, inputs: dict[str, str], needs_code: bool = False
) -> None:
    """Leave `<epoch_NNNN|run>.skipped.json`: the reason, the key over the inputs read before it.

    `needs_code`: skipped because rebuilding the model needs `--trust-code`; a command that
    gives it does not take the record as an answer.

    Best effort, like a failure record: without it the job is only asked again next time.
    """
    target = job.target
    try:
        confined(job.run.path, target.relative_to(job.run.path))
        record = _record(
            job,
            status="skipped",
            reason=outcome.reason,
            inputs=inputs,
            key=key,
            first={"format": RESULT_FORMAT},
            **({"needs_code": True} if needs_code else {}),
        )
        atomic.write_json(job.skipped_record, record)
        job.failed_record.unlink(missing_ok=True)
    except Exception:
        remove_empty_folders(job.run, target.parent)


def _record(job: Job, *, first: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A record of `job` with `fields`, cleaned to plain JSON (non-finite numbers as strings)."""
    record = {
        **(first or {}),
        "analysis": job.name,
        "epoch": job.epoch,
        "variant": job.variant,
        "params": job.pdict,
        **fields,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return results.jsonable(record, nonfinite="str")


def remove_empty_folders(run: Run, folder: Path) -> None:
    """Remove `folder` and its parents up to RUN/analyses while they are empty."""
    root = run.path / rundir.ANALYSES
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop
            return
        folder = folder.parent
