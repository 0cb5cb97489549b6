"""The guard around a job: nothing outside its result folder may change while it runs.

Before a job, the run directory's files outside analyses/, logs/ and report/ are listed
(`snapshot`); after it, `check_writes` compares. Changed or deleted run files (probe's own:
config, metrics, checkpoints, dumps, stored batches) fail the job, named in its error, and
its result is not kept; new files are named in a warning but never removed (who made them
cannot be told: the user may be writing notes into the run meanwhile). What a concurrent
`probe train` writes is not the job's and is allowed. `watch(job, work)` is the whole rule.
No path is followed through a symbolic link.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from probe.analysis.job import Job
from probe.analysis.outcome import Outcome
from probe.analysis.records import record_failure
from probe.errors import ProbeError
from probe.io import safeio
from probe.io.paths import is_link
from probe.rundir import run as rundir
from probe.rundir.lock import LOCK_FILE
from probe.rundir.run import Run

__all__ = ["Snapshot", "check_writes", "snapshot", "watch"]


def watch(job: Job, work: Callable[[], Outcome]) -> Outcome:
    """Run `work` (computing `job`) and hold it to the guard: see the module docstring."""
    before = snapshot(job.run.path)
    outcome = work()
    if outcome.status == "cached":  # no plugin code ran
        return outcome
    stray, changed = check_writes(job.run, before)
    if changed:
        error = f"changed run files: {', '.join(changed)}" + (
            f"; and {outcome.error}" if outcome.error else ""
        )
        if outcome.status == "ok" and outcome.path is not None and not is_link(outcome.path):
            # a job that changed the run: its result is not kept
            shutil.rmtree(outcome.path, ignore_errors=True)
        outcome = dataclasses.replace(
            outcome,
            status="failed" if outcome.status != "timeout" else "timeout",
            path=None,
            error=error,
        )
        record_failure(job, outcome)
    if stray:
        # Someone made new files outside the result folder while the job ran: the job, or the
        # user (NOTES.md), or another tool. Who cannot be told, so nothing is removed and the
        # result is kept; the files are named, so a plugin that litters is noticed.
        outcome = dataclasses.replace(
            outcome,
            warning=f"new files outside its result folder while it ran (left in "
            f"place): {_listing(stray)}",
        )
        print(f"warning: {outcome.label}: {outcome.warning}", file=sys.stderr, flush=True)
    return outcome


def _listing(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


# written by analyze itself, or by other commands meanwhile
_UNWATCHED = {rundir.ANALYSES, "logs", "report"}
_RUN_FILE = re.compile(
    r"^(checkpoints/epoch_\d{4,}\.safetensors|activations/epoch_\d{4,}\.h5|"
    r"metrics\.jsonl|config\.json|data/(probe_set|analysis_batch)\.safetensors)$"
)
_TRAINING_OUTPUT = re.compile(_RUN_FILE.pattern[:-1] + "|" + re.escape(LOCK_FILE) + "$")


@dataclass
class Snapshot:
    """The run directory outside analyses/, logs/ and report/, as one job found it."""

    files: dict[str, tuple[int, int, int]]  # run-relative path -> (size, mtime_ns, inode)
    dirs: set[str]
    metrics: bytes  # kept whole: a training that appends epochs meanwhile is not the job


def snapshot(run_dir: Path) -> Snapshot:
    """List every file and folder outside analyses/, logs/, report/ (temporary files skipped)."""
    snap = Snapshot({}, set(), b"")
    for root, dirs, files in os.walk(run_dir):
        rel_root = Path(root).relative_to(run_dir)
        dirs[:] = [
            d
            for d in dirs
            if not rundir.is_temp(Path(d)) and not (rel_root == Path(".") and d in _UNWATCHED)
        ]
        snap.dirs.update((rel_root / d).as_posix() for d in dirs)
        for name in files:
            if rundir.is_temp(Path(name)):
                continue
            rel = (rel_root / name).as_posix()
            try:
                st = os.lstat(run_dir / rel)  # a link is listed as itself, never followed
            except OSError:  # removed meanwhile
                continue
            snap.files[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    try:  # a regular file only: a link to /dev/zero is never read (probe.io.safeio)
        snap.metrics = safeio.read_bytes(run_dir / rundir.METRICS)
    except (OSError, ProbeError):
        pass
    return snap


def check_writes(run: Run, before: Snapshot) -> tuple[list[str], list[str]]:
    """(new files; changed or deleted run files) since `before`. Removes nothing.

    New files cannot be attributed (the job, the user, another tool may have made
    them), so they are only listed. Run files are probe's own (config, metrics,
    checkpoints, dumps, stored batches): no analysis may change them. What a
    concurrent `probe train` writes is not the job's: new checkpoints and dumps, a
    metrics.jsonl that only gained lines, the rewritten dump of an epoch that had no
    checkpoint yet (an unfinished epoch), its lock file.
    """
    after = snapshot(run.path)
    stray = sorted(
        rel for rel in after.files if rel not in before.files and not _TRAINING_OUTPUT.match(rel)
    )
    changed = []
    for rel, st in sorted(before.files.items()):
        if st == after.files.get(rel):
            continue
        if not _RUN_FILE.match(rel):
            continue  # a file of the user's, edited or removed meanwhile: theirs to change
        if (
            rel == rundir.METRICS
            and rel in after.files
            and after.metrics.startswith(before.metrics)
        ):
            continue
        m = re.match(r"^activations/epoch_(\d+)\.h5$", rel)
        if m and rundir.checkpoint_name(int(m.group(1))) not in before.files:
            continue
        changed.append(rel if rel in after.files else f"{rel} (deleted)")
    return stray, changed
