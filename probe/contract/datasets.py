"""Image data sets: what a data-set plugin registers. No torch import (registration is cheap).

A data set is a name and a loader `load(data, quiet) -> probe.datasets.tensors.Dataset`: uint8
images [N, C, H, W] and int64 labels per split, the class names, the per-channel
normalisation (None: computed on the training subset) and the default
augmentation. `data` is the user's `--data DIR` (a local copy), or None to fetch the
data set (with a checked download) or fail with one line saying where to put it.

    @probe.hookimpl
    def register_datasets(register):
        register(probe.DataSource(name="mnist", summary="...", load=load))

Loaders decode once and keep the tensors in probe's cache (`probe.datasets.tensors.cached`), so
the second run starts in seconds; nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Augmentation:
    """Batch-wise training augmentation: random crop with `pad` pixels of zero padding, and horizontal flips."""

    pad: int = 4
    flip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"pad": self.pad, "flip": self.flip}


@dataclass(frozen=True)
class DataSource:
    """An image data set a plugin provides. See docs/writing-a-plugin.md, "Data sets"."""

    name: str
    load: Callable[[str | None, bool], Any]
    summary: str
    version: str = "1"
    provider: str = ""
    provider_version: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"data set name {self.name!r} must be lower-case letters, digits, '-' or '_'"
            )
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"data set {self.name!r}: summary must be one line")
        if not isinstance(self.version, str) or not self.version.strip():
            raise ValueError(f"data set {self.name!r}: version must be a non-empty str")
        if not callable(self.load):
            raise ValueError(f"data set {self.name!r}: load must be callable")

    def with_provider(self, provider: str, version: str) -> DataSource:
        return dataclasses.replace(self, provider=provider, provider_version=version)


def get_source(name: str, option: str = "--dataset") -> DataSource:
    """The installed data set `name`, or one UsageError naming it and the installed ones."""
    from probe.contract.registry import installed, lookup
    from probe.errors import UsageError

    src = lookup("datasets", name)
    if src is None:
        known = ", ".join(sorted(installed("datasets"))) or "none"
        raise UsageError(
            option,
            f"unknown data set {name!r}; installed data sets: {known} (see `probe datasets`)",
        )
    return src
