"""Where the data-set helpers used to live; kept so plugins written to the old docs still import.

New code imports them from `probe.datasets` (docs/writing-a-plugin.md, "Data sets").
"""

from probe.datasets.tensors import Dataset, augment, cached, normalize

__all__ = ["Dataset", "augment", "cached", "normalize"]
