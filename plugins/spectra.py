"""`spectra` and `spectra-epochs`: weight-matrix spectra and their power-law tails, data-free.

WeightWatcher's measure (Martin & Mahoney, JMLR 22(165), 2021): the empirical spectral
density (ESD) of each layer's weight matrices, and the exponent alpha of a power law
fitted to its tail. It reads only the checkpoint, no images. The numerics, and the
WeightWatcher 0.7 `analyze()` conventions they follow to the digit, are
`probe.numerics.spectra` (docs/spectra.md); this plugin draws and stores them.

- `spectra` (per epoch): per layer, the ESD, alpha, the fit's range and quality, the
  stable rank and the spectral norm; the log-log ESD of every layer with its fitted
  tail, and alpha per layer against WeightWatcher's 2-6 band.
- `spectra-epochs` (over the selected epochs): alpha, stable rank and spectral norm of
  every layer across training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import probe

CAPTION_ESD = (
    "Empirical spectral density of each layer's weight matrices (eigenvalues of W^T W, "
    "WeightWatcher's convention) on log-log axes, with the power law fitted to its tail from xmin "
    "(dashed red). A straight, long tail is a heavy-tailed ESD; a tail of a few eigenvalues makes "
    "alpha unreliable (see n_tail and the KS distance D)."
)
CAPTION_ALPHA = (
    "Power-law exponent alpha of each layer's ESD tail. WeightWatcher reads 2 <= alpha <= 6 "
    "(shaded) as well trained, alpha < 2 as possibly over-fit and alpha > 6 as under-trained "
    "(Martin & Mahoney 2021); these are empirical heuristics from large trained networks, not "
    "guarantees, and a small layer's alpha rests on few eigenvalues."
)
CAPTION_EPOCHS = (
    "Alpha, stable rank and spectral norm of every layer across training. WeightWatcher reads "
    "alpha falling into 2-6 (shaded) as a layer learning correlations; alpha below 2 as possibly "
    "over-fit; above 6 as under-trained (heuristics, Martin & Mahoney 2021)."
)


@dataclass(frozen=True)
class Params:
    bins: int = probe.param(
        60, "Histogram bins per layer (log-spaced) in the ESD figure.", min=5, max=1000
    )


def model_layers(ckpt) -> list[tuple[str, str, Any]]:
    """(name, "Conv2d" | "Linear", float32 numpy weight) of each conv and linear layer of `ckpt`."""
    from probe import numerics

    try:
        return numerics.weight_layers(ckpt.build_model("cpu"))
    except probe.ProbeError as err:  # the same one line, naming the checkpoint
        raise probe.ProbeError(f"{ckpt.path}: {err}") from None


def stored_layers(ctx: probe.Context, epoch: int, path: Any) -> list[tuple[str, str, Any]]:
    """`model_layers` from the stored weights alone (`ctx.parameters`): a run of the user's own
    class (no family) needs no code for its spectra."""
    import numpy as np

    layers = [
        (lp.name, lp.type, lp.weight)
        for lp in ctx.parameters(epoch)
        if lp.type in ("Conv2d", "Linear") and lp.weight is not None
    ]
    for name, _, w in layers:
        if not np.isfinite(w).all():
            raise probe.ProbeError(
                f"{path}: layer {name} has non-finite weights (nan or inf): no spectrum to compute"
            )
    if not layers:
        raise probe.ProbeError(f"{path}: the model has no Conv2d or Linear layer")
    return layers


def analyse_epoch(ctx: probe.Context, epoch: int) -> list[dict[str, Any]]:
    """Every layer's spectrum and fit at `epoch` (the eigenvalues under "eigenvalues")."""
    from probe import numerics

    ckpt = ctx.checkpoint(epoch)
    layers = stored_layers(ctx, epoch, ckpt.path) if ckpt.spec.is_module else model_layers(ckpt)
    return [numerics.spectrum_row(*layer) for layer in layers]


