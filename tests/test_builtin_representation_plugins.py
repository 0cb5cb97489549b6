"""The built-in representation analyses (filters, projection, rsm, cka,
gradcheck) on a tiny real run.

The plugins are registered in-process, the way `probe.contract.registry` registers an entry
point, and run through `probe.analysis.runner.run_analyses`, so these tests cover the
whole path a user's `probe analyze --plugin NAME` takes. Numbers are checked
against computations made here from the run's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

from probe.analysis.runner import run_analyses
from probe.contract.registry import PluginInfo, Registry
from probe.rundir import activations
from probe.rundir.run import Run
from probe_plugins import cka, filters, gradcheck, projection, rsm

PLUGINS = {
    "filters": filters,
    "projection": projection,
    "rsm": rsm,
    "cka": cka,
    "gradcheck": gradcheck,
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    for name, module in PLUGINS.items():
        reg.register(module, PluginInfo(name, f"probe_plugins.{name}"))
    assert all(info.status == "active" for info in reg.plugins.values()), reg.plugins
    return reg


def analyse(run_dir: Path, registry: Registry, name: str, epochs: str | None = None, **params):
    outcomes = run_analyses(
        run_dir,
        [name],
        epochs,
        {name: {k: str(v) for k, v in params.items()}},
        registry=registry,
        device="cpu",
    )
    for o in outcomes:
        assert o.status == "ok", f"{o.label}: {o.error}\n{o.traceback}"
    return outcomes


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def probe_labels(run_dir: Path) -> np.ndarray:
    return Run(run_dir).probe_set().labels.numpy()


def pooled(run_dir: Path, layer: str, epoch: int) -> np.ndarray:
    return np.asarray(
        activations.read(Run(run_dir).activations_path(epoch), layer), dtype=np.float64
    )


def test_registered_analyses(registry):
    assert set(registry.analyses) == {
        "filters",
        "filters-evolution",
        "projection",
        "rsm",
        "cka",
        "cka-epochs",
        "gradcheck",
    }
    assert registry.get("projection").scope == "run"
    assert registry.get("rsm").scope == "epoch"


def test_projection_pca_on_shared_axes(probe_run, registry):
    (o,) = analyse(probe_run, registry, "projection", method="pca")
    m = manifest(o.path)
    assert m["epochs"] == [0, 1, 2]
    assert set(m["files"]) == {"pca.png", "projection.h5"}
    layer = m["scalars"]["layer"]
    assert layer == activations.read(Run(probe_run).activations_path(2))["layers"][-1]
    with h5py.File(o.path / "projection.h5") as f:
        coords, comps = f["pca"][()], f["pca_components"][()]
        assert coords.shape == (3, len(probe_labels(probe_run)), 2)
    # the last epoch's panel is sklearn's PCA of the last epoch (up to sign) ...
    X2 = pooled(probe_run, layer, 2)
    ref = PCA(2, svd_solver="full").fit(X2)
    signs = np.sign(np.sum(comps * ref.components_, axis=1))
    np.testing.assert_allclose(coords[2], ref.transform(X2) * signs, rtol=1e-4, atol=1e-4)
    assert m["scalars"]["pca_pc1_var"] == pytest.approx(ref.explained_variance_ratio_[0], rel=1e-6)
    # ... and every other epoch is projected on those same axes, centred on its own mean
    X0 = pooled(probe_run, layer, 0)
    np.testing.assert_allclose(coords[0], (X0 - X0.mean(0)) @ comps.T, rtol=1e-4, atol=1e-5)


def test_projection_tsne_and_procrustes(probe_run, registry):
    (o,) = analyse(
        probe_run,
        registry,
        "projection",
        "1,2",
        method="both",
        align="procrustes",
        layer="features.6",
        tsne_backend="sklearn",
    )
    m = manifest(o.path)
    assert {"pca.png", "tsne.png"} <= set(m["files"])
    assert m["scalars"]["layer"] == "features.6"
    assert 0.0 <= m["scalars"]["tsne_knn_acc"] <= 1.0
    with h5py.File(o.path / "projection.h5") as f:
        assert f["tsne"].shape == (2, len(probe_labels(probe_run)), 2)
        assert np.all(np.isfinite(f["tsne"][()]))


def test_bad_layer_is_a_clear_failure(probe_run, registry):
    (o,) = run_analyses(
        probe_run,
        ["rsm"],
        "last",
        {"rsm": {"layer": "features.99"}},
        registry=registry,
        device="cpu",
    )
    assert o.status == "failed"
    assert "not a recorded layer" in o.error and "features.99" in o.error


def test_rsm_scalars_match_a_direct_computation(probe_run, registry):
    (o,) = analyse(probe_run, registry, "rsm", "last", layer="features.9")
    m = manifest(o.path)
    labels = probe_labels(probe_run)
    S = cosine_similarity(pooled(probe_run, "features.9", 2))
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    assert m["scalars"]["within"] == pytest.approx(S[same & off].mean(), rel=1e-6)
    assert m["scalars"]["between"] == pytest.approx(S[~same].mean(), rel=1e-6)
    with h5py.File(o.path / "rsm.h5") as f:
        assert np.all(np.diff(f["sorted_labels"][()]) >= 0)
        order = f["order"][()]
        np.testing.assert_allclose(f["sorted_rsm"][()], S[np.ix_(order, order)], atol=1e-6)
    assert "rsm.png" in m["files"]


def test_cka_between_layers_and_epochs(probe_run, registry):
    (o,) = analyse(probe_run, registry, "cka", "last")
    with h5py.File(o.path / "cka_layers.h5") as f:
        M = f["cka"][()]
        layers = json.loads(f.attrs["layers"])
    assert M.shape == (len(layers), len(layers))
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-9)
    np.testing.assert_allclose(M, M.T)
    assert np.all((M >= 0) & (M <= 1 + 1e-9))

    (o,) = analyse(probe_run, registry, "cka-epochs")
    with h5py.File(o.path / "cka_epochs.h5") as f:
        C, epochs = f["cka"][()], f["epochs"][()]
    assert list(epochs) == [0, 1, 2]
    np.testing.assert_allclose(C[:, -1], 1.0, atol=1e-9)
    assert "cka_epochs.png" in manifest(o.path)["files"]


def test_filters_grid_and_evolution(probe_run, registry):
    (o,) = analyse(probe_run, registry, "filters", "last", normalize="symmetric")
    w_ckpt = Run(probe_run).load_checkpoint(2).model_state["features.0.weight"].numpy()
    with h5py.File(o.path / "filters.h5") as f:
        np.testing.assert_allclose(f["weight"][()], w_ckpt, rtol=1e-6)
    assert "filters.png" in manifest(o.path)["files"]

    (o,) = analyse(probe_run, registry, "filters-evolution")
    m = manifest(o.path)
    with h5py.File(o.path / "filters_evolution.h5") as f:
        assert f["norms"].shape == (3, w_ckpt.shape[0])
        assert np.all(f["relative_change"][0] == 0)
    assert m["scalars"]["relative_change"] > 0


def test_filter_images_are_scaled_per_filter():
    w = np.zeros((2, 3, 3, 3))
    w[0] = np.linspace(-1, 1, 27).reshape(3, 3, 3)
    w[1] = 100 * np.linspace(0, 1, 27).reshape(3, 3, 3)
    imgs = filters.to_images(w, "minmax")
    for i in range(2):
        assert imgs[i].min() == 0 and imgs[i].max() == 1
    sym = filters.to_images(w, "symmetric")
    assert sym[0].min() == 0 and sym[0].max() == 1 and sym[1].min() == pytest.approx(0.5)


def test_gradcheck_passes_and_writes_the_table(probe_run, registry):
    (o,) = analyse(probe_run, registry, "gradcheck", "last", n_images=4, samples_per_layer=2)
    m = manifest(o.path)
    assert {"gradcheck.png", "gradcheck.json"} <= set(m["files"])
    table = json.loads((o.path / "gradcheck.json").read_text())
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in Run(probe_run).model(2).modules())
    assert len(table["rows"]) == m["scalars"]["n_checked"] == 2 * n_conv
    assert all(
        set(r) >= {"layer", "index", "analytic", "numeric", "rel_error"} for r in table["rows"]
    )
    assert m["scalars"]["passed"] is True
    assert m["scalars"]["max_rel_error"] < 1e-6
