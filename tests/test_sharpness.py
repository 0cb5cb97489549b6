"""Sharpness measures against closed forms on a quadratic loss."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from curvature_helpers import mse, regression

from probe.errors import ProbeError, UsageError
from probe.numerics import sharpness as S
from probe.training.model import simplecnn_spec


def loss_at(x, y, w):
    return float(((x @ w - y) ** 2).mean())


def box_maximum(x, y, w, radius):
    """The exact maximum of a convex loss over a box sits at one of its vertices."""
    base = loss_at(x, y, w)
    return (
        max(
            loss_at(x, y, w + torch.tensor(s, dtype=torch.float64) * radius)
            for s in itertools.product((-1.0, 1.0), repeat=len(w))
        )
        - base
    )


def test_worst_case_reaches_the_box_maximum():
    model, x, y, _ = regression()
    w = model.w.detach()
    eps = 0.01
    res = S.worst_case_sharpness(model, x, y, eps=eps, loss_fn=mse, batch_size=64)  # 64, 64, 64, 8
    assert res.base_loss == pytest.approx(loss_at(x, y, w), rel=1e-12)
    assert res.increase == pytest.approx(box_maximum(x, y, w, eps * (w.abs() + 1)), rel=1e-9)
    assert res.measure == "worst_case" and res.increase > 0


def test_adaptive_linf_reaches_the_scaled_box_maximum():
    model, x, y, _ = regression(seed=1)
    w = model.w.detach()
    res = S.adaptive_sharpness(model, x, y, eps=0.02, norm="linf", loss_fn=mse)
    assert res.increase == pytest.approx(box_maximum(x, y, w, 0.02 * w.abs()), rel=1e-9)


def test_adaptive_l2_at_a_minimum_is_half_eps_squared_top_eigenvalue():
    model, x, y, h = regression(d=5, at_minimum=True)
    t = torch.diag(model.w.detach().abs())
    eps = 0.1
    exact = 0.5 * eps**2 * float(torch.linalg.eigvalsh(t @ h @ t)[-1])
    res = S.adaptive_sharpness(
        model, x, y, eps=eps, norm="l2", steps=40, step_size=eps, loss_fn=mse
    )
    assert res.increase == pytest.approx(exact, rel=1e-3)
    assert res.increase <= exact * (1 + 1e-9)  # ascent gives a lower bound


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_matches_half_sigma_squared_trace(adaptive):
    model, x, y, h = regression()
    w = model.w.detach()
    s = w.abs() if adaptive else torch.ones_like(w)
    eps = 0.05
    exact = 0.5 * eps**2 * float((torch.diag(h) * s**2).sum())  # the linear term averages out
    res = S.average_sharpness(
        model, x, y, eps=eps, samples=200, adaptive=adaptive, loss_fn=mse, seed=1
    )
    assert abs(res.increase - exact) <= 4 * res.stderr
    assert res.stderr < 0.2 * exact  # antithetic pairs cancel the gradient term
    plain = S.average_sharpness(
        model, x, y, eps=eps, samples=200, adaptive=adaptive, loss_fn=mse, seed=1, antithetic=False
    )
    assert abs(plain.increase - exact) <= 4 * plain.stderr and plain.stderr > res.stderr


def test_cnn_measures_and_model_unchanged():
    torch.manual_seed(0)
    model = simplecnn_spec(depth=2, base_width=4, hidden=8).build()
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worst = S.worst_case_sharpness(model, x, y, eps=1e-3, steps=5, batch_size=8)
    adaptive = S.adaptive_sharpness(model, x, y, eps=0.05, steps=5, batch_size=8)
    avg = S.average_sharpness(model, x, y, eps=1e-3, samples=4, batch_size=8)
    assert worst.increase > 0 and adaptive.increase > 0
    assert worst.base_loss == adaptive.base_loss == avg.base_loss
    assert "eval mode" in worst.loss_definition
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.modules())


def test_bad_parameters_and_nan_loss():
    model, x, y, _ = regression()
    for fn in (S.worst_case_sharpness, S.adaptive_sharpness, S.average_sharpness):
        with pytest.raises(UsageError, match="^eps: "):
            fn(model, x, y, eps=0.0, loss_fn=mse)
    with pytest.raises(UsageError, match="^norm: "):
        S.adaptive_sharpness(model, x, y, norm="l1", loss_fn=mse)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.w[0] = float("nan")
    with pytest.raises(ProbeError, match="nan"):
        S.worst_case_sharpness(broken, x, y, loss_fn=mse)


def test_sharpness_plugin(probe_run):
    import json

    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe_plugins import sharpness

    reg = Registry()
    reg.register(sharpness, PluginInfo("sharpness", "probe_plugins.sharpness"))
    (o,) = run_analyses(
        probe_run,
        ["sharpness"],
        "last",
        {"sharpness": {"n_images": "32", "steps": "3", "samples": "3"}},
        registry=reg,
        device="cpu",
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["worst_case"] > 0 and m["scalars"]["adaptive"] > 0
    assert {"sharpness.json", "sharpness.png"} <= set(m["files"])
