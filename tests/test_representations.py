"""probe.numerics.representations against independent computations (sklearn,
direct formulas, torch)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ortho_group
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

from probe.numerics import gradcheck as G
from probe.numerics import representations as R
from probe.training.model import simplecnn_spec


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _clustered(
    rng: np.random.Generator, n_per: int = 20, k: int = 4, d: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(scale=4.0, size=(k, d))
    labels = np.repeat(np.arange(k), n_per)
    X = centres[labels] + rng.normal(size=(k * n_per, d))
    perm = rng.permutation(len(labels))
    return X[perm], labels[perm]


# --- PCA -----------------------------------------------------------------------------------


def test_pca_matches_sklearn_up_to_sign(rng):
    X = rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30)) + 5.0
    ours = R.pca(X, 5)
    ref = PCA(n_components=5, svd_solver="full").fit(X)
    signs = np.sign(np.sum(ours.components * ref.components_, axis=1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(ours.components, ref.components_ * signs[:, None], atol=1e-10)
    np.testing.assert_allclose(ours.projections, ref.transform(X) * signs, atol=1e-9)
    np.testing.assert_allclose(
        ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10
    )
    np.testing.assert_allclose(ours.explained_variance, ref.explained_variance_, rtol=1e-10)


def test_pca_signs_are_deterministic_and_accept_feature_maps(rng):
    X = rng.normal(size=(50, 4, 3, 3)).astype(np.float32)
    a, b = R.pca(X, 3), R.pca(torch.from_numpy(X), 3)
    np.testing.assert_array_equal(a.components, b.components)
    assert a.components.shape == (3, 36)
    idx = np.argmax(np.abs(a.components), axis=1)
    assert np.all(a.components[np.arange(3), idx] > 0)


def test_pca_across_epochs_reference_uses_fixed_axes(rng):
    X_last = rng.normal(size=(100, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1.0])
    epochs = {0: rng.normal(size=(100, 8)), 3: X_last + 7.0, 5: X_last}
    ref, proj = R.pca_across_epochs(epochs, 2)
    assert [p.epoch for p in proj] == [0, 3, 5]
    # the last epoch is its own PCA; the shifted copy lands on the same coordinates
    np.testing.assert_allclose(proj[2].projections, ref.projections, atol=1e-12)
    np.testing.assert_allclose(proj[1].projections, ref.projections, atol=1e-9)
    np.testing.assert_allclose(
        proj[2].explained_variance_ratio, ref.explained_variance_ratio, rtol=1e-12
    )
    np.testing.assert_allclose(
        proj[0].projections, (epochs[0] - epochs[0].mean(0)) @ ref.components.T
    )


def test_pca_across_epochs_procrustes_undoes_rotation(rng):
    X = rng.normal(size=(80, 6)) * np.array([4, 2, 1, 0.5, 0.2, 0.1])
    Q = ortho_group.rvs(6, random_state=3)
    ref, proj = R.pca_across_epochs({0: X @ Q, 1: X}, 2, align="procrustes")
    np.testing.assert_allclose(proj[0].projections, proj[1].projections, atol=1e-9)


def test_procrustes_align_recovers_rotation_and_keeps_distances(rng):
    Y = rng.normal(size=(40, 2))
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    flipped = (Y @ rot) * np.array([1, -1]) + 3.0
    np.testing.assert_allclose(R.procrustes_align(flipped, Y), Y - Y.mean(0), atol=1e-12)


# --- t-SNE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sklearn", "opentsne"])
def test_tsne_seeded_and_separates_clusters(rng, backend):
    if backend == "opentsne":
        pytest.importorskip("openTSNE")
    X, labels = _clustered(rng, n_per=15, k=3, d=10)
    a = R.tsne(X, seed=3, backend=backend, n_iter=250)
    b = R.tsne(X, seed=3, backend=backend, n_iter=250)
    assert a.shape == (45, 2) and a.dtype == np.float64
    np.testing.assert_allclose(a, b)
    # each point's nearest embedded neighbour is of its own class
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(labels[d.argmin(1)] == labels) > 0.95


def test_tsne_backend_choice():
    assert R.tsne_backend("sklearn") == "sklearn"
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        assert R.tsne_backend() == "sklearn"
    else:
        assert R.tsne_backend() == "opentsne"


# --- RSM -----------------------------------------------------------------------------------


def test_cosine_rsm_matches_sklearn_including_zero_rows(rng):
    X = rng.normal(size=(30, 7))
    X[4] = 0.0
    np.testing.assert_allclose(R.cosine_rsm(X), cosine_similarity(X), atol=1e-12)


def test_rsm_class_summary_by_hand():
    labels = np.array([1, 0, 1, 0, 2])
    rng = np.random.default_rng(0)
    A = rng.uniform(-1, 1, size=(5, 5))
    S = (A + A.T) / 2
    np.fill_diagonal(S, 1.0)
    s = R.rsm_class_summary(S, labels)
    np.testing.assert_array_equal(s.sorted_labels, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(s.order, [1, 3, 0, 2, 4])
    np.testing.assert_allclose(s.sorted_rsm, S[np.ix_(s.order, s.order)])
    within = [S[1, 3], S[0, 2]]  # class 2 has one sample: no within pair
    between = [S[i, j] for i in range(5) for j in range(5) if labels[i] != labels[j]]
    assert s.within == pytest.approx(np.mean(within))
    assert s.between == pytest.approx(np.mean(between))
    assert s.contrast == pytest.approx(s.within - s.between)
    assert s.class_means[0, 0] == pytest.approx(S[1, 3])
    assert np.isnan(s.class_means[2, 2])
    assert s.class_means[0, 1] == pytest.approx(np.mean([S[1, 0], S[1, 2], S[3, 0], S[3, 2]]))


def test_rsm_class_summary_sees_clusters(rng):
    X, labels = _clustered(rng)
    s = R.rsm_class_summary(R.cosine_rsm(X), labels)
    assert s.within > s.between + 0.3


# --- CKA -----------------------------------------------------------------------------------


def _cka_gram(X: np.ndarray, Y: np.ndarray) -> float:
    """Gram-matrix form: HSIC(K, L) = tr(K H L H), CKA = HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L))."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(a, b):
        return np.trace(a @ H @ b @ H)

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_linear_cka_matches_gram_form(rng):
    X = rng.normal(size=(60, 10))
    Y = X @ rng.normal(size=(10, 25)) + 0.5 * rng.normal(size=(60, 25))
    assert R.linear_cka(X, Y) == pytest.approx(_cka_gram(X, Y), rel=1e-12)
    Z = rng.normal(size=(60, 3))
    assert R.linear_cka(X, Z) == pytest.approx(_cka_gram(X, Z), rel=1e-12)


