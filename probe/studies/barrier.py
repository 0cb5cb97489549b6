"""`probe barrier`: the loss barrier between the final weights of sweep runs that differ only in
seed.

Frankle et al. (2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis") call
two trainings of one network from different seeds linearly connected when the loss along
the straight line between their final weights never rises above the straight line between
the two end losses. An analysis of one run reads only that run, so this question lives with
the sweep: the runs of a sweep whose configs are equal but for `seed` form a group; the
first run of each group (grid order) is paired with each other one, and every pair's path
is evaluated with `probe.numerics.interpolation.linear_mode_barrier` on the first run's
stored, un-augmented analysis batch (training images), in eval mode, with BatchNorm
statistics interpolated as stored (`kept`) or re-estimated on that batch at every point
(`recalibrate`).

The result goes to SWEEP/barriers.json (written atomically; probe's own file, rewritten by
the next call) and is printed as a table. Every input is a run directory of the sweep, read
through `probe.rundir.Run` with the same bounds and checks as `probe analyze`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from probe.errors import ProbeError, UsageError
from probe.io import atomic
from probe.io.jsonsafe import jsonable
from probe.numerics.device import device_string
from probe.rundir.readers import SWEEP_FILE
from probe.rundir.run import Run
from probe.studies.rows import RunRow, read_sweep

BARRIERS_FILE = "barriers.json"
FORMAT = "probe-barriers/1"
# Keys that say where or how a run was computed, not which network it trained.
NOT_THE_NETWORK = ("seed", "data", "device")


@dataclass(frozen=True)
class Pair:
    """Two finished runs of one group (equal configs but for the seed) and the epoch compared."""

    group: dict[str, Any]  # the swept values the two runs share
    a: RunRow
    b: RunRow
    epoch: int


def seed_pairs(rows: list[RunRow], epoch: int | None = None) -> list[Pair]:
    """Pair the first run of every seed group with each other run of the group.

    `epoch` None compares the last epoch both runs have checkpoints of."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        if row.state in ("not started", "damaged", "failed") or not row.started:
            continue
        key = repr(sorted((k, repr(v)) for k, v in row.config.items() if k not in NOT_THE_NETWORK))
        groups.setdefault(key, []).append(row)
    pairs = []
    for members in groups.values():
        first = members[0]
        for other in members[1:]:
            if other.config.get("seed") == first.config.get("seed"):
                continue  # the same seed twice: a copy, not a second training
            common = sorted(set(Run(first.path).epochs()) & set(Run(other.path).epochs()))
            if epoch is not None:
                common = [e for e in common if e == epoch]
            if not common:
                continue
            shared = {k: v for k, v in first.config.items() if k not in NOT_THE_NETWORK}
            pairs.append(Pair(shared, first, other, common[-1]))
    return pairs


def pair_barrier(
    pair: Pair, *, bn: str, n_images: int, points: int, calib_images: int, device: str
) -> dict[str, Any]:
    """Evaluate one pair's path; returns the JSON row of barriers.json."""
    from probe.numerics.interpolation import linear_mode_barrier  # torch: only when computing

    run_a, run_b = Run(pair.a.path), Run(pair.b.path)
    ckpt_a, ckpt_b = run_a.load_checkpoint(pair.epoch), run_b.load_checkpoint(pair.epoch)
    state_a, state_b = ckpt_a.model_state, ckpt_b.model_state
    if list(state_a) != list(state_b) or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise ProbeError(
            f"{pair.b.path}: its weights do not have the shapes of {pair.a.path}'s "
            "(the runs are not one architecture)"
        )
    batch = run_a.analysis_batch()
    x_all = batch.normalized(device)
    y_all = batch.labels.to(device)
    n = min(n_images, len(y_all))
    calib = x_all[-min(calib_images, len(y_all)) :] if bn == "recalibrate" else None
    model = ckpt_a.build_model(device)
    seg = linear_mode_barrier(
        model, state_a, state_b, x_all[:n], y_all[:n], points=points, bn=bn, calib_x=calib
    )
    return {
        "a": pair.a.label,
        "b": pair.b.label,
        "seed_a": pair.a.config.get("seed"),
        "seed_b": pair.b.config.get("seed"),
        "epoch": pair.epoch,
        "group": pair.group,
        "loss_barrier": seg.loss_barrier,
        "loss_barrier_alpha": seg.loss_barrier_alpha,
        "error_barrier": seg.error_barrier,
        "error_barrier_mean": seg.error_barrier_mean,
        "loss_a": float(seg.loss[0]),
        "loss_b": float(seg.loss[-1]),
        "alphas": seg.alphas.tolist(),
        "loss": seg.loss.tolist(),
        "accuracy": seg.accuracy.tolist(),
        "n_images": seg.n_images,
        "bn": seg.bn,
    }


