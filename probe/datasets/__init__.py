"""What a data-set plugin builds on: the public API of probe's image data sets.

    from probe import datasets

    def load(data, quiet):
        root = datasets.data_dir(data, HINT)    # `--data` as a folder, or one --data line
        key = datasets.files_key("mine", root, [root / "train.bin"])
        t = datasets.cached(f"mine-{key}", CLASSES, lambda: decode(root), shape=(1, 28, 28))
        return datasets.Dataset(**t, classes=CLASSES, source=str(root), mean=(0.5,), std=(0.25,))

The records: `DataSource` (what a plugin registers) and `Augmentation`. The data:
`Dataset` (uint8 images and int64 labels per split), the sealed cache (`cached`,
or `read_cache`/`write_cache` for a file a plugin names itself, in `cache_dir()`),
`normalize` and `augment` (batch-wise, on the device), `load_dataset` (an installed
data set by name). Untrusted files: `open_file`, `read_file`, `files_key`,
`find_file`, `data_dir`, `download` (the checked download), `has_class_folders`,
`load_class_folders`, `release_folders`, `IMAGE_EXTENSIONS`. CIFAR-10's constants:
`CIFAR10_CLASSES`, `CIFAR10_MEAN`, `CIFAR10_STD`, `CIFAR10_INPUT`.

`import probe.datasets` imports no torch (a plugin imports it when it registers);
the names that need torch load it when first used. docs/writing-a-plugin.md, "A data
set", is the guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from probe.contract.cifar10 import CIFAR10_CLASSES, CIFAR10_INPUT, CIFAR10_MEAN, CIFAR10_STD
from probe.contract.datasets import Augmentation, DataSource
from probe.datasets.files import (
    IMAGE_EXTENSIONS,
    data_dir,
    download,
    files_key,
    find_file,
    has_class_folders,
    load_class_folders,
    open_file,
    read_file,
    release_folders,
)

if TYPE_CHECKING:
    from probe.datasets.tensors import (
        Dataset,
        augment,
        cache_dir,
        cached,
        load_dataset,
        normalize,
        read_cache,
        write_cache,
    )

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_INPUT",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "DataSource",
    "data_dir",
    "download",
    "files_key",
    "find_file",
    "has_class_folders",
    "load_class_folders",
    "open_file",
    "read_file",
    "release_folders",
    # in probe.datasets.tensors, which imports torch: loaded on first use (__getattr__)
    "Dataset",
    "augment",
    "cache_dir",
    "cached",
    "load_dataset",
    "normalize",
    "read_cache",
    "write_cache",
]


def __getattr__(name: str) -> Any:
    if name in __all__:  # a name not defined above: one of probe.datasets.tensors
        from probe.datasets import tensors  # torch

        return getattr(tensors, name)
    raise AttributeError(f"module 'probe.datasets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
