"""The learning-dynamics analyses at one epoch of a default-size run, against one training epoch.

    python bench/bench_dynamics.py --data ../shared/data/cifar10 [--rounds 3] [--threads 2]
                                   [--run-dir DIR] [--chunks 16,64,256]

Trains a run with `probe train`'s defaults (SimpleCNN depth 4, 10,000 training images,
batch 128, a 1,000-image probe set, a 1,024-image analysis batch) for 2 epochs, then, for
each of `--rounds` rounds in one process: one more training epoch (`probe train --resume`,
timed as the epoch's `epoch_seconds`: train + validation + outputs), then each analysis at
epoch 2 with its default parameters (`run_analyses(..., "2", force=True)`: linear-probe's
5 folds x every recorded layer, neural-collapse on the penultimate layer, gradient-noise's
per-example gradients of 1,024 images, interpolation's two 11-point segments 0 -> 2 and
1 -> 2). Prints one JSON line per measurement, then the medians: each analysis's median
as a multiple of the median training epoch, the median over rounds of its ratio to that
round's training epoch (robust to load that changes between rounds), and the peak growth
of the resident memory during the call (sampled every 5 ms; after the first round the
allocator reuses memory, so the first round's is the one to read). `--chunks` also times
`probe.numerics.gradient_noise.gradient_noise` alone at those chunk sizes, each in a fresh
process, with its stated memory bound and the measured peak growth (which adds the
chunk's forward/backward activations). Without `--data` the images are synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.analysis.runner import run_analyses  # noqa: E402
from probe.rundir.run import Run  # noqa: E402
from probe.training.config import TrainConfig  # noqa: E402
from probe.training.loop import train  # noqa: E402
from probe.training.trainplan import stored_config  # noqa: E402

ANALYSES = ["linear-probe", "neural-collapse", "gradient-noise", "interpolation"]
EPOCH = 2


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """The largest resident-set growth over the block, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def growth(self) -> float:
        return self.peak - self.base


def emit(**kw) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in kw.items()}))


def synthetic(seed: int = 0):
    from probe.testing import synthetic_dataset

    return synthetic_dataset(n_train=10_000, n_test=10_000, seed=seed)


def train_epoch(run_dir: Path, dataset) -> float:
    """One more epoch of the run; its `epoch_seconds` (train + validation + outputs)."""
    run = Run(run_dir)
    cfg = dataclasses.replace(stored_config(run), epochs=max(run.epochs()) + 1)
    train(run_dir, cfg, resume=True, quiet=True, dataset=dataset)
    return float(Run(run_dir).metrics()[-1]["epoch_seconds"])


def time_analysis(run_dir: Path, name: str) -> tuple[float, float]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        (o,) = run_analyses(run_dir, [name], str(EPOCH), force=True, device="cpu")
        seconds = time.perf_counter() - t0
    if o.status != "ok":
        raise SystemExit(f"{name}: {o.status} {o.error or o.reason}")
    return seconds, mem.growth


def chunk_child(run_dir: Path, chunk: int) -> None:
    """One chunk size in a fresh process, so the resident-memory growth is its own."""
    from probe.numerics import gradient_noise as G

    run = Run(run_dir)
    model = run.model(EPOCH)
    batch = run.analysis_batch()
    x, y = batch.normalized(), batch.labels
    G.gradient_noise(model, x[:2], y[:2], chunk=2)  # one-off costs (kernels, vmap) paid before
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        G.gradient_noise(model, x, y, chunk=chunk)
        seconds = time.perf_counter() - t0
    emit(
        what="gradient_noise chunk",
        chunk=chunk,
        images=len(y),
        seconds=seconds,
        memory_bound_mb=G.memory_bound(model, chunk) / 2**20,
        rss_growth_mb=mem.growth,
    )


def chunk_sweep(run_dir: Path, chunks: list[int], threads: int) -> None:
    import subprocess

    for chunk in chunks:
        cmd = [
            sys.executable,
            __file__,
            "--run-dir",
            str(run_dir.parent),
            "--threads",
            str(threads),
        ]
        subprocess.run([*cmd, "--chunk-child", str(chunk)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CIFAR-10 class folders (else synthetic images)")
    ap.add_argument("--run-dir", help="where the run goes (default: a temporary folder)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", default="", help="gradient_noise chunk sizes to time, e.g. 16,64")
    ap.add_argument("--chunk-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench-dynamics-")) / "run"
    if args.chunk_child:
        chunk_child(run_dir, args.chunk_child)
        return
    dataset = None if args.data else synthetic()
    if not (run_dir / "config.json").exists():
        cfg = TrainConfig(epochs=EPOCH, data=args.data, device="cpu")
        train(run_dir, cfg, quiet=True, dataset=dataset)
    times: dict[str, list[float]] = {"train epoch": [], **{a: [] for a in ANALYSES}}
    growth: dict[str, list[float]] = {a: [] for a in ANALYSES}
    for r in range(args.rounds):
        times["train epoch"].append(train_epoch(run_dir, dataset))
        emit(round=r, what="train epoch", seconds=times["train epoch"][-1])
        for name in ANALYSES:
            seconds, grown = time_analysis(run_dir, name)
            times[name].append(seconds)
            growth[name].append(grown)
            emit(round=r, what=name, seconds=seconds, rss_growth_mb=grown)
    epochs = times["train epoch"]
    for name, values in times.items() if args.rounds else ():
        median = statistics.median(values)
        emit(
            what=f"median {name}",
            seconds=median,
            times_median_train_epoch=median / statistics.median(epochs),
            median_of_round_ratios=statistics.median(
                [v / e for v, e in zip(values, epochs, strict=True)]
            ),
            rss_growth_mb=max(growth[name]) if name in growth else None,
            rounds=len(values),
        )
    if args.chunks:
        chunk_sweep(run_dir, [int(c) for c in args.chunks.split(",")], args.threads)
    emit(what="run", path=str(run_dir), threads=args.threads, data=args.data or "synthetic")


if __name__ == "__main__":
    main()