def provenance(epochs: list[int]) -> dict[str, Any]:
    """What every number here was computed on: the record each result carries."""
    from probe.numerics import ALPHA_BAND

    return {
        "weights": f"checkpoint of epoch {epochs[0]}"
        if len(epochs) == 1
        else f"checkpoints of epochs {epochs}",
        "data": "none (data-free: weights only)",
        "dtype": "float32 weights, float64 SVD (scipy)",
        "which_layers": "every Conv2d and Linear layer, in network order; biases and BatchNorm "
        "left out",
        "convention": "weightwatcher 0.7 analyze() defaults: conv2d_fft=False, conv2d_norm=True, "
        "pool=True, pl_package='ww', xmax=None, fix_fingers=False, eigenvalues > 1e-5 fitted, "
        "min_evals=8, max_evals=15000",
        "eigenvalues": "squared singular values of each matrix (X = W^T W, no 1/N); a Conv2d slice "
        "scaled by 1/sqrt(2) first",
        "alpha_band": list(ALPHA_BAND),
    }


_ROW_KEYS = (
    "layer",
    "type",
    "shape",
    "N",
    "M",
    "n_matrices",
    "n_evals",
    "alpha",
    "xmin",
    "xmax",
    "D",
    "sigma",
    "n_tail",
    "n_fit",
    "fit_method",
    "fit_note",
    "lambda_max",
    "spectral_norm",
    "stable_rank",
    "alpha_weighted",
)


def _mean(values) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _shade_band(ax) -> None:
    from probe.numerics import ALPHA_BAND

    lo, hi = ALPHA_BAND
    ax.axhspan(
        lo, hi, color="tab:green", alpha=0.12, lw=0, label=f"WeightWatcher's {lo:g}-{hi:g} band"
    )


def run_epoch(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    from probe.numerics import ALPHA_BAND, EVALS_THRESH

    epoch = ctx.epoch
    rows = analyse_epoch(ctx, epoch)
    names = [r["layer"] for r in rows]

    # The ESD of every layer, log-log, with its fitted tail.
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False, constrained_layout=True
    )
    for ax, r in zip(axes.flat, rows, strict=False):
        ev = r["eigenvalues"]
        pos = ev[ev > EVALS_THRESH]
        if pos.size >= 2 and pos[-1] > pos[0]:
            edges = np.geomspace(pos[0], pos[-1], ctx.params.bins + 1)
            ax.hist(pos, bins=edges, density=True, color="tab:blue", alpha=0.6, label="ESD")
        elif pos.size:
            ax.axvline(pos[0], color="tab:blue", label="ESD")
        if math.isfinite(r["alpha"]) and r["alpha"] > 1:
            a, xmin = r["alpha"], r["xmin"]
            frac = r["n_tail"] / max(pos.size, 1)  # the tail's share of the density
            x = np.geomspace(xmin, r["xmax"], 50)
            ax.plot(
                x,
                frac * (a - 1) / xmin * (x / xmin) ** (-a),
                "r--",
                lw=1.5,
                label=f"fit, alpha={a:.2f}",
            )
            ax.axvline(xmin, color="red", lw=0.8, alpha=0.6)
        ax.set(xscale="log", yscale="log", xlabel="eigenvalue of W^T W", ylabel="density")
        ax.xaxis.set_minor_formatter(NullFormatter())
        note = (
            f"alpha={r['alpha']:.2f}, D={r['D']:.3f}, tail {r['n_tail']}/{r['n_evals']}"
            if math.isfinite(r["alpha"])
            else "no fit"
        )
        ax.set_title(f"{r['layer']} ({r['type']})\n{note}", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(f"weight spectra, epoch {epoch}", fontsize=10)
    ctx.out.figure("esd", fig, caption=CAPTION_ESD)

    # Alpha per layer against the band.
    alphas = np.array([r["alpha"] for r in rows])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.6), constrained_layout=True)
    _shade_band(ax)
    err = np.array([r["sigma"] for r in rows])
    ax.errorbar(
        range(len(rows)),
        alphas,
        yerr=np.where(np.isfinite(err), err, 0),
        fmt="o",
        color="black",
        capsize=3,
        label="alpha (+- sigma)",
    )
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="alpha", title=f"power-law exponent per layer, epoch {epoch}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ctx.out.figure("alpha", fig, caption=CAPTION_ALPHA)

    ctx.out.arrays(
        "eigenvalues",
        attrs={"layers": names, "epoch": epoch, **provenance([epoch])},
        **{r["layer"]: r["eigenvalues"] for r in rows},
    )
    ctx.out.json(
        "spectra",
        {
            "epoch": epoch,
            "computed_on": provenance([epoch]),
            "layers": [{k: r[k] for k in _ROW_KEYS} for r in rows],
        },
    )
    finite = [a for a in alphas if math.isfinite(a)]
    ctx.out.scalar("alpha_mean", _mean(alphas))
    ctx.out.scalar("alpha_weighted_mean", _mean([r["alpha_weighted"] for r in rows]))
    ctx.out.scalar("layers_below_2", sum(a < ALPHA_BAND[0] for a in finite))
    ctx.out.scalar("layers_above_6", sum(a > ALPHA_BAND[1] for a in finite))
    for r in rows:
        ctx.out.scalar(f"alpha.{r['layer']}", r["alpha"])
        ctx.out.scalar(f"stable_rank.{r['layer']}", r["stable_rank"])
        ctx.out.scalar(f"spectral_norm.{r['layer']}", r["spectral_norm"])


