"""The `spectra` analyses: WeightWatcher's weight-matrix spectra, checked three ways.

Closed forms (a planted power-law spectrum, norms against numpy, the conv reshaping
against a hand-built kernel), the whole `probe analyze` path on a tiny real run
against numbers recomputed here from its checkpoints, and the `weightwatcher`
package itself on the same matrices (skipped only when it is not installed:
`pip install -e '.[peers]'`).
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from probe.analysis.runner import run_analyses
from probe.contract.registry import PluginInfo, Registry
from probe.numerics import spectra as W
from probe.rundir.run import Run
from probe_plugins import spectra as S

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.register(S, PluginInfo("spectra", "probe_plugins.spectra"))
    assert reg.plugins["spectra"].status == "active", reg.plugins["spectra"].error
    return reg


def analyse(run_dir: Path, registry: Registry, name: str, epochs: str | None = None):
    outcomes = run_analyses(run_dir, [name], epochs, registry=registry, device="cpu")
    for o in outcomes:
        assert o.status == "ok", f"{o.label}: {o.error}\n{o.traceback}"
    return outcomes


def with_spectrum(eigenvalues: np.ndarray, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A [rows, cols] matrix whose W^T W has exactly `eigenvalues` (random
    orthogonal singular vectors)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (u * np.sqrt(eigenvalues)) @ v.T


# --- registration -----------------------------------------------------------------


def test_entry_point_is_declared_and_registers_both_analyses(registry):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "probe"
    ]
    assert declared["spectra"] == "probe_plugins.spectra"
    assert set(registry.analyses) == {"spectra", "spectra-epochs"}
    assert (
        registry.analyses["spectra"].needs
        == frozenset({"checkpoint"})
        == registry.analyses["spectra-epochs"].needs
    )
    assert registry.analyses["spectra-epochs"].scope == "run"


# --- closed forms -----------------------------------------------------------------


def test_planted_power_law_spectrum_recovers_alpha():
    """Eigenvalues drawn from p(x) ~ x^-alpha, x >= 1: the fit finds alpha within
    three standard errors."""
    rng = np.random.default_rng(1)
    alpha, n = 2.5, 400
    planted = (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))
    w = with_spectrum(planted, (600, n))
    spec = W.layer_spectrum("Linear", w)
    np.testing.assert_allclose(spec["eigenvalues"], np.sort(planted), rtol=1e-6)  # float32 weights
    fit = W.fit_power_law(spec["eigenvalues"])
    assert fit.method == "csn" and fit.n_fit == n
    assert abs(fit.alpha - alpha) < 3 * (alpha - 1) / math.sqrt(fit.n_tail), fit
    assert fit.xmax == pytest.approx(planted.max(), rel=1e-6)
    assert fit.n_tail == int(np.sum(spec["eigenvalues"] >= fit.xmin)) and 0 < fit.D < 0.1


def test_power_law_tail_above_a_bulk_is_found():
    """A bulk below 0.6 and a power-law tail from 1: xmin lands at the tail's start,
    alpha on the tail's."""
    rng = np.random.default_rng(2)
    alpha = 3.0
    tail = (1.0 - rng.random(300)) ** (-1.0 / (alpha - 1.0))
    bulk = rng.uniform(0.05, 0.6, 300)
    fit = W.fit_power_law(np.concatenate([bulk, tail]))
    assert 0.9 <= fit.xmin <= 1.3, fit
    assert abs(fit.alpha - alpha) < 3 * (alpha - 1) / math.sqrt(fit.n_tail), fit
    assert 200 <= fit.n_tail <= 300


def test_fit_is_the_clauset_shalizi_newman_mle_at_the_ks_minimum():
    """At the chosen xmin, alpha is 1 + n / sum(log(x / xmin)) and no other xmin has a
    smaller KS distance."""
    x = np.sort(np.random.default_rng(3).lognormal(0.0, 1.0, 60))
    fit = W.fit_power_law(x)
    tail = x[x >= fit.xmin]
    assert fit.alpha == pytest.approx(1 + len(tail) / np.sum(np.log(tail / fit.xmin)), rel=1e-12)

    def ks(i: int) -> float:
        t, n = x[i:], len(x) - i
        a = 1 + n / np.sum(np.log(t / x[i]))
        return np.max(np.abs(1 - (t / x[i]) ** (1 - a) - np.arange(n) / n))

    assert fit.D == pytest.approx(ks(int(np.searchsorted(x, fit.xmin))), rel=1e-12)
    assert fit.D <= min(ks(i) for i in range(len(x) - 1)) + 1e-15


def test_small_and_degenerate_spectra():
    few = W.fit_power_law(np.arange(1.0, 8.0))
    assert math.isnan(few.alpha) and "fewer than 8" in few.reason
    many = W.fit_power_law(np.linspace(1.0, 2.0, W.MAX_EVALS + 1))
    assert math.isnan(many.alpha) and "max_evals" in many.reason
    for n in (12, 30):  # the small-sample and the standard fit
        flat = W.fit_power_law(np.ones(n))
        assert math.isnan(flat.alpha) and "all equal" in flat.reason
    small = W.fit_power_law(np.concatenate([np.zeros(5), np.linspace(1.0, 4.0, 12)]))
    assert small.method == "small-n" and small.n_fit == 12 and small.n_tail >= W.SMALL_N_MIN_TAIL
    tail = np.linspace(1.0, 4.0, 12)[-small.n_tail :]
    n = len(tail)
    assert small.alpha == pytest.approx(1 + (n - 1) / np.sum(np.log(tail / tail[0])), rel=1e-12)


