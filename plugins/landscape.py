"""`landscape`: loss and accuracy surfaces around each epoch's checkpoint.

The seed notebook drew a 21x21 grid along two unnormalised random directions, one
forward pass per point in train mode (each pass overwrote the BatchNorm statistics
of the model it was mapping). Here, on the run's stored un-augmented analysis batch,
in eval mode with the centre checkpoint's statistics (or re-estimated per point),
along `directions`:
- `filter-normalized` (default): Gaussian directions rescaled per output filter to
  the weights' norms, BatchNorm and bias entries zeroed (Li et al., 2018), seeded
  and keyed by parameter name, so every epoch uses the same draw and axes;
- `random`: plain Gaussian directions scaled to the weights' norm;
- `trajectory`: the plane of the top two principal directions of the training path
  through the checkpoints up to the centre epoch, with the path projected onto it
  and the fraction of each step the plane captures.
Numerics: `probe.numerics.landscape` (docs/curvature.md); this plugin picks the images
and directions, evaluates the grid (row pieces on an executor) and stores and draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

MAX_RESOLUTION = 201  # a plane is resolution^2 model evaluations over n_images each
MAX_IMAGES = 100_000

DIRECTIONS = ("filter-normalized", "random", "trajectory")


@dataclass(frozen=True)
class Params:
    directions: str = probe.param(
        "filter-normalized", "Directions of the plane (or line).", choices=DIRECTIONS
    )
    dims: int = probe.param(
        2, "1: a line, 2: a plane (trajectory is always a plane).", choices=(1, 2)
    )
    span: float = probe.param(
        1.0, "The grid covers [-span, span] along each random direction.", min=1e-6, max=1e6
    )
    resolution: int = probe.param(
        21,
        "Grid points per direction (a plane costs resolution^2 evaluations).",
        min=2,
        max=MAX_RESOLUTION,
    )
    seed: int = probe.param(0, "Seed of the random directions (recorded).", min=0, max=2**32 - 1)
    margin: float = probe.param(
        0.25,
        "trajectory: extra room around the path, as a fraction of its extent.",
        min=0.0,
        max=100.0,
    )
    mean_center: bool = probe.param(
        False, "trajectory: subtract the mean displacement before the PCA (as Li et al.'s code)."
    )
    n_images: int = probe.param(
        1024,
        "Images per batch, in order from the start of the stored analysis batch.",
        min=1,
        max=MAX_IMAGES,
    )
    batches: int = probe.param(
        1,
        "Centre loss on this many disjoint batches of n_images (mean, s.e., each batch); "
        "the grid uses all of them combined.",
        min=1,
        max=1000,
    )
    batch_size: int = probe.param(1024, "Images per forward pass.", min=1, max=MAX_IMAGES)
    bn: str = probe.param(
        "frozen",
        "BatchNorm: centre's statistics (frozen) or re-estimated per point.",
        choices=("frozen", "recalibrate"),
    )
    calib_images: int = probe.param(
        256,
        "With bn=recalibrate: images (the analysis batch's last ones) used to "
        "re-estimate the statistics.",
        min=2,
        max=MAX_IMAGES,
    )
    rows_per_piece: int = probe.param(
        1,
        "With `probe analyze --workers/--dask-workers/--scheduler`: grid rows per "
        "piece sent to the executor.",
        min=1,
        max=MAX_RESOLUTION,
    )


def _surface_config(p: Params):
    """How each grid point is evaluated (`probe.numerics.SurfaceConfig`)."""
    from probe.numerics import SurfaceConfig

    return SurfaceConfig(bn=p.bn, batch_size=p.batch_size)


def _surface(ctx: probe.Context, model, x, y, calib, dirs, *, span, span_y=None, p):
    """`probe.numerics.surface`, or the same grid row by row on the executor when there is one."""
    import functools

    import numpy as np

    from probe.numerics import Surface, check_finite, grid, surface, surface_rows

    cfg = _surface_config(p)
    if ctx.executor is None or len(dirs.axes) == 1:
        return surface(
            model, x, y, dirs, cfg, span=span, span_y=span_y, resolution=p.resolution, calib_x=calib
        )
    alpha, beta = grid(span, p.resolution), grid(span_y or span, p.resolution)
    c_loss, c_acc = surface_rows(
        model, x, y, dirs, np.zeros(1), np.zeros(1), [0], cfg, calib_x=calib
    )
    check_finite(float(c_loss[0, 0]))
    piece = functools.partial(
        surface_rows, model, x, y, dirs, alpha, beta, config=cfg, calib_x=calib
    )
    blocks = [
        list(range(i, min(i + p.rows_per_piece, len(beta))))
        for i in range(0, len(beta), p.rows_per_piece)
    ]
    parts = ctx.map(piece, blocks, "grid rows")
    loss = np.concatenate([lp for lp, _ in parts])
    acc = np.concatenate([ap for _, ap in parts])
    return Surface(
        alpha,
        beta,
        loss,
        acc,
        float(c_loss[0, 0]),
        float(c_acc[0, 0]),
        p.bn,
        dirs.kind,
        dirs.seed,
        len(y),
    )


def _data(ctx: probe.Context, n_images: int, batches: int, calib_images: int, bn: str):
    """The grid's images (all batches combined), the disjoint batches, the calibration images."""
    import torch

    from probe.numerics import split_batches

    batch = ctx.analysis_batch()
    x = batch.normalized(ctx.device)
    calib = x[-calib_images:] if bn == "recalibrate" else None
    # one batch: as before, at most what is stored
    n = min(n_images, len(x)) if batches == 1 else n_images
    parts = split_batches(x, batch.labels, batches, n)
    return torch.cat([xb for xb, _ in parts]), torch.cat([yb for _, yb in parts]), parts, calib


