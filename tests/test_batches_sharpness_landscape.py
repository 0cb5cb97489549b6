"""`batches=B` for sharpness and the landscape centre: per-batch values, mean,
s.e., combined value."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from curvature_helpers import mse, regression, small_cnn

from probe.errors import UsageError
from probe.numerics import landscape as L
from probe.numerics import sharpness as S
from probe.numerics.loss import split_batches


def test_split_batches_is_disjoint_and_refuses_too_many_images():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    parts = split_batches(x, y, 3, 3)
    assert [p[1].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(
        UsageError, match=r"^batches: .*4 \* 3 = 12 exceeds the 10 stored analysis images"
    ):
        split_batches(x, y, 4, 3)
    with pytest.raises(UsageError, match="^batches: "):
        split_batches(x, y, 0, 3)


def test_average_over_batches_combined_is_the_full_data_value():
    """Same noise draws on every batch: the combined value is the average-case measure of the
    union (an independent call on all the images), and the mean of the per-batch values."""
    model, x, y, _ = regression(n=120)
    parts = split_batches(x, y, 3, 40)
    kw = {"eps": 0.05, "samples": 30, "seed": 3, "loss_fn": mse, "batch_size": 64}
    spread = S.over_batches("average", model, parts, **kw)
    full = S.average_sharpness(model, x, y, **kw)
    assert spread.combined.increase == pytest.approx(full.increase, rel=1e-12)
    assert spread.combined.stderr == pytest.approx(full.stderr, rel=1e-10)
    assert spread.combined.base_loss == pytest.approx(full.base_loss, rel=1e-12)
    single = [S.average_sharpness(model, xb, yb, **kw) for xb, yb in parts]
    assert spread.per_batch == pytest.approx([r.increase for r in single], rel=1e-12)
    assert spread.per_batch_base_loss == pytest.approx([r.base_loss for r in single], rel=1e-12)
    v = np.array(spread.per_batch)
    assert (
        spread.mean == pytest.approx(v.mean(), rel=1e-12) == pytest.approx(full.increase, rel=1e-10)
    )
    assert spread.stderr == pytest.approx(v.std(ddof=1) / math.sqrt(3), rel=1e-10)
    assert (
        spread.combined.samples == 30
        and spread.combined.antithetic
        and spread.combined.steps is None
    )
    assert (
        spread.combined.n_images == 120 and "3 disjoint batches" in spread.combined.loss_definition
    )


@pytest.mark.parametrize("measure", ["worst_case", "adaptive"])
def test_worst_case_over_batches_per_batch_and_combined(measure):
    model, x, y, _ = regression(n=120, seed=1)
    parts = split_batches(x, y, 2, 50)
    fn = S.worst_case_sharpness if measure == "worst_case" else S.adaptive_sharpness
    kw = {"eps": 0.02, "steps": 5, "loss_fn": mse}
    spread = S.over_batches(measure, model, parts, **kw)
    each = [fn(model, xb, yb, **kw).increase for xb, yb in parts]
    union = fn(model, x[:100], y[:100], **kw)
    assert spread.per_batch == pytest.approx(each, rel=1e-12)
    assert spread.combined.increase == pytest.approx(union.increase, rel=1e-12)
    assert spread.combined.steps == 5 and spread.combined.samples is None
    assert spread.mean == pytest.approx(np.mean(each), rel=1e-12)
    assert spread.stderr == pytest.approx(np.std(each, ddof=1) / math.sqrt(2), rel=1e-10)
    # the maximum of the mean loss is at most the mean of the per-batch maxima (+ ascent slack)
    assert spread.combined.increase <= spread.mean * (1 + 1e-6)
    one = S.over_batches(measure, model, parts[:1], **kw)
    assert one.stderr is None and one.combined.increase == one.per_batch[0]


def test_distinguishable_from_zero_flag():
    def avg(value, se):
        return S.SharpnessResult(
            "average", 0.01, "plain", 1.0, 1.0 + value, value, se, None, "", samples=20
        )

    assert avg(0.01, 0.006).distinguishable_from_zero is False
    assert avg(-0.01, 0.004).distinguishable_from_zero is True
    assert (
        avg(0.02, 0.01).distinguishable_from_zero is True
    )  # |v| = 2 s.e. counts as distinguishable
    assert (
        S.SharpnessResult(
            "worst_case", 1e-3, "linf", 1, 1, 0, None, 5, ""
        ).distinguishable_from_zero
        is None
    )
    # real: antithetic noise on a quadratic loss (positive-definite Hessian) is clearly non-zero
    model, x, y, _ = regression(n=120)
    assert S.average_sharpness(
        model, x, y, eps=0.05, samples=50, loss_fn=mse
    ).distinguishable_from_zero


def test_average_draws_until_the_target_standard_error():
    model, x, y, _ = regression(n=120)
    kw = {"eps": 0.05, "loss_fn": mse, "seed": 2}
    fixed = S.average_sharpness(model, x, y, samples=5, **kw)
    assert fixed.samples == 5 and fixed.target_reached is None
    r = S.average_sharpness(model, x, y, samples=5, max_samples=2000, target_rel_stderr=0.02, **kw)
    assert 5 < r.samples < 2000 and r.target_reached and r.stderr <= 0.02 * r.increase
    first = S.average_sharpness(
        model, x, y, samples=r.samples - 1, **kw
    )  # the same draws, one fewer
    assert first.stderr > 0.02 * first.increase  # it stopped at the first count that met the target
    capped = S.average_sharpness(
        model, x, y, samples=5, max_samples=7, target_rel_stderr=1e-6, **kw
    )
    assert capped.samples == 7 and capped.target_reached is False
    parts = split_batches(x, y, 2, 60)
    spread = S.over_batches(
        "average", model, parts, samples=5, max_samples=2000, target_rel_stderr=0.02, **kw
    )
    assert (
        spread.combined.target_reached and spread.combined.stderr <= 0.02 * spread.combined.increase
    )
    assert spread.combined.samples > 5
    with pytest.raises(UsageError, match="^target_rel_stderr: "):
        S.average_sharpness(model, x, y, target_rel_stderr=-1, **kw)


@pytest.fixture
def cnn():
    return small_cnn(24)


def test_landscape_center_over_batches(cnn):
    model, x, y = cnn
    parts = split_batches(x, y, 3, 8)
    c = L.center_over_batches(model, parts, batch_size=5)
    with torch.no_grad():
        direct = [
            (
                F.cross_entropy(model(xb), yb).item(),
                (model(xb).argmax(1) == yb).double().mean().item(),
            )
            for xb, yb in parts
        ]
    assert c.loss == pytest.approx([d[0] for d in direct], rel=1e-5)
    assert c.accuracy == pytest.approx([d[1] for d in direct], abs=1e-12)
    assert c.loss_mean == pytest.approx(np.mean(c.loss), rel=1e-12)
    assert c.loss_stderr == pytest.approx(np.std(c.loss, ddof=1) / math.sqrt(3), rel=1e-10)
    d = L.random_directions(model, 2, seed=1)
    s = L.surface(model, x, y, d, resolution=3)  # the grid on the combined batch
    assert c.combined_loss == pytest.approx(s.center_loss, rel=1e-5)
    assert c.combined_accuracy == pytest.approx(s.center_accuracy, abs=1e-12)
    assert L.center_over_batches(model, parts[:1]).loss_stderr is None


def _run(run_dir, name, module, **params):
    from probe.analysis.runner import run_analyses
    from probe.contract.registry import PluginInfo, Registry

    reg = Registry()
    reg.register(module, PluginInfo(name, f"probe_plugins.{name}"))
    (o,) = run_analyses(
        run_dir,
        [name],
        "last",
        {name: {k: str(v) for k, v in params.items()}},
        registry=reg,
        device="cpu",
    )
    return o


def test_sharpness_plugin_with_batches(probe_run):
    from probe_plugins import sharpness

    o = _run(
        probe_run,
        "sharpness",
        sharpness,
        n_images=16,
        batches=3,
        steps=2,
        samples=3,
        target_rel_stderr=0,
    )
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    doc = json.loads((o.path / "sharpness.json").read_text())
    assert doc["computed_on"]["images"] == 48 and doc["computed_on"]["batches"] == 3
    assert (
        "BatchNorm affine" in doc["computed_on"]["perturbed"]
        and doc["computed_on"]["dtype"] == "float32"
    )
    avg = next(r for r in doc["results"] if r["measure"] == "average")
    assert (
        avg["samples"] == 3
        and avg["steps"] is None
        and isinstance(avg["distinguishable_from_zero"], bool)
    )
    spreads = {b["measure"]: b for b in doc["over_batches"]}
    assert set(spreads) == {"worst_case", "adaptive", "average"}
    for b in spreads.values():
        assert len(b["per_batch"]) == 3 and b["images_per_batch"] == 16
        assert b["mean"] == pytest.approx(np.mean(b["per_batch"]), rel=1e-9)
    assert spreads["average"]["mean"] == pytest.approx(
        avg["increase"], rel=1e-6
    )  # equal batches, same noise
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["worst_case_batch_stderr"] > 0
    bad = _run(probe_run, "sharpness", sharpness, n_images=16, batches=5)
    assert bad.status == "failed" and "exceeds the 64 stored analysis images" in bad.error
    assert "\n" not in bad.error.strip()


def test_landscape_plugin_with_batches(probe_run):
    import h5py

    from probe_plugins import landscape

    o = _run(probe_run, "landscape", landscape, n_images=16, batches=2, resolution=3, dims=1)
    assert o.status == "ok", f"{o.error}\n{o.traceback}"
    m = json.loads((o.path / "manifest.json").read_text())
    with h5py.File(o.path / "landscape.h5") as f:
        per = json.loads(f.attrs["center_loss_per_batch"])
        assert len(per) == 2 and f.attrs["n_samples"] == 32
        assert f.attrs["center_loss_combined"] == pytest.approx(
            m["scalars"]["center_loss"], rel=1e-5
        )
        assert f.attrs["center_loss_batch_stderr"] == pytest.approx(
            abs(per[0] - per[1]) / 2, rel=1e-9
        )
    assert m["scalars"]["center_loss_batch_mean"] == pytest.approx(np.mean(per), rel=1e-9)
    bad = _run(probe_run, "landscape", landscape, n_images=40, batches=2)
    assert bad.status == "failed" and "exceeds the 64 stored analysis images" in bad.error
