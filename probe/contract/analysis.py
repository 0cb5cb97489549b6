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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    "NoParams",
    "ParamSpec",
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
        "metrics",
        "config",
        "trajectory",
    }
)
SCOPES = ("epoch", "run")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Analysis:
    """One analysis a plugin provides. See docs/writing-a-plugin.md."""

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

    def check_params(self) -> None:
        """Raise a one-line ValueError if the params class cannot be described or its defaults break its own rules.

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
