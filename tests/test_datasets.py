"""The built-in data-set plugins beyond CIFAR-10 (cifar100, mnist, fashion-mnist, svhn,
folder), without network.

Each test writes small files in the real release formats (IDX, CIFAR-100 binary
records and their tar.gz, SVHN .mat, PNG class folders) and checks the loaded
tensors byte for byte against what it wrote; the download path runs against a
fake torchvision downloader that copies those files in and records the md5 sums
it was asked to verify; hostile files each give one line naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.contract.registry import PluginInfo, Registry
from probe.errors import ProbeError, RunFileError, UsageError
from probe_plugins import cifar100, imagefolder, mnist, svhn

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("PROBE_CACHE", str(d))
    return d


def source(module, name: str):
    reg = Registry()
    reg.register(module, PluginInfo(module.__name__.rsplit(".", 1)[-1], "x", "probe-cnn", "0"))
    assert name in reg.datasets, reg.plugins
    return reg.datasets[name]


def load(module, name: str, data):
    return source(module, name).load(None if data is None else str(data), True)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture
def fake_download(monkeypatch):
    """Replace torchvision's download_url: copy the file of that name from `files` into
    root, record the call."""
    from torchvision.datasets import utils as tv_utils

    state = {"files": {}, "calls": [], "fail": None}

    def fake(url, root, filename=None, md5=None, max_redirect_hops=3):
        state["calls"].append((url, Path(root), filename, md5))
        if state["fail"] is not None:
            raise state["fail"]
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copy(state["files"][filename], Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", fake)
    return state


def test_registration_names_and_no_torch_at_import():
    names = {
        m: set(source(m, n).name for n in ns)
        for m, ns in (
            (mnist, ("mnist", "fashion-mnist")),
            (cifar100, ("cifar100",)),
            (svhn, ("svhn",)),
            (imagefolder, ("folder",)),
        )
    }
    assert names[mnist] == {"mnist", "fashion-mnist"}
    code = (
        "import sys\nimport probe_plugins.mnist, probe_plugins.cifar100, probe_plugins.svhn, "
        "probe_plugins.imagefolder\nassert 'torch' not in sys.modules, 'torch "
        "imported'\nprint('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- MNIST / Fashion-MNIST: IDX ---------------------------------------------------------------


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx(path: Path, magic: int, dims, payload: bytes, gz: bool = True) -> Path:
    raw = idx_bytes(magic, dims, payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder: Path, gz: bool = True, n=(7, 4), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    truth = {}
    for (split, img, lab), count in zip(mnist.FILES, n, strict=True):
        x = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, count, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{img}{suffix}", 0x803, (count, 28, 28), x.tobytes(), gz)
        write_idx(folder / f"{lab}{suffix}", 0x801, (count,), y.tobytes(), gz)
        truth[split] = (x, y)
    return truth


def check_idx(ds, truth):
    for split in ("train", "test"):
        x, y = truth[split]
        got_x, got_y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert got_x.dtype == torch.uint8 and tuple(got_x.shape) == (len(x), 1, 28, 28)
        assert np.array_equal(got_x[:, 0].numpy(), x)
        assert got_y.dtype == torch.int64 and got_y.tolist() == y.astype(int).tolist()


def test_mnist_from_gz_files(tmp_path):
    truth = write_mnist(tmp_path / "d")
    ds = load(mnist, "mnist", tmp_path / "d")
    check_idx(ds, truth)
    assert ds.classes == tuple("0123456789") and ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert ds.augmentation == probe.Augmentation(pad=2, flip=False)


def test_fashion_mnist_from_raw_files_in_torchvision_layout(tmp_path):
    truth = write_mnist(tmp_path / "d" / "FashionMNIST" / "raw", gz=False, seed=1)
    ds = load(mnist, "fashion-mnist", tmp_path / "d")
    check_idx(ds, truth)
    assert (
        ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    )
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)
    assert ds.augmentation == probe.Augmentation(pad=2, flip=True)


def test_mnist_download_passes_md5_and_second_load_uses_cache(tmp_path, fake_download, cache):
    truth = write_mnist(tmp_path / "src")
    fake_download["files"] = {p.name: p for p in (tmp_path / "src").iterdir()}
    ds = load(mnist, "mnist", None)
    check_idx(ds, truth)
    from torchvision.datasets import MNIST

    assert {(f, md5) for _, _, f, md5 in fake_download["calls"]} == set(MNIST.resources)
    assert all(
        root == cache / "mnist" and url.startswith(MNIST.mirrors[0]) and url.endswith(f)
        for url, root, f, _ in fake_download["calls"]
    )
    shutil.rmtree(cache / "mnist")
    fake_download["fail"] = AssertionError("downloaded again")
    check_idx(load(mnist, "mnist", None), truth)


def test_download_failure_is_one_line_naming_data(fake_download):
    from urllib.error import URLError

    fake_download["fail"] = URLError("no route to host\nsecond line")
    for module, name in ((mnist, "fashion-mnist"), (cifar100, "cifar100"), (svhn, "svhn")):
        with pytest.raises(ProbeError) as e:
            load(module, name, None)
        assert "--data DIR" in one_line(e) and "no route to host" in str(e.value)


def test_mnist_data_dir_results_are_cached_by_listing(tmp_path):
    d = tmp_path / "d"
    truth = write_mnist(d)
    check_idx(load(mnist, "mnist", d), truth)
    # Same size and mtime, other bytes: the decoded cache answers (the files are not parsed again).
    p = d / "train-labels-idx1-ubyte.gz"
    st = p.stat()
    p.write_bytes(b"\0" * st.st_size)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    check_idx(load(mnist, "mnist", d), truth)
    # A new mtime is a new key: the damaged file is read, and refused.
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(RunFileError) as e:
        load(mnist, "mnist", d)
    assert str(p) in one_line(e)


@pytest.mark.parametrize(
    "case",
    [
        "truncated-gz",
        "truncated-raw",
        "billion",
        "magic",
        "label",
        "count",
        "size",
        "not-gz",
        "trailing",
    ],
)
def test_hostile_idx_files(tmp_path, case):
    d = tmp_path / "d"
    write_mnist(d)
    img, lab = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    bad = img
    if case == "truncated-gz":
        img.write_bytes(img.read_bytes()[:-40])
    elif case == "truncated-raw":
        write_idx(img, 0x803, (7, 28, 28), bytes(6 * 784), gz=True)
    elif case == "billion":
        write_idx(img, 0x803, (10**9, 28, 28), bytes(784), gz=True)
    elif case == "magic":
        write_idx(img, 0x801, (7, 28, 28), bytes(7 * 784), gz=True)
    elif case == "label":
        bad = write_idx(lab, 0x801, (7,), bytes([1, 2, 3, 10, 0, 0, 0]))
    elif case == "count":
        bad = write_idx(lab, 0x801, (6,), bytes(6))
    elif case == "size":
        write_idx(img, 0x803, (7, 32, 32), bytes(7 * 1024))
    elif case == "not-gz":
        img.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    elif case == "trailing":
        write_idx(img, 0x803, (7, 28, 28), bytes(7 * 784 + 5))
    with pytest.raises(RunFileError) as e:
        load(mnist, "mnist", d)
    msg = one_line(e)
    assert msg.startswith(str(bad))
    if case == "billion":
        assert "1,000,000,000" in msg


def test_idx_header_declaring_a_billion_images_allocates_nothing_large(tmp_path):
    p = write_idx(tmp_path / "x", 0x803, (10**9, 28, 28), b"", gz=False)
    with pytest.raises(RunFileError, match="declares 1,000,000,000 images"):
        mnist.read_idx(p, mnist.IMAGES_MAGIC)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_class_folders_by_label_number_or_name(tmp_path, name):
    """Folders map to labels by number ("0".."9") or by name ("T-shirt_top", "ankle
    boot"), not by sort order."""
    spec = mnist.MNIST if name == "mnist" else mnist.FASHION
    folder_names = {
        i: (str(i) if name == "mnist" or i % 2 else spec["classes"][i].replace("/", "_").lower())
        for i in range(10)
    }
    if name == "fashion-mnist":
        folder_names[9] = "Ankle boot"
    rng = np.random.default_rng(3)
    want = {}
    for split in ("train", "test"):
        for c, folder in folder_names.items():
            a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            png(tmp_path / "d" / split / folder / "a.png", a, "L")
            want[(split, c)] = a
    ds = load(mnist, name, tmp_path / "d")
    assert ds.classes == spec["classes"]
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert tuple(x.shape) == (10, 1, 28, 28) and sorted(y.tolist()) == list(range(10))
        for i in range(10):
            assert np.array_equal(x[i, 0].numpy(), want[(split, int(y[i]))])
    if (
        name == "fashion-mnist"
    ):  # the folders sort in another order than the labels; the labels follow the names
        order = sorted(folder_names.values())
        assert ds.train_y.tolist() == [
            next(c for c, f in folder_names.items() if f == o) for o in order
        ]


def test_mnist_class_folders_of_other_names_or_size_are_refused(tmp_path):
    from probe.testing import make_image_folder

    make_image_folder(
        tmp_path / "cifar", n_train=1, n_test=1, classes=10
    )  # class0..class9, 32x32 RGB
    with pytest.raises(UsageError) as e:
        load(mnist, "mnist", tmp_path / "cifar")
    assert "class0" in one_line(e) and "MNIST" in str(e.value)
    for split in ("train", "test"):
        for c in range(10):
            os.rename(tmp_path / "cifar" / split / f"class{c}", tmp_path / "cifar" / split / str(c))
    with pytest.raises(RunFileError) as e:
        load(mnist, "mnist", tmp_path / "cifar")
    assert "is 32x32" in one_line(e) and "28x28" in str(e.value)


def test_no_release_files_is_one_usage_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for module, name in (
        (mnist, "mnist"),
        (cifar100, "cifar100"),
        (svhn, "svhn"),
        (imagefolder, "folder"),
    ):
        with pytest.raises(UsageError) as e:
            load(module, name, tmp_path / "empty")
        assert one_line(e).startswith("--data: ")
        with pytest.raises(UsageError):
            load(module, name, tmp_path / "missing")


# --- CIFAR-100: binary records ----------------------------------------------------------------


def cifar100_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    fine = rng.integers(0, 100, n, dtype=np.uint8)
    fine[0] = 99
    coarse = rng.integers(0, 20, n, dtype=np.uint8)
    rec = np.concatenate([coarse[:, None], fine[:, None], x.reshape(n, -1)], axis=1)
    return rec.tobytes(), x, fine


def write_cifar100(folder: Path, names: str | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n, seed in (("train", 6, 0), ("test", 3, 1)):
        raw, x, y = cifar100_records(n, seed)
        (folder / f"{split}.bin").write_bytes(raw)
        truth[split] = (x, y)
    (folder / "fine_label_names.txt").write_text(
        names if names is not None else "\n".join(cifar100.CLASSES) + "\n"
    )
    (folder / "coarse_label_names.txt").write_text("aquatic_mammals\n")
    return truth


def make_tar(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-100-binary")
    return archive


def check_cifar100(ds, truth):
    for split in ("train", "test"):
        x, y = truth[split]
        assert torch.equal(getattr(ds, f"{split}_x"), torch.from_numpy(x))
        assert getattr(ds, f"{split}_y").tolist() == y.astype(int).tolist()
    assert ds.classes == cifar100.CLASSES and len(ds.classes) == 100 and ds.classes[45] == "lobster"
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    assert ds.augmentation == probe.Augmentation(pad=4, flip=True)


def test_cifar100_from_extracted_files_and_from_archive(tmp_path):
    truth = write_cifar100(tmp_path / "ex" / "cifar-100-binary")
    check_cifar100(load(cifar100, "cifar100", tmp_path / "ex"), truth)
    (tmp_path / "ar").mkdir()
    make_tar(tmp_path / "ex" / "cifar-100-binary", tmp_path / "ar" / cifar100.ARCHIVE)
    check_cifar100(load(cifar100, "cifar100", tmp_path / "ar"), truth)


def test_cifar100_download_passes_md5_and_second_load_uses_cache(tmp_path, fake_download, cache):
    truth = write_cifar100(tmp_path / "src" / "cifar-100-binary")
    archive = make_tar(tmp_path / "src" / "cifar-100-binary", tmp_path / "src" / cifar100.ARCHIVE)
    fake_download["files"] = {cifar100.ARCHIVE: archive}
    check_cifar100(load(cifar100, "cifar100", None), truth)
    assert fake_download["calls"] == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            cache / "cifar100",
            cifar100.ARCHIVE,
            "03b5dce01913d631647c71ecec9e9cb8",
        )
    ]
    shutil.rmtree(cache / "cifar100")
    fake_download["fail"] = AssertionError("downloaded again")
    check_cifar100(load(cifar100, "cifar100", None), truth)


@pytest.mark.parametrize(
    "case",
    ["label200", "coarse", "size", "names", "archive-label", "archive-garbage", "archive-missing"],
)
def test_hostile_cifar100_files(tmp_path, case):
    d = tmp_path / "d" / "cifar-100-binary"
    write_cifar100(d)
    target = d
    if case in ("label200", "archive-label"):
        raw = bytearray((d / "train.bin").read_bytes())
        raw[cifar100.RECORD * 2 + 1] = 200
        (d / "train.bin").write_bytes(bytes(raw))
        bad = d / "train.bin"
    elif case == "coarse":
        raw = bytearray((d / "test.bin").read_bytes())
        raw[0] = 20
        (d / "test.bin").write_bytes(bytes(raw))
        bad = d / "test.bin"
    elif case == "size":
        (d / "test.bin").write_bytes((d / "test.bin").read_bytes()[:-1])
        bad = d / "test.bin"
    elif case == "names":
        (d / "fine_label_names.txt").write_text("\n".join(("cat",) + cifar100.CLASSES[1:]))
        bad = d / "fine_label_names.txt"
    if case.startswith("archive"):
        target = tmp_path / "a"
        target.mkdir()
        bad = target / cifar100.ARCHIVE
        if case == "archive-garbage":
            bad.write_bytes(b"\x1f\x8b\x08" + os.urandom(100))
        else:
            if case == "archive-missing":
                (d / "test.bin").unlink()
            make_tar(d, bad)
    with pytest.raises(RunFileError) as e:
        load(cifar100, "cifar100", target if case.startswith("archive") else d.parent)
    msg = one_line(e)
    assert msg.startswith(str(bad))
    if "label200" in case or case == "archive-label":
        assert "fine label 200" in msg


# --- SVHN: .mat ---------------------------------------------------------------------------------


def write_svhn(folder: Path, n=(5, 3), y_dtype=np.uint8) -> dict:
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    truth = {}
    for split, count in zip(("train", "test"), n, strict=True):
        X = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = rng.integers(1, 11, (count, 1)).astype(y_dtype)
        y[0, 0] = 10
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": X, "y": y})
        truth[split] = (X, y)
    return truth


def check_svhn(ds, truth):
    for split in ("train", "test"):
        X, y = truth[split]
        x = getattr(ds, f"{split}_x")
        assert x.dtype == torch.uint8 and tuple(x.shape) == (X.shape[3], 3, 32, 32)
        for i in range(X.shape[3]):  # image i, channel c, row r, column w is X[r, w, c, i]
            for c in range(3):
                assert np.array_equal(x[i, c].numpy(), X[:, :, c, i])
        labels = getattr(ds, f"{split}_y").tolist()
        assert labels == [int(v) % 10 for v in y[:, 0]] and labels[0] == 0
    assert ds.classes == tuple("0123456789")
    assert ds.mean == (0.4377, 0.4438, 0.4728) and ds.std == (0.1980, 0.2010, 0.1970)
    assert ds.augmentation == probe.Augmentation(pad=4, flip=False)


def test_svhn_from_mat_files(tmp_path):
    truth = write_svhn(tmp_path / "d", y_dtype=np.float64)
    check_svhn(load(svhn, "svhn", tmp_path / "d"), truth)


def test_svhn_download_passes_md5_and_second_load_uses_cache(tmp_path, fake_download, cache):
    truth = write_svhn(tmp_path / "src")
    fake_download["files"] = {p.name: p for p in (tmp_path / "src").iterdir()}
    check_svhn(load(svhn, "svhn", None), truth)
    from torchvision.datasets import SVHN

    want = {
        (SVHN.split_list[s][0], SVHN.split_list[s][1], SVHN.split_list[s][2])
        for s in ("train", "test")
    }
    assert {(u, f, m) for u, _, f, m in fake_download["calls"]} == want
    shutil.rmtree(cache / "svhn")
    fake_download["fail"] = AssertionError("downloaded again")
    check_svhn(load(svhn, "svhn", None), truth)


@pytest.mark.parametrize("case", ["label11", "label0", "shape", "missing-var", "garbage", "dtype"])
def test_hostile_svhn_files(tmp_path, case):
    import scipy.io

    d = tmp_path / "d"
    write_svhn(d)
    bad = d / "test_32x32.mat"
    X = np.zeros((32, 32, 3, 2), np.uint8)
    if case == "label11":
        scipy.io.savemat(bad, {"X": X, "y": np.array([[1], [11]], np.uint8)})
    elif case == "label0":
        scipy.io.savemat(bad, {"X": X, "y": np.array([[0], [1]], np.uint8)})
    elif case == "shape":
        scipy.io.savemat(
            bad, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}
        )
    elif case == "missing-var":
        scipy.io.savemat(bad, {"X": X})
    elif case == "garbage":
        bad.write_bytes(b"MATLAB 5.0 MAT-file" + os.urandom(200))
    elif case == "dtype":
        scipy.io.savemat(bad, {"X": X.astype(np.float64), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(RunFileError) as e:
        load(svhn, "svhn", d)
    assert one_line(e).startswith(str(bad))


# --- folder: class folders of any size -----------------------------------------------------------


def png(path: Path, a: np.ndarray, mode: str) -> np.ndarray:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode=mode).save(path)
    return a


def test_folder_grey_non_square_with_val_split(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    want = {}
    for split, n in (("train", 2), ("val", 1)):
        for c in ("zebra", "ant"):
            for i in range(n):
                want[(split, c, i)] = png(
                    root / split / c / f"{i}.png",
                    rng.integers(0, 256, (12, 20), dtype=np.uint8),
                    "L",
                )
    ds = load(imagefolder, "folder", root)
    assert ds.classes == ("ant", "zebra")
    assert tuple(ds.train_x.shape) == (4, 1, 12, 20) and tuple(ds.test_x.shape) == (2, 1, 12, 20)
    assert ds.train_y.tolist() == [0, 0, 1, 1] and ds.test_y.tolist() == [0, 1]
    assert np.array_equal(ds.train_x[2, 0].numpy(), want[("train", "zebra", 0)])
    assert np.array_equal(ds.test_x[0, 0].numpy(), want[("val", "ant", 0)])
    assert ds.mean is None and ds.std is None
    assert ds.augmentation == probe.Augmentation(pad=1, flip=True)  # max(1, 12 // 8)


def test_folder_rgb_and_mode_conversion(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "d"
    a = png(
        root / "train" / "a" / "0.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB"
    )
    g = png(root / "train" / "b" / "0.png", rng.integers(0, 256, (40, 48), dtype=np.uint8), "L")
    t = png(
        root / "test" / "a" / "0.png", rng.integers(0, 256, (40, 48, 4), dtype=np.uint8), "RGBA"
    )
    png(root / "test" / "b" / "0.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB")
    ds = load(imagefolder, "folder", root)
    assert tuple(ds.train_x.shape) == (2, 3, 40, 48)
    assert np.array_equal(ds.train_x[0].permute(1, 2, 0).numpy(), a)
    assert np.array_equal(
        ds.train_x[1].permute(1, 2, 0).numpy(), np.repeat(g[:, :, None], 3, axis=2)
    )
    want_t = np.asarray(Image.fromarray(t, mode="RGBA").convert("RGB"))
    assert np.array_equal(ds.test_x[0].permute(1, 2, 0).numpy(), want_t)
    assert ds.augmentation == probe.Augmentation(pad=5, flip=True)  # 40 // 8


def test_folder_rgba_keeps_four_channels(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "d"
    want = png(
        root / "train" / "a" / "0.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA"
    )
    png(root / "test" / "a" / "0.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    ds = load(imagefolder, "folder", root)
    assert tuple(ds.train_x.shape) == (1, 4, 8, 8) and np.array_equal(
        ds.train_x[0].permute(1, 2, 0).numpy(), want
    )


def small_folder(root: Path, size=(10, 10)) -> None:
    for split in ("train", "test"):
        for c in ("a", "b"):
            png(root / split / c / "0.png", np.full(size, 7, np.uint8), "L")


def test_folder_hostile_layouts(tmp_path):
    with pytest.raises(UsageError) as e:
        load(imagefolder, "folder", None)
    assert one_line(e).startswith("--data: ")

    mixed = tmp_path / "mixed"
    small_folder(mixed)
    odd = png(mixed / "train" / "b" / "1.png", np.zeros((11, 10), np.uint8), "L")
    assert odd is not None
    with pytest.raises(RunFileError) as e:
        load(imagefolder, "folder", mixed)
    msg = one_line(e)
    assert (
        msg.startswith(str(mixed / "train" / "b" / "1.png")) and "10x11" in msg and "10x10" in msg
    )

    empty = tmp_path / "empty"
    small_folder(empty)
    (empty / "test" / "c").mkdir()
    (empty / "train" / "c").mkdir()
    png(empty / "train" / "c" / "0.png", np.zeros((10, 10), np.uint8), "L")
    with pytest.raises(UsageError) as e:
        load(imagefolder, "folder", empty)
    assert str(empty / "test" / "c") in one_line(e) and "no images" in str(e.value)

    differ = tmp_path / "differ"
    small_folder(differ)
    png(differ / "train" / "z" / "0.png", np.zeros((10, 10), np.uint8), "L")
    with pytest.raises(UsageError) as e:
        load(imagefolder, "folder", differ)
    assert "different class folders" in one_line(e) and "'z'" in str(e.value)

    broken = tmp_path / "broken"
    small_folder(broken)
    (broken / "test" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk")
    with pytest.raises(RunFileError) as e:
        load(imagefolder, "folder", broken)
    assert one_line(e).startswith(str(broken / "test" / "a" / "0.png"))

    fifo = tmp_path / "fifo"
    small_folder(fifo)
    os.mkfifo(fifo / "train" / "a" / "1.png")  # must not block
    with pytest.raises(RunFileError) as e:
        load(imagefolder, "folder", fifo)
    assert "not a regular file" in one_line(e)


def test_folder_cache_follows_the_listing(tmp_path, cache):
    root = tmp_path / "d"
    small_folder(root)
    first = load(imagefolder, "folder", root)
    assert len(list(cache.glob("imagefolder-*.safetensors"))) == 1
    p = root / "train" / "a" / "0.png"
    st = p.stat()
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((10, 10), 9, np.uint8), mode="L").save(buf, format="PNG")
    assert len(buf.getvalue()) == st.st_size  # same size: only the mtime tells the change
    p.write_bytes(buf.getvalue())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert int(load(imagefolder, "folder", root).train_x[0, 0, 0, 0]) == 7  # the cache answered
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = load(imagefolder, "folder", root)
    assert int(again.train_x[0, 0, 0, 0]) == 9 and int(first.train_x[0, 0, 0, 0]) == 7


def test_a_cifar100_archive_member_declaring_gigabytes_is_refused_before_it_is_skipped(tmp_path):
    """A 42 MB archive whose first (unwanted) member declares 40 GiB was read for 303 s: every
    member is bounded before tarfile skips over it. Here a header alone declares 40 GiB."""
    d = tmp_path / "d"
    d.mkdir()
    archive = d / cifar100.ARCHIVE
    info = tarfile.TarInfo("cifar-100-binary/padding.bin")
    info.size = 40 << 30
    with gzip.open(archive, "wb") as fh:  # the header only: its 40 GiB are never there
        fh.write(info.tobuf(format=tarfile.GNU_FORMAT))
    with pytest.raises(RunFileError) as e:
        cifar100.read_archive(archive)
    assert str(e.value) == (
        f"{archive}: member cifar-100-binary/padding.bin is 42,949,672,960 bytes, more than "
        f"the {cifar100.MAX_BIN_BYTES:,} allowed"
    )


def test_an_svhn_file_with_two_x_variables_is_refused(tmp_path):
    """whosmat saw the last X (checked), loadmat loaded the first (1.3 million images)."""
    import scipy.io

    small = np.zeros((32, 32, 3, 2), np.uint8)
    scipy.io.savemat(tmp_path / "a.mat", {"X": np.zeros((32, 32, 3, 7), np.uint8)})
    scipy.io.savemat(tmp_path / "b.mat", {"X": small, "y": np.ones((2, 1), np.uint8)})
    bad = tmp_path / "train_32x32.mat"
    # one MAT v5 header, then the first file's X, then the second file's X and y
    bad.write_bytes((tmp_path / "a.mat").read_bytes() + (tmp_path / "b.mat").read_bytes()[128:])
    assert [v[0] for v in scipy.io.whosmat(str(bad))] == ["X", "X", "y"]
    with pytest.raises(RunFileError) as e:
        svhn.read_mat(bad)
    assert str(e.value) == f"{bad}: holds variable X twice; not an SVHN file (format 2)"


def test_more_class_folders_than_a_model_may_classify_is_one_line_before_decoding(
    tmp_path, monkeypatch
):
    """100,001 class folders decoded 200,002 images for 13 minutes into a run its own readers
    refuse; the count is checked from the listing first (bound lowered here to keep it fast)."""
    from probe.datasets import files

    monkeypatch.setattr(files, "MAX_CLASSES", 3)
    for split in ("train", "test"):
        for c in range(4):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
    with pytest.raises(UsageError) as e:
        files.list_class_folders(tmp_path)
    assert str(e.value) == (
        f"--data: {tmp_path / 'train'} holds 4 class folders, more than the 3 a model may classify"
    )
