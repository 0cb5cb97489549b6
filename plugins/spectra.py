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

from typing import Any

import probe
from probe.library.weights import (  # shared with probe.spectra
    CAPTION_ALPHA,
    CAPTION_EPOCHS,
    CAPTION_ESD,
    ROW_KEYS,
    alpha_figure,
    esd_figure,
    mean_finite,
    provenance,
    shade_band,
    spectra_scalars,
)
from probe.library.weights import SpectraParams as Params

__all__ = ["CAPTION_ALPHA", "CAPTION_EPOCHS", "CAPTION_ESD", "Params", "register_analyses"]


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


def run_epoch(ctx: probe.Context) -> None:
    epoch = ctx.epoch
    rows = analyse_epoch(ctx, epoch)
    names = [r["layer"] for r in rows]

    ctx.out.figure(
        "esd", esd_figure(rows, ctx.params.bins, f", epoch {epoch}"), caption=CAPTION_ESD
    )
    ctx.out.figure("alpha", alpha_figure(rows, f", epoch {epoch}"), caption=CAPTION_ALPHA)
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
            "layers": [{k: r[k] for k in ROW_KEYS} for r in rows],
        },
    )
    for name, value in spectra_scalars(rows).items():
        ctx.out.scalar(name, value)


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
    shade_band(ax)
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
    ctx.out.scalar("alpha_mean", mean_finite(table["alpha"][-1]))
    ctx.out.scalar(
        "alpha_mean_change", mean_finite(table["alpha"][-1]) - mean_finite(table["alpha"][0])
    )
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