def _center(model, parts, calib, p) -> dict:
    """The centre over the disjoint batches, as attributes of the result (B > 1 only)."""
    from probe.numerics import center_over_batches

    c = center_over_batches(model, parts, _surface_config(p), calib_x=calib)
    return {
        "center_batches": c.batches,
        "center_images_per_batch": c.images_per_batch,
        "center_loss_per_batch": c.loss,
        "center_accuracy_per_batch": c.accuracy,
        "center_loss_batch_mean": c.loss_mean,
        "center_loss_batch_stderr": c.loss_stderr,
        "center_accuracy_batch_mean": c.accuracy_mean,
        "center_accuracy_batch_stderr": c.accuracy_stderr,
        "center_loss_combined": c.combined_loss,
        "center_values_are": f"per batch: the centre on each of {c.batches} disjoint batches of "
        f"{c.images_per_batch}; batch_mean/stderr: over those batches (the variation over "
        f"the data); combined: all {c.batches * c.images_per_batch} images as one batch, "
        f"the images the grid uses",
    }


def cost(p: Params, info: probe.RunInfo) -> list[probe.Cost]:
    """The centre and every grid point: one forward pass of all the grid's images each."""
    points = 1 + p.resolution ** (2 if p.directions == "trajectory" else p.dims)
    n = p.batches * info.images(p.n_images, p.batches)
    out = [probe.Cost(points + (p.batches > 1), "forward", n, note="grid points")]
    if p.bn == "recalibrate":  # each point re-estimates BatchNorm statistics first
        out.append(probe.Cost(points, "forward", min(p.calib_images, info.stored_images)))
    return out


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics import pca_directions, random_directions, require_batchnorm

    p = ctx.params
    model = ctx.model()
    if p.bn != "frozen":
        require_batchnorm(model, f"bn={p.bn}", "bn=frozen")
    x, y, parts, calib = _data(ctx, p.n_images, p.batches, p.calib_images, p.bn)
    common = {
        "directions": p.directions,
        "seed": p.seed,
        "checkpoint_sha256": ctx.checksum(),
        "data": f"analysis batch, first {len(y)} images",
        "center_epoch": ctx.epoch,
        "dtype": "float32",
        **(_center(model, parts, calib, p) if p.batches > 1 else {}),
    }
    if p.directions != "trajectory":
        dirs = random_directions(
            model,
            p.dims,
            kind="filter" if p.directions == "filter-normalized" else "random",
            seed=p.seed,
        )
        s = _surface(ctx, model, x, y, calib, dirs, span=(-p.span, p.span), p=p)
        _save(ctx, s, {**common, "span": p.span}, f"epoch {ctx.epoch}")
        return
    path_epochs = ctx.all_epochs(upto=ctx.epoch)
    if len(path_epochs) < 3:
        raise probe.UsageError(
            "--epochs",
            f"directions=trajectory needs at least 3 complete epochs up to the centre "
            f"epoch {ctx.epoch} (have {len(path_epochs)})",
        )

    class States:  # streams checkpoints from disk; pca_directions reads each one about twice
        def __len__(self) -> int:
            return len(path_epochs)

        def __getitem__(self, i: int):
            return ctx.checkpoint(path_epochs[i]).model_state

    dirs = pca_directions(model, States(), mean_center=p.mean_center)
    lo, hi = dirs.path.min(0), dirs.path.max(0)
    room = p.margin * np.maximum(hi - lo, 1e-12)
    s = _surface(
        ctx,
        model,
        x,
        y,
        calib,
        dirs,
        span=(float(lo[0] - room[0]), float(hi[0] + room[0])),
        span_y=(float(lo[1] - room[1]), float(hi[1] + room[1])),
        p=p,
    )
    extra = {
        **common,
        "path_epochs": path_epochs,
        "explained": dirs.explained.tolist(),
        "mean_center": p.mean_center,
    }
    _save(
        ctx,
        s,
        extra,
        f"trajectory {path_epochs[0]}-{path_epochs[-1]}, centre {ctx.epoch}",
        path=dirs.path,
        captured=dirs.captured,
    )
    ctx.out.scalar("explained_2d", float(dirs.explained.sum()))
    ctx.out.scalar("min_step_captured", float(np.nanmin(dirs.captured)))
    ctx.out.scalar("mean_step_captured", float(np.nanmean(dirs.captured)))


