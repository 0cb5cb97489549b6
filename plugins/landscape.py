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

import probe
from probe.library.surface import (  # the parameters and steps, shared with probe.landscape
    DIRECTIONS,
    MAX_IMAGES,
    MAX_RESOLUTION,
    center_attrs,
    landscape_caption,
    landscape_figures,
    landscape_record,
    split_data,
    surface_caption,
    surface_config,
)
from probe.library.surface import LandscapeParams as Params

__all__ = ["DIRECTIONS", "MAX_IMAGES", "MAX_RESOLUTION", "Params", "register_analyses", "run"]


def _surface(ctx: probe.Context, model, x, y, calib, dirs, *, span, span_y=None, p):
    """`probe.numerics.surface`, or the same grid row by row on the executor when there is one."""
    import functools

    import numpy as np

    from probe.numerics import Surface, check_finite, grid, surface, surface_rows

    cfg = surface_config(p)
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


def _data(ctx: probe.Context, p: Params):
    """The grid's images (all batches combined), the disjoint batches, the calibration images."""
    batch = ctx.analysis_batch()
    return split_data(batch.normalized(ctx.device), batch.labels, p)


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
    x, y, parts, calib = _data(ctx, p)
    common = {
        "directions": p.directions,
        "seed": p.seed,
        "checkpoint_sha256": ctx.checksum(),
        "data": f"analysis batch, first {len(y)} images",
        "center_epoch": ctx.epoch,
        "dtype": "float32",
        **(center_attrs(model, parts, calib, p) if p.batches > 1 else {}),
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


def _save(ctx: probe.Context, s, extra: dict, where: str, path=None, captured=None) -> None:
    name = ctx.analysis.name
    attrs, arrays, scalars = landscape_record(s, extra, path, captured)
    ctx.out.arrays(name, attrs=attrs, **arrays)
    fig, fig3, note = landscape_figures(s, extra, where, path)
    if fig3 is not None:
        ctx.out.figure(f"{name}_surface", fig3, caption=surface_caption(note))
    ctx.out.figure(name, fig, caption=landscape_caption(note))
    for key, value in scalars.items():
        ctx.out.scalar(key, value)


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
