"""interpolation: endpoints are the checkpoints' own eval losses; a state with itself: no barrier.

References: each checkpoint's model rebuilt on its own and evaluated in eval mode; for
recalibrated BatchNorm statistics, torch.optim.swa_utils.update_bn on a copy; barriers
of curves whose maximum above the chord is known in closed form.
"""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

import probe
from probe.analyze import run_analyses
from probe.numerics import interpolation as I
from probe.rundir.run import Run
from probe.testing import make_tiny_run, synthetic_dataset


def bn_net(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 3),
    )
    m.train()
    with torch.no_grad():  # move the running statistics away from their initial values
        for _ in range(3):
            m(torch.randn(16, 3, 6, 6) * 2 + 1)
    return m.eval()


def batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def own_eval(model, x, y):
    with torch.no_grad():
        out = model.eval()(x)
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def test_barrier_against_closed_forms():
    a = np.linspace(0, 1, 101)
    assert I.barrier(a, 2 - a)[0] == pytest.approx(
        0.0, abs=1e-15
    )  # a line: nothing above its chord
    h, at = I.barrier(a, 1 + 3 * a + 4 * a * (1 - a))  # a bump of height 4 a (1 - a)
    assert h == pytest.approx(1.0) and at == pytest.approx(0.5)
    h, at = I.barrier(a, (a - 0.3) ** 2)  # convex: below its chord, touching it at the ends
    assert h == pytest.approx(0.0, abs=1e-15) and at in (0.0, 1.0)
    with pytest.raises(probe.UsageError, match="alphas"):
        I.barrier([0.0, 0.5], [1.0, 2.0])


def test_interpolated_states_are_exact_at_the_ends():
    sa, sb = bn_net(0).state_dict(), bn_net(1).state_dict()
    for k in sa:
        assert torch.equal(I.interpolate_states(sa, sb, 0.0)[k], sa[k])
        assert torch.equal(I.interpolate_states(sa, sb, 1.0)[k], sb[k])
    mid = I.interpolate_states(sa, sb, 0.25)
    w = "0.weight"
    assert torch.allclose(mid[w], 0.75 * sa[w] + 0.25 * sb[w], atol=1e-7)
    assert torch.equal(mid["1.num_batches_tracked"], sa["1.num_batches_tracked"])


def test_kept_statistics_endpoints_equal_each_model_s_own_eval_loss():
    ma, mb = bn_net(0), bn_net(1)
    x, y = batch()
    seg = I.interpolation_path(ma, ma.state_dict(), mb.state_dict(), x, y, batch_size=16)
    assert (seg.loss[0], seg.accuracy[0]) == pytest.approx(own_eval(ma, x, y), abs=1e-6)
    assert (seg.loss[-1], seg.accuracy[-1]) == pytest.approx(own_eval(mb, x, y), abs=1e-6)
    mid = copy.deepcopy(ma)
    mid.load_state_dict(I.interpolate_states(ma.state_dict(), mb.state_dict(), 0.5))
    assert seg.loss[5] == pytest.approx(own_eval(mid, x, y)[0], abs=1e-6)
    h, _ = I.barrier(seg.alphas, seg.loss)
    assert seg.loss_barrier == h >= 0.0 and seg.bn == "kept" and len(seg.alphas) == 11
    plain = I.interpolation_path(
        ma, ma.state_dict(), mb.state_dict(), x, y, batch_size=16, channels_last=False
    )
    assert np.allclose(plain.loss, seg.loss, rtol=1e-5)
    assert np.max(np.abs(plain.accuracy - seg.accuracy)) <= 1 / 40  # at most a near-tie flips


def test_recalibrated_statistics_equal_torch_update_bn():
    ma, mb = bn_net(0), bn_net(1)
    x, y = batch()
    calib = batch(24, seed=5)[0]
    alphas = [0.0, 0.5, 1.0]
    seg = I.interpolation_path(
        ma,
        ma.state_dict(),
        mb.state_dict(),
        x,
        y,
        alphas=alphas,
        bn="recalibrate",
        calib_x=calib,
        batch_size=8,
    )
    for i, alpha in enumerate(alphas):
        ref = copy.deepcopy(ma)
        ref.load_state_dict(I.interpolate_states(ma.state_dict(), mb.state_dict(), alpha))
        update_bn(
            [calib[j : j + 8] for j in range(0, 24, 8)], ref
        )  # cumulative average, reset first
        assert seg.loss[i] == pytest.approx(own_eval(ref, x, y)[0], abs=1e-6), alpha
    assert seg.loss[0] != pytest.approx(own_eval(ma, x, y)[0], abs=1e-4)  # the stats did change