def test_linear_cka_wide_inputs_take_gram_path(rng):
    X, Y = rng.normal(size=(20, 500)), rng.normal(size=(20, 300))
    assert R.linear_cka(X, Y) == pytest.approx(_cka_gram(X, Y), rel=1e-10)


def test_linear_cka_invariances(rng):
    X = rng.normal(size=(50, 8))
    Y = np.tanh(X @ rng.normal(size=(8, 12)))
    base = R.linear_cka(X, Y)
    assert R.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    Q = ortho_group.rvs(8, random_state=0)
    assert R.linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)
    assert R.linear_cka(3.7 * X, 0.01 * Y) == pytest.approx(base, rel=1e-10)
    assert R.linear_cka(X + 5.0, Y - 2.0) == pytest.approx(base, rel=1e-10)
    assert R.linear_cka(Y, X) == pytest.approx(base, rel=1e-12)
    assert 0.0 <= base <= 1.0
    assert np.isnan(R.linear_cka(np.ones((50, 3)), Y))


def test_cka_matrix(rng):
    layers = {
        "a": rng.normal(size=(40, 5)),
        "b": rng.normal(size=(40, 9)),
        "c": rng.normal(size=(40, 2, 2, 2)),
    }
    M = R.cka_matrix(layers)
    vals = list(layers.values())
    assert M.shape == (3, 3)
    np.testing.assert_allclose(np.diag(M), 1.0)
    np.testing.assert_allclose(M, M.T)
    assert M[0, 2] == pytest.approx(_cka_gram(vals[0], vals[2].reshape(40, -1)), rel=1e-12)
    C = R.cka_matrix(vals[:2], vals)
    assert C.shape == (2, 3)
    np.testing.assert_allclose(C, M[:2])


