"""CIFAR-10 as uint8 tensors held in memory, and batch-wise augmentation on the device.

Images are decoded once (from torchvision's download or from a folder of class
folders) and cached as a safetensors file, so every later run starts in seconds.
Training then never touches a DataLoader: a batch is an index into a tensor, and
random crop + flip + normalisation run on the whole batch on the training device.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import atomic, safeio
from .datasets import Augmentation
from .errors import ProbeError, RunFileError, UsageError

CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Dataset:
    """The two splits as uint8 NCHW images and int64 labels, plus where they came from.

    `mean`/`std`: the per-channel normalisation on the [0, 1] scale (None: computed on
    the training subset by `probe train`). `augmentation`: the default batch-wise
    training augmentation (None: none); `--no-augment` turns it off.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augmentation: Augmentation | None = field(default_factory=Augmentation)


def cache_dir() -> Path:
    return Path(os.environ.get("PROBE_CACHE", Path.home() / ".cache" / "probe"))


def resolve_data(data: str | None) -> str | None:
    """`--data`, else $PROBE_DATA, else None (download through torchvision)."""
    return data or os.environ.get("PROBE_DATA") or None


def load_cifar10(data: str | None, *, quiet: bool = False) -> Dataset:
    """Load CIFAR-10 from a folder (`data`) or torchvision's download, through the cache."""
    data = resolve_data(data)
    if data is not None:
        return _load_folder(Path(data), quiet=quiet)
    return _load_download(quiet=quiet)


# --- a folder of class folders ----------------------------------------------------------

