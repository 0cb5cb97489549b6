"""One training epoch with 1 and with 2 torch threads, interleaved, optionally beside a
busy loop on one core: the measurement behind `probe train --threads auto`.

    python bench/bench_threads.py [--rounds 2] [--busy]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CHILD = """
import sys, tempfile, time, torch
torch.set_num_threads(int(sys.argv[1]))
from probe.testing import synthetic_dataset
from probe.training.config import TrainConfig
from probe.training.loop import train
ds = synthetic_dataset(n_train=2048, n_test=256, seed=0)
cfg = TrainConfig(epochs=1, subset_train_size=0, batch_size=128, probe_set_size=100,
                  analysis_batch_size=64, example_records=0, device="cpu")
t = time.perf_counter()
train(tempfile.mkdtemp() + "/run", cfg, quiet=True, dataset=ds)
print(round(time.perf_counter() - t, 2))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    args = ap.parse_args()
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1)
    try:
        for r in range(args.rounds):
            for threads in (1, 2):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(threads)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                print(f"round {r + 1}  threads {threads}  {out.stdout.strip()} s", flush=True)
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()
