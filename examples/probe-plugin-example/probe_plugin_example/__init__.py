"""An example probe plugin: how far each layer's weights travel from initialisation.

For every selected epoch it reports the L2 norm of each conv/linear weight and its
distance from the epoch-0 weights, relative to the initial norm, and draws both.
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    relative: bool = probe.param(
        True, "Divide the distance from initialisation by the initial norm."
    )


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    init = ctx.checkpoint(0).model_state
    names = [k for k, v in init.items() if k.endswith("weight") and v.dim() > 1]
    dist = np.zeros((len(ctx.epochs), len(names)))
    for i, epoch in enumerate(ctx.progress(ctx.epochs, "epochs")):
        state = ctx.checkpoint(epoch).model_state
        for j, name in enumerate(names):
            d = (state[name] - init[name]).norm().item()
            dist[i, j] = d / init[name].norm().item() if ctx.params.relative else d
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, name in enumerate(names):
        ax.plot(ctx.epochs, dist[:, j], "o-", ms=3, label=name)
    ax.set(
        xlabel="epoch",
        ylabel="relative distance from init" if ctx.params.relative else "distance from init",
    )
    ax.legend(fontsize=7)
    ctx.out.figure(
        "distance", fig, caption="How far each layer's weights moved from initialisation."
    )
    ctx.out.arrays(
        "distance", distance=dist, epochs=np.array(ctx.epochs), layers=np.array(names, dtype="S")
    )
    ctx.out.scalar("max_distance", float(dist.max()))


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="example",
            run=run,
            params=Params,
            scope="run",
            needs={"checkpoint"},
            summary="How far each layer's weights moved from initialisation, per epoch.",
        )
    )
