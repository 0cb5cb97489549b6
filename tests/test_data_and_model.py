import numpy as np
import pytest
import torch

from probe.datasets import tensors as data
from probe.errors import ProbeError, UsageError
from probe.testing import make_image_folder
from probe.training.model import count_params, simplecnn_spec
from probe_plugins.simplecnn import width_for_params


def test_notebook_model_has_the_notebooks_parameter_count():
    model = simplecnn_spec(depth=4, base_width=32).build()
    assert sum(p.numel() for p in model.parameters()) == 85162  # printed by the notebook
    assert model.block_outputs == ["features.2", "features.6", "features.9", "features.13"]


@pytest.mark.parametrize("depth", [2, 4, 8])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_count_params_matches_the_module(depth, dropout):
    spec = simplecnn_spec(depth=depth, base_width=7, dropout=dropout)
    assert count_params(spec) == sum(p.numel() for p in spec.build().parameters())


def test_width_for_params_matches_depths():
    target = count_params(simplecnn_spec(depth=4, base_width=32))
    for depth in (2, 8):
        w = width_for_params(depth, target)
        n = count_params(simplecnn_spec(depth=depth, base_width=w))
        assert abs(n - target) / target < 0.1
        assert all(
            abs(count_params(simplecnn_spec(depth=depth, base_width=o)) - target) >= abs(n - target)
            for o in (w - 1, w + 1)
        )


def test_augment_is_a_padded_crop_and_flip():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = data.augment(x, g)
    g.set_state(state)  # replay the same draws to know which crop and flip each image got
    offsets = torch.randint(0, 9, (2, 16), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        oy, ox = offsets[:, i].tolist()
        want = padded[i, :, oy : oy + 32, ox : ox + 32]
        if flips[i]:
            want = want.flip(2)
        assert torch.equal(out[i], want)


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    want = torch.stack(
        [TF.normalize(TF.convert_image_dtype(im, torch.float32), mean, std) for im in x]
    )
    torch.testing.assert_close(data.normalize(x, mean, std), want)


def test_stratified_and_subset_are_seeded_and_balanced():
    labels = torch.arange(1000) % 10
    a, b = data.stratified(labels, 100, 1), data.stratified(labels, 100, 1)
    assert torch.equal(a, b) and torch.bincount(labels[a]).tolist() == [10] * 10
    assert not torch.equal(a, data.stratified(labels, 100, 2))


def test_folder_dataset_is_decoded_once_and_cached(tmp_path):
    root = make_image_folder(tmp_path / "cifar")
    ds = data.load_dataset("cifar10", str(root), quiet=True)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_y.tolist() == [c for c in range(10) for _ in range(2)]
    from PIL import Image

    first = np.asarray(Image.open(root / "train" / "class0" / "0000.png"))
    assert np.array_equal(ds.train_x[0].permute(1, 2, 0).numpy(), first)
    cached = data.load_dataset("cifar10", str(root), quiet=True)
    assert torch.equal(cached.train_x, ds.train_x)


def test_missing_data_directory_names_the_option(tmp_path):
    with pytest.raises(UsageError, match="--data"):
        data.load_dataset("cifar10", str(tmp_path / "nope"), quiet=True)


def test_cifar_binary_format_parser(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    recs = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        r = rng.integers(0, 256, (4, 3073), dtype=np.uint8)
        r[:, 0] %= 10
        r.tofile(folder / name)
        recs[name] = r
    from probe_plugins._cifar10_files import read_binary_dir

    t = read_binary_dir(folder)
    assert t["train_x"].shape == (20, 3, 32, 32)
    assert t["test_y"].tolist() == recs["test_batch.bin"][:, 0].tolist()
    assert np.array_equal(t["train_x"][0].numpy().reshape(-1), recs["data_batch_1.bin"][0, 1:])


def test_failed_download_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    import torchvision.datasets.utils as U

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(U, "download_and_extract_archive", offline)
    monkeypatch.delenv("PROBE_DATA", raising=False)
    with pytest.raises(ProbeError) as e:
        data.load_dataset("cifar10", None, quiet=True)
    msg = str(e.value)
    assert "--data" in msg and "PROBE_DATA" in msg and "\n" not in msg
