"""probe.numerics as a public API: its names, its option values, and calls by config or by keyword.

The numbers themselves are checked against independent references in test_curvature,
test_operators, test_landscape, test_sharpness, test_representations and test_spectra; here,
that a config and the same fields as keywords give identical results, that a bad option is one
line naming it when the value is made, and that every exported name is there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from curvature_helpers import small_cnn
from torch import nn

import probe.numerics as N
from probe.errors import ProbeError, UsageError
from probe.numerics import curvature as C
from probe.numerics import representations as R


@pytest.mark.parametrize("module", [N, C, R])
def test_every_exported_name_exists(module):
    assert module.__all__ == sorted(set(module.__all__), key=module.__all__.index)  # no repeats
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing


def test_hessian_config_and_keywords_give_the_same_numbers():
    model, x, y = small_cnn(24)
    kw = dict(top_k=2, smallest=1, trace_samples=4, batches=2, blocks="layer", max_iter=30)
    by_keywords = C.hessian_analysis(model, x, y, **kw)
    config = N.HessianConfig(**kw)
    by_config = N.hessian_analysis(model, x, y, config)
    mixed = N.hessian_analysis(model, x, y, N.HessianConfig(top_k=2), **{**kw, "top_k": 2})
    for rep in (by_config, mixed):
        assert rep.summary() == by_keywords.summary()
        for a, b in zip(rep.eigen, by_keywords.eigen, strict=True):
            assert torch.equal(a.vectors, b.vectors)


def test_hessian_config_is_a_checked_frozen_value():
    config = N.HessianConfig(top_k=3, params=["features.0.weight"])
    assert config.params == ("features.0.weight",)  # any sequence, kept as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 1  # type: ignore[misc]
    assert N.HessianConfig.of(config, top_k=5).top_k == 5 and config.top_k == 3
    bad = [
        ({"top_k": 0}, "^top_k: "),
        ({"smallest": -1}, "^smallest: "),
        ({"method": "arnoldi"}, "^method: "),
        ({"trace_samples": 1}, "^trace_samples: "),
        ({"trace_method": "hutch++", "trace_samples": 4}, "^trace_samples: .*6 products"),
        ({"trace_method": "hutch++", "trace_samples": 6, "batches": 2}, "^trace_method: "),
        ({"operator": "fisher"}, "^operator: "),
        ({"per_batch": "both"}, "^per_batch: "),
        ({"bn": "train"}, "^bn: "),
        ({"weight_decay": -1.0}, "^weight_decay: "),
        ({"batch_size": 0}, "^batch_size: "),
    ]
    for fields, message in bad:
        with pytest.raises(UsageError, match=message):
            N.HessianConfig(**fields)
    with pytest.raises(TypeError):
        N.HessianConfig(top_j=1)  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="^config: expected a HessianConfig"):
        N.hessian_analysis(*small_cnn(4), N.SurfaceConfig())


def test_surface_config_and_keywords_give_the_same_grid():
    model, x, y = small_cnn(16)
    dirs = N.random_directions(model, 2, seed=3)
    a = N.surface(model, x, y, dirs, resolution=3, batch_size=5, channels_last=False)
    b = N.surface(
        model, x, y, dirs, N.SurfaceConfig(batch_size=5, channels_last=False), resolution=3
    )
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    with pytest.raises(UsageError, match="^bn: "):
        N.SurfaceConfig(bn="eval")
    with pytest.raises(UsageError, match="^points_per_pass: "):
        N.SurfaceConfig(points_per_pass=0)
    with pytest.raises(UsageError, match="^calib_x: "):
        N.surface(model, x, y, dirs, N.SurfaceConfig(bn="recalibrate"), resolution=3)


def test_sharpness_configs_belong_to_their_measure():
    model, x, y = small_cnn(16)
    parts = N.split_batches(x, y, 2, 8)
    spread = N.sharpness_over_batches("adaptive", model, parts, N.AdaptiveConfig(steps=2))
    direct = N.sharpness_over_batches("adaptive", model, parts, steps=2)
    assert spread.per_batch == direct.per_batch and spread.combined == direct.combined
    with pytest.raises(UsageError, match="^config: expected a WorstCaseConfig"):
        N.sharpness_over_batches("worst_case", model, parts, N.AdaptiveConfig())
    with pytest.raises(UsageError, match="^norm: "):
        N.AdaptiveConfig(norm="l1")
    with pytest.raises(UsageError, match="^eps: "):
        N.WorstCaseConfig(eps=0.0)
    with pytest.raises(UsageError, match="^samples: "):
        N.AverageConfig(samples=1)
    with pytest.raises(UsageError, match="^measure: "):
        N.sharpness_over_batches("sam", model, parts)


def test_weight_spectra_of_any_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 10))
    rows = N.weight_spectra(model)
    assert [(r["layer"], r["type"]) for r in rows] == [("0", "Conv2d"), ("3", "Linear")]
    w = model[3].weight.detach().float().numpy()
    ref = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)  # independent
    np.testing.assert_allclose(rows[1]["eigenvalues"], ref, rtol=1e-12)
    assert rows[1]["stable_rank"] == pytest.approx(ref.sum() / ref.max(), rel=1e-12)
    assert math.isnan(rows[0]["alpha"]) or rows[0]["alpha"] > 1
    with pytest.raises(ProbeError, match="^the model has no Conv2d or Linear layer$"):
        N.weight_spectra(nn.Sequential(nn.ReLU()))


def test_options_leave_the_model_as_it_was():
    model, x, y = small_cnn(12)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    N.hessian_analysis(model, x, y, N.HessianConfig(bn="batch", trace_samples=2, max_iter=10))
    N.surface(model, x, y, N.random_directions(model, 1), N.SurfaceConfig(), resolution=3)
    N.sharpness_over_batches("average", model, [(x, y)], N.AverageConfig(samples=2))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m.training for m in model.modules())