def test_norms_against_numpy_on_random_matrices():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((30, 50)).astype(np.float32)
    spec = W.layer_spectrum("Linear", w)
    w64 = w.astype(np.float64)
    assert spec["spectral_norm"] == pytest.approx(np.linalg.norm(w64, 2), rel=1e-12)
    assert spec["stable_rank"] == pytest.approx(
        np.linalg.norm(w64) ** 2 / np.linalg.norm(w64, 2) ** 2, rel=1e-12
    )
    np.testing.assert_allclose(spec["eigenvalues"], np.linalg.eigvalsh(w64 @ w64.T), rtol=1e-9)
    assert (spec["N"], spec["M"], spec["n_evals"], spec["n_matrices"]) == (50, 30, 30, 1)

    k = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    spec = W.layer_spectrum("Conv2d", k)
    k64 = k.astype(np.float64)
    slices = [k64[:, :, i, j] for i in range(3) for j in range(3)]
    top = max(np.linalg.norm(s, 2) for s in slices)
    assert spec["spectral_norm"] == pytest.approx(top, rel=1e-12)
    assert spec["stable_rank"] == pytest.approx(np.sum(k64**2) / top**2, rel=1e-12)
    expected = np.sort(np.concatenate([np.linalg.eigvalsh(0.5 * s.T @ s) for s in slices]))
    np.testing.assert_allclose(spec["eigenvalues"], expected, rtol=1e-9)
    assert spec["lambda_max"] == pytest.approx(0.5 * top**2, rel=1e-9)
    assert (spec["n_evals"], spec["n_matrices"]) == (4 * 9, 9)


def test_conv_reshaping_against_a_hand_built_kernel():
    """[out=2, in=3, kh=1, kw=2]: two [2, 3] slices, one per kernel position, each
    transposed to [3, 2]."""
    k = np.array(
        [[[[1, 2]], [[3, 4]], [[5, 6]]], [[[7, 8]], [[9, 10]], [[11, 12]]]], dtype=np.float32
    )
    assert k.shape == (2, 3, 1, 2)
    mats = W.layer_matrices("Conv2d", k)
    np.testing.assert_array_equal(mats[0], [[1, 7], [3, 9], [5, 11]])  # position (0, 0), transposed
    np.testing.assert_array_equal(
        mats[1], [[2, 8], [4, 10], [6, 12]]
    )  # position (0, 1), transposed
    tall = np.arange(3 * 2 * 2 * 1, dtype=np.float32).reshape(3, 2, 2, 1)
    mats = W.layer_matrices("Conv2d", tall)
    assert len(mats) == 2 and all(m.shape == (3, 2) for m in mats)
    np.testing.assert_array_equal(mats[1], tall[:, :, 1, 0])  # out >= in: kept as it is
    with pytest.raises(ValueError, match="4-D"):
        W.layer_matrices("Conv2d", np.zeros((2, 3)))


def test_non_finite_weights_are_one_error_naming_the_checkpoint():
    import torch
    from torch import nn

    from probe.errors import ProbeError

    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
    ckpt = SimpleNamespace(
        path=Path("checkpoints/epoch_0003.safetensors"), build_model=lambda device: model
    )
    with pytest.raises(ProbeError, match=r"epoch_0003.safetensors: layer 0 has non-finite weights"):
        S.model_layers(ckpt)


# --- the analyses on a tiny real run ----------------------------------------------


def test_spectra_on_a_run_matches_its_checkpoint(probe_run, registry):
    (o,) = analyse(probe_run, registry, "spectra", "last")
    files = {p.name for p in o.path.iterdir()}
    assert {"esd.png", "alpha.png", "eigenvalues.h5", "spectra.json", "manifest.json"} <= files
    manifest = json.loads((o.path / "manifest.json").read_text())
    result = json.loads((o.path / "spectra.json").read_text())
    run = Run(probe_run)
    last = result["epoch"]
    model = run.load_checkpoint(last).build_model("cpu")
    import torch

    expected = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert [r["layer"] for r in result["layers"]] == [n for n, _ in expected]
    assert result["computed_on"]["data"].startswith("none")
    with h5py.File(o.path / "eigenvalues.h5") as f:
        assert json.loads(f.attrs["layers"]) == [n for n, _ in expected]
        for (name, mod), row in zip(expected, result["layers"], strict=True):
            w = mod.weight.detach().double().numpy()
            if w.ndim == 4:
                mats = [
                    0.5 * w[:, :, i, j].T @ w[:, :, i, j]
                    for i in range(w.shape[2])
                    for j in range(w.shape[3])
                ]
                ev = np.sort(
                    np.concatenate([np.linalg.eigvalsh(m)[-min(w.shape[:2]) :] for m in mats])
                )
            else:
                ev = np.linalg.eigvalsh(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w)
            np.testing.assert_allclose(f[name][()], ev, rtol=1e-6, atol=1e-12)
            assert row["n_evals"] == len(ev) and row["lambda_max"] == pytest.approx(
                ev[-1], rel=1e-6
            )
            assert manifest["scalars"][f"alpha.{name}"] == pytest.approx(row["alpha"])
            assert row["alpha"] > 1 and row["xmin"] <= row["xmax"] == pytest.approx(
                ev[-1], rel=1e-6
            )
            assert 0 < row["D"] < 1 and row["n_tail"] == int(np.sum(ev >= row["xmin"] * (1 - 1e-9)))
    alphas = [r["alpha"] for r in result["layers"]]
    assert manifest["scalars"]["alpha_mean"] == pytest.approx(np.mean(alphas))
    assert manifest["captions"]["alpha.png"].startswith("Power-law exponent")


