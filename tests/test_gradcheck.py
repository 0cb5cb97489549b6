"""gradcheck holds every piecewise-linear choice fixed however the model makes it.

References: the exact derivative is autograd's on the same float64 model; the check is
that the frozen finite difference agrees with it to 1e-6 where the plain (unfrozen) one,
computed here too, crosses kinks and does not. A model written with functional
activations only (F.relu, clamp, F.max_pool2d, torch.where(x > t), amax, ...) and every
built-in model family are checked; a deliberately wrong backward pass still fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.contract.cifar10 import CIFAR10_INPUT
from probe.contract.families import get_family
from probe.numerics import gradcheck as G


class Functional(nn.Module):
    """No activation or pooling module: every kink is a functional call or a tensor method."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c1(x)))
        x = F.max_pool2d(x, 2)
        x = torch.clamp(self.c2(x), min=0)
        x = torch.where(x > 0.1, x, 0.1 * x)
        x = F.relu6(3 * x) + F.leaky_relu(self.c3(x), 0.2).abs()
        x = torch.maximum(x, -0.5 * x)
        return self.fc(torch.cat([x.amax((2, 3)), x.max(dim=3).values.mean(2)], 1))


def batch(n: int = 8, size: int = 12, classes: int = 5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes


def test_a_model_of_functional_calls_only_agrees_when_frozen_and_not_when_free() -> None:
    torch.manual_seed(0)
    model, (x, y) = Functional().eval(), batch()
    frozen = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=8, eps=1e-2)
    assert {r.layer for r in frozen} == {"c1", "c2", "c3"}
    assert all(r.agrees(1e-6) and r.rel_error < 1e-6 for r in frozen), [
        (r.layer, r.rel_error) for r in frozen
    ]
    assert any(r.kink for r in frozen)  # the step crossed kinks: freezing is what made it agree
    free = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=8, eps=1e-2, freeze_kinks=False)
    assert max(r.rel_error for r in free) > 1e-3  # the check can fail: kinks, not backprop
    assert [r.analytic for r in free] == [r.analytic for r in frozen]


def test_in_place_and_reused_operations_replay_their_own_call() -> None:
    """nn.ReLU(inplace=True) called twice (torchvision's blocks) and torch.relu_ on a view."""

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.c1(x))
            x = self.relu(self.c2(x) + x)
            x = 1.5 * x
            torch.relu_(x[:, :2])  # in place, on a view
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(1)
    model, (x, y) = Reused(), batch()
    rows = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=8, eps=1e-2)
    assert max(r.rel_error for r in rows) < 1e-6, [(r.layer, r.rel_error) for r in rows]


FAMILIES = [
    ("simplecnn", {"depth": 2, "base_width": 4, "hidden": 8}),
    ("resnet", {"depth": 8}),
    ("resnet", {"depth": 8, "shortcut": "B"}),
    ("mlp", {"depth": 2, "width": 16}),
    ("torchvision", {"arch": "resnet18"}),
    ("torchvision", {"arch": "mobilenet_v3_small"}),
]


@pytest.mark.parametrize("family, params", FAMILIES, ids=lambda v: str(v))
def test_every_built_in_family_passes_with_a_correct_backward_pass(family, params) -> None:
    torch.manual_seed(0)
    model = get_family(family).spec(params, CIFAR10_INPUT, 10).build()
    with torch.no_grad():  # BatchNorm statistics away from the identity of a fresh model
        model.train()
        model(torch.randn(16, 3, 32, 32))
    model.eval()
    x, y = batch(n=4, size=32, classes=10)
    types = (nn.Linear,) if family == "mlp" else (nn.Conv2d,)
    per_layer = 1 if family == "torchvision" else 3
    rows = G.gradcheck_conv_layers(
        model, x, y, n_samples_per_layer=per_layer, layer_types=types, seed=3
    )
    assert rows and all(r.agrees(1e-6) for r in rows), [
        (r.layer, r.analytic, r.rel_error, r.abs_error) for r in rows if not r.agrees(1e-6)
    ]


