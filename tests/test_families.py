"""The built-in model families resnet, mlp and torchvision (probe_plugins.resnet / .mlp /
.torchvision_models).

Checked against independent references: He et al. 2016's parameter counts (Table 6)
from a closed form, hand-written block forwards for shortcut options A and none,
the kaiming-normal scale, and for each family that the recorded layers exist, give
2-D or 4-D outputs on a real forward, and end with the classifier's input.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probe
from probe.contract.families import InputSpec, ModelSpec, default_layers
from probe.contract.registry import PluginInfo, Registry
from probe_plugins import mlp as mlp_plugin
from probe_plugins import resnet as resnet_plugin
from probe_plugins import torchvision_models as tv_plugin
from probe_plugins.nets.resnet import BasicBlock, CifarResNet, PadShortcut


def spec(channels: int = 3, size: tuple[int, int] = (32, 32)) -> InputSpec:
    return InputSpec(channels, size, (0.5,) * channels, (0.25,) * channels)


def family(module):
    reg = Registry()
    reg.register(module, PluginInfo(module.__name__.rsplit(".", 1)[1], "x", "probe-cnn", "0"))
    return reg, reg.models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- resnet ---------------------------------------------------------------------------------------


def he_count(depth: int, width: int = 1, classes: int = 10, shortcut: str = "A") -> int:
    """Closed form: stem conv+BN, n blocks of two 3x3 conv+BN per stage,
    projections for option B, fc."""
    n = (depth - 2) // 6
    c = [16 * width, 32 * width, 64 * width]
    total, cin = 3 * 9 * c[0] + 2 * c[0], c[0]
    for cs in c:
        for _ in range(n):
            total += 9 * cin * cs + 9 * cs * cs + 4 * cs
            if shortcut == "B" and cin != cs:
                total += cin * cs + 2 * cs
            cin = cs
    return total + c[2] * classes + classes


@pytest.mark.parametrize(
    "depth,table", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)]
)
def test_resnet_parameter_counts_match_he_et_al_table_6(depth, table):
    with torch.device("meta"):
        model = CifarResNet(depth)
    count = n_params(model)
    assert count == he_count(depth)
    assert round(count / 1e6, 2 if depth < 100 else 1) == table


def test_resnet_shortcut_options_and_width_change_counts_as_expected():
    with torch.device("meta"):
        b = CifarResNet(20, shortcut="B")
        none = CifarResNet(56, shortcut="none")
        wide = CifarResNet(20, width=4, num_classes=100)
    assert n_params(b) == he_count(20, shortcut="B") == he_count(20) + 2752
    assert n_params(none) == he_count(56)  # option A has no parameters either
    assert n_params(wide) == he_count(20, 4, 100)


def test_resnet_state_dict_keys_are_readable_and_stable():
    keys = list(CifarResNet(20).state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer1.0.conv1.weight" in keys and "layer3.2.bn2.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert not [k for k in keys if "shortcut" in k]  # option A: parameter-free
    b = CifarResNet(20, shortcut="B").state_dict()
    assert {k.rsplit(".", 1)[0] for k in b if "shortcut" in k} == {
        "layer2.0.shortcut.0",
        "layer2.0.shortcut.1",
        "layer3.0.shortcut.0",
        "layer3.0.shortcut.1",
    }
    assert b["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)


def test_resnet_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    model = CifarResNet(20)
    w = model.layer3[1].conv2.weight  # 64*64*9 draws
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert abs(w.mean().item()) < 0.002
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    assert model.bn1.weight.eq(1).all() and model.bn1.bias.eq(0).all()


def _random_bn(block: BasicBlock) -> None:
    g = torch.Generator().manual_seed(1)
    for bn in (block.bn1, block.bn2):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=g))


def _residual_branch(block: BasicBlock, x: torch.Tensor, stride: int) -> torch.Tensor:
    def bn(t, m):
        return (t - m.running_mean[:, None, None]) / torch.sqrt(
            m.running_var[:, None, None] + m.eps
        ) * m.weight[:, None, None] + m.bias[:, None, None]

    out = torch.relu(bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
    return bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)


def test_option_a_block_adds_zero_padded_subsampled_identity():
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2, shortcut="A").double().eval()
    _random_bn(block)
    assert isinstance(block.shortcut, PadShortcut)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    ident = torch.zeros(2, 8, 4, 4, dtype=torch.float64)
    ident[:, 2:6] = x[
        :, :, 0::2, 0::2
    ]  # 2 zero channels on each side, as F.pad(planes//4, planes//4)
    with torch.no_grad():
        ref = torch.relu(_residual_branch(block, x, 2) + ident)
        torch.testing.assert_close(block(x), ref)


@pytest.mark.parametrize("stride,cin", [(1, 8), (2, 4)])
def test_shortcut_none_block_has_no_skip(stride, cin):
    torch.manual_seed(0)
    block = BasicBlock(cin, 8, stride=stride, shortcut="none").double().eval()
    _random_bn(block)
    assert block.shortcut is None
    x = torch.randn(2, cin, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(_residual_branch(block, x, stride)))
    model = CifarResNet(20, shortcut="none")
    assert not [
        n
        for n, m in model.named_modules()
        if isinstance(m, (PadShortcut, nn.Identity)) or "shortcut" in n
    ]


def test_resnet_params_refuse_bad_depth_in_one_line():
    with pytest.raises(ValueError, match=r"6n\+2.*got 21; nearest: 20 or 26"):
        resnet_plugin.Params(depth=21)
    _, models = family(resnet_plugin)
    fam = models["resnet"]
    with pytest.raises(probe.UsageError, match="6n"):
        fam.make_params({"depth": "33"})
    with pytest.raises(probe.UsageError, match="shortcut"):
        fam.make_params({"shortcut": "C"})
    assert fam.make_params({"depth": "56", "shortcut": "none"}) == resnet_plugin.Params(
        56, 1, "none"
    )


@pytest.mark.parametrize("channels,size", [(1, (8, 8)), (3, (9, 13)), (5, (32, 32))])
def test_resnet_any_input_size_and_channels(channels, size):
    model = resnet_plugin.build(resnet_plugin.Params(8, 1, "B"), spec(channels, size), 7)
    assert model(torch.randn(2, channels, *size)).shape == (2, 7)


# --- mlp ------------------------------------------------------------------------------------------


def test_mlp_structure_and_shapes():
    p = mlp_plugin.Params(depth=3, width=16, dropout=0.2, batchnorm=True)
    model = mlp_plugin.build(p, spec(1, (28, 28)), 10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert (
        n_params(model) == 784 * 16 + 2 * 16 * 16 + 3 * 2 * 16 + 16 * 10 + 10
    )  # no Linear bias before BN
    assert [n for n, _ in model.named_children()] == ["flatten", "hidden", "classifier"]
    assert "hidden.2.bn.running_mean" in model.state_dict()
    plain = mlp_plugin.build(mlp_plugin.Params(), spec(3, (5, 7)), 4)
    assert n_params(plain) == 105 * 256 + 256 + 256 * 256 + 256 + 256 * 4 + 4
    assert not [m for m in plain.modules() if isinstance(m, (nn.Dropout, nn.BatchNorm1d))]
    assert mlp_plugin.layers(plain, mlp_plugin.Params()) == ["hidden.0", "hidden.1"]
    linear = mlp_plugin.build(mlp_plugin.Params(depth=0), spec(1, (4, 4)), 3)
    assert mlp_plugin.layers(linear, mlp_plugin.Params(depth=0)) == ["flatten"]
    assert linear.classifier.in_features == 16


# --- recorded layers, for every family ------------------------------------------------------------


def _record(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    assert set(names) <= set(mods), set(names) - set(mods)
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        mods[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in names
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def _classifier_inputs(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].in_features
    return model.classifier[1].in_channels  # squeezenet: a 1x1 conv classifier


CASES = [
    (resnet_plugin, {}, 3, 32),
    (resnet_plugin, {"shortcut": "B", "width": 2}, 1, 12),
    (resnet_plugin, {"shortcut": "none"}, 2, 9),
    (mlp_plugin, {}, 1, 28),
    (mlp_plugin, {"depth": 1, "batchnorm": True, "dropout": 0.5}, 3, 6),
    (mlp_plugin, {"depth": 0}, 1, 5),
    (tv_plugin, {}, 3, 32),
    (tv_plugin, {"arch": "mobilenet_v3_small"}, 1, 32),
    (tv_plugin, {"arch": "squeezenet1_1"}, 1, 32),
    (tv_plugin, {"arch": "shufflenet_v2_x0_5"}, 3, 32),
]


@pytest.mark.parametrize(
    "module,raw,channels,size", CASES, ids=lambda v: str(v) if isinstance(v, dict) else None
)
def test_recorded_layers_are_2d_or_4d_and_end_with_the_classifier_input(
    module, raw, channels, size
):
    _, models = family(module)
    (fam,) = models.values()
    params = fam.make_params(raw)
    inp = spec(channels, (size, size))
    with torch.device("meta"):
        skeleton = fam.build(params, inp, 10)
    names = fam.layers(skeleton, params)
    torch.manual_seed(0)
    model = fam.build(params, inp, 10)
    assert [n for n, _ in skeleton.named_parameters()] == [n for n, _ in model.named_parameters()]
    outs = _record(model, names, torch.randn(2, channels, size, size))
    assert list(outs) == names  # all ran, in network order
    assert all(o.dim() in (2, 4) and o.shape[0] == 2 for o in outs.values())
    last = outs[names[-1]]
    assert (
        last.shape[1] if module is tv_plugin and "squeeze" in str(raw) else last[0].numel()
    ) == _classifier_inputs(model)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_model_spec_builds_and_lists_layers_through_the_registry(fresh_registry):
    from probe.testing import registry_with

    registry_with(resnet_plugin, mlp_plugin, tv_plugin)
    s = ModelSpec("resnet", {"depth": 32, "shortcut": "B"}, spec(), 10)
    assert n_params(s.skeleton()) == he_count(32, shortcut="B")
    assert s.recorded_layers() == ["relu", "layer1", "layer2", "layer3", "avgpool"]
    with pytest.raises(ValueError, match="6n"):
        ModelSpec("resnet", {"depth": 30}, spec(), 10).build()
    assert ModelSpec("mlp", {"depth": 3}, spec(1, (28, 28)), 10).recorded_layers()[-1] == "hidden.2"
    tv = ModelSpec("torchvision", {"arch": "vgg11"}, spec(1, (32, 32)), 10)
    assert tv.recorded_layers() == [
        "features.1",
        "features.4",
        "features.9",
        "features.14",
        "features.19",
        "features.20",
        "classifier.5",
    ]


# --- registration ---------------------------------------------------------------------------------


def test_each_plugin_registers_its_family():
    for module, name in (
        (resnet_plugin, "resnet"),
        (mlp_plugin, "mlp"),
        (tv_plugin, "torchvision"),
    ):
        reg, models = family(module)
        assert list(models) == [name] and not reg.notes
        assert models[name].provider == "probe-cnn" and models[name].params is module.Params


def test_plugin_modules_and_registration_import_no_torch():
    code = (
        "import sys; from probe.contract.registry import Registry, PluginInfo\n"
        "import probe_plugins.resnet as a, probe_plugins.mlp as b, "
        "probe_plugins.torchvision_models as c\n"
        "r = Registry()\n"
        "for m in (a, b, c): r.register(m, PluginInfo(m.__name__, 'x', 'probe-cnn', '0'))\n"
        "assert sorted(r.models) == ['mlp', 'resnet', 'torchvision'], r.models\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- torchvision ----------------------------------------------------------------------------------


def test_torchvision_arch_is_checked_with_one_line_errors():
    with pytest.raises(ValueError, match="transformer.*resnet\\*"):
        tv_plugin.Params(arch="vit_b_16")
    with pytest.raises(
        ValueError, match="no classification model 'resnet19'; did you mean resnet18"
    ):
        tv_plugin.Params(arch="resnet19")
    with pytest.raises(ValueError, match="model name"):
        tv_plugin.Params(arch="../resnet18")
    _, models = family(tv_plugin)
    with pytest.raises(probe.UsageError, match="swin"):
        models["torchvision"].make_params({"arch": "swin_t"})
    with pytest.raises(ValueError, match="'alexnet' cannot take 3x32x32 input .*too small"):
        tv_plugin.build(tv_plugin.Params("alexnet"), spec(), 10)


def test_torchvision_stem_takes_any_channels_with_the_family_init():
    torch.manual_seed(0)
    model = tv_plugin.build(tv_plugin.Params(), spec(1), 10)
    assert (
        model.conv1.in_channels,
        model.conv1.out_channels,
        model.conv1.kernel_size,
        model.conv1.stride,
    ) == (1, 64, (7, 7), (2, 2))
    # torchvision's resnet init: kaiming normal, fan_out, for the replaced conv as for the others
    assert model.conv1.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 49)), rel=0.05)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    from torchvision.models import get_model

    for arch in ("resnet18", "shufflenet_v2_x0_5", "densenet121", "regnet_x_400mf"):
        with torch.device("meta"):
            ours = tv_plugin.build(tv_plugin.Params(arch), spec(2), 10)
        theirs = get_model(arch, weights=None, num_classes=10)  # regnet's own builder fails on meta
        assert list(ours.state_dict()) == list(theirs.state_dict())  # the additions hold no state
        stem = next(m for m in ours.modules() if isinstance(m, nn.Conv2d))
        assert stem.in_channels == 2


def test_torchvision_regnet_builds_on_meta_and_leaves_torchvision_as_it_was():
    from torchvision.models import regnet

    before = regnet.BlockParams.__dict__["from_init_params"]
    with torch.device("meta"):
        model = tv_plugin.build(tv_plugin.Params("regnet_y_400mf"), spec(), 10)
    assert model.fc.weight.is_meta
    assert regnet.BlockParams.__dict__["from_init_params"] is before


def test_torchvision_fallback_uses_default_layers():
    with torch.device("meta"):
        model = tv_plugin.build(tv_plugin.Params("googlenet"), spec(1, (64, 64)), 10)
    names = tv_plugin.layers(model, tv_plugin.Params("googlenet"))
    assert names == default_layers(model, spec(1, (64, 64)))
    assert names[0] == "conv1" and names[-1] == "dropout"
