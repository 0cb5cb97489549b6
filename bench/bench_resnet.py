"""ResNet-20 epochs: `probe train` against the usual torchvision DataLoader loop,
interleaved in one process.

    python bench/bench_resnet.py --data ../shared/data/cifar10 [--images 10000]
        [--rounds 2] [--workers 2,0]

Each round runs, one after the other in this process (so machine drift hits all alike):

- probe: one epoch of `probe train --model resnet --model-param depth=20 --optimizer
  SGD_mom` (probe.training.loop.train, resumed round after round in one run directory) on
  --images CIFAR-10 training images (probe.datasets.tensors.load_dataset), validating on the
  10,000 test images; its own metrics: train_seconds (the training loop) and
  epoch_seconds (training, validation with the activation dump's hooks, dump and
  checkpoint writes).
- loader-wN for each N in --workers: the same ResNet-20 (same init, NCHW as most
  code leaves it) trained with the loop most tutorials write: torchvision
  ImageFolder on the same JPEG folder (a seeded --images Subset), RandomCrop(32,
  padding=4) + RandomHorizontalFlip + ToTensor + Normalize, DataLoader(batch_size=128,
  shuffle=True, num_workers=N, pin_memory=torch.cuda.is_available()), SGD momentum 0.9,
  cross-entropy, and per step `loss.item()` and `(out.argmax(1) == y).sum().item()` for the running
  loss and accuracy; then validation on the test ImageFolder (batch 256, the same
  workers). train_s and epoch_s (train + validation).
- floor: every conv of ResNet-20 timed alone (bench_step.py's layers section,
  channels-last, batch 128), summed over the epoch: --images forward + backward,
  10,000 validation images forward.

torch uses its default threads (torch.get_num_threads(), or --threads) for both loops;
DataLoader workers run one each. Prints JSON lines (one per measurement, then a summary with medians
and ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_step  # noqa: E402
from bench_step import emit  # noqa: E402

from probe.datasets import tensors as pdata  # noqa: E402
from probe.training.config import TrainConfig  # noqa: E402
from probe.training.loop import model_spec, train  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def probe_config(data: str, images: int, seed: int) -> TrainConfig:
    return TrainConfig(
        data=data,
        model="resnet",
        model_params=("depth=20",),
        optimizer="SGD_mom",
        lr=0.1,
        momentum=0.9,
        subset_train_size=images,
        seed=seed,
        device="cpu",
        epochs=0,
    )


def probe_epoch(run_dir: Path, cfg: TrainConfig, ds: pdata.Dataset, epoch: int) -> dict:
    """Train epoch `epoch` of the run in `run_dir` (the first call also writes epoch 0); its metrics
    row."""
    t0 = time.perf_counter()
    train(
        run_dir,
        replace(cfg, epochs=epoch),
        resume=epoch > 1,
        dataset=ds,
        quiet=True,
        progress=False,
    )
    wall = time.perf_counter() - t0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[epoch])
    assert row["epoch"] == epoch
    return {
        "train_s": row["train_seconds"],
        "epoch_s": row["epoch_seconds"],
        "val_s": row["val_seconds"],
        "output_s": row["output_seconds"],
        "call_s": wall,
        "train_loss": row["train_loss"],
        "train_acc": row["train_acc"],
        "val_acc": row["val_acc"],
    }


class LoaderLoop:
    """The usual PyTorch CIFAR loop: ImageFolder + transforms + DataLoader, `.item()` per step."""

    def __init__(self, data: str, images: int, seed: int, model: torch.nn.Module):
        from torchvision import datasets, transforms

        tt = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )
        vt = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        full = datasets.ImageFolder(f"{data}/train", transform=tt)
        g = torch.Generator().manual_seed(seed)
        self.train_set = torch.utils.data.Subset(
            full, torch.randperm(len(full), generator=g)[:images].tolist()
        )
        self.val_set = datasets.ImageFolder(f"{data}/test", transform=vt)
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def epoch(self, workers: int) -> dict:
        from torch.utils.data import DataLoader

        tl = DataLoader(
            self.train_set,
            batch_size=128,
            shuffle=True,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
        )
        vl = DataLoader(
            self.val_set,
            batch_size=256,
            shuffle=False,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
        )
        model, opt = self.model, self.opt
        t0 = time.perf_counter()
        model.train()
        running, correct, seen = 0.0, 0, 0
        for x, y in tl:
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            running += loss.item() * x.size(0)
            correct += (out.argmax(1) == y).sum().item()
            seen += x.size(0)
        t1 = time.perf_counter()
        model.eval()
        vc = vn = 0
        with torch.no_grad():
            for x, y in vl:
                out = model(x)
                vc += (out.argmax(1) == y).sum().item()
                vn += x.size(0)
        t2 = time.perf_counter()
        return {
            "train_s": t1 - t0,
            "epoch_s": t2 - t0,
            "val_s": t2 - t1,
            "train_loss": running / seen,
            "train_acc": correct / seen,
            "val_acc": vc / vn,
        }


def conv_floor(calls: list, images: int, repeats: int) -> dict:
    row = bench_step.layers(calls, repeats, images, 10_000, quiet=True)
    return {
        "train_s": row["conv_train_s"],
        "epoch_s": row["conv_only_epoch_s"],
        "val_s": row["conv_val_s"],
    }


# --- where probe's training time goes -------------------------------------------------------------

CATEGORIES = [  # (category, substrings of aten op names); first match wins
    ("conv", ("convolution", "mkldnn_conv", "conv2d")),
    ("batchnorm", ("batch_norm",)),
    (
        "per-step statistics",
        (
            "_foreach_norm",
            "aten::_foreach_mul",
            "aten::_foreach_sub",
            "linalg_vector_norm",
            "aten::stack",
            "aten::maximum",
        ),
    ),
    ("optimizer", ("_foreach_", "sgd")),
    (
        "relu/add/pad (elementwise)",
        (
            "relu",
            "threshold",
            "aten::add",
            "constant_pad",
            "aten::pad",
            "aten::slice",
            "aten::fill_",
            "aten::zero_",
            "aten::mul",
            "aten::sum",
            "aten::copy_",
        ),
    ),
    (
        "augment/normalize/index",
        (
            "index",
            "randint",
            "rand",
            "aten::div",
            "aten::sub",
            "aten::to",
            "aten::_to_copy",
            "aten::where",
            "aten::flip",
            "aten::arange",
            "aten::clone",
            "contiguous",
        ),
    ),
    (
        "loss/pool/linear",
        (
            "cross_entropy",
            "log_softmax",
            "nll_loss",
            "adaptive_avg",
            "mean",
            "addmm",
            "aten::mm",
            "argmax",
            "aten::eq",
        ),
    ),
]


def _no_stats_epoch(tr, epoch: int) -> None:
    """train_epoch's loop without the per-step statistics (gradient norm, update ratio, loss/acc
    sums): the A/B."""
    from probe.training.loop import lr_at

    cfg, model, opt = tr.cfg, tr.model, tr.opt
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, epoch)
    model.train()
    n = tr.train_x.shape[0]
    perm = torch.randperm(n, generator=tr.gen)
    for start in range(0, n, cfg.batch_size):
        idx = perm[start : start + cfg.batch_size]
        xb = pdata.augment(tr.train_x[idx], tr.gen, tr.augmentation.pad, tr.augmentation.flip)
        loss = F.cross_entropy(model(tr._input(xb)), tr.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _stats_only(tr, steps: int) -> float:
    """Seconds per step of train_epoch's statistics alone (after a backward, so every grad
    exists)."""
    params = tr.params
    t = []
    for _ in range(steps):
        t0 = time.perf_counter()
        grads = [p.grad for p in params if p.grad is not None]
        gn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        before = torch._foreach_mul(params, 1.0)
        with torch.no_grad():
            delta = torch._foreach_sub(params, before)
            ratio = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(delta))
            ) / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
        (gn + ratio).item()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def profile(data: str, images: int, rounds: int, seed: int) -> None:
    """A/B: probe's train_epoch against the same loop without statistics, interleaved; then a
    profiler breakdown."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from probe.training.loop import Trainer
    from probe.training.trainplan import train_plan

    ds = pdata.load_dataset("cifar10", data, quiet=True)
    cfg = replace(probe_config(data, images, seed), probe_set_size=100, analysis_batch_size=128)
    with tempfile.TemporaryDirectory() as tmp:
        plan = train_plan(cfg, ds, Path(tmp), torch.device("cpu"), model_spec(cfg, ds))
        tr = Trainer(plan, cfg)
        tr.train_epoch(1)  # warm-up
        ab: dict[str, list[float]] = {"train_epoch": [], "without_statistics": []}
        for _ in range(rounds):
            for k, fn in (
                ("train_epoch", lambda: tr.train_epoch(1)),
                ("without_statistics", lambda: _no_stats_epoch(tr, 1)),
            ):
                t0 = time.perf_counter()
                fn()
                ab[k].append(time.perf_counter() - t0)
        steps = -(-tr.train_x.shape[0] // cfg.batch_size)
        a, b = statistics.median(ab["train_epoch"]), statistics.median(ab["without_statistics"])
        stats_s = _stats_only(tr, 50)
        emit(
            section="profile-ab",
            images=tr.train_x.shape[0],
            steps=steps,
            train_epoch_s=a,
            without_statistics_s=b,
            statistics_share=(a - b) / a,
            statistics_alone_ms_per_step=stats_s * 1e3,
            statistics_alone_share=stats_s * steps / a,
            params=sum(p.numel() for p in tr.params),
        )
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            tr.train_epoch(1)
        total = 0.0
        by_cat: dict[str, float] = {}
        for ev in prof.key_averages():
            us = ev.self_cpu_time_total
            total += us
            cat = next((c for c, keys in CATEGORIES if any(k in ev.key for k in keys)), "other")
            by_cat[cat] = by_cat.get(cat, 0.0) + us
        for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
            emit(section="profile", category=cat, seconds=us / 1e6, share=us / total)
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        for ev in top:
            emit(
                section="profile-op",
                op=ev.key,
                seconds=ev.self_cpu_time_total / 1e6,
                calls=ev.count,
                share=ev.self_cpu_time_total / total,
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default=os.environ.get("PROBE_DATA", str(ROOT.parent / "shared" / "data" / "cifar10")),
    )
    ap.add_argument("--images", type=int, default=10_000, help="training images per epoch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--workers", default="2,0", help="comma-separated DataLoader num_workers variants"
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timings per conv kernel for the floor (best kept)"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads for everything (0: torch's default)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead: probe's train_epoch with and without its per-step statistics "
        "(A/B, --rounds), "
        "and a torch.profiler breakdown of one epoch by op category",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.data, args.images, args.rounds, args.seed)
        return
    workers = [int(w) for w in args.workers.split(",") if w != ""]
    ds = pdata.load_dataset("cifar10", args.data, quiet=True)
    cfg = probe_config(args.data, args.images, args.seed)
    spec = model_spec(cfg, ds)
    torch.manual_seed(args.seed)
    loop = LoaderLoop(args.data, args.images, args.seed, spec.build())
    calls = bench_step.conv_calls(spec.build(), spec)
    emit(
        section="setup",
        model=spec.describe(),
        images=args.images,
        val_images=len(ds.test_y),
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
        torch=torch.__version__,
    )
    times: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        for r in range(1, args.rounds + 1):
            results = {
                "probe": lambda r=r: probe_epoch(run_dir, cfg, ds, r),
                **{f"loader-w{w}": (lambda w=w: loop.epoch(w)) for w in workers},
                "floor": lambda: conv_floor(calls, args.images, args.repeats),
            }
            for name, fn in results.items():
                row = fn()
                times.setdefault(name, []).append(row)
                emit(section="round", round=r, variant=name, **row)
    summarize(times)


def summarize(times: dict[str, list[dict]]) -> None:
    """Medians per variant, and ratios taken within each round (same drift), then their median."""

    def ratio(num: str, den: str, key: str) -> float:
        return statistics.median(
            a[key] / b[key] for a, b in zip(times[num], times[den], strict=True)
        )

    for name, rows in times.items():
        emit(
            section="summary",
            variant=name,
            rounds=len(rows),
            **{
                f"median_{k}": statistics.median(row[k] for row in rows)
                for k in ("train_s", "epoch_s")
            },
        )
    emit(
        section="summary",
        probe_over_floor_train=ratio("probe", "floor", "train_s"),
        probe_over_floor_epoch=ratio("probe", "floor", "epoch_s"),
        **{
            f"{k}_over_probe_{key[:-2]}": ratio(k, "probe", key)
            for k in times
            if k.startswith("loader")
            for key in ("train_s", "epoch_s")
        },
    )


if __name__ == "__main__":
    main()
