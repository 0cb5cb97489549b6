"""`folder`: any image data set laid out as class folders.

`--data DIR` with DIR/train/<class>/* and DIR/test/<class>/*.

`val/` is accepted instead of `test/`; train/ and test/ must hold the same class
folders, each with at least one image. The class names are the folder names,
sorted. Images may have any size and channel count, but one per data set: the
first training image decides the size, and its mode the channels (L: 1, RGB: 3,
RGBA: 4; any other mode is converted to RGB, and later images to the first one's
mode). An image of another size is one error naming it, because resizing silently
would change what the network sees.

The normalisation is computed by probe on the training subset (mean/std None);
the default augmentation is a random crop with max(1, side // 8) pixels of padding
(4 for 32x32, as CIFAR) and horizontal flips. Decoded once, then cached under a
key over the listing (names, sizes, mtimes), so a changed folder is decoded again.
"""

from __future__ import annotations

import probe
from probe import datasets

LAYOUT = "DIR/train/<class>/<image> and DIR/test/<class>/<image> (or val/ for test/)"


def load(data: str | None, quiet: bool = False):
    """The data set in the class folders of `data` (required)."""
    if data is None:
        raise probe.UsageError("--data", f"the folder data set needs --data DIR with {LAYOUT}")
    root = datasets.data_dir(data, f"expected {LAYOUT}")
    tensors, classes = datasets.load_class_folders(root, name="imagefolder", quiet=quiet)
    _, _, h, w = tensors["train_x"].shape
    return datasets.Dataset(
        **tensors,
        classes=classes,
        source=f"folder:{root.resolve()}",
        mean=None,
        std=None,
        augmentation=probe.Augmentation(pad=max(1, min(h, w) // 8), flip=True),
    )


@probe.hookimpl
def register_datasets(register):
    register(
        probe.DataSource(
            name="folder",
            load=load,
            summary="Any image data set in class folders: --data DIR with DIR/train/<class>/* "
            "and DIR/test/<class>/*",
        )
    )
