"""`mnist` and `fashion-mnist`: 28x28 grey images in 10 classes, 60,000 to train and 10,000 to test.

Read from the IDX files of the original releases (train-images-idx3-ubyte.gz and
so on), parsed here: a big-endian header (magic 0x00000803 for images, 0x00000801
for labels, then the dimensions) and the raw uint8 payload, gzip-compressed or not.
Every count in a header is bounded before anything is allocated, and the payload
must be exactly what the header declares. torchvision's processed .pt files are
never read (loading them would mean unpickling).

Without --data the files are fetched with torchvision's checked downloader (the
mirrors and md5 sums torchvision uses) into <cache>/<name>/. With --data DIR, the
four files are read from DIR (or DIR/raw, DIR/MNIST/raw, DIR/FashionMNIST/raw, as
torchvision lays them out), .gz or extracted; or DIR holds train/ and test/ class
folders of 28x28 images named by class or label number.

Default augmentation:
- MNIST: random crops with 2 pixels of padding, no flips. The digits are
  size-normalised into a 20x20 box centred in the 28x28 image, so a shift of up
  to 2 pixels never cuts a stroke, and it is the mild regulariser usual for
  MNIST CNNs. A mirrored digit is not the same digit (or no digit), so no flips.
- Fashion-MNIST: random crops with 2 pixels of padding and horizontal flips: the
  garments are photographed upright, and a mirrored shoe or shirt is the same class.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import probe
from probe import datasets

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
MAX_ITEMS = 1_000_000  # MNIST has 60,000 training images; EMNIST-sized sets fit too
MAX_FILE_BYTES = 1 << 30
SIDE = 28

MNIST = {
    "name": "mnist",
    "title": "MNIST",
    "torchvision": "MNIST",
    "mirrors": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "md5": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "classes": tuple(str(i) for i in range(10)),
    "mean": (0.1307,),
    "std": (0.3081,),
    "augmentation": probe.Augmentation(pad=2, flip=False),
}
FASHION = {
    "name": "fashion-mnist",
    "title": "Fashion-MNIST",
    "torchvision": "FashionMNIST",
    "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "md5": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "classes": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mean": (0.2860,),
    "std": (0.3530,),
    "augmentation": probe.Augmentation(pad=2, flip=True),
}
# (split, images file, labels file), without ".gz"
FILES = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def _hint(spec: dict) -> str:
    names = ", ".join(f"{f}.gz" for _, *fs in FILES for f in fs)
    return f"pass --data DIR with the {spec['title']} files ({names})"


def _read(fh, n: int, path: Path) -> bytes:
    """Up to `n` bytes; a damaged gzip stream is one RunFileError."""
    try:
        return fh.read(n)
    except (
        OSError,
        EOFError,
        zlib.error,
    ) as exc:  # gzip.BadGzipFile is an OSError; a cut stream an EOFError
        why = (str(exc).splitlines() or [""])[0][:120] or "cut short"
        raise probe.RunFileError(
            path, f"is not a valid gzip stream ({type(exc).__name__}: {why})"
        ) from None


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    data = _read(fh, n + 1, path)
    if len(data) < n:
        raise probe.RunFileError(
            path, f"is truncated: {what} take {n:,} bytes, the file holds {len(data):,}"
        )
    if len(data) > n:
        raise probe.RunFileError(
            path, f"holds more data than {what} (the header does not match the file)"
        )
    return data


def read_idx(path: Path, magic: int, max_items: int = MAX_ITEMS, side: int = SIDE):
    """A uint8 IDX file as numpy: images [N, side, side] (magic 0x803) or labels [N] (magic 0x801).

    gzip-compressed files (told by their first two bytes, not their name) are read
    through a bounded stream, so neither a crafted header nor a gzip bomb can make
    probe allocate more than `max_items` images.
    """
    import numpy as np

    with datasets.open_file(path, MAX_FILE_BYTES) as raw:
        head = raw.read(2)
        raw.seek(0)
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw
        ndim, kind = magic & 0xFF, ("images" if magic == IMAGES_MAGIC else "labels")
        header = _read(fh, 4 + 4 * ndim, path)
        if len(header) < 4 or struct.unpack(">I", header[:4])[0] != magic:
            got = f"0x{struct.unpack('>I', header[:4])[0]:08x}" if len(header) >= 4 else "no header"
            raise probe.RunFileError(
                path, f"is not an IDX {kind} file (magic {got}, expected 0x{magic:08x})"
            )
        if len(header) < 4 + 4 * ndim:
            raise probe.RunFileError(path, "is truncated inside the IDX header")
        dims = struct.unpack(f">{ndim}I", header[4:])
        n = dims[0]
        if n > max_items or n == 0:
            raise probe.RunFileError(path, f"declares {n:,} {kind}; probe reads 1 to {max_items:,}")
        if ndim == 3 and dims[1:] != (side, side):
            raise probe.RunFileError(
                path, f"holds {dims[2]}x{dims[1]} images, expected {side}x{side}"
            )
        item = side * side if ndim == 3 else 1
        payload = _read_exact(fh, n * item, path, f"the {n:,} {kind} its header declares")
    arr = np.frombuffer(payload, dtype=np.uint8)
    return arr.reshape(n, side, side).copy() if ndim == 3 else arr.copy()


def read_split(images: Path, labels: Path, classes: int):
    """Images [N, 1, 28, 28] uint8, labels [N] int64 from a pair of IDX files, checked together."""
    import numpy as np
    import torch

    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if len(x) != len(y):
        raise probe.RunFileError(
            labels, f"holds {len(y):,} labels, but {images.name} holds {len(x):,} images"
        )
    if int(y.max()) >= classes:
        raise probe.RunFileError(labels, f"holds label {int(y.max())}, not in 0..{classes - 1}")
    return torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(y.astype(np.int64))


def _release_files(dirs: list[Path]) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files (.gz or not, '-idx' or '.idx' in the name) found in `dirs`, or None."""
    found = {}
    for split, img, lab in FILES:
        pair = []
        for base in (img, lab):
            dotted = base.replace("-idx", ".idx")
            p = datasets.find_file(dirs, [base, f"{base}.gz", dotted, f"{dotted}.gz"])
            if p is None:
                return None
            pair.append(p)
        found[split] = (pair[0], pair[1])
    return found


