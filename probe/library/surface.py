"""`probe.landscape`: the landscape analysis's parameters, its data split, figures and the
in-process call.

`LandscapeParams` is the one definition of the parameters of `probe analyze -p landscape` and
`probe.landscape(model, batch, **params)`; `surface_config`, `split_data`, `center_attrs`,
`landscape_record` and `landscape_figures` are the steps both take, so a grid on the same
model, images and parameters gives the same numbers and the same figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.errors import UsageError
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "DIRECTIONS",
    "LandscapeParams",
    "LandscapeResult",
    "center_attrs",
    "landscape",
    "landscape_caption",
    "landscape_figures",
    "landscape_record",
    "split_data",
    "surface_caption",
    "surface_config",
]

MAX_RESOLUTION = 201  # a plane is resolution^2 model evaluations over n_images each
MAX_IMAGES = 100_000

DIRECTIONS = ("filter-normalized", "random", "trajectory")


@dataclass(frozen=True)
class LandscapeParams:
    """The parameters of the landscape analysis and of `probe.landscape`."""

    directions: str = param(
        "filter-normalized", "Directions of the plane (or line).", choices=DIRECTIONS
    )
    dims: int = param(2, "1: a line, 2: a plane (trajectory is always a plane).", choices=(1, 2))
    span: float = param(
        1.0, "The grid covers [-span, span] along each random direction.", min=1e-6, max=1e6
    )
    resolution: int = param(
        21,
        "Grid points per direction (a plane costs resolution^2 evaluations).",
        min=2,
        max=MAX_RESOLUTION,
    )
    seed: int = param(0, "Seed of the random directions (recorded).", min=0, max=2**32 - 1)
    margin: float = param(
        0.25,
        "trajectory: extra room around the path, as a fraction of its extent.",
        min=0.0,
        max=100.0,
    )
    mean_center: bool = param(
        False, "trajectory: subtract the mean displacement before the PCA (as Li et al.'s code)."
    )
    n_images: int = param(
        1024,
        "Images per batch, in order from the start of the stored analysis batch.",
        min=1,
        max=MAX_IMAGES,
    )
    batches: int = param(
        1,
        "Centre loss on this many disjoint batches of n_images (mean, s.e., each batch); "
        "the grid uses all of them combined.",
        min=1,
        max=1000,
    )
    batch_size: int = param(1024, "Images per forward pass.", min=1, max=MAX_IMAGES)
    bn: str = param(
        "frozen",
        "BatchNorm: centre's statistics (frozen) or re-estimated per point.",
        choices=("frozen", "recalibrate"),
    )
    calib_images: int = param(
        256,
        "With bn=recalibrate: images (the analysis batch's last ones) used to "
        "re-estimate the statistics.",
        min=2,
        max=MAX_IMAGES,
    )
    rows_per_piece: int = param(
        1,
        "With `probe analyze --workers/--dask-workers/--scheduler`: grid rows per "
        "piece sent to the executor.",
        min=1,
        max=MAX_RESOLUTION,
    )


def surface_config(p: LandscapeParams, loss: Any = None) -> Any:
    """How each grid point is evaluated (`probe.numerics.SurfaceConfig`; `loss`: the mean loss
    of (logits, y), default cross-entropy)."""

    return numerics.SurfaceConfig(bn=p.bn, batch_size=p.batch_size, loss_fn=loss)


def split_data(x: Any, y: Any, p: LandscapeParams) -> tuple[Any, Any, list, Any]:
    """The grid's images (all batches combined), the disjoint batches, and the calibration
    images (bn=recalibrate: the last `calib_images` of `x`)."""
    import torch

    calib = x[-p.calib_images :] if p.bn == "recalibrate" else None
    # one batch: as before, at most what is stored
    n = min(p.n_images, len(x)) if p.batches == 1 else p.n_images
    parts = numerics.split_batches(x, y, p.batches, n)
    return torch.cat([xb for xb, _ in parts]), torch.cat([yb for _, yb in parts]), parts, calib


def center_attrs(model: Any, parts: list, calib: Any, p: LandscapeParams, loss: Any = None) -> dict:
    """The centre over the disjoint batches, as attributes of the result (B > 1 only)."""

    c = numerics.center_over_batches(model, parts, surface_config(p, loss), calib_x=calib)
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


def landscape_record(
    s: Any, extra: dict, path: Any = None, captured: Any = None
) -> tuple[dict, dict, dict]:
    """The attributes and arrays the landscape plugin stores (landscape.h5) and its scalars."""
    import numpy as np

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
    scalars = {
        "center_loss": s.center_loss,
        "center_accuracy": s.center_accuracy,
        "max_loss": float(np.nanmax(s.loss)),
    }
    if "center_batches" in extra:
        scalars["center_loss_batch_mean"] = extra["center_loss_batch_mean"]
        scalars["center_loss_batch_stderr"] = extra["center_loss_batch_stderr"]
    if path is not None:
        scalars.update(
            explained_2d=float(np.sum(extra["explained"])),
            min_step_captured=float(np.nanmin(captured)),
            mean_step_captured=float(np.nanmean(captured)),
        )
    return attrs, arrays, scalars


def landscape_figures(
    s: Any, extra: dict, where: str, path: Any = None
) -> tuple[Figure, Figure | None, str]:
    """The plugin's loss/accuracy figure, the 3-D loss surface of a plane (None for a line), and
    the note their captions share."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), constrained_layout=True)
    axes = fig.subplots(1, 2)
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
                steps = extra.get("path_epochs", range(len(path)))  # epochs, or path indices
                for e, (px, py) in zip(steps, path, strict=True):
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
    fig3 = None
    if s.beta is not None:
        fig3 = Figure(figsize=(6.5, 5))
        ax3 = fig3.add_subplot(projection="3d")
        A, B = np.meshgrid(s.alpha, s.beta)
        ax3.plot_surface(
            A, B, np.where(np.isfinite(s.loss), s.loss, np.nan), cmap="viridis", linewidth=0
        )
        ax3.set(xlabel="alpha", ylabel="beta", zlabel="loss", title=f"loss surface, {where}")
    return fig, fig3, note


