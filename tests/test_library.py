"""The in-process API (`probe.hessian`, `probe.cka`, ...): each function against an independent
reference on a tiny model, the model untouched, DataLoader input equal to its tensors, the
plugin's JSON equal to the library's `to_dict()`, and the result's figure, table and errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

import probe
from probe.errors import UsageError


def tiny_cnn(dtype: torch.dtype = torch.float64) -> nn.Module:
    """A conv + BatchNorm + linear net (~140 parameters) with non-trivial running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).to(dtype)
    model.train()
    with torch.no_grad():  # move the running statistics away from (0, 1)
        for _ in range(3):
            model(torch.randn(16, 3, 6, 6, dtype=dtype) * 2 + 0.5)
    return model.eval()


def data(n: int = 12, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=F.cross_entropy):
    """Reference: the dense Hessian of the eval-mode mean loss in the flat parameters (float64)."""
    ref = copy.deepcopy(model).eval()
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for _, p in ref.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    buffers = dict(ref.named_buffers())

    def f(w: torch.Tensor) -> torch.Tensor:
        p, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            p[n] = w[i : i + s.numel()].view(s)
            i += s.numel()
        return loss(functional_call(ref, (p, buffers), (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def state(model: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_same_state(model: nn.Module, before: tuple) -> None:
    tensors, modes, grads = before
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads


@pytest.fixture(scope="module")
def cnn():
    model = tiny_cnn()
    x, y = data()
    return model, x, y, torch.linalg.eigvalsh(dense_hessian(model, x, y))


def test_import_probe_gives_the_functions_lazily():
    names = (
        "hessian",
        "landscape",
        "sharpness",
        "spectra",
        "gradcheck",
        "activations",
        "cka",
        "rsm",
    )
    for name in names:
        assert name in probe.__all__ and callable(getattr(probe, name))


# --- hessian ---------------------------------------------------------------------------------


def test_hessian_eigenvalues_and_trace_match_a_dense_hessian(cnn):
    model, x, y, eig = cnn
    tight = {"tol": 1e-10, "residual_tol": 1e-8, "max_iter": 400}
    r = probe.hessian(model, (x, y), top_k=3, trace_samples=400, density_runs=0, **tight)
    top = eig.flip(0)[:3]
    assert r.eigenvalues == pytest.approx(top.tolist(), rel=1e-6)
    assert list(r.eigenvalues) == sorted(r.eigenvalues, reverse=True)
    assert all(r.converged) and max(r.residuals) < 1e-2
    assert r.bottom_eigenvalues[0] == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-8)
    exact = float(eig.sum())
    assert r.trace_stderr > 0 and abs(r.trace - exact) < 4 * r.trace_stderr
    assert r.hvps > 0 and r.images == len(x)


def test_hessian_custom_loss_is_the_loss_differentiated(cnn):
    model, x, y, _ = cnn

    def mse(logits, target):
        return ((logits - F.one_hot(target, 3).to(logits.dtype)) ** 2).mean()

    eig = torch.linalg.eigvalsh(dense_hessian(model, x, y, mse))
    r = probe.hessian(model, (x, y), loss=mse, top_k=1, trace_samples=0, density_runs=0)
    assert r.eigenvalues[0] == pytest.approx(float(eig[-1]), rel=1e-6)
    assert "mse" in r.to_dict()["loss_definition"]


def test_hessian_dataloader_equals_its_tensors(cnn):
    model, x, y, _ = cnn
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    kw = {"top_k": 2, "n_images": 9, "density_runs": 0}
    a, b = probe.hessian(model, loader, **kw), probe.hessian(model, (x[:9], y[:9]), **kw)
    assert a.to_dict() == b.to_dict() and a.images == 9


def test_hessian_result_figure_table_and_repr(cnn):
    model, x, y, _ = cnn
    r = probe.hessian(model, (x, y), top_k=2, density_runs=1, density_steps=8)
    assert isinstance(r.plot(), Figure)
    page = r._repr_html_()
    assert page.startswith("<table>") and "eigenvalues" in page and "<td>" in page
    assert "HessianResult(" in repr(r) and "eigenvalues=" in repr(r) and "report" not in repr(r)
    json.dumps(r.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "params,name",
    [
        ({"top_k": 0}, "top_k"),
        ({"method": "qr"}, "method"),
        ({"trace_samples": 1}, "trace_samples"),
        ({"n_images": 1.5}, "n_images"),
        ({"no_such": 1}, "no_such"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"loss": "mse"}, "loss"),
    ],
)
def test_hessian_bad_params_name_themselves(cnn, params, name):
    model, x, y, _ = cnn
    with pytest.raises(UsageError) as err:
        probe.hessian(model, (x, y), **params)
    assert err.value.option == name and name in str(err.value)


def test_hessian_plugin_json_equals_the_library(probe_run):
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import hessian as plugin

    reg = Registry()
    reg.register(plugin, PluginInfo("hessian", "probe_plugins.hessian"))
    raw = {"top_k": "2", "n_images": "16", "max_iter": "30", "trace_samples": "4"}
    (o,) = run_analyses(probe_run, ["hessian"], "0", {"hessian": raw}, registry=reg, device="cpu")
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    written = json.loads((o.path / "hessian.json").read_text())
    run = probe.Run(probe_run)
    batch = run.analysis_batch()
    x, y = batch.normalized("cpu"), batch.labels
    lib = probe.hessian(
        run.model(0, "cpu"), (x, y), top_k=2, n_images=16, max_iter=30, trace_samples=4
    ).to_dict()
    (epoch,) = written.pop("epochs")
    assert epoch.pop("epoch") == 0
    for key in ("edge_of_stability", "density_epoch"):  # of the run: its lr, its last epoch
        written.pop(key, None)
    assert {**epoch, **written} == lib


# --- activations, cka, rsm -------------------------------------------------------------------


def numpy_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Closed form (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


LAYERS = ["0", "2", "6", "7"]


def test_activations_are_the_hooked_outputs_pooled_or_flat(cnn):
    model, x, _, _ = cnn
    acts = probe.activations(model, x, layers=LAYERS)
    assert list(acts) == LAYERS
    with torch.no_grad():
        conv = model[0](x)
        logits = model(x)
    assert acts["0"].shape == (len(x), 2) and acts["0"].dtype == torch.float32
    torch.testing.assert_close(acts["0"], conv.mean(dim=(2, 3)).float())
    torch.testing.assert_close(acts["7"], logits.float())
    flat = probe.activations(model, x, layers=["0"], kind="flat", batch_size=5)["0"]
    torch.testing.assert_close(flat, conv.reshape(len(x), -1).float())


def test_activations_of_a_dataloader_equal_its_tensors(cnn):
    model, x, y, _ = cnn
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    a = probe.activations(model, loader, layers=LAYERS, n_images=10)
    b = probe.activations(model, x[:10], layers=LAYERS)
    assert all(torch.equal(a[k], b[k]) for k in LAYERS) and len(a["0"]) == 10


def test_cka_matches_the_numpy_closed_form(cnn):
    model, x, _, _ = cnn
    acts = probe.activations(model, x, layers=LAYERS, kind="flat")
    r = probe.cka(acts)
    ref = np.array(
        [
            [numpy_linear_cka(acts[a].double().numpy(), acts[b].double().numpy()) for b in LAYERS]
            for a in LAYERS
        ]
    )
    np.testing.assert_allclose(r.matrix, ref, rtol=1e-9, atol=1e-12)
    adjacent = np.mean([ref[i, i + 1] for i in range(3)])
    assert r.adjacent_mean == pytest.approx(adjacent) and r.first_last == pytest.approx(ref[0, -1])
    assert r.to_dict()["layers"] == LAYERS and r.rows == tuple(LAYERS)
    two = probe.cka(acts["0"], acts["6"].numpy())  # tensors and arrays, one pair
    assert two.matrix.shape == (1, 1) and two.matrix[0, 0] == pytest.approx(ref[0, 2])
    assert isinstance(r.plot(), Figure) and "<table>" in r._repr_html_()
    with pytest.raises(UsageError) as err:
        probe.cka(acts, estimator="unbiased")
    assert err.value.option == "estimator"
    with pytest.raises(UsageError, match="different numbers"):
        probe.cka(acts["0"], acts["6"][:5])


def test_cka_plugin_equals_the_library_on_the_runs_activations(probe_run):
    import h5py

    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe.rundir import activations as dump
    from probe_plugins import cka as plugin

    reg = Registry()
    reg.register(plugin, PluginInfo("cka", "probe_plugins.cka"))
    (o,) = run_analyses(
        probe_run, ["cka"], "last", {"cka": {"estimator": "debiased"}}, registry=reg, device="cpu"
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    run = probe.Run(probe_run)
    path = run.activations_path(run.epochs()[-1])
    layers = dump.read(path, None)["layers"]
    acts = {n: np.asarray(dump.read(path, n, "pooled"), np.float32) for n in layers}
    lib = probe.cka(acts, estimator="debiased")
    with h5py.File(o.path / "cka_layers.h5") as f:
        np.testing.assert_array_equal(f["cka"][()], lib.matrix)
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["first_last"] == pytest.approx(lib.first_last, rel=1e-12)


def numpy_cosine(X: np.ndarray) -> np.ndarray:
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    return U @ U.T


def test_rsm_matches_numpy_cosine_similarity(cnn):
    model, x, y, _ = cnn
    acts = probe.activations(model, x, layers=LAYERS)
    r = probe.rsm(acts, y, center=True)  # layer=penultimate: the last of the dict
    X = acts["7"].double().numpy()
    S = numpy_cosine(X - X.mean(0))
    labels = y.numpy()
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(y), dtype=bool)
    assert r.layer == "7"
    assert r.within == pytest.approx(S[same & off].mean(), rel=1e-9)
    assert r.between == pytest.approx(S[~same].mean(), rel=1e-9)
    order = r.to_dict()["order"]
    np.testing.assert_allclose(r.to_dict()["sorted_rsm"], S[np.ix_(order, order)], atol=1e-6)
    assert isinstance(r.plot(), Figure) and "within" in r._repr_html_()
    with pytest.raises(UsageError) as err:
        probe.rsm(acts, y, layer="nope")
    assert err.value.option == "layer"
    with pytest.raises(UsageError) as err:
        probe.rsm(acts, y[:3])
    assert err.value.option == "labels"


# --- landscape -------------------------------------------------------------------------------


def test_landscape_centre_is_the_plain_loss_and_the_grid_its_points(cnn):
    model, x, y, _ = cnn
    r = probe.landscape(model, (x, y), dims=1, resolution=5, span=0.5, directions="random")
    with torch.no_grad():
        logits = model.eval()(x)
    assert r.center_loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-9)
    assert r.center_accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    d = r.to_dict()
    assert d["alpha"] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert d["loss"][2] == pytest.approx(r.center_loss, rel=1e-9)
    assert r.max_loss == pytest.approx(max(d["loss"]))
    # an end point, recomputed: the weights moved by alpha times the seeded direction
    from probe.numerics import random_directions

    dirs = random_directions(model, 1, kind="random", seed=0)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in moved.named_parameters():
            w.add_(0.5 * dirs.axes[0][name].to(w.dtype))
        far = float(F.cross_entropy(moved(x), y))
    assert d["loss"][-1] == pytest.approx(far, rel=1e-6)
    assert isinstance(r.plot(), Figure) and "center_loss" in r._repr_html_()


def test_landscape_custom_loss_plane_and_batches(cnn):
    model, x, y, _ = cnn

    def mse(logits, target):
        return ((logits - F.one_hot(target, 3).to(logits.dtype)) ** 2).mean()

    r = probe.landscape(model, (x, y), loss=mse, resolution=3, n_images=6, batches=2)
    with torch.no_grad():
        logits = model(x)
    assert r.center_loss == pytest.approx(float(mse(logits, y)), rel=1e-9)
    halves = [float(mse(logits[i : i + 6], y[i : i + 6])) for i in (0, 6)]
    assert r.center_loss_batch_mean == pytest.approx(np.mean(halves), rel=1e-9)
    assert r.center_loss_batch_stderr == pytest.approx(np.std(halves, ddof=1) / np.sqrt(2))
    assert np.array(r.to_dict()["loss"]).shape == (3, 3) and isinstance(r.plot(), Figure)
    with pytest.raises(UsageError) as err:
        probe.landscape(model, (x, y), resolution=1)
    assert err.value.option == "resolution"
    with pytest.raises(UsageError) as err:
        probe.landscape(model, (x, y), directions="trajectory")
    assert err.value.option == "path"


# --- the model is never changed --------------------------------------------------------------


def _calls(x, y):
    return {
        "hessian": lambda m: probe.hessian(m, (x, y), top_k=1, max_iter=10, density_steps=4),
        "hessian-batch-bn": lambda m: probe.hessian(
            m, (x, y), top_k=1, max_iter=10, bn="batch", trace_samples=0, density_runs=0
        ),
        "landscape": lambda m: probe.landscape(m, (x, y), resolution=3),
        "landscape-recalibrate": lambda m: probe.landscape(
            m, (x, y), resolution=2, dims=1, bn="recalibrate", calib_images=4
        ),
        "activations": lambda m: probe.activations(m, x, layers=LAYERS),
        "sharpness": lambda m: probe.sharpness(m, (x, y), steps=2, samples=2, max_samples=2),
        "gradcheck": lambda m: probe.gradcheck(m, (x, y), n_images=4, samples_per_layer=1),
        "spectra": lambda m: probe.spectra(m),
    }


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("name", list(_calls(None, None)))
def test_the_model_is_left_exactly_as_it_was(name, train_mode):
    model = tiny_cnn(torch.float32)
    model[5].weight.requires_grad_(False)  # a frozen layer: analysed parameters are the rest
    model.train(train_mode)
    model[7].train(not train_mode)  # mixed flags must come back as they were
    x, y = data(10, torch.float32)
    before = state(model)
    _calls(x, y)[name](model)
    assert_same_state(model, before)


# --- sharpness -------------------------------------------------------------------------------


def test_sharpness_worst_case_is_the_first_order_box_maximum(cnn):
    model, x, y, _ = cnn
    eps = 1e-5
    r = probe.sharpness(model, (x, y), eps=eps, steps=5, samples=4, max_samples=4)
    ref = copy.deepcopy(model).eval()
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    # max of g . d over the box |d_i| <= eps (|w_i| + 1): the corner sign(g), to first order
    linear = sum(
        float((g.abs() * eps * (w.detach().abs() + 1)).sum())
        for g, w in zip(grads, ref.parameters(), strict=True)
    )
    assert r.base_loss == pytest.approx(float(loss.detach()), rel=1e-9)
    assert r.worst_case == pytest.approx(linear, rel=0.02)
    assert r.adaptive > 0 and r.average_samples >= 4
    assert isinstance(r.plot(), Figure) and "worst_case" in r._repr_html_()
    with pytest.raises(UsageError) as err:
        probe.sharpness(model, (x, y), adaptive_norm="l1")
    assert err.value.option == "adaptive_norm"


def test_sharpness_plugin_json_equals_the_library(probe_run):
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import sharpness as plugin

    reg = Registry()
    reg.register(plugin, PluginInfo("sharpness", "probe_plugins.sharpness"))
    raw = {"n_images": "16", "steps": "3", "samples": "3", "max_samples": "3", "batches": "2"}
    (o,) = run_analyses(
        probe_run, ["sharpness"], "last", {"sharpness": raw}, registry=reg, device="cpu"
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    written = json.loads((o.path / "sharpness.json").read_text())
    run = probe.Run(probe_run)
    batch = run.analysis_batch()
    lib = probe.sharpness(
        run.model(run.epochs()[-1], "cpu"),
        (batch.normalized("cpu"), batch.labels),
        n_images=16,
        steps=3,
        samples=3,
        max_samples=3,
        batches=2,
    ).to_dict()
    for key in ("results", "over_batches", "n_images"):
        assert written[key] == lib[key], key
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["worst_case"] == pytest.approx(lib["scalars"]["worst_case"], rel=1e-12)


# --- spectra ---------------------------------------------------------------------------------


def test_spectra_eigenvalues_are_the_numpy_svd_of_each_linear_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20))
    r = probe.spectra(model)
    assert r.layers == ("0", "2")
    for i, layer in enumerate((model[0], model[2])):
        w = layer.weight.detach().double().numpy()
        s = np.linalg.svd(w, compute_uv=False)
        ev = np.sort(r.rows[i]["eigenvalues"])
        np.testing.assert_allclose(ev, np.sort(s**2), rtol=1e-5)
        assert r.spectral_norm[i] == pytest.approx(s[0], rel=1e-5)
        assert r.stable_rank[i] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-5)
    d = r.to_dict()
    assert [row["layer"] for row in d["layers"]] == ["0", "2"]
    assert d["scalars"]["alpha.0"] == d["layers"][0]["alpha"] or np.isnan(r.alpha[0])
    assert isinstance(r.plot(), Figure) and isinstance(r.alpha_figure(), Figure)
    assert "alpha_mean" in r._repr_html_()
    with pytest.raises(UsageError) as err:
        probe.spectra(model, bins=2)
    assert err.value.option == "bins"


