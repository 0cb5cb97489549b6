"""`probe analyze`: run analyses over a saved run, offline, with a result cache.

For each selected analysis the runner plans jobs (one per epoch, or one over the
selected epochs), computes each job's cache key from the checksums of the inputs
the analysis declared, and skips jobs whose finished result has the same key.
A job's files are written into a temporary directory that is renamed into place
with its manifest inside. A job that fails is recorded (one line on the terminal,
the traceback in RUN/logs/) and the others go on; the command exits 1 if any failed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic, rundir
from .analysis import Analysis, params_dict
from .errors import ProbeError
from .results import (
    MANIFEST,
    RESULT_FORMAT,
    read_manifest,
    result_dir,
    result_key,
    sha256_file,
    variant_name,
)
from .rundir import Run


@dataclass
class Outcome:
    """What happened to one job."""

    analysis: str
    epoch: int | None
    status: str  # ok | cached | failed
    seconds: float = 0.0
    path: Path | None = None
    error: str = ""
    traceback: str = ""

    @property
    def label(self) -> str:
        return f"{self.analysis} " + (f"epoch {self.epoch}" if self.epoch is not None else "(run)")


def input_files(run: Run, analysis: Analysis, epochs: list[int]) -> list[str]:
    """Run-relative paths of the files whose contents the job may read."""
    files: list[str] = []
    needs = analysis.needs
    if needs & {"checkpoint", "model"}:
        files += [rundir.checkpoint_name(e) for e in epochs]
    if "activations" in needs:
        files += [rundir.activations_name(e) for e in epochs]
    if "probe_set" in needs:
        files.append(rundir.PROBE_SET)
    if "analysis_batch" in needs:
        files.append(rundir.ANALYSIS_BATCH)
    if "metrics" in needs:
        files.append(rundir.METRICS)
    if "config" in needs or needs & {"checkpoint", "model", "probe_set", "analysis_batch"}:
        files.append(rundir.CONFIG)
    return files


def fingerprints(run: Run, files: list[str]) -> dict[str, str]:
    out = {}
    for rel in files:
        p = run.path / rel
        out[rel] = sha256_file(p) if p.exists() else "missing"
    return out


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            from .errors import UsageError

            raise UsageError("--device", "cuda was asked for but torch sees no CUDA device")
    return device


def plan(run: Run, analysis: Analysis, epochs_spec: str | None) -> list[tuple[int | None, list[int]]]:
    """(epoch, epochs) per job: one per selected epoch, or one (None, selected) for run scope."""
    spec = epochs_spec or ("all" if analysis.scope == "run" else "last")
    if not run.epochs() and not (analysis.needs & {"checkpoint", "model", "activations"}):
        return [(None, [])]
    selected = run.select_epochs(spec)
    if analysis.scope == "run":
        return [(None, selected)]
    return [(e, [e]) for e in selected]


def run_job(run: Run, analysis: Analysis, params: Any, epoch: int | None, epochs: list[int], *,
            device: str, force: bool = False, quiet: bool = True) -> Outcome:
    """Compute one result (or find it cached), never raising for the analysis's own errors."""
    from .context import Context, ResultWriter

    pdict = params_dict(params)
    variant = variant_name(pdict, params_dict(analysis.params()))
    target = result_dir(run, analysis.name, variant, epoch)
    failed_marker = target.parent / f"{target.name}.failed.json"
    t0 = time.perf_counter()
    try:
        inputs = fingerprints(run, input_files(run, analysis, epochs))
        key = result_key(analysis, pdict, inputs)
        existing = read_manifest(target)
        if not force and existing is not None and existing.get("key") == key:
            return Outcome(analysis.name, epoch, "cached", 0.0, target)
        with atomic.atomic_dir(target) as tmp:
            out = ResultWriter(tmp)
            ctx = Context(run, analysis, params, epochs, epoch, device, out, quiet=quiet)
            analysis.run(ctx)
            seconds = time.perf_counter() - t0
            manifest = {
                "format": RESULT_FORMAT, "analysis": analysis.name, "version": analysis.version,
                "provider": analysis.provider, "provider_version": analysis.provider_version,
                "params": pdict, "variant": variant, "scope": analysis.scope, "epoch": epoch, "epochs": epochs,
                "inputs": inputs, "key": key, "files": sorted(set(out.files)), "scalars": out.scalars,
                "captions": {**dict(analysis.figure_captions), **out.captions}, "seconds": round(seconds, 3),
                "device": device, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        failed_marker.unlink(missing_ok=True)
        return Outcome(analysis.name, epoch, "ok", seconds, target)
    except Exception as exc:  # one analysis's failure is reported, not propagated
        tb = traceback.format_exc()
        msg = str(exc) if isinstance(exc, ProbeError) else f"{type(exc).__name__}: {exc}"
        outcome = Outcome(analysis.name, epoch, "failed", time.perf_counter() - t0, None, msg.splitlines()[0] if msg else type(exc).__name__, tb)
        try:
            atomic.write_json(failed_marker, {
                "analysis": analysis.name, "epoch": epoch, "variant": variant, "params": pdict,
                "error": outcome.error, "traceback": tb,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            })
        except ProbeError:
            pass
        return outcome


def run_analyses(run_dir: str | Path, plugins: list[str], epochs: str | None = None,
                 params: dict[str, dict[str, Any]] | None = None, *, device: str = "auto",
                 force: bool = False, quiet: bool = True, registry: Any = None,
                 on_outcome: Any = None) -> list[Outcome]:
    """Run the named analyses over a run; returns one Outcome per job. Used by the CLI and by sweeps."""
    from .plugins import registry as default_registry

    run = Run(run_dir)
    reg = registry or default_registry()
    analyses = [reg.get(name) for name in plugins]
    parsed = {a.name: a.make_params((params or {}).get(a.name, {})) for a in analyses}  # all checked up front
    jobs = [(a, e, es) for a in analyses for e, es in plan(run, a, epochs)]
    device = resolve_device(device)
    outcomes = []
    for a, e, es in _progress(jobs, quiet):
        outcome = run_job(run, a, parsed[a.name], e, es, device=device, force=force, quiet=quiet)
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    failures = [o for o in outcomes if o.status == "failed"]
    if failures:
        write_log(run, failures)
    return outcomes


def write_log(run: Run, failures: list[Outcome]) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = run.path / "logs" / f"analyze-{stamp}-{id(failures) % 10000:04d}.log"
    text = "\n".join(f"== {o.label}: {o.error}\n{o.traceback}" for o in failures)
    try:
        atomic.write_text(path, text)
    except ProbeError:
        pass
    return path


def _progress(jobs: list, quiet: bool):
    if quiet or not sys.stderr.isatty() or len(jobs) < 2:
        yield from jobs
        return
    import click

    with click.progressbar(jobs, label="analyses", file=sys.stderr, show_pos=True,
                           item_show_func=lambda j: j and f"{j[0].name} {j[1] if j[1] is not None else ''}") as bar:
        yield from bar


def describe(analysis: Analysis) -> dict[str, Any]:
    """A JSON-able description (for `probe plugins --json`)."""
    return {
        "name": analysis.name, "summary": analysis.summary, "scope": analysis.scope, "version": analysis.version,
        "needs": sorted(analysis.needs), "provider": analysis.provider, "provider_version": analysis.provider_version,
        "params": [dataclasses.asdict(s) | {"type": s.type.__name__} for s in analysis.param_specs()],
    }
