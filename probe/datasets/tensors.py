"""Image data sets as uint8 tensors held in memory, and batch-wise augmentation on the device.

Data sets are plugins (the contract is probe.contract.records.DataSource; CIFAR-10 is
plugins/cifar10.py; what they build on is the public `probe.datasets`). Their images
are decoded once and cached as a sealed safetensors file (`cached`, or
`read_cache`/`write_cache` for a plugin that names its own file), so every later run
starts in seconds.
Training then never touches a DataLoader: a batch is an index into a tensor, and
random crop + flip + normalisation run on the whole batch on the training device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from probe.contract.datasets import Augmentation, get_source
from probe.errors import ProbeError, RunFileError
from probe.io import atomic, safeio, userstate


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
    """`--data`, else $PROBE_DATA, else None (the data set's loader downloads it)."""
    return data or os.environ.get("PROBE_DATA") or None


def load_dataset(name: str, data: str | None, *, quiet: bool = False) -> Dataset:
    """Load the installed data set `name` (`--dataset`) from `data` (`--data`), else its download.

    For cifar10, `data` defaults to $PROBE_DATA.

    What the loader returns is checked (`check_dataset`), so a plugin's mistake is
    one error naming the data set, never a run on wrong data.
    """
    src = get_source(name)
    # $PROBE_DATA predates data sets and names a CIFAR-10 folder: offered to cifar10 only.
    ds = src.load(resolve_data(data) if name == "cifar10" else data, quiet)
    check_dataset(ds, name)
    return ds


def check_dataset(ds: Any, name: str) -> None:
    """ProbeError unless `ds` is a Dataset of uint8 [N, C, H, W] images, labels in 0..classes-1."""
    where = f"data set {name!r}"
    if not isinstance(ds, Dataset):
        raise ProbeError(
            f"{where}: its loader returned {type(ds).__name__}, not a probe.datasets.Dataset"
        )
    classes = ds.classes
    if (
        not isinstance(classes, tuple)
        or not classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ProbeError(f"{where}: classes must be a non-empty tuple of names")
    meta = {"format": CACHE_FORMAT, "classes": ",".join(classes)}
    tensors = {
        "train_x": ds.train_x,
        "train_y": ds.train_y,
        "test_x": ds.test_x,
        "test_y": ds.test_y,
    }
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ProbeError(f"{where}: train_x, train_y, test_x and test_y must be tensors")
    try:
        check_cache(Path(where), tensors, {**meta, "content_sha256": "-"}, classes)
    except RunFileError as exc:
        if "checksum" not in str(exc):
            raise ProbeError(str(exc)) from None
    c = ds.train_x.shape[1]
    for name_, v in (("mean", ds.mean), ("std", ds.std)):
        if v is not None and (
            len(v) != c or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        ):
            raise ProbeError(
                f"{where}: {name_} must hold {c} finite numbers (one per channel), got {v!r}"
            )
    if ds.std is not None and any(x <= 0 for x in ds.std):
        raise ProbeError(f"{where}: std must be positive, got {ds.std!r}")
    if ds.augmentation is not None and not isinstance(ds.augmentation, Augmentation):
        raise ProbeError(f"{where}: augmentation must be a probe.Augmentation or None")


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


def check_cache(
    path: Path,
    t: dict[str, torch.Tensor],
    meta: dict[str, str],
    classes: tuple[str, ...],
    shape: tuple[int, int, int] | None = None,
) -> None:
    """Raise RunFileError unless the cache holds what `write_cache` wrote for these classes.

    The cache folder is untrusted ($PROBE_CACHE may be shared or tampered with):
    the format, the class list, images uint8 [N, C, H, W] of one shape in both
    splits (C <= 4, sides <= 4096), labels int64 [N] in 0..classes-1, and the checksum
    recorded at write time are all checked; `shape` (C, H, W), when given, is the
    one shape the data set has.
    """
    if meta.get("format") != CACHE_FORMAT:
        raise RunFileError(path, f"not a probe data cache (format {meta.get('format')!r})")
    if meta.get("classes") != ",".join(classes):
        raise RunFileError(
            path,
            f"holds classes {meta.get('classes', '')[:80]!r}, expected {','.join(classes)[:80]!r}",
        )
    if set(t) != {"train_x", "train_y", "test_x", "test_y"}:
        raise RunFileError(
            path, f"holds tensors {sorted(t)[:6]}, expected train_x, train_y, test_x, test_y"
        )
    want_shape = shape
    for split in ("train", "test"):
        x, y = t[f"{split}_x"], t[f"{split}_y"]
        shape = want_shape
        ok = (
            x.dtype == torch.uint8
            and x.dim() == 4
            and x.shape[0] >= 1
            and 1 <= x.shape[1] <= MAX_CHANNELS
            and 1 <= x.shape[2] <= MAX_SIDE
            and 1 <= x.shape[3] <= MAX_SIDE
        )
        if not ok or (shape is not None and tuple(x.shape[1:]) != shape):
            want = (
                "[N, C, H, W] (C <= 4)" if shape is None else f"[N, {', '.join(map(str, shape))}]"
            )
            raise RunFileError(
                path, f"{split}_x must be uint8 {want}, got {x.dtype} {list(x.shape)}"
            )
        want_shape = tuple(x.shape[1:])
        if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise RunFileError(
                path, f"{split}_y must be int64 [{x.shape[0]}], got {y.dtype} {list(y.shape)}"
            )
        if bool(((y < 0) | (y >= len(classes))).any()):
            raise RunFileError(path, f"{split}_y holds labels outside 0..{len(classes) - 1}")
    if meta.get("content_sha256") != _digest(t, classes):
        raise RunFileError(path, "checksum mismatch (the cache was changed after probe wrote it)")


def cached(
    name: str,
    classes: tuple[str, ...],
    make: Callable[[], dict[str, torch.Tensor]],
    shape: tuple[int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """`train_x`, `train_y`, `test_x`, `test_y` from `<cache>/<name>.safetensors`, else `make()`.

    What `make` returns is checked like a cache file (so a loader's mistake is an
    error, not a silent run on wrong data) and then cached; a cache that fails the
    checks is rebuilt with a warning. `shape` (C, H, W): the one image shape the
    data set has, when it has one. `name` must be a plain file name.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache name {name!r} must be a plain file name")
    path = cache_dir() / f"{name}.safetensors"
    tensors = read_cache(path, classes, shape)
    if tensors is not None:
        return tensors
    tensors = make()
    meta = {
        "format": CACHE_FORMAT,
        "classes": ",".join(classes),
        "content_sha256": _digest(tensors, classes),
    }
    check_cache(Path(f"data set {name}"), tensors, meta, classes, shape)
    write_cache(path, tensors, classes)
    return tensors


def read_cache(
    path: Path, classes: tuple[str, ...], shape: tuple[int, int, int] | None = None
) -> dict[str, torch.Tensor] | None:
    """The tensors of the sealed cache file `path`; None if there is none or it fails the checks.

    A file that fails (damaged, tampered with, other classes or shape) is removed
    with a warning, so it is rebuilt: the cache folder is never trusted.
    """
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with safeio.regular_path(path) as p, safe_open(p, framework="pt") as f:
            meta = dict(f.metadata() or {})
            t = {k: f.get_tensor(k) for k in f.keys()}
        check_cache(path, t, meta, classes, shape)
        if _recorded_digest(path) != meta.get("content_sha256"):
            raise RunFileError(
                path,
                "was not written by this user's probe, or was changed and resealed since (its "
                "digest is not the one probe recorded in $PROBE_STATE)",
            )
        return t
    except RunFileError as exc:
        why = str(exc)
    except Exception as exc:  # safetensors raises several types for a damaged header
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        why = f"{path}: not a readable cache ({first})"
    print(f"warning: {why}; ignoring it and rebuilding the cache", file=sys.stderr)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)  # a damaged or tampered cache is rebuilt, never trusted
    return None


def write_cache(path: Path, tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> None:
    """Seal `tensors` (train_x, train_y, test_x, test_y) into the cache file `path`, atomically.

    The checksum over the classes and every tensor is stored with them (`read_cache`
    checks it). A write that fails (read-only home, full disk) is skipped: no cache
    only costs time next run.
    """
    meta = {
        "format": CACHE_FORMAT,
        "classes": ",".join(classes),
        "content_sha256": _digest(tensors, classes),
    }
    try:
        atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        record = _record_path(path)
        userstate.ensure_parent(record)
        atomic.write_json(
            record, {"format": "probe-cache-record/1", "sha256": meta["content_sha256"]}
        )
    except (ProbeError, OSError):
        pass  # no cache (read-only home, full disk) only costs time next run


def _record_path(path: Path) -> Path:
    return userstate.state_file("datacache", str(path.resolve()))


def _recorded_digest(path: Path) -> str | None:
    """The content digest this user's probe recorded when it wrote the cache file `path`.

    The cache folder may be shared or tampered with, and a seal inside a file is only that
    file's claim: whoever relabels a cache can recompute it. The digest of what probe wrote
    is therefore also kept in the user's own state folder (probe.io.userstate), and a cache
    is used only while the two agree."""
    try:
        d = safeio.read_json(_record_path(path), max_bytes=4096)
    except ProbeError:
        return None
    return d.get("sha256") if isinstance(d, dict) else None


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


def normalize(
    x_uint8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 NCHW -> float32, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=x_uint8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x_uint8.device).view(1, -1, 1, 1)
    return (x_uint8.float().div_(255.0) - m) / s


def augment(
    x_uint8: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with zero padding and (with `flip`) random horizontal flip, for a whole batch.

    The random numbers come from `gen` (a CPU generator whose state is saved in
    each checkpoint), so augmentation is identical on CPU and CUDA and after resume.
    """
    b, _, h, w = x_uint8.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x_uint8.device)
    # drawn either way: one random stream
    flips = (torch.rand(b, generator=gen) < 0.5).to(x_uint8.device)
    if not flip:
        flips = torch.zeros_like(flips)
    padded = F.pad(x_uint8, (pad, pad, pad, pad))
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=x_uint8.device)).view(b, 1, h, 1)
    cols = offsets[1].view(b, 1) + torch.arange(w, device=x_uint8.device)
    cols = torch.where(flips.view(b, 1), cols.flip(1), cols).view(b, 1, 1, w)
    bidx = torch.arange(b, device=x_uint8.device).view(b, 1, 1, 1)
    cidx = torch.arange(x_uint8.shape[1], device=x_uint8.device).view(1, -1, 1, 1)
    return padded[bidx, cidx, rows, cols]
