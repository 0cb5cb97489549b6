"""The public API a plugin may use: `probe` and the modules of `probe.PUBLIC_MODULES`.

`probe.datasets` is what a data-set plugin builds on: `Dataset`, the sealed cache
(`cached`, `read_cache`/`write_cache`), the checked download and file helpers, CIFAR-10's
constants. Importing it costs no torch (a plugin imports it when it registers); the
built-in data-set and model-family plugins import nothing else of probe's.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from architecture import PLUGINS, ROOT, private_reach, public_api_modules, read_tree

import probe
import probe.data
import probe.datasets as datasets
from probe.errors import RunFileError

CLASSES = ("a", "b", "c")
# the data-set and model-family plugins (the analysis plugins import probe.numerics too)
FAMILY_AND_DATA_PLUGINS = (
    "cifar10",
    "_cifar10_files",
    "cifar100",
    "mnist",
    "svhn",
    "imagefolder",
    "simplecnn",
    "resnet",
    "mlp",
    "torchvision_models",
    "nets.simplecnn",
    "nets.resnet",
    "nets.mlp",
    "nets.torchvision_models",
)


def tensors(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "train_x": torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8),
        "train_y": torch.arange(n) % len(CLASSES),
        "test_x": torch.randint(0, 256, (2, 1, 4, 4), generator=g, dtype=torch.uint8),
        "test_y": torch.tensor([0, 2]),
    }


def test_public_modules_exist_and_name_datasets() -> None:
    assert {"datasets", "errors", "testing"} <= set(probe.PUBLIC_MODULES)
    for name in probe.PUBLIC_MODULES:
        importlib.import_module(f"probe.{name}")


def test_every_public_datasets_name_resolves() -> None:
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None, name
    assert sorted(dir(datasets)) == sorted(datasets.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        datasets.nope  # noqa: B018
    # the older home of the same helpers gives the same objects
    for name in probe.data.__all__:
        assert getattr(probe.data, name) is getattr(datasets, name)
    assert datasets.DataSource is probe.DataSource and datasets.Augmentation is probe.Augmentation
    assert (
        datasets.CIFAR10_INPUT.mean == datasets.CIFAR10_MEAN and len(datasets.CIFAR10_CLASSES) == 10
    )


def test_import_probe_datasets_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import probe.datasets as d\n"
        "d.files_key, d.read_file, d.CIFAR10_CLASSES\n"
        "assert 'torch' not in sys.modules, 'torch imported by import probe.datasets'\n"
        "d.Dataset\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_sealed_cache_round_trips_and_refuses_a_changed_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "mine.safetensors"
    t = tensors()
    assert datasets.read_cache(path, CLASSES) is None  # nothing written yet: no warning
    datasets.write_cache(path, t, CLASSES)
    back = datasets.read_cache(path, CLASSES, (1, 4, 4))
    assert back is not None and all(torch.equal(back[k], t[k]) for k in t)
    # other classes or another image shape than the data set's: not this data set's cache
    assert datasets.read_cache(path, ("a", "b", "x")) is None
    assert "holds classes 'a,b,c', expected 'a,b,x'" in capsys.readouterr().err
    assert not path.exists()  # refused caches are removed, so they are rebuilt
    datasets.write_cache(path, t, CLASSES)
    assert datasets.read_cache(path, CLASSES, (3, 4, 4)) is None
    assert "train_x must be uint8 [N, 3, 4, 4]" in capsys.readouterr().err
    # one flipped byte in the payload: the checksum written with the tensors no longer matches
    datasets.write_cache(path, t, CLASSES)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert datasets.read_cache(path, CLASSES) is None
    assert "checksum mismatch" in capsys.readouterr().err


def test_cached_decodes_once(tmp_path: Path) -> None:
    calls = []

    def make() -> dict[str, torch.Tensor]:
        calls.append(1)
        return tensors(seed=len(calls))

    first = datasets.cached("api-test", CLASSES, make, (1, 4, 4))
    again = datasets.cached("api-test", CLASSES, make, (1, 4, 4))
    assert len(calls) == 1 and all(torch.equal(first[k], again[k]) for k in first)
    assert (datasets.cache_dir() / "api-test.safetensors").is_file()
    ds = datasets.Dataset(**again, classes=CLASSES, source="test")
    x = datasets.normalize(ds.train_x, (0.5,), (0.25,))
    assert x.dtype == torch.float32 and torch.allclose(x, (ds.train_x / 255 - 0.5) / 0.25)


def test_read_file_follows_links_only_when_asked(tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"1234")
    link = tmp_path / "link.bin"
    os.symlink(real, link)
    assert datasets.read_file(link, 10) == b"1234"  # a user's --data folder: links followed
    with pytest.raises(RunFileError, match="link"):
        datasets.read_file(link, 10, follow_links=False)  # probe's cache folder: never
    with pytest.raises(RunFileError):
        datasets.read_file(real, 3)
    assert datasets.find_file([tmp_path / "x", tmp_path], ["nope", "real.bin"]) == real
    key = datasets.files_key("t", tmp_path, [real])
    real.write_bytes(b"12345")
    assert datasets.files_key("t", tmp_path, [real]) != key


def test_family_and_data_set_plugins_use_only_the_public_api() -> None:
    mods = read_tree(ROOT / "probe", "probe")
    plugins = read_tree(ROOT / PLUGINS, "probe_plugins", set(mods))
    ours = {
        f"probe_plugins.{name}": plugins[f"probe_plugins.{name}"]
        for name in FAMILY_AND_DATA_PLUGINS
    }
    assert private_reach(ours, set(public_api_modules(mods))) == []
