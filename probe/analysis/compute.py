"""Running one job in this process and writing its result: `compute(job, ...)`.

The result is valid or absent, never half there: the analysis writes through a `Context` into
a temporary folder that is renamed into place with its manifest inside (`atomic.atomic_dir`).
The manifest lists every input the job read, with the key over their fingerprints and the
job's identity, so the cache can tell later whether it still holds. An analysis that raises
`probe.Skip` is "skipped" and its skip record written; any other exception is "failed", with
a failure record, and never propagates: one analysis's error does not stop the others.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import traceback
from typing import Any

from probe.analysis.context import Context, ResultWriter, close_new_figures, open_figures
from probe.analysis.job import Job
from probe.analysis.outcome import Outcome, one_line
from probe.analysis.records import (
    cached_skip,
    fingerprints,
    is_hit,
    record_failure,
    record_skip,
    source_of,
)
from probe.contract.modulespec import CodeNotTrusted
from probe.errors import ProbeError, Skip
from probe.io import atomic, safeio
from probe.numerics.device import device_string
from probe.rundir import results
from probe.rundir.results import MANIFEST, RESULT_FORMAT, result_key

__all__ = ["compute"]


def compute(
    job: Job,
    *,
    device: str,
    force: bool,
    quiet: bool,
) -> Outcome:
    """Compute `job` (or find it cached unless `force`) and write its result; never raises for it.

    `device` ("auto", "cpu", "cuda") is resolved only when the job is computed, so a cached job
    imports no torch.
    """
    t0 = time.perf_counter()
    ctx = None
    source = None
    try:
        fps = fingerprints(job.run)
        source = source_of(job, fps)
        if not force and is_hit(job, fps, source):
            return Outcome(job.name, job.epoch, "cached", 0.0, job.target)
        if not force and (skipped := cached_skip(job, fps, source)):
            return skipped
        device = device_string(device)
        with atomic.atomic_dir(job.target) as tmp:
            out = ResultWriter(tmp)
            ctx = Context(
                job.run,
                job.analysis,
                job.params,
                job.epochs,
                job.epoch,
                device,
                out,
                quiet=quiet,
                fingerprints=fps,
            )
            figures = open_figures()
            try:
                job.analysis.run(ctx)
            finally:
                close_new_figures(figures)
            seconds = time.perf_counter() - t0
            manifest = _manifest(job, out, dict(ctx.inputs), source, seconds, device)
            manifest["file_sha256"] = {f: safeio.sha256_file(tmp / f) for f in manifest["files"]}
            manifest["seal"] = results.seal_of(json.loads(results.dumps(manifest)))
            (tmp / MANIFEST).write_text(results.dumps(manifest, indent=2, sort_keys=True) + "\n")
        job.failed_record.unlink(missing_ok=True)
        job.skipped_record.unlink(missing_ok=True)
        return Outcome(job.name, job.epoch, "ok", seconds, job.target)
    except Skip as exc:  # the analysis does not apply: not a failure (see probe.errors.Skip)
        return _skipped(job, exc, ctx, source, time.perf_counter() - t0)
    except Exception as exc:  # one analysis's failure is reported, not propagated
        return _failed(job, exc, time.perf_counter() - t0)


def _manifest(
    job: Job,
    out: ResultWriter,
    inputs: dict[str, str],
    source: str | None,
    seconds: float,
    device: str,
) -> dict[str, Any]:
    """The result's manifest: what was computed, from which inputs, with which key and files."""
    a = job.analysis
    manifest = {
        "format": RESULT_FORMAT,
        "analysis": a.name,
        "version": str(a.version),
        "provider": a.provider,
        "provider_version": a.provider_version,
        "params": results.jsonable(job.pdict, nonfinite="str"),
        "variant": job.variant,
        "scope": a.scope,
        "epoch": job.epoch,
        "epochs": job.epochs,
        "inputs": inputs,
        "key": result_key(job.identity(source), inputs),
        "files": sorted(set(out.files)),
        "scalars": out.scalars,
        "layer_scalars": out.layer_tables,
        "captions": {**dict(a.figure_captions), **out.captions},
        "seconds": round(seconds, 3),
        "device": device,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if source:
        manifest["source"] = source
    return manifest


def _skipped(
    job: Job, exc: Skip, ctx: Context | None, source: str | None, seconds: float
) -> Outcome:
    """The skipped outcome, its record keyed on the inputs read before the analysis skipped."""
    outcome = Outcome(job.name, job.epoch, "skipped", seconds, None, reason=one_line(str(exc)))
    inputs = dict(ctx.inputs) if ctx is not None else {}
    key = result_key(job.identity(source), inputs)
    record_skip(job, outcome, key, inputs, needs_code=isinstance(exc, CodeNotTrusted))
    return outcome


def _failed(job: Job, exc: Exception, seconds: float) -> Outcome:
    """The failed outcome (the error's first line; a ProbeError's own message), recorded."""
    tb = traceback.format_exc()
    msg = str(exc) if isinstance(exc, ProbeError) else f"{type(exc).__name__}: {exc}"
    outcome = Outcome(
        job.name,
        job.epoch,
        "failed",
        seconds,
        None,
        msg.splitlines()[0] if msg else type(exc).__name__,
        tb,
    )
    record_failure(job, outcome)
    job.skipped_record.unlink(missing_ok=True)
    return outcome