def run_epochs(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError(f"{ctx.run.path}: no complete epoch")
    per_epoch = [
        analyse_epoch(ctx, e) for e in ctx.progress(epochs, "checkpoints", total=len(epochs))
    ]
    names = [r["layer"] for r in per_epoch[0]]
    if any([r["layer"] for r in rows] != names for rows in per_epoch):
        raise probe.ProbeError(f"{ctx.run.path}: the layers differ between epochs")
    table = {
        k: np.array([[r[k] for r in rows] for rows in per_epoch], dtype=np.float64)
        for k in (
            "alpha",
            "xmin",
            "xmax",
            "D",
            "sigma",
            "n_tail",
            "lambda_max",
            "spectral_norm",
            "stable_rank",
            "alpha_weighted",
        )
    }

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    _shade_band(ax)
    for j, name in enumerate(names):
        ax.plot(epochs, table["alpha"][:, j], "o-", ms=3, label=name)
    ax.set(
        xlabel="epoch",
        ylabel="alpha (log scale)",
        title="power-law exponent of the ESD tail",
        yscale="log",
    )
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    finite = table["alpha"][np.isfinite(table["alpha"])]
    top = max(float(finite.max()) if finite.size else 6.0, 6.5)
    ax.set_yticks([t for t in (1, 1.5, 2, 3, 4, 6, 10, 20, 40, 100) if t <= top * 1.2])
    ax.legend(fontsize=6)
    for ax, key, title in (
        (axes[1], "stable_rank", "stable rank: sum of eigenvalues / largest"),
        (axes[2], "spectral_norm", "spectral norm ||W||_2"),
    ):
        for j, name in enumerate(names):
            ax.plot(epochs, table[key][:, j], "o-", ms=3, label=name)
        ax.set(xlabel="epoch", title=title, yscale="log")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ctx.out.figure("spectra_epochs", fig, caption=CAPTION_EPOCHS)
    ctx.out.arrays(
        "spectra_epochs",
        attrs={"layers": names, **provenance(epochs)},
        epochs=np.array(epochs),
        **table,
    )
    ctx.out.json(
        "spectra_epochs",
        {
            "epochs": epochs,
            "layers": names,
            "computed_on": provenance(epochs),
            **{k: v.tolist() for k, v in table.items()},
        },
    )
    ctx.out.scalar("alpha_mean", _mean(table["alpha"][-1]))
    ctx.out.scalar("alpha_mean_change", _mean(table["alpha"][-1]) - _mean(table["alpha"][0]))
    for j, name in enumerate(names):
        ctx.out.scalar(f"alpha.{name}", float(table["alpha"][-1, j]))


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="spectra",
            run=run_epoch,
            params=Params,
            scope="epoch",
            needs={"checkpoint"},
            summary="Data-free weight spectra per layer (WeightWatcher's): ESD, power-law alpha, "
            "stable rank, spectral norm.",
            figure_captions={"esd": CAPTION_ESD, "alpha": CAPTION_ALPHA},
            report_order=120,
        )
    )
    register(
        probe.Analysis(
            name="spectra-epochs",
            run=run_epochs,
            params=probe.NoParams,
            scope="run",
            needs={"checkpoint"},
            summary="Power-law alpha, stable rank and spectral norm of every layer's weights "
            "across epochs (data-free).",
            figure_captions={"spectra_epochs": CAPTION_EPOCHS},
            report_order=130,
        )
    )
