"""`hessian_analysis`: the Hessian (or Gauss-Newton) spectrum of a model's loss, in steps.

`hessian_analysis(model, x, y, config, **options)` takes a `HessianConfig` (or its fields as
keywords, or both: the keywords replace the config's fields) and returns a `HessianReport`.
The steps, each a function of its own here:

1. `batch_losses`: the batch split into `batches` disjoint equal batches, one `BatchedLoss`
   each; every loss must be finite.
2. `batch_operator`: one operator per batch (its own cached first-order graph).
3. `combined_operator`: the mean of the batches' operators, the operator of the mean loss over
   all of x; with per_batch="ritz" it records every product for step 5.
4. `solve`: the eigenpairs of the combined operator, warm-started from `init`.
5. `per_batch_results`: each batch's eigenpairs (Rayleigh-Ritz on the recorded products, or
   a solve of its own) and its Hutchinson samples.
6. `traces`, `slq_density`, `block_results`: the trace (combined, per batch, per block, from the
   probe vectors drawn per batch), the density, and each parameter block's top eigenpair and trace.

Guarantees: the model is never mutated (weights, buffers, train/eval flags are as before the
call); the same config and seed give the same numbers; a NaN/inf loss is a `probe.ProbeError`;
a bad option is a `probe.UsageError` naming it; every eigenvalue says whether it converged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probe.numerics.checks import check, check_finite
from probe.numerics.curvature import operators
from probe.numerics.curvature.blocks import BlockLayout
from probe.numerics.curvature.config import HessianConfig
from probe.numerics.curvature.linear import (
    BlockOperator,
    EigenResult,
    LinearOperator,
    MeanOperator,
    RecordingMeanOperator,
    eigenvector_overlap,
    lanczos,
    power_iteration,
    ritz_pairs,
)
from probe.numerics.curvature.report import BlockResult, HessianReport
from probe.numerics.curvature.trace import (
    TraceResult,
    hutchinson_samples,
    slq_density,
    trace_estimate,
    trace_of_samples,
)
from probe.numerics.loss import BatchedLoss

__all__ = [
    "RITZ_LIMIT_BYTES",
    "batch_losses",
    "batch_operator",
    "block_results",
    "combined_operator",
    "hessian_analysis",
    "per_batch_results",
    "solve",
    "traces",
]

# The combined Krylov basis and each batch's products on it, kept for Rayleigh-Ritz.
RITZ_LIMIT_BYTES = 2 << 30

Samples = tuple[torch.Tensor, torch.Tensor | None]  # a batch's v^T H v and per-block shares


def hessian_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: HessianConfig | None = None,
    *,
    init: torch.Tensor | None = None,
    block_init: dict[str, torch.Tensor] | None = None,
    **options: Any,
) -> HessianReport:
    """Top-k (LA) and smallest (SA) eigenvalues; optionally trace, density and per-block figures.

    `config` (default `HessianConfig()`) with `options` (its fields as keywords) replacing some
    of its fields. method="lanczos" (default) gets both ends from one Krylov space.
    method="power" runs deflated power iteration, which finds the largest-magnitude (LM)
    eigenvalues, then shifted power iteration for the opposite end; the labels say which is
    which. `init` (rows = the previous epoch's LA eigenvectors) warm-starts the run, and the
    report gives their overlap with the new ones.

    batches=B splits x into B disjoint equal batches (x must hold B * n samples). Each batch
    gets its own operator (one cached first-order graph each); the combined operator (the mean
    of the B operators: the Hessian of the mean loss over all of x) reuses the batches' graphs
    and is solved first, from `init`. Each product of it is one product of every batch's
    operator, and those are kept. per_batch="ritz" (default): each batch's eigenpairs come from
    a Rayleigh-Ritz pass of its operator on the combined Krylov basis (`ritz_pairs`: no product;
    residuals exact, converged only where they are at most `residual_tol`; top Ritz values are
    lower bounds), so B batches and the combined operator together cost what B one-batch
    analyses cost. per_batch="solve": each batch also gets its own Lanczos run from `init`,
    converged to `tol` (about twice the products; method="power" always solves). The combined
    eigenvalues are not the mean of the per-batch ones; both are reported. Hutchinson uses the
    independent probe vectors per batch; the combined trace is the mean of the per-batch
    samples (unbiased, by linearity) and costs nothing more, nor do the block traces. `blocks`
    ("none", "layer" or name patterns, see `parameter_blocks`) adds the top eigenpair of each
    diagonal block of the combined operator (warm-started from `block_init[name]`) and, with
    trace samples, each block's trace. `operator` is "hessian", "ggn" or a callable building one
    batch's operator from its `BatchedLoss` (labelled `operator_name`). `trace_method` is
    "hutchinson" or "hutch++" (one batch, no blocks).
    """
    cfg = HessianConfig.of(config, **options)
    losses = batch_losses(model, x, y, cfg)
    values = [check_finite(loss.value()) for loss in losses]
    ops = [batch_operator(cfg, loss) for loss in losses]
    dim = ops[0].dim
    check(
        init is None or init.shape[-1] == dim,
        "init",
        f"vectors have length {None if init is None else init.shape[-1]}, the operator has {dim}",
    )
    layout = BlockLayout.of(model, losses[0], cfg.blocks)
    combined = combined_operator(ops, cfg)
    eigen = solve(combined, cfg, init)
    # All batches' graphs are kept while they fit the cache limit together; otherwise each batch's
    # graph is built for its own solves and dropped, and the combined operator rebuilds them per
    # product. (The limit is read from its module at call time: one value rules here and there.)
    per_batch, samples = per_batch_results(
        ops, combined, cfg, layout, init=init, keep=len(x) <= operators.CACHE_LIMIT
    )
    report = HessianReport(
        sum(values) / cfg.batches,
        loss_definition(losses),
        eigen,
        None,
        None,
        names=list(losses[0].names),
        operator=cfg.operator_label,
        n_batches=cfg.batches,
        images_per_batch=losses[0].n_samples,
        bn=cfg.bn,
        dtype=str(losses[0].dtype).removeprefix("torch."),
        per_batch=per_batch,
        loss_per_batch=values if cfg.batches > 1 else [],
    )
    if init is not None:
        report.overlap, report.subspace_overlap = eigenvector_overlap(init, eigen[0].vectors)
    per_block = None
    if cfg.trace_samples:
        report.trace, report.trace_per_batch, per_block = traces(combined, samples, cfg, layout)
    if cfg.density_runs:
        report.density = slq_density(combined, cfg.density_runs, cfg.density_steps, seed=cfg.seed)
    report.blocks = block_results(combined, cfg, layout, per_block, block_init)
    report.hvps = sum(op.hvps for op in ops)
    return report


def batch_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: HessianConfig
) -> list[BatchedLoss]:
    """(x, y) split into `config.batches` disjoint equal consecutive batches, one loss each."""
    b = config.batches
    check(
        len(x) >= b and len(x) % b == 0,
        "batches",
        f"{len(x)} samples do not split into {b} equal batches",
    )
    n = len(x) // b
    return [
        config.batched_loss(model, x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]) for i in range(b)
    ]


def batch_operator(config: HessianConfig, loss: BatchedLoss) -> LinearOperator:
    """One batch's operator: the named one (default "hessian", by `config.hvp`) or the factory's."""
    if callable(config.operator):
        return config.operator(loss)
    return operators.make_operator(config.operator or "hessian", loss, config.hvp)


def combined_operator(ops: list[LinearOperator], config: HessianConfig) -> LinearOperator:
    """The operator of the mean loss over all batches (one batch: its own operator).

    With Lanczos and per_batch="ritz" it records each batch's products over its Krylov basis,
    so a Rayleigh-Ritz pass per batch on that basis gives per-batch eigenpairs with exact
    residuals for no product. Refining unconverged ones from their Ritz vectors was measured:
    it cost more products than solving each batch from `init` (101 against 79 on
    bench/bench_hessian_batches.py).
    """
    if len(ops) == 1:
        return ops[0]
    if config.method == "lanczos" and config.per_batch == "ritz":
        return RecordingMeanOperator(ops, RITZ_LIMIT_BYTES)
    return MeanOperator(ops)


def solve(
    op: LinearOperator,
    config: HessianConfig,
    start: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    smallest: int | None = None,
) -> list[EigenResult]:
    """The LA (or LM) end and, when asked, the SA end of `op`'s spectrum by `config.method`.

    `top_k` and `smallest` default to the config's; `start` warm-starts the top end.
    """
    k = config.top_k if top_k is None else top_k
    low = config.smallest if smallest is None else smallest
    tol = dict(tol=config.tol, residual_tol=config.residual_tol, max_iter=config.max_iter)
    if config.method == "lanczos":
        top, bottom = lanczos(op, k, smallest=low, init=start, seed=config.seed, **tol)
        return [top] + ([bottom] if bottom is not None else [])
    top = power_iteration(op, k, init=start, seed=config.seed, **tol)
    if not low:
        return [top]
    shift = float(top.values[0])
    return [top, power_iteration(op, low, seed=config.seed + 1, shift=shift, **tol)]


def per_batch_results(
    ops: list[LinearOperator],
    combined: LinearOperator,
    config: HessianConfig,
    layout: BlockLayout,
    *,
    init: torch.Tensor | None,
    keep: bool,
) -> tuple[list[list[EigenResult]], list[Samples]]:
    """Each batch's eigenpairs and Hutchinson samples (none for one batch: the combined is it).

    Without `keep`, each batch's cached graph is dropped once its own work is done.
    """
    eigen: list[list[EigenResult]] = []
    samples: list[Samples] = []
    if len(ops) == 1:
        return eigen, samples
    for b, op in enumerate(ops):
        eigen.append(_batch_eigen(b, op, combined, config, init))
        if config.trace_samples:  # independent probe vectors per batch (seed + b)
            samples.append(_samples(op, config, layout, seed=config.seed + b))
        if not keep and hasattr(op, "release"):
            op.release()
    return eigen, samples


def _batch_eigen(
    b: int,
    op: LinearOperator,
    combined: LinearOperator,
    config: HessianConfig,
    init: torch.Tensor | None,
) -> list[EigenResult]:
    """Batch b's eigenpairs: Rayleigh-Ritz on the combined operator's recorded basis where every
    pair meets `residual_tol`, else the batch's own solve.

    The combined Krylov basis holds the combined operator's extreme eigenvectors, not each
    batch's: its Ritz values for a batch are bounds, close at the top end and far off at the
    smallest (measured: 50-78 % off for SA, 2-13 % low for the second and third LA). A batch
    whose Ritz pairs do not all converge is therefore solved on its own (from `init`, else
    from its top Ritz vectors), so that no per-batch value is reported as converged unless its
    own residual shows it."""
    if isinstance(combined, RecordingMeanOperator) and combined.complete and combined.inputs:
        pairs = ritz_pairs(
            combined.inputs,
            combined.outputs[b],
            config.top_k,
            config.smallest,
            config.residual_tol,
        )
        found = [e for e in pairs if e is not None]
        if all(bool(e.converged.all()) for e in found):
            return found
        # from the previous epoch's vectors where given (measured: fewer products than from
        # the Ritz vectors, see combined_operator), else from the Ritz vectors
        return solve(op, config, init if init is not None else found[0].vectors)
    return solve(op, config, init)


def _samples(
    op: LinearOperator, config: HessianConfig, layout: BlockLayout, seed: int | None = None
) -> Samples:
    return hutchinson_samples(
        op,
        config.trace_samples,
        seed=config.seed if seed is None else seed,
        block_id=layout.labels,
        blocks=len(layout),
        width=config.product_batch,
    )


def traces(
    combined: LinearOperator,
    samples: list[Samples],
    config: HessianConfig,
    layout: BlockLayout,
) -> tuple[TraceResult, list[TraceResult], torch.Tensor | None]:
    """(combined trace, per-batch traces, per-block samples [samples, blocks] or None).

    Hutchinson: each batch draws its own probe vectors (seed + b), so the per-batch traces'
    errors are independent and their spread is an honest standard error over batches; sample j
    of the combined trace is the mean over batches of their sample j, an unbiased sample of the
    combined operator's trace, independent across j (one batch: sampled on the combined
    operator here). Hutch++: the combined only.
    """
    if config.trace_method == "hutch++":
        trace = trace_estimate(
            "hutch++", combined, config.trace_samples, seed=config.seed, width=config.product_batch
        )
        return trace, [], None
    if config.batches == 1:
        samples = [*samples, _samples(combined, config, layout)]
    per_hvps = config.trace_samples
    per_batch = [trace_of_samples(s, per_hvps) for s, _ in samples] if config.batches > 1 else []
    mean = torch.stack([s for s, _ in samples]).mean(0)
    per_block = torch.stack([b for _, b in samples]).mean(0) if len(layout) else None
    return trace_of_samples(mean, per_hvps * config.batches), per_batch, per_block


def block_results(
    combined: LinearOperator,
    config: HessianConfig,
    layout: BlockLayout,
    per_block: torch.Tensor | None,
    block_init: dict[str, torch.Tensor] | None,
) -> list[BlockResult]:
    """Each block's top eigenpair of the combined operator's diagonal block, and its trace share."""
    out = []
    for i, ((name, names), idx) in enumerate(zip(layout.groups, layout.index, strict=True)):
        prev = (block_init or {}).get(name)
        prev = prev if prev is not None and prev.shape[-1] == len(idx) else None
        top = solve(BlockOperator(combined, idx), config, prev, top_k=1, smallest=0)[0]
        tr = trace_of_samples(per_block[:, i], 0) if per_block is not None else None
        out.append(BlockResult(name, list(names), len(idx), top, tr, idx))
    return out


def loss_definition(losses: list[BatchedLoss]) -> str:
    """In words, the loss every number was computed on (with several batches, how they combine)."""
    text = losses[0].describe()
    if len(losses) == 1:
        return text
    n = losses[0].n_samples
    return (
        f"{text}; {len(losses)} disjoint batches of {n} samples: per-batch values on each, "
        f"'combined' on the mean loss over all {n * len(losses)} samples"
    )
