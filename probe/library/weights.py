"""`probe.spectra`: the spectra analysis's parameters, record, figures and the in-process call.

WeightWatcher's data-free weight spectra (`probe.numerics.spectra`, docs/spectra.md) of any
model's Conv2d and Linear layers. `SpectraParams`, `provenance`, `esd_figure`, `alpha_figure`
and `spectra_scalars` are shared with the spectra plugins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "CAPTION_ALPHA",
    "CAPTION_EPOCHS",
    "CAPTION_ESD",
    "ROW_KEYS",
    "SpectraParams",
    "SpectraResult",
    "alpha_figure",
    "esd_figure",
    "mean_finite",
    "provenance",
    "shade_band",
    "spectra",
    "spectra_scalars",
]

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
class SpectraParams:
    """The parameters of the spectra analysis and of `probe.spectra`."""

    bins: int = param(
        60, "Histogram bins per layer (log-spaced) in the ESD figure.", min=5, max=1000
    )


def provenance(epochs: list[int] | None) -> dict[str, Any]:
    """What every number here was computed on: the record each result carries (`epochs`: the
    checkpoints read; None: the model given in-process)."""
    ALPHA_BAND = numerics.ALPHA_BAND
    if epochs is None:
        weights = "the model given"
    elif len(epochs) == 1:
        weights = f"checkpoint of epoch {epochs[0]}"
    else:
        weights = f"checkpoints of epochs {epochs}"
    return {
        "weights": weights,
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


ROW_KEYS = (
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


def mean_finite(values) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def shade_band(ax: Any) -> None:
    lo, hi = numerics.ALPHA_BAND
    ax.axhspan(
        lo, hi, color="tab:green", alpha=0.12, lw=0, label=f"WeightWatcher's {lo:g}-{hi:g} band"
    )


def esd_figure(rows: list[dict], bins: int, where: str = "") -> Figure:
    """Each layer's ESD on log-log axes with its fitted tail (`where`: ", epoch 3")."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    # The ESD of every layer, log-log, with its fitted tail.
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        ev = r["eigenvalues"]
        pos = ev[ev > numerics.EVALS_THRESH]
        if pos.size >= 2 and pos[-1] > pos[0]:
            edges = np.geomspace(pos[0], pos[-1], bins + 1)
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
    fig.suptitle(f"weight spectra{where}", fontsize=10)
    return fig


def alpha_figure(rows: list[dict], where: str = "") -> Figure:
    """Alpha per layer (+- sigma) against WeightWatcher's band."""
    import numpy as np
    from matplotlib.figure import Figure

    names = [r["layer"] for r in rows]
    # Alpha per layer against the band.
    alphas = np.array([r["alpha"] for r in rows])
    fig = Figure(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.6), constrained_layout=True)
    ax = fig.subplots()
    shade_band(ax)
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
    ax.set(ylabel="alpha", title=f"power-law exponent per layer{where}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def spectra_scalars(rows: list[dict]) -> dict[str, Any]:
    """The spectra plugin's headline scalars of one model's rows."""
    lo, hi = numerics.ALPHA_BAND
    alphas = [r["alpha"] for r in rows]
    finite = [a for a in alphas if math.isfinite(a)]
    out: dict[str, Any] = {
        "alpha_mean": mean_finite(alphas),
        "alpha_weighted_mean": mean_finite([r["alpha_weighted"] for r in rows]),
        "layers_below_2": sum(a < lo for a in finite),
        "layers_above_6": sum(a > hi for a in finite),
    }
    for r in rows:
        out[f"alpha.{r['layer']}"] = r["alpha"]
        out[f"stable_rank.{r['layer']}"] = r["stable_rank"]
        out[f"spectral_norm.{r['layer']}"] = r["spectral_norm"]
    return out


@dataclass(frozen=True, repr=False)
class SpectraResult(Result):
    """Per Conv2d/Linear layer: the power-law exponent alpha of its ESD tail (NaN: no fit), the
    stable rank and the spectral norm; `rows` holds every field of every layer (eigenvalues too),
    `to_dict()` the plugin's spectra.json (but the epoch) and its scalars."""

    analysis = "spectra"

    layers: tuple[str, ...]
    alpha: tuple[float, ...]
    stable_rank: tuple[float, ...]
    spectral_norm: tuple[float, ...]
    alpha_mean: float
    params: SpectraParams = field(repr=False, default_factory=SpectraParams)
    rows: Any = field(repr=False, compare=False, default=None)

    def _draw(self) -> Figure:
        return esd_figure(self.rows, self.params.bins)

    def alpha_figure(self) -> Figure:
        """Alpha per layer against WeightWatcher's 2-6 band (the plugin's second figure)."""
        return alpha_figure(self.rows)


def spectra(model: nn.Module, **params: Any) -> SpectraResult:
    """WeightWatcher's weight spectra of every Conv2d and Linear layer of `model` (data-free),
    with the parameters of `probe analyze -p spectra`; the model is read, not changed."""
    from probe.library.batch import untouched

    p = make(SpectraParams, params, "spectra")
    with untouched(model):
        rows = [numerics.spectrum_row(*layer) for layer in numerics.weight_layers(model)]
    scalars = spectra_scalars(rows)
    return SpectraResult(
        layers=tuple(r["layer"] for r in rows),
        alpha=tuple(float(r["alpha"]) for r in rows),
        stable_rank=tuple(float(r["stable_rank"]) for r in rows),
        spectral_norm=tuple(float(r["spectral_norm"]) for r in rows),
        alpha_mean=float(scalars["alpha_mean"]),
        params=p,
        rows=rows,
        data={
            "computed_on": provenance(None),
            "layers": [{k: r[k] for k in ROW_KEYS} for r in rows],
            "scalars": scalars,
        },
    )
