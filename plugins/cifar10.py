"""The `cifar10` data set: CIFAR-10 from class folders or torchvision's checked download.

`--data DIR` reads DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg (32x32 RGB;
the layout of ../shared/data/cifar10); without it the binary release is
downloaded with torchvision's checked downloader. The python release is a set of
pickles, and probe never unpickles a file, so it is never used. Either way the
decoded tensors are cached (`probe.datasets.cached`), so later runs start in seconds.
The network code this module needs is imported inside the loader: registering
the data set imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import probe

if TYPE_CHECKING:
    from probe.datasets import Dataset


@probe.hookimpl
def register_datasets(register):
    register(
        probe.DataSource(
            name="cifar10",
            load=_load,
            summary="CIFAR-10: 50,000 + 10,000 32x32 colour images of 10 classes "
            "(probe's default data set).",
        )
    )


def _load(data: str | None, quiet: bool) -> Dataset:
    from probe_plugins import _cifar10_files as cifar10_files

    return cifar10_files.load_cifar10(data, quiet)
