"""Debiased linear CKA (Song et al. 2012 unbiased HSIC, Nguyen et al. 2021) against a
direct float64 formula."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probe.numerics import representations as R


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out on Gram matrices with zeroed diagonals."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    return float(
        (
            np.trace(K @ L)
            + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ K @ L @ one)
        )
        / (n * (n - 3))
    )


def debiased_cka_reference(X: np.ndarray, Y: np.ndarray) -> float:
    """Raw (uncentred) features: the unbiased HSIC needs no centring."""
    X, Y = X.reshape(len(X), -1).astype(np.float64), Y.reshape(len(Y), -1).astype(np.float64)
    K, L = X @ X.T, Y @ Y.T
    return unbiased_hsic(K, L) / np.sqrt(unbiased_hsic(K, K) * unbiased_hsic(L, L))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_debiased_matches_the_direct_formula(rng):
    X = rng.normal(size=(60, 7)) + 3.0
    Y = np.tanh(X @ rng.normal(size=(7, 5))) + 0.5 * rng.normal(size=(60, 5))
    assert R.linear_cka(X, Y, "debiased") == pytest.approx(debiased_cka_reference(X, Y), rel=1e-10)
    W = rng.normal(size=(30, 200))  # wider than n: the Gram-matrix path
    V = W[:, :90] @ rng.normal(size=(90, 150)) + rng.normal(size=(30, 150))
    assert R.linear_cka(W, V, "debiased") == pytest.approx(debiased_cka_reference(W, V), rel=1e-9)


def test_debiased_removes_the_bias_for_independent_representations(rng):
    """Independent random features as wide as n: the biased CKA reads far above 0, the
    debiased one near 0."""
    X, Y = rng.normal(size=(100, 100)), rng.normal(size=(100, 100))
    assert R.linear_cka(X, Y) > 0.4
    assert abs(R.linear_cka(X, Y, "debiased")) < 0.05
    assert R.linear_cka(X, X, "debiased") == pytest.approx(1.0, abs=1e-12)


def test_debiased_invariances_and_edge_cases(rng):
    X, Y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3)) + rng.normal(size=(40, 1))
    base = R.linear_cka(X, Y, "debiased")
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert R.linear_cka(X @ Q, Y, "debiased") == pytest.approx(base, rel=1e-9)
    assert R.linear_cka(2.5 * X + 1.0, Y - 4.0, "debiased") == pytest.approx(base, rel=1e-9)
    assert np.isnan(R.linear_cka(np.ones((40, 3)), Y, "debiased"))
    assert np.isnan(R.linear_cka(X[:3], Y[:3], "debiased"))  # n(n-3) = 0
    with pytest.raises(ValueError, match="estimator"):
        R.linear_cka(X, Y, "unbiased")
    M = R.cka_matrix([X, Y, X[:, :3] + Y], estimator="debiased")
    assert M[0, 1] == pytest.approx(base, rel=1e-12) and M[1, 0] == M[0, 1]
    assert M[0, 2] == pytest.approx(debiased_cka_reference(X, X[:, :3] + Y), rel=1e-10)
    assert R.cka_matrix([X], [Y, X], estimator="debiased")[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert R.cka_matrix([X, Y])[0, 1] == pytest.approx(
        R.linear_cka(X, Y), rel=1e-12
    )  # default stays biased


def test_cka_plugins_take_the_estimator(probe_run):
    import h5py

    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry
    from probe.rundir import activations
    from probe.rundir.run import Run
    from probe_plugins import cka

    reg = Registry()
    reg.register(cka, PluginInfo("cka", "probe_plugins.cka"))
    (o,) = run_analyses(
        probe_run, ["cka"], "last", {"cka": {"estimator": "debiased"}}, registry=reg, device="cpu"
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    run = Run(probe_run)
    last = run.epochs()[-1]
    with h5py.File(o.path / "cka_layers.h5") as f:
        layers = json.loads(f.attrs["layers"])
        assert f.attrs["estimator"] == "debiased"
        M = f["cka"][()]
    a, b = (
        np.asarray(activations.read(run.activations_path(last), name), dtype=np.float32)
        for name in layers[:2]
    )
    assert M.shape == (len(layers), len(layers))
    assert M[0, 1] == pytest.approx(debiased_cka_reference(a, b), rel=1e-8)
    (e,) = run_analyses(
        probe_run,
        ["cka-epochs"],
        None,
        {"cka-epochs": {"estimator": "debiased"}},
        registry=reg,
        device="cpu",
    )
    assert e.status == "ok", f"{e.error}\n{e.traceback}"
    with h5py.File(e.path / "cka_epochs.h5") as f:
        assert f.attrs["estimator"] == "debiased" and f["cka"][()][:, -1] == pytest.approx(
            1.0, abs=1e-9
        )
