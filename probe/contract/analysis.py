"""The `Analysis` record a plugin registers: what it is, what it reads, and its typed parameters.

An analysis declares what it is (name, one-line summary, version), what it
consumes (`needs`), whether it runs once per epoch or once over the selected
epochs (`scope`), and its parameters as a frozen dataclass whose fields are the
`--param` keys (`probe.param`; the machinery is probe.contract.params, shared with
model families):

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str = probe.param("classifier.3", "Layer whose activations are projected.")
        perplexity: float = probe.param(30.0, "t-SNE perplexity.", min=2)

Defaults are checked when the plugin registers (`Analysis.check_params`): an
analysis whose own default its declaration would refuse is disabled, not run with it.
This module imports no torch, so registering analyses costs nothing at start-up.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probe.contract.cost import Cost, RunInfo
from probe.contract.params import (
    NoParams,
    ParamSpec,
    check_params,
    make_params,
    param,
    param_specs,
    params_dict,
    split_params,
)

__all__ = [
    "NEEDS",
    "SCOPES",
    "Analysis",
    "Cost",
    "NoParams",
    "ParamSpec",
    "RunInfo",
    "check_params",
    "make_params",
    "param",
    "param_specs",
    "params_dict",
    "split_params",
]

# "trajectory": the job may read the checkpoint of any complete epoch (not only its own), so
# its cache key covers them all.
NEEDS = frozenset(
    {
        "checkpoint",
        "model",
        "activations",
        "probe_set",
        "analysis_batch",
        "examples",
        "metrics",
        "config",
        "trajectory",
    }
)
SCOPES = ("epoch", "run")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Analysis:
    """One analysis a plugin provides. See docs/writing-a-plugin.md ("Reference").

    Besides what it runs on, an analysis says how the report and `probe compare` present it,
    so that neither names any analysis (a third party's is shown exactly like a built-in one):
    `report_order` places its section on a run's page (lower first, then by name; built-ins use
    10 to 130, the default puts it after them), `caption` is the one line on how to read its
    figures when a figure has no caption of its own, and `headline` maps the scalars that
    `probe compare` shows as columns of its terminal table to their column labels (a scalar's
    `<name>_se`, where a result has it, is shown beside it as `value ± se`).
    """

    # The default `report_order`: after every built-in analysis.
    DEFAULT_REPORT_ORDER: typing.ClassVar[int] = 1000

    name: str
    run: Callable[[Any], Any]
    summary: str
    params: type = NoParams
    needs: frozenset[str] = frozenset({"checkpoint"})
    scope: str = "epoch"
    version: str = "1"
    figure_captions: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    provider_version: str = ""
    report_order: int = DEFAULT_REPORT_ORDER
    caption: str = ""
    headline: Mapping[str, str] = field(default_factory=dict)
    # cost(params, RunInfo) -> Cost | list[Cost]: one job's work, for the estimate printed
    # before a long `probe analyze` starts (probe.contract.cost); None: not declared.
    cost: Callable[[Any, RunInfo], Cost | list[Cost]] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"analysis name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        if self.scope not in SCOPES:
            raise ValueError(
                f"analysis {self.name!r}: scope must be one of {SCOPES}, got {self.scope!r}"
            )
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(
                f"analysis {self.name!r}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}"
            )
        if not dataclasses.is_dataclass(self.params):
            raise ValueError(f"analysis {self.name!r}: params must be a dataclass type")
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"analysis {self.name!r}: summary must be one line")
        # One type, so manifests and reports never compare "2" with 2.
        if not isinstance(self.version, str) or not self.version.strip():
            hint = str(self.version).strip() if isinstance(self.version, int | float) else "1"
            raise ValueError(
                f'analysis {self.name!r}: version must be a non-empty str (e.g. version="{hint}"), '
                f"got {type(self.version).__name__} {self.version!r}"
            )
        self._check_presentation()

    def _check_presentation(self) -> None:
        """`report_order`, `caption` and `headline`, each refused with one line if malformed."""
        order = self.report_order
        if not isinstance(order, int) or isinstance(order, bool):
            raise ValueError(
                f"analysis {self.name!r}: report_order must be an int (lower comes first), "
                f"got {type(order).__name__} {order!r}"
            )
        if not isinstance(self.caption, str) or "\n" in self.caption:
            raise ValueError(f"analysis {self.name!r}: caption must be one line of text")
        if not isinstance(self.headline, Mapping):
            raise ValueError(
                f"analysis {self.name!r}: headline must map scalar names to column labels, "
                f'e.g. {{"top_eigenvalue": "top_eig"}}, got {type(self.headline).__name__}'
            )
        for scalar, label in self.headline.items():
            if not isinstance(scalar, str) or not scalar.strip() or "\n" in scalar:
                raise ValueError(
                    f"analysis {self.name!r}: headline scalar {scalar!r} must be a scalar's name"
                )
            if not isinstance(label, str) or not label.strip() or "\n" in label or len(label) > 40:
                raise ValueError(
                    f"analysis {self.name!r}: headline label {label!r} of {scalar!r} must be "
                    "one line of 1 to 40 characters"
                )
        object.__setattr__(self, "headline", dict(self.headline))  # a copy the caller cannot change

    def check_params(self) -> None:
        """Raise a one-line ValueError if the params class cannot be described or its
        defaults break its own rules.

        Called when the plugin registers: an analysis that fails it is disabled
        (shown by `probe plugins`) instead of failing later, on some user's run.
        """
        check_params(self.params, self.name)

    def with_provider(self, provider: str, version: str) -> Analysis:
        return dataclasses.replace(self, provider=provider, provider_version=version)

    def param_specs(self) -> list[ParamSpec]:
        return param_specs(self.params, self.name)

    def make_params(self, raw: Mapping[str, str | Any]) -> Any:
        """Parse `--param` strings (or typed values) into the params dataclass, checking each."""
        return make_params(self.params, raw, self.name, "--param")
