"""Make tests/data/recorder_reference.{safetensors,json} from a tiny `probe train` run.

Run once, before probe train was rebuilt on probe.Recorder (commit "tests/data: reference
..."), so tests/test_recorder.py can check that the rebuilt writer writes the same tensors,
activation dumps, metrics and config:

    PYTHONPATH=. python tests/data/make_recorder_reference.py tests/data
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import h5py
import torch
from safetensors.torch import load_file, save_file

from probe.rundir import checkpoint
from probe.testing import make_tiny_run, synthetic_dataset

TIMINGS = {"train_seconds", "val_seconds", "epoch_seconds", "images_per_second", "output_seconds"}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        run = make_tiny_run(
            Path(d) / "run",
            dataset=synthetic_dataset(n_train=160, n_test=80, seed=0),
            model="resnet",
            model_params=("depth=8",),
            probe_set_size=20,
            analysis_batch_size=32,
            epochs=2,
        )
        tensors, batches, layers = {}, {}, []
        for e in (0, 1, 2):
            ck = checkpoint.load(run / f"checkpoints/epoch_{e:04d}.safetensors")
            if e == 2:
                tensors |= {f"model/{k}": v for k, v in ck.model_state.items()}
                tensors |= {
                    f"optimizer/{p}/{k}": v
                    for p, st in ck.optimizer_state.items()
                    for k, v in st.items()
                }
                tensors |= {f"rng/{k}": v for k, v in ck.rng.items()}
            with h5py.File(run / f"activations/epoch_{e:04d}.h5") as f:
                tensors |= {
                    f"act{e}/pooled/{n}": torch.from_numpy(f["pooled"][n][()]) for n in f["pooled"]
                }
                tensors[f"act{e}/logits"] = torch.from_numpy(f["logits"][()])
                layers = [str(x) for x in f.attrs["layers"]]
        for rel in ("data/probe_set.safetensors", "data/analysis_batch.safetensors"):
            batches[rel] = {
                k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() + str(list(v.shape))
                for k, v in load_file(run / rel).items()
            }
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(out / "recorder_reference.safetensors"),
        )
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
        cfg = json.loads((run / "config.json").read_text())
        for k in ("versions", "device", "device_name"):
            cfg.pop(k, None)
        ckmeta = [
            {
                k: v
                for k, v in checkpoint.read_metadata(
                    run / f"checkpoints/epoch_{e:04d}.safetensors"
                ).items()
                if k not in ("metrics", "content_sha256", "probe_version")
            }
            for e in (0, 1, 2)
        ]
        ref = {
            "metrics": rows,
            "config": cfg,
            "layers": layers,
            "checkpoint_metadata": ckmeta,
            "batches": batches,
        }
        (out / "recorder_reference.json").write_text(json.dumps(ref, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
