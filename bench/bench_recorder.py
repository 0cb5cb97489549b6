"""The recorder's per-epoch overhead against a ResNet-20 training epoch.

    python bench/bench_recorder.py --data /work/shared/data/cifar10 [--images 10000]
        [--epochs 2] [--threads 2]

Trains a ResNet-20 (SGD with momentum, batch 128, augmentation) in a plain loop on
`--images` training images and calls `probe.Recorder.record` after each epoch,
which validates on `--val-size` images (the probe set first) and writes the dump,
checkpoint and metrics. Prints, per epoch, the training time, the validation time
with the recorder's activation hooks and without them (a plain eval pass over the
same images), and the output time (dump + checkpoint + metrics); the overhead is
outputs + hooks, as a share of the training epoch. Target: under 5 % (as for
`probe train`'s own outputs) at 10,000 images. Without `--data`, synthetic
CIFAR-shaped images are used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe  # noqa: E402
from probe.datasets.tensors import augment, normalize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CIFAR-10 class folders (else synthetic images)")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--val-size", type=int, default=10_000)
    ap.add_argument("--probe-set-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data:
        dataset = "cifar10"
    else:
        from probe.testing import synthetic_dataset

        dataset = synthetic_dataset(
            n_train=args.images, n_test=max(args.val_size, args.probe_set_size)
        )
    with tempfile.TemporaryDirectory() as tmp:
        rec = probe.Recorder(
            Path(tmp) / "run",
            model="resnet",
            model_params={"depth": 20},
            dataset=dataset,
            data=args.data,
            subset_train_size=args.images,
            probe_set_size=args.probe_set_size,
            val_size=args.val_size,
            device=args.device,
        )
        ds, spec, dev = rec.dataset, rec.spec, rec.device
        x_train, y_train = (
            ds.train_x[rec.train_indices].to(dev),
            ds.train_y[rec.train_indices].to(dev),
        )
        torch.manual_seed(0)
        model = spec.build().to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        print(
            f"ResNet-20, {len(y_train):,} training images, validation on {len(rec.val_y):,} "
            f"(probe set {len(rec.probe_idx):,}), {args.threads} threads, {dev}"
        )
        print(
            f"{'epoch':>5} {'train s':>8} {'val+hooks s':>11} {'val plain s':>11} {'outputs s':>9} "
            f"{'overhead':>8}"
        )
        with rec:
            rec.record(0, model, opt)
            for epoch in range(1, args.epochs + 1):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(len(y_train), generator=gen).to(dev)
                for i in range(0, len(perm), 128):
                    idx = perm[i : i + 128]
                    loss = F.cross_entropy(
                        model(normalize(augment(x_train[idx], gen), spec.mean, spec.std)),
                        y_train[idx],
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                train_s = time.perf_counter() - t0
                row = rec.record(epoch, model, opt, {"train_loss": loss.item()})
                plain = plain_validation(model, rec)
                hooks = max(0.0, row["val_seconds"] - plain)
                share = (row["output_seconds"] + hooks) / train_s
                print(
                    f"{epoch:>5} {train_s:>8.2f} {row['val_seconds']:>11.2f} {plain:>11.2f} "
                    f"{row['output_seconds']:>9.3f} {share:>7.1%}"
                )


@torch.no_grad()
def plain_validation(model: torch.nn.Module, rec: probe.Recorder) -> float:
    """The same validation pass without hooks or outputs: what any loop's own validation costs."""
    t = time.perf_counter()
    model.eval()
    for i in range(0, len(rec.val_y), rec.val_batch_size):
        logits = model(
            normalize(rec.val_x[i : i + rec.val_batch_size], rec.spec.mean, rec.spec.std)
        )
        F.cross_entropy(logits, rec.val_y[i : i + rec.val_batch_size], reduction="sum").item()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
