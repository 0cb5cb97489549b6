"""Hessian eigenvalues, trace and density against a dense float64 Hessian of a tiny CNN."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from curvature_helpers import warm_batchnorm
from torch import nn
from torch.func import functional_call, jacrev

from probe.errors import ProbeError, UsageError
from probe.numerics import curvature as C
from probe.training.model import simplecnn_spec


def tiny_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """ModelSpec's CNN at ~160 parameters, with non-trivial BatchNorm running statistics."""
    torch.manual_seed(0)
    model = warm_batchnorm(
        simplecnn_spec(depth=2, base_width=2, hidden=4).build().double(),
        (16, 3, 8, 8),
        2,
        0.5,
        torch.float64,
    )
    return model, torch.randn(13, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (13,))


def flat_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_stats_bs: int | None = None
):
    """Reference loss as a function of the flat parameter vector, and that vector.

    With `batch_stats_bs`, BatchNorm normalises with each mini-batch's statistics (a
    copy with running statistics removed) and the mini-batch means are averaged
    weighted by size: the loss bn="batch" differentiates.
    """
    ref = copy.deepcopy(model)
    if batch_stats_bs:
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = (
                    False,
                    None,
                    None,
                    None,
                )
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for _, p in ref.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    buffers = dict(ref.named_buffers())

    def f(w: torch.Tensor) -> torch.Tensor:
        p, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            p[n] = w[i : i + s.numel()].view(s)
            i += s.numel()
        if not batch_stats_bs:
            return F.cross_entropy(functional_call(ref, (p, buffers), (x,)), y)
        return sum(
            len(xb) / len(x) * F.cross_entropy(functional_call(ref, (p, buffers), (xb,)), yb)
            for xb, yb in zip(x.split(batch_stats_bs), y.split(batch_stats_bs), strict=True)
        )

    return f, flat


def dense_hessian(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_stats_bs: int | None = None
) -> torch.Tensor:
    """Reference: jacrev(jacrev) of the full-batch mean loss in the flat
    parameters (see flat_loss)."""
    f, flat = flat_loss(model, x, y, batch_stats_bs)
    return jacrev(jacrev(f))(flat)


@pytest.fixture(scope="module")
def cnn():
    model, x, y = tiny_cnn()
    return model, x, y, dense_hessian(model, x, y)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize(
    "method,cache",
    [("double_backward", True), ("double_backward", False), ("forward_over_reverse", None)],
)
def test_hvp_matches_dense_hessian_with_uneven_minibatches(cnn, method, cache):
    model, x, y, h = cnn
    op = C.HessianOperator(
        C.BatchedLoss(model, x, y, batch_size=5), method, cache=cache
    )  # 5 + 5 + 3
    v = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), h @ v, atol=1e-12, rtol=1e-9)
    assert torch.allclose(op.matvec(2 * v), 2 * h @ v, atol=1e-12, rtol=1e-9)
    assert op.hvps == 2


def test_lanczos_top_and_bottom_within_half_percent(cnn):
    model, x, y, h = cnn
    exact = torch.linalg.eigvalsh(h)
    report = C.hessian_analysis(model, x, y, top_k=3, smallest=1, batch_size=5)
    top, bottom = report.get("LA"), report.get("SA")
    assert torch.allclose(top.values, exact.flip(0)[:3], rtol=5e-3)
    assert torch.allclose(bottom.values, exact[:1], rtol=5e-3)
    assert exact[0] < 0 < exact[-1]  # the report keeps the two ends apart
    for e in (top, bottom):
        assert e.converged.all()
        assert (e.residuals <= 1e-2).all()
        for lam, v, r in zip(e.values, e.vectors, e.residuals, strict=True):
            assert torch.isclose((h @ v - lam * v).norm() / lam.abs(), r, rtol=1e-6)
    assert report.hvps == top.hvps < 60
    assert "mean cross-entropy" in report.loss_definition and "excluded" in report.loss_definition


def test_power_iteration_on_cnn_within_half_percent(cnn):
    model, x, y, h = cnn
    exact = torch.linalg.eigvalsh(h)
    op = C.HessianOperator(C.BatchedLoss(model, x, y))
    res = C.power_iteration(op, 1, tol=1e-4, residual_tol=1e-2, max_iter=300)
    assert res.which == "LM" and bool(res.converged[0])
    assert abs(res.values[0] - exact[-1]) <= 5e-3 * exact[-1]


