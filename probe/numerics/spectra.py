"""Weight-matrix spectra and their power-law tails, data-free (WeightWatcher's measure).

WeightWatcher's measure (Martin & Mahoney, JMLR 22(165), 2021): the empirical spectral
density (ESD) of each layer's weight matrices, and the exponent alpha of a power law
fitted to its tail. It reads only the weights, no images: `weight_spectra(model)` gives
every Conv2d and Linear layer's spectrum and fit; `weight_layers`, `layer_spectrum` and
`fit_power_law` are its steps.

Everything follows `weightwatcher` 0.7's `analyze()` defaults, so that the numbers
can be set beside its own (docs/spectra.md; tests/test_spectra.py checks them
against the package, to 5e-15, when it is installed):

- A `Linear` weight is one matrix. A `Conv2d` weight [out, in, kh, kw] is kh*kw
  matrices, one [out, in] slice per kernel position (`conv2d_fft=False`), each scaled
  by 1/sqrt(2) (`conv2d_norm=True`), and their eigenvalues are pooled into one ESD per
  layer (`pool=True`).
- The eigenvalues are the squared singular values of those matrices, i.e. of
  X = W^T W with no 1/N (WeightWatcher dropped its `normalize` option in 0.6.5). The
  scale moves xmin, xmax and lambda_max but not alpha, D or the stable rank.
- The fit is WeightWatcher's own (`pl_package="ww"`, the default since 0.7): the
  continuous Clauset-Shalizi-Newman maximum-likelihood alpha for every candidate
  xmin among the eigenvalues above 1e-5, keeping the xmin whose Kolmogorov-Smirnov
  distance D is smallest; xmax is the largest eigenvalue (`xmax=None`,
  `fix_fingers=False`). Under 20 eigenvalues it uses its small-sample variant: alpha
  with an n-1 correction, tails of at least 8 eigenvalues, the smallest D kept (as
  WWFit does in the end). A layer with fewer than 8 or more than 15,000 eigenvalues
  (WeightWatcher's `min_evals`, `max_evals`) has its ESD and norms but no fit.

Guarantees: float32 weights (as WeightWatcher reads them), float64 SVD (scipy); the model is
only read; non-finite weights, or a model with no Conv2d/Linear layer, raise `probe.ProbeError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg
from torch import nn

from probe.errors import ProbeError

__all__ = [
    "ALPHA_BAND",
    "EVALS_THRESH",
    "MAX_EVALS",
    "MIN_EVALS",
    "SMALL_N",
    "SMALL_N_MIN_TAIL",
    "PowerLawFit",
    "fit_power_law",
    "layer_matrices",
    "layer_spectrum",
    "singular_values",
    "spectrum_row",
    "weight_layers",
    "weight_spectra",
]

# WeightWatcher 0.7 constants (weightwatcher/constants.py, WW_powerlaw.py).
EVALS_THRESH = 1e-5  # eigenvalues at or below this are left out of the fit
MIN_EVALS = 8  # a layer with fewer eigenvalues is not fitted (`min_evals`)
MAX_EVALS = 15_000  # nor one with more (`max_evals`): the xmin search is O(n^2), ~5 s at this size
SMALL_N = 20  # below this many fitted eigenvalues, the small-sample fit
SMALL_N_MIN_TAIL = 8  # the small-sample fit's shortest tail (`k_min`)
# `conv2d_norm=True` with pooled slices: sqrt(conv2d_count / 2), count 1
CONV2D_NORM = math.sqrt(0.5)

# WeightWatcher's reading of alpha (Martin & Mahoney 2021, and the weightwatcher README).
ALPHA_BAND = (2.0, 6.0)


@dataclass
class PowerLawFit:
    """A power-law fit of an ESD tail, WeightWatcher's way.

    `alpha` is the exponent of p(x) ~ x^-alpha for x >= `xmin`; `D` the KS distance of
    the tail from that law; `n_tail` the eigenvalues at or above xmin; `sigma` the
    MLE's standard error (alpha - 1) / sqrt(n_tail); `xmax` the largest eigenvalue;
    `method` "csn" or "small-n". `alpha` is nan, with `reason`, when there is no fit.
    """

    alpha: float = math.nan
    xmin: float = math.nan
    xmax: float = math.nan
    D: float = math.nan
    sigma: float = math.nan
    n_tail: int = 0
    n_fit: int = 0
    method: str = ""
    reason: str = ""


def layer_matrices(kind: str, weight: np.ndarray) -> list[np.ndarray]:
    """The matrices WeightWatcher takes from one layer's weight, in its order.

    `Linear` [out, in]: the weight itself. `Conv2d` [out, in, kh, kw]: the [out, in]
    slice at each kernel position (row-major over kh, kw), transposed to have at least
    as many rows as columns. (WeightWatcher's other branch, for kernels larger than
    out + in, takes the same slices for a PyTorch layer.)
    """
    w = np.asarray(weight)
    if kind == "Linear":
        if w.ndim != 2:
            raise ValueError(f"a Linear weight is 2-D, got shape {w.shape}")
        return [w]
    if kind == "Conv2d":
        if w.ndim != 4:
            raise ValueError(f"a Conv2d weight is 4-D, got shape {w.shape}")
        mats = []
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                m = w[:, :, i, j]
                mats.append(m.T if m.shape[0] < m.shape[1] else m)
        return mats
    raise ValueError(f"unsupported layer type {kind!r} (Linear or Conv2d)")


def singular_values(mats: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The singular values of each matrix, in float64 (scipy's SVD, as WeightWatcher on a CPU)."""
    return [linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False) for m in mats]


