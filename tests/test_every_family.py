"""Every built-in analysis on a tiny instance of every built-in model family.

Until model families became plugins every analysis only ever saw SimpleCNN; here
each one runs on SimpleCNN, a CIFAR ResNet (with and without projection
shortcuts), an MLP on grey 12x12 images (no conv layer, no BatchNorm), a
torchvision network (depthwise convs, BatchNorm on 1x1 maps) and a third party's
family normalised by GroupNorm and LayerNorm instead of BatchNorm. Each job must
either succeed with finite headline numbers and its files, or be skipped with one
line saying why (`probe.Skip`): `filters` on a model without a conv layer, and
BatchNorm-only options on a model without BatchNorm.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import probe
from probe.analysis.runner import run_analyses
from probe.testing import make_tiny_run, synthetic_dataset

# Small parameters: each job takes a second or two on a tiny model.
PARAMS = {
    "hessian": {
        "n_images": 8,
        "top_k": 1,
        "smallest": 1,
        "max_iter": 4,
        "trace_samples": 2,
        "density_runs": 1,
        "density_steps": 4,
        "blocks": "layer",
        "tol": 0.5,
        "residual_tol": 1.0,
    },
    "landscape": {"resolution": 3, "n_images": 32},
    "sharpness": {"steps": 2, "samples": 2, "max_samples": 2, "n_images": 32},
    "projection": {"perplexity": 5.0, "method": "pca"},
    "gradcheck": {"n_images": 2, "samples_per_layer": 2},
}
EPOCH_ANALYSES = [
    "cka",
    "curves",
    "filters",
    "gradcheck",
    "hessian",
    "landscape",
    "projection",
    "rsm",
    "sharpness",
    "spectra",
]
RUN_ANALYSES = ["cka-epochs", "filters-evolution", "spectra-epochs"]
CONV_ONLY = {"filters", "filters-evolution"}
# What a family lacks, and which analyses must then be skipped (not failed).
NO_CONV = {"mlp"}


@dataclasses.dataclass(frozen=True)
class NormParams:
    width: int = probe.param(8, "Channels of the first conv layer.", min=1, max=256)


def build_norm_cnn(params: NormParams, input: probe.InputSpec, num_classes: int):
    """conv-GroupNorm-ReLU x2, global average pool, LayerNorm, a linear head:
    no BatchNorm anywhere."""
    from torch import nn

    w = params.width
    return nn.Sequential(
        nn.Conv2d(input.channels, w, 3, padding=1, bias=False),
        nn.GroupNorm(2, w),
        nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(2, 2 * w),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(2 * w),
        nn.Linear(2 * w, num_classes),
    )


class NormFamily:
    @probe.hookimpl
    def register_models(self, register):
        register(
            probe.ModelFamily(
                name="gn-ln-cnn",
                build=build_norm_cnn,
                params=NormParams,
                summary="A CNN normalised with GroupNorm and LayerNorm (no BatchNorm).",
            )
        )


FAMILIES = {
    "simplecnn": dict(),
    "resnet": dict(
        model="resnet", model_params=("depth=8", "width=1", "shortcut=B")
    ),  # 1x1 projection convs too
    "mlp": dict(
        model="mlp", model_params=("depth=2", "width=32"), dataset=dict(channels=1, size=12)
    ),
    # squeezenet1_1: no BatchNorm, 26 conv layers. (mobilenet_v3_small, resnet18 and the other
    # BatchNorm archs fail probe.training.model.check_model at 32x32: its batch-of-one forward in
    # train mode reaches a 1x1 map.)
    "torchvision": dict(model="torchvision", model_params=("arch=squeezenet1_1",)),
    "gn-ln-cnn": dict(model="gn-ln-cnn", model_params=("width=8",)),
}


@pytest.fixture(scope="session")
def family_registry():
    """The installed plugins plus the GroupNorm/LayerNorm family, for the whole session."""
    from probe.contract.registry import PluginInfo, load_registry, reset_registry

    reg = load_registry()
    reg.register(NormFamily(), PluginInfo("gnln", "tests", "tests", "1"))
    reset_registry(reg)
    yield reg
    reset_registry(None)


@pytest.fixture(scope="session")
def family_runs(tmp_path_factory, family_registry) -> dict[str, Path]:
    runs = {}
    for name, spec in FAMILIES.items():
        spec = dict(spec)
        ds = synthetic_dataset(**spec.pop("dataset", {}))
        runs[name] = make_tiny_run(tmp_path_factory.mktemp(name) / "run", dataset=ds, **spec)
    return runs


def _check_ok(outcome, family: str) -> None:
    import json

    manifest = json.loads((outcome.path / "manifest.json").read_text())
    for f in manifest["files"]:
        assert (outcome.path / f).is_file(), (family, outcome.label, f)
    assert manifest["files"], (family, outcome.label)
    for k, v in manifest["scalars"].items():
        if isinstance(v, float):
            assert math.isfinite(v), (family, outcome.label, k, v)
        # a None would be a NaN or inf written as null: only the analyses that
        # say "not measured" may
        # gradcheck's relative errors, where every sampled gradient is under float64's
        # finite-difference resolution (squeezenet's dead ReLUs: all exactly 0) say so
        unresolved = k.endswith("_rel_error") and manifest["scalars"].get(
            "n_below_resolution"
        ) == manifest["scalars"].get("n_checked")
        assert v is not None or k in ("edge_of_stability",) or unresolved, (
            family,
            outcome.label,
            k,
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_analysis_runs_or_is_skipped(family: str, family_runs, family_registry) -> None:
    run = family_runs[family]
    outcomes = run_analyses(run, EPOCH_ANALYSES, "last", params=PARAMS, device="cpu", quiet=True)
    outcomes += run_analyses(run, RUN_ANALYSES, "all", params=PARAMS, device="cpu", quiet=True)
    by_name = {o.analysis: o for o in outcomes}
    assert set(by_name) == set(EPOCH_ANALYSES) | set(RUN_ANALYSES)
    for o in outcomes:
        if family in NO_CONV and o.analysis in CONV_ONLY:
            assert o.status == "skipped", (family, o.label, o.status, o.error)
            assert "no Conv2d layer" in o.reason and "\n" not in o.reason
            continue
        assert o.status == "ok", (family, o.label, o.status, o.error, o.traceback[-2000:])
        _check_ok(o, family)


def test_batchnorm_options_skip_on_models_without_batchnorm(family_runs) -> None:
    """bn=batch / bn=recalibrate would equal the default on a model without
    BatchNorm: skipped, saying so."""
    for family in ("mlp", "gn-ln-cnn"):
        run = family_runs[family]
        outcomes = run_analyses(
            run,
            ["hessian", "landscape"],
            "last",
            device="cpu",
            quiet=True,
            params={
                "hessian": {**PARAMS["hessian"], "bn": "batch"},
                "landscape": {**PARAMS["landscape"], "bn": "recalibrate"},
            },
        )
        assert [o.status for o in outcomes] == ["skipped", "skipped"], [
            (o.label, o.error) for o in outcomes
        ]
        assert "bn=batch: the model has no BatchNorm layer" in outcomes[0].reason
        assert "bn=recalibrate: the model has no BatchNorm layer" in outcomes[1].reason
    (o,) = run_analyses(
        family_runs["simplecnn"],
        ["hessian"],
        "last",
        device="cpu",
        quiet=True,
        params={"hessian": {**PARAMS["hessian"], "blocks": "none", "bn": "batch"}},
    )
    assert o.status == "ok", o.error


class NeedsConv:
    """A third party's analysis that skips itself on a model without a conv
    layer, counting its runs."""

    calls = 0

    @probe.hookimpl
    def register_analyses(self, register):
        def run(ctx):
            from torch import nn

            NeedsConv.calls += 1
            model = ctx.model()
            if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
                raise probe.Skip("the model has no Conv2d layer\nsecond line dropped")
            ctx.out.scalar("convs", sum(isinstance(m, nn.Conv2d) for m in model.modules()))

        register(
            probe.Analysis(
                name="needs-conv", run=run, needs={"model"}, summary="Counts conv layers."
            )
        )


def test_a_skip_is_one_line_recorded_not_a_failure_and_not_asked_again(
    family_runs, tmp_path
) -> None:
    import shutil

    from probe.analysis.runner import summary_line
    from probe.contract.registry import PluginInfo, Registry
    from probe.report.pages import report_run

    run = tmp_path / "run"
    shutil.copytree(family_runs["mlp"], run)
    reg = Registry()
    reg.register(NeedsConv(), PluginInfo("needs", "tests", "tests", "1"))
    NeedsConv.calls = 0
    (o,) = run_analyses(run, ["needs-conv"], "last", registry=reg, device="cpu", quiet=True)
    assert (o.status, o.reason, o.failed, o.path) == (
        "skipped",
        "the model has no Conv2d layer",
        False,
        None,
    )
    assert o.line() == "skipped: needs-conv epoch 2: the model has no Conv2d layer"
    assert summary_line([o]) == "0 computed, 0 cached, 1 skipped, 0 failed"
    record = run / "analyses" / "needs-conv" / "default" / "epoch_0002.skipped.json"
    assert record.is_file() and not list(
        run.glob("analyses/needs-conv/default/epoch_0002*.failed.json")
    )
    assert not (run / "analyses" / "needs-conv" / "default" / "epoch_0002").exists()
    assert not (run / "logs").exists() or not list((run / "logs").iterdir())  # no failure log
    # answered from the record: the analysis does not run again while its inputs are unchanged
    (again,) = run_analyses(run, ["needs-conv"], "last", registry=reg, device="cpu", quiet=True)
    assert (again.status, again.reason, NeedsConv.calls) == ("skipped", o.reason, 1)
    (forced,) = run_analyses(
        run, ["needs-conv"], "last", registry=reg, device="cpu", quiet=True, force=True
    )
    assert forced.status == "skipped" and NeedsConv.calls == 2
    # another epoch is another model: asked again
    (e0,) = run_analyses(run, ["needs-conv"], "0", registry=reg, device="cpu", quiet=True)
    assert e0.status == "skipped" and NeedsConv.calls == 3
    # the report lists it as not applicable, with its reason, not as missing or failed
    page = report_run(run, installed=({}, ""), warn=lambda m: None)
    html = page.path.read_text()
    assert (
        "Not applicable" in html and "the model has no Conv2d layer" in html and page.failures == 0
    )
    # a record whose key no longer matches (changed inputs or identity) is not trusted: asked again
    record.write_text(record.read_text().replace('"key": "', '"key": "x'))
    (o2,) = run_analyses(run, ["needs-conv"], "last", registry=reg, device="cpu", quiet=True)
    assert o2.status == "skipped" and NeedsConv.calls == 4


def test_a_conv_model_runs_the_same_analysis(family_runs, tmp_path) -> None:
    import shutil

    from probe.contract.registry import PluginInfo, Registry

    run = tmp_path / "run"
    shutil.copytree(family_runs["gn-ln-cnn"], run)
    reg = Registry()
    reg.register(NeedsConv(), PluginInfo("needs", "tests", "tests", "1"))
    (o,) = run_analyses(run, ["needs-conv"], "last", registry=reg, device="cpu", quiet=True)
    assert o.status == "ok" and not list(run.glob("analyses/needs-conv/default/*.skipped.json"))


def test_gradcheck_replays_each_call_of_a_reused_relu() -> None:
    """torchvision's ResNet blocks apply one nn.ReLU twice: each call must replay its own on/off
    pattern (a single recorded mask was the second call's, of another shape or another pattern)."""
    import torch
    from torch import nn

    from probe.numerics import gradcheck as G

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = (
                nn.Conv2d(3, 4, 3, padding=1),
                nn.Conv2d(4, 6, 3, stride=2, padding=1),
            )
            self.relu, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            x = self.pool(self.relu(self.conv1(x)))
            x = self.pool(self.relu(self.conv2(x)))  # the same ReLU and max-pool, called again
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model, x, y = Reuse(), torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    rows = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=6, eps=1e-2)
    assert {r.layer for r in rows} == {"conv1", "conv2"}
    assert max(r.rel_error for r in rows) < 1e-6, [(r.layer, r.rel_error, r.kink) for r in rows]
    lin = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=4, layer_types=(nn.Linear,))
    assert {r.layer for r in lin} == {"fc"} and max(r.rel_error for r in lin) < 1e-6


