"""Benchmark a fully cached `probe analyze RUN --all --epochs all` (run by hand).

Why: a cache hit must answer at once (issue 12: under 0.5 s wall and 100 MB peak
RSS on a 30-epoch run), so the command must not import torch, numpy or a plugin's
heavy modules before it knows nothing has to be computed. This script times the
command in fresh processes and reads each one's peak RSS from `os.wait4`.

Without `--run` it trains a tiny 30-epoch run (width-4 CNN on synthetic data,
about 10 s) into `--work` and fills its cache once with every installed analysis
(several minutes on two cores; kept for later invocations). With `--run RUN` it
measures that run (filled first if `--fill`).

    python bench/bench_cache.py [--repeats 10] [--work /tmp/probe-bench-cache] [--run RUN] [--fill]

Children write bytecode caches (`__pycache__`) like a normal install does, unless
`--no-bytecode` keeps PYTHONDONTWRITEBYTECODE as set.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def analyze(run: Path, env: dict[str, str], quiet: bool = True) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB, output) of one `probe analyze RUN --all --epochs all`
    process."""
    cmd = [sys.executable, "-m", "probe.cli", "analyze", str(run), "--all", "--epochs", "all"] + (
        ["-q"] if quiet else []
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"probe analyze failed ({proc.returncode}):\n{out}")
    return wall, usage.ru_maxrss // 1024, out.strip().splitlines()[-1] if out.strip() else ""


def tiny_run(work: Path, env: dict[str, str]) -> Path:
    """A tiny 30-epoch run, trained in a child process.

    Not in this one: Linux reports a child's peak RSS as at least what the parent
    held when it forked, so this process must stay small (no torch) to measure it.
    """
    run = work / "run30"
    if not (run / "checkpoints" / "epoch_0030.safetensors").exists():
        print(f"training a tiny 30-epoch run into {run} ...", flush=True)
        code = f"from probe.testing import make_tiny_run; make_tiny_run({str(run)!r}, epochs=30)"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", type=Path, default=None, help="an existing run (default: a tiny 30-epoch run)"
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "probe-bench-cache")
    ap.add_argument("--fill", action="store_true", help="compute missing results of --run first")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set"
    )
    args = ap.parse_args()

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    run = args.run or tiny_run(args.work, env)
    if args.run is None or args.fill:
        t0 = time.perf_counter()
        _, _, line = analyze(run, env)
        print(f"fill: {line} ({time.perf_counter() - t0:.0f} s)", flush=True)
    analyze(run, env)  # warm-up: page cache, bytecode
    walls, rss, line = [], [], ""
    for _ in range(args.repeats):
        wall, peak, line = analyze(run, env)
        walls.append(wall)
        rss.append(peak)
    import resource

    import probe

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    if own >= min(rss):
        print(
            f"warning: this process peaked at {own} MB: the children's RSS figures are not theirs "
            "alone"
        )
    epochs = len(list((run / "checkpoints").glob("epoch_*.safetensors")))
    print(
        f"python {platform.python_version()}, probe {probe.__version__}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; run {run} ({epochs} checkpoints)"
    )
    print(f"command: probe analyze RUN --all --epochs all -q  ->  {line}")
    print(
        f"wall  s: median {statistics.median(walls):.3f}  min {min(walls):.3f}  max "
        f"{max(walls):.3f}  ({args.repeats} runs)"
    )
    print(f"peak RSS MB: median {statistics.median(rss):.0f}  max {max(rss)}")
    if "0 computed" not in line or " 0 failed" not in line:
        raise SystemExit("not a full cache hit: see the line above")


if __name__ == "__main__":
    main()
