"""neural-collapse: NC1-NC4 against a dense numpy implementation of Papyan, Han & Donoho (2020).

The reference below is written from the paper's definitions with d x d covariance
matrices and numpy's pseudo-inverse; the module under test never forms them.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from probe.analyze import run_analyses
from probe.numerics import collapse as N
from probe.rundir import activations
from probe.rundir.run import Run


def papyan(h, y, pred=None, W=None):
    """NC1-NC4 as the paper defines them, dense, float64."""
    h = np.asarray(h, dtype=np.float64)
    classes = np.unique(y)
    C = len(classes)
    mu = np.stack([h[y == c].mean(0) for c in classes])
    mu_g = mu.mean(0)
    Sw = sum(np.outer(v, v) for v in (h - mu[np.searchsorted(classes, y)])) / len(h)
    M = (mu - mu_g).T  # d x C
    Sb = M @ M.T / C
    out = {"nc1": np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / C}
    norms = np.linalg.norm(M, axis=0)
    out["nc2_equinorm_means"] = norms.std(ddof=1) / norms.mean()
    cos = [M[:, i] @ M[:, j] / (norms[i] * norms[j]) for i in range(C) for j in range(C) if i != j]
    out["nc2_equiangular_means"] = np.mean(np.abs(np.array(cos) + 1 / (C - 1)))
    out["nc2_cosine_std_means"] = np.std(cos)
    dist = np.array([[np.sum((v - m) ** 2) for m in mu] for v in h])
    ncc = classes[dist.argmin(1)]
    out["ncc_accuracy"] = np.mean(ncc == y)
    if pred is not None:
        out["nc4"] = np.mean(ncc != pred)
    if W is not None:
        W = np.asarray(W, dtype=np.float64)[classes]
        out["nc3"] = np.linalg.norm(W / np.linalg.norm(W) - M.T / np.linalg.norm(M)) ** 2
        wn = np.linalg.norm(W, axis=1)
        out["nc2_equinorm_weights"] = wn.std(ddof=1) / wn.mean()
        wc = [W[i] @ W[j] / (wn[i] * wn[j]) for i in range(C) for j in range(C) if i != j]
        out["nc2_equiangular_weights"] = np.mean(np.abs(np.array(wc) + 1 / (C - 1)))
    return out


def simplex_etf(C, d, seed=0, scale=3.0):
    """C unit vectors in R^d with pairwise cosine -1/(C-1), rotated at random."""
    rng = np.random.default_rng(seed)
    E = np.eye(C) - 1.0 / C
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    Q, _ = np.linalg.qr(rng.normal(size=(d, C)))
    return scale * E @ Q.T  # [C, d]


def random_features(counts=(20, 30, 25, 40), d=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), d)) * 2
    h = np.concatenate([rng.normal(size=(n, d)) + c for n, c in zip(counts, centres, strict=True)])
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return h, y, rng


@pytest.mark.parametrize("counts", [(25, 25, 25, 25), (20, 30, 25, 40)])
def test_every_measure_equals_the_dense_reference_on_random_features(counts):
    h, y, rng = random_features(counts)
    W = rng.normal(size=(6, h.shape[1]))  # 6 outputs: rows beyond the classes present unused
    pred = rng.integers(0, 4, size=len(y))
    r = N.neural_collapse(h, y, predictions=pred, classifier_weight=W, num_classes=6)
    ref = papyan(h, y, pred, W)
    for k, v in ref.items():
        assert getattr(r, k) == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert r.network_accuracy == pytest.approx(np.mean(pred == y))
    assert r.sigma_b_rank == 3 == r.sigma_b_expected_rank
    assert any("only 4 of 6 classes" in w for w in r.notes)


def test_exactly_collapsed_features_give_zero():
    C, d = 5, 8
    mu = simplex_etf(C, d) + 7.0  # shifted: the measures centre on the mean of the means
    y = np.repeat(np.arange(C), 12)
    h = mu[y]
    W = 0.4 * (mu - mu.mean(0))  # the classifier equals the centred means, up to scale
    r = N.neural_collapse(h, y, predictions=y, classifier_weight=W, num_classes=C)
    assert r.nc1 == pytest.approx(0.0, abs=1e-20)
    for k in (
        "nc2_equinorm_means",
        "nc2_equiangular_means",
        "nc2_cosine_std_means",
        "nc2_equinorm_weights",
        "nc2_equiangular_weights",
        "nc3",
        "nc4",
    ):
        assert getattr(r, k) == pytest.approx(0.0, abs=1e-12), k
    assert r.ncc_accuracy == 1.0 and r.network_accuracy == 1.0
    assert r.within_trace == pytest.approx(0.0, abs=1e-20) and r.between_trace > 0
    # a small within-class spread: NC1 grows with its variance, as the reference says
    rng = np.random.default_rng(1)
    for sigma in (1e-3, 1e-2):
        hn = h + sigma * rng.normal(size=h.shape)
        assert N.neural_collapse(hn, y).nc1 == pytest.approx(papyan(hn, y)["nc1"], rel=1e-9)


def test_a_network_that_disagrees_with_the_nearest_centre():
    C, d = 4, 6
    y = np.repeat(np.arange(C), 10)
    h = simplex_etf(C, d)[y]
    pred = y.copy()
    pred[:10] = 1  # the first class predicted as class 1
    assert N.neural_collapse(h, y, predictions=pred).nc4 == pytest.approx(10 / 40)


def test_what_makes_a_number_unreliable_is_said():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 4)
    r = N.neural_collapse(rng.normal(size=(20, 3)), y)  # 3 features < C - 1 = 4; 4 per class
    assert r.sigma_b_rank == 3 == r.sigma_b_expected_rank
    assert any("3 features < C - 1 = 4" in w for w in r.notes)
    assert any("some class has 4 images" in w for w in r.notes)
    y = np.repeat(np.arange(3), 30)
    centres = rng.normal(size=(3, 12)) * 2
    noise = rng.normal(size=(90, 12))
    for gap, rank, said in ((1e-4, 2, "ill-conditioned"), (1e-8, 1, "numerical rank 1 < 2")):
        centres[1] = centres[0] + gap  # two nearly equal class means
        h = centres[y] + noise - np.stack([noise[y == c].mean(0) for c in range(3)])[y]
        r = N.neural_collapse(h, y)
        assert r.sigma_b_rank == rank and any(said in w for w in r.notes), (gap, r.notes)
    assert N.neural_collapse(h[:60], y[:60]).sigma_b_condition == 1.0  # two classes: one direction
    with pytest.raises(ValueError, match="two classes"):
        N.neural_collapse(h[:5], np.zeros(5))
    with pytest.raises(ValueError, match="does not map"):
        N.neural_collapse(h, y, classifier_weight=np.ones((3, 2)))


# --- the analysis on a real tiny run ------------------------------------------------------------


def test_the_analysis_equals_the_reference_on_the_dump_and_the_checkpoint(probe_run):
    (o,) = run_analyses(
        probe_run, ["neural-collapse"], "all", {"neural-collapse": {"layers": "all"}}
    )
    assert o.status == "ok", (o.error, o.traceback)
    run = Run(probe_run)
    y = run.probe_set().labels.numpy()
    doc = json.loads((o.path / "neural_collapse.json").read_text())
    layers = activations.read(run.activations_path(0))["layers"]
    assert doc["layers"] == layers and doc["penultimate"] == layers[-1] == "classifier.3"
    f = h5py.File(o.path / "neural_collapse.h5")
    for j, e in enumerate((0, 1, 2)):
        path = run.activations_path(e)
        pred = activations.read(path, None, "logits").argmax(1)
        W = load_file(run.checkpoint_path(e))["model/classifier.5.weight"]
        for i, layer in enumerate(layers):
            h = activations.read(path, layer)
            ref = papyan(h, y, pred, W if layer == layers[-1] else None)
            for k, v in ref.items():
                assert f[k][i, j] == pytest.approx(v, rel=1e-8, abs=1e-12), (e, layer, k)
            if layer != layers[-1]:
                assert np.isnan(f["nc3"][i, j])
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["nc1"] == pytest.approx(f["nc1"][-1, -1])
    assert m["scalars"]["layer"] == "classifier.3"
    assert m["scalars"]["reliable"] is False  # 4 probe images per class
    assert any("some class has 4 images" in w for w in doc["warnings"])
    assert m["layer_scalars"]["neural_collapse_layers"]["layers"] == layers
    assert "mean of the class means" in doc["definitions"]["mu_G"]
    assert doc["source"] == "probe_set"


def test_an_unrecorded_layer_is_one_line(probe_run):
    (o,) = run_analyses(
        probe_run, ["neural-collapse"], "last", {"neural-collapse": {"layers": "features.99"}}
    )
    assert o.status == "failed" and "not a recorded layer" in o.error and "\n" not in o.error
