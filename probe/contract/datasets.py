"""Finding an installed image data set by name (`get_source`), and the data-set records.

What a data-set plugin registers, `DataSource` (with its default `Augmentation`),
is a record of probe.contract.records; the helpers its loader builds on (`Dataset`,
the sealed cache, checked files and downloads) are the public `probe.datasets`.
No torch import.

    @probe.hookimpl
    def register_datasets(register):
        register(probe.DataSource(name="mnist", summary="...", load=load))
"""

from __future__ import annotations

from probe.contract.records import Augmentation, DataSource
from probe.contract.registry import installed, lookup
from probe.errors import UsageError

__all__ = ["Augmentation", "DataSource", "get_source"]


def get_source(name: str, option: str = "--dataset") -> DataSource:
    """The installed data set `name`, or one UsageError naming it and the installed ones."""
    src = lookup("datasets", name)
    if src is None:
        known = ", ".join(sorted(installed("datasets"))) or "none"
        raise UsageError(
            option,
            f"unknown data set {name!r}; installed data sets: {known} (see `probe datasets`)",
        )
    return src
