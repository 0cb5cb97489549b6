"""`spectra` and `spectra-epochs`: weight-matrix spectra and their power-law tails, data-free.

WeightWatcher's measure (Martin & Mahoney, JMLR 22(165), 2021): the empirical spectral
density (ESD) of each layer's weight matrices, and the exponent alpha of a power law
fitted to its tail. It reads only the checkpoint, no images.

Everything follows `weightwatcher` 0.7's `analyze()` defaults, so that the numbers
can be set beside its own (docs/spectra.md; tests/test_spectra.py checks them
against the package when it is installed):

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

# WeightWatcher 0.7 constants (weightwatcher/constants.py, WW_powerlaw.py).
EVALS_THRESH = 1e-5  # eigenvalues at or below this are left out of the fit
MIN_EVALS = 8  # a layer with fewer eigenvalues is not fitted (`min_evals`)
MAX_EVALS = 15_000  # nor one with more (`max_evals`): the xmin search is O(n^2), ~5 s at this size
SMALL_N = 20  # below this many fitted eigenvalues, the small-sample fit
SMALL_N_MIN_TAIL = 8  # the small-sample fit's shortest tail (`k_min`)
CONV2D_NORM = math.sqrt(
    0.5
)  # `conv2d_norm=True` with pooled slices: sqrt(conv2d_count / 2), count 1

# WeightWatcher's reading of alpha (Martin & Mahoney 2021, and the weightwatcher README).
ALPHA_BAND = (2.0, 6.0)

CAPTION_ESD = (
    "Empirical spectral density of each layer's weight matrices (eigenvalues of W^T W, "
    "WeightWatcher's convention) on log-log axes, with the power law fitted to its tail from xmin "
    "(dashed red). A straight, long tail is a heavy-tailed ESD; a tail of a few eigenvalues makes "
    "alpha unreliable (see n_tail and the KS distance D)."
)
CAPTION_ALPHA = (
    "Power-law exponent alpha of each layer's ESD tail. WeightWatcher reads 2 <= alpha <= 6 (shaded) "
    "as well trained, alpha < 2 as possibly over-fit and alpha > 6 as under-trained (Martin & Mahoney "
    "2021); these are empirical heuristics from large trained networks, not guarantees, and a small "
    "layer's alpha rests on few eigenvalues."
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


def layer_matrices(kind: str, weight) -> list:
    """The matrices WeightWatcher takes from one layer's weight, in its order.

    `Linear` [out, in]: the weight itself. `Conv2d` [out, in, kh, kw]: the [out, in]
    slice at each kernel position (row-major over kh, kw), transposed to have at least
    as many rows as columns. (WeightWatcher's other branch, for kernels larger than
    out + in, takes the same slices for a PyTorch layer.)
    """
    import numpy as np

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


def singular_values(mats) -> list:
    """The singular values of each matrix, in float64 (scipy's SVD, as WeightWatcher on a CPU)."""
    import numpy as np
    from scipy import linalg

    return [linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False) for m in mats]


def layer_spectrum(kind: str, weight) -> dict[str, Any]:
    """One layer's pooled ESD and norms.

    `eigenvalues`: sorted ascending, WeightWatcher's: squared singular values of each
    matrix after its conv scaling (a Conv2d slice times 1/sqrt(2), the float32 weight
    times a float64 factor as in WeightWatcher, so the product is float64). `spectral_norm` (||W||_2, the largest
    singular value, over a conv layer's slices) and `stable_rank` (sum of the
    eigenvalues over the largest: ||W||_F^2 / ||W||_2^2 for a Linear layer, the sum of
    the slices' squared Frobenius norms over the largest slice's squared spectral norm
    for a conv layer, as WeightWatcher) are of the raw weights, free of any scaling.
    """
    import numpy as np

    w = np.asarray(weight, dtype=np.float32)
    raw = layer_matrices(kind, w)
    raw_sv = singular_values(raw)
    if kind == "Conv2d":
        # WeightWatcher multiplies the float32 slice by a numpy float64 scalar: the product is float64.
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