def _list_split(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = [sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) for c in classes]
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
    from PIL import Image, UnidentifiedImageError

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
            raise UsageError("--data", f"{root / split} is not a directory; expected {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg")
    listing, classes = {}, None
    for split in ("train", "test"):
        cls, files = _list_split(root / split)
        if classes is not None and cls != classes:
            raise UsageError("--data", f"{root}: train/ and test/ have different class folders")
        if not cls or not any(files):
            raise UsageError("--data", f"{root / split} holds no class folders with images")
        classes, listing[split] = cls, files
    key = _folder_key(root, listing)
    cached = cache_dir() / f"folder-{key}.safetensors"
    ds = _read_cache(cached, tuple(classes), str(root))
    if ds is not None:
        return ds
    tensors = {}
    for split in ("train", "test"):
        paths = [p for cls_files in listing[split] for p in cls_files]
        labels = [i for i, cls_files in enumerate(listing[split]) for _ in cls_files]
        if not quiet:
            print(f"decoding {len(paths)} {split} images from {root / split} (once; cached in {cache_dir()})")
        tensors[f"{split}_x"] = _decode(paths)
        tensors[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    _write_cache(cached, tensors, tuple(classes))
    return Dataset(**tensors, classes=tuple(classes), source=str(root))


# --- torchvision's download -----------------------------------------------------------------

def _read_cifar_binary(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse CIFAR-10's binary format: records of 1 label byte + 3,072 pixel bytes (CHW)."""
    raw = np.frombuffer(safeio.read_bytes(path, 64 << 20), dtype=np.uint8)  # a batch is 30.7 MB
    if raw.size % 3073 or not raw.size:
        raise RunFileError(path, f"not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
    rec = raw.reshape(-1, 3073)
    if int(rec[:, 0].max()) > 9:
        raise RunFileError(path, f"not a CIFAR-10 binary batch (label {int(rec[:, 0].max())} is not in 0..9)")
    y = torch.from_numpy(rec[:, 0].astype(np.int64))
    x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy())
    return x, y


def read_binary_dir(folder: Path) -> dict[str, torch.Tensor]:
    """Read `data_batch_1..5.bin` and `test_batch.bin` of an extracted CIFAR-10 binary archive."""
    parts = [_read_cifar_binary(folder / f"data_batch_{i}.bin") for i in range(1, 6)]
    test_x, test_y = _read_cifar_binary(folder / "test_batch.bin")
    return {
        "train_x": torch.cat([p[0] for p in parts]), "train_y": torch.cat([p[1] for p in parts]),
        "test_x": test_x, "test_y": test_y,
    }


def _load_download(*, quiet: bool) -> Dataset:
    """Download CIFAR-10 with torchvision's checked downloader.

    The binary release is used rather than the python one, because the python
    release is a set of pickles and probe never unpickles a file.
    """
    from .model import CIFAR10_CLASSES

    root = cache_dir() / "cifar10"
    cached = cache_dir() / "cifar10-binary.safetensors"
    ds = _read_cache(cached, CIFAR10_CLASSES, "torchvision:cifar-10-binary")
    if ds is not None:
        return ds
    folder = root / "cifar-10-batches-bin"
    if not (folder / "test_batch.bin").exists():
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10_BINARY_URL, str(root), md5=CIFAR10_BINARY_MD5)
        except Exception as exc:  # network errors come in many types
            raise ProbeError(
                f"could not download CIFAR-10 ({type(exc).__name__}: {exc}); point --data or $PROBE_DATA at a local "
                "copy laid out as DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg"
            ) from None
    tensors = read_binary_dir(folder)
    _write_cache(cached, tensors, CIFAR10_CLASSES)
    return Dataset(**tensors, classes=CIFAR10_CLASSES, source="torchvision:cifar-10-binary")


# --- the decoded cache ------------------------------------------------------------------------

CACHE_FORMAT = "probe-data-cache/1"


def _digest(tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> str:
    """SHA-256 over the classes and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(list(classes)).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


MAX_CHANNELS = 4  # grey, RGB, RGBA: what an image file holds
MAX_SIDE = 4096


def check_cache(path: Path, t: dict[str, torch.Tensor], meta: dict[str, str], classes: tuple[str, ...],
                shape: tuple[int, int, int] | None = None) -> None:
    """Raise RunFileError unless the cache holds what `_write_cache` wrote for these classes.

    The cache folder is untrusted ($PROBE_CACHE may be shared or tampered with):
    the format, the class list, images uint8 [N, C, H, W] of one shape in both
    splits (C <= 4, sides <= 4096), labels int64 [N] in 0..classes-1, and the checksum
    recorded at write time are all checked; `shape` (C, H, W), when given, is the
    one shape the data set has.
    """
    if meta.get("format") != CACHE_FORMAT:
        raise RunFileError(path, f"not a probe data cache (format {meta.get('format')!r})")
    if meta.get("classes") != ",".join(classes):
        raise RunFileError(path, f"holds classes {meta.get('classes', '')[:80]!r}, expected {','.join(classes)[:80]!r}")
    if set(t) != {"train_x", "train_y", "test_x", "test_y"}:
        raise RunFileError(path, f"holds tensors {sorted(t)[:6]}, expected train_x, train_y, test_x, test_y")
    want_shape = shape
    for split in ("train", "test"):
        x, y = t[f"{split}_x"], t[f"{split}_y"]
        shape = want_shape
        ok = (x.dtype == torch.uint8 and x.dim() == 4 and x.shape[0] >= 1 and 1 <= x.shape[1] <= MAX_CHANNELS
              and 1 <= x.shape[2] <= MAX_SIDE and 1 <= x.shape[3] <= MAX_SIDE)
        if not ok or (shape is not None and tuple(x.shape[1:]) != shape):
            want = "[N, C, H, W] (C <= 4)" if shape is None else f"[N, {', '.join(map(str, shape))}]"
            raise RunFileError(path, f"{split}_x must be uint8 {want}, got {x.dtype} {list(x.shape)}")
        want_shape = tuple(x.shape[1:])
        if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise RunFileError(path, f"{split}_y must be int64 [{x.shape[0]}], got {y.dtype} {list(y.shape)}")
        if bool(((y < 0) | (y >= len(classes))).any()):
            raise RunFileError(path, f"{split}_y holds labels outside 0..{len(classes) - 1}")
    if meta.get("content_sha256") != _digest(t, classes):
        raise RunFileError(path, "checksum mismatch (the cache was changed after probe wrote it)")


def cached(name: str, classes: tuple[str, ...], make: Callable[[], dict[str, torch.Tensor]],
           shape: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """`train_x`, `train_y`, `test_x`, `test_y` from the cache file `<cache>/<name>.safetensors`, else from `make()`.

    What `make` returns is checked like a cache file (so a loader's mistake is an
    error, not a silent run on wrong data) and then cached; a cache that fails the
    checks is rebuilt with a warning. `shape` (C, H, W): the one image shape the
    data set has, when it has one. `name` must be a plain file name.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache name {name!r} must be a plain file name")
    path = cache_dir() / f"{name}.safetensors"
    tensors = _read_cache_tensors(path, classes, shape)
    if tensors is not None:
        return tensors
    tensors = make()
    meta = {"format": CACHE_FORMAT, "classes": ",".join(classes), "content_sha256": _digest(tensors, classes)}
    check_cache(Path(f"data set {name}"), tensors, meta, classes, shape)
    _write_cache(path, tensors, classes)
    return tensors


def _read_cache(path: Path, classes: tuple[str, ...], source: str) -> Dataset | None:
    t = _read_cache_tensors(path, classes, (3, 32, 32))
    if t is None:
        return None
    return Dataset(t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes=classes, source=source)


def _read_cache_tensors(path: Path, classes: tuple[str, ...],
                        shape: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when there is none or it fails `check_cache` (then it is rebuilt, with a warning)."""
    from safetensors import safe_open

    if not path.exists() and not path.is_symlink():
        return None
    try:
        with safeio.regular_path(path) as p, safe_open(p, framework="pt") as f:
            meta = dict(f.metadata() or {})
            t = {k: f.get_tensor(k) for k in f.keys()}
        check_cache(path, t, meta, classes, shape)
        return t
    except RunFileError as exc:
        why = str(exc)
    except Exception as exc:  # safetensors raises several types for a damaged header
        why = f"{path}: not a readable cache ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})"
    print(f"warning: {why}; ignoring it and rebuilding the cache", file=sys.stderr)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)  # a damaged or tampered cache is rebuilt, never trusted
    return None


def _write_cache(path: Path, tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> None:
    from safetensors.torch import save_file

    meta = {"format": CACHE_FORMAT, "classes": ",".join(classes), "content_sha256": _digest(tensors, classes)}
    try:
        atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except ProbeError:
        pass  # no cache (read-only home, full disk) only costs time next run


# --- selections and batches --------------------------------------------------------------------

def train_subset(ds: Dataset, size: int, seed: int) -> torch.Tensor:
    """Indices of a seeded random training subset (size 0 or >= len = all, in order)."""
    n = ds.train_x.shape[0]
    if size <= 0 or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def stratified(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """A class-stratified, seeded selection of `size` indices (equal share per class)."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per = size // len(classes)
    extra = size - per * len(classes)
    picks = []
    for i, c in enumerate(classes.tolist()):
        idx = (labels == c).nonzero().flatten()
        take = per + (1 if i < extra else 0)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:take]].sort().values)
    return torch.cat(picks)


def normalize(x_uint8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW -> float32, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=x_uint8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x_uint8.device).view(1, -1, 1, 1)
    return (x_uint8.float().div_(255.0) - m) / s


def augment(x_uint8: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch.

    The random numbers come from `gen` (a CPU generator whose state is saved in
    each checkpoint), so augmentation is identical on CPU and CUDA and after resume.
    """
    b, _, h, w = x_uint8.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x_uint8.device)
    flips = (torch.rand(b, generator=gen) < 0.5).to(x_uint8.device)
    padded = F.pad(x_uint8, (pad, pad, pad, pad))
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=x_uint8.device)).view(b, 1, h, 1)
    cols = offsets[1].view(b, 1) + torch.arange(w, device=x_uint8.device)
    cols = torch.where(flips.view(b, 1), cols.flip(1), cols).view(b, 1, 1, w)
    bidx = torch.arange(b, device=x_uint8.device).view(b, 1, 1, 1)
    cidx = torch.arange(x_uint8.shape[1], device=x_uint8.device).view(1, -1, 1, 1)
    return padded[bidx, cidx, rows, cols]