def surface_caption(note: str) -> str:
    return f"The same loss grid as a 3-D surface; {note}."


def landscape_caption(note: str) -> str:
    return (
        f"Loss (log-spaced contours) and accuracy around the checkpoint (red star); "
        f"{note}. A wide basin around the star means a flat minimum along these directions."
    )


@dataclass(frozen=True, repr=False)
class LandscapeResult(Result):
    """A loss/accuracy grid around the model's weights: the centre's loss and accuracy (the
    plain loss of the model on the images), the largest loss on the grid, and with batches > 1
    the centre's mean and standard error over the disjoint batches."""

    analysis = "landscape"

    center_loss: float
    center_accuracy: float
    max_loss: float
    directions: str
    dims: int
    images: int
    center_loss_batch_mean: float | None = None
    center_loss_batch_stderr: float | None = None
    params: LandscapeParams = field(repr=False, default_factory=LandscapeParams)
    surface: Any = field(repr=False, compare=False, default=None)
    extra: dict = field(repr=False, compare=False, default_factory=dict)

    def _draw(self) -> Figure:
        path = self.data.get("path")
        return landscape_figures(self.surface, self.extra, self.params.directions, path)[0]


def landscape(
    model: nn.Module, batch: Any, *, loss: Any = None, path: Any = None, **params: Any
) -> LandscapeResult:
    """The loss and accuracy of `model` on a line or plane of weights around its own, with the
    parameters and defaults of `probe analyze -p landscape` (eval mode; the model unchanged).

    `batch`: (x, y) tensors or an iterable of them: the first batches * n_images images (and,
    with bn=recalibrate, `calib_images` more, the last of which re-estimate the statistics).
    `loss(logits, y)`: the mean loss (default cross-entropy). directions=trajectory needs `path`:
    the training path as a list of at least 3 state dicts (checkpoints up to this model).
    """
    import numpy as np

    from probe.library.batch import as_batch, check_loss, untouched

    p = make(LandscapeParams, params, "landscape")
    check_loss(loss)
    if p.directions == "trajectory" and (path is None or len(path) < 3):
        raise UsageError("path", "directions=trajectory needs path=[state_dict, ...] (>= 3)")
    with untouched(model):
        if p.bn != "frozen":
            numerics.require_batchnorm(model, f"bn={p.bn}", "bn=frozen")
        limit = p.batches * p.n_images + (p.calib_images if p.bn == "recalibrate" else 0)
        x, y, parts, calib = split_data(*as_batch(batch, limit), p)
        first = next(model.parameters())
        x, y = x.to(first.device), y.to(first.device)
        parts = [(xb.to(first.device), yb.to(first.device)) for xb, yb in parts]
        calib = None if calib is None else calib.to(first.device)
        extra = {"directions": p.directions, "seed": p.seed, "dtype": "float32"}
        if p.batches > 1:
            extra.update(center_attrs(model, parts, calib, p, loss))
        cfg = surface_config(p, loss)
        captured = dirs_path = None
        if p.directions != "trajectory":
            kind = "filter" if p.directions == "filter-normalized" else "random"
            dirs = numerics.random_directions(model, p.dims, kind=kind, seed=p.seed)
            span, span_y = (-p.span, p.span), None
            extra["span"] = p.span
        else:
            dirs = numerics.pca_directions(model, list(path), mean_center=p.mean_center)
            lo, hi = dirs.path.min(0), dirs.path.max(0)
            room = p.margin * np.maximum(hi - lo, 1e-12)
            span = (float(lo[0] - room[0]), float(hi[0] + room[0]))
            span_y = (float(lo[1] - room[1]), float(hi[1] + room[1]))
            extra.update(explained=dirs.explained.tolist(), mean_center=p.mean_center)
            dirs_path, captured = dirs.path, dirs.captured
        s = numerics.surface(
            model, x, y, dirs, cfg, span=span, span_y=span_y, resolution=p.resolution, calib_x=calib
        )
    attrs, arrays, scalars = landscape_record(s, extra, dirs_path, captured)
    return LandscapeResult(
        center_loss=float(s.center_loss),
        center_accuracy=float(s.center_accuracy),
        max_loss=scalars["max_loss"],
        directions=p.directions,
        dims=1 if s.beta is None else 2,
        images=len(y),
        center_loss_batch_mean=scalars.get("center_loss_batch_mean"),
        center_loss_batch_stderr=scalars.get("center_loss_batch_stderr"),
        params=p,
        surface=s,
        extra=extra,
        data={**attrs, **arrays, **scalars},
    )