def test_spectra_epochs_agrees_with_each_epochs_checkpoint(probe_run, registry):
    (o,) = analyse(probe_run, registry, "spectra-epochs")
    assert (o.path / "spectra_epochs.png").exists()
    run = Run(probe_run)
    with h5py.File(o.path / "spectra_epochs.h5") as f:
        epochs = [int(e) for e in f["epochs"][()]]
        layers = json.loads(f.attrs["layers"])
        alpha, srank, snorm = f["alpha"][()], f["stable_rank"][()], f["spectral_norm"][()]
    assert epochs == run.epochs() and len(epochs) >= 2
    for i, e in enumerate(epochs):
        found = S.model_layers(run.load_checkpoint(e))
        assert [name for name, _, _ in found] == layers
        for j, (_, kind, w) in enumerate(found):
            spec = W.layer_spectrum(kind, w)
            assert alpha[i, j] == W.fit_power_law(spec["eigenvalues"]).alpha
            assert (srank[i, j], snorm[i, j]) == (spec["stable_rank"], spec["spectral_norm"])
    # Training moves the spectra: the initialisation (epoch 0) differs from the last epoch.
    assert not np.allclose(alpha[0], alpha[-1])
    manifest = json.loads((o.path / "manifest.json").read_text())
    assert manifest["scalars"]["alpha_mean"] == pytest.approx(np.mean(alpha[-1]))


# --- against weightwatcher ----------------------------------------------------------


pytestmark_ww = pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")


def weightwatcher_details(model):
    ww = pytest.importorskip("weightwatcher")
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww.WeightWatcher(model=model).analyze()


def assert_agrees_with_weightwatcher(model) -> float:
    """Every layer's fit and norms equal weightwatcher's analyze() defaults; returns
    max |alpha - ww alpha|."""
    import torch

    details = weightwatcher_details(model)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert list(details["longname"]) == [n for n, _ in layers]
    worst = 0.0
    for (name, mod), (_, ref) in zip(layers, details.iterrows(), strict=True):
        kind = "Conv2d" if isinstance(mod, torch.nn.Conv2d) else "Linear"
        spec = W.layer_spectrum(kind, mod.weight.detach().float().numpy())
        fit = W.fit_power_law(spec["eigenvalues"])
        worst = max(worst, abs(fit.alpha - ref["alpha"]))
        assert fit.alpha == pytest.approx(ref["alpha"], rel=1e-9, abs=1e-9), name
        assert fit.xmin == pytest.approx(ref["xmin"], rel=1e-9), name
        assert fit.xmax == pytest.approx(ref["xmax"], rel=1e-9), name
        assert fit.D == pytest.approx(ref["D"], rel=1e-9, abs=1e-12), name
        assert fit.n_tail == ref["num_pl_spikes"], name
        assert spec["lambda_max"] == pytest.approx(ref["spectral_norm"], rel=1e-9), (
            name
        )  # ww's name for it
        assert spec["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-6), name
        assert spec["n_evals"] == ref["num_evals"], name
    return worst


@pytestmark_ww
def test_alpha_agrees_with_weightwatcher_on_a_trained_run(probe_run):
    run = Run(probe_run)
    for epoch in (0, max(run.epochs())):
        assert (
            assert_agrees_with_weightwatcher(run.load_checkpoint(epoch).build_model("cpu")) < 1e-9
        )


@pytestmark_ww
def test_alpha_agrees_with_weightwatcher_on_heavy_tailed_layers():
    """Wider layers with Student-t weights: the standard (>= 20 eigenvalue) fit on conv and
    linear layers alike."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 24, 3),
        nn.Conv2d(24, 12, 3),
        nn.Flatten(),
        nn.Linear(60, 40),
        nn.Linear(40, 25),
    )
    with torch.no_grad():
        for m in model:
            if hasattr(m, "weight"):
                m.weight.copy_(torch.distributions.StudentT(3.0).sample(m.weight.shape) * 0.1)
    assert assert_agrees_with_weightwatcher(model) < 1e-9
