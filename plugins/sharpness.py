"""`sharpness`: how much the loss rises under worst-case and random weight perturbations.

Three numbers per epoch, each a loss increase over the base loss on the run's stored
un-augmented analysis batch, in eval mode: worst-case in the box |d| <= eps (|w| + 1)
(Keskar et al., 2017), adaptive worst-case with |w| scaling (ASAM, Kwon et al., 2021)
and average-case under Gaussian noise. Ascent gives a lower bound of the true
worst case. Numerics: `probe.numerics.sharpness` (docs/curvature.md); this plugin turns
its parameters into the measures' configs and stores and draws the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    eps: float = probe.param(
        1e-3, "Worst-case box radius, relative to |w| + 1.", min=1e-12, max=10.0
    )
    adaptive_eps: float = probe.param(
        0.05, "Adaptive radius: ||d / |w| || <= adaptive_eps.", min=1e-12, max=10.0
    )
    adaptive_norm: str = probe.param("l2", "Norm of the adaptive ball.", choices=("l2", "linf"))
    average_eps: float = probe.param(
        0.01, "Standard deviation of the random perturbation.", min=1e-12, max=10.0
    )
    average_adaptive: bool = probe.param(False, "Scale the random perturbation by |w|.")
    steps: int = probe.param(20, "Projected gradient ascent steps.", min=1, max=10_000)
    samples: int = probe.param(
        50,
        "Average case: antithetic noise pairs drawn at least (2 loss evaluations each).",
        min=2,
        max=10_000,
    )
    max_samples: int = probe.param(
        200,
        "Average case: more pairs, up to this many, until the standard error is at "
        "most target_rel_stderr of the value.",
        min=2,
        max=10_000,
    )
    target_rel_stderr: float = probe.param(
        0.1,
        "Average case: stop drawing once s.e. <= this x |value| (0: exactly `samples` pairs).",
        min=0.0,
        max=10.0,
    )
    n_images: int = probe.param(
        1024,
        "Images per batch, taken in order from the start of the stored analysis batch.",
        min=1,
        max=100_000,
    )
    batches: int = probe.param(
        1,
        "Disjoint batches of n_images each: per-batch values, their mean and standard "
        "error, and the value on all of them combined.",
        min=1,
        max=1000,
    )
    batch_size: int = probe.param(
        256, "Mini-batch size; results are averaged weighted by sample count.", min=1, max=100_000
    )
    seed: int = probe.param(0, "Seed for the random start and the noise.", min=0, max=2**32 - 1)


def measure_configs(p: Params) -> dict:
    """Each measure's options (`probe.numerics` configs) for these parameters, in plot order."""
    from probe.numerics import AdaptiveConfig, AverageConfig, WorstCaseConfig

    common = {"batch_size": p.batch_size, "seed": p.seed}
    return {
        "worst_case": WorstCaseConfig(eps=p.eps, steps=p.steps, **common),
        "adaptive": AdaptiveConfig(
            eps=p.adaptive_eps, norm=p.adaptive_norm, steps=p.steps, **common
        ),
        "average": AverageConfig(
            eps=p.average_eps,
            samples=p.samples,
            adaptive=p.average_adaptive,
            max_samples=p.max_samples,
            target_rel_stderr=p.target_rel_stderr,
            **common,
        ),
    }


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe.numerics import sharpness_over_batches, split_batches

    p = ctx.params
    batch = ctx.analysis_batch()
    x = batch.normalized(ctx.device)
    # one batch: as before, at most what is stored
    n = min(p.n_images, len(x)) if p.batches == 1 else p.n_images
    parts = split_batches(x, batch.labels, p.batches, n)
    model = ctx.model()
    spreads = [
        sharpness_over_batches(measure, model, parts, config)
        for measure, config in measure_configs(p).items()
    ]
    results = [b.combined for b in spreads]
    total = p.batches * n
    computed_on = {
        "images": total,
        "batches": p.batches,
        "images_per_batch": n,
        "data": f"the run's stored un-augmented analysis batch, first {total} images, split in "
        f"order into {p.batches} disjoint batch(es)",
        "batchnorm": "eval (running statistics)",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "perturbed": "every trainable parameter: weights, biases and BatchNorm affine terms",
    }
    doc = {
        "epoch": ctx.epoch,
        "n_images": total,
        "computed_on": computed_on,
        "results_are": "each measure on all the images as one batch (the combined value)",
        "results": [r.__dict__ for r in results],
    }
    if p.batches > 1:
        doc["over_batches_are"] = (
            "each measure on each disjoint batch separately (per_batch), their mean and "
            "standard error over batches (the variation over the data)"
        )
        doc["over_batches"] = [
            {k: v for k, v in b.__dict__.items() if k != "combined"} for b in spreads
        ]
    ctx.out.json("sharpness", doc)

    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    xs = range(len(results))
    labels = [f"{r.measure}\n(eps={r.eps:g}, {r.norm})" for r in results]
    ax.bar(
        xs,
        [r.increase for r in results],
        yerr=[r.stderr or 0 for r in results],
        color="tab:blue",
        width=0.5,
        capsize=4,
        label=f"combined, {total} images" + " (+- Monte Carlo s.e.)",
    )
    if p.batches > 1:
        off = [i + 0.35 for i in xs]
        ax.errorbar(
            off,
            [b.mean for b in spreads],
            yerr=[b.stderr for b in spreads],
            fmt="o",
            color="black",
            capsize=4,
            label=f"mean +- s.e. over {p.batches} batches of {n}",
        )
        for i, b in zip(off, spreads, strict=True):
            ax.plot([i] * len(b.per_batch), b.per_batch, ".", color="grey", ms=4)
    avg = results[2]
    if avg.distinguishable_from_zero is False:
        ax.annotate(
            "indistinguishable\nfrom 0 (< 2 s.e.)",
            (2, avg.increase),
            ha="center",
            va="bottom",
            fontsize=7,
            color="tab:red",
        )
    ax.set_xticks(list(xs), labels)
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    ax.set(
        ylabel="loss increase over base loss",
        title=f"sharpness, epoch {ctx.epoch} (base loss "
        f"{results[0].base_loss:.4f}, {total} images, eval BN)",
    )
    caption = (
        "Loss increase under the worst perturbation found (lower bound) and under random noise "
        f"(bar: the combined value on all {total} images, +- 1 Monte Carlo s.e. for the average "
        "case"
    )
    if p.batches > 1:
        caption += (
            f"; black: mean +- 1 s.e. over {p.batches} disjoint batches of {n}, grey: each batch"
        )
    caption += "); larger means a sharper minimum at that radius."
    if avg.distinguishable_from_zero is False:
        caption += (
            f" The average-case value {avg.increase:.3g} is within 2 s.e. ({avg.stderr:.2g}) of "
            f"zero: indistinguishable from zero at {avg.samples} samples."
        )
    ctx.out.figure("sharpness", fig, caption=caption)
    ctx.out.scalar("base_loss", results[0].base_loss)
    for r in results:
        ctx.out.scalar(r.measure, r.increase)
    ctx.out.scalar("average_stderr", avg.stderr)
    ctx.out.scalar("average_distinguishable_from_zero", float(avg.distinguishable_from_zero))
    ctx.out.scalar("average_samples", avg.samples)
    if p.batches > 1:
        for b in spreads:
            ctx.out.scalar(f"{b.measure}_batch_mean", b.mean)
            ctx.out.scalar(f"{b.measure}_batch_stderr", b.stderr)


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
