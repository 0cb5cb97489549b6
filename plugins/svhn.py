"""`svhn`: Street View House Numbers (cropped digits), 32x32 colour, 73,257 training, 26,032 test.

Read from the release's train_32x32.mat and test_32x32.mat (MATLAB v5 files:
`X` uint8 [32, 32, 3, N] and `y` [N, 1] with labels 1..10, where 10 is the digit
0) with scipy.io.loadmat, which parses the MATLAB format and never unpickles.
The shapes are checked from the file's headers (scipy.io.whosmat) before the
arrays are read. The "extra" split is not used.

Without --data the two files are fetched with torchvision's checked downloader
(torchvision's URLs and md5 sums) into <cache>/svhn/. With --data DIR: the two .mat
files in DIR, or train/ and test/ class folders of 32x32 images named 0..9.

Default augmentation: random crops with 4 pixels of padding, no flips (a mirrored
digit is not the same digit).
"""

from __future__ import annotations

from pathlib import Path

import probe
from probe import datasets

FILES = {
    "train": (
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "train_32x32.mat",
        "e26dedcc434d2e4c54c9b2d4a06d8373",
    ),
    "test": (
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        "test_32x32.mat",
        "eb5a983be6a315427106f1b164d9cef3",
    ),
}
CLASSES = tuple(str(i) for i in range(10))
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)
MAX_MAT_BYTES = 1 << 30  # train_32x32.mat is 182 MB
MAX_ITEMS = 1_000_000  # the extra split, the largest, has 531,131
NUMERIC = {
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "double",
    "single",
}
HINT = "pass --data DIR with train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/"


def read_mat(path: Path):
    """Images [N, 3, 32, 32] uint8 and labels [N] int64 (10 -> 0) from one SVHN .mat file."""
    import numpy as np
    import scipy.io
    import torch

    with datasets.open_file(path, MAX_MAT_BYTES) as fh:
        try:
            listed = scipy.io.whosmat(fh)
            fh.seek(0)
            names = [name for name, _, _ in listed]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # loadmat would load the first, the header check would see the last
                raise probe.RunFileError(
                    path, f"holds variable {twice[0]} twice; not an SVHN file (format 2)"
                )
            head = {name: (shape, cls) for name, shape, cls in listed}
            if "X" not in head or "y" not in head:
                raise probe.RunFileError(
                    path, f"holds variables {sorted(head)[:6]}, expected X and y (SVHN format 2)"
                )
            xs, ys = tuple(head["X"][0]), tuple(head["y"][0])
            n = xs[3] if len(xs) == 4 else -1
            if len(xs) != 4 or xs[:3] != (32, 32, 3) or not 1 <= n <= MAX_ITEMS:
                raise probe.RunFileError(
                    path, f"X has shape {list(xs)}, expected [32, 32, 3, N] with N <= {MAX_ITEMS:,}"
                )
            if ys not in ((n, 1), (1, n), (n,)):
                raise probe.RunFileError(path, f"y has shape {list(ys)}, expected [{n}, 1]")
            if head["X"][1] != "uint8" or head["y"][1] not in NUMERIC:
                raise probe.RunFileError(
                    path,
                    f"X is a MATLAB {head['X'][1]} array and y a {head['y'][1]}, expected "
                    "uint8 and a numeric array",
                )
            mat = scipy.io.loadmat(fh, variable_names=["X", "y"])
        except probe.RunFileError:
            raise
        except NotImplementedError:  # scipy's word for a v7.3 (HDF5) file
            raise probe.RunFileError(
                path, "is a MATLAB v7.3 (HDF5) file; SVHN's release files are MATLAB v5"
            ) from None
        except (
            Exception
        ) as exc:  # scipy raises ValueError, TypeError, MatReadError ... for a damaged file
            why = (str(exc).splitlines() or [""])[0][:160] or type(exc).__name__
            raise probe.RunFileError(path, f"is not a readable MATLAB file ({why})") from None
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.shape != (32, 32, 3, n) or x.dtype != np.uint8:
        raise probe.RunFileError(
            path, f"X is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, {n}]"
        )
    if y.shape != (n,) or y.dtype.kind not in "uif":
        raise probe.RunFileError(path, f"y is {y.dtype} {list(y.shape)}, expected {n} labels")
    if not np.all((y >= 1) & (y <= 10) & (y == np.round(y))):
        bad = y[~((y >= 1) & (y <= 10) & (y == np.round(y)))][0]
        raise probe.RunFileError(
            path, f"holds label {bad}, not in 1..10 (SVHN writes the digit 0 as 10)"
        )
    labels = y.astype(np.int64) % 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]
    return torch.from_numpy(images), torch.from_numpy(labels)


def _tensors(files: dict[str, Path]) -> dict:
    out = {}
    for split, path in files.items():
        out[f"{split}_x"], out[f"{split}_y"] = read_mat(path)
    return out


def load(data: str | None, quiet: bool = False):
    """SVHN from `data` (the two .mat files, or class folders) or the checked download."""
    shape = (3, 32, 32)
    if data is None:
        root = datasets.cache_dir() / "svhn"

        def fetch() -> dict:
            return _tensors(
                {
                    split: datasets.download(
                        url, root, name, md5, what=f"SVHN {name}", hint=HINT, quiet=quiet
                    )
                    for split, (url, name, md5) in FILES.items()
                }
            )

        tensors = datasets.cached("svhn", CLASSES, fetch, shape)
        source = "download:http://ufldl.stanford.edu/housenumbers/"
    else:
        root = datasets.data_dir(data, HINT)
        files = {split: root / name for split, (_, name, _) in FILES.items()}
        if all(p.is_file() for p in files.values()):
            key = datasets.files_key("svhn", root, list(files.values()))
            tensors = datasets.cached(f"svhn-{key}", CLASSES, lambda: _tensors(files), shape)
        else:
            tensors = datasets.release_folders(
                root,
                neither="train_32x32.mat and test_32x32.mat",
                hint=HINT,
                name="svhn-folder",
                quiet=quiet,
                shape=shape,
                classes=CLASSES,
                what="SVHN",
            )
        source = str(root.resolve())
    return datasets.Dataset(
        **tensors,
        classes=CLASSES,
        source=source,
        mean=MEAN,
        std=STD,
        augmentation=probe.Augmentation(pad=4, flip=False),
    )


@probe.hookimpl
def register_datasets(register):
    register(
        probe.DataSource(
            name="svhn",
            load=load,
            summary="SVHN cropped house-number digits: 32x32 colour, 10 classes, "
            "73,257 + 26,032 images",
        )
    )