def layer_spectrum(kind: str, weight: np.ndarray) -> dict[str, Any]:
    """One layer's pooled ESD and norms.

    `eigenvalues`: sorted ascending, WeightWatcher's: squared singular values of each
    matrix after its conv scaling (a Conv2d slice times 1/sqrt(2), the float32 weight
    times a float64 factor as in WeightWatcher, so the product is float64). `spectral_norm`
    (||W||_2, the largest
    singular value, over a conv layer's slices) and `stable_rank` (sum of the
    eigenvalues over the largest: ||W||_F^2 / ||W||_2^2 for a Linear layer, the sum of
    the slices' squared Frobenius norms over the largest slice's squared spectral norm
    for a conv layer, as WeightWatcher) are of the raw weights, free of any scaling.
    """
    w = np.asarray(weight, dtype=np.float32)
    raw = layer_matrices(kind, w)
    raw_sv = singular_values(raw)
    if kind == "Conv2d":
        # WeightWatcher multiplies the float32 slice by a numpy float64 scalar: a float64 product.
        scaled_sv = singular_values([m * np.float64(CONV2D_NORM) for m in raw])
    else:
        scaled_sv = raw_sv
    evals = np.sort(np.concatenate([s * s for s in scaled_sv])) if scaled_sv else np.zeros(0)
    raw_ev = np.concatenate([s * s for s in raw_sv])
    top = float(raw_ev.max()) if raw_ev.size else 0.0
    out, inp = w.shape[0], w.shape[1]
    return {
        "eigenvalues": evals,
        "n_matrices": len(raw),
        "N": max(out, inp),
        "M": min(out, inp),
        "n_evals": int(evals.size),
        "lambda_max": float(evals[-1]) if evals.size else math.nan,
        "spectral_norm": math.sqrt(top),
        "stable_rank": float(raw_ev.sum() / top) if top > 0 else math.nan,
    }


