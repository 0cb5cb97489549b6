"""Loss surfaces and their directions against direct, independent evaluations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from curvature_helpers import small_cnn
from torch import nn

from probe.errors import ProbeError, UsageError
from probe.numerics import landscape as L


@pytest.fixture
def cnn():
    """A small CNN whose BatchNorm running statistics differ from batch statistics."""
    return small_cnn(21)


def direct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """Reference: a copy of the model with the weights written in, eval mode, one pass."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(params[k])
        out = ref.eval()(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("channels_last", [True, False])
def test_center_equals_eval_loss(cnn, channels_last):
    model, x, y = cnn
    s = L.surface(
        model,
        x,
        y,
        L.random_directions(model),
        resolution=5,
        batch_size=8,
        channels_last=channels_last,
    )
    loss, acc = direct(model, x, y, dict(model.named_parameters()))
    assert s.alpha[2] == 0 and s.beta[2] == 0
    assert abs(s.center_loss - loss) < 1e-5 and abs(s.loss[2, 2] - loss) < 1e-5
    assert abs(s.center_accuracy - acc) < 1e-9


def test_non_square_grid_is_indexed_beta_then_alpha(cnn):
    model, x, y = cnn
    d = L.random_directions(model, seed=3)
    s = L.surface(
        model,
        x,
        y,
        d,
        span=(-0.5, 1.0),
        resolution=4,
        span_y=(-1.0, 0.2),
        resolution_y=3,
        batch_size=8,
    )
    assert s.loss.shape == s.accuracy.shape == (3, 4)
    assert np.allclose(s.alpha, np.linspace(-0.5, 1.0, 4)) and np.allclose(
        s.beta, np.linspace(-1.0, 0.2, 3)
    )
    w = {k: p.detach() for k, p in model.named_parameters()}
    for j, b in enumerate(s.beta):
        for i, a in enumerate(s.alpha):
            loss, acc = direct(
                model, x, y, {k: w[k] + a * d.axes[0][k] + b * d.axes[1][k] for k in w}
            )
            assert abs(s.loss[j, i] - loss) < 1e-4 * max(1.0, loss)
            assert abs(s.accuracy[j, i] - acc) < 1e-9


def test_rows_and_vmap_agree_with_the_full_grid(cnn):
    model, x, y = cnn
    d = L.random_directions(model, seed=1)
    s = L.surface(model, x, y, d, resolution=5, batch_size=8)
    loss, acc = L.surface_rows(model, x, y, d, s.alpha, s.beta, [3, 0], batch_size=8)
    assert np.array_equal(loss, s.loss[[3, 0]]) and np.array_equal(acc, s.accuracy[[3, 0]])
    v = L.surface(model, x, y, d, resolution=5, batch_size=8, points_per_pass=7)
    assert np.allclose(v.loss, s.loss, rtol=1e-5) and np.array_equal(v.accuracy, s.accuracy)


def test_one_dimensional_surface(cnn):
    model, x, y = cnn
    d = L.random_directions(model, n=1, kind="random")
    s = L.surface(model, x, y, d, span=(-2, 2), resolution=9, batch_size=64)
    assert s.beta is None and s.loss.shape == (9,) and s.loss[4] == pytest.approx(s.center_loss)


def test_filter_normalised_directions(cnn):
    model, *_ = cnn
    d = L.random_directions(model, seed=7)
    for k, w in model.named_parameters():
        for axis in d.axes:
            if w.dim() <= 1:
                assert torch.count_nonzero(axis[k]) == 0, k  # biases and BatchNorm zeroed
            else:
                norms = axis[k].flatten(1).norm(dim=1)
                assert torch.allclose(norms, w.detach().flatten(1).norm(dim=1), rtol=1e-5), k
    assert all(
        torch.equal(a[k], b[k])
        for a, b in zip(d.axes, L.random_directions(model, seed=7).axes, strict=True)
        for k in a
    )
    assert not torch.equal(d.axes[0]["features.0.weight"], d.axes[1]["features.0.weight"])
    assert not torch.equal(
        d.axes[0]["features.0.weight"],
        L.random_directions(model, seed=8).axes[0]["features.0.weight"],
    )


def test_directions_are_keyed_by_name_not_position(cnn):
    model, *_ = cnn
    other = nn.Module()  # a model with a different parameter list that shares one name
    other.register_parameter("extra", nn.Parameter(torch.ones(5, 5)))
    other.features = copy.deepcopy(model.features)
    a = L.random_directions(model, seed=2).axes[0]["features.3.weight"]
    b = L.random_directions(other, seed=2).axes[0]["features.3.weight"]
    assert torch.equal(a, b)


def test_plain_random_direction_has_the_weights_norm(cnn):
    model, *_ = cnn
    d = L.random_directions(model, n=1, kind="random").axes[0]
    ws = [w.detach() for w in model.parameters() if w.dim() > 1]
    assert abs(
        sum(float(d[k].pow(2).sum()) for k, w in model.named_parameters() if w.dim() > 1)
        - sum(float(w.pow(2).sum()) for w in ws)
    ) < 1e-3 * sum(float(w.pow(2).sum()) for w in ws)


def test_recalibrate_matches_reestimated_statistics(cnn):
    model, x, y = cnn
    calib = torch.randn(24, 3, 16, 16) * 0.7
    d = L.random_directions(model, seed=5)
    s = L.surface(model, x, y, d, resolution=3, bn="recalibrate", calib_x=calib, batch_size=10)
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        ref.train()
        for c in calib.split(10):
            ref(c)
        out = ref.eval()(x)
    assert abs(s.center_loss - F.cross_entropy(out, y).item()) < 1e-5
    assert abs(s.center_loss - L.surface(model, x, y, d, resolution=3).center_loss) > 1e-3


@pytest.mark.parametrize("kw", [{}, {"bn": "recalibrate"}, {"points_per_pass": 4}])
def test_model_is_left_exactly_as_it_was(cnn, kw):
    model, x, y = cnn
    if kw.get("bn"):
        kw = {**kw, "calib_x": x}
    model.train()
    before = snapshot(model)
    L.surface(model, x, y, L.random_directions(model), resolution=3, batch_size=8, **kw)
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


def trajectory(model: nn.Module, t: int = 7, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """States along a curve in a random plane through the final weights, plus small noise."""
    g = torch.Generator().manual_seed(seed)
    w = {k: p.detach() for k, p in model.named_parameters()}
    e = [{k: torch.randn(p.shape, generator=g) for k, p in w.items()} for _ in range(2)]
    states = []
    for i in range(t):
        s = (t - 1 - i) / (t - 1)
        a, b = 2.0 * s, 0.8 * s * s
        state = {
            k: w[k] + a * e[0][k] + b * e[1][k] + 0.01 * torch.randn(w[k].shape, generator=g)
            for k in w
        }
        state.update({k: v.clone() for k, v in model.named_buffers()})
        states.append(state)
    return states


@pytest.mark.parametrize("mean_center", [False, True])
def test_pca_matches_a_dense_svd(cnn, mean_center):
    model, *_ = cnn
    states = trajectory(model)
    w = {k: p.detach() for k, p in model.named_parameters()}
    dmat = np.stack(
        [np.concatenate([(s[k] - w[k]).numpy().ravel() for k in w]) for s in states]
    ).astype(np.float64)
    fit = dmat - dmat.mean(0) if mean_center else dmat
    _, sv, vt = np.linalg.svd(fit, full_matrices=False)
    pca = L.pca_directions(model, states, mean_center=mean_center)
    for a in range(2):
        got = np.concatenate([pca.axes[a][k].numpy().ravel() for k in w])
        assert abs(abs(got @ vt[a]) - 1) < 1e-5
        assert np.allclose(pca.path[:, a], dmat @ got, atol=1e-4)
    assert np.allclose(pca.explained, sv[:2] ** 2 / (sv**2).sum(), atol=1e-6)
    basis = np.stack(
        [np.concatenate([pca.axes[a][k].numpy().ravel() for k in w]) for a in range(2)]
    )
    steps = np.diff(dmat, axis=0)
    expected = ((steps @ basis.T) ** 2).sum(1) / (steps**2).sum(1)
    assert np.allclose(pca.captured, expected, atol=1e-5)
    assert (pca.captured > 0.99).all() if not mean_center else True


def test_pca_streams_in_blocks_with_the_same_result(cnn):
    model, *_ = cnn
    states = trajectory(model, t=6)

    class Loader:  # a lazy sequence that counts loads
        loads = 0

        def __len__(self):
            return len(states)

        def __getitem__(self, i):
            Loader.loads += 1
            return states[i]

    whole = L.pca_directions(model, states)
    dim = sum(p.numel() for p in model.parameters())
    blocked = L.pca_directions(model, Loader(), max_bytes=8 * dim * 2)  # two states per block
    assert np.allclose(blocked.path, whole.path, atol=1e-6) and np.allclose(
        blocked.captured, whole.captured
    )
    assert Loader.loads > len(states)  # streamed: re-read rather than held


def test_bad_parameters_and_nan_models(cnn):
    model, x, y = cnn
    d = L.random_directions(model)
    with pytest.raises(UsageError, match="^resolution: "):
        L.surface(model, x, y, d, resolution=1)
    with pytest.raises(UsageError, match="^bn: "):
        L.surface(model, x, y, d, bn="train")
    with pytest.raises(UsageError, match="^calib_x: "):
        L.surface(model, x, y, d, bn="recalibrate")
    with pytest.raises(UsageError, match="^states: "):
        L.pca_directions(model, [dict(model.state_dict())])
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.features[0].weight.fill_(float("nan"))
    with pytest.raises(ProbeError, match="nan"):
        L.surface(broken, x, y, d, resolution=3)


def run_plugin(run_dir, analysis, epochs=None, **params):
    import json

    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import landscape

    reg = Registry()
    reg.register(landscape, PluginInfo("landscape", "probe_plugins.landscape"))
    outcomes = run_analyses(
        run_dir,
        [analysis],
        epochs,
        {analysis: {k: str(v) for k, v in params.items()}},
        registry=reg,
        device="cpu",
    )
    for o in outcomes:
        assert o.status == "ok", f"{o.label}: {o.error}\n{o.traceback}"
    return [(o, json.loads((o.path / "manifest.json").read_text())) for o in outcomes]


def test_landscape_plugins(probe_run):
    import json

    import h5py

    from probe.rundir.run import Run

    ((o, m),) = run_plugin(probe_run, "landscape", "last", resolution=5, n_images=32)
    run = Run(probe_run)
    batch = run.analysis_batch()
    loss, _ = direct(
        run.model(2, "cpu"),
        batch.normalized()[:32],
        batch.labels[:32],
        dict(run.model(2, "cpu").named_parameters()),
    )
    assert m["scalars"]["center_loss"] == pytest.approx(loss, rel=1e-5)
    with h5py.File(o.path / "landscape.h5") as f:
        assert f["loss"].shape == (5, 5) and f["loss"][2, 2] == pytest.approx(loss, rel=1e-5)
        assert (
            f.attrs["seed"] == 0
            and f.attrs["bn"] == "frozen"
            and f.attrs["directions"] == "filter-normalized"
        )
        assert f.attrs["checkpoint_sha256"] == m["inputs"]["checkpoints/epoch_0002.safetensors"]
    assert {"landscape.png", "landscape_surface.png"} <= set(m["files"])
    ((o, m),) = run_plugin(
        probe_run, "landscape", "last", directions="trajectory", resolution=4, n_images=32
    )
    with h5py.File(o.path / "landscape.h5") as f:
        assert f["path"].shape == (3, 2) and np.allclose(f["path"][2], 0, atol=1e-6)
        assert f["captured"].shape == (2,) and f["loss"].shape == (4, 4)
        assert json.loads(f.attrs["path_epochs"]) == [0, 1, 2]
    assert 0 < m["scalars"]["explained_2d"] <= 1 + 1e-9
    assert 0 <= m["scalars"]["min_step_captured"] <= 1 + 1e-9
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import landscape

    reg = Registry()
    reg.register(landscape, PluginInfo("landscape", "probe_plugins.landscape"))
    (bad,) = run_analyses(
        probe_run, ["landscape"], "1", {"landscape": {"directions": "trajectory"}}, registry=reg
    )
    assert bad.status == "failed" and "at least 3 complete epochs" in bad.error


def test_landscape_rows_on_an_executor_equal_the_in_process_grid(probe_run):
    """Issue 4.6: the grid splits into independent row pieces on the sweep executor
    (here 2 local processes)."""
    import json

    import h5py

    from probe.analysis.executor import make_executor
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import landscape

    reg = Registry()
    reg.register(landscape, PluginInfo("landscape", "probe_plugins.landscape"))
    params = {"landscape": {"resolution": "5", "n_images": "32", "rows_per_piece": "2"}}
    (local,) = run_analyses(probe_run, ["landscape"], "last", params, registry=reg, device="cpu")
    with h5py.File(local.path / "landscape.h5") as f:
        loss_local = f["loss"][()]
    with make_executor(workers=2) as executor:
        (split,) = run_analyses(
            probe_run,
            ["landscape"],
            "last",
            params,
            registry=reg,
            device="cpu",
            executor=executor,
            force=True,
        )
    assert local.status == split.status == "ok"
    with h5py.File(split.path / "landscape.h5") as f:
        loss_split = f["loss"][()]
    m = json.loads((split.path / "manifest.json").read_text())
    run = __import__("probe").Run(probe_run)
    batch = run.analysis_batch()
    model = run.model(2, "cpu")
    direct_loss, _ = direct(
        model, batch.normalized()[:32], batch.labels[:32], dict(model.named_parameters())
    )
    assert loss_split.shape == (5, 5) and loss_split[2, 2] == pytest.approx(direct_loss, rel=1e-5)
    np.testing.assert_allclose(loss_split, loss_local, rtol=1e-5)
    assert m["scalars"]["center_loss"] == pytest.approx(direct_loss, rel=1e-5)