def _tensors(files: dict[str, tuple[Path, Path]], classes: int) -> dict:
    out = {}
    for split, (img, lab) in files.items():
        out[f"{split}_x"], out[f"{split}_y"] = read_split(img, lab, classes)
    return out


def _load(spec: dict, data: str | None, quiet: bool):
    classes = spec["classes"]
    shape = (1, SIDE, SIDE)
    if data is None:
        root = datasets.cache_dir() / spec["name"]

        def fetch() -> dict:
            files = {}
            for split, img, lab in FILES:
                files[split] = tuple(
                    datasets.download(
                        [m + f"{b}.gz" for m in spec["mirrors"]],
                        root,
                        f"{b}.gz",
                        spec["md5"][f"{b}.gz"],
                        what=f"{spec['title']} {b}.gz",
                        hint=_hint(spec),
                        quiet=quiet,
                    )
                    for b in (img, lab)
                )
            return _tensors(files, len(classes))

        tensors = datasets.cached(spec["name"], classes, fetch, shape)
        source = f"download:{spec['mirrors'][0]}"
    else:
        root = datasets.data_dir(data, _hint(spec))
        dirs = [root, root / "raw", root / spec["torchvision"] / "raw"]
        release = _release_files(dirs)
        if release is not None:
            paths = [p for pair in release.values() for p in pair]
            key = datasets.files_key(spec["name"], root, paths)
            tensors = datasets.cached(
                f"{spec['name']}-{key}", classes, lambda: _tensors(release, len(classes)), shape
            )
        else:
            tensors = datasets.release_folders(
                root,
                neither=f"the {spec['title']} IDX files",
                hint=_hint(spec),
                name=f"{spec['name']}-folder",
                quiet=quiet,
                shape=shape,
                classes=classes,
                what=spec["title"],
            )
        source = str(root.resolve())
    return datasets.Dataset(
        **tensors,
        classes=classes,
        source=source,
        mean=spec["mean"],
        std=spec["std"],
        augmentation=spec["augmentation"],
    )


def load_mnist(data: str | None, quiet: bool = False):
    """MNIST from `data` (IDX files or class folders) or the checked download."""
    return _load(MNIST, data, quiet)


def load_fashion_mnist(data: str | None, quiet: bool = False):
    """Fashion-MNIST from `data` (IDX files or class folders) or the checked download."""
    return _load(FASHION, data, quiet)


@probe.hookimpl
def register_datasets(register):
    register(
        probe.DataSource(
            name="mnist",
            load=load_mnist,
            summary="MNIST handwritten digits: 28x28 grey, 10 classes, 60,000 + 10,000 images",
        )
    )
    register(
        probe.DataSource(
            name="fashion-mnist",
            load=load_fashion_mnist,
            summary="Fashion-MNIST (Zalando): 28x28 grey, 10 garment classes, "
            "60,000 + 10,000 images",
        )
    )