def spectrum_matrix(eigs: list[float], n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.tensor(eigs + [0.01 * (i + 1) for i in range(n - len(eigs))], dtype=torch.float64)
    return q @ torch.diag(lam) @ q.T


def test_power_iteration_reports_largest_magnitude_which_may_be_negative():
    op = C.MatrixOperator(spectrum_matrix([-5.0, 3.0, 1.0]))
    lm = C.power_iteration(op, 1, tol=1e-6, residual_tol=1e-4, max_iter=500)
    assert lm.which == "LM" and abs(lm.values[0] + 5.0) < 1e-4
    la, sa = C.lanczos(op, 1, smallest=1, tol=1e-8, residual_tol=1e-6)
    assert la.which == "LA" and abs(la.values[0] - 3.0) < 1e-6
    assert sa.which == "SA" and abs(sa.values[0] + 5.0) < 1e-6
    other = C.power_iteration(
        op, 1, tol=1e-6, residual_tol=1e-4, max_iter=500, shift=float(lm.values[0])
    )
    assert other.which == "LA" and abs(other.values[0] - 3.0) < 1e-3


def test_power_iteration_deflation_finds_top_three():
    op = C.MatrixOperator(spectrum_matrix([10.0, 7.0, 4.0]))
    res = C.power_iteration(op, 3, tol=1e-7, residual_tol=1e-4, max_iter=500)
    assert torch.allclose(
        res.values, torch.tensor([10.0, 7.0, 4.0], dtype=torch.float64), rtol=1e-5
    )
    assert res.converged.all() and res.hvps == op.hvps


def test_relative_change_alone_does_not_declare_convergence():
    # two close top eigenvalues: the Rayleigh quotient barely moves long before v converges
    op = C.MatrixOperator(spectrum_matrix([1.0, 0.999]))
    res = C.power_iteration(op, 1, tol=1e-3, residual_tol=1e-6, max_iter=20)
    assert not res.converged[0] and res.residuals[0] > 1e-6


def test_lanczos_needs_fewer_products_than_power_iteration():
    op = C.MatrixOperator(spectrum_matrix([10.0, 9.0, 8.0], n=200))
    power = C.power_iteration(op, 1, tol=1e-4, residual_tol=1e-3, max_iter=1000)
    la, _ = C.lanczos(C.MatrixOperator(op.matrix), 1, tol=1e-4, residual_tol=1e-3)
    assert la.converged[0] and power.converged[0]
    assert abs(la.values[0] - 10.0) < 1e-3 * 10 and abs(power.values[0] - 10.0) < 1e-3 * 10
    assert la.hvps * 3 <= power.hvps


def test_warm_start_saves_products_and_reports_overlap(cnn):
    model, x, y, _ = cnn
    first = C.hessian_analysis(model, x, y, top_k=2, smallest=0)
    again = C.hessian_analysis(
        model, x, y, top_k=2, smallest=0, init=first.get("LA").vectors, seed=1
    )
    assert again.hvps < first.hvps
    assert again.subspace_overlap > 0.99 and (again.overlap > 0.99).all()
    assert torch.allclose(again.get("LA").values, first.get("LA").values, rtol=1e-3)


def test_hutchinson_within_stated_error(cnn):
    model, x, y, h = cnn
    op = C.HessianOperator(C.BatchedLoss(model, x, y))
    res = C.hutchinson_trace(op, 150, seed=3)
    assert res.samples == res.hvps == 150
    assert abs(res.trace - float(torch.trace(h))) <= 3 * res.stderr


def test_slq_is_exact_with_a_full_krylov_space():
    a = spectrum_matrix([4.0, -2.0, 1.0], n=12)
    d = C.slq_density(C.MatrixOperator(a), runs=3, steps=12, seed=0)
    exact = torch.linalg.eigvalsh(a)
    for r in range(3):
        assert torch.allclose(d.nodes[r].sort().values, exact, atol=1e-8)
        assert torch.isclose(d.weights[r].sum(), torch.tensor(1.0, dtype=torch.float64))
    grid = torch.linspace(-4, 6, 2001, dtype=torch.float64)
    curve = d.curve(grid, sigma=0.1)
    assert abs(float(torch.trapezoid(curve, grid)) - 1.0) < 1e-3


def test_slq_moments_estimate_normalised_traces():
    a = spectrum_matrix([3.0, -1.0], n=60, seed=2)
    d = C.slq_density(C.MatrixOperator(a), runs=40, steps=15, seed=1)
    assert d.hvps == 40 * 15
    for p in (1, 2):
        per_run = (d.weights * d.nodes**p).sum(-1)
        exact = float(torch.trace(torch.linalg.matrix_power(a, p))) / 60
        assert abs(float(per_run.mean()) - exact) <= 4 * float(per_run.std()) / 40**0.5


def test_batch_statistics_mode_matches_its_reference():
    # torch.func's vmapped jacrev(jacrev) is wrong (asymmetric) for training-mode
    # BatchNorm in torch 2.14, so the reference is autograd's un-vmapped double backward
    model, x, y = tiny_cnn()
    f, flat = flat_loss(model, x, y, batch_stats_bs=5)
    loss = C.BatchedLoss(model, x, y, batch_size=5, bn="batch")
    assert abs(loss.value() - float(f(flat))) < 1e-12
    op = C.HessianOperator(loss)
    for _ in range(2):
        v = torch.randn(op.dim, dtype=torch.float64)
        assert torch.allclose(
            op.matvec(v), torch.autograd.functional.hvp(f, flat, v)[1], atol=1e-12, rtol=1e-9
        )


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 3).double()
        self.unused = nn.Linear(4, 3).double()

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_unused_parameters_get_zeros(method):
    torch.manual_seed(0)
    model = WithUnused()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    loss = C.BatchedLoss(model, x, y)
    op = C.HessianOperator(loss, method)
    hv = loss.unflatten(op.matvec(torch.ones(op.dim, dtype=torch.float64)))
    assert torch.equal(hv["unused.weight"], torch.zeros(3, 4, dtype=torch.float64))
    assert hv["used.weight"].abs().sum() > 0
    _, g = loss.value_and_grad()
    assert torch.equal(g["unused.bias"], torch.zeros(3, dtype=torch.float64))
    C.lanczos(op, 1)


