"""linear-probe: accuracies against scikit-learn's own cross-validation, same folds and C."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.analyze import run_analyses
from probe.numerics import probing as P
from probe.rundir import activations
from probe.rundir.run import Run


def blobs(n_per_class=(30, 25, 40), d=6, seed=0, spread=1.5):
    """Gaussian classes with shifted means: separable, but not perfectly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per_class), d)) * spread
    x = np.concatenate(
        [rng.normal(size=(n, d)) + c for n, c in zip(n_per_class, centres, strict=True)]
    )
    y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per_class)])
    return x * rng.uniform(0.1, 10, size=d), y  # features on different scales


def sklearn_reference(x, y, folds, C, seed, standardize=True, max_iter=1000):
    """scikit-learn's cross_val_score with the same split and the same classifier."""
    clf = LogisticRegression(C=C, max_iter=max_iter)
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_score(model, x, y, cv=cv, scoring="accuracy")


@pytest.mark.parametrize(
    "folds, C, seed, standardize",
    [(5, 1.0, 0, True), (3, 0.05, 7, True), (4, 10.0, 3, False), (2, 1.0, 1, True)],
)
def test_accuracies_equal_sklearn_cross_validation(folds, C, seed, standardize):
    x, y = blobs()
    r = P.linear_probe(x, y, folds=folds, C=C, seed=seed, standardize=standardize)
    ref = sklearn_reference(x, y, folds, C, seed, standardize)
    assert r.fold_accuracies == pytest.approx(list(ref), abs=1e-12)
    assert r.accuracy == pytest.approx(ref.mean(), abs=1e-12)
    assert r.accuracy_std == pytest.approx(ref.std(), abs=1e-12)
    assert r.converged and r.folds == folds and r.n_classes == 3 and r.n_features == 6
    assert r.chance == pytest.approx(40 / 95)


def test_the_folds_are_stratified_and_cover_every_image_once():
    x, y = blobs()
    pairs = P.fold_indices(y, 5, seed=2)
    test = np.concatenate([te for _, te in pairs])
    assert sorted(test.tolist()) == list(range(len(y)))
    for tr, te in pairs:
        assert not set(tr) & set(te)
        for k, n in enumerate((30, 25, 40)):
            assert abs(np.sum(y[te] == k) - n / 5) <= 1


def test_too_few_images_per_class_and_one_class_are_refused():
    x, y = blobs(n_per_class=(10, 3, 10))
    assert P.fewest_per_class(y) == (1, 3)
    with pytest.raises(ValueError, match="class 1 has 3 images, fewer than the 4 folds"):
        P.linear_probe(x, y, folds=4)
    assert P.linear_probe(x, y, folds=3).min_test_per_class == 1
    with pytest.raises(ValueError, match="two classes"):
        P.linear_probe(x[:10], np.zeros(10), folds=2)


def test_an_unconverged_fit_and_tiny_folds_are_flagged():
    x, y = blobs(n_per_class=(8, 8, 8))
    r = P.linear_probe(x, y, folds=4, max_iter=2, C=1e4)
    assert not r.converged and r.iterations == 2
    assert any("not converged" in w for w in r.warnings)
    assert any("only 2 images of some class" in w for w in r.warnings)


# --- the analysis on a real tiny run ------------------------------------------------------------


def _result(outcome):
    assert outcome.status == "ok", (outcome.error, outcome.traceback)
    return json.loads((outcome.path / "linear_probe.json").read_text())


def test_the_analysis_equals_sklearn_on_the_dumped_activations(probe_run):
    (o,) = run_analyses(
        probe_run, ["linear-probe"], "all", {"linear-probe": {"folds": "2", "C": "0.5"}}
    )
    doc = _result(o)
    run = Run(probe_run)
    labels = run.probe_set().labels.numpy()
    layers = activations.read(run.activations_path(2))["layers"]
    assert doc["layers"] == layers and doc["epochs"] == [0, 1, 2]
    with h5py.File(o.path / "linear_probe.h5") as f:
        acc = f["accuracy"][()]
    assert acc.shape == (len(layers), 3)
    for i, layer in enumerate(layers):
        for j, e in enumerate((0, 1, 2)):
            x = activations.read(run.activations_path(e), layer).astype(np.float64)
            ref = sklearn_reference(x, labels, 2, 0.5, 0)
            assert acc[i, j] == pytest.approx(ref.mean(), abs=1e-12), (layer, e)
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["penultimate_accuracy"] == pytest.approx(acc[-1, -1])
    assert m["scalars"]["best_layer"] in layers
    table = m["layer_scalars"]["linear_probe_layers"]
    assert table["layers"] == layers and "accuracy" in table["metrics"]
    assert "C=0.5" in doc["classifier"] and "StratifiedKFold(n_splits=2" in doc["folds"]
    assert {"linear_probe.png", "linear_probe.h5"} <= set(m["files"])


def test_too_few_images_per_class_skips_in_one_line(probe_run):
    (o,) = run_analyses(probe_run, ["linear-probe"], "last")  # 4 probe images per class, 5 folds
    assert o.status == "skipped"
    assert "4 images of class" in o.reason and "folds=5" in o.reason and "\n" not in o.reason


def test_named_layers_and_an_unrecorded_layer(probe_run):
    (o,) = run_analyses(
        probe_run,
        ["linear-probe"],
        "last",
        {"linear-probe": {"folds": "2", "layers": "penultimate, features.2"}},
    )
    assert _result(o)["layers"] == ["features.2", "classifier.3"]
    (o,) = run_analyses(
        probe_run,
        ["linear-probe"],
        "last",
        {"linear-probe": {"folds": "2", "layers": "features.2"}},
    )
    scalars = json.loads((o.path / "manifest.json").read_text())["scalars"]
    assert "penultimate_accuracy" not in scalars and scalars["best_layer"] == "features.2"
    (o,) = run_analyses(
        probe_run,
        ["linear-probe"],
        "last",
        {"linear-probe": {"folds": "2", "layers": "features.99"}},
    )
    assert o.status == "failed" and "not a recorded layer" in o.error and "features.99" in o.error


def test_layers_go_to_the_executor_with_the_same_result(probe_run):
    from probe.analysis.executor import make_executor

    params = {"linear-probe": {"folds": "2"}}
    (inline,) = run_analyses(probe_run, ["linear-probe"], "last", params)
    with make_executor(workers=2) as executor:
        (split,) = run_analyses(
            probe_run, ["linear-probe"], "last", params, executor=executor, force=True
        )
    assert _result(inline)["accuracy"] == _result(split)["accuracy"]