def test_filters_of_a_grey_first_layer(tmp_path, family_registry) -> None:
    """A 1-channel first conv layer is drawn in grey (the RGB grid needs 3 channels)."""
    import h5py

    run = make_tiny_run(
        tmp_path / "run",
        dataset=synthetic_dataset(channels=1, size=12),
        model="gn-ln-cnn",
        model_params=("width=4",),
    )
    outcomes = run_analyses(run, ["filters", "filters-evolution"], None, device="cpu", quiet=True)
    assert [o.status for o in outcomes] == ["ok", "ok"], [o.error for o in outcomes]
    with h5py.File(outcomes[0].path / "filters.h5") as f:
        assert f["weight"].shape == (4, 1, 3, 3)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_hessian_through_hardswish_and_hardsigmoid(method: str) -> None:
    """MobileNetV3's activations have no second derivative in torch; the Hessian still comes out,
    and equals the dense float64 Hessian of the same network written with relu6."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from probe.numerics.curvature import BatchedLoss, HessianOperator

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.Hardswish(), nn.Linear(4, 4), nn.Hardsigmoid(), nn.Linear(4, 3)
    ).double()
    x, y = torch.randn(16, 3, dtype=torch.float64) * 3, torch.arange(16) % 3
    op = HessianOperator(BatchedLoss(model, x, y, batch_size=7), method=method)
    dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], 1)
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        ps, i = [], 0
        for s in shapes:
            ps.append(flat[i : i + s.numel()].view(s))
            i += s.numel()
        h = F.linear(x, ps[0], ps[1])
        h = h * F.relu6(h + 3) / 6
        h = F.relu6(F.linear(h, ps[2], ps[3]) + 3) / 6
        return F.cross_entropy(F.linear(h, ps[4], ps[5]), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = torch.autograd.functional.hessian(loss, flat)
    assert torch.allclose(dense, ref, atol=1e-10), (dense - ref).abs().max()
    assert ref[:16, :16].abs().max() > 1e-3  # the first layer's block is not trivially zero
    assert "forward" not in vars(model[1])  # the stand-in is gone afterwards


def test_gradcheck_freezes_the_pieces_of_mobilenet_activations() -> None:
    """ReLU6, Hardsigmoid and Hardswish are replayed piece by piece: agreement to
    1e-6 at a large eps."""
    import torch
    from torch import nn

    from probe.numerics import gradcheck as G

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Hardswish(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU6(),
        nn.Conv2d(6, 6, 1),
        nn.Hardsigmoid(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    x, y = torch.randn(4, 3, 8, 8) * 4, torch.arange(4)
    rows = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=8, eps=0.05)
    assert max(r.rel_error for r in rows) < 1e-6, [(r.layer, r.rel_error, r.kink) for r in rows]
    assert any(r.kink for r in rows)  # the step did cross pieces: freezing is what made it agree
    model.eval()
    for kind, mod in (
        ("relu6", nn.ReLU6()),
        ("hardsigmoid", nn.Hardsigmoid()),
        ("hardswish", nn.Hardswish()),
    ):
        # the pieces rebuilt from a record are the same function, boundaries included
        t = torch.linspace(-8, 8, 161, dtype=torch.float64)
        frozen = G._Frozen()
        with torch.no_grad():
            for mode in ("record", "replay"):
                frozen.mode = mode
                frozen.start()
                with frozen:
                    out = mod(t)
                assert torch.allclose(out, mod(t), rtol=0, atol=1e-15), kind
        assert len(frozen.records) == 1 and not frozen.switched
