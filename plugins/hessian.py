"""`hessian`: top and bottom Hessian eigenvalues, trace and density across epochs.

The seed notebook ran 10 power iterations on 64 images with the model in train mode
(so each HVP also moved the BatchNorm statistics) and called the result "the top
eigenvalue", whatever its sign. Here, on the run's stored un-augmented analysis
batch, in eval mode: Lanczos (or deflated power iteration) reports the largest (LA)
and smallest (SA) algebraic eigenvalues separately, each with its residual
||Hv - lambda v|| / |lambda| and a converged flag; epochs run in order and each one
starts from the previous epoch's eigenvectors, whose overlap with the new ones is
reported. With `batches=B` every eigenvalue and the trace come per batch, as their
mean and standard error over batches, and for the combined operator (the mean loss over
all B batches); `blocks` adds each layer's diagonal block (top eigenvalue, trace). The
eigenvectors are stored (float32), and every result says what it was computed on.
Another operator plugs in through `HessianConfig(operator=...)`. Numerics:
`probe.numerics.curvature` (docs/curvature.md): this plugin turns its parameters into a
`HessianConfig`, runs `hessian_analysis` per epoch and stores and draws the reports.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import probe
from probe.library.curvature import (  # the parameters and their checks, shared with probe.hessian
    DENSITY_STEPS,
    MAX_BASIS_BYTES,
    MAX_BATCHES,
    MAX_IMAGES,
    MAX_K,
    MAX_STEPS,
    TRACE_SAMPLES,
    check_cost,
    hessian_config,
    select,
)
from probe.library.curvature import HessianParams as Params
from probe.library.curvature_plot import (
    BLOCKS_CAPTION,
    HESSIAN_CAPTION,
    block_figure,
    hessian_figure,
    series,
)

if TYPE_CHECKING:  # torch is imported when a job computes, not when the plugin registers
    from probe.numerics import HessianConfig

__all__ = [
    "DENSITY_STEPS",
    "MAX_BASIS_BYTES",
    "MAX_BATCHES",
    "MAX_IMAGES",
    "MAX_K",
    "MAX_STEPS",
    "TRACE_SAMPLES",
    "Params",
    "check_cost",
    "cost",
    "hessian_config",
    "register_analyses",
    "run",
    "select",
    "series",
]


def cost(p: Params, info: probe.RunInfo) -> probe.Cost:
    """Products of n_images images per job, at most: each solver stops once it converges."""
    b, steps = p.batches, min(p.max_iter, info.n_params)
    lanczos = p.method == "lanczos"  # one Krylov run, then one product per returned pair
    solve = steps + p.top_k + p.smallest if lanczos else p.max_iter * (p.top_k + p.smallest)
    n_blocks = {"none": 0, "layer": info.conv_layers + info.linear_layers + 1}.get(
        p.blocks, len(p.blocks.split(",")) + 1
    )
    per_epoch = b * solve + (b * solve if b > 1 else 0)  # combined, then each batch's if needed
    per_epoch += (p.trace_samples * (b if p.trace_method == "hutchinson" else 1)) + n_blocks * b * (
        steps + 1 if lanczos else p.max_iter
    )
    density = b * p.density_runs * min(p.density_steps, info.n_params)  # the last epoch only
    n = info.images(p.n_images, b)
    return probe.Cost(info.epochs * per_epoch + density, "hvp", n, upto=True, note="products")


def epoch_piece(job: tuple):
    """One epoch's analysis, rebuilt from the run directory: an independent piece for an
    executor."""
    from probe.numerics import hessian_analysis

    run_dir, epoch, device, n, config = job
    run = probe.Run(run_dir)
    batch = run.analysis_batch()
    x, y = batch.normalized(device)[:n], batch.labels[:n]
    return hessian_analysis(run.model(epoch, device), x, y, config)


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics import hessian_analysis, require_batchnorm, standard_error

    p = ctx.params
    first = ctx.model(ctx.epochs[0])
    if p.bn != "eval":
        require_batchnorm(first, f"bn={p.bn}", "bn=eval")
    check_cost(p, sum(w.numel() for w in first.parameters()))
    batch = ctx.analysis_batch()
    n = select(p, len(batch.labels))
    x, y = batch.normalized(ctx.device)[:n], batch.labels[:n]
    train = ctx.config()["train"]
    config = hessian_config(p, float(train.get("weight_decay", 0.0)) if p.weight_decay else 0.0)
    last = ctx.epochs[-1]

    def for_epoch(epoch: int) -> HessianConfig:
        # the density is plotted for the last epoch only: computed there only
        return config if epoch == last else replace(config, density_runs=0)

    rows = []
    if p.warm_start or ctx.executor is None:
        prev, prev_blocks = None, None
        for epoch in ctx.progress(ctx.epochs, "epochs"):
            rep = hessian_analysis(
                ctx.model(epoch),
                x,
                y,
                for_epoch(epoch),
                init=prev if p.warm_start else None,
                block_init=prev_blocks if p.warm_start else None,
            )
            rows.append((epoch, rep))
            prev = rep.eigen[0].vectors
            prev_blocks = {b.name: b.eigen.vectors for b in rep.blocks}
    else:
        ctx.declare_reads(checkpoints=ctx.epochs)  # the pieces load each epoch's model themselves
        jobs = [(str(ctx.run.path), e, ctx.device, n, for_epoch(e)) for e in ctx.epochs]
        rows = list(zip(ctx.epochs, ctx.map(epoch_piece, jobs, "epochs"), strict=True))
    density = rows[-1][1].density
    arrays, attrs = series(rows, p)
    attrs["trace_method"] = p.trace_method
    lrs = {m["epoch"]: m.get("lr") for m in ctx.metrics(ctx.epochs)}
    # The edge of stability (Cohen et al., 2021): gradient descent with step size lr is unstable
    # along directions of curvature above 2/lr; heavy-ball momentum beta moves the threshold to
    # 2(1+beta)/lr. Adam's threshold is on the preconditioned Hessian, so no line is drawn for it.
    opt = train.get("optimizer", "SGD")
    factor = {"SGD": 2.0, "SGD_mom": 2.0 * (1 + float(train.get("momentum", 0.0)))}.get(opt)
    if factor is not None:
        arrays["edge_of_stability"] = np.array(
            [factor / lrs[e] if lrs.get(e) else np.nan for e in arrays["epoch"]]
        )
        attrs["edge_of_stability"] = f"{factor:g}/lr ({opt})"
    if density is not None:
        arrays.update(density_nodes=density.nodes.numpy(), density_weights=density.weights.numpy())
        attrs["density_epoch"] = int(last)
    ctx.out.arrays("hessian", attrs=attrs, **arrays)
    ctx.out.json("hessian", {"epochs": [{"epoch": e, **r.summary()} for e, r in rows], **attrs})
    top_label, other = attrs["top_label"], attrs["bottom_label"] or None
    fig = hessian_figure(arrays, top_label, other, density, p.batches, p.trace_method, p.operator)
    ctx.out.figure("hessian", fig, caption=HESSIAN_CAPTION)
    if "block_top" in arrays:
        ctx.out.figure(
            "hessian_blocks", block_figure(arrays, attrs["block_names"]), caption=BLOCKS_CAPTION
        )
    rep = rows[-1][1]
    over = rep.over_batches(0)
    ctx.out.scalar("top_eigenvalue", float(rep.eigen[0].values[0]))
    ctx.out.scalar("top_label", top_label)
    ctx.out.scalar("top_converged", bool(rep.eigen[0].converged[0]))
    ctx.out.scalar("batches", p.batches)
    ctx.out.scalar("images", rep.n_batches * rep.images_per_batch)
    if p.batches > 1:
        ctx.out.scalar("top_eigenvalue_mean_over_batches", over["mean_over_batches"][0])
        ctx.out.scalar("top_eigenvalue_se", over["se_over_batches"][0])
        ctx.out.scalar("top_eigenvalue_batches_converged", over["n_converged_over_batches"][0])
    if other:
        ctx.out.scalar("bottom_eigenvalue", float(rep.eigen[1].values[0]))
        ctx.out.scalar("bottom_label", other)
    if rep.trace is not None:
        ctx.out.scalar("trace", rep.trace.trace)
        ctx.out.scalar("trace_stderr", rep.trace.stderr)
        ctx.out.scalar("trace_stderr_reliable", rep.trace.stderr_reliable)
        if rep.trace_per_batch:
            ctx.out.scalar("trace_se", standard_error([t.trace for t in rep.trace_per_batch]))
    if rep.blocks:
        sharpest = max(rep.blocks, key=lambda b: float(b.eigen.values[0]))
        ctx.out.scalar("sharpest_block", sharpest.name)
    ctx.out.scalar("hvps_total", int(arrays["hvps"].sum()))


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="hessian",
            run=run,
            params=Params,
            scope="run",
            cost=cost,
            needs={"model", "analysis_batch", "config", "metrics"},
            version="3",
            summary="Largest/smallest Hessian eigenvalues (Lanczos), trace, density and per-layer "
            "blocks per epoch, over one or several batches, warm-started.",
            report_order=70,
            caption=(
                "Top eigenvalues of the loss Hessian on the analysis batch; larger values mean a "
                "sharper minimum, and gradient descent is stable only while the top one stays "
                "below 2/lr."
            ),
            headline={"top_eigenvalue": "top_eig"},
        )
    )
