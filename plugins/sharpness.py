"""`sharpness`: how much the loss rises under worst-case and random weight perturbations.

Three numbers per epoch, each a loss increase over the base loss on the run's stored
un-augmented analysis batch, in eval mode: worst-case in the box |d| <= eps (|w| + 1)
(Keskar et al., 2017), adaptive worst-case with |w| scaling (ASAM, Kwon et al., 2021)
and average-case under Gaussian noise. Ascent gives a lower bound of the true
worst case. Numerics: `probe.numerics.sharpness` (docs/curvature.md); this plugin turns
its parameters into the measures' configs and stores and draws the results.
"""

from __future__ import annotations

import probe
from probe.library.flatness import SharpnessParams as Params
from probe.library.flatness import (  # shared with probe.sharpness
    compute,
    measure_configs,
    sharpness_figure,
    sharpness_record,
    sharpness_scalars,
    split,
)

__all__ = ["Params", "measure_configs", "register_analyses", "run"]


def cost(p: Params, info: probe.RunInfo) -> list[probe.Cost]:
    """Two ascents (worst-case, adaptive) of `steps` gradients and two losses per batch (and on
    the batches combined when B > 1), and 2 losses per noise pair (at most max_samples)."""
    b, n = p.batches, info.images(p.n_images, p.batches)
    runs = b + (b > 1)  # each batch, then all of them as one (counted in batches of n)
    pairs = max(p.samples, p.max_samples) if p.target_rel_stderr > 0 else p.samples
    return [
        probe.Cost(2 * runs * p.steps, "backward", n, note="ascent steps"),
        probe.Cost(2 * 2 * runs + b * (2 * pairs + 1), "forward", n, upto=pairs > p.samples),
    ]


def run(ctx: probe.Context) -> None:
    p = ctx.params
    batch = ctx.analysis_batch()
    parts, n = split(batch.normalized(ctx.device), batch.labels, p)
    model = ctx.model()
    spreads = compute(model, parts, p)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    doc = sharpness_record(spreads, p, n, dtype, "the run's stored un-augmented analysis batch")
    ctx.out.json("sharpness", {"epoch": ctx.epoch, **doc})
    fig, caption = sharpness_figure(spreads, p, n, f", epoch {ctx.epoch}")
    ctx.out.figure("sharpness", fig, caption=caption)
    for name, value in sharpness_scalars(spreads, p).items():
        ctx.out.scalar(name, value)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="sharpness",
            run=run,
            cost=cost,
            params=Params,
            scope="epoch",
            version="2",
            needs={"model", "analysis_batch"},
            summary="Worst-case (Keskar), adaptive (ASAM) and average-case sharpness as loss "
            "increases, eval mode.",
            report_order=90,
            caption=(
                "Loss increase under small weight perturbations of a given radius; lower means a "
                "flatter minimum, which often goes with better generalisation."
            ),
            headline={"worst_case": "sharpness"},
        )
    )
