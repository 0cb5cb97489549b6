"""Batched Hessian-vector products: one-at-a-time against `is_grads_batched` over the cached
graph against `torch.func.vmap` over forward-over-reverse, per product, at several widths.

    python bench/bench_batched_products.py --model cnn|resnet20 [--n 256] [--threads 1]
        [--widths 1,2,4,8,16] [--repeats 3] [--vmap]

On a seeded random-init built-in model (simplecnn defaults, or resnet depth=20) and seeded
random images (a product's cost does not depend on them), float32, CPU. Per width k, in
turn: k single products through the cached first-order graph, one batched backward of it
with k grad_outputs, and (with --vmap) vmap over jvp(grad(f)); the minimum of --repeats
wall times divided by k. Prints one JSON line per width with the batched product's largest
relative difference from the single one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_peers import emit, synthetic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn", choices=["cnn", "resnet20"])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--widths", default="1,2,4,8,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vmap", action="store_true", help="also time vmap over forward-over-reverse")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = synthetic(args.model, args.n)
    names = [k for k, _ in model.named_parameters()]
    params = {k: q.detach() for k, q in model.named_parameters()}
    buffers = dict(model.named_buffers())
    leaves = [q.detach().requires_grad_() for q in params.values()]
    named = dict(zip(names, leaves, strict=True))
    out = F.cross_entropy(functional_call(model, (named, buffers), (x,)), y)
    gs = torch.autograd.grad(out, leaves, create_graph=True)
    dim = sum(q.numel() for q in leaves)
    torch.autograd.grad(gs, leaves, [torch.ones_like(q) for q in leaves], retain_graph=True)

    def f(q):
        return F.cross_entropy(functional_call(model, (q, buffers), (x,)), y)

    for k in [int(w) for w in args.widths.split(",")]:
        vs, i = [], 0
        rows = torch.randn(k, dim)
        for q in leaves:
            vs.append(rows[:, i : i + q.numel()].reshape(k, *q.shape))
            i += q.numel()
        t = {"single": [], "batched": [], "vmap": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            single = [
                torch.autograd.grad(gs, leaves, [v[j] for v in vs], retain_graph=True)
                for j in range(k)
            ]
            t["single"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            batched = torch.autograd.grad(gs, leaves, vs, retain_graph=True, is_grads_batched=True)
            t["batched"].append(time.perf_counter() - t0)
            if args.vmap:
                t0 = time.perf_counter()
                vmap(lambda d: jvp(grad(f), (params,), (d,))[1])(dict(zip(names, vs, strict=True)))
                t["vmap"].append(time.perf_counter() - t0)
        diff = max(
            float((b[k - 1] - s).abs().max() / s.abs().max())
            for b, s in zip(batched, single[k - 1], strict=True)
        )
        per = {m: min(ts) / k for m, ts in t.items() if ts}
        emit(
            model=args.model,
            n_images=args.n,
            threads=args.threads,
            width=k,
            **{f"{m}_s_per_product": v for m, v in per.items()},
            batched_speedup=per["single"] / per["batched"],
            max_rel_diff=diff,
        )


if __name__ == "__main__":
    main()
