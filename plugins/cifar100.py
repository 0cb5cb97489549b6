"""`cifar100`: CIFAR-100: 32x32 colour images of 100 fine classes, 50,000 + 10,000.

Read from the binary release (cifar-100-binary.tar.gz: train.bin and test.bin,
records of 1 coarse label byte, 1 fine label byte and 3,072 pixel bytes in CHW
order); the labels are the fine ones (0..99). The python release is never used:
it is a set of pickles, and probe never unpickles a file.

Without --data the archive is fetched with torchvision's checked downloader (md5
verified) into <cache>/cifar100/ and its members are read straight from the
archive (nothing is extracted). With --data DIR: DIR/cifar-100-binary.tar.gz, or
the extracted train.bin and test.bin in DIR or DIR/cifar-100-binary/, or train/ and
test/ class folders of 32x32 images named by class (apple, aquarium_fish, ...) or
by label number.

The class names are CIFAR-100's fine label names in label order (the release's
fine_label_names.txt). When the release carries that file it must list exactly
these names: a file that names the labels differently is not the CIFAR-100
release, and training on it under these names would mislabel every figure.

Default augmentation: random crops with 4 pixels of padding and horizontal flips,
the standard CIFAR recipe.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import probe
from probe import datasets

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
MD5 = "03b5dce01913d631647c71ecec9e9cb8"
ARCHIVE = "cifar-100-binary.tar.gz"
RECORD = 2 + 3 * 32 * 32
MAX_BIN_BYTES = 256 << 20  # train.bin is 153,700,000 bytes
MAX_ARCHIVE_BYTES = 1 << 30  # the archive is 168 MB
MAX_MEMBERS = 64  # the archive holds 5 files
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
HINT = (
    f"pass --data DIR with {ARCHIVE} (or its extracted train.bin and test.bin) from {URL}, "
    "or with train/ and test/ class folders"
)

CLASSES = (  # the release's fine_label_names.txt, in label order (alphabetical)
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def parse_records(raw: bytes, path: Path | str):
    """Images [N, 3, 32, 32] uint8 and fine labels [N] int64 from a CIFAR-100 binary file."""
    import numpy as np
    import torch

    if not raw or len(raw) % RECORD:
        raise probe.RunFileError(
            path,
            f"is not a CIFAR-100 binary file (size {len(raw):,} is not a multiple of {RECORD})",
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    if int(rec[:, 0].max()) > 19:
        raise probe.RunFileError(
            path,
            f"is not a CIFAR-100 binary file (coarse label {int(rec[:, 0].max())} is not in 0..19)",
        )
    if int(rec[:, 1].max()) > 99:
        raise probe.RunFileError(
            path,
            f"is not a CIFAR-100 binary file (fine label {int(rec[:, 1].max())} is not in 0..99)",
        )
    y = torch.from_numpy(rec[:, 1].astype(np.int64))
    x = torch.from_numpy(rec[:, 2:].reshape(-1, 3, 32, 32).copy())
    return x, y


def check_names(text: bytes, path: Path | str) -> None:
    """fine_label_names.txt must list CIFAR-100's 100 fine classes, in label order."""
    names = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    if tuple(names) != CLASSES:
        diff = next(
            (i for i, (a, b) in enumerate(zip(names, CLASSES, strict=False)) if a != b),
            min(len(names), 100),
        )
        got = repr(names[diff][:40]) if diff < len(names) else "nothing"
        want = repr(CLASSES[diff]) if diff < 100 else "the end"
        raise probe.RunFileError(
            path,
            f"does not list CIFAR-100's fine label names (line {diff + 1}: {got}, expected {want})",
        )


