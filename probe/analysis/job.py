"""One analysis job as a value (`Job`), and the plan of a command's jobs (`plan_jobs`).

A job is one analysis with its parameters on one epoch (scope "epoch") or on the selected
epochs together (scope "run"). Everything the runner, the records and the cache need about it
is derived once here: the parameters as a plain dict, the variant name they select, and the
result folder (`target`) with the failure and skip records beside it. No file is read or
written, and nothing heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.contract.analysis import Analysis, params_dict
from probe.rundir.results import job_identity, result_dir, variant_name
from probe.rundir.run import Run

__all__ = ["Job", "plan_epochs", "plan_jobs"]

# Which inputs make a run-scope job need epochs (without any, it runs once on the run).
EPOCH_NEEDS = {"checkpoint", "model", "activations", "trajectory"}


@dataclass(frozen=True, eq=False)
class Job:
    """One analysis, its parameters, and the epoch (None: run scope) and epochs it covers.

    Compared by identity; `pdict`, `variant` and `target` are derived when it is made.
    """

    run: Run
    analysis: Analysis
    params: Any
    epoch: int | None
    epochs: list[int]
    # derived once from the above
    pdict: dict[str, Any] = field(init=False, repr=False)
    variant: str = field(init=False)
    target: Path = field(init=False)

    def __post_init__(self) -> None:
        pdict = params_dict(self.params)
        variant = variant_name(pdict, params_dict(self.analysis.params()))
        object.__setattr__(self, "pdict", pdict)
        object.__setattr__(self, "variant", variant)
        object.__setattr__(
            self, "target", result_dir(self.run, self.analysis.name, variant, self.epoch)
        )

    @property
    def name(self) -> str:
        return self.analysis.name

    @property
    def label(self) -> str:
        """How the job is named in messages (`hessian epoch 3`, `curves (run)`)."""
        return f"{self.name} " + (f"epoch {self.epoch}" if self.epoch is not None else "(run)")

    @property
    def failed_record(self) -> Path:
        """`<epoch_NNNN|run>.failed.json`, beside where the result would be."""
        return self.target.parent / f"{self.target.name}.failed.json"

    @property
    def skipped_record(self) -> Path:
        """`<epoch_NNNN|run>.skipped.json`, beside where the result would be."""
        return self.target.parent / f"{self.target.name}.skipped.json"

    def identity(self, source: str | None) -> dict[str, Any]:
        """What the cache key covers besides the inputs (`probe.rundir.results.job_identity`)."""
        return job_identity(self.analysis, self.pdict, self.epoch, self.epochs, source)


def plan_epochs(
    run: Run, analysis: Analysis, epochs_spec: str | None
) -> list[tuple[int | None, list[int]]]:
    """(epoch, epochs) per job: one per selected epoch, or one (None, selected) for run scope."""
    spec = epochs_spec or ("all" if analysis.scope == "run" else "last")
    if not run.epochs() and not (analysis.needs & EPOCH_NEEDS):
        return [(None, [])]
    selected = run.select_epochs(spec)
    if analysis.scope == "run":
        return [(None, selected)]
    return [(e, [e]) for e in selected]


def plan_jobs(run: Run, analysis: Analysis, params: Any, epochs_spec: str | None) -> list[Job]:
    """The jobs of one analysis with `params` over the epochs `epochs_spec` selects."""
    return [Job(run, analysis, params, e, es) for e, es in plan_epochs(run, analysis, epochs_spec)]