# --- the page --------------------------------------------------------------------------------


def test_docs_list_every_parameter_with_its_default():
    """docs/from-python.md's tables name each function's parameters and defaults as they are."""
    from pathlib import Path

    from probe.contract.params import param_specs
    from probe.library.curvature import HessianParams
    from probe.library.flatness import SharpnessParams
    from probe.library.gradients import GradcheckParams
    from probe.library.representations import CKAParams, RSMParams
    from probe.library.surface import LandscapeParams
    from probe.library.weights import SpectraParams

    page = (Path(__file__).parents[1] / "docs" / "from-python.md").read_text()
    sections = page.split("\n## ")
    for cls, title in (
        (HessianParams, "probe.hessian("),
        (LandscapeParams, "probe.landscape("),
        (SharpnessParams, "probe.sharpness("),
        (SpectraParams, "probe.spectra("),
        (CKAParams, "probe.cka("),
        (RSMParams, "probe.rsm("),
        (GradcheckParams, "probe.gradcheck("),
    ):
        (section,) = [s for s in sections if s.startswith(title)]
        for spec in param_specs(cls, cls.__name__):
            assert f"| `{spec.name}` | `{spec.default!r}` |" in section, (title, spec.name)


# --- gradcheck -------------------------------------------------------------------------------


class _WrongGrad(torch.autograd.Function):
    """tanh forward, with a backward pass off by 10%: what gradcheck is there to catch."""

    @staticmethod
    def forward(ctx, x):
        out = torch.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out**2) * 1.1


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(_WrongGrad.apply(self.fc1(x)))


