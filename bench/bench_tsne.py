"""Benchmark the t-SNE backends on probe-set-sized inputs (run by hand).

Why: `probe.numerics.representations.tsne` prefers openTSNE over scikit-learn; this script
is the evidence, and re-checks it on another machine. The inputs mimic pooled
activations of the 1,000-image probe set: 10 classes of 100, Gaussian clusters in
D dimensions passed through a ReLU. Every configuration runs the same problem
(perplexity 30, 250 exaggerated + 500 plain iterations, the same PCA start).
Each configuration runs with its thread pools (BLAS and OpenMP, which scikit-learn's
Barnes-Hut gradient uses whatever `n_jobs` says) limited to its `n_jobs`, so
"n_jobs=1" means one thread. Besides wall time (median and minimum; the minimum
is the best estimate on a machine shared with other jobs) it reports CPU time of
all threads of the process, and
trustworthiness (k=10) and the 10-NN class accuracy in the embedding, to show the
faster one is not worse.

    python bench/bench_tsne.py [--repeats 3] [--dims 64 256] [--n 1000] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
from sklearn.manifold import trustworthiness
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from probe.numerics.representations import pca, tsne


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n // 10)
    centres = rng.normal(scale=1.5, size=(10, d))
    X = np.maximum(centres[labels] + rng.normal(size=(len(labels), d)), 0.0)
    return X.astype(np.float32), labels


def knn_accuracy(Y: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN class accuracy in the embedding."""
    clf = KNeighborsClassifier(n_neighbors=k + 1).fit(Y, labels)
    _, idx = clf.kneighbors(Y)
    votes = labels[idx[:, 1:]]
    pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
    return float(np.mean(pred == labels))


def opentsne_fft(X: np.ndarray, n_jobs: int) -> np.ndarray:
    """openTSNE with FFT-interpolated gradients (its choice from 10,000 points up)."""
    from openTSNE import TSNE

    init = pca(X, 2).projections
    init = init / init[:, 0].std() * 1e-4
    return np.asarray(
        TSNE(
            perplexity=30,
            n_iter=500,
            initialization=init,
            random_state=0,
            n_jobs=n_jobs,
            negative_gradient_method="fft",
        ).fit(X.astype(np.float64))
    )


def configs(jobs_list: list[int]) -> list[tuple[str, int, Callable[[np.ndarray], np.ndarray]]]:
    """(label, threads, function) per configuration."""
    out: list[tuple[str, int, Callable[[np.ndarray], np.ndarray]]] = []
    for jobs in jobs_list:
        out.append(
            (
                f"sklearn BH, n_jobs={jobs}",
                jobs,
                lambda X, j=jobs: tsne(X, backend="sklearn", n_jobs=j),
            )
        )
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        print("openTSNE not installed: only scikit-learn is benchmarked")
        return out
    for jobs in jobs_list:
        out.append(
            (
                f"openTSNE BH, n_jobs={jobs}",
                jobs,
                lambda X, j=jobs: tsne(X, backend="opentsne", n_jobs=j),
            )
        )
    out.append(("openTSNE FFT, n_jobs=1", 1, lambda X: opentsne_fft(X, 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--jobs", type=int, nargs="+", default=[1, 2], help="n_jobs values (threads) to try"
    )
    args = ap.parse_args()

    import sklearn

    try:
        import openTSNE

        open_version = openTSNE.__version__
    except ImportError:
        open_version = "not installed"
    print(
        f"python {platform.python_version()}, scikit-learn {sklearn.__version__}, "
        f"openTSNE {open_version}, {os.cpu_count()} CPUs"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print(
        f"{'input':>10}  {'backend':<24} {'wall med':>8} {'wall min':>8} {'cpu med':>8} "
        f"{'trust@10':>8} {'10NN acc':>8}"
    )
    for d in args.dims:
        X, labels = make_data(args.n, d)
        for name, threads, fn in configs(args.jobs):
            wall, cpu, Y = [], [], None
            with threadpool_limits(limits=threads):
                fn(X[:200])  # warm-up: imports, thread pools
                for _ in range(args.repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    Y = fn(X)
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            trust = trustworthiness(X, Y, n_neighbors=10)
            print(
                f"{args.n:>5} x {d:<3}  {name:<24} {statistics.median(wall):>8.2f} "
                f"{min(wall):>8.2f} "
                f"{statistics.median(cpu):>8.2f} {trust:>8.3f} {knn_accuracy(Y, labels):>8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
