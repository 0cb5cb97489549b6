"""Reading CIFAR-10: class folders, the binary release, and torchvision's checked download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from probe import datasets
from probe.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, Augmentation, Dataset
from probe.errors import ProbeError, RunFileError, UsageError

CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SHAPE = (3, 32, 32)


def load_cifar10(data: str | None, quiet: bool = False) -> Dataset:
    """Load CIFAR-10 from a folder (`data`) or torchvision's download, through the cache."""
    if data is not None:
        return _load_folder(Path(data), quiet=quiet)
    return _load_download(quiet=quiet)


# --- a folder of class folders ----------------------------------------------------------


def _list_split(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = [
        sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for c in classes
    ]
    return classes, files


def _folder_key(root: Path, listing: dict[str, list[list[Path]]]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for split, files in sorted(listing.items()):
        for cls_files in files:
            for p in cls_files:
                st = p.stat()
                h.update(f"{split}/{p.parent.name}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _decode(paths: list[Path]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError  # only when a folder is decoded

    out = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                img = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise ProbeError(f"{p}: cannot decode image ({exc})") from None
        if img.shape != (32, 32, 3):
            raise ProbeError(f"{p}: expected a 32x32 image, got {img.shape[1]}x{img.shape[0]}")
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _load_folder(root: Path, *, quiet: bool) -> Dataset:
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UsageError(
                "--data",
                f"{root / split} is not a directory; expected {root}/train/<class>/*.jpg and "
                f"{root}/test/<class>/*.jpg",
            )
    listing, classes = {}, None
    for split in ("train", "test"):
        cls, files = _list_split(root / split)
        if classes is not None and cls != classes:
            raise UsageError("--data", f"{root}: train/ and test/ have different class folders")
        if not cls or not any(files):
            raise UsageError("--data", f"{root / split} holds no class folders with images")
        classes, listing[split] = cls, files

    def decode() -> dict[str, torch.Tensor]:
        tensors = {}
        for split in ("train", "test"):
            paths = [p for cls_files in listing[split] for p in cls_files]
            labels = [i for i, cls_files in enumerate(listing[split]) for _ in cls_files]
            if not quiet:
                print(
                    f"decoding {len(paths)} {split} images from {root / split} "
                    f"(once; cached in {datasets.cache_dir()})"
                )
            tensors[f"{split}_x"] = _decode(paths)
            tensors[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
        return tensors

    key = _folder_key(root, listing)
    tensors = datasets.cached(f"folder-{key}", tuple(classes), decode, SHAPE)
    return _with_norm(Dataset(**tensors, classes=tuple(classes), source=str(root)))


# --- torchvision's download -----------------------------------------------------------------


def _read_cifar_binary(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse CIFAR-10's binary format: records of 1 label byte + 3,072 pixel bytes (CHW)."""
    # in probe's cache folder, never trusted: no links followed; a batch is 30.7 MB
    raw = np.frombuffer(datasets.read_file(path, 64 << 20, follow_links=False), dtype=np.uint8)
    if raw.size % 3073 or not raw.size:
        raise RunFileError(
            path, f"not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)"
        )
    rec = raw.reshape(-1, 3073)
    if int(rec[:, 0].max()) > 9:
        raise RunFileError(
            path, f"not a CIFAR-10 binary batch (label {int(rec[:, 0].max())} is not in 0..9)"
        )
    y = torch.from_numpy(rec[:, 0].astype(np.int64))
    x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy())
    return x, y


def read_binary_dir(folder: Path) -> dict[str, torch.Tensor]:
    """Read `data_batch_1..5.bin` and `test_batch.bin` of an extracted CIFAR-10 binary archive."""
    parts = [_read_cifar_binary(folder / f"data_batch_{i}.bin") for i in range(1, 6)]
    test_x, test_y = _read_cifar_binary(folder / "test_batch.bin")
    return {
        "train_x": torch.cat([p[0] for p in parts]),
        "train_y": torch.cat([p[1] for p in parts]),
        "test_x": test_x,
        "test_y": test_y,
    }


def _load_download(*, quiet: bool) -> Dataset:
    """Download CIFAR-10 with torchvision's checked downloader.

    The binary release is used rather than the python one, because the python
    release is a set of pickles and probe never unpickles a file.
    """
    root = datasets.cache_dir() / "cifar10"

    def fetch() -> dict[str, torch.Tensor]:
        folder = root / "cifar-10-batches-bin"
        if not (folder / "test_batch.bin").exists():
            # torchvision only when there is something to download
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                download_and_extract_archive(CIFAR10_BINARY_URL, str(root), md5=CIFAR10_BINARY_MD5)
            except Exception as exc:  # network errors come in many types
                raise ProbeError(
                    f"could not download CIFAR-10 ({type(exc).__name__}: {exc}); point --data or "
                    "$PROBE_DATA at a local copy laid out as DIR/train/<class>/*.jpg and "
                    "DIR/test/<class>/*.jpg"
                ) from None
        return read_binary_dir(folder)

    tensors = datasets.cached("cifar10-binary", CIFAR10_CLASSES, fetch, SHAPE)
    return _with_norm(
        Dataset(**tensors, classes=CIFAR10_CLASSES, source="torchvision:cifar-10-binary")
    )


def _with_norm(ds: Dataset) -> Dataset:
    """CIFAR-10's per-channel mean and std, and the notebook's augmentation (crop, flip)."""
    ds.mean, ds.std, ds.augmentation = CIFAR10_MEAN, CIFAR10_STD, Augmentation(pad=4, flip=True)
    return ds