def fit_power_law(eigenvalues) -> PowerLawFit:
    """Fit a power law to the tail of an ESD, exactly as WeightWatcher 0.7's default `WWFit`.

    The eigenvalues above `EVALS_THRESH` are sorted; for each candidate xmin (every one
    of them but the largest) the continuous MLE is alpha = 1 + n / sum(log(x_i / xmin))
    over the n eigenvalues >= xmin, and D = max |F_fit - F_emp| on them; the candidate
    with the smallest D wins (the first, on a tie). Under `SMALL_N` eigenvalues, the
    small-sample variant described in the module docstring.
    """
    import numpy as np

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


def _fit_csn(data):
    """(index of xmin, alpha, D, method) over every candidate xmin: WWFit.fit_power_law_standard."""
    import numpy as np

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


def _fit_small_n(data):
    """(index of xmin, alpha, D, method) for few eigenvalues: WWFit.fit_powerlaw_smallN, then WWFit's choice.

    The small-sample fit computes the n-1 corrected alpha and D for every tail of at
    least `SMALL_N_MIN_TAIL` eigenvalues (or, when there is none, for the whole ESD);
    its own criterion D - 0.868/sqrt(n) is then overridden by `WWFit.__init__`, which
    keeps the smallest D as in the standard fit. That is what weightwatcher 0.7.7
    reports, so it is what is done here. `None` when the whole ESD is flat to 1e-12 in
    log (weightwatcher then reports alpha 0).
    """
    import numpy as np

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


def model_layers(ckpt) -> list[tuple[str, str, Any]]:
    """(name, "Conv2d" | "Linear", float32 weight as numpy) of every conv and linear layer, in network order."""
    import numpy as np
    from torch import nn

    model = ckpt.build_model("cpu")
    layers = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            kind = "Conv2d" if isinstance(mod, nn.Conv2d) else "Linear"
            w = mod.weight.detach().cpu().float().numpy()
            if not np.isfinite(w).all():
                raise probe.ProbeError(
                    f"{ckpt.path}: layer {name} has non-finite weights (nan or inf): "
                    "no spectrum to compute"
                )
            layers.append((name, kind, w))
    if not layers:
        raise probe.ProbeError(f"{ckpt.path}: the model has no Conv2d or Linear layer")
    return layers


def analyse_epoch(ctx: probe.Context, epoch: int) -> list[dict[str, Any]]:
    """Every layer's spectrum and fit at `epoch` (the eigenvalues under "eigenvalues")."""
    rows = []
    for name, kind, w in model_layers(ctx.checkpoint(epoch)):
        spec = layer_spectrum(kind, w)
        fit = fit_power_law(spec["eigenvalues"])
        rows.append(
            {
                "layer": name,
                "type": kind,
                "shape": list(w.shape),
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
        )
    return rows


def provenance(epochs: list[int]) -> dict[str, Any]:
    """What every number here was computed on: the record each result carries."""
    return {
        "weights": f"checkpoint of epoch {epochs[0]}"
        if len(epochs) == 1
        else f"checkpoints of epochs {epochs}",
        "data": "none (data-free: weights only)",
        "dtype": "float32 weights, float64 SVD (scipy)",
        "which_layers": "every Conv2d and Linear layer, in network order; biases and BatchNorm left out",
        "convention": "weightwatcher 0.7 analyze() defaults: conv2d_fft=False, conv2d_norm=True, pool=True, "
        "pl_package='ww', xmax=None, fix_fingers=False, eigenvalues > 1e-5 fitted, min_evals=8, "
        "max_evals=15000",
        "eigenvalues": "squared singular values of each matrix (X = W^T W, no 1/N); a Conv2d slice scaled by "
        "1/sqrt(2) first",
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
            summary="Data-free weight spectra per layer (WeightWatcher's): ESD, power-law alpha, stable rank, spectral norm.",
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
            summary="Power-law alpha, stable rank and spectral norm of every layer's weights across epochs (data-free).",
            figure_captions={"spectra_epochs": CAPTION_EPOCHS},
            report_order=130,
        )
    )