def test_weight_decay_adds_identity(cnn):
    model, x, y, h = cnn
    wd = 0.1
    loss = C.BatchedLoss(model, x, y, weight_decay=wd)
    op = C.HessianOperator(loss)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), h @ v + wd * v, atol=1e-12)
    w = loss.flatten(loss.params)
    assert abs(loss.value() - C.BatchedLoss(model, x, y).value() - 0.5 * wd * float(w @ w)) < 1e-12
    assert "weight decay included" in loss.describe()


@pytest.mark.parametrize("bn,method", [("eval", "lanczos"), ("batch", "power")])
def test_weights_buffers_and_mode_unchanged(bn, method):
    model, x, y = tiny_cnn()
    model.train()
    before = snapshot(model)
    C.hessian_analysis(
        model,
        x,
        y,
        top_k=2,
        smallest=1,
        method=method,
        max_iter=15,
        trace_samples=3,
        density_runs=1,
        density_steps=4,
        bn=bn,
        batch_size=5,
    )
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_float64_analysis_of_a_float32_model(cnn):
    model, x, y, h = cnn
    m32 = copy.deepcopy(model).float()
    before = snapshot(m32)
    op = C.HessianOperator(C.BatchedLoss(m32, x.float(), y, dtype=torch.float64))
    assert op.dtype == torch.float64
    v = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), h @ v, rtol=1e-4, atol=1e-6)  # weights rounded to float32
    assert_unchanged(m32, before)
    assert next(m32.parameters()).dtype == torch.float32


def test_bad_parameters_name_themselves(cnn):
    model, x, y, _ = cnn
    with pytest.raises(UsageError, match="^top_k: "):
        C.hessian_analysis(model, x, y, top_k=0)
    with pytest.raises(UsageError, match="^bn: "):
        C.hessian_analysis(model, x, y, bn="train")
    with pytest.raises(UsageError, match="^init: "):
        C.hessian_analysis(model, x, y, init=torch.zeros(1, 3, dtype=torch.float64))


