"""Model families and data sets as plugins: the contract, the stored spec, and bad input.

The built-in families are tested one by one in test_families.py and the data sets
in test_datasets.py; here a third party's family and data set are registered
in-process and used exactly like the built-ins, and every bad input is one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from reliability_helpers import installed_with, probe_cli

import probe
from probe.contract.families import ModelSpec, default_layers
from probe.datasets import tensors as data
from probe.errors import ProbeError, RunFileError, UsageError
from probe.rundir import checkpoint
from probe.rundir.run import Run
from probe.testing import make_tiny_run, registry_with, synthetic_dataset  # noqa: F401
from probe.training.config import TrainConfig
from probe.training.model import check_model, simplecnn_spec


@dataclasses.dataclass(frozen=True)
class TinyParams:
    width: int = probe.param(8, "Hidden units.", min=1, max=4096)


def build_tiny(params: TinyParams, input: probe.InputSpec, num_classes: int) -> torch.nn.Module:
    from torch import nn

    c, (h, w) = input.channels, input.size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, params.width),
        nn.ReLU(),
        nn.Linear(params.width, num_classes),
    )


class ThirdParty:
    """A plugin package's family and data set, registered through the hooks like any other."""

    @probe.hookimpl
    def register_models(self, register):
        register(
            probe.ModelFamily(
                name="tiny-mlp", build=build_tiny, params=TinyParams, summary="A one-layer MLP."
            )
        )

    @probe.hookimpl
    def register_datasets(self, register):
        register(
            probe.DataSource(
                name="grey",
                load=lambda data, quiet: synthetic_dataset(channels=1, size=12),
                summary="Synthetic grey 12x12 images.",
            )
        )


@pytest.fixture
def third_party(fresh_registry):
    """The installed plugins plus ThirdParty, as if its package were installed."""
    return installed_with(ThirdParty(), "third", "third-party")


def test_a_third_party_family_trains_loads_and_is_analysed(tmp_path: Path, third_party) -> None:
    from probe.analysis.runner import run_analyses

    ds = synthetic_dataset(channels=1, size=12)
    run = make_tiny_run(tmp_path / "run", dataset=ds, model="tiny-mlp", model_params=("width=16",))
    spec = Run(run).load_checkpoint(2).spec
    assert spec.family == "tiny-mlp" and dict(spec.params) == {"width": 16}
    assert spec.input.channels == 1 and spec.input.size == (12, 12)
    # mean/std were computed on the training subset (the data set gives none), in float64
    x = ds.train_x.double() / 255
    assert spec.input.mean == pytest.approx([x.mean().item()], abs=1e-6)
    assert spec.input.std == pytest.approx([x.std().item()], abs=1e-6)
    model = probe.load_model(run / "checkpoints" / "epoch_0002.safetensors")
    assert model[1].weight.shape == (16, 144)
    # probe picked the recorded layers itself: the penultimate layer is the classifier's input
    assert Run(run).config["model_spec"]["family"] == "tiny-mlp"
    outcomes = run_analyses(run, ["curves", "cka"], "last", quiet=True)
    assert [o.status for o in outcomes] == ["ok", "ok"], [o.error for o in outcomes]


def test_default_layers_end_with_the_classifier_input() -> None:
    spec = ModelSpec("x", {}, probe.InputSpec(1, (12, 12), (0.5,), (0.2,)), 3)
    with torch.device("meta"):
        model = build_tiny(TinyParams(width=5), spec.input, 3)
    # the top-level children that ran, then the ReLU whose output feeds the classifier
    assert default_layers(model, spec.input) == ["0", "1", "2"]


def test_checkpoint_of_a_family_not_installed_is_one_line(tmp_path: Path, third_party) -> None:
    run = make_tiny_run(
        tmp_path / "run", dataset=synthetic_dataset(channels=1, size=12), model="tiny-mlp", epochs=1
    )
    probe.contract.registry.reset_registry(None)  # the third party's package is uninstalled
    with pytest.raises(RunFileError) as e:
        probe.load_model(run / "checkpoints" / "epoch_0001.safetensors")
    msg = str(e.value)
    assert (
        "'tiny-mlp' is not installed" in msg
        and "distribution 'third-party'" in msg
        and "\n" not in msg
    )
    result = probe_cli("analyze", run, "-p", "curves", "-p", "filters", "--epochs", "last")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "'tiny-mlp' is not installed" in result.output