# --- gradient check ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model_batch():
    torch.manual_seed(0)
    model = simplecnn_spec(depth=2, base_width=4, hidden=16).build()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 3, 7, 3])
    return model, x, y


def _loss_of_weight_entries(model, x, y, layer, flat_idx):
    """The float64 eval-mode loss as a function of some entries of one conv weight, built
    independently of probe (functional_call on a copy)."""
    m = copy.deepcopy(model).double().eval()
    params = {k: v.detach() for k, v in m.named_parameters()}
    buffers = dict(m.named_buffers())
    w0 = params[f"{layer}.weight"]
    idx = torch.as_tensor(flat_idx)

    def f(v: torch.Tensor) -> torch.Tensor:
        w = w0.reshape(-1).clone().index_put((idx,), v).view_as(w0)
        p = dict(params, **{f"{layer}.weight": w})
        out = torch.func.functional_call(m, (p, buffers), (x.double(),))
        return F.cross_entropy(out, y)

    return f, w0.reshape(-1)[idx].clone()


def conv_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def test_gradcheck_conv_layers_agrees_with_torch_gradcheck(small_model_batch):
    model, x, y = small_model_batch
    rows = G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=5, seed=7)
    assert {r.layer for r in rows} == set(conv_layers(model))
    assert len(rows) == 5 * len(conv_layers(model))
    assert max(r.rel_error for r in rows) < 1e-6
    for layer in conv_layers(model):
        sel = [r for r in rows if r.layer == layer]
        shape = model.get_submodule(layer).weight.shape
        flat = [int(np.ravel_multi_index(r.index, tuple(shape))) for r in sel]
        f, v0 = _loss_of_weight_entries(model, x, y, layer, flat)
        v = v0.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (v,), eps=1e-6, atol=1e-6, rtol=1e-4)
        (g,) = torch.autograd.grad(f(v), v)
        np.testing.assert_allclose([r.analytic for r in sel], g.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose([r.numeric for r in sel], g.numpy(), rtol=1e-6, atol=1e-12)


def test_gradcheck_leaves_model_untouched(small_model_batch):
    model, x, y = small_model_batch
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    G.gradcheck_conv_layers(model, x, y, n_samples_per_layer=2)
    assert model.training
    for k, v in model.state_dict().items():
        assert v.dtype == dtypes[k]
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_gradcheck_rows_serialise_and_unfrozen_flags_kinks(small_model_batch):
    model, x, y = small_model_batch
    rows = G.gradcheck_conv_layers(
        model, x, y, n_samples_per_layer=3, eps=1e-2, seed=1, freeze_kinks=False
    )
    d = rows[0].to_dict()
    assert set(d) == {
        "layer",
        "index",
        "analytic",
        "numeric",
        "rel_error",
        "kink",
        "abs_error",
        "resolution",
        "below_resolution",
    }
    assert isinstance(d["index"], list)
    # wherever no unit switched, the plain central difference is accurate too
    assert all(r.rel_error < 1e-4 for r in rows if not r.kink)


class _WrongBackward(torch.autograd.Function):
    """Identity forward, gradient scaled by 1.01 backward: a 1 % backprop bug."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 1.01 * g


class _Buggy(torch.nn.Module):
    def forward(self, x):
        return _WrongBackward.apply(x)


def test_gradcheck_catches_a_wrong_backward(small_model_batch):
    model, x, y = small_model_batch
    buggy = copy.deepcopy(model)
    buggy.features.insert(1, _Buggy())  # after the first conv: only its gradient is wrong
    rows = G.gradcheck_conv_layers(buggy, x, y, n_samples_per_layer=3)
    first = [r for r in rows if r.layer == "features.0"]
    later = [r for r in rows if r.layer != "features.0"]
    assert all(
        r.rel_error == pytest.approx(0.01 / 1.01, rel=1e-4) for r in first if r.analytic != 0
    )
    assert all(r.rel_error < 1e-6 for r in later)