def barriers(
    sweep_dir: Path,
    *,
    epoch: int | None = None,
    bn: str = "kept",
    n_images: int = 1024,
    points: int = 11,
    calib_images: int = 256,
    device: str = "cpu",
    echo: Any = click.echo,
) -> dict[str, Any]:
    """Compute every seed pair's barrier in `sweep_dir`, write barriers.json, return its content."""
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise UsageError("SWEEP", f"{sweep_dir}: not a sweep directory (no {SWEEP_FILE})")
    rows, _ = read_sweep(sweep_dir, warn=lambda line: echo(f"warning: {line}", err=True))
    pairs = seed_pairs(rows, epoch)
    if not pairs:
        at = f" with a checkpoint of epoch {epoch} in both" if epoch is not None else ""
        raise UsageError(
            "SWEEP",
            f"{sweep_dir}: no two finished runs differ only in seed{at} "
            "(add e.g. seed = [0, 1] to the sweep's [grid])",
        )
    out = []
    for i, pair in enumerate(pairs, 1):
        t0 = time.perf_counter()
        row = pair_barrier(
            pair, bn=bn, n_images=n_images, points=points, calib_images=calib_images, device=device
        )
        out.append(row)
        echo(
            f"[{i}/{len(pairs)}] {row['a']} ~ {row['b']} (epoch {row['epoch']}): "
            f"loss barrier {row['loss_barrier']:.4g}, error barrier {row['error_barrier']:.4g} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    result = {
        "format": FORMAT,
        "what": "loss barrier of linear mode connectivity between runs that differ only in seed "
        "(Frankle et al. 2020), on the first run's stored analysis batch, eval mode",
        "bn": bn,
        "points": points,
        "pairs": out,
    }
    atomic.write_json(sweep_dir / BARRIERS_FILE, jsonable(result))
    return result


@click.command("barrier")
@click.argument("sweep_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--epoch", type=click.IntRange(0), help="Epoch compared [default: the last both have]."
)
@click.option(
    "--bn",
    type=click.Choice(["kept", "recalibrate"]),
    default="kept",
    show_default=True,
    help="BatchNorm statistics along the path: interpolated as stored, or re-estimated at "
    "every point on the stored batch.",
)
@click.option(
    "--n-images",
    type=click.IntRange(1, 100_000),
    default=1024,
    show_default=True,
    help="Images of the stored analysis batch evaluated.",
)
@click.option(
    "--points",
    type=click.IntRange(2, 1001),
    default=11,
    show_default=True,
    help="Points on the path, both ends included.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
def barrier_command(
    sweep_dir: Path, epoch: int | None, bn: str, n_images: int, points: int, device: str
) -> None:
    """Loss barrier between runs of a sweep that differ only in seed (linear mode connectivity).

    probe sweep examples/studies/seeds.toml --out sweeps/seeds
    probe barrier sweeps/seeds

    Runs whose configs are equal but for the seed form a group; the first is paired with
    each other one, at the last epoch both have. Writes SWEEP_DIR/barriers.json.
    """
    barriers(
        sweep_dir,
        epoch=epoch,
        bn=bn,
        n_images=n_images,
        points=points,
        device=device_string(device),
    )
