"""`gradcheck`: autograd against central finite differences for sampled conv weights.

A model without conv layers (an MLP) has its Linear layers checked instead.

The notebook checked one layer in float32 with the model in train mode (so each
forward pass also moved the BatchNorm running statistics of the model it was
checking) and got relative errors of 1e-2 to 1e-3, which cannot tell a correct
backward pass from a subtly wrong one. Here `probe.numerics.gradcheck.gradcheck_conv_layers`
checks every conv layer on a float64, eval-mode copy, with every piecewise-linear choice
(ReLU on/off, clamp pieces, max-pool winners: the aten operations themselves, so functional
calls like F.relu are held too) fixed across the perturbation; a correct backward pass then
gives relative errors of 1e-9 to 1e-7, well below the 1e-6 line drawn in the figure. A
weight whose gradient is below what float64 finite differences resolve (~1e-11) passes
within that absolute floor and is drawn hollow.
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

THRESHOLD = 1e-6


@dataclass(frozen=True)
class Params:
    n_images: int = probe.param(
        16, "Images of the stored analysis batch to use (its first ones).", min=1, max=4096
    )
    samples_per_layer: int = probe.param(8, "Weights drawn per conv layer.", min=1, max=10_000)
    max_layers: int = probe.param(
        8,
        "Layers checked, evenly spread from first to last (0: every layer); each weight costs "
        "4 forward passes of the model, so all layers of a deep model cost depth^2.",
        min=0,
        max=10_000,
    )
    eps: float = probe.param(1e-3, "Finite-difference step.", min=1e-12, max=1.0)
    seed: int = probe.param(0, "Seed for drawing the weights.", min=0, max=2**32 - 1)
    freeze_kinks: bool = probe.param(
        True,
        "Hold every piecewise choice (ReLU on/off, clamp pieces, max-pool winners) fixed "
        "across w +- eps "
        "(else kinks crossed by the step dominate the error).",
    )


def cost(p: Params, info: probe.RunInfo) -> probe.Cost:
    """4 float64 forwards (a Richardson central difference) per weight, of 8 x max_layers."""
    layers = info.conv_layers or info.linear_layers
    weights = p.samples_per_layer * min(layers, p.max_layers or layers)
    n = min(p.n_images, info.stored_images)
    # float64 under the freezing dispatch mode: 4-9x a float32 forward (resnet-20, 16 images)
    return probe.Cost(4 * weights + 2, "forward", n, factor=4.0, note="perturbed forwards")


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from probe.numerics import gradcheck_conv_layers

    p = ctx.params
    batch = ctx.analysis_batch()
    x = batch.normalized("cpu")[: p.n_images]
    y = batch.labels[: p.n_images]
    from torch import nn

    model = ctx.model()
    # Conv layers are what the check is about; a model without any (an MLP) has its Linear layers
    # checked.
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    kind, types = ("conv", (nn.Conv2d,)) if has_conv else ("linear", (nn.Linear,))
    rows = gradcheck_conv_layers(
        model,
        x,
        y,
        n_samples_per_layer=p.samples_per_layer,
        eps=p.eps,
        seed=p.seed,
        freeze_kinks=p.freeze_kinks,
        layer_types=types,
        max_layers=p.max_layers or None,
    )
    n_layers = sum(isinstance(m, types) for m in model.modules())
    if not rows:
        raise probe.Skip("the model has no Conv2d or Linear layer to check")
    if not all(np.isfinite([r.rel_error, r.analytic, r.numeric]).all() for r in rows):
        raise probe.ProbeError(
            f"epoch {ctx.epoch}: the loss or its gradient is not finite at this checkpoint"
        )
    # Weights whose derivative is under float64's finite-difference floor cannot be checked
    # to a relative error; they pass within that floor and are drawn hollow, apart.
    resolved = [r for r in rows if not r.below_resolution]
    rel = np.array([r.rel_error for r in resolved] or [np.nan])
    layers = list(dict.fromkeys(r.layer for r in rows))
    floor = 1e-17  # exact agreement (both 0) cannot sit on a log axis

    fig, ax = plt.subplots(figsize=(1.1 * len(layers) + 4, 4.5), constrained_layout=True)
    rng = np.random.default_rng(0)
    for i, layer in enumerate(layers):
        sel = [r for r in rows if r.layer == layer]
        v = np.maximum([r.rel_error for r in sel], floor)
        jitter = i + rng.uniform(-0.18, 0.18, len(sel))
        kinks = np.array([r.kink for r in sel])
        tiny = np.array([r.below_resolution for r in sel])
        ax.scatter(
            jitter[tiny],
            v[tiny],
            s=22,
            facecolors="none",
            edgecolors="grey",
            zorder=3,
            label="gradient under float64 finite-difference resolution" if i == 0 else None,
        )
        kinks, v, jitter = kinks[~tiny], v[~tiny], jitter[~tiny]
        ax.scatter(
            jitter[~kinks],
            v[~kinks],
            s=22,
            color="tab:blue",
            zorder=3,
            label="sampled weight" if i == 0 else None,
        )
        ax.scatter(
            jitter[kinks],
            v[kinks],
            s=26,
            marker="x",
            color="tab:orange",
            zorder=3,
            label="sampled weight; w +- eps crosses a ReLU/max-pool kink" if i == 0 else None,
        )
        if len(v):
            ax.hlines(np.median(v), i - 0.3, i + 0.3, color="black", lw=1.2, zorder=2)
    ax.axhline(THRESHOLD, color="tab:red", ls="--", lw=1, label=f"{THRESHOLD:g}")
    ax.set_yscale("log")
    every = np.array([r.rel_error for r in rows])
    ax.set_ylim(
        min(floor * 10, every[every > 0].min() / 3 if (every > 0).any() else 1e-16),
        max(1.0, every.max() * 3),
    )
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set(xlabel=f"{kind} layer", ylabel="relative error |a - n| / max(|a|, |n|)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    worst = float(np.max(rel))
    # nothing resolvable (every gradient under the floor, e.g. all exactly 0) checks nothing
    passed = bool(resolved) and all(r.agrees(THRESHOLD) for r in rows)
    ax.set_title(
        f"gradient check, epoch {ctx.epoch}: {len(rows)} weights, {len(x)} images, float64 eval "
        f"mode, eps={p.eps:g}{', patterns frozen' if p.freeze_kinks else ''}; max {worst:.1e}",
        fontsize=9,
    )
    ctx.out.figure(
        "gradcheck",
        fig,
        caption="Relative error between autograd and central differences per sampled "
        f"{kind} weight (bar: median); every point below the dashed 1e-6 line means backprop "
        "agrees with the finite differences.",
    )
    ctx.out.json(
        "gradcheck",
        {
            "epoch": ctx.epoch,
            "eps": p.eps,
            "n_images": len(x),
            "seed": p.seed,
            "freeze_kinks": p.freeze_kinks,
            "dtype": "float64",
            "mode": "eval",
            "threshold": THRESHOLD,
            "layers_checked": kind,
            "samples_per_layer": p.samples_per_layer,
            "n_layers": n_layers,
            "layers_sampled": layers,
            "frozen": "every piecewise aten op (relu, clamp, hardtanh, max-pool, comparisons, ...)"
            if p.freeze_kinks
            else "nothing",
            "resolution": rows[0].resolution,
            "passes_if": "rel_error < threshold, or abs_error <= resolution (float64 finite "
            "differences cannot resolve less); max/median_rel_error leave out below_resolution "
            "rows",
            "rows": [r.to_dict() for r in rows],
        },
    )
    ctx.out.scalar("max_rel_error", worst)
    ctx.out.scalar("median_rel_error", float(np.median(rel)))
    ctx.out.scalar("n_checked", len(rows))
    ctx.out.scalar("n_below_resolution", len(rows) - len(resolved))
    ctx.out.scalar("passed", bool(passed))
    ctx.out.scalar("layers_checked", kind)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="gradcheck",
            run=run,
            cost=cost,
            params=Params,
            scope="epoch",
            needs={"model", "analysis_batch"},
            summary="Autograd vs float64 central differences for sampled weights of every conv "
            "layer (Linear without conv).",
            report_order=60,
            caption=(
                "Backpropagated against finite-difference gradients per parameter tensor; "
                "relative errors far below 1e-3 mean the gradients are computed correctly."
            ),
        )
    )
