"""`forgetting`: example forgetting (Toneva et al. 2019) and the data map (Swayamdipta et al. 2020).

Reads the run's per-example records: the logits of a fixed, class-stratified set of training
images (`--example-records`, default 1,000), recorded after every epoch in eval mode on the
un-augmented images. Over the selected epochs (epoch 0, the initialisation, left out unless
`include_init`), per example: forgetting events (correct at one recorded epoch, wrong at the
next), learned / never learned / unforgettable, and the data map's confidence, variability
and correctness. Per-epoch records see fewer events than Toneva et al.'s per-step ones: the
counts are lower bounds of theirs. A run without records (older runs, or
`--example-records 0`) skips in one line. Numerics: `probe.numerics.forgetting`.
"""

from __future__ import annotations

from dataclasses import dataclass

import probe

GRID = 16  # the most forgotten images shown


@dataclass(frozen=True)
class Params:
    include_init: bool = probe.param(
        False,
        "Count from epoch 0 (the initialisation) too; by default the history starts at the "
        "first trained epoch, as Toneva et al.'s starts at the first presentation.",
    )


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics.forgetting import example_history

    examples = ctx.examples()
    epochs = [e for e in ctx.epochs if ctx.params.include_init or e > 0]
    if len(epochs) < 2:
        raise probe.Skip(
            f"forgetting needs at least two recorded epochs after the initialisation, "
            f"got {epochs or 'none'}"
        )
    labels = examples.labels.numpy()
    logits = np.stack([ctx.example_logits(e).numpy() for e in epochs])
    h = example_history(logits, labels)
    counts = h.counts()
    ctx.out.arrays(
        "forgetting",
        attrs={
            "epochs": epochs,
            "definition": "forgetting event: correct at one recorded epoch, incorrect at the "
            "next (per-epoch records: a lower bound of per-step counts); unforgettable: "
            "learned and never forgotten; confidence/variability: mean/std over epochs of "
            "p(true class); correctness: fraction of epochs correct",
        },
        indices=examples.indices.numpy(),
        labels=labels,
        events=h.events,
        learned=h.learned,
        unforgettable=h.unforgettable,
        first_learned=np.array([epochs[i] if i >= 0 else -1 for i in h.first_learned]),
        confidence=h.confidence,
        variability=h.variability,
        correctness=h.correctness,
    )
    ctx.out.json("forgetting", {"epochs": epochs, **counts})
    for k, v in counts.items():
        ctx.out.scalar(k, v)
    ctx.out.scalar("mean_forgetting_events", float(h.events.mean()))
    ctx.out.scalar("unforgettable_fraction", counts["unforgettable"] / counts["examples"])
    _data_map(ctx, h, epochs)
    _most_forgotten(ctx, examples, h)


def _data_map(ctx: probe.Context, h, epochs: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    sc = ax.scatter(
        h.variability, h.confidence, c=h.correctness, cmap="coolwarm_r", s=9, vmin=0, vmax=1
    )
    fig.colorbar(sc, ax=ax, label="correctness (fraction of epochs)")
    ax.set(
        xlabel="variability (std of p(true class) over epochs)",
        ylabel="confidence (mean p(true class))",
        title=f"data map: {len(h.events)} training examples, epochs {epochs[0]}-{epochs[-1]}",
        xlim=(0, max(0.5, float(h.variability.max()) * 1.05)),
        ylim=(0, 1),
    )
    top = int(h.events.max())
    hx.hist(h.events, bins=np.arange(top + 2) - 0.5, color="tab:blue", rwidth=0.85)
    hx.xaxis.set_major_locator(MaxNLocator(integer=True))
    hx.set(
        xlabel="forgetting events per example (per-epoch records)",
        ylabel="examples",
        title=f"never learned {int(h.never_learned.sum())}, unforgettable "
        f"{int(h.unforgettable.sum())}",
    )
    ctx.out.figure(
        "data_map",
        fig,
        caption="Left: the data map (Swayamdipta et al. 2020): easy examples top left, "
        "ambiguous ones to the right, hard ones bottom left. Right: forgetting events per "
        "example (Toneva et al. 2019; per-epoch records undercount per-step events).",
    )


def _most_forgotten(ctx: probe.Context, examples, h) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = np.lexsort((h.confidence, -h.events))[:GRID]  # most events, then least confident
    names = ctx.class_names()
    cols = 8
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        img = examples.images[i].permute(1, 2, 0).numpy()
        ax.imshow(
            img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None
        )
        label = names[int(examples.labels[i])] if int(examples.labels[i]) < len(names) else "?"
        ax.set_title(f"{label}: {int(h.events[i])}x", fontsize=7)
    fig.suptitle("most forgotten training examples (class: forgetting events)", fontsize=9)
    ctx.out.figure(
        "most_forgotten",
        fig,
        caption="The recorded training examples forgotten most often (ties: least confident "
        "first).",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="forgetting",
            run=run,
            params=Params,
            scope="run",
            needs={"examples", "config"},
            summary="Example forgetting (Toneva et al. 2019) and the data map (Swayamdipta et "
            "al. 2020) from per-epoch predictions on recorded training examples.",
            report_order=180,
            caption=(
                "How often each recorded training example was forgotten, and where it lies "
                "on the data map."
            ),
            headline={"unforgettable_fraction": "unforgettable"},
        )
    )