def test_nan_loss_is_a_clear_error(cnn):
    model, x, y, _ = cnn
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.classifier[-1].weight[0, 0] = float("nan")
    with pytest.raises(ProbeError, match="nan"):
        C.hessian_analysis(broken, x, y)


def plugin_registry(module, name):
    from probe.contract.registry import PluginInfo, Registry

    reg = Registry()
    reg.register(module, PluginInfo(name, f"probe_plugins.{name}"))
    assert all(info.status == "active" for info in reg.plugins.values()), reg.plugins
    return reg


def run_plugin(run_dir, module, name, analysis=None, epochs=None, **params):
    import json

    from probe.analysis.runner import run_analyses

    analysis = analysis or name
    outcomes = run_analyses(
        run_dir,
        [analysis],
        epochs,
        {analysis: {k: str(v) for k, v in params.items()}},
        registry=plugin_registry(module, name),
        device="cpu",
    )
    for o in outcomes:
        assert o.status == "ok", f"{o.label}: {o.error}\n{o.traceback}"
    return [(o, json.loads((o.path / "manifest.json").read_text())) for o in outcomes]


def test_hessian_plugin_warm_starts_across_epochs(probe_run):
    import h5py

    from probe.rundir.run import Run
    from probe_plugins import hessian

    ((o, m),) = run_plugin(
        probe_run,
        hessian,
        "hessian",
        n_images=16,
        top_k=2,
        trace_samples=2,
        max_iter=30,
        weight_decay=True,
    )
    assert {"hessian.h5", "hessian.json", "hessian.png"} <= set(m["files"])
    with h5py.File(o.path / "hessian.h5") as f:
        assert list(f["epoch"][()]) == [0, 1, 2]
        assert f["top"].shape == (3, 2) and f["bottom"].shape == (3, 1)
        assert np.isnan(f["subspace_overlap"][0]) and (f["subspace_overlap"][1:] > 0).all()
        assert f.attrs["top_label"] == "LA" and f.attrs["bottom_label"] == "SA"
        top = f["top"][()]
    run = Run(probe_run)
    batch = run.analysis_batch()
    ref = C.hessian_analysis(
        run.model(2, "cpu"),
        batch.normalized()[:16],
        batch.labels[:16],
        top_k=1,
        smallest=0,
        tol=1e-6,
        residual_tol=1e-4,
    )
    assert top[2, 0] == pytest.approx(float(ref.eigen[0].values[0]), rel=5e-3)
    assert m["scalars"]["top_label"] == "LA"


def test_hessian_series_edge_of_stability_and_epochs_on_an_executor(probe_run):
    """The 2/lr line is stored beside the eigenvalues; with warm_start=false the epochs are
    independent pieces that give the same numbers in-process and on 2 local worker
    processes (issue 4.6)."""
    import h5py

    from probe import Run
    from probe.analysis.executor import make_executor
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import hessian

    reg = Registry()
    reg.register(hessian, PluginInfo("hessian", "probe_plugins.hessian"))
    params = {
        "hessian": {
            "n_images": "16",
            "top_k": "1",
            "smallest": "0",
            "max_iter": "30",
            "warm_start": "false",
        }
    }
    (local,) = run_analyses(probe_run, ["hessian"], "all", params, registry=reg, device="cpu")
    with h5py.File(local.path / "hessian.h5") as f:
        top_local, eos = f["top"][()], f["edge_of_stability"][()]
    lrs = [m.get("lr") for m in Run(probe_run).metrics()]
    assert np.isnan(eos[0]) and eos[1:] == pytest.approx(
        [2 * (1 + 0.9) / lr for lr in lrs[1:]]
    )  # SGD_mom run
    with make_executor(workers=2) as executor:
        (split,) = run_analyses(
            probe_run,
            ["hessian"],
            "all",
            params,
            registry=reg,
            device="cpu",
            executor=executor,
            force=True,
        )
    assert split.status == "ok", split.error
    with h5py.File(split.path / "hessian.h5") as f:
        np.testing.assert_allclose(f["top"][()], top_local, rtol=1e-6)
