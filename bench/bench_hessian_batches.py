"""Cost of `hessian_analysis` over B batches, per-layer blocks, trace and density (issue 15).

Run by hand (not a test); prints one JSON line per configuration:

    python bench/bench_hessian_batches.py --threads 1 --n 64 --batches 4

On bench_curvature.py's trained SimpleCNN (same cache), CIFAR-10 training images.
Counts Hessian-vector products over one batch of --n images (a product of the combined
operator of B batches counts B) and wall time; one batch's analysis is run on each of the
first B batches separately, so "B x one batch" is the sum of those B runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_curvature import data, trained_model  # noqa: E402

from probe.numerics import curvature as C  # noqa: E402


def timed(**kw) -> tuple[C.HessianReport, float]:
    t0 = time.perf_counter()
    rep = C.hessian_analysis(**kw)
    return rep, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default="/work/shared/data/cifar10")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--n", type=int, default=64, help="images per batch")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--trace-samples", type=int, default=20)
    p.add_argument("--density-steps", type=int, default=40)
    p.add_argument(
        "--only-batches", action="store_true", help="stop after the eigenpairs of B batches"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_x, train_y, _, _ = data(args)
    model = trained_model(args, train_x, train_y)
    n, b = args.n, args.batches
    x, y = train_x[: n * b], train_y[: n * b]
    base = dict(model=model, top_k=args.top_k, smallest=1, seed=0)

    def emit(what: str, rep: C.HessianReport, seconds: float, **extra) -> None:
        print(
            json.dumps(
                {
                    "what": what,
                    "hvps": rep.hvps,
                    "seconds": round(seconds, 2),
                    "top": [round(v, 3) for v in rep.eigen[0].values.tolist()],
                    **extra,
                }
            ),
            flush=True,
        )

    one_h, one_s = 0, 0.0
    for i in range(b):
        rep, s = timed(x=x[i * n : (i + 1) * n], y=y[i * n : (i + 1) * n], **base)
        one_h, one_s = one_h + rep.hvps, one_s + s
        emit(f"eigen, batch {i} alone", rep, s)
    for mode in ("ritz", "solve"):
        rep, s = timed(x=x, y=y, batches=b, per_batch=mode, **base)
        emit(
            f"eigen, {b} batches + combined, per_batch={mode}",
            rep,
            s,
            ratio_hvps=round(rep.hvps / one_h, 3),
            ratio_seconds=round(s / one_s, 3),
            per_batch_hvps=sum(e[0].hvps for e in rep.per_batch),  # both ends share
            per_batch_top=[round(float(e[0].values[0]), 3) for e in rep.per_batch],
            per_batch_top_residual=[round(float(e[0].residuals[0]), 4) for e in rep.per_batch],
        )
    if args.only_batches:
        return
    rep1, s1 = timed(x=x[:n], y=y[:n], trace_samples=args.trace_samples, **base)
    emit(f"eigen + trace {args.trace_samples}, one batch", rep1, s1)
    repb, sb = timed(x=x, y=y, batches=b, trace_samples=args.trace_samples, **base)
    emit(f"eigen + trace {args.trace_samples}, {b} batches + combined", repb, sb)
    rep2, s2 = timed(x=x[:n], y=y[:n], trace_samples=args.trace_samples, blocks="layer", **base)
    emit(
        "eigen + trace + blocks=layer, one batch",
        rep2,
        s2,
        block_hvps=[blk.eigen.hvps for blk in rep2.blocks],
        block_top=[round(float(blk.eigen.values[0]), 3) for blk in rep2.blocks],
    )
    rep3, s3 = timed(x=x[:n], y=y[:n], density_runs=1, density_steps=args.density_steps, **base)
    emit(f"eigen + density 1x{args.density_steps}, one batch", rep3, s3)


if __name__ == "__main__":
    main()
