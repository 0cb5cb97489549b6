"""Validation accuracy of the notebook's pipeline against probe's, epoch by epoch.

    python ../shared/bench/seed_baseline.py ../shared/data/cifar10 30 --no-analyses > base.log
    probe train --run-dir runs/acc --data ../shared/data/cifar10 --epochs 30
    python bench/compare_accuracy.py base.log runs/acc [BASE.log RUN ...]

Each pair is one seed (the baseline's seed is the `torch.manual_seed(42)` line of its
script; probe's is `--seed`). The baseline counts epochs from 0, probe from 1 (its
epoch 0 is the initialisation), so baseline line i is probe epoch i + 1. Prints, per
pair, the accuracy at the last epoch and the means over the last 10 and 5 epochs,
then the same averaged over all pairs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def baseline_rows(log: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"epoch"' in line
    ]


def probe_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]


def summary(rows: list[dict]) -> dict[str, float]:
    acc = [r["val_acc"] for r in rows]
    return {
        "last": acc[-1],
        "mean_last10": statistics.mean(acc[-10:]),
        "mean_last5": statistics.mean(acc[-5:]),
        "max": max(acc),
        "train_acc_last": rows[-1]["train_acc"],
    }


def main(argv: list[str]) -> None:
    if len(argv) < 2 or len(argv) % 2:
        sys.exit(__doc__)
    pairs = [(Path(argv[i]), Path(argv[i + 1])) for i in range(0, len(argv), 2)]
    keys = ("last", "mean_last10", "mean_last5", "max", "train_acc_last")
    print(f"{'pair':<40} {'pipeline':<10} " + " ".join(f"{k:>14}" for k in keys))
    totals: dict[str, list[dict]] = {"baseline": [], "probe": []}
    for log, run in pairs:
        b, p = baseline_rows(log), probe_rows(run)
        n = min(len(b), len(p))
        if n < len(b) or n < len(p):
            print(f"note: {log} has {len(b)} epochs, {run} has {len(p)}; comparing the first {n}")
        for name, rows in (("baseline", b[:n]), ("probe", p[:n])):
            s = summary(rows)
            totals[name].append(s)
            print(
                f"{str(run.name) + ' (' + str(n) + ' epochs)':<40} {name:<10} "
                + " ".join(f"{s[k]:>14.4f}" for k in keys)
            )
    for name, ss in totals.items():
        print(
            f"{'mean over ' + str(len(ss)) + ' pairs':<40} {name:<10} "
            + " ".join(f"{statistics.mean(s[k] for s in ss):>14.4f}" for k in keys)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
