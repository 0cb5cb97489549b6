"""`probe analyze`: run analyses over a saved run, offline, with a result cache.

For each selected analysis the runner plans jobs (one per epoch, or one over the
selected epochs) and skips jobs whose finished result is still valid: its manifest
lists every input the job read (recorded by the Context as it was opened), and the
key over those inputs' fingerprints and the job's identity still matches
(probe/results.py). This check imports no torch; the device is resolved, and
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
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.contract.analysis import Analysis, params_dict
from probe.errors import ProbeError, Skip
from probe.io import atomic, safeio
from probe.io.paths import confined, is_link
from probe.numerics.device import device_string
from probe.rundir import results
from probe.rundir import run as rundir
from probe.rundir.lock import LOCK_FILE
from probe.rundir.results import (
    MANIFEST,
    RESULT_FORMAT,
    Fingerprints,
    is_cached,
    job_identity,
    read_manifest,
    result_dir,
    result_key,
    variant_name,
)
from probe.rundir.run import Run

# The fingerprints of the command's run (one per `run_analyses`, so each file is hashed once);
# a context variable, so a job (in this process or a forked child) finds it without plumbing.
FINGERPRINTS: contextvars.ContextVar[Fingerprints | None] = contextvars.ContextVar(
    "probe_fingerprints", default=None
)


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


STATUSES = ("ok", "cached", "skipped", "failed", "timeout")


def summary_line(outcomes: list[Outcome]) -> str:
    """`N computed, N cached, N failed` (and skipped, timed out when any): the last line of `probe analyze`."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    timed_out = f", {counts['timeout']} timed out" if counts["timeout"] else ""
    return f"{counts['ok']} computed, {counts['cached']} cached{skipped}, {counts['failed']} failed{timed_out}"


def plan(
    run: Run, analysis: Analysis, epochs_spec: str | None
) -> list[tuple[int | None, list[int]]]:
    """(epoch, epochs) per job: one per selected epoch, or one (None, selected) for run scope."""
    spec = epochs_spec or ("all" if analysis.scope == "run" else "last")
    if not run.epochs() and not (
        analysis.needs & {"checkpoint", "model", "activations", "trajectory"}
    ):
        return [(None, [])]
    selected = run.select_epochs(spec)
    if analysis.scope == "run":
        return [(None, selected)]
    return [(e, [e]) for e in selected]


def _target(
    run: Run, analysis: Analysis, params: Any, epoch: int | None
) -> tuple[dict[str, Any], str, Path]:
    pdict = params_dict(params)
    variant = variant_name(pdict, params_dict(analysis.params()))
    return pdict, variant, result_dir(run, analysis.name, variant, epoch)