def fit_power_law(eigenvalues: np.ndarray | Sequence[float]) -> PowerLawFit:
    """Fit a power law to the tail of an ESD, exactly as WeightWatcher 0.7's default `WWFit`.

    The eigenvalues above `EVALS_THRESH` are sorted; for each candidate xmin (every one
    of them but the largest) the continuous MLE is alpha = 1 + n / sum(log(x_i / xmin))
    over the n eigenvalues >= xmin, and D = max |F_fit - F_emp| on them; the candidate
    with the smallest D wins (the first, on a tie). Under `SMALL_N` eigenvalues, the
    small-sample variant described in the module docstring.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.size < MIN_EVALS:
        return PowerLawFit(
            reason=f"{ev.size} eigenvalues, fewer than {MIN_EVALS} (WeightWatcher's min_evals)"
        )
    if ev.size > MAX_EVALS:
        return PowerLawFit(
            reason=f"{ev.size} eigenvalues, more than {MAX_EVALS} (WeightWatcher's max_evals)"
        )
    data = np.sort(ev[ev > EVALS_THRESH])
    n_all = len(data)
    if n_all < 2:
        return PowerLawFit(
            n_fit=n_all, reason=f"{n_all} eigenvalue(s) above {EVALS_THRESH:g}: no tail to fit"
        )
    flat = "the eigenvalues above the threshold are all equal: no tail to fit"
    if data[-1] <= data[0]:
        return PowerLawFit(n_fit=n_all, reason=flat)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best = _fit_small_n(data) if n_all < SMALL_N else _fit_csn(data)
    if best is None:
        return PowerLawFit(n_fit=n_all, reason=flat)
    i, alpha, D, method = best
    xmin = float(data[i])
    n_tail = int(np.sum(ev >= xmin))
    return PowerLawFit(
        alpha=float(alpha),
        xmin=xmin,
        xmax=float(data[-1]),
        D=float(D),
        sigma=float((alpha - 1.0) / math.sqrt(n_all - i)),
        n_tail=n_tail,
        n_fit=n_all,
        method=method,
    )


def _fit_csn(data: np.ndarray) -> tuple[int, float, float, str]:
    """(index of xmin, alpha, D, method) over every candidate xmin: WWFit.fit_power_law_standard."""
    n_all = len(data)
    log_data = np.log(data, dtype=np.float64)
    alphas = np.zeros(n_all - 1)
    Ds = np.ones(n_all - 1)
    for i, xmin in enumerate(data[:-1]):
        n = float(n_all - i)
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    i = int(np.argmin(Ds))
    return i, alphas[i], Ds[i], "csn"


def _fit_small_n(data: np.ndarray) -> tuple[int, float, float, str] | None:
    """(index of xmin, alpha, D, method) for few eigenvalues, as WWFit's smallN fit.

    The small-sample fit computes the n-1 corrected alpha and D for every tail of at
    least `SMALL_N_MIN_TAIL` eigenvalues (or, when there is none, for the whole ESD);
    its own criterion D - 0.868/sqrt(n) is then overridden by `WWFit.__init__`, which
    keeps the smallest D as in the standard fit. That is what weightwatcher 0.7.7
    reports, so it is what is done here. `None` when the whole ESD is flat to 1e-12 in
    log (weightwatcher then reports alpha 0).
    """
    n_all = len(data)
    log_data = np.log(data, dtype=np.float64)
    alphas = np.zeros(n_all - 1)
    Ds = np.ones(n_all - 1)
    fitted = False
    for i, xmin in enumerate(data[:-1]):
        n_int = n_all - i
        if n_int < SMALL_N_MIN_TAIL:
            continue
        n = float(n_int)
        s = np.sum(log_data[i:]) - n * log_data[i]
        if s <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / s
        alphas[i] = alpha
        if alpha <= 1.0:
            continue
        f_fit = 1.0 - (data[i:] / xmin) ** (1.0 - alpha)
        f_emp = np.arange(n_int, dtype=np.float64) / n
        Ds[i] = float(np.max(np.abs(f_emp - f_fit)))
        fitted = True
    if not fitted:  # no tail of SMALL_N_MIN_TAIL eigenvalues: the whole ESD is the tail
        n = float(n_all)
        s = np.sum(log_data) - n * log_data[0]
        if s <= 1e-12:
            return None
        alphas[0] = 1.0 + (n - 1.0) / s
        Ds[0] = float(
            np.max(np.abs(np.arange(n_all) / n - (1.0 - (data / data[0]) ** (1.0 - alphas[0]))))
        )
    i = int(np.argmin(Ds))
    return i, alphas[i], Ds[i], "small-n"


def weight_layers(model: nn.Module) -> list[tuple[str, str, np.ndarray]]:
    """(name, "Conv2d" | "Linear", float32 numpy weight) of each conv and linear layer, in order."""
    layers = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            kind = "Conv2d" if isinstance(mod, nn.Conv2d) else "Linear"
            w = mod.weight.detach().cpu().float().numpy()
            if not np.isfinite(w).all():
                raise ProbeError(
                    f"layer {name} has non-finite weights (nan or inf): no spectrum to compute"
                )
            layers.append((name, kind, w))
    if not layers:
        raise ProbeError("the model has no Conv2d or Linear layer")
    return layers


def spectrum_row(name: str, kind: str, weight: np.ndarray) -> dict[str, Any]:
    """One layer's spectrum (`layer_spectrum`) and fit (`fit_power_law`) as one flat dict.

    Keys: layer, type, shape, the spectrum's (eigenvalues, N, M, n_matrices, n_evals,
    lambda_max, spectral_norm, stable_rank), the fit's (alpha, xmin, xmax, D, sigma, n_tail,
    n_fit, fit_method, fit_note) and alpha_weighted = alpha * log10(lambda_max).
    """
    spec = layer_spectrum(kind, weight)
    fit = fit_power_law(spec["eigenvalues"])
    return {
        "layer": name,
        "type": kind,
        "shape": list(weight.shape),
        **spec,
        "alpha": fit.alpha,
        "xmin": fit.xmin,
        "xmax": fit.xmax,
        "D": fit.D,
        "sigma": fit.sigma,
        "n_tail": fit.n_tail,
        "n_fit": fit.n_fit,
        "fit_method": fit.method,
        "fit_note": fit.reason,
        "alpha_weighted": fit.alpha * math.log10(spec["lambda_max"])
        if spec["lambda_max"] > 0
        else math.nan,
    }


def weight_spectra(model: nn.Module) -> list[dict[str, Any]]:
    """Every Conv2d and Linear layer's spectrum and fit (`spectrum_row`), in network order."""
    return [spectrum_row(name, kind, w) for name, kind, w in weight_layers(model)]