def test_the_absolute_floor_is_float64_resolution_and_no_wider() -> None:
    """A derivative of 1e-14 cannot be resolved (it passes within the floor, flagged); a
    1 % error in a derivative of 1e-4 is far above the floor and fails."""
    row = G.GradCheckRow("c", (0,), 1e-14, 3e-14, 2 / 3, False, 2e-14, 3e-11)
    assert row.agrees(1e-6) and row.below_resolution and row.to_dict()["below_resolution"]
    wrong = G.GradCheckRow("c", (0,), 1e-4, 1.01e-4, 0.0099, False, 1e-6, 3e-11)
    assert not wrong.agrees(1e-6) and not wrong.below_resolution
    model, (x, y) = Functional().eval(), batch()
    [r] = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=1)[:1]
    with torch.no_grad():
        loss = float(F.cross_entropy(copy.deepcopy(model).double()(x.double()), y))
    assert r.resolution == pytest.approx(64 * 2.220446049250313e-16 * max(loss, 1) / 1e-3)


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return F.relu(x)

    @staticmethod
    def backward(ctx, g):  # 1 % too large, and ignores the ReLU mask: a real backprop bug
        return 1.01 * g


def test_a_wrong_backward_pass_through_a_functional_relu_still_fails() -> None:
    x, y = batch()
    torch.manual_seed(0)

    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(_Scaled.apply(self.c(x)).mean((2, 3)))

    rows = G.gradcheck_conv_layers(Wrong(), x, y, n_samples_per_layer=6)
    assert all(not r.agrees(1e-6) for r in rows if abs(r.analytic) > 1e-8)
    assert any(abs(r.analytic) > 1e-8 for r in rows)


def test_the_plugin_passes_on_a_trained_resnet_of_functional_relus(tmp_path) -> None:
    """The issue's case: `resnet depth=8` (F.relu in its blocks) failed with 1.45e-2."""
    import json

    from probe.analysis.runner import run_analyses
    from probe.testing import make_tiny_run

    run = make_tiny_run(tmp_path / "run", model="resnet", model_params=("depth=8",))
    params = {"gradcheck": {"n_images": 8, "samples_per_layer": 3}}
    (o,) = run_analyses(run, ["gradcheck"], "last", params, device="cpu")
    assert o.status == "ok", o.error
    doc = json.loads((o.path / "gradcheck.json").read_text())
    manifest = json.loads((o.path / "manifest.json").read_text())
    assert manifest["scalars"]["passed"] is True
    assert manifest["scalars"]["max_rel_error"] < 1e-6
    assert doc["resolution"] > 0 and "abs_error <= resolution" in doc["passes_if"]
    assert any(r["kink"] for r in doc["rows"])  # kinks were crossed and held
    # every one of depth 8's 7 conv layers is under the default bound of 8 and checked
    assert doc["n_layers"] == len(doc["layers_sampled"]) == 7 and doc["samples_per_layer"] == 3


def test_the_default_samples_at_most_8_weights_of_at_most_8_layers_picked_by_the_seed() -> None:
    """Cost bounded by default (8 weights x 8 layers); the same seed picks the same weights."""
    import inspect

    from plugins.gradcheck import Params

    layers = [nn.Conv2d(3, 4, 3, padding=1)] + [nn.Conv2d(4, 4, 3, padding=1) for _ in range(11)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = batch(4, size=6)
    defaults = Params()
    run = {
        seed: G.gradcheck_conv_layers(
            model,
            x,
            y,
            n_samples_per_layer=defaults.samples_per_layer,
            seed=seed,
            max_layers=defaults.max_layers,
        )
        for seed in (0, 1)
    }
    rows = G.gradcheck_conv_layers(model, x, y, seed=0, max_layers=defaults.max_layers)
    assert inspect.signature(G.gradcheck_conv_layers).parameters["n_samples_per_layer"].default == 8
    assert (defaults.samples_per_layer, defaults.max_layers) == (8, 8)
    names = list(dict.fromkeys(r.layer for r in rows))
    assert len(names) == 8 and names[0] == "0" and names[-1] == "11"  # first and last included
    assert all(sum(r.layer == n for r in rows) == 8 for n in names)
    assert [(r.layer, r.index) for r in rows] == [(r.layer, r.index) for r in run[0]]
    assert [(r.layer, r.index) for r in rows] != [(r.layer, r.index) for r in run[1]]
    assert all(r.agrees(1e-6) for r in rows)  # the numerical check itself still holds
    assert G.spread_layers(12, 8) == [0, 2, 3, 5, 6, 8, 9, 11]
    assert G.spread_layers(5, None) == G.spread_layers(5, 8) == [0, 1, 2, 3, 4]
