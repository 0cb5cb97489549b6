"""gradient-noise: per-example gradients against one backward pass per image; B_simple closed form.

The references: a float64 loop of one backward pass per image on a tiny conv-BN-linear
model (eval mode), the statistics computed from those gradients with numpy, and, on a
linear least-squares model, B_simple in closed form (for the sample, and for Gaussian
inputs in expectation).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probe
from probe.analyze import run_analyses
from probe.numerics import gradient_noise as G
from probe.rundir.run import Run


def tiny_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),
    ).to(dtype)
    with torch.no_grad():  # running statistics away from (0, 1), so eval-mode BN matters
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
    return m.eval()


def data(n=13, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def loop_gradients(model, x, y, loss_fn=F.cross_entropy):
    """[n, P] float64 gradients, one backward pass per example, model in eval mode."""
    m = copy.deepcopy(model).double().eval()
    rows = []
    for i in range(len(x)):
        m.zero_grad()
        xi = x[i : i + 1].double()
        yi = y[i : i + 1].double() if y.is_floating_point() else y[i : i + 1]
        loss_fn(m(xi), yi).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]).numpy().copy())
    return np.stack(rows)


def reference_stats(g):
    """The statistics' definitions, on an [n, P] array."""
    n = len(g)
    mean = g.mean(0)
    trace = np.sum((g - mean) ** 2) / (n - 1)
    g2 = mean @ mean
    var = g.var(0, ddof=1)
    ok = var > 0
    return {
        "grad_norm": np.sqrt(g2),
        "trace_cov": trace,
        "b_simple": trace / (g2 - trace / n) if g2 - trace / n > 0 else None,
        "b_simple_biased": trace / g2,
        "snr": np.mean(mean[ok] ** 2 / var[ok]),
        "diversity": np.sum(g**2) / np.sum(g.sum(0) ** 2),
    }


