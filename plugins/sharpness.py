"""`sharpness`: how much the loss rises under worst-case and random weight perturbations.

Three numbers per epoch, each a loss increase over the base loss on the run's stored
un-augmented analysis batch, in eval mode: worst-case in the box |d| <= eps (|w| + 1)
(Keskar et al., 2017), adaptive worst-case with |w| scaling (ASAM, Kwon et al., 2021)
and average-case under Gaussian noise. Ascent gives a lower bound of the true
worst case. Numerics: `probe.sharpness` (docs/curvature.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    eps: float = probe.param(1e-3, "Worst-case box radius, relative to |w| + 1.", min=1e-12, max=10.0)
    adaptive_eps: float = probe.param(0.05, "Adaptive radius: ||d / |w| || <= adaptive_eps.", min=1e-12, max=10.0)
    adaptive_norm: str = probe.param("l2", "Norm of the adaptive ball.", choices=("l2", "linf"))
    average_eps: float = probe.param(0.01, "Standard deviation of the random perturbation.", min=1e-12, max=10.0)
    average_adaptive: bool = probe.param(False, "Scale the random perturbation by |w|.")
    steps: int = probe.param(20, "Projected gradient ascent steps.", min=1, max=10_000)
    samples: int = probe.param(20, "Random perturbations (antithetic pairs) for the average case.", min=2, max=10_000)
    n_images: int = probe.param(1024, "Images of the stored analysis batch to use (its first ones).", min=1, max=100_000)
    batch_size: int = probe.param(256, "Mini-batch size; results are averaged weighted by sample count.", min=1, max=100_000)
    seed: int = probe.param(0, "Seed for the random start and the noise.", min=0, max=2**32 - 1)


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe import sharpness as S

    p = ctx.params
    batch = ctx.analysis_batch()
    x, y = batch.normalized(ctx.device)[: p.n_images], batch.labels[: p.n_images]
    model = ctx.model()
    common = {"batch_size": p.batch_size, "seed": p.seed}
    results = [
        S.worst_case_sharpness(model, x, y, eps=p.eps, steps=p.steps, **common),
        S.adaptive_sharpness(model, x, y, eps=p.adaptive_eps, norm=p.adaptive_norm, steps=p.steps, **common),
        S.average_sharpness(model, x, y, eps=p.average_eps, samples=p.samples, adaptive=p.average_adaptive, **common),
    ]
    ctx.out.json("sharpness", {"epoch": ctx.epoch, "n_images": len(x), "results": [r.__dict__ for r in results]})
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    labels = [f"{r.measure}\n(eps={r.eps:g}, {r.norm})" for r in results]
    ax.bar(labels, [r.increase for r in results], yerr=[r.stderr or 0 for r in results], color="tab:blue")
    ax.set(ylabel="loss increase over base loss", title=f"sharpness, epoch {ctx.epoch} (base loss "
           f"{results[0].base_loss:.4f})")
    ctx.out.figure("sharpness", fig, caption="Loss increase under the worst perturbation found (lower bound) and "
                   "under random noise (+- 1 s.e.); larger means a sharper minimum at that radius.")
    ctx.out.scalar("base_loss", results[0].base_loss)
    for r in results:
        ctx.out.scalar(r.measure, r.increase)
    ctx.out.scalar("average_stderr", results[2].stderr)


@probe.hookimpl
def register_analyses(register) -> None:
    register(probe.Analysis(
        name="sharpness", run=run, params=Params, scope="epoch", needs={"model", "analysis_batch"},
        summary="Worst-case (Keskar), adaptive (ASAM) and average-case sharpness as loss increases, eval mode.",
    ))
