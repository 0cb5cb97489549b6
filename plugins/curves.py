"""`curves`: the training curves of a run, from its metrics alone."""

from __future__ import annotations

from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    log_loss: bool = probe.param(False, "Plot losses on a log scale.")


def run(ctx: probe.Context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = ctx.metrics()
    if not rows:
        raise probe.ProbeError(f"{ctx.run.path}: metrics.jsonl holds no epochs yet")

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    epochs = np.array([r["epoch"] for r in rows])
    train_loss, val_loss, train_acc, val_acc = (
        col("train_loss"),
        col("val_loss"),
        col("train_acc"),
        col("val_acc"),
    )
    gap = train_acc - val_acc
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(epochs, train_loss, "o-", ms=3, label="train")
    ax.plot(epochs, val_loss, "o-", ms=3, label="validation")
    ax.set(title="loss", xlabel="epoch", yscale="log" if ctx.params.log_loss else "linear")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(epochs, train_acc, "o-", ms=3, label="train")
    ax.plot(epochs, val_acc, "o-", ms=3, label="validation")
    ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    ax.legend()
    ax = axes[1, 0]
    ax.plot(epochs, col("grad_norm_mean"), "o-", ms=3, label="mean")
    ax.plot(epochs, col("grad_norm_max"), "o-", ms=3, alpha=0.6, label="max")
    ax.set(title="gradient norm per step", xlabel="epoch")
    ax.legend()
    ax = axes[1, 1]
    ax.plot(epochs, gap, "o-", ms=3, color="tab:red")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(title="generalisation gap (train acc - val acc)", xlabel="epoch")
    ctx.out.figure(
        "curves",
        fig,
        caption="Loss, accuracy, gradient norm and generalisation gap per epoch; "
        "a widening gap with falling train loss means overfitting.",
    )
    ctx.out.arrays(
        "curves",
        epoch=epochs,
        train_loss=train_loss,
        val_loss=val_loss,
        train_acc=train_acc,
        val_acc=val_acc,
        grad_norm_mean=col("grad_norm_mean"),
        grad_norm_max=col("grad_norm_max"),
        gap=gap,
    )
    best = int(np.nanargmax(val_acc))
    ctx.out.scalar("final_val_acc", float(val_acc[-1]))
    ctx.out.scalar("best_val_acc", float(val_acc[best]))
    ctx.out.scalar("best_epoch", int(epochs[best]))
    ctx.out.scalar("final_train_acc", float(train_acc[-1]))
    ctx.out.scalar("final_gap", float(gap[-1]))


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="curves",
            run=run,
            params=Params,
            scope="run",
            needs={"metrics"},
            summary="Train/validation loss and accuracy, gradient norm and generalisation gap per "
            "epoch.",
            report_order=10,
            caption=(
                "Loss, accuracy, gradient norm and generalisation gap per epoch; a widening gap "
                "while training loss keeps falling means overfitting."
            ),
        )
    )
