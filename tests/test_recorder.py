"""probe.Recorder: probe train rebuilt on it writes what it wrote before; any loop's run
passes the analyses."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from probe.errors import ProbeError, UsageError
from probe.rundir import checkpoint
from probe.testing import make_tiny_run, synthetic_dataset

DATA = Path(__file__).parent / "data"
TIMINGS = {"train_seconds", "val_seconds", "epoch_seconds", "images_per_second", "output_seconds"}


def test_probe_train_writes_what_it_wrote_before_the_recorder(tmp_path: Path) -> None:
    """tests/data/recorder_reference.* was made by the pre-recorder `probe train`
    (tests/data/make_recorder_reference.py)."""
    from safetensors.torch import load_file

    ref = load_file(DATA / "recorder_reference.safetensors")
    meta = json.loads((DATA / "recorder_reference.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as the reference was made: a reduction's order depends on the thread count
    try:
        run = make_tiny_run(
            tmp_path / "run",
            dataset=synthetic_dataset(n_train=160, n_test=80, seed=0),
            model="resnet",
            model_params=("depth=8",),
            probe_set_size=20,
            analysis_batch_size=32,
            epochs=2,
        )
    finally:
        torch.set_num_threads(threads)
    ck = checkpoint.load(run / "checkpoints/epoch_0002.safetensors")
    got = {f"model/{k}": v for k, v in ck.model_state.items()}
    got |= {f"optimizer/{p}/{k}": v for p, st in ck.optimizer_state.items() for k, v in st.items()}
    got |= {f"rng/{k}": v for k, v in ck.rng.items()}
    for e in (0, 1, 2):
        with h5py.File(run / f"activations/epoch_{e:04d}.h5") as f:
            got |= {f"act{e}/pooled/{n}": torch.from_numpy(f["pooled"][n][()]) for n in f["pooled"]}
            got[f"act{e}/logits"] = torch.from_numpy(f["logits"][()])
            assert [str(x) for x in f.attrs["layers"]] == meta["layers"]
    assert sorted(got) == sorted(ref)
    trained: dict[str, list[str]] = {}
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        if (
            k.startswith("act0/") or not got[k].is_floating_point()
        ):  # no trained weights behind it: exact
            torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-6, msg=k)
        else:
            trained.setdefault(k.split("/")[0], []).append(k)
    # Trained values pass through float kernels that another CPU computes differently (the reference
    # was made on one with AVX-512): over each group they differ here by 1.6e-5 (model), 6e-4
    # (optimizer) relative. A change of what is written moves them far more: epoch 1's state in
    # place of epoch 2's is 0.22 and 0.96 away.
    for group, keys in trained.items():
        a = torch.cat([got[k].double().flatten() for k in keys])
        b = torch.cat([ref[k].double().flatten() for k in keys])
        err = float((a - b).norm() / b.norm())
        assert err < 1e-2, (group, err)
    rows = [
        {k: v for k, v in json.loads(line).items() if k not in TIMINGS}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r.keys() for r in rows] == [r.keys() for r in meta["metrics"]]
    for r, want in zip(rows, meta["metrics"], strict=True):
        for k, v in want.items():
            rel = (
                1e-6 if r["epoch"] == 0 else 1e-3
            )  # trained epochs: another CPU's kernels (7e-6 relative here)
            assert r[k] == pytest.approx(v, rel=rel, abs=1e-7), (r["epoch"], k)
    cfg = json.loads((run / "config.json").read_text())
    for k in ("versions", "device", "device_name"):
        cfg.pop(k, None)
    # keys added after the reference was made (per-example records, --compile), at their defaults
    assert cfg["train"].pop("example_records") == 1000
    assert cfg["train"].pop("compile") is False
    assert cfg == meta["config"]
    for e, want in enumerate(meta["checkpoint_metadata"]):
        have = checkpoint.read_metadata(run / f"checkpoints/epoch_{e:04d}.safetensors")
        assert {k: have[k] for k in want} == want
    import hashlib

    from safetensors.torch import load_file as lf

    for rel, digests in meta["batches"].items():
        t = lf(run / rel)
        assert {
            k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() + str(list(v.shape))
            for k, v in t.items()
        } == digests


# --- a loop of the user's own --------------------------------------------------------------------


def tiny_loop(run_dir: Path, epochs: int = 2, **kw) -> Path:
    """A plain loop (resnet depth 8, 160 synthetic images) recorded with probe.Recorder."""
    import torch.nn.functional as F

    import probe
    from probe.datasets.tensors import normalize

    ds = synthetic_dataset(n_train=160, n_test=80, seed=0)
    torch.manual_seed(0)
    with probe.Recorder(
        run_dir,
        model="resnet",
        model_params={"depth": 8},
        dataset=ds,
        probe_set_size=20,
        analysis_batch_size=32,
        val_batch_size=64,
        device="cpu",
        **kw,
    ) as rec:
        model = rec.spec.build()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        rec.record(0, model, opt)
        x = normalize(ds.train_x, rec.spec.mean, rec.spec.std)
        for epoch in range(1, epochs + 1):
            model.train()
            for i in range(0, 160, 32):
                loss = F.cross_entropy(model(x[i : i + 32]), ds.train_y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
            rec.record(epoch, model, opt, {"train_loss": loss.item(), "train_acc": 0.5})
    return run_dir


def test_a_recorded_loop_is_a_complete_run(tmp_path: Path) -> None:
    from probe.datasets.tensors import normalize
    from probe.rundir.run import Run
    from probe.training.trainplan import stored_config

    run = Run(tiny_loop(tmp_path / "run"))
    assert run.epochs() == [0, 1, 2]
    rows = run.metrics()
    assert (
        [r["epoch"] for r in rows] == [0, 1, 2]
        and rows[2]["lr"] == 0.05
        and rows[1]["train_acc"] == 0.5
    )
    assert run.config["source"] == {"kind": "recorder"} and run.config["train"]["epochs"] == 2
    stored_config(run)  # a valid TrainConfig, so readers of config["train"] keep working
    ck = run.load_checkpoint(2)
    assert ck.optimizer_state and set(ck.rng) == {"torch", "data"}
    # the recorder measured validation itself: recompute val loss with the stored model, in float64
    model = ck.build_model().double()
    ds = synthetic_dataset(n_train=160, n_test=80, seed=0)
    x = normalize(ds.test_x, ck.spec.mean, ck.spec.std).double()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), ds.test_y).item()
    assert rows[2]["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert run.probe_set().images.shape[0] == 20 and run.analysis_batch().images.shape[0] == 32
    assert not (run.path / ".probe-train.lock").exists()  # released on leaving the with block


def test_probe_train_refuses_to_resume_a_recorded_run(tmp_path: Path) -> None:
    from probe.training.config import TrainConfig
    from probe.training.loop import train

    run = tiny_loop(tmp_path / "run", epochs=1)
    with pytest.raises(UsageError, match="probe.Recorder"):
        train(run, TrainConfig(epochs=3, device="cpu"), resume=True, quiet=True)


def test_epochs_out_of_order_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    import probe

    ds = synthetic_dataset(n_train=64, n_test=40, seed=0)
    rec = probe.Recorder(
        tmp_path / "run",
        model="simplecnn",
        model_params={"base_width": 4},
        dataset=ds,
        probe_set_size=20,
        analysis_batch_size=16,
        device="cpu",
    )
    model = rec.spec.build()
    rec.record(3, model)
    before = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    with pytest.raises(UsageError, match=r"epoch 2 recorded after epoch 3.*next: 4"):
        rec.record(2, model)
    with pytest.raises(UsageError, match="epoch 5 recorded after epoch 3"):
        rec.record(5, model)
    rec.close()
    assert (
        sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
        == before
        == ["epoch_0003.safetensors"]
    )


def test_a_model_that_does_not_fit_its_family_writes_nothing(tmp_path: Path) -> None:
    import probe

    ds = synthetic_dataset(n_train=64, n_test=40, seed=0)
    rec = probe.Recorder(
        tmp_path / "run",
        model="resnet",
        model_params={"depth": 8},
        dataset=ds,
        probe_set_size=20,
        analysis_batch_size=16,
        device="cpu",
    )
    wrong = probe.ModelSpec(
        "resnet", {"depth": 14, "width": 1, "shortcut": "A"}, rec.spec.input, 10
    ).build()
    with pytest.raises(
        ProbeError,
        match=r"epoch 0: the model's state does not fit resnet\(depth=8.*unexpected layer",
    ):
        rec.record(0, wrong)
    assert not (tmp_path / "run").exists()  # the directory is made at the first record that passes
    with pytest.raises(
        UsageError, match="metrics: epoch 0: 'val_loss' is measured by the recorder"
    ):
        rec.record(0, rec.spec.build(), metrics={"val_loss": 1.0})
    m = rec.spec.build()
    rms = torch.optim.RMSprop(m.parameters())
    m(torch.zeros(2, 3, 32, 32)).sum().backward()
    rms.step()
    with pytest.raises(ProbeError, match="RMSprop keeps 'square_avg'"):
        rec.record(0, m, rms)
    assert not (tmp_path / "run").exists()


def test_an_existing_folder_is_refused_without_force(tmp_path: Path) -> None:
    import probe

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not empty"):
        probe.Recorder(
            tmp_path / "run", model="simplecnn", dataset=synthetic_dataset(), device="cpu"
        )
    with pytest.raises(UsageError, match="not a probe run"):
        probe.Recorder(
            tmp_path / "run",
            model="simplecnn",
            dataset=synthetic_dataset(),
            device="cpu",
            force=True,
        )


def analyze_and_report(run: Path) -> None:
    """Every installed analysis (the last epoch, or all for run-wide ones), then
    `probe report`: all succeed."""
    from click.testing import CliRunner

    from probe.cli import cli

    res = CliRunner().invoke(cli, ["analyze", str(run), "--all", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "report" / "index.html").is_file()


@pytest.mark.slow
def test_a_recorded_run_passes_every_analysis_and_the_report(tmp_path: Path) -> None:
    analyze_and_report(tiny_loop(tmp_path / "run"))


@pytest.mark.slow
def test_the_own_loop_example_records_a_run_that_analyses(tmp_path: Path) -> None:
    """examples/own-loop/train.py on a tiny CIFAR-10-shaped folder: a run whose
    analyses and report work."""
    import os
    import subprocess
    import sys

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from probe.cli import cli
    from probe.rundir.run import Run
    from probe.training.model import CIFAR10_CLASSES

    root = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 5)):
        for c in CIFAR10_CLASSES:
            (tmp_path / "cifar" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "cifar" / split / c / f"{i:04d}.png"
                )
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            str(root / "examples/own-loop/train.py"),
            "--data",
            str(tmp_path / "cifar"),
            "--run-dir",
            str(tmp_path / "run"),
            "--subset",
            "100",
            "--val-size",
            "50",
            "--epochs",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = Run(tmp_path / "run")
    assert run.epochs() == [0, 1] and run.metrics()[1]["train_loss"] > 0
    res = CliRunner().invoke(
        cli,
        [
            "analyze",
            str(run.path),
            "-p",
            "curves",
            "-p",
            "cka",
            "-p",
            "cka-epochs",
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert CliRunner().invoke(cli, ["report", str(run.path)]).exit_code == 0


def tiny_recorder(run_dir: Path):
    import probe

    return probe.Recorder(
        run_dir,
        model="simplecnn",
        model_params={"base_width": 4},
        dataset=synthetic_dataset(n_train=64, n_test=40, seed=0),
        probe_set_size=20,
        analysis_batch_size=16,
        device="cpu",
    )


@pytest.mark.parametrize(
    "metrics, rng, message",
    [
        ({"n": 10**5000}, None, "metrics: epoch 0: n: an integer of more than 40 digits"),
        ({"n": 10**45}, None, "metrics: epoch 0: n: an integer of more than 40 digits"),
        (
            {"note": "x" * 80_000_000},
            None,
            "metrics: epoch 0: note: a string of 80,000,000 characters (at most 10,000)",
        ),
        (
            None,
            {"torch": torch.zeros(7, dtype=torch.uint8)},
            "rng: epoch 0: rng/torch: not a CPU generator state (uint8 [7])",
        ),
        (
            None,
            {"numpy": torch.zeros(7, dtype=torch.uint8)},
            "rng: epoch 0: rng/numpy: not a random-number state probe writes",
        ),
    ],
    ids=["int-5000-digits", "int-45-digits", "80MB-string", "rng-shape", "rng-key"],
)
def test_what_a_reader_would_refuse_is_refused_before_a_byte_is_written(
    tmp_path: Path, metrics, rng, message
) -> None:

    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("untouched")
    rec = tiny_recorder(tmp_path / "run")
    with pytest.raises(UsageError) as info:
        rec.record(0, rec.spec.build(), None, metrics, rng=rng)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists() and sentinel.read_text() == "untouched"


def test_recording_into_a_deleted_run_is_refused(tmp_path: Path) -> None:
    import shutil

    rec = tiny_recorder(tmp_path / "run")
    model = rec.spec.build()
    rec.record(0, model)
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ProbeError, match=r"the run directory was removed or emptied"):
        rec.record(1, model)
    assert not (tmp_path / "run").exists()
