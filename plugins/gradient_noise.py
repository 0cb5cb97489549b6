"""`gradient-noise`: the gradient noise scale, SNR and diversity per epoch and per layer.

From per-example gradients (`torch.func`, `vmap(grad(...))`, in chunks) on the run's
stored un-augmented training batch, in eval mode, at every selected epoch, for the whole
model and for each layer (the parameters of one module):
- B_simple = tr(Sigma) / |G|^2, McCandlish et al. 2018's simple noise scale: the batch
  size at which the mini-batch gradient's noise equals its signal (the critical batch
  size's estimate);
- the gradient signal-to-noise ratio (Liu et al. 2020): per parameter, mean^2 / variance
  of the per-example gradient, averaged over the layer;
- the gradient diversity (Yin et al. 2018): sum_i |g_i|^2 / |sum_i g_i|^2;
- |G|, the norm of the mean gradient.
BatchNorm uses its running statistics (eval mode): with batch statistics an image's
gradient would depend on the other images of its batch, so it would not be per-example.
The model is never modified. Numerics: `probe.numerics.gradient_noise` (docs/dynamics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

MAX_IMAGES = 100_000
# Per-example gradients of one chunk are held at once: refuse a chunk above this.
MAX_CHUNK_BYTES = 8 << 30
METRICS = (
    ("b_simple", "B_simple = tr(Sigma)/|G|^2"),
    ("snr", "gradient SNR (mean over parameters)"),
    ("diversity", "gradient diversity"),
    ("grad_norm", "|G| (mean gradient)"),
)


@dataclass(frozen=True)
class Params:
    n_images: int = probe.param(
        1024,
        "Images, in order from the start of the stored analysis batch (a smaller stored "
        "batch is used whole).",
        min=2,
        max=MAX_IMAGES,
    )
    chunk: int = probe.param(
        64,
        "Images per vmap call: peak memory is chunk x parameters x 4 bytes of gradients "
        "plus one chunk's activations.",
        min=1,
        max=4096,
    )
    dtype: str = probe.param(
        "float32", "Precision of the per-example gradients.", choices=("float32", "float64")
    )


def _row(stats) -> dict:
    return {k: getattr(stats, k) for k, _ in METRICS} | {
        "b_simple_biased": stats.b_simple_biased,
        "trace_cov": stats.trace_cov,
        "zero_variance": stats.zero_variance,
    }


def run(ctx: probe.Context) -> None:
    from probe.numerics import gradient_noise as G

    p = ctx.params
    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError("gradient-noise: no complete epoch selected")
    batch = ctx.analysis_batch()
    n = min(p.n_images, len(batch.labels))
    x, y = batch.normalized(ctx.device)[:n], batch.labels[:n].to(ctx.device)
    dtype = G.DTYPES[p.dtype]
    results = {}
    for e in ctx.progress(epochs, "epochs", total=len(epochs)):
        model = ctx.model(e)
        bound = G.memory_bound(model, p.chunk, dtype)
        if bound > MAX_CHUNK_BYTES:
            raise probe.UsageError(
                "--param chunk",
                f"gradient-noise: chunk={p.chunk} needs {bound / 2**30:.1f} GiB of per-example "
                f"gradients for this model, more than {MAX_CHUNK_BYTES >> 30} GiB: lower it",
            )
        results[e] = G.gradient_noise(model, x, y, chunk=p.chunk, dtype=dtype)
    _write(ctx, results, epochs)


def _write(ctx: probe.Context, results: dict, epochs: list[int]) -> None:
    import numpy as np

    last = results[epochs[-1]]
    layers = [b.name for b in last.blocks]

    def table(key: str) -> np.ndarray:
        def value(r, b) -> float:
            v = getattr(b, key)
            return np.nan if v is None else float(v)

        return np.array([[value(results[e], b) for b in results[e].blocks] for e in epochs])

    def total(key: str) -> np.ndarray:
        v = [getattr(results[e].total, key) for e in epochs]
        return np.array([np.nan if x is None else float(x) for x in v])

    keys = [k for k, _ in METRICS] + ["b_simple_biased", "trace_cov", "snr_median"]
    arrays = {f"{k}_layers": table(k) for k in keys} | {k: total(k) for k in keys}
    computed_on = {
        "data": f"the run's stored un-augmented analysis batch, first {last.n_images} images",
        "mode": last.mode + "; per-example gradients with train-mode BatchNorm would couple "
        "the images of a batch, so they are computed with running statistics",
        "loss": "cross-entropy per image, the data term only (weight decay excluded)",
        "dtype": last.dtype,
        "chunk": last.chunk,
        "memory_bound_bytes": last.memory_bound_bytes,
        "memory_bound": "chunk x parameters x dtype bytes (one chunk's per-example gradients) "
        "+ chunk x largest tensor x 8 (its float64 copy) + 2 x parameters x 8 (running "
        "statistics), plus one chunk's forward/backward activations",
    }
    definitions = {
        "b_simple": "tr(Sigma) / (|G|^2 - tr(Sigma)/n), McCandlish et al. 2018 (unbiased |G|^2); "
        "null where the denominator is <= 0",
        "b_simple_biased": "tr(Sigma) / |G|^2",
        "trace_cov": "tr(Sigma) = sum_i |g_i - G|^2 / (n - 1)",
        "snr": "mean over parameters with nonzero variance of G_j^2 / var_j (ddof=1), "
        "Liu et al. 2020",
        "diversity": "sum_i |g_i|^2 / |sum_i g_i|^2, Yin et al. 2018",
        "grad_norm": "|G|, G = (1/n) sum_i g_i",
    }
    doc = {
        "epochs": epochs,
        "layers": layers,
        "computed_on": computed_on,
        "definitions": definitions,
        "results": {
            str(e): {
                "loss": r.loss,
                "all": r.total.__dict__,
                "layers": [b.__dict__ for b in r.blocks],
                "notes": r.notes,
            }
            for e, r in results.items()
        },
        "warnings": sorted({f"epoch {e}: {w}" for e, r in results.items() for w in r.notes}),
    }
    ctx.out.json("gradient_noise", doc)
    ctx.out.arrays(
        "gradient_noise",
        attrs={"layers": layers, **computed_on, "definitions": definitions},
        epochs=np.array(epochs),
        loss=np.array([results[e].loss for e in epochs]),
        **arrays,
    )
    ctx.out.layer_scalars("gradient_noise_layers", {b.name: _row(b) for b in last.blocks})
    for k, _ in METRICS:
        ctx.out.scalar(k, getattr(last.total, k))
    ctx.out.scalar("b_simple_biased", last.total.b_simple_biased)
    ctx.out.scalar("n_images", last.n_images)
    ctx.out.scalar("memory_bound_mb", last.memory_bound_bytes / 2**20)
    _figure(ctx, arrays, layers, epochs, last.n_images)


def _figure(ctx: probe.Context, arrays: dict, layers: list[str], epochs: list[int], n: int):
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = ctx.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        per = arrays[f"{key}_layers"]
        for i, name in enumerate(layers):
            if np.any(np.isfinite(per[:, i]) & (per[:, i] > 0)):
                ax.plot(
                    epochs,
                    per[:, i],
                    "o-",
                    ms=2.5,
                    lw=1,
                    color=cmap(i / max(1, len(layers) - 1)),
                    label=name,
                )
        if np.any(np.isfinite(arrays[key]) & (arrays[key] > 0)):
            ax.plot(epochs, arrays[key], "k-", lw=2.2, marker="s", ms=4, label="whole model")
        if key == "b_simple":
            ax.axhline(n, color="tab:red", lw=0.8, ls="--", label=f"n = {n} images")
        ax.set_yscale("log")
        ax.set(xlabel="epoch", title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6, title="layer", title_fontsize=7)
    ctx.out.figure(
        "gradient_noise",
        fig,
        caption=f"Per-example gradient statistics on {n} stored training images (eval mode, "
        "BatchNorm running statistics) per epoch, for each layer (colours) and the whole model "
        "(black): the noise scale B_simple (a critical batch size estimate), the gradient SNR, "
        "the gradient diversity and the mean gradient's norm.",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="gradient-noise",
            run=run,
            params=Params,
            scope="run",
            needs={"model", "analysis_batch"},
            summary="Gradient noise scale B_simple, gradient SNR and diversity from per-example "
            "gradients, per epoch and layer (eval mode).",
            report_order=160,
            caption=(
                "Per-example gradient statistics per epoch and layer; B_simple estimates the batch"
                " size at which gradient noise equals its signal."
            ),
            headline={"b_simple": "B_simple"},
        )
    )
