"""`probe.analyze(...)`: what `probe analyze` does, from Python, returning the results.

The same runner (`probe.analysis.runner.run_analyses`), so the same cache, the same result
folders and the same records: a result computed here is cached for the CLI and the other
way round. A bad analysis name, parameter or epoch selection raises `probe.UsageError`
before anything runs. A job that fails is recorded as it is by the CLI (its failure record,
the traceback under RUN/logs/); then, after every job has run, `ProbeError` is raised naming
the first failed job, unless `raise_failures=False`, which returns the failed outcomes among
the others (status "failed" or "timeout", `error` set). Skipped jobs are returned (status
"skipped", `reason` set), never raised.

`model`: for a run of the user's own class (family `module`), a callable returning the
untrained module: rebuilding analyses use it (its state must have the stored names and
shapes). `trust_code`: the `--trust-code` modules instead. Neither: those analyses skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.analysis.outcome import Outcome
from probe.analysis.runner import run_analyses
from probe.contract.modulespec import CodeTrust, code_trust
from probe.errors import ProbeError, UsageError
from probe.rundir.run import Result, Run

__all__ = ["AnalysisResult", "analyze"]


@dataclass(frozen=True)
class AnalysisResult:
    """One job of `probe.analyze`: its outcome and, when it finished (ok or cached), its result."""

    analysis: str
    epoch: int | None  # None: a run-wide result
    status: str  # ok | cached | skipped | failed | timeout
    outcome: Outcome
    result: Result | None

    @property
    def scalars(self) -> dict[str, Any]:
        """The result's headline scalars (empty when it did not finish)."""
        return self.result.scalars if self.result is not None else {}

    @property
    def json(self) -> dict[str, Any]:
        """The result's JSON files by name without .json (empty when it did not finish)."""
        return self.result.json if self.result is not None else {}

    def __repr__(self) -> str:
        # short, for a notebook: the outcome and result records stay one attribute away
        where = "run" if self.epoch is None else f"epoch {self.epoch}"
        scalars = ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(self.scalars.items())[:4]
        )
        why = self.outcome.reason or self.outcome.error
        tail = f", {scalars}" if scalars else (f", {why[:120]}" if why else "")
        return f"AnalysisResult({self.analysis}, {where}, {self.status}{tail})"


def analyze(
    run_dir: str | Path,
    analyses: str | Iterable[str],
    epochs: str | int | Iterable[int] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    model: Callable[[], Any] | None = None,
    trust_code: Iterable[str] = (),
    device: str = "auto",
    force: bool = False,
    timeout: float | None = None,
    raise_failures: bool = True,
) -> list[AnalysisResult]:
    """Run `analyses` (names, as `probe analyze -p`) over the run at `run_dir`; one
    `AnalysisResult` per job, in the CLI's order. See the module docstring.

    `epochs`: as `--epochs` ("all", "last", "0,5,last", "2-6", "::5"), an epoch or a list
    of epochs; None: the analysis's default. `params`: `{analysis: {key: value}}` as
    `--param analysis.key=value` (values typed or as strings).
    """
    names = [analyses] if isinstance(analyses, str) else list(analyses)
    if not names or not all(isinstance(n, str) for n in names):
        raise UsageError("analyses", "name at least one analysis (see `probe plugins`)")
    if model is not None and not callable(model):
        raise UsageError("model", f"expected a function returning the model, got {model!r}")
    trust = CodeTrust(factory=model) if model is not None else code_trust(tuple(trust_code))
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError("device", f"expected auto, cpu or cuda, got {device!r}")
    run = Run(run_dir)
    outcomes = run_analyses(
        run.path,
        list(dict.fromkeys(names)),
        _epochs(epochs),
        _params(params),
        device=device,
        force=force,
        timeout=timeout,
        trust=trust,
    )
    failed = [o for o in outcomes if o.failed]
    if failed and raise_failures:
        raise ProbeError(f"{failed[0].label}: {failed[0].error} ({len(failed)} failed)")
    found: dict[tuple[str, str], dict[int | None, Result]] = {}
    out = []
    for o in outcomes:
        result = None
        if o.status in ("ok", "cached") and o.path is not None:
            variant = o.path.parent.name
            if (o.analysis, variant) not in found:
                found[o.analysis, variant] = run.results(o.analysis, variant)
            result = found[o.analysis, variant].get(o.epoch)
        out.append(AnalysisResult(o.analysis, o.epoch, o.status, o, result))
    return out


def _params(params: Any) -> dict[str, dict[str, Any]]:
    """`{analysis: {key: value}}`, or the CLI's flat `{"analysis.key": value}`, or both."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise UsageError("params", f"expected {{analysis: {{key: value}}}}, got {params!r:.80}")
    out: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.setdefault(str(k), {}).update(v)
        elif isinstance(k, str) and "." in k:
            name, key = k.split(".", 1)
            out.setdefault(name, {})[key] = v
        else:
            raise UsageError(
                "params",
                f"{k!r:.60}: give {{analysis: {{key: value}}}} or {{'analysis.key': value}}",
            )
    return out


def _epochs(epochs: Any) -> str | None:
    if epochs is None or isinstance(epochs, str):
        return epochs
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return str(epochs)
    try:
        items = list(epochs)
    except TypeError:
        items = None
    if not items or not all(isinstance(e, int) and not isinstance(e, bool) for e in items):
        raise UsageError("epochs", f"expected 'all', 'last', an epoch or a list, got {epochs!r}")
    return ",".join(str(e) for e in items)
