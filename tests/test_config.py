import pytest

from probe.errors import UsageError
from probe.training.config import TrainConfig, load_toml, make_config


def test_defaults_are_the_notebooks_config():
    c = TrainConfig()
    assert (c.batch_size, c.val_batch_size, c.epochs, c.subset_train_size) == (128, 256, 30, 10_000)
    assert (c.lr, c.momentum, c.weight_decay, c.optimizer) == (0.01, 0.9, 0.0, "SGD")
    assert (c.model_depth, c.dropout, c.augment, c.seed) == (4, 0.0, True, 42)


def test_toml_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('optimizer = "Adam"\nlr = 0.001\nmodel-depth = 8\nfull_maps = ["features.2"]\n')
    cfg = make_config(load_toml(f), {"lr": 0.05})
    assert (
        cfg.optimizer == "Adam"
        and cfg.model_depth == 8
        and cfg.lr == 0.05
        and cfg.full_maps == ("features.2",)
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ('optimiser = "Adam"', "unknown config key 'optimiser'"),
        ('lr = "fast"', "lr"),
        ("model_depth = 5", "model_depth"),
        ("epochs = -1", "epochs"),
        ("lr = [", "not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line_naming_it(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(UsageError) as e:
        make_config(load_toml(f))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_hash_ignores_device_only():
    assert TrainConfig(device="cpu").hash() == TrainConfig(device="auto").hash()
    assert TrainConfig(lr=0.1).hash() != TrainConfig().hash()