def read_archive(path: Path) -> dict:
    """train/test tensors from the release archive's members, read in place (not extracted)."""
    wanted = {"train.bin", "test.bin", "fine_label_names.txt"}
    found: dict[str, bytes] = {}
    with datasets.open_file(path, MAX_ARCHIVE_BYTES) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:*") as tar:
                for i, member in enumerate(tar):
                    if i >= MAX_MEMBERS:
                        raise probe.RunFileError(
                            path,
                            f"holds more than {MAX_MEMBERS} members; "
                            "not the CIFAR-100 binary release",
                        )
                    # every member is bounded before the next is reached: skipping one in a
                    # compressed archive decompresses it (a 42 MB archive declaring 40 GiB)
                    if member.size > MAX_BIN_BYTES:
                        raise probe.RunFileError(
                            path,
                            f"member {member.name} is {member.size:,} bytes, more than "
                            f"the {MAX_BIN_BYTES:,} allowed",
                        )
                    base = member.name.rsplit("/", 1)[-1]
                    if base not in wanted:
                        continue
                    if not member.isfile():
                        raise probe.RunFileError(
                            path, f"member {member.name} is not a regular file"
                        )
                    if base in found:
                        raise probe.RunFileError(path, f"holds {base} twice")
                    f = tar.extractfile(member)
                    assert f is not None
                    found[base] = f.read(member.size)
                    if len(found[base]) != member.size:
                        raise probe.RunFileError(path, f"is truncated inside {member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            why = (str(exc).splitlines() or [""])[0][:120] or type(exc).__name__
            raise probe.RunFileError(path, f"is not a readable tar archive ({why})") from None
    for need in ("train.bin", "test.bin"):
        if need not in found:
            raise probe.RunFileError(path, f"holds no {need}; not the CIFAR-100 binary release")
    if "fine_label_names.txt" in found:
        check_names(found["fine_label_names.txt"], f"{path}:fine_label_names.txt")
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"], out[f"{split}_y"] = parse_records(
            found[f"{split}.bin"], f"{path}:{split}.bin"
        )
    return out


def read_extracted(folder: Path) -> dict:
    """train/test tensors from an extracted release: folder/train.bin and test.bin.

    fine_label_names.txt, when the folder holds it, is checked against CLASSES.
    """
    names = folder / "fine_label_names.txt"
    if names.exists():
        check_names(datasets.read_file(names, 1 << 20), names)
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"], out[f"{split}_y"] = parse_records(
            datasets.read_file(folder / f"{split}.bin", MAX_BIN_BYTES), folder / f"{split}.bin"
        )
    return out


def load(data: str | None, quiet: bool = False):
    """CIFAR-100 from `data` (archive, its files, class folders), else the checked download."""
    shape = (3, 32, 32)
    if data is None:
        root = datasets.cache_dir() / "cifar100"

        def fetch() -> dict:
            archive = datasets.download(
                URL, root, ARCHIVE, MD5, what="CIFAR-100", hint=HINT, quiet=quiet
            )
            return read_archive(archive)

        tensors = datasets.cached("cifar100", CLASSES, fetch, shape)
        source = f"download:{URL}"
    else:
        root = datasets.data_dir(data, HINT)
        extracted = next(
            (
                d
                for d in (root, root / "cifar-100-binary")
                if (d / "train.bin").is_file() and (d / "test.bin").is_file()
            ),
            None,
        )
        if extracted is not None:
            paths = [
                extracted / f
                for f in ("train.bin", "test.bin", "fine_label_names.txt")
                if (extracted / f).exists()
            ]
            key = datasets.files_key("cifar100", root, paths)
            tensors = datasets.cached(
                f"cifar100-{key}", CLASSES, lambda: read_extracted(extracted), shape
            )
        elif (root / ARCHIVE).is_file():
            key = datasets.files_key("cifar100", root, [root / ARCHIVE])
            tensors = datasets.cached(
                f"cifar100-{key}", CLASSES, lambda: read_archive(root / ARCHIVE), shape
            )
        else:
            tensors = datasets.release_folders(
                root,
                neither="the CIFAR-100 binary release",
                hint=HINT,
                name="cifar100-folder",
                quiet=quiet,
                shape=shape,
                classes=CLASSES,
                what="CIFAR-100",
            )
        source = str(root.resolve())
    return datasets.Dataset(
        **tensors,
        classes=CLASSES,
        source=source,
        mean=MEAN,
        std=STD,
        augmentation=probe.Augmentation(pad=4, flip=True),
    )


@probe.hookimpl
def register_datasets(register):
    register(
        probe.DataSource(
            name="cifar100",
            load=load,
            summary="CIFAR-100: 32x32 colour, 100 fine classes, 50,000 + 10,000 images "
            "(binary release)",
        )
    )