def test_a_state_with_itself_has_no_barrier_and_nothing_is_modified():
    m = bn_net(0).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = batch()
    seg = I.linear_mode_barrier(m, state, state, x, y, points=7)
    assert seg.loss_barrier == 0.0 and seg.error_barrier == 0.0 and seg.error_barrier_mean == 0.0
    assert np.all(seg.loss == seg.loss[0]) and seg.monotonic
    seg = I.linear_mode_barrier(m, state, state, x, y, points=3, bn="recalibrate", calib_x=x)
    assert seg.loss_barrier == 0.0
    assert m.training and m[1].training
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_states_of_another_model_are_refused():
    m = bn_net(0)
    other = nn.Linear(2, 2).state_dict()
    x, y = batch()
    with pytest.raises(probe.UsageError, match="state_b: does not match the model"):
        I.interpolation_path(m, m.state_dict(), other, x, y)
    with pytest.raises(probe.UsageError, match="calib_x"):
        I.interpolation_path(m, m.state_dict(), m.state_dict(), x, y, bn="recalibrate")


# --- the analysis on a real tiny run ------------------------------------------------------------


def _doc(o):
    assert o.status == "ok", (o.error, o.traceback)
    return json.loads((o.path / "interpolation.json").read_text())


def test_the_analysis_endpoints_are_the_checkpoints_own_eval_losses(probe_run):
    (o,) = run_analyses(probe_run, ["interpolation"], "all", {"interpolation": {"points": "5"}})
    doc = _doc(o)
    segs = [(s["kind"], s["from_epoch"], s["to_epoch"]) for s in doc["segments"]]
    assert segs == [("init", 0, 1), ("init", 0, 2), ("consecutive", 1, 2)]
    run = Run(probe_run)
    b = run.analysis_batch()
    x, y = b.normalized(), b.labels
    own = {e: own_eval(probe.load_model(run.checkpoint_path(e)), x, y) for e in (0, 1, 2)}
    for s in doc["segments"]:
        assert (s["loss"][0], s["accuracy"][0]) == pytest.approx(own[s["from_epoch"]], abs=1e-5)
        assert (s["loss"][-1], s["accuracy"][-1]) == pytest.approx(own[s["to_epoch"]], abs=1e-5)
        assert s["loss_barrier"] == pytest.approx(I.barrier(doc["alphas"], s["loss"])[0])
    assert doc["computed_on"]["bn"] == "kept" and doc["cross_run"]["status"] == "probe barrier"
    m = json.loads((o.path / "manifest.json").read_text())
    assert m["scalars"]["bn"] == "kept"
    assert m["scalars"]["init_barrier"] == doc["segments"][1]["loss_barrier"]
    assert m["scalars"]["step_barrier"] == doc["segments"][2]["loss_barrier"]
    with h5py.File(o.path / "interpolation.h5") as f:
        assert f["loss"].shape == (3, 5) and f.attrs["bn"] == "kept"


def test_one_epoch_recalibrated_and_nothing_to_interpolate(probe_run):
    (o,) = run_analyses(
        probe_run,
        ["interpolation"],
        "last",
        {"interpolation": {"bn": "recalibrate", "calib_images": "32"}},
    )
    doc = _doc(o)
    assert [(s["from_epoch"], s["to_epoch"]) for s in doc["segments"]] == [(0, 2), (1, 2)]
    assert doc["computed_on"]["bn"] == "recalibrate"
    assert (
        "re-estimated at every alpha on the last 32 stored images"
        in doc["computed_on"]["bn_meaning"]
    )
    (o,) = run_analyses(probe_run, ["interpolation"], "0")
    assert o.status == "skipped" and "no segment to interpolate" in o.reason


def test_recalibration_skips_on_a_model_without_batchnorm(tmp_path):
    run = make_tiny_run(
        tmp_path / "mlp",
        dataset=synthetic_dataset(channels=1, size=12),
        model="mlp",
        model_params=("depth=1", "width=16"),
        epochs=1,
    )
    (o,) = run_analyses(run, ["interpolation"], "all", {"interpolation": {"bn": "recalibrate"}})
    assert o.status == "skipped" and "bn=recalibrate: the model has no BatchNorm layer" in o.reason
    outcomes = run_analyses(
        run,
        ["interpolation", "gradient-noise", "neural-collapse", "linear-probe"],
        "all",
        {"gradient-noise": {"n_images": "8"}, "linear-probe": {"folds": "2"}},
    )
    assert [o.status for o in outcomes] == ["ok"] * 4, [(o.analysis, o.error) for o in outcomes]