def _record_failure(run: Run, analysis: Analysis, params: Any, outcome: Outcome) -> None:
    """Leave `<epoch_NNNN|run>.failed.json` beside where the result would be.

    Every value is cleaned to plain JSON first (NaN parameters, odd keys, bytes in
    an error), so the record can always be written; if the disk refuses it, the
    folders made for the result are removed again, never left empty.
    """
    target = None
    try:
        pdict, variant, target = _target(run, analysis, params, outcome.epoch)
        confined(
            run.path, target.relative_to(run.path)
        )  # checked again: a plugin may have put a link there
        record = results.jsonable(
            {
                "analysis": analysis.name,
                "epoch": outcome.epoch,
                "variant": variant,
                "params": pdict,
                "status": outcome.status,
                "error": outcome.error,
                "traceback": outcome.traceback,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            nonfinite="str",
        )
        atomic.write_json(target.parent / f"{target.name}.failed.json", record)
    except (
        Exception
    ):  # a failure record is best effort: the outcome is reported on the terminal anyway
        if target is not None:
            _remove_empty_folders(run, target.parent)


def _skip_record_path(target: Path) -> Path:
    return target.parent / f"{target.name}.skipped.json"


def _record_skip(
    run: Run, analysis: Analysis, params: Any, outcome: Outcome, key: str, inputs: dict[str, str]
) -> None:
    """Leave `<epoch_NNNN|run>.skipped.json`: the reason, and the key over the inputs read before skipping.

    Best effort, like a failure record: without it the job is only asked again next time.
    """
    target = None
    try:
        pdict, variant, target = _target(run, analysis, params, outcome.epoch)
        confined(run.path, target.relative_to(run.path))
        record = results.jsonable(
            {
                "format": RESULT_FORMAT,
                "analysis": analysis.name,
                "epoch": outcome.epoch,
                "variant": variant,
                "params": pdict,
                "status": "skipped",
                "reason": outcome.reason,
                "inputs": inputs,
                "key": key,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            nonfinite="str",
        )
        atomic.write_json(_skip_record_path(target), record)
        (target.parent / f"{target.name}.failed.json").unlink(missing_ok=True)
    except Exception:
        if target is not None:
            _remove_empty_folders(run, target.parent)


def _cached_skip(
    run: Run,
    analysis: Analysis,
    pdict: dict[str, Any],
    epoch: int | None,
    epochs: list[int],
    target: Path,
    fps: Fingerprints,
    source: str | None,
) -> Outcome | None:
    """The skipped outcome if a skip record at `target` is still valid (same identity, inputs unchanged)."""
    path = _skip_record_path(target)
    if not os.path.lexists(path):
        return None
    try:
        record = safeio.read_json(path, max_bytes=safeio.MAX_CONFIG_BYTES, within=run.path)
    except ProbeError:
        return None
    if (
        not isinstance(record, dict)
        or record.get("status") != "skipped"
        or not isinstance(record.get("reason"), str)
    ):
        return None
    if not is_cached(record, job_identity(analysis, pdict, epoch, epochs, source), fps):
        return None
    return Outcome(analysis.name, epoch, "skipped", 0.0, None, reason=_one_line(record["reason"]))


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "does not apply")[:500]


def _remove_empty_folders(run: Run, folder: Path) -> None:
    """Remove `folder` and its parents up to RUN/analyses while they are empty."""
    root = run.path / rundir.ANALYSES
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop
            return
        folder = folder.parent


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

    def job() -> Outcome:
        if timeout is not None:
            return _run_in_child(
                run,
                analysis,
                params,
                epoch,
                epochs,
                device=device,
                force=force,
                quiet=quiet,
                timeout=timeout,
            )
        return _run_job(
            run, analysis, params, epoch, epochs, device=device, force=force, quiet=quiet
        )

    _, _, target = _target(run, analysis, params, epoch)
    confined(
        run.path, target.relative_to(run.path)
    )  # no link on the way: nothing is read or written outside the run
    if not guard:
        return job()
    before = snapshot(run.path)
    outcome = job()
    if outcome.status == "cached":  # no plugin code ran
        return outcome
    stray, changed = check_writes(run, before)
    if changed:
        error = f"changed run files: {', '.join(changed)}" + (
            f"; and {outcome.error}" if outcome.error else ""
        )
        if outcome.status == "ok" and outcome.path is not None and not is_link(outcome.path):
            shutil.rmtree(
                outcome.path, ignore_errors=True
            )  # a job that changed the run: its result is not kept
        outcome = dataclasses.replace(
            outcome,
            status="failed" if outcome.status != "timeout" else "timeout",
            path=None,
            error=error,
        )
        _record_failure(run, analysis, params, outcome)
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


def _fingerprints(run: Run) -> Fingerprints:
    fps = FINGERPRINTS.get()
    return (
        fps if fps is not None and fps.run.path == run.path else Fingerprints(run, persistent=False)
    )


def _is_hit(
    analysis: Analysis,
    pdict: dict[str, Any],
    epoch: int | None,
    epochs: list[int],
    target: Path,
    fps: Fingerprints,
    source: str | None,
) -> bool:
    """Whether the finished result at `target` is still valid (see results.is_cached)."""
    existing = read_manifest(target)
    if existing is None:
        return False
    if source is None:  # outside development mode a development-mode result is valid too
        recorded = existing.get("source")
        source = recorded if isinstance(recorded, str) else None
    return is_cached(existing, job_identity(analysis, pdict, epoch, epochs, source), fps)


def cached_outcome(
    run: Run, analysis: Analysis, params: Any, epoch: int | None, epochs: list[int]
) -> Outcome | None:
    """The job's outcome if its result is cached, else None; imports no torch and runs no plugin code.

    `run_analyses` asks this first, so a command whose jobs are all cached does no
    more than read manifests and fingerprint the inputs they list.
    """
    pdict, _, target = _target(run, analysis, params, epoch)
    try:
        fps = _fingerprints(run)
        source = fps.source(analysis) if results.dev_mode() else None
        if _is_hit(analysis, pdict, epoch, epochs, target, fps, source):
            return Outcome(analysis.name, epoch, "cached", 0.0, target)
        return _cached_skip(run, analysis, pdict, epoch, epochs, target, fps, source)
    except Exception:  # anything odd: let the job itself run (and report it)
        pass
    return None


def _run_job(
    run: Run,
    analysis: Analysis,
    params: Any,
    epoch: int | None,
    epochs: list[int],
    *,
    device: str,
    force: bool,
    quiet: bool,
) -> Outcome:
    pdict, variant, target = _target(run, analysis, params, epoch)
    failed_marker = target.parent / f"{target.name}.failed.json"
    t0 = time.perf_counter()
    ctx = None
    source = None
    try:
        fps = _fingerprints(run)
        source = fps.source(analysis) if results.dev_mode() else None
        if not force and _is_hit(analysis, pdict, epoch, epochs, target, fps, source):
            return Outcome(analysis.name, epoch, "cached", 0.0, target)
        if not force and (
            skipped := _cached_skip(run, analysis, pdict, epoch, epochs, target, fps, source)
        ):
            return skipped
        device = device_string(device)
        from probe.analysis.context import Context, ResultWriter, close_new_figures, open_figures

        with atomic.atomic_dir(target) as tmp:
            out = ResultWriter(tmp)
            ctx = Context(
                run, analysis, params, epochs, epoch, device, out, quiet=quiet, fingerprints=fps
            )
            figures = open_figures()
            try:
                analysis.run(ctx)
            finally:
                close_new_figures(figures)
            seconds = time.perf_counter() - t0
            inputs = dict(ctx.inputs)
            manifest = {
                "format": RESULT_FORMAT,
                "analysis": analysis.name,
                "version": str(analysis.version),
                "provider": analysis.provider,
                "provider_version": analysis.provider_version,
                "params": results.jsonable(pdict, nonfinite="str"),
                "variant": variant,
                "scope": analysis.scope,
                "epoch": epoch,
                "epochs": epochs,
                "inputs": inputs,
                "key": result_key(job_identity(analysis, pdict, epoch, epochs, source), inputs),
                "files": sorted(set(out.files)),
                "scalars": out.scalars,
                "layer_scalars": out.layer_tables,
                "captions": {**dict(analysis.figure_captions), **out.captions},
                "seconds": round(seconds, 3),
                "device": device,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            if source:
                manifest["source"] = source
            (tmp / MANIFEST).write_text(results.dumps(manifest, indent=2, sort_keys=True) + "\n")
        failed_marker.unlink(missing_ok=True)
        _skip_record_path(target).unlink(missing_ok=True)
        return Outcome(analysis.name, epoch, "ok", seconds, target)
    except Skip as exc:  # the analysis does not apply: not a failure (see probe.errors.Skip)
        outcome = Outcome(
            analysis.name,
            epoch,
            "skipped",
            time.perf_counter() - t0,
            None,
            reason=_one_line(str(exc)),
        )
        inputs = dict(ctx.inputs) if ctx is not None else {}
        key = result_key(job_identity(analysis, pdict, epoch, epochs, source), inputs)
        _record_skip(run, analysis, params, outcome, key, inputs)
        return outcome
    except Exception as exc:  # one analysis's failure is reported, not propagated
        tb = traceback.format_exc()
        msg = str(exc) if isinstance(exc, ProbeError) else f"{type(exc).__name__}: {exc}"
        outcome = Outcome(
            analysis.name,
            epoch,
            "failed",
            time.perf_counter() - t0,
            None,
            msg.splitlines()[0] if msg else type(exc).__name__,
            tb,
        )
        _record_failure(run, analysis, params, outcome)
        _skip_record_path(target).unlink(missing_ok=True)
        return outcome


# --- a job in a child process, killed past its timeout ----------------------------------------------


def _run_in_child(
    run: Run,
    analysis: Analysis,
    params: Any,
    epoch: int | None,
    epochs: list[int],
    *,
    device: str,
    force: bool,
    quiet: bool,
    timeout: float,
) -> Outcome:
    """Fork a child for the job; kill its process group past `timeout`.

    fork, not spawn: the analysis (often a closure or a module-level function of a
    plugin) needs no pickling, and the child starts in milliseconds with torch
    already imported. The outcome comes back as JSON over a pipe.
    """
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    recv, send = mp.Pipe(duplex=False)
    # not a daemon: a daemonic process may not start processes, and an analysis may
    proc = mp.Process(
        target=_child_main, args=(send, run, analysis, params, epoch, epochs, device, force, quiet)
    )
    t0 = time.perf_counter()
    proc.start()
    send.close()
    data = None
    try:
        answered = recv.poll(timeout)
        if answered:
            try:
                data = recv.recv_bytes()
            except EOFError:  # the child died without an answer
                pass
            proc.join(5)
    finally:
        if proc.is_alive():
            _kill_group(proc.pid)
            proc.join()
        recv.close()
    seconds = time.perf_counter() - t0
    if data is not None:
        d = json.loads(data)
        return Outcome(**{**d, "path": Path(d["path"]) if d["path"] else None})
    _, _, target = _target(run, analysis, params, epoch)
    for tmp in target.parent.glob(f".{target.name}.{proc.pid}.*"):  # its unfinished result folder
        shutil.rmtree(tmp, ignore_errors=True)
    if not answered:
        outcome = Outcome(
            analysis.name,
            epoch,
            "timeout",
            seconds,
            None,
            f"timed out after {timeout:g} s (killed)",
        )
    else:
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        outcome = Outcome(
            analysis.name, epoch, "failed", seconds, None, f"the analysis process died ({how})"
        )
    _record_failure(run, analysis, params, outcome)
    return outcome


def _child_main(
    conn: Any,
    run: Run,
    analysis: Analysis,
    params: Any,
    epoch: int | None,
    epochs: list[int],
    device: str,
    force: bool,
    quiet: bool,
) -> None:
    try:
        os.setpgid(0, 0)  # its own process group, so whatever it starts is killed with it
    except OSError:
        pass
    outcome = _run_job(
        run, analysis, params, epoch, epochs, device=device, force=force, quiet=quiet
    )
    d = dataclasses.asdict(outcome)
    d["path"] = str(outcome.path) if outcome.path else None
    conn.send_bytes(json.dumps(d).encode())
    conn.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- writes outside the result folder ----------------------------------------------------------------

_UNWATCHED = {
    rundir.ANALYSES,
    "logs",
    "report",
}  # written by analyze itself, or by other commands meanwhile
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
        if not _RUN_FILE.match(
            rel
        ):  # a file of the user's, edited or removed meanwhile: theirs to change
            continue
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
    on_outcome: Any = None,
    timeout: float | None = None,
    executor: Any = None,
) -> list[Outcome]:
    """Run the named analyses over a run; returns one Outcome per job. Used by the CLI and by sweeps.

    `timeout`: seconds per job; each job then runs in a child process, killed past it.
    `executor`: where jobs send their independent pieces (`Context.map`): landscape
    grid rows, per-epoch Hessian pieces; the same executors as sweeps (probe.analysis.executor).
    """
    from probe.analysis.context import EXECUTOR
    from probe.contract.registry import registry as default_registry

    if "matplotlib" not in sys.modules:
        os.environ.setdefault(
            "MPLBACKEND", "Agg"
        )  # results are files: no window, no display needed
    run = Run(run_dir)
    reg = registry or default_registry()
    analyses = [reg.get(name) for name in plugins]
    parsed = {
        a.name: a.make_params((params or {}).get(a.name, {})) for a in analyses
    }  # all checked up front
    jobs = [(a, e, es) for a in analyses for e, es in plan(run, a, epochs)]
    if device == "cuda":
        device = device_string(device)  # asked for, and absent: one line before anything runs
    fingerprints = Fingerprints(run)
    prepare_run(run)
    outcomes = []
    token = EXECUTOR.set(executor)
    fp_token = FINGERPRINTS.set(fingerprints)
    try:
        for a, e, es in _progress(jobs, quiet):
            outcome = None if force else cached_outcome(run, a, parsed[a.name], e, es)
            if outcome is None:
                outcome = run_job(
                    run,
                    a,
                    parsed[a.name],
                    e,
                    es,
                    device=device,
                    force=force,
                    quiet=quiet,
                    timeout=timeout,
                )
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


def prepare_run(run: Run) -> list[Path]:
    """Before a command's jobs: refuse a linked analyses/ or logs/, and remove what killed jobs left.

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
        atomic.write_text(
            confined(run.path, path.relative_to(run.path)), text
        )  # logs/ may have become a link
    except ProbeError:
        pass
    return path


def _progress(jobs: list, quiet: bool):
    if quiet or not sys.stderr.isatty() or len(jobs) < 2:
        yield from jobs
        return
    import click

    with click.progressbar(
        jobs,
        label="analyses",
        file=sys.stderr,
        show_pos=True,
        item_show_func=lambda j: j and f"{j[0].name} {j[1] if j[1] is not None else ''}",
    ) as bar:
        yield from bar


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
