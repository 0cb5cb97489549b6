"""Batched curvature products (`matmat`, `products`, `product_batch`) against one-at-a-time
products and a dense float64 Hessian (probe.numerics.curvature)."""

from __future__ import annotations

import pytest
import torch
from curvature_helpers import warm_batchnorm
from torch import nn
from torch.func import functional_call, hessian

from probe.errors import UsageError
from probe.numerics import curvature as C
from probe.numerics.curvature import operators
from probe.numerics.loss import analysis_mode


def tiny_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Conv -> BatchNorm (warmed running statistics) -> tanh -> linear, float64, 3 classes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)
    ).double()
    model = warm_batchnorm(model, (16, 1, 5, 5), 2, 0.5, torch.float64)
    return model, torch.randn(13, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (13,))


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bn: str) -> torch.Tensor:
    """The mean cross-entropy's Hessian by torch.func.hessian of the flat parameter vector, all
    samples in one forward (the reference does not split mini-batches; with bn="batch" the
    operator's mini-batches are then taken as one batch here, so only eval is compared)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    buffers = dict(model.named_buffers())

    def f(w: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = w[i : i + s.numel()].view(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    with analysis_mode(model, bn):
        return hessian(f)(flat)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cnn():
    model, x, y = tiny_cnn()
    return model, x, y, dense_hessian(model, x, y, "eval")


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_batched_hessian_products_equal_single_ones_and_the_dense_hessian(cnn, cache, bn):
    model, x, y, h = cnn
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = C.BatchedLoss(model, x, y, batch_size=5, bn=bn, weight_decay=0.01)  # 5 + 5 + 3
    op = C.hessian_operator(loss, cache=cache)
    v = torch.randn(6, op.dim, dtype=torch.float64)
    batched = op.matmat(v)
    single = torch.stack([op.matvec(r) for r in v])
    assert op.hvps == 12
    assert rel(batched, single) < 1e-10
    if bn == "eval":  # one forward of all samples equals the weighted mini-batches only here
        assert rel(batched, v @ (h + 0.01 * torch.eye(op.dim, dtype=h.dtype))) < 1e-10
    for k, t in model.state_dict().items():  # analysis mode: no running-stat update
        assert torch.equal(t, state[k]), k


@pytest.mark.parametrize("cache", [True, False])
def test_batched_ggn_products_equal_single_ones(cnn, cache):
    model, x, y, _ = cnn
    op = C.ggn_operator(C.BatchedLoss(model, x, y, batch_size=5), cache=cache)
    v = torch.randn(5, op.dim, dtype=torch.float64)
    single = torch.stack([op.matvec(r) for r in v])
    assert rel(op.matmat(v), single) < 1e-10
    # the GGN is symmetric PSD: V G V^T from the batched rows is too
    gram = v @ op.matmat(v).T
    assert torch.allclose(gram, gram.T, atol=1e-10)
    assert float(torch.linalg.eigvalsh(0.5 * (gram + gram.T)).min()) > -1e-10


def test_products_split_by_width_and_by_the_memory_cap(cnn, monkeypatch):
    model, x, y, h = cnn
    op = C.hessian_operator(C.BatchedLoss(model, x, y, batch_size=13))
    widths: list[int] = []
    original = op.matmat

    def spy(m: torch.Tensor) -> torch.Tensor:
        widths.append(len(m))
        return original(m)

    op.matmat = spy
    v = torch.randn(7, op.dim, dtype=torch.float64)
    assert rel(C.products(op, v, 3), v @ h) < 1e-10
    assert widths == [3, 3, 1]
    widths.clear()
    per_vector = operators.activation_bytes(op.loss) * operators.ACTIVATION_COPIES
    monkeypatch.setattr(operators, "PRODUCT_MEMORY_BYTES", 2 * per_vector)
    op._width = None
    assert op.max_width() == 2
    assert rel(C.products(op, v, 8), v @ h) < 1e-10
    assert widths == [2, 2, 2, 1]
    assert op.hvps == 14
    with pytest.raises(UsageError, match="product_batch"):
        C.products(op, v, 0)


def test_trace_at_width_8_equals_width_1(cnn):
    model, x, y, h = cnn
    loss = C.BatchedLoss(model, x, y, batch_size=5)
    one = C.hutchinson_trace(C.hessian_operator(loss), 20, seed=3)
    op8 = C.hessian_operator(loss)
    eight = C.hutchinson_trace(op8, 20, seed=3, width=8)
    assert abs(one.trace - eight.trace) <= 1e-10 * abs(one.trace)
    assert abs(one.stderr - eight.stderr) <= 1e-9 * one.stderr
    assert eight.hvps == op8.hvps == 20
    # the same vectors: the estimate is the mean of v^T H v of the dense Hessian
    gen = torch.Generator().manual_seed(3)
    ref = torch.stack([C.rademacher(op8, gen) for _ in range(20)])
    assert abs(eight.trace - float(((ref @ h) * ref).sum(1).mean())) <= 1e-10 * abs(one.trace)
    # an early stop gives the same samples too
    a = C.hutchinson_trace(C.hessian_operator(loss), 40, seed=1, rel_stderr=0.5, min_samples=3)
    b = C.hutchinson_trace(
        C.hessian_operator(loss), 40, seed=1, rel_stderr=0.5, min_samples=3, width=8
    )
    assert a.samples == b.samples and abs(a.trace - b.trace) <= 1e-10 * abs(a.trace)


def test_block_samples_and_hutchpp_at_width_equal_width_1(cnn):
    model, x, y, h = cnn
    loss = C.BatchedLoss(model, x, y, batch_size=13)
    op = C.hessian_operator(loss)
    labels = torch.arange(op.dim) % 3
    s1, b1 = C.hutchinson_samples(op, 9, seed=2, block_id=labels, blocks=3)
    s4, b4 = C.hutchinson_samples(op, 9, seed=2, block_id=labels, blocks=3, width=4)
    assert rel(s4, s1) < 1e-10 and rel(b4, b1) < 1e-10
    assert torch.allclose(b4.sum(1), s4, atol=1e-10)
    p1 = C.trace_estimate("hutch++", op, 12, seed=5)
    p4 = C.trace_estimate("hutch++", op, 12, seed=5, width=4)
    assert abs(p1.trace - p4.trace) <= 1e-10 * abs(p1.trace) and p4.hvps == 12
    full = C.trace_estimate("hutch++", op, 3 * op.dim, seed=5, width=16)  # k >= rank: exact
    assert abs(full.trace - float(torch.trace(h))) <= 1e-8 * abs(float(torch.trace(h)))


def test_analysis_with_product_batch_gives_the_same_report(cnn):
    model, x, y, _ = cnn
    x, y = torch.cat([x, x[:1]]), torch.cat([y, y[:1]])  # 14 samples: two batches of 7
    opts = dict(trace_samples=6, batches=2, blocks="layer", top_k=1, smallest=0, batch_size=4)
    a = C.hessian_analysis(model, x, y, **opts)
    b = C.hessian_analysis(model, x, y, product_batch=8, **opts)
    assert abs(a.trace.trace - b.trace.trace) <= 1e-10 * abs(a.trace.trace)
    for ra, rb in zip(a.trace_per_batch, b.trace_per_batch, strict=True):
        assert abs(ra.trace - rb.trace) <= 1e-10 * abs(ra.trace)
    for ba, bb in zip(a.blocks, b.blocks, strict=True):
        assert abs(ba.trace.trace - bb.trace.trace) <= 1e-10 * max(abs(ba.trace.trace), 1e-12)
    with pytest.raises(UsageError, match="product_batch"):
        C.HessianConfig(product_batch=0)
