"""Reading image data sets from a user's files: checked opens, keys, downloads, class folders.

Shared by the built-in data-set plugins (`probe_plugins.cifar100`, `.mnist`, `.svhn`,
`.imagefolder`) and usable by third-party ones, through the public `probe.datasets`.
Everything here treats the files as untrusted input: a file is opened with O_NONBLOCK
and must be a regular file of a bounded size (so a FIFO or /dev/zero in `--data` is
one error, not a hang); every size a header or listing declares is bounded before
memory is allocated; and every problem is one line (`RunFileError` naming the file, or
`UsageError('--data', ...)` for a folder laid out wrongly). Links are followed: `--data`
is the user's own copy, and symlink farms of images are common.

No torch import at module level, so `import probe.datasets` costs nothing at registration.

    open_file(path, max_bytes) / read_file(path, max_bytes)
    files_key(tag, root, paths)              -> a cache key over paths, sizes and mtimes
    find_file(dirs, names)                   -> the first existing regular file
    download(urls, root, filename, md5, ...) -> the checked download, or one ProbeError line
    data_dir(data, hint)                     -> `--data` as a directory, or one UsageError
    has_class_folders(root)                  -> whether root holds train/ and test/ (or val/)
    load_class_folders(root, ...)            -> tensors and classes, decoded once (`cached`)
    release_folders(root, ...)               -> the same for a release's class folders, else
                                                one --data line
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from probe.errors import ProbeError, RunFileError, UsageError
from probe.io import safeio

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_IMAGE_FILE_BYTES = 64 << 20  # one encoded image
MAX_SIDE = 4096  # as probe.datasets.tensors.check_cache allows
MAX_CLASSES = 100_000  # as a model spec allows (probe.contract.families)
MAX_DECODED_BYTES = 16 << 30  # all decoded images of a data set, held in memory as uint8
NATIVE_MODES = {
    "L": "L",
    "1": "L",
    "RGB": "RGB",
    "RGBA": "RGBA",
}  # any other mode is converted to RGB
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
MODE_OF_CHANNELS = {c: m for m, c in CHANNELS.items()}
TEST_SPLITS = ("test", "val")


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__


def open_file(path: str | Path, max_bytes: int) -> BinaryIO:
    """Open a regular file of at most `max_bytes` (links followed: data folders are link trees)."""
    return safeio.open_regular(path, max_bytes, follow_links=True)


def read_file(path: str | Path, max_bytes: int, *, follow_links: bool = True) -> bytes:
    """The whole regular file `path`, refusing more than `max_bytes` even if it grows.

    Links are followed (the user's `--data` folders are often trees of links) unless
    `follow_links=False`: for files in probe's cache folder, which is never trusted.
    """
    return safeio.read_bytes(path, max_bytes, follow_links=follow_links)


def files_key(tag: str, root: Path, paths: Iterable[Path]) -> str:
    """A short hex key over `tag`, the folder and each file's name, size and mtime.

    A changed, added or removed file gives a new key, so the decoded cache follows
    the files; the tag separates data sets that decode the same files differently.
    """
    root = Path(root)
    h = hashlib.sha256(f"{tag}\0{root.resolve()}".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise RunFileError(p, f"cannot read ({exc.strerror or exc})") from None
        rel = os.path.relpath(p, root)
        h.update(f"\0{rel}:{st.st_size}:{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first of `dirs` x `names` (in that order) that exists, or None."""
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def download(
    urls: str | Sequence[str],
    root: Path,
    filename: str,
    md5: str,
    *,
    what: str,
    hint: str,
    quiet: bool = False,
) -> Path:
    """`root/filename`, fetched with torchvision's checked downloader (md5 checked; kept if there).

    `urls` are mirrors, tried in order. Any failure (network, checksum) is one
    ProbeError line ending with `hint` (how to pass the files with --data).
    """
    from torchvision.datasets import utils as tv_utils

    urls = [urls] if isinstance(urls, str) else list(urls)
    last: BaseException | None = None
    for url in urls:
        if not quiet and not (root / filename).exists():
            print(f"downloading {what} from {url}")
        try:
            tv_utils.download_url(url, str(root), filename=filename, md5=md5)
            return root / filename
        except (
            Exception
        ) as exc:  # network errors come in many types; a bad checksum is a RuntimeError
            last = exc
    assert last is not None
    raise ProbeError(f"could not download {what} ({type(last).__name__}: {_short(last)}); {hint}")


def data_dir(data: str | Path, hint: str) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UsageError("--data", f"{root} is not a directory; {hint}")
    return root


# --- a folder of class folders --------------------------------------------------------------


@dataclass
class ClassFolders:
    """`root/train/<class>/*` and `root/<test>/<class>/*`: class names (sorted) and images."""

    root: Path
    classes: list[str]
    test: str  # "test" or "val"
    files: dict[
        str, list[list[Path]]
    ]  # "train" / "test" -> per class folder, its image files (sorted)

    def all_files(self) -> list[Path]:
        return [p for split in ("train", "test") for fs in self.files[split] for p in fs]


def find_test_split(root: Path) -> Path | None:
    for name in TEST_SPLITS:
        if (root / name).is_dir():
            return root / name
    return None


def has_class_folders(root: Path) -> bool:
    return (root / "train").is_dir() and find_test_split(root) is not None


def _list_split(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    try:
        classes = sorted(
            p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        files = [
            sorted(
                p
                for p in (split_dir / c).iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.name.startswith(".")
                and not p.is_dir()
            )
            for c in classes
        ]
    except OSError as exc:
        raise UsageError("--data", f"cannot list {split_dir} ({exc.strerror or exc})") from None
    return classes, files


def list_class_folders(root: Path) -> ClassFolders:
    """The class folders of `root`, or one UsageError.

    train/ and test/ (or val/) must hold the same non-empty class folders.
    """
    layout = (
        f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/ for test/)"
    )
    test_dir = find_test_split(root)
    if not (root / "train").is_dir() or test_dir is None:
        raise UsageError("--data", f"{root} has no train/ and test/ folders; {layout}")
    files: dict[str, list[list[Path]]] = {}
    classes: list[str] | None = None
    for split, d in (("train", root / "train"), ("test", test_dir)):
        cls, fs = _list_split(d)
        if not cls:
            raise UsageError("--data", f"{d} holds no class folders; {layout}")
        if len(cls) > MAX_CLASSES:  # before a single image is decoded
            raise UsageError(
                "--data",
                f"{d} holds {len(cls):,} class folders, more than the {MAX_CLASSES:,} a model "
                "may classify",
            )
        if classes is not None and cls != classes:
            only = sorted(set(cls) ^ set(classes))[:3]
            raise UsageError(
                "--data",
                f"{root / 'train'} and {d} have different class folders "
                f"(e.g. {', '.join(map(repr, only))})",
            )
        for c, f in zip(cls, fs, strict=True):
            if not f:
                raise UsageError(
                    "--data", f"{d / c} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
        for c in cls:
            if any(ord(ch) < 32 or ch == "," for ch in c):
                raise UsageError(
                    "--data", f"{d}: class folder name {c!r} holds a comma or a control character"
                )
        classes, files[split] = cls, fs
    assert classes is not None
    return ClassFolders(root, classes, test_dir.name, files)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def match_classes(listing: ClassFolders, classes: Sequence[str], what: str) -> list[int]:
    """For each class folder, the index of the data set's class it holds: by name or label number.

    A folder matches a class when its name, lower-cased with everything but letters
    and digits dropped, equals the class name's ("T-shirt_top" is "T-shirt/top"),
    or when it is the label number ("0" .. "99"). Every class needs one folder.
    """
    by_name = {_norm(c): i for i, c in enumerate(classes)}
    order: list[int] = []
    for f in listing.classes:
        if f.isdigit() and str(int(f)) == f and int(f) < len(classes):
            order.append(int(f))
        elif _norm(f) in by_name:
            order.append(by_name[_norm(f)])
        else:
            preview = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
            raise UsageError(
                "--data",
                f"{listing.root / 'train' / f}: not one of the {len(classes)} {what} classes "
                f"({preview}) nor a label number 0..{len(classes) - 1}",
            )
    if sorted(order) != list(range(len(classes))):
        missing = [classes[i] for i in range(len(classes)) if i not in order][:3]
        dup = sorted({listing.classes[j] for j, i in enumerate(order) if order.count(i) > 1})[:3]
        why = (
            f"two folders for one class ({', '.join(dup)})"
            if dup
            else f"no folder for {', '.join(missing)}"
        )
        raise UsageError(
            "--data",
            f"{listing.root / 'train'}: the class folders are not the {len(classes)} {what} "
            f"classes: {why}",
        )
    return order


def _open_image(path: Path) -> Any:
    from PIL import Image

    data = read_file(path, MAX_IMAGE_FILE_BYTES)
    try:
        im = Image.open(io.BytesIO(data))
    except (
        Exception
    ) as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise RunFileError(path, f"cannot decode image ({_short(exc)})") from None
    w, h = im.size
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        im.close()
        raise RunFileError(path, f"is {w}x{h}; probe takes images of at most {MAX_SIDE}x{MAX_SIDE}")
    return im


def decode_class_folders(
    listing: ClassFolders, order: Sequence[int], shape: tuple[int, int, int] | None, quiet: bool
) -> dict[str, Any]:
    """Decode both splits into uint8 [N, C, H, W] and int64 labels (`order`: folder index -> label).

    With `shape` (C, H, W) that is the data set's one shape; without, the first
    training image decides the size, and its mode the channels (L: 1, RGB: 3,
    RGBA: 4, any other mode converted to RGB). An image of another size is one
    error naming it; images of other modes are converted.
    """
    import numpy as np
    import torch

    if shape is not None:
        mode: str | None = MODE_OF_CHANNELS[shape[0]]
        size: tuple[int, int] | None = (shape[2], shape[1])
        decides = "the data set's size"
    else:
        mode, size, decides = None, None, ""
    counts = {s: sum(len(f) for f in listing.files[s]) for s in ("train", "test")}
    out: dict[str, Any] = {}
    for split in ("train", "test"):
        paths = [p for fs in listing.files[split] for p in fs]
        labels = [order[i] for i, fs in enumerate(listing.files[split]) for _ in fs]
        if not quiet:
            print(
                f"decoding {len(paths)} {split} images from "
                f"{listing.root / (split if split == 'train' else listing.test)} (once; cached)"
            )
        arr = None
        for j, p in enumerate(paths):
            with _open_image(p) as im:
                if size is None:
                    size, decides = im.size, f"the size of {p}"
                if mode is None:
                    mode = NATIVE_MODES.get(im.mode, "RGB")
                if im.size != size:
                    raise RunFileError(
                        p,
                        f"is {im.size[0]}x{im.size[1]}, but the data set's images are "
                        f"{size[0]}x{size[1]} ({decides}); resize them to one size",
                    )
                if arr is None:
                    c = CHANNELS[mode]
                    total = (counts["train"] + counts["test"]) * c * size[0] * size[1]
                    if total > MAX_DECODED_BYTES:
                        raise UsageError(
                            "--data",
                            f"{listing.root}: {counts['train'] + counts['test']:,} images of "
                            f"{c}x{size[1]}x{size[0]} take {total / 2**30:.1f} GiB decoded, more "
                            f"than the {MAX_DECODED_BYTES / 2**30:.0f} GiB probe holds in memory",
                        )
                    arr = np.empty((len(paths), size[1], size[0], c), dtype=np.uint8)
                try:
                    px = np.asarray(im.convert(mode))
                except Exception as exc:  # truncated data shows only when decoding
                    raise RunFileError(p, f"cannot decode image ({_short(exc)})") from None
            arr[j] = px.reshape(arr.shape[1:])
        assert arr is not None
        out[f"{split}_x"] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    return out


def release_folders(
    root: Path,
    *,
    neither: str,
    hint: str,
    name: str,
    quiet: bool,
    shape: tuple[int, int, int],
    classes: Sequence[str],
    what: str,
) -> dict[str, Any]:
    """A data set's class folders under `root`, for a `--data DIR` without its release files.

    Without train/ and test/ class folders either, one `--data` error: `root holds
    neither <neither> nor train/ and test/ class folders; <hint>`.
    """
    if not has_class_folders(root):
        raise UsageError(
            "--data", f"{root} holds neither {neither} nor train/ and test/ class folders; {hint}"
        )
    return load_class_folders(
        root, name=name, quiet=quiet, shape=shape, classes=classes, what=what
    )[0]


def load_class_folders(
    root: Path,
    *,
    name: str,
    quiet: bool,
    shape: tuple[int, int, int] | None = None,
    classes: Sequence[str] | None = None,
    what: str = "",
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The tensors and class names of a folder of class folders, decoded once and cached.

    Without `classes` the class names are the folder names (sorted); with them, the
    folders must be exactly those classes (`match_classes`) and the labels follow
    their order. The cache file is `<name>-<key>`, the key over the listing, so a
    changed folder is decoded again.
    """
    from probe.datasets.tensors import cached

    listing = list_class_folders(root)
    if classes is None:
        names, order = tuple(listing.classes), list(range(len(listing.classes)))
    else:
        names, order = tuple(classes), match_classes(listing, classes, what or name)
    key = files_key(f"{name}|{shape}|{order}", root, listing.all_files())
    make: Callable[[], dict[str, Any]] = lambda: decode_class_folders(listing, order, shape, quiet)  # noqa: E731
    return cached(f"{name}-{key}", names, make, shape), names