def columns(model):
    """Slices of the flat parameter vector per module, in parameter order."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        layer = name.rpartition(".")[0]
        lo, hi = out.get(layer, (start, start))
        out[layer] = (lo, hi + p.numel())
        start += p.numel()
    return out


def test_per_example_gradients_equal_single_example_backward_passes():
    model = tiny_model()
    x, y = data()
    grads = G.per_example_gradients(model, x, y)
    flat = torch.cat([grads[k].reshape(len(x), -1) for k, _ in model.named_parameters()], 1)
    assert np.allclose(flat.numpy(), loop_gradients(model, x, y), rtol=1e-12, atol=1e-14)
    # a float32 model, gradients computed in float64 on a copy of its tensors
    m32 = tiny_model(dtype=torch.float32)
    g64 = G.per_example_gradients(m32, x.float(), y, dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in g64.values())
    flat = torch.cat([g64[k].reshape(len(x), -1) for k, _ in m32.named_parameters()], 1)
    assert np.allclose(flat.numpy(), loop_gradients(m32, x.float(), y), rtol=1e-10, atol=1e-13)
    assert all(p.dtype == torch.float32 for p in m32.parameters())


@pytest.mark.parametrize("chunk", [1, 4, 13, 100])
def test_statistics_equal_numpy_on_the_loop_gradients_whatever_the_chunk(chunk):
    model = tiny_model()
    x, y = data()
    r = G.gradient_noise(model, x, y, chunk=chunk, dtype=torch.float64)
    g = loop_gradients(model, x, y)
    blocks = {"all": (0, g.shape[1]), **columns(model)}
    assert [b.name for b in r.blocks] == ["0", "1", "4"]
    for stats in [r.total, *r.blocks]:
        lo, hi = blocks[stats.name]
        for k, v in reference_stats(g[:, lo:hi]).items():
            if v is None:  # noise above the signal: McCandlish's |G|^2 estimate is <= 0
                assert stats.b_simple is None and any(stats.name in w for w in r.notes)
                continue
            assert getattr(stats, k) == pytest.approx(v, rel=1e-9), (stats.name, k)
    with torch.no_grad():
        assert r.loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)
    assert r.n_images == 13 and r.dtype == "float64" and "eval" in r.mode


def test_the_mean_gradient_is_the_full_batch_gradient():
    model = tiny_model()
    x, y = data(n=20)
    m = copy.deepcopy(model)
    F.cross_entropy(m(x), y).backward()
    full = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    r = G.gradient_noise(model, x, y, chunk=6, dtype=torch.float64)
    assert r.total.grad_norm == pytest.approx(float(full.norm()), rel=1e-12)


def test_b_simple_equals_its_closed_form_on_linear_least_squares():
    """g_i = r_i x_i with r = Xw - y: tr(Sigma) and |G|^2 in closed form, for the sample."""
    torch.manual_seed(0)
    n, d = 300, 5
    x = torch.randn(n, d, dtype=torch.float64)
    y = x @ torch.randn(d, dtype=torch.float64) + 0.3 * torch.randn(n, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()

    def half_squared(out, target):
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    r = G.gradient_noise(model, x, y, chunk=64, loss_fn=half_squared, dtype=torch.float64)
    X, Y, w = x.numpy(), y.numpy(), model.weight.detach().numpy()[0]
    res = X @ w - Y
    grad = X.T @ res / n
    trace = (np.sum(res**2 * np.sum(X**2, 1)) - n * grad @ grad) / (n - 1)
    assert r.total.trace_cov == pytest.approx(trace, rel=1e-10)
    assert r.total.b_simple == pytest.approx(trace / (grad @ grad - trace / n), rel=1e-10)


def test_b_simple_matches_the_gaussian_expectation():
    """x ~ N(0, I_d), y = w*.x + eps: Sigma = (|delta|^2 + s^2) I + delta delta^T at w = w* + delta,
    so B_simple = d (1 + s^2 / |delta|^2) + 1 (Isserlis' theorem)."""
    g = torch.Generator().manual_seed(3)
    n, d, s = 200_000, 4, 0.5
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ w_star + s * torch.randn(n, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    delta = torch.tensor([0.6, -0.3, 0.2, 0.4], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])

    def half_squared(out, target):
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    r = G.gradient_noise(model, x, y, chunk=50_000, loss_fn=half_squared, dtype=torch.float64)
    d2 = float(delta @ delta)
    assert r.total.b_simple == pytest.approx(d * (1 + s**2 / d2) + 1, rel=0.02)
    assert r.total.grad_norm == pytest.approx(d2**0.5, rel=0.02)


def test_the_model_is_never_modified_and_keeps_its_mode():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    G.gradient_noise(model, x, y, chunk=5, dtype=torch.float64)
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_noise_beyond_the_signal_and_the_memory_bound_are_stated():
    """At the least-squares solution the mean gradient is 0: B_simple is undefined, and says so."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T)

    def half_squared(out, target):
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    r = G.gradient_noise(model, x, y, loss_fn=half_squared, dtype=torch.float64)
    assert r.total.grad_norm < 1e-12 and r.total.trace_cov > 0.1
    assert r.total.b_simple is None and r.total.b_simple_biased > 1e20
    assert any("noise exceeds the signal" in w and "all" in w for w in r.notes)
    model = tiny_model()
    sizes = [p.numel() for p in model.parameters()]
    assert G.memory_bound(model, 8, torch.float32) == (
        8 * sum(sizes) * 4 + 8 * max(sizes) * 8 + 16 * sum(sizes)
    )
    xb, yb = data(n=3)
    assert G.gradient_noise(model, xb, yb, chunk=2).memory_bound_bytes == G.memory_bound(model, 2)
    with pytest.raises(probe.UsageError, match="at least 2 images"):
        G.gradient_noise(model, xb[:1], yb[:1])


# --- the analysis on a real tiny run ------------------------------------------------------------


def test_the_analysis_equals_a_backward_loop_on_the_checkpoint(probe_run):
    (o,) = run_analyses(
        probe_run, ["gradient-noise"], "all", {"gradient-noise": {"n_images": "16", "chunk": "5"}}
    )
    assert o.status == "ok", (o.error, o.traceback)
    doc = json.loads((o.path / "gradient_noise.json").read_text())
    assert doc["epochs"] == [0, 1, 2] and "eval" in doc["computed_on"]["mode"]
    assert "BatchNorm" in doc["computed_on"]["mode"] and doc["computed_on"]["chunk"] == 5
    run = Run(probe_run)
    model = probe.load_model(run.checkpoint_path(2))
    batch = run.analysis_batch()
    x, y = batch.normalized()[:16], batch.labels[:16]
    ref = reference_stats(loop_gradients(model, x, y))
    got = doc["results"]["2"]["all"]
    for k in ("grad_norm", "trace_cov", "b_simple_biased", "diversity"):
        assert got[k] == pytest.approx(ref[k], rel=1e-4), k
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["diversity"] == pytest.approx(got["diversity"])
    table = m["layer_scalars"]["gradient_noise_layers"]
    assert table["layers"] == [
        n for n, mod in model.named_modules() if list(mod.parameters(recurse=False))
    ]
    assert {"b_simple", "snr", "diversity", "grad_norm"} <= set(table["metrics"])
    assert m["scalars"]["memory_bound_mb"] > 0 and {"gradient_noise.png"} <= set(m["files"])
