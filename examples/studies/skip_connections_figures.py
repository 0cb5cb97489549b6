"""Figures and table of the skip-connections study, from its run directories alone.

    python examples/studies/skip_connections_figures.py sweeps/skip --out examples/studies

Reads each run's landscape (per epoch) and hessian (run) results as `probe analyze`
wrote them, and writes img/skip_landscapes.png (loss contours: a row per network, a
column per epoch), img/skip_hessian.png (top Hessian eigenvalue per epoch) and
skip-connections_results.csv. Surface roughness is counted as the grid's strict local
minima (points below all four neighbours): a smooth bowl has one.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RUNS = [
    "depth=20,shortcut=A",
    "depth=20,shortcut=none",
    "depth=56,shortcut=A",
    "depth=56,shortcut=none",
]


def landscapes(run: Path) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for h5 in sorted(run.glob("analyses/landscape/*/epoch_*/landscape.h5")):
        with h5py.File(h5, "r") as f:
            out[int(h5.parent.name.split("_")[1])] = {
                k: f[k][()] for k in ("alpha", "beta", "loss", "accuracy")
            }
    return out


def hessian(run: Path) -> dict[int, tuple[float, bool]]:
    (h5,) = sorted(run.glob("analyses/hessian/*/run/hessian.h5"))[-1:]
    with h5py.File(h5, "r") as f:
        return {
            int(e): (float(t[0]), bool(c[0]))
            for e, t, c in zip(f["epoch"][()], f["top"][()], f["top_converged"][()], strict=True)
        }


def local_minima(loss: np.ndarray) -> int:
    padded = np.pad(loss, 1, constant_values=np.inf)
    centre = padded[1:-1, 1:-1]
    return int(
        (
            (centre < padded[:-2, 1:-1])
            & (centre < padded[2:, 1:-1])
            & (centre < padded[1:-1, :-2])
            & (centre < padded[1:-1, 2:])
        ).sum()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    data = {r: (landscapes(args.sweep / r), hessian(args.sweep / r)) for r in RUNS}
    metrics = {
        r: {
            m["epoch"]: m
            for m in map(json.loads, (args.sweep / r / "metrics.jsonl").read_text().splitlines())
        }
        for r in RUNS
    }
    epochs = sorted(next(iter(data.values()))[0])
    (args.out / "img").mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(
        len(RUNS), len(epochs), figsize=(3 * len(epochs), 2.8 * len(RUNS)), squeeze=False
    )
    for i, r in enumerate(RUNS):
        for j, e in enumerate(epochs):
            s = data[r][0][e]
            ax = axes[i, j]
            cs = ax.contour(s["alpha"], s["beta"], np.log10(s["loss"]), levels=12, cmap="viridis")
            ax.clabel(cs, fontsize=6, fmt=lambda v: f"{10**v:.3g}")
            ax.plot(0, 0, "r*")
            ax.set_title(f"{r.replace(',', ', ')}\nepoch {e}", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle(
        "Training loss around each epoch's weights (filter-normalised directions; contour labels: "
        "loss)"
    )
    fig.tight_layout()
    fig.savefig(args.out / "img" / "skip_landscapes.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in RUNS:
        h = data[r][1]
        es = sorted(h)
        ax.semilogy(es, [h[e][0] for e in es], "o-" if "none" not in r else "s--", label=r)
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue (log)", title="Sharpness per epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "img" / "skip_hessian.png", dpi=110)
    plt.close(fig)

    with (args.out / "skip-connections_results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "run",
                "epoch",
                "train_loss",
                "val_acc",
                "top_eigenvalue",
                "top_converged",
                "centre_loss",
                "edge_median_loss",
                "local_minima",
            ]
        )
        for r in RUNS:
            for e in epochs:
                s, (top, ok), m = (
                    data[r][0][e],
                    data[r][1].get(e, (float("nan"), False)),
                    metrics[r][e],
                )
                edge = np.concatenate(
                    [s["loss"][0], s["loss"][-1], s["loss"][1:-1, 0], s["loss"][1:-1, -1]]
                )
                mid = len(s["alpha"]) // 2
                w.writerow(
                    [
                        r,
                        e,
                        f"{m.get('train_loss', float('nan')):.4f}",
                        f"{m['val_acc']:.4f}",
                        f"{top:.4g}",
                        ok,
                        f"{s['loss'][mid, mid]:.4f}",
                        f"{np.median(edge):.4g}",
                        local_minima(s["loss"]),
                    ]
                )


if __name__ == "__main__":
    main()