def test_gradcheck_passes_a_correct_model_and_fails_a_wrong_backward(cnn):
    model, x, y, _ = cnn
    r = probe.gradcheck(model, (x, y), n_images=6, samples_per_layer=3)
    assert r.passed and r.max_rel_error < 1e-6 and r.layers_checked == "conv"
    assert r.n_checked == 3 and len(r.to_dict()["rows"]) == 3
    assert isinstance(r.plot(), Figure) and "passed" in r._repr_html_()
    torch.manual_seed(0)
    broken = _Broken().double()
    xb, yb = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    bad = probe.gradcheck(broken, (xb, yb), samples_per_layer=4)
    assert bad.layers_checked == "linear" and not bad.passed and bad.max_rel_error > 1e-3
    with pytest.raises(UsageError) as err:
        probe.gradcheck(model, (x, y), loss=F.mse_loss)
    assert err.value.option == "loss"
    with pytest.raises(UsageError) as err:
        probe.gradcheck(model, (x, y), eps=0.0)
    assert err.value.option == "eps"


def test_gradcheck_plugin_json_equals_the_library(probe_run):
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import gradcheck as plugin

    reg = Registry()
    reg.register(plugin, PluginInfo("gradcheck", "probe_plugins.gradcheck"))
    raw = {"n_images": "4", "samples_per_layer": "2"}
    (o,) = run_analyses(
        probe_run, ["gradcheck"], "last", {"gradcheck": raw}, registry=reg, device="cpu"
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    written = json.loads((o.path / "gradcheck.json").read_text())
    run = probe.Run(probe_run)
    batch = run.analysis_batch()
    model = run.model(run.epochs()[-1], "cpu")
    lib = probe.gradcheck(
        model, (batch.normalized("cpu"), batch.labels), n_images=4, samples_per_layer=2
    ).to_dict()
    assert written.pop("epoch") == run.epochs()[-1]
    scalars = lib.pop("scalars")
    assert written == lib
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["passed"] == scalars["passed"]


# --- the batch, the table --------------------------------------------------------------------


def test_a_loader_is_read_only_as_far_as_the_images_needed():
    from probe.library.batch import as_batch

    x, y = data(12, torch.float32)
    read = []

    def loader():
        for i in range(0, 12, 4):
            read.append(i)
            yield x[i : i + 4], y[i : i + 4]

    bx, by = as_batch(loader(), 6)
    assert read == [0, 4] and torch.equal(bx, x[:6]) and torch.equal(by, y[:6])
    with pytest.raises(UsageError) as err:
        as_batch([(x, "labels")], 4)
    assert err.value.option == "batch"
    with pytest.raises(UsageError) as err:
        probe.hessian(tiny_cnn(), data(8), batches=2, n_images=8)
    assert err.value.option == "batches" and "the batch holds 8" in str(err.value)


def test_the_html_table_escapes_names():
    acts = {"<script>x</script>": torch.randn(10, 3), "b": torch.randn(10, 4)}
    page = probe.cka(acts)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.startswith("<table>") and page.endswith("</table>") and page.count("<tr>") >= 5


def test_landscape_trajectory_plane_holds_the_path(cnn):
    model, x, y, _ = cnn
    g = torch.Generator().manual_seed(3)
    path = []
    for step in (3, 2, 1, 0):  # a path ending at the model's own weights
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        for name, _ in model.named_parameters():
            sd[name] += 0.05 * step * torch.randn(sd[name].shape, generator=g, dtype=sd[name].dtype)
        path.append(sd)
    r = probe.landscape(model, (x, y), directions="trajectory", path=path, resolution=4)
    d = r.to_dict()
    assert np.array(d["path"]).shape == (4, 2) and np.allclose(d["path"][-1], 0, atol=1e-9)
    assert 0 < d["explained_2d"] <= 1 + 1e-9 and len(d["captured"]) == 3
    with torch.no_grad():
        plain = float(F.cross_entropy(model(x), y))
    assert r.center_loss == pytest.approx(plain, rel=1e-9)
    assert isinstance(r.plot(), Figure)
