"""Per-example records and `forgetting`: counts against hand-made histories, the data map
against scipy's softmax, the stored logits against each checkpoint's own eval-mode forward
pass, and a run without records skipping in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax

from probe.analysis.runner import run_analyses
from probe.numerics.forgetting import example_history, history_of
from probe.rundir.run import Run
from probe.testing import make_tiny_run


def test_counts_of_a_hand_made_history() -> None:
    # rows: recorded epochs; columns: five examples
    correct = np.array(
        [
            [0, 1, 1, 0, 1],
            [1, 0, 1, 0, 1],
            [0, 1, 1, 0, 0],
            [1, 0, 1, 0, 1],
        ],
        dtype=bool,
    )
    h = history_of(correct)
    # example 0: learned at 1, forgotten at 2 -> 1 event; example 1: forgotten at 1 and 3 -> 2;
    # example 2: always right -> 0, unforgettable; example 3: never learned; example 4: 1
    assert h.events.tolist() == [1, 2, 0, 0, 1]
    assert h.learned.tolist() == [True, True, True, False, True]
    assert h.unforgettable.tolist() == [False, False, True, False, False]
    assert h.first_learned.tolist() == [1, 0, 0, -1, 0]
    assert h.correctness.tolist() == [0.5, 0.5, 1.0, 0.0, 0.75]
    assert h.counts() == {
        "examples": 5,
        "never_learned": 1,
        "unforgettable": 1,
        "forgotten_at_least_once": 3,
        "forgetting_events": 4,
    }


def test_the_data_map_from_logits_against_scipy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 40, 4)) * 3
    labels = rng.integers(0, 4, size=40)
    h = example_history(logits, labels)
    p = softmax(logits, axis=-1)[:, np.arange(40), labels]  # [times, examples]
    np.testing.assert_allclose(h.confidence, p.mean(0), rtol=1e-12)
    np.testing.assert_allclose(h.variability, p.std(0), rtol=1e-12, atol=1e-15)
    correct = logits.argmax(-1) == labels
    np.testing.assert_array_equal(h.correctness, correct.mean(0))
    np.testing.assert_array_equal(h.events, (correct[:-1] & ~correct[1:]).sum(0))


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("fg") / "run", epochs=3, example_records=60)


def test_stored_logits_are_each_checkpoints_own_eval_forward(recorded_run: Path) -> None:
    run = Run(recorded_run)
    ex = run.examples()
    assert len(ex.labels) == 60 and ex.labels.bincount().tolist() == [6] * 10  # stratified
    for epoch in run.epochs():
        model = run.load_checkpoint(epoch).build_model("cpu").eval()
        with torch.no_grad():
            ref = model(ex.normalized("cpu"))
        got = run.example_logits(epoch, 60, 10)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_the_analysis_counts_what_the_records_say(recorded_run: Path) -> None:
    (o,) = run_analyses(recorded_run, ["forgetting"], None, device="cpu")
    assert o.status == "ok", o.error
    manifest = json.loads((o.path / "manifest.json").read_text())
    assert {"data_map.png", "most_forgotten.png", "forgetting.h5", "forgetting.json"} <= set(
        manifest["files"]
    )
    run = Run(recorded_run)
    ex = run.examples()
    logits = np.stack([run.example_logits(e, 60, 10).numpy() for e in (1, 2, 3)])
    want = example_history(logits, ex.labels.numpy()).counts()
    for k, v in want.items():
        assert manifest["scalars"][k] == v, k


def test_a_run_without_records_skips_in_one_line(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "run", epochs=2, example_records=0)
    assert not Run(run).has_examples() and not (run / "predictions").exists()
    (o,) = run_analyses(run, ["forgetting"], None, device="cpu")
    assert o.status == "skipped"
    assert o.reason == (
        "this run records no per-example predictions (made before they existed, or with "
        "--example-records 0); train or record it again to have them"
    )
