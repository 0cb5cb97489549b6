"""Training speed: probe's default epoch against the notebook's pipeline, side by side in one run.

    python bench/bench_train.py --data ../shared/data/cifar10 [--epochs 2]
        [--variants default,no-channels-last]

Runs ../shared/bench/seed_baseline.py (PIL transforms, DataLoader, per-parameter
.item() gradient norm) for the same number of epochs, then `probe train` with each
variant, each in its own process, one after the other. Prints a table of seconds per
epoch (training + validation, and for probe also the checkpoint and activation
dump), training images per second, validation accuracy, the share of the epoch spent
writing outputs, and each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT.parent / "shared" / "bench" / "seed_baseline.py"
VARIANTS = {
    "default": [],
    "no-channels-last": ["--no-channels-last"],
    "bf16": ["--precision", "bf16"],
}


def peak_child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_baseline(data: str, epochs: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(BASELINE), data, str(epochs), "--no-analyses"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    epochs_rows = [r for r in rows if "epoch" in r]
    per_epoch = [r["train_s"] + r["val_s"] for r in epochs_rows]
    return {
        "name": "notebook baseline",
        "epoch_s": per_epoch,
        "img_s": [r["train_img_per_s"] for r in epochs_rows],
        "val_acc": epochs_rows[-1]["val_acc"],
        "wall_s": wall,
    }


def run_probe(data: str, epochs: int, name: str, flags: list[str], workdir: Path) -> dict:
    run_dir = workdir / name
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "probe.cli",
            "train",
            "--run-dir",
            str(run_dir),
            "--data",
            data,
            "--epochs",
            str(epochs),
            "--quiet",
            *flags,
        ],
        check=True,
    )
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    return {
        "name": f"probe {name}",
        "epoch_s": [r["epoch_seconds"] for r in rows],
        "img_s": [round(r["images_per_second"]) for r in rows],
        "val_acc": rows[-1]["val_acc"],
        "output_share": sum(r["output_seconds"] for r in rows)
        / sum(r["epoch_seconds"] for r in rows),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default=os.environ.get("PROBE_DATA", str(ROOT.parent / "shared" / "data" / "cifar10")),
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--variants", default="default", help=f"comma-separated, from {', '.join(VARIANTS)}"
    )
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    results = []
    if not args.skip_baseline:
        before = peak_child_rss_mb()
        results.append(
            run_baseline(args.data, args.epochs) | {"peak_rss_mb": max(before, peak_child_rss_mb())}
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            # ru_maxrss of children is a running maximum; run each variant in a fresh shell to
            # isolate it
            code = (
                f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
                "bench_train as b; "
                f"from pathlib import Path; r = b.run_probe({args.data!r}, {args.epochs}, "
                f"{name!r}, {VARIANTS[name]!r}, "
                f"Path({tmp!r})); r['peak_rss_mb'] = b.peak_child_rss_mb(); print(json.dumps(r))"
            )
            r = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = results[0]["epoch_s"] if not args.skip_baseline else None
    print(
        f"{'pipeline':28} {'s/epoch (mean)':>14} {'train img/s':>12} {'val_acc':>8} {'outputs':>8} "
        f"{'peak RSS':>9} {'speed-up':>9}"
    )
    for r in results:
        mean = sum(r["epoch_s"]) / len(r["epoch_s"])
        share = f"{100 * r['output_share']:.1f}%" if "output_share" in r else "-"
        speed = f"{(sum(base) / len(base)) / mean:.2f}x" if base else "-"
        img = sum(r["img_s"]) / len(r["img_s"])
        print(
            f"{r['name']:28} {mean:14.2f} {img:12.0f} {r['val_acc']:8.4f} {share:>8} "
            f"{r['peak_rss_mb']:8.0f}M {speed:>9}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
