"""`probe.hessian` (the in-process API, end to end) beside PyHessian and curvlinops, on one
model and one batch: the top Hessian eigenvalue, the notebook question.

    python bench/bench_library.py [--model resnet20|cnn] [--n 256] [--rounds 3] [--threads 1]

Each round times, in an order rotated per round (machine drift hits all alike), from a fresh
call (first-order graph included): `probe.hessian(model, (x, y), top_k=1, smallest=0,
trace_samples=0, density_runs=0)` (Lanczos at the plugin's defaults: tol 1e-3 and residual
1e-2); PyHessian's `hessian(model, cross_entropy, data=(x, y)).eigenvalues(top_n=1)` (power
iteration at its default tol 1e-3); curvlinops' `HessianLinearOperator(...).to_scipy()` under
scipy's `eigsh(k=1, which="LA", tol=1e-3)`. Eval-mode BatchNorm, float32, CIFAR-shaped
synthetic images (probe.testing.synthetic_dataset), the model at its seeded initialisation
after 20 SGD steps on them. Prints one JSON line per timing and a summary line per method:
median seconds, median ratio to probe and its [min, max] over rounds, eigenvalues found.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe  # noqa: E402
from probe.contract.families import get_family  # noqa: E402
from probe.datasets.tensors import normalize  # noqa: E402
from probe.testing import synthetic_dataset  # noqa: E402
from probe.training.model import CIFAR10_INPUT, simplecnn_spec  # noqa: E402


def model_and_batch(name: str, n: int):
    torch.manual_seed(0)
    if name == "cnn":
        model = simplecnn_spec().build()
    else:
        model = get_family("resnet").spec({"depth": 20}, CIFAR10_INPUT, 10).build()
    ds = synthetic_dataset(n_train=max(n, 256), n_test=10)
    x, y = normalize(ds.train_x[:n], ds.mean, ds.std), ds.train_y[:n]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):  # off the initialisation: a spectrum with some structure
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def run_probe(model, x, y):
    h = probe.hessian(
        model, (x, y), n_images=len(x), top_k=1, smallest=0, trace_samples=0, density_runs=0
    )
    return h.eigenvalues[0], h.hvps


def run_pyhessian(model, x, y):
    from pyhessian import hessian

    h = hessian(copy.deepcopy(model).eval(), F.cross_entropy, data=(x, y), cuda=False)
    values, _ = h.eigenvalues(top_n=1, tol=1e-3, maxIter=100)
    return float(values[0]), None  # PyHessian does not count its products


def run_curvlinops(model, x, y):
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import eigsh

    m = copy.deepcopy(model).eval()
    params = [p for p in m.parameters() if p.requires_grad]
    A = HessianLinearOperator(
        m, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    ).to_scipy()
    count = {"n": 0}
    matvec = A.matvec

    def counted(v):
        count["n"] += 1
        return matvec(v)

    A.matvec = counted
    values = eigsh(A, k=1, which="LA", tol=1e-3, return_eigenvectors=False)
    return float(values[0]), count["n"]


METHODS = {"probe.hessian": run_probe, "PyHessian": run_pyhessian, "curvlinops": run_curvlinops}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "cnn"])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = model_and_batch(args.model, args.n)
    names = list(METHODS)
    times: dict[str, list[float]] = {k: [] for k in names}
    found: dict[str, list] = {k: [] for k in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            value, hvps = METHODS[name](model, x, y)
            dt = time.perf_counter() - t0
            times[name].append(dt)
            found[name].append(value)
            line = dict(model=args.model, n=args.n, round=r, method=name, wall_s=round(dt, 3))
            print(json.dumps({**line, "top": value, "hvps": hvps}), flush=True)
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times["probe.hessian"], strict=True)]
        summary = dict(
            summary=name,
            median_s=round(statistics.median(times[name]), 2),
            ratio_to_probe=round(statistics.median(ratios), 2),
            ratio_range=[round(min(ratios), 2), round(max(ratios), 2)],
            top=[round(v, 5) for v in found[name]],
        )
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
