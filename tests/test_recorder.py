"""probe.Recorder: probe train rebuilt on it writes what it wrote before; any loop's run passes the analyses."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from probe import checkpoint
from probe.errors import ProbeError, UsageError
from probe.testing import make_tiny_run, synthetic_dataset

DATA = Path(__file__).parent / "data"
TIMINGS = {"train_seconds", "val_seconds", "epoch_seconds", "images_per_second", "output_seconds"}


def test_probe_train_writes_what_it_wrote_before_the_recorder(tmp_path: Path) -> None:
    """tests/data/recorder_reference.* was made by the pre-recorder `probe train` (tests/data/make_recorder_reference.py)."""
    from safetensors.torch import load_file

    ref = load_file(DATA / "recorder_reference.safetensors")
    meta = json.loads((DATA / "recorder_reference.json").read_text())
    run = make_tiny_run(tmp_path / "run", dataset=synthetic_dataset(n_train=160, n_test=80, seed=0), model="resnet",
                        model_params=("depth=8",), probe_set_size=20, analysis_batch_size=32, epochs=2)
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
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-6, msg=k)
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.keys() for r in rows] == [r.keys() for r in meta["metrics"]]
    for r, want in zip(rows, meta["metrics"], strict=True):
        for k, v in want.items():
            assert r[k] == pytest.approx(v, rel=1e-6, abs=1e-7), (r["epoch"], k)
    cfg = json.loads((run / "config.json").read_text())
    for k in ("versions", "device", "device_name"):
        cfg.pop(k, None)
    assert cfg == meta["config"]
    for e, want in enumerate(meta["checkpoint_metadata"]):
        have = checkpoint.read_metadata(run / f"checkpoints/epoch_{e:04d}.safetensors")
        assert {k: have[k] for k in want} == want
    import hashlib

    from safetensors.torch import load_file as lf
    for rel, digests in meta["batches"].items():
        t = lf(run / rel)
        assert {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() + str(list(v.shape))
                for k, v in t.items()} == digests
