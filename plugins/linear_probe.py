"""`linear-probe`: per layer and epoch, the accuracy of a linear classifier on the layer's features.

Alain & Bengio (2016, "Understanding intermediate layers using linear classifier probes")
trained a linear classifier on each layer's frozen features: its accuracy says how
linearly separable the classes already are there, and how that grows with depth and with
training. Here, on the probe set's activations as the dump stores them (conv layers
average-pooled over space, one value per channel), for every recorded layer (or those
named) and every selected epoch: a multinomial logistic regression (scikit-learn, lbfgs,
L2 penalty of inverse strength C on standardised features) scored by stratified k-fold
cross-validation with a fixed seed, the same folds for every layer and epoch. The result
holds a layer x epoch table, each fold's accuracy, the training accuracy, the chance
level, and flags for fits that did not converge and folds with few images per class.
Numerics: `probe.numerics.probing` (docs/dynamics.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import probe


@dataclass(frozen=True)
class Params:
    layers: str = probe.param(
        "all",
        "Layers to probe: all (every recorded layer), penultimate, or a comma-separated list.",
    )
    folds: int = probe.param(
        5, "Stratified cross-validation folds (every class needs this many images).", min=2, max=50
    )
    C: float = probe.param(
        1.0,
        "Inverse L2 regularisation strength of the logistic regression (scikit-learn's C).",
        min=1e-6,
        max=1e6,
    )
    max_iter: int = probe.param(1000, "Most lbfgs iterations per fit.", min=10, max=100_000)
    tol: float = probe.param(1e-4, "lbfgs stopping tolerance.", min=1e-12, max=1.0)
    standardize: bool = probe.param(
        True, "Standardise each feature with the training fold's mean and std before fitting."
    )
    seed: int = probe.param(0, "Seed of the fold split (recorded).", min=0, max=2**32 - 1)

    def __post_init__(self) -> None:
        if len(self.layers) > 10_000:
            raise ValueError("layers must be at most 10000 characters")


def select_layers(ctx: probe.Context, spec: str, epoch: int) -> list[str]:
    """The layers `spec` names at `epoch` (all, penultimate, or a comma list), in network order."""
    recorded = ctx.layers(epoch)
    if spec == "all":
        return recorded
    wanted = {ctx.resolve_layer(n.strip(), epoch, "--param layers") for n in spec.split(",")}
    return [n for n in recorded if n in wanted]


def _labels(ctx: probe.Context, n: int):
    import numpy as np

    labels = np.asarray(ctx.probe_set().labels)
    if len(labels) != n:
        raise probe.ProbeError(
            f"the activation dump holds {n} probe images, the stored probe set {len(labels)}"
        )
    return labels


def _skip_if_too_few(ctx: probe.Context, labels, folds: int) -> None:
    from probe.numerics import probing as P

    names = ctx.class_names()
    label, fewest = P.fewest_per_class(labels)
    name = names[label] if 0 <= label < len(names) else str(label)
    if len(set(labels.tolist())) < 2:
        raise probe.Skip("the probe set holds one class: nothing to classify")
    if fewest < folds:
        raise probe.Skip(
            f"the probe set has {fewest} images of class '{name}' (the fewest), fewer than "
            f"folds={folds}: lower --param folds or train with a larger --probe-set-size"
        )


def run(ctx: probe.Context) -> None:
    import numpy as np

    from probe.numerics import probing as P

    p = ctx.params
    epochs = list(ctx.epochs)
    if not epochs:
        raise probe.ProbeError("linear-probe: no complete epoch selected")
    layers = select_layers(ctx, p.layers, epochs[-1])
    labels = _labels(ctx, len(ctx.activations(layers[0], epochs[-1])))
    _skip_if_too_few(ctx, labels, p.folds)
    fit = functools.partial(
        _probe_piece,
        labels=labels,
        folds=p.folds,
        C=p.C,
        seed=p.seed,
        max_iter=p.max_iter,
        tol=p.tol,
        standardize=p.standardize,
    )
    table: dict[int, dict[str, P.ProbeResult]] = {}
    for e in epochs:
        here = [n for n in layers if n in ctx.layers(e)]
        results = ctx.map(fit, [ctx.activations(n, e) for n in here], f"epoch {e}")
        table[e] = dict(zip(here, results, strict=True))
    acc = np.array([[_get(table[e], n, "accuracy") for e in epochs] for n in layers])
    _write(ctx, table, layers, epochs, acc, labels)


def _probe_piece(features, **kw):
    """One layer at one epoch: a piece for `ctx.map` (module-level, so it pickles)."""
    from probe.numerics import probing as P

    return P.linear_probe(features, **kw)


def _get(row: dict, layer: str, field: str) -> float:
    r = row.get(layer)
    return float("nan") if r is None else float(getattr(r, field))


def _write(ctx: probe.Context, table: dict, layers: list[str], epochs: list[int], acc, labels):
    import numpy as np

    p = ctx.params
    last = epochs[-1]
    regularisation = (
        f"multinomial logistic regression (scikit-learn LogisticRegression, lbfgs, "
        f"max_iter={p.max_iter}, tol={p.tol:g}) minimising C x (sum of the training images' "
        f"log-losses) + ||W||_F^2 / 2 with C={p.C:g} (L2 on the weights, intercept unpenalised); "
        f"features {'standardised with the training fold mean and std' if p.standardize else 'raw'}"
    )
    folds = f"StratifiedKFold(n_splits={p.folds}, shuffle=True, random_state={p.seed})"
    warnings = sorted(
        {f"epoch {e}, {n}: {w}" for e in epochs for n, r in table[e].items() for w in r.warnings}
    )
    doc = {
        "epochs": epochs,
        "layers": layers,
        "accuracy": acc,
        "classifier": regularisation,
        "folds": folds,
        "data": f"probe set, {len(labels)} images, pooled activations as dumped (float16 stored)",
        "chance": float(np.max(np.bincount(labels)) / len(labels)),
        "results": {str(e): {n: r.__dict__ for n, r in table[e].items()} for e in epochs},
        "unconverged": [[e, n] for e in epochs for n, r in table[e].items() if not r.converged],
        "warnings": warnings,
    }
    ctx.out.json("linear_probe", doc)
    std = np.array([[_get(table[e], n, "accuracy_std") for e in epochs] for n in layers])
    train = np.array([[_get(table[e], n, "train_accuracy") for e in epochs] for n in layers])
    ctx.out.arrays(
        "linear_probe",
        attrs={"layers": layers, "classifier": regularisation, "folds": folds},
        accuracy=acc,
        accuracy_std=std,
        train_accuracy=train,
        epochs=np.array(epochs),
    )
    ctx.out.layer_scalars(
        "linear_probe_layers",
        {
            n: {
                "accuracy": r.accuracy,
                "accuracy_std": r.accuracy_std,
                "train_accuracy": r.train_accuracy,
                "converged": r.converged,
            }
            for n, r in table[last].items()
        },
    )
    final = acc[:, -1]
    if layers[-1] == ctx.layers(last)[-1]:  # the penultimate layer was probed
        ctx.out.scalar("penultimate_accuracy", float(final[-1]))
    if np.any(np.isfinite(final)):
        best = int(np.nanargmax(final))
        ctx.out.scalar("best_layer", layers[best])
        ctx.out.scalar("best_accuracy", float(final[best]))
    ctx.out.scalar("chance", doc["chance"])
    ctx.out.scalar("all_converged", not doc["unconverged"])
    _figure(ctx, layers, epochs, acc, std, doc["chance"])


def _figure(ctx: probe.Context, layers, epochs, acc, std, chance: float) -> None:
    import numpy as np

    plt = ctx.pyplot()
    fig, (ax, bx) = plt.subplots(
        1,
        2,
        figsize=(min(4 + 0.45 * len(epochs), 16) + 5, 0.5 * len(layers) + 3),
        gridspec_kw={"width_ratios": [max(1.0, len(epochs) / 6), 1]},
        constrained_layout=True,
    )
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    step = max(1, int(np.ceil(len(epochs) / 25)))
    ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]], fontsize=8)
    if acc.size <= 200:
        for i in range(acc.shape[0]):
            for j in range(acc.shape[1]):
                if np.isfinite(acc[i, j]):
                    color = "black" if acc[i, j] > 0.6 else "white"
                    ax.text(
                        j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                    )
    ax.set(xlabel="epoch", ylabel="layer (input -> output)", title="linear-probe accuracy")
    fig.colorbar(im, ax=ax, label="cross-validated accuracy")
    y = np.arange(len(layers))
    bx.errorbar(acc[:, -1], y, xerr=std[:, -1], fmt="o-", capsize=3, label=f"epoch {epochs[-1]}")
    if len(epochs) > 1:
        bx.plot(acc[:, 0], y, "s:", color="grey", label=f"epoch {epochs[0]}")
    bx.axvline(chance, color="tab:red", lw=0.8, ls="--", label="chance (largest class)")
    bx.set_yticks(y, layers, fontsize=8)
    bx.invert_yaxis()
    bx.set(xlabel="accuracy (+- std over folds)", xlim=(0, 1.02), title="by layer")
    bx.legend(fontsize=7)
    p = ctx.params
    ctx.out.figure(
        "linear_probe",
        fig,
        caption=f"Accuracy of a multinomial logistic-regression probe (C={p.C:g}, {p.folds}-fold "
        f"stratified CV, seed {p.seed}) on each layer's pooled probe-set activations, per epoch; "
        "rising down the rows: deeper layers are more linearly separable.",
    )


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="linear-probe",
            run=run,
            params=Params,
            scope="run",
            needs={"activations", "probe_set"},
            summary="Cross-validated linear-probe (logistic regression) accuracy per layer and "
            "epoch, as a heat map (Alain & Bengio 2016).",
            report_order=140,
            caption=(
                "Cross-validated accuracy of a linear classifier on each layer's probe-set "
                "features; higher means the classes are more linearly separable there."
            ),
            headline={"penultimate_accuracy": "probe_acc"},
        )
    )
