"""The training spine on a tiny synthetic run: files, metrics, resume, load_model."""

import json

import h5py
import pytest
import torch

import probe
from probe.rundir import checkpoint
from probe.rundir import run as rundir
from probe.testing import TINY, make_tiny_run, synthetic_dataset
from probe.training.config import TrainConfig
from probe.training.loop import train


def test_run_directory_has_everything(probe_run):
    run = probe.Run(probe_run)
    assert run.epochs() == [0, 1, 2]
    cfg = json.loads((probe_run / "config.json").read_text())
    assert (
        cfg["train"]["epochs"] == 2
        and cfg["versions"]["torch"] == torch.__version__
        and cfg["device"] == "cpu"
    )
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "grad_norm_mean",
        "grad_norm_max",
        "weight_norm",
        "update_ratio",
        "lr",
        "epoch_seconds",
    ):
        assert key in rows[-1], key
    assert rows[-1]["grad_norm_max"] >= rows[-1]["grad_norm_mean"] > 0
    assert rows[-1]["val_acc"] > 0.3  # synthetic classes are easy: it learned something
    ps, ab = run.probe_set(), run.analysis_batch()
    assert ps.images.shape == (40, 3, 32, 32) and ps.images.dtype == torch.uint8
    assert torch.bincount(ps.labels).tolist() == [4] * 10  # class-stratified
    assert ab.images.shape[0] == 64
    with h5py.File(run.activations_path(2)) as f:
        layers = [s.decode() if isinstance(s, bytes) else s for s in f.attrs["layers"]]
        assert layers == ["features.2", "features.6", "features.9", "features.13", "classifier.3"]
        assert (
            f["pooled/features.6"].shape == (40, 4)
            and f["pooled/features.6"].dtype.name == "float16"
        )
        assert f["pooled/classifier.3"].shape == (40, 256)
        assert f["logits"].shape == (40, 10)


def test_load_model_rebuilds_from_the_checkpoint_alone(probe_run):
    run = probe.Run(probe_run)
    model = probe.load_model(run.checkpoint_path(2))
    assert not model.training
    x = run.probe_set().normalized()
    with torch.no_grad():
        logits = model(x)
    with h5py.File(run.activations_path(2)) as f:
        torch.testing.assert_close(logits, torch.from_numpy(f["logits"][()]), rtol=1e-4, atol=1e-4)
    ck = probe.load_checkpoint(run.checkpoint_path(2))
    assert ck.epoch == 2 and ck.metrics["val_acc"] == run.metrics()[2]["val_acc"]
    assert set(ck.optimizer_state)  # momentum buffers are stored for resume
    assert {"torch", "data"} <= set(ck.rng)


def test_resume_after_losing_the_last_epoch_is_bitwise_identical(probe_run, tmp_path):
    run = probe.Run(probe_run)
    final = checkpoint.load(run.checkpoint_path(2)).model_state
    run.checkpoint_path(2).unlink()  # as if killed during epoch 2
    cfg = TrainConfig(**TINY)
    train(probe_run, cfg, resume=True, quiet=True, dataset=synthetic_dataset(seed=cfg.seed))
    again = checkpoint.load(run.checkpoint_path(2)).model_state
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert [r["epoch"] for r in run.metrics()] == [0, 1, 2]


@pytest.mark.parametrize(
    "optimizer, schedule", [("Adam", "cosine"), ("AdamW", "step"), ("SGD", "constant")]
)
def test_optimizers_and_schedules_resume_exactly(tmp_path, optimizer, schedule):
    kw = dict(optimizer=optimizer, schedule=schedule, step_size=1, lr=0.01, epochs=2, dropout=0.2)
    full = make_tiny_run(tmp_path / "full", **kw)
    part = make_tiny_run(tmp_path / "part", **{**kw, "epochs": 1})
    cfg = TrainConfig(**{**TINY, **kw})
    train(part, cfg, resume=True, quiet=True, dataset=synthetic_dataset(seed=cfg.seed))
    a = checkpoint.load(full / rundir.checkpoint_name(2)).model_state
    b = checkpoint.load(part / rundir.checkpoint_name(2)).model_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [r["lr"] for r in probe.Run(full).metrics()[1:]]
    if schedule == "step":
        assert lrs == pytest.approx([0.01, 0.001])
    elif schedule == "cosine":
        assert lrs == pytest.approx([0.01, 0.005])


def test_grad_norm_metric_matches_the_notebook_formula():
    """The on-device norm equals sqrt(sum of squared per-parameter norms) computed naively."""
    model = probe.training.model.simplecnn_spec(depth=2, base_width=4).build()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    fast = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
    naive = sum(g.double().norm().item() ** 2 for g in grads) ** 0.5
    assert fast == pytest.approx(naive, rel=1e-5)


def test_full_maps_are_dumped_on_request(tmp_path):
    run_dir = make_tiny_run(tmp_path / "r", epochs=1, full_maps=("features.6",))
    with h5py.File(probe.Run(run_dir).activations_path(1)) as f:
        assert f["maps/features.6"].shape == (40, 4, 16, 16)


def test_compiled_training_matches_eager_and_records_the_model_itself(
    probe_run, tmp_path, monkeypatch
):
    # aot_eager traces the forward and backward graphs as inductor does, without building C++
    # kernels (a minute per model on this CPU); what is checked is probe's wiring: the compiled
    # step trains the recorded model's own parameters, checkpoints hold its plain names, and the
    # compile time is reported.
    monkeypatch.setenv("PROBE_COMPILE_BACKEND", "aot_eager")
    lines: list[str] = []
    cfg = TrainConfig(**{**TINY, "epochs": 1, "compile": True})
    run_dir = train(
        tmp_path / "compiled", cfg, log=lines.append, dataset=synthetic_dataset(seed=cfg.seed)
    )
    # the eager run's epoch 1 (a constant learning rate: the same steps as a 1-epoch run)
    a = checkpoint.load(probe_run / rundir.checkpoint_name(1)).model_state
    b = checkpoint.load(run_dir / rundir.checkpoint_name(1)).model_state
    assert set(a) == set(b)  # no `_orig_mod.` prefix
    init = checkpoint.load(run_dir / rundir.checkpoint_name(0)).model_state
    assert any(not torch.equal(init[k], b[k]) for k in b)  # the compiled steps trained it
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert sum("torch.compile: the first training step took" in s for s in lines) == 1
    assert TrainConfig(**{**TINY, "compile": True}).hash() == TrainConfig(**TINY).hash()