def _save(ctx: probe.Context, s, extra: dict, where: str, path=None, captured=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    name = ctx.analysis.name
    attrs = {
        "bn": s.bn,
        "normalization": s.kind,
        "n_samples": s.n_samples,
        "mode": "eval",
        "layout": "loss[j, i] at (alpha[i], beta[j])",
        **extra,
    }
    arrays = {"alpha": s.alpha, "loss": s.loss, "accuracy": s.accuracy}
    if s.beta is not None:
        arrays["beta"] = s.beta
    if path is not None:
        arrays.update(path=path, captured=captured)
    ctx.out.arrays(name, attrs=attrs, **arrays)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for ax, z, label in ((axes[0], s.loss, "loss"), (axes[1], s.accuracy, "accuracy")):
        spread = extra.get(f"center_{label}_batch_stderr")
        if s.beta is None:
            ax.plot(s.alpha, z, "o-", ms=3)
            ax.axvline(0, color="grey", lw=0.6)
            if spread is not None:
                ax.errorbar(
                    [0.0],
                    [extra[f"center_{label}_batch_mean"]],
                    yerr=[spread],
                    fmt="s",
                    color="tab:red",
                    capsize=4,
                    label=f"centre: mean +- s.e. over {extra['center_batches']} batches",
                )
                ax.legend(fontsize=7)
            ax.set(xlabel="alpha", ylabel=label)
        else:
            finite = np.where(np.isfinite(z), z, np.nan)
            levels = (
                np.geomspace(np.nanmin(finite), np.nanmax(finite), 20)
                if label == "loss" and np.nanmin(finite) > 0
                else 20
            )
            cs = ax.contourf(
                s.alpha,
                s.beta,
                finite,
                levels=levels,
                cmap="viridis" if label == "loss" else "magma",
            )
            fig.colorbar(cs, ax=ax, label=label)
            ax.plot(0, 0, "r*", ms=10)
            if spread is not None:
                ax.text(
                    0.02,
                    0.02,
                    f"centre {label}: {extra[f'center_{label}_batch_mean']:.4g} +- {spread:.2g} "
                    f"(s.e. over {extra['center_batches']} batches)",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.5, "lw": 0},
                )
            if path is not None:
                ax.plot(path[:, 0], path[:, 1], "w.-", lw=1)
                for e, (px, py) in zip(extra["path_epochs"], path, strict=True):
                    ax.annotate(str(e), (px, py), color="white", fontsize=7)
            ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)")
        ax.set_title(f"{label}, {where}")
    note = f"BatchNorm {s.bn}, {s.n_samples} images, eval mode, float32"
    if "center_batches" in extra:
        note += (
            f"; centre loss {extra['center_loss_batch_mean']:.4g} +- "
            f"{extra['center_loss_batch_stderr']:.2g} (mean +- s.e. over {extra['center_batches']} "
            f"disjoint batches of {extra['center_images_per_batch']}; the grid uses all of them "
            "combined)"
        )
    if s.beta is not None:
        fig3 = plt.figure(figsize=(6.5, 5))
        ax3 = fig3.add_subplot(projection="3d")
        A, B = np.meshgrid(s.alpha, s.beta)
        ax3.plot_surface(
            A, B, np.where(np.isfinite(s.loss), s.loss, np.nan), cmap="viridis", linewidth=0
        )
        ax3.set(xlabel="alpha", ylabel="beta", zlabel="loss", title=f"loss surface, {where}")
        ctx.out.figure(
            f"{name}_surface", fig3, caption=f"The same loss grid as a 3-D surface; {note}."
        )
    ctx.out.figure(
        name,
        fig,
        caption=f"Loss (log-spaced contours) and accuracy around the checkpoint (red star); "
        f"{note}. A wide basin around the star means a flat minimum along these directions.",
    )
    ctx.out.scalar("center_loss", s.center_loss)
    ctx.out.scalar("center_accuracy", s.center_accuracy)
    ctx.out.scalar("max_loss", float(np.nanmax(s.loss)))
    if "center_batches" in extra:
        ctx.out.scalar("center_loss_batch_mean", extra["center_loss_batch_mean"])
        ctx.out.scalar("center_loss_batch_stderr", extra["center_loss_batch_stderr"])


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="landscape",
            run=run,
            cost=cost,
            params=Params,
            scope="epoch",
            version="2",
            needs={"model", "checkpoint", "analysis_batch", "trajectory"},
            summary="Loss/accuracy surface along filter-normalised, random or trajectory-PCA "
            "directions, eval mode.",
            report_order=80,
            caption=(
                "Training loss along random filter-normalised directions around the weights; a "
                "wide, flat basin means a minimum robust to weight perturbations."
            ),
        )
    )
