"""`interpolation`: loss and accuracy along straight lines between checkpoints, and their barriers.

For every selected epoch e, on the run's stored un-augmented analysis batch, in eval mode:
- from the initialisation (epoch 0) to e (Goodfellow, Vinyals & Saxe 2015): does the loss
  fall monotonically along the straight line the optimiser could have taken?
- from the previous complete epoch to e: is one epoch's step a straight descent, or does
  it cross a ridge?
Each segment's barrier is the largest rise of the loss (and of the error) above the
straight line between its endpoint values (the linear-mode-connectivity barrier of
Frankle et al. 2020), on a grid of `points` alphas. BatchNorm statistics are either
interpolated with the weights as stored (`bn=kept`: the endpoints are the checkpoints'
own eval losses) or re-estimated at every point on the stored batch (`bn=recalibrate`;
the checkpoints are never touched); the result says which.

Between the final weights of two runs that differ only in seed (Frankle et al.'s
instability test) the same computation applies, as
`probe.numerics.interpolation.linear_mode_barrier(model, state_a, state_b, x, y)`; an
analysis of one run reads only that run through its Context, so that part is the sweep
command `probe barrier SWEEP_DIR`, and the result says so. Numerics:
`probe.numerics.interpolation` (docs/dynamics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

MAX_IMAGES = 100_000
CROSS_RUN = {
    "status": "probe barrier",
    "why": "a run-scope analysis reads only its own run through probe.Context; the barrier "
    "between two seeds' final weights needs a second run's checkpoint",
    "how": "probe barrier SWEEP_DIR [--bn kept|recalibrate] pairs the sweep's runs that differ "
    "only in seed and writes SWEEP_DIR/barriers.json (the same numerics: "
    "probe.numerics.interpolation.linear_mode_barrier)",
}


@dataclass(frozen=True)
class Params:
    points: int = probe.param(
        11, "Alphas per segment, evenly spaced on [0, 1], both ends included.", min=2, max=1001
    )
    bn: str = probe.param(
        "kept",
        "BatchNorm statistics along the path: interpolated as stored (kept) or re-estimated "
        "at every point on the stored batch (recalibrate).",
        choices=("kept", "recalibrate"),
    )
    n_images: int = probe.param(
        1024,
        "Images evaluated, from the start of the stored analysis batch (a smaller stored "
        "batch is used whole).",
        min=1,
        max=MAX_IMAGES,
    )
    calib_images: int = probe.param(
        256,
        "With bn=recalibrate: images (the analysis batch's last ones) the statistics are "
        "re-estimated on.",
        min=2,
        max=MAX_IMAGES,
    )
    batch_size: int = probe.param(256, "Images per forward pass.", min=1, max=MAX_IMAGES)
    segments: str = probe.param(
        "both",
        "Which segments: init (epoch 0 -> e), consecutive (previous epoch -> e) or both.",
        choices=("init", "consecutive", "both"),
    )


def plan(ctx: probe.Context, epochs: list[int], which: str) -> list[tuple[str, int, int]]:
    """(kind, from, to) segments; a consecutive segment from epoch 0 is the init one, kept once."""
    out: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for e in epochs:
        previous = [x for x in ctx.all_epochs(upto=e) if x < e]
        if which in ("init", "both") and e > 0 and 0 in previous:
            out.append(("init", 0, e))
            seen.add((0, e))
        if which in ("consecutive", "both") and previous and (previous[-1], e) not in seen:
            out.append(("consecutive", previous[-1], e))
            seen.add((previous[-1], e))
    return out


def run(ctx: probe.Context) -> None:
    import torch

    from probe.numerics import interpolation as I
    from probe.numerics import require_batchnorm

    p = ctx.params
    segments = plan(ctx, list(ctx.epochs), p.segments)
    if not segments:
        raise probe.Skip(
            f"no segment to interpolate among epochs {list(ctx.epochs)}: select an epoch after "
            "another complete one (epoch 0 is the initialisation)"
        )
    model = ctx.model(segments[0][2])
    if p.bn == "recalibrate":
        require_batchnorm(model, "bn=recalibrate", "bn=kept")
    batch = ctx.analysis_batch()
    images = batch.normalized(ctx.device)
    n = min(p.n_images, len(images))
    x, y = images[:n], batch.labels[:n].to(ctx.device)
    calib = images[-p.calib_images :] if p.bn == "recalibrate" else None
    cache: dict[int, dict[str, torch.Tensor]] = {}  # epoch 0 and the segment's ends
    results = []
    for kind, a, b in ctx.progress(segments, "segments", total=len(segments)):
        cache = {e: s for e, s in cache.items() if e in (0, a, b)}
        for e in (a, b):
            if e not in cache:
                cache[e] = ctx.checkpoint(e).model_state
        seg = I.interpolation_path(
            model,
            cache[a],
            cache[b],
            x,
            y,
            alphas=I.alpha_grid(p.points),
            bn=p.bn,
            calib_x=calib,
            batch_size=p.batch_size,
        )
        results.append((kind, a, b, seg))
    overlap = calib is not None and len(images) - len(calib) < n
    _write(ctx, results, n, len(calib) if calib is not None else 0, overlap)


def _write(ctx: probe.Context, results: list, n: int, n_calib: int, overlap: bool) -> None:
    import numpy as np

    p = ctx.params
    computed_on = {
        "data": f"the run's stored un-augmented analysis batch, first {n} images",
        "mode": "eval (dropout off)",
        "bn": p.bn,
        "bn_meaning": "running statistics interpolated with the weights as stored (kept)"
        if p.bn == "kept"
        else f"running statistics re-estimated at every alpha on the last {n_calib} stored "
        f"images{' (overlapping the evaluated ones)' if overlap else ''}, checkpoints untouched",
        "points": p.points,
        "barrier": "max over the grid of loss(alpha) - [(1 - alpha) loss(0) + alpha loss(1)] "
        "(the same for the error); a lower bound of the maximum over the whole segment",
        "dtype": "float32",
    }
    rows = [
        {
            "kind": kind,
            "from_epoch": a,
            "to_epoch": b,
            "loss": seg.loss,
            "accuracy": seg.accuracy,
            "loss_barrier": seg.loss_barrier,
            "loss_barrier_alpha": seg.loss_barrier_alpha,
            "error_barrier": seg.error_barrier,
            "error_barrier_alpha": seg.error_barrier_alpha,
            "error_barrier_frankle": seg.error_barrier_mean,
            "monotonic": seg.monotonic,
        }
        for kind, a, b, seg in results
    ]
    alphas = results[0][3].alphas
    ctx.out.json(
        "interpolation",
        {"alphas": alphas, "computed_on": computed_on, "segments": rows, "cross_run": CROSS_RUN},
    )
    ctx.out.arrays(
        "interpolation",
        attrs={**computed_on, "cross_run": CROSS_RUN["status"]},
        alphas=alphas,
        kind=np.array([r["kind"] for r in rows], dtype="S11"),
        from_epoch=np.array([r["from_epoch"] for r in rows]),
        to_epoch=np.array([r["to_epoch"] for r in rows]),
        loss=np.array([r["loss"] for r in rows]),
        accuracy=np.array([r["accuracy"] for r in rows]),
        loss_barrier=np.array([r["loss_barrier"] for r in rows]),
        error_barrier=np.array([r["error_barrier"] for r in rows]),
    )
    init = [r for r in rows if r["kind"] == "init"]
    steps = [r for r in rows if r["kind"] == "consecutive" or r["from_epoch"] == 0]
    if init:
        ctx.out.scalar("init_barrier", init[-1]["loss_barrier"])
        ctx.out.scalar("init_error_barrier", init[-1]["error_barrier"])
        ctx.out.scalar("init_monotonic", init[-1]["monotonic"])
    if steps:
        ctx.out.scalar("step_barrier", steps[-1]["loss_barrier"])
        ctx.out.scalar("step_barrier_max", max(r["loss_barrier"] for r in steps))
    ctx.out.scalar("bn", p.bn)
    _figure(ctx, alphas, init, steps)


def _figure(ctx: probe.Context, alphas, init: list, steps: list) -> None:
    from matplotlib.ticker import MaxNLocator

    plt = ctx.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    paths = init or steps
    last = max(r["to_epoch"] for r in paths)
    for r in paths:
        label = f"{r['from_epoch']} -> {r['to_epoch']}"
        colour = cmap(r["to_epoch"] / max(1, last))
        axes[0].plot(alphas, r["loss"], "o-", ms=2.5, color=colour, label=label)
        axes[1].plot(alphas, r["accuracy"], "o-", ms=2.5, color=colour, label=label)
    what = "initialisation -> epoch" if init else "previous epoch -> epoch"
    axes[0].set(xlabel="alpha", ylabel="loss", title=f"loss along {what}")
    axes[1].set(xlabel="alpha", ylabel="accuracy", title=f"accuracy along {what}")
    axes[0].legend(fontsize=6, ncols=2 if len(paths) > 12 else 1)
    ax = axes[2]
    for rows, marker, label in (
        (init, "o-", "init -> epoch"),
        (steps, "s--", "epoch - 1 -> epoch"),
    ):
        if rows:
            ax.plot(
                [r["to_epoch"] for r in rows],
                [r["loss_barrier"] for r in rows],
                marker,
                ms=3,
                label=label,
            )
    ax.set(xlabel="epoch", ylabel="loss barrier", title="barrier (max rise above the chord)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    ctx.out.figure(
        "interpolation",
        fig,
        caption=f"Loss and accuracy on the stored batch along straight lines between checkpoints "
        f"(eval mode, BatchNorm statistics {ctx.params.bn}), and each segment's barrier: the "
        "largest rise of the loss above the straight line between its endpoint losses "
        "(0: linearly connected).",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="interpolation",
            run=run,
            params=Params,
            scope="run",
            needs={"model", "checkpoint", "analysis_batch"},
            summary="Loss/accuracy along straight lines from the initialisation and from the "
            "previous epoch to each epoch, with linear-mode-connectivity barriers.",
            report_order=170,
            caption=(
                "Loss along straight lines between checkpoints; a barrier above 0 means the loss "
                "rises above the chord between the endpoints."
            ),
            headline={"init_barrier": "init_barrier"},
        )
    )