def test_legacy_spec_still_loads(tmp_path: Path, probe_run: Path) -> None:
    """Runs written before families (`{"arch": "SimpleCNN", ...}`) load as family
    simplecnn, bit for bit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = probe_run / "checkpoints" / "epoch_0002.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    new = json.loads(meta["model_spec"])
    legacy = {
        "arch": "SimpleCNN",
        **new["params"],
        "num_classes": 10,
        "in_channels": 3,
        "mean": new["input"]["mean"],
        "std": new["input"]["std"],
    }
    meta["model_spec"] = json.dumps(legacy, sort_keys=True)
    meta["content_sha256"] = checkpoint._digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    ckpt = checkpoint.load(path)
    assert ckpt.spec.family == "simplecnn" and ckpt.spec == Run(probe_run).load_checkpoint(1).spec
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ckpt.build_model()(x), Run(probe_run).model(2)(x), rtol=0, atol=0)
    cfg = json.loads((probe_run / "config.json").read_text())
    cfg["model_spec"] = legacy
    (probe_run / "config.json").write_text(json.dumps(cfg))
    assert Run(probe_run).probe_set().normalized().shape[1:] == (3, 32, 32)


def test_new_config_keys_leave_old_fingerprints_unchanged() -> None:
    cfg = TrainConfig()
    d = cfg.to_dict()
    keys = ("device", "val_size", "dataset", "model", "model_params", "example_records", "compile")
    for k in keys:
        d.pop(k)
    assert cfg.hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert TrainConfig(model="resnet").hash() != cfg.hash()


def test_images_that_do_not_fit_the_model_are_refused_before_building() -> None:
    spec = simplecnn_spec(depth=8, input=probe.InputSpec(1, (4, 4), (0.5,), (0.2,)))
    with pytest.raises(UsageError) as e:
        check_model(spec, 8)
    assert "cannot take 1x4x4 images" in str(e.value) and "simplecnn(" in str(e.value)
    with pytest.raises(UsageError, match="GiB"):
        check_model(simplecnn_spec(base_width=512), 10**7)


def test_a_loader_that_returns_wrong_data_is_one_error(fresh_registry) -> None:
    bad = synthetic_dataset()
    bad.train_y = bad.train_y + 10  # labels past the class list

    class Broken:
        @probe.hookimpl
        def register_datasets(self, register):
            register(probe.DataSource(name="broken", load=lambda d, q: bad, summary="Bad labels."))

    registry_with(Broken())
    with pytest.raises(ProbeError, match="labels outside 0..9"):
        data.load_dataset("broken", None)


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--model", "nope"], "--model", "'nope' is not installed"),
        (["--model", "Bad Name"], "--model", "is not a name"),
        (["--dataset", "nope"], "--dataset", "unknown data set 'nope'"),
        (["--model-param", "depth=0"], "--model-param depth", "must be >= 1"),
        (["--model-param", "width=3"], "--model-param", "has no parameter 'width'"),
        (["--model-param", "depth"], "--model-param", "KEY=VALUE"),
        (
            ["--model-param", "depth=8", "--model-depth", "2"],
            "--model-param",
            "also set by --model-depth",
        ),
        (["--model", "tiny-mlp", "--model-depth", "8"], "--model-depth", "simplecnn only"),
        (
            ["--model", "tiny-mlp", "--model-param", "width=100000"],
            "--model-param width",
            "<= 4096",
        ),
        (
            ["--dataset", "grey", "--model-depth", "8", "--full-maps", "features.2"],
            "--model",
            "cannot take 1x12x12",
        ),
        (["--full-maps", "features.99"], "--full-maps", "unknown layer"),
    ],
)
def test_bad_model_and_data_options(tmp_path: Path, third_party, args, option, words) -> None:
    from reliability_helpers import make_png_folder

    folder = make_png_folder(tmp_path / "data", n_train=1, n_test=1)
    run = tmp_path / "run"
    result = probe_cli(
        "train", "--run-dir", run, "--data", folder, "--epochs", "1", "--quiet", *args
    )
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and option in lines[0] and words in lines[0], result.output
    assert not run.exists()


def test_probe_models_and_datasets_list_the_installed_ones(third_party) -> None:
    out = probe_cli("models").output
    assert (
        "simplecnn" in out and "tiny-mlp" in out and "--model-param width (int, default 8)" in out
    )
    families = json.loads(probe_cli("models", "--json").output)
    assert {f["name"] for f in families} >= {"simplecnn", "tiny-mlp"}
    out = probe_cli("datasets").output
    assert "cifar10" in out and "grey" in out


def test_batchnorm_models_fit_small_images() -> None:
    """The meta forward pass runs in eval mode: train-mode BatchNorm would refuse
    resnet18's 1x1 maps at 32x32."""
    from probe.training.model import CIFAR10_INPUT

    spec = ModelSpec("torchvision", {"arch": "resnet18"}, CIFAR10_INPUT, 10)
    assert check_model(spec, 128) == 11_181_642  # torchvision's resnet18 with a 10-way classifier
