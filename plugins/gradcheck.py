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

import probe
from probe.library.gradients import (  # shared with probe.gradcheck
    THRESHOLD,
    check_layers,
    gradcheck_caption,
    gradcheck_figure,
    gradcheck_record,
    gradcheck_scalars,
    gradcheck_title,
)
from probe.library.gradients import GradcheckParams as Params

__all__ = ["THRESHOLD", "Params", "cost", "register_analyses", "run"]


def cost(p: Params, info: probe.RunInfo) -> probe.Cost:
    """4 float64 forwards (a Richardson central difference) per weight, of 8 x max_layers."""
    layers = info.conv_layers or info.linear_layers
    weights = p.samples_per_layer * min(layers, p.max_layers or layers)
    n = min(p.n_images, info.stored_images)
    # float64 under the freezing dispatch mode: 4-9x a float32 forward (resnet-20, 16 images)
    return probe.Cost(4 * weights + 2, "forward", n, factor=4.0, note="perturbed forwards")


def run(ctx: probe.Context) -> None:
    p = ctx.params
    batch = ctx.analysis_batch()
    x = batch.normalized("cpu")[: p.n_images]
    y = batch.labels[: p.n_images]
    kind, rows, n_layers = check_layers(ctx.model(), x, y, p, f"epoch {ctx.epoch}: ")
    scalars = gradcheck_scalars(rows, kind)
    title = gradcheck_title(p, rows, len(x), scalars["max_rel_error"], f", epoch {ctx.epoch}")
    fig = gradcheck_figure(rows, kind, title)
    ctx.out.figure("gradcheck", fig, caption=gradcheck_caption(kind))
    ctx.out.json(
        "gradcheck", {"epoch": ctx.epoch, **gradcheck_record(rows, p, kind, len(x), n_layers)}
    )
    for name, value in scalars.items():
        ctx.out.scalar(name, value)


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
