"""Make tests/data/recorder_reference.*: a tiny run from the pre-recorder probe train."""
import json, sys, tempfile
from pathlib import Path
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
import h5py
from probe.testing import make_tiny_run, synthetic_dataset
from probe import checkpoint
out = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as d:
    run = make_tiny_run(Path(d) / "run", dataset=synthetic_dataset(n_train=160, n_test=80, seed=0),
                        model="resnet", model_params=("depth=8",),
                        probe_set_size=20, analysis_batch_size=32, epochs=2)
    tensors = {}
    batches = {}
    for e in (0, 1, 2):
        ck = checkpoint.load(run / f"checkpoints/epoch_{e:04d}.safetensors")
        if e == 2:
            for k, v in ck.model_state.items(): tensors[f"model/{k}"] = v
            for p, st in ck.optimizer_state.items():
                for k, v in st.items(): tensors[f"optimizer/{p}/{k}"] = v
            for k, v in ck.rng.items(): tensors[f"rng/{k}"] = v
        with h5py.File(run / f"activations/epoch_{e:04d}.h5") as f:
            for name in f["pooled"]:
                tensors[f"act{e}/pooled/{name}"] = torch.from_numpy(f["pooled"][name][()])
            tensors[f"act{e}/logits"] = torch.from_numpy(f["logits"][()])
            layers = [str(x.decode() if isinstance(x, bytes) else x) for x in f.attrs["layers"]]
    for rel in ("data/probe_set.safetensors", "data/analysis_batch.safetensors"):
        from safetensors.torch import load_file
        import hashlib
        batches[rel] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() + str(list(v.shape)) for k, v in load_file(run / rel).items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "recorder_reference.safetensors"))
    timing = {"train_seconds", "val_seconds", "epoch_seconds", "images_per_second", "output_seconds"}
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in timing} for r in rows]
    cfg = json.loads((run / "config.json").read_text())
    for k in ("versions", "device", "device_name"): cfg.pop(k, None)
    ckmeta = [ {k: v for k, v in checkpoint.read_metadata(run / f"checkpoints/epoch_{e:04d}.safetensors").items() if k not in ("metrics", "content_sha256", "probe_version")} for e in (0,1,2)]
    json.dump({"metrics": rows, "config": cfg, "layers": layers, "checkpoint_metadata": ckmeta, "batches": batches}, open(out / "recorder_reference.json", "w"), indent=1, sort_keys=True)
    print(sorted(set(k.split('/')[0] for k in tensors)), len(tensors))
