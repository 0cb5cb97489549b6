"""`probe analyze`: run analyses over a saved run, offline, with a result cache.

For each selected analysis the runner plans jobs (one per epoch, or one over the
selected epochs) and skips jobs whose finished result is still valid: its manifest
lists every input the job read (recorded by the Context as it was opened), and the
key over those inputs' fingerprints and the job's identity still matches
(probe/rundir/results.py). This check imports no torch; the device is resolved, and
torch imported, only when a job is computed.
A job's files are written into a temporary directory that is renamed into place
with its manifest inside. A job that fails is recorded (one line on the terminal,
the traceback in RUN/logs/) and the others go on; the command exits 1 if any failed.
An analysis that does not apply to the model (`raise probe.Skip(reason)`: `filters`
on a model without a conv layer) is "skipped", not failed: the reason is recorded
in `<epoch_NNNN|run>.skipped.json` with the key over the inputs it read, so it is
answered from that record, without running the job, while those inputs are unchanged.

Plugin faults are contained. With a timeout each job runs in a forked child
process (its own process group) that is killed when the time is up (status
"timeout"); a child that dies is a failure, not a crash of `probe analyze`. And
every job is watched for writes outside its result folder: the run directory's
files outside analyses/ are listed before and after the job; changed or deleted
run files fail the job, named in its error, and new files are named in a warning
but never removed (who made them cannot be told: the user may be writing notes
into the run meanwhile). No path under the run that is a symbolic link is read or
written through (probe.io.paths).

The parts, one job per module: `probe.analysis.job` (the `Job` value and the plan of jobs),
`probe.analysis.compute` (running one job and writing its result), `probe.analysis.records`
(the cache check, skip and failure records), `probe.analysis.child` (a job in a child process
with a timeout), `probe.analysis.guard` (the snapshot and check of writes outside the result
folder), `probe.analysis.outcome` (what happened, as printed). This module puts them together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from probe.analysis.child import run_in_child
from probe.analysis.compute import compute
from probe.analysis.context import EXECUTOR
from probe.analysis.estimate import estimate_lines
from probe.analysis.guard import watch
from probe.analysis.job import Job, plan_jobs
from probe.analysis.outcome import STATUSES, Outcome, summary_line
from probe.analysis.progress import progress
from probe.analysis.records import FINGERPRINTS, cached_outcome
from probe.contract.analysis import Analysis
from probe.contract.registry import registry as default_registry
from probe.errors import ProbeError
from probe.io import atomic
from probe.io.paths import confined
from probe.numerics.device import device_string
from probe.rundir import run as rundir
from probe.rundir.results import Fingerprints
from probe.rundir.run import Run

__all__ = [
    "STATUSES",
    "Job",
    "Outcome",
    "describe",
    "prepare_run",
    "run_analyses",
    "run_job",
    "run_one",
    "summary_line",
    "write_log",
]


def run_job(
    run: Run,
    analysis: Analysis,
    params: Any,
    epoch: int | None,
    epochs: list[int],
    *,
    device: str,
    force: bool = False,
    quiet: bool = True,
    timeout: float | None = None,
    guard: bool = True,
) -> Outcome:
    """Compute one result (or find it cached), never raising for the analysis's own errors.

    `timeout` (seconds) runs the job in a child process killed past it; `guard`
    checks the job wrote nothing outside its result folder (see the module docstring).
    """
    job = Job(run, analysis, params, epoch, epochs)
    return run_one(job, device=device, force=force, quiet=quiet, timeout=timeout, guard=guard)


def run_one(
    job: Job,
    *,
    device: str,
    force: bool = False,
    quiet: bool = True,
    timeout: float | None = None,
    guard: bool = True,
) -> Outcome:
    """`run_job` for a `Job`: in this process or a child, guarded or not."""
    # no link on the way: nothing is read or written outside the run
    confined(job.run.path, job.target.relative_to(job.run.path))
    work = functools.partial(compute, job, device=device, force=force, quiet=quiet)
    if timeout is not None:
        work = functools.partial(run_in_child, job, work, timeout)
    return watch(job, work) if guard else work()


def run_analyses(
    run_dir: str | Path,
    plugins: list[str],
    epochs: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    *,
    device: str = "auto",
    force: bool = False,
    quiet: bool = True,
    registry: Any = None,
    on_outcome: Callable[[Outcome], Any] | None = None,
    timeout: float | None = None,
    executor: Any = None,
    on_estimate: Callable[[list[str]], Any] | None = None,
) -> list[Outcome]:
    """Run the named analyses over a run; one Outcome per job. Used by the CLI and by sweeps.

    `timeout`: seconds per job; each job then runs in a child process, killed past it.
    `executor`: where jobs send their independent pieces (`Context.map`): landscape
    grid rows, per-epoch Hessian pieces; the same executors as sweeps (probe.analysis.executor).
    `on_estimate`: given the lines of `estimate_lines` before the first job is computed (only
    when some job is to be computed: a fully cached command imports no torch).
    """
    if "matplotlib" not in sys.modules:
        # results are files: no window, no display needed
        os.environ.setdefault("MPLBACKEND", "Agg")
    run = Run(run_dir)
    reg = registry or default_registry()
    analyses = [reg.get(name) for name in plugins]
    # all checked up front
    parsed = {a.name: a.make_params((params or {}).get(a.name, {})) for a in analyses}
    jobs = [job for a in analyses for job in plan_jobs(run, a, parsed[a.name], epochs)]
    if device == "cuda":
        device = device_string(device)  # asked for, and absent: one line before anything runs
    fingerprints = Fingerprints(run)
    prepare_run(run)
    outcomes = []
    token = EXECUTOR.set(executor)
    fp_token = FINGERPRINTS.set(fingerprints)
    try:
        hits = [None if force else cached_outcome(job) for job in jobs]
        todo = [job for job, hit in zip(jobs, hits, strict=True) if hit is None]
        if on_estimate is not None and todo:
            on_estimate(estimate_lines(todo, device))
        for job, outcome in _progress(list(zip(jobs, hits, strict=True)), quiet):
            if outcome is None:
                outcome = run_one(job, device=device, force=force, quiet=quiet, timeout=timeout)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    finally:
        EXECUTOR.reset(token)
        FINGERPRINTS.reset(fp_token)
        fingerprints.save()
    failures = [o for o in outcomes if o.failed]
    if failures:
        write_log(run, failures)
    return outcomes


def dry_run(
    run_dir: str | Path,
    plugins: list[str],
    epochs: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    *,
    force: bool = False,
    registry: Any = None,
    on_estimate: Callable[[list[str]], Any] | None = None,
    device: str = "auto",
) -> list[tuple[str, str]]:
    """(job label, "cached" | "skipped (cached)" | "to compute") for every job `run_analyses`
    would run with these arguments; checks them the same way, computes and writes nothing
    (the cache check reads manifests and fingerprints the inputs they list). `on_estimate` gets
    the estimate of the jobs to compute (it times one unit of work on the run's model: reads,
    never writes)."""
    run = Run(run_dir)
    reg = registry or default_registry()
    analyses = [reg.get(name) for name in plugins]
    parsed = {a.name: a.make_params((params or {}).get(a.name, {})) for a in analyses}
    planned = plan(run, analyses, parsed, epochs, force=force)
    todo = [job for job, status in planned if status == "to compute"]
    if on_estimate is not None and todo:
        on_estimate(estimate_lines(todo, device))
    return [(Outcome(job.name, job.epoch, "planned").label, status) for job, status in planned]


def plan(
    run: Run, analyses: list[Analysis], parsed: dict[str, Any], epochs: str | None, *, force: bool
) -> list[tuple[Job, str]]:
    """Every job with "cached", "skipped (cached)" or "to compute" (`dry_run`'s statuses)."""
    out = []
    for a in analyses:
        for job in plan_jobs(run, a, parsed[a.name], epochs):
            hit = None if force else cached_outcome(job)
            if hit is None:
                out.append((job, "to compute"))
            else:
                out.append((job, "cached" if hit.status == "cached" else "skipped (cached)"))
    return out


def prepare_run(run: Run) -> list[Path]:
    """Before a command's jobs: refuse a linked analyses/ or logs/, remove what killed jobs left.

    A job killed mid-write (SIGKILL, a power cut) leaves `.<name>.<pid>.<random>.tmp`
    folders and files under analyses/ and logs/; those whose process is gone are
    removed here, and nothing else (see `atomic.remove_stale_temps`).
    """
    for name in (rundir.ANALYSES, "logs"):
        confined(run.path, name)
    return atomic.remove_stale_temps(
        run.path / rundir.ANALYSES, depth=2
    ) + atomic.remove_stale_temps(run.path / "logs", depth=0)


def write_log(run: Run, failures: list[Outcome]) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = run.path / "logs" / f"analyze-{stamp}-{id(failures) % 10000:04d}.log"
    text = "\n".join(f"== {o.label}: {o.error}\n{o.traceback}" for o in failures)
    try:
        # logs/ may have become a link
        atomic.write_text(confined(run.path, path.relative_to(run.path)), text)
    except ProbeError:
        pass
    return path


def _progress(pairs: list[tuple[Job, Any]], quiet: bool) -> Iterator[tuple[Job, Any]]:
    """(job, cached outcome or None) with a per-job progress line (probe.analysis.progress)."""
    if len(pairs) < 2:
        yield from pairs
        return
    yield from progress(pairs, "analyses", quiet=quiet, describe=lambda p: p[0].label)


def describe(analysis: Analysis) -> dict[str, Any]:
    """A JSON-able description (for `probe plugins --json`)."""
    return {
        "name": analysis.name,
        "summary": analysis.summary,
        "scope": analysis.scope,
        "version": analysis.version,
        "needs": sorted(analysis.needs),
        "provider": analysis.provider,
        "provider_version": analysis.provider_version,
        "params": [
            dataclasses.asdict(s) | {"type": s.type.__name__} for s in analysis.param_specs()
        ],
    }
