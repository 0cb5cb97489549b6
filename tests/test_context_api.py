"""The Context additions of issue 12: weights in network order, per-layer scalars and ragged
per-layer arrays, figures closed for the author, non-finite values cleaned consistently."""

from __future__ import annotations

import json

import numpy as np
import pytest

import probe
from probe.analysis.runner import run_job
from probe.rundir.results import scalars

SEEN: dict[str, object] = {}


def _run(probe_run, fn, needs=frozenset({"checkpoint"}), name="api", epoch=2):
    a = probe.Analysis(name=name, run=fn, needs=needs, summary="Context API test.")
    outcome = run_job(probe.Run(probe_run), a, a.params(), epoch, [epoch], device="cpu")
    assert outcome.status == "ok", outcome.error + outcome.traceback
    return outcome


def test_parameters_come_in_network_order_with_module_types(probe_run):
    def fn(ctx):
        SEEN["layers"] = ctx.parameters()
        SEEN["state"] = ctx.checkpoint().model_state

    outcome = _run(probe_run, fn)
    layers, state = SEEN["layers"], SEEN["state"]
    names = [layer.name for layer in layers]
    assert names == [
        "features.0",
        "features.1",
        "features.3",
        "features.4",
        "features.7",
        "features.8",
        "features.10",
        "features.11",
        "classifier.2",
        "classifier.5",
    ]
    assert names != sorted(names)  # not the name order of model_state
    assert [layer.type for layer in layers[:2]] == ["Conv2d", "BatchNorm2d"] and layers[
        -1
    ].type == "Linear"
    for layer in layers:
        assert layer.weight.dtype == np.float32
        np.testing.assert_array_equal(layer.weight, state[f"{layer.name}.weight"].numpy())
        np.testing.assert_array_equal(layer.bias, state[f"{layer.name}.bias"].numpy())
    assert set(layers[1].tensors) >= {"weight", "bias", "running_mean", "running_var"}
    assert layers[0].weight.shape == (4, 3, 3, 3)
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"checkpoints/epoch_0002.safetensors"}


def test_parameters_of_another_epoch_and_model_need(probe_run):
    def fn(ctx):
        SEEN["w0"] = ctx.parameters(0)[0].weight

    outcome = _run(probe_run, fn, needs={"model"})
    expected = (
        probe.load_checkpoint(probe.Run(probe_run).checkpoint_path(0))
        .model_state["features.0.weight"]
        .numpy()
    )
    np.testing.assert_array_equal(SEEN["w0"], expected)
    assert (
        "checkpoints/epoch_0000.safetensors"
        in json.loads((outcome.path / "manifest.json").read_text())["inputs"]
    )


def test_layer_scalars_go_to_json_manifest_and_compare_keys(probe_run):
    def fn(ctx):
        ctx.out.layer_scalars(
            "drift",
            {
                "features.10": {"rel": np.float32(0.5), "abs": 2},
                "features.3": {"rel": float("nan"), "abs": np.int64(3)},
            },
        )

    outcome = _run(probe_run, fn, name="layered")
    table = json.loads((outcome.path / "drift.json").read_text())
    assert table["layers"] == ["features.10", "features.3"]  # the order given, not sorted
    assert table["metrics"] == ["rel", "abs"]
    assert table["values"]["features.3"] == {"rel": None, "abs": 3}
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert manifest["layer_scalars"]["drift"]["values"]["features.10"] == {"rel": 0.5, "abs": 2}
    flat = scalars(probe_run)
    assert flat["layered.rel.features.10"] == 0.5 and flat["layered.abs.features.3@2"] == 3
    assert flat["layered.rel.features.3"] is None


def test_layer_arrays_hold_ragged_arrays_one_group_per_layer(probe_run):
    import h5py

    def fn(ctx):
        ctx.out.layer_arrays(
            "spectra",
            {
                "features.0": np.arange(4.0),
                "classifier.5": {"sv": np.arange(10.0), "alpha": np.array(1.5)},
            },
            attrs={"method": "svd", "fit": {"xmin": 1}},
        )
        with pytest.raises(ValueError, match="no '/'"):
            ctx.out.layer_arrays("bad", {"a/b": np.zeros(1)})

    outcome = _run(probe_run, fn)
    with h5py.File(outcome.path / "spectra.h5") as f:
        assert json.loads(f.attrs["layers"]) == ["features.0", "classifier.5"]
        assert f.attrs["method"] == "svd" and json.loads(f.attrs["fit"]) == {"xmin": 1}
        np.testing.assert_array_equal(f["features.0/values"][()], np.arange(4.0))
        assert f["classifier.5/sv"].shape == (10,) and f["classifier.5/alpha"][()] == 1.5
    assert "spectra.h5" in json.loads((outcome.path / "manifest.json").read_text())["files"]


def test_figures_are_closed_and_pyplot_is_ready(probe_run):
    def fn(ctx):
        plt = ctx.pyplot()
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        ctx.out.figure("line", fig, caption="A line.")
        plt.figure()  # left open by the author
        SEEN["open_in_job"] = len(plt.get_fignums())

    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    outcome = _run(probe_run, fn, needs=set())
    assert SEEN["open_in_job"] == len(before) + 1
    assert plt.get_fignums() == before
    assert (outcome.path / "line.png").stat().st_size > 0
    assert (
        json.loads((outcome.path / "manifest.json").read_text())["captions"]["line.png"]
        == "A line."
    )


def test_non_finite_and_non_scalar_values(probe_run):
    def fn(ctx):
        ctx.out.scalar("nan32", np.float32("nan"))
        ctx.out.scalar("inf", float("inf"))
        ctx.out.scalar("one", np.float64(1.0))
        with pytest.raises(ValueError, match="expected one number"):
            ctx.out.scalar("arr", np.arange(3))
        with pytest.raises(ValueError, match="expected a number"):
            ctx.out.scalar("dict", {"a": 1})
        ctx.out.arrays("raw", x=np.array([np.nan, 1.0]))

    outcome = _run(probe_run, fn, needs=set())
    text = (outcome.path / "manifest.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["scalars"] == {"nan32": None, "inf": None, "one": 1.0}
    import h5py

    with h5py.File(outcome.path / "raw.h5") as f:
        assert np.isnan(f["x"][0])  # arrays keep IEEE values


def test_bad_epochs_are_one_line_errors(probe_run):
    a = probe.Analysis(
        name="bad-epoch", run=lambda ctx: ctx.checkpoint(-1), summary="Negative epoch."
    )
    outcome = run_job(probe.Run(probe_run), a, a.params(), 2, [2], device="cpu")
    assert outcome.status == "failed" and "epoch must be a non-negative integer" in outcome.error
