"""`landscape` and `landscape-pca`: loss and accuracy surfaces around checkpoints.

The seed notebook drew a 21x21 grid along two unnormalised random directions, one
forward pass per point in train mode (each pass overwrote the BatchNorm statistics
of the model it was mapping). Here, on the run's stored un-augmented analysis batch,
in eval mode with the centre checkpoint's statistics (or re-estimated per point):
- `landscape` (per epoch): filter-normalised Gaussian directions (Li et al., 2018),
  seeded and keyed by parameter name, so every epoch uses the same draw;
- `landscape-pca` (over the selected epochs): the plane of the top two principal
  directions of the trajectory through the checkpoints, with the path projected onto
  it and the fraction of each step the plane captures.
Numerics: `probe.landscape` (docs/curvature.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    kind: str = probe.param("filter", "Directions: filter-normalised or plain random Gaussian.",
                            choices=("filter", "random"))
    dims: int = probe.param(2, "1: a line, 2: a plane.", choices=(1, 2))
    span: float = probe.param(1.0, "The grid covers [-span, span] along each direction.", min=1e-6)
    resolution: int = probe.param(21, "Grid points per direction.", min=2)
    seed: int = probe.param(0, "Seed of the directions (recorded).", min=0)
    n_images: int = probe.param(1024, "Images of the stored analysis batch to evaluate (its first ones).", min=1)
    batch_size: int = probe.param(1024, "Images per forward pass.", min=1)
    bn: str = probe.param("frozen", "BatchNorm: centre's statistics (frozen) or re-estimated per point.",
                          choices=("frozen", "recalibrate"))
    calib_images: int = probe.param(256, "With bn=recalibrate: images (the analysis batch's last ones) used to "
                                         "re-estimate the statistics.", min=2)


@dataclass(frozen=True)
class PCAParams:
    resolution: int = probe.param(21, "Grid points per direction.", min=2)
    margin: float = probe.param(0.25, "Extra room around the path, as a fraction of its extent.", min=0.0)
    n_images: int = probe.param(1024, "Images of the stored analysis batch to evaluate (its first ones).", min=1)
    batch_size: int = probe.param(1024, "Images per forward pass.", min=1)
    bn: str = probe.param("frozen", "BatchNorm: centre's statistics (frozen) or re-estimated per point.",
                          choices=("frozen", "recalibrate"))
    calib_images: int = probe.param(256, "With bn=recalibrate: images (the analysis batch's last ones) used to "
                                         "re-estimate the statistics.", min=2)
    mean_center: bool = probe.param(False, "Subtract the mean displacement before the PCA (as Li et al.'s code).")


def _data(ctx: probe.Context, n_images: int, calib_images: int, bn: str):
    batch = ctx.analysis_batch()
    x = batch.normalized(ctx.device)
    calib = x[-calib_images:] if bn == "recalibrate" else None
    return x[:n_images], batch.labels[:n_images], calib


def run(ctx: probe.Context) -> None:
    from probe import landscape as L

    p = ctx.params
    model = ctx.model()
    x, y, calib = _data(ctx, p.n_images, p.calib_images, p.bn)
    dirs = L.random_directions(model, p.dims, kind=p.kind, seed=p.seed)
    s = L.surface(model, x, y, dirs, span=(-p.span, p.span), resolution=p.resolution, bn=p.bn, calib_x=calib,
                  batch_size=p.batch_size)
    _save(ctx, s, {"kind": p.kind, "seed": p.seed, "span": p.span}, f"epoch {ctx.epoch}")


def run_pca(ctx: probe.Context) -> None:
    import numpy as np

    from probe import landscape as L

    p = ctx.params
    if len(ctx.epochs) < 3:
        raise probe.UsageError("--epochs", "landscape-pca needs at least 3 epochs (a trajectory and a centre)")
    model = ctx.model(ctx.epochs[-1])

    class States:  # streams checkpoints from disk; pca_directions reads each one about twice
        def __len__(self) -> int:
            return len(ctx.epochs)

        def __getitem__(self, i: int):
            return ctx.checkpoint(ctx.epochs[i]).model_state

    dirs = L.pca_directions(model, States(), mean_center=p.mean_center)
    lo, hi = dirs.path.min(0), dirs.path.max(0)
    room = p.margin * np.maximum(hi - lo, 1e-12)
    x, y, calib = _data(ctx, p.n_images, p.calib_images, p.bn)
    s = L.surface(model, x, y, dirs, span=(float(lo[0] - room[0]), float(hi[0] + room[0])), resolution=p.resolution,
                  span_y=(float(lo[1] - room[1]), float(hi[1] + room[1])), bn=p.bn, calib_x=calib,
                  batch_size=p.batch_size)
    extra = {"path_epochs": ctx.epochs, "explained": dirs.explained.tolist(), "mean_center": p.mean_center}
    _save(ctx, s, extra, f"epochs {ctx.epochs[0]}-{ctx.epochs[-1]}, centre {ctx.epochs[-1]}",
          path=dirs.path, captured=dirs.captured)
    ctx.out.scalar("explained_2d", float(dirs.explained.sum()))
    ctx.out.scalar("min_step_captured", float(np.nanmin(dirs.captured)))


def _save(ctx: probe.Context, s, extra: dict, where: str, path=None, captured=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    name = ctx.analysis.name
    attrs = {"bn": s.bn, "kind": s.kind, "n_samples": s.n_samples, "mode": "eval",
             "layout": "loss[j, i] at (alpha[i], beta[j])", **extra}
    arrays = {"alpha": s.alpha, "loss": s.loss, "accuracy": s.accuracy}
    if s.beta is not None:
        arrays["beta"] = s.beta
    if path is not None:
        arrays.update(path=path, captured=captured)
    ctx.out.arrays(name, attrs=attrs, **arrays)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for ax, z, label in ((axes[0], s.loss, "loss"), (axes[1], s.accuracy, "accuracy")):
        if s.beta is None:
            ax.plot(s.alpha, z, "o-", ms=3)
            ax.axvline(0, color="grey", lw=0.6)
            ax.set(xlabel="alpha", ylabel=label)
        else:
            finite = np.where(np.isfinite(z), z, np.nan)
            levels = np.geomspace(np.nanmin(finite), np.nanmax(finite), 20) if label == "loss" and \
                np.nanmin(finite) > 0 else 20
            cs = ax.contourf(s.alpha, s.beta, finite, levels=levels, cmap="viridis" if label == "loss" else "magma")
            fig.colorbar(cs, ax=ax, label=label)
            ax.plot(0, 0, "r*", ms=10)
            if path is not None:
                ax.plot(path[:, 0], path[:, 1], "w.-", lw=1)
                for e, (px, py) in zip(extra["path_epochs"], path, strict=True):
                    ax.annotate(str(e), (px, py), color="white", fontsize=7)
            ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)")
        ax.set_title(f"{label}, {where}")
    note = f"BatchNorm {s.bn}, {s.n_samples} images, eval mode"
    ctx.out.figure(name, fig, caption=f"Loss (log-spaced contours) and accuracy around the checkpoint (red star); "
                   f"{note}. A wide basin around the star means a flat minimum along these directions.")
    ctx.out.scalar("center_loss", s.center_loss)
    ctx.out.scalar("center_accuracy", s.center_accuracy)
    ctx.out.scalar("max_loss", float(np.nanmax(s.loss)))


@probe.hookimpl
def register_analyses(register) -> None:
    register(probe.Analysis(
        name="landscape", run=run, params=Params, scope="epoch", needs={"model", "analysis_batch"},
        summary="Loss/accuracy surface along seeded filter-normalised directions (Li et al.), eval mode.",
    ))
    register(probe.Analysis(
        name="landscape-pca", run=run_pca, params=PCAParams, scope="run",
        needs={"model", "checkpoint", "analysis_batch"},
        summary="Loss surface on the PCA plane of the training trajectory, with the projected path.",
    ))
