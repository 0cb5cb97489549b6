"""`probe.hessian`: the Hessian analysis's parameters, their checks, and the in-process call.

`HessianParams` is the one definition of the parameters of `probe analyze -p hessian` and of
`probe.hessian(model, batch, **params)`; `hessian_config` maps them to the numerics'
`HessianConfig`, `check_cost` and `select` refuse what a model or a batch cannot give, for
both. `hessian` runs `probe.numerics.hessian_analysis` on one model and returns a
`HessianResult`: the headline numbers, `to_dict()` (the keys of one epoch of the plugin's
hessian.json, with its attributes) and `plot()` (the plugin's figure, one epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from probe import numerics
from probe.contract.analysis import param
from probe.errors import UsageError
from probe.library.curvature_plot import series, single_figure
from probe.library.params import make
from probe.library.result import Result

if TYPE_CHECKING:  # torch is imported when the analysis runs, not when a plugin registers
    from torch import nn

    from probe.numerics import HessianConfig, HessianReport

__all__ = [
    "HessianParams",
    "HessianResult",
    "check_cost",
    "hessian",
    "hessian_config",
    "select",
]

# Bounds tied to cost (docs/reliability.md, "Bounds"). Lanczos keeps one vector of the
# parameter count per step, so its memory is also checked against the model at job start.
MAX_K = 1000
MAX_STEPS = 10_000
MAX_IMAGES = 100_000
MAX_BASIS_BYTES = 8 << 30
MAX_BATCHES = 64
# Defaults that make a default run give the trace and the density the README lists (costs:
# docs/curvature.md).
TRACE_SAMPLES = 20
DENSITY_STEPS = 40


@dataclass(frozen=True)
class HessianParams:
    """The parameters of the hessian analysis (`probe analyze -p hessian --param K=V` and
    `probe.hessian(model, batch, K=V)`), with their defaults and bounds."""

    top_k: int = param(
        3, "Largest eigenvalues to find (at most the parameter count).", min=1, max=MAX_K
    )
    smallest: int = param(
        1, "Smallest (most negative) eigenvalues to find; 0 to skip.", min=0, max=MAX_K
    )
    method: str = param(
        "lanczos",
        "Eigen solver (power finds largest magnitude, then shifts).",
        choices=("lanczos", "power"),
    )
    n_images: int = param(
        1024,
        "Images per batch, from the start of the stored analysis batch (with batches=1 "
        "a smaller stored batch is used whole).",
        min=1,
        max=MAX_IMAGES,
    )
    batches: int = param(
        1,
        "Disjoint batches of n_images each (B * n_images stored images needed): per-batch "
        "values, their mean and standard error, and the combined (mean-loss) operator's.",
        min=1,
        max=MAX_BATCHES,
    )
    per_batch: str = param(
        "ritz",
        "With batches > 1: each batch's eigenpairs by Rayleigh-Ritz on the combined "
        "operator's Krylov basis where every pair meets residual_tol, else by the batch's own "
        "Lanczos run from its Ritz vectors (ritz), or always by its own run (solve).",
        choices=("ritz", "solve"),
    )
    blocks: str = param(
        "none",
        "Per-block top eigenvalue and trace: 'layer' (each conv/linear layer, weight and "
        "bias; the rest as 'other'), name patterns like 'features.*,classifier.*', or "
        "'none' (default: blocks=layer took 2.4x the time of the default analysis).",
    )
    batch_size: int = param(
        256,
        "Mini-batch size; results are averaged weighted by sample count.",
        min=1,
        max=MAX_IMAGES,
    )
    bn: str = param(
        "eval",
        "BatchNorm: running statistics (eval) or per-mini-batch statistics (batch).",
        choices=("eval", "batch"),
    )
    weight_decay: bool = param(
        False,
        "Include the run's 0.5 * wd * ||w||^2 in the loss differentiated "
        "(an L2 term; AdamW's decoupled decay is not part of any loss).",
    )
    tol: float = param(
        1e-3, "Relative change at which an eigenvalue counts as converged.", min=1e-12, max=1.0
    )
    residual_tol: float = param(
        1e-2, "Relative residual at which an eigenvalue counts as converged.", min=1e-12, max=1.0
    )
    max_iter: int = param(
        100,
        "Most Hessian-vector products per solve (Lanczos keeps one vector each).",
        min=2,
        max=MAX_STEPS,
    )
    trace_samples: int = param(
        TRACE_SAMPLES,
        "Products for the trace (Hutchinson samples per batch, or Hutch++'s total; 0: skip); the "
        "block traces come from the same products.",
        min=0,
        max=MAX_STEPS,
    )
    density_runs: int = param(
        1,
        "Stochastic Lanczos quadrature runs for the density of the last epoch analysed (0: skip).",
        min=0,
        max=1000,
    )
    density_steps: int = param(
        DENSITY_STEPS, "Lanczos steps per density run.", min=2, max=MAX_STEPS
    )
    warm_start: bool = param(
        True,
        "Start each epoch from the previous epoch's eigenvectors (epochs then run "
        "in order; with warm_start=false they are independent pieces that "
        "`probe analyze --workers/--dask-workers/--scheduler` spreads out).",
    )
    seed: int = param(0, "Seed for start and probe vectors.", min=0, max=2**32 - 1)
    operator: str = param(
        "hessian",
        "Curvature matrix: the Hessian, or the generalised Gauss-Newton "
        "(positive semi-definite; probe.numerics.curvature.operators).",
        choices=("hessian", "ggn"),
    )
    trace_method: str = param(
        "hutchinson",
        "Trace estimator; trace_samples is its number of products (hutch++ needs >= 6).",
        choices=("hutchinson", "hutch++"),
    )

    def __post_init__(self) -> None:
        if self.trace_samples == 1:
            raise ValueError("trace_samples must be 0 or >= 2 (a standard error needs two samples)")
        if len(self.blocks) > 1000:
            raise ValueError("blocks must be at most 1000 characters")
        if self.trace_method == "hutch++" and 0 < self.trace_samples < 6:
            raise ValueError(
                "trace_samples must be 0 or >= 6 with trace_method=hutch++ (a third sketches, a "
                "third is exact, the rest needs two samples for a standard error)"
            )
        if self.trace_method == "hutch++" and (self.batches > 1 or self.blocks != "none"):
            raise ValueError(
                "trace_method=hutch++ estimates one operator's trace: use batches=1 and "
                "blocks=none (hutchinson gives per-batch and per-block traces)"
            )


def check_cost(p: HessianParams, n: int, option: str = "--param ") -> None:
    """Refuse, at job start, eigenvalue counts and Krylov bases the model cannot have or memory
    cannot hold (errors name `option` + the parameter: "--param top_k", or "top_k")."""
    if p.top_k + p.smallest > n:
        raise UsageError(
            f"{option}top_k",
            f"hessian: top_k={p.top_k} + smallest={p.smallest} eigenvalues asked of "
            f"a model with {n:,} parameters",
        )
    for name in ("max_iter", "density_steps"):
        steps = min(getattr(p, name), n)
        if steps * n * 8 > MAX_BASIS_BYTES and (name == "max_iter" or p.density_runs):
            raise UsageError(
                f"{option}{name}",
                f"hessian: a {steps:,}-step Lanczos basis of {n:,} parameters needs "
                f"{steps * n * 8 / 2**30:,.1f} GiB, more than {MAX_BASIS_BYTES >> 30} GiB",
            )


def select(p: HessianParams, stored: int, option: str = "--param ") -> int:
    """How many stored images the analysis uses: B * n_images, refused when the run stores fewer.

    With batches=1 a smaller stored batch is used whole (the behaviour before batches existed)."""
    if p.batches == 1:
        return min(p.n_images, stored)
    need = p.batches * p.n_images
    if need > stored:
        fix = (
            "the run stores {:,} (lower --param batches or --param n_images, or train with a "
            "larger --analysis-batch-size)"
            if option
            else "the batch holds {:,} (lower batches or n_images, or pass more images)"
        )
        raise UsageError(
            f"{option}batches",
            f"hessian: batches={p.batches} x n_images={p.n_images} needs {need:,} images; "
            + fix.format(stored),
        )
    return need


def hessian_config(p: HessianParams, weight_decay: float) -> HessianConfig:
    """The numerics' options for these parameters (`weight_decay`: the run's, or 0: excluded)."""

    return numerics.HessianConfig(
        top_k=p.top_k,
        smallest=p.smallest,
        method=p.method,
        trace_samples=p.trace_samples,
        density_runs=p.density_runs,
        density_steps=p.density_steps,
        tol=p.tol,
        residual_tol=p.residual_tol,
        max_iter=p.max_iter,
        bn=p.bn,
        weight_decay=weight_decay,
        batch_size=p.batch_size,
        seed=p.seed,
        batches=p.batches,
        blocks=p.blocks,
        trace_method=p.trace_method,
        operator=p.operator,
        per_batch=p.per_batch,
    )


@dataclass(frozen=True, repr=False)
class HessianResult(Result):
    """One model's Hessian analysis: eigenvalues largest first with their residuals
    ||Hv - lambda v|| / |lambda| and converged flags (LA, or LM with method=power), the smallest
    ones (SA) likewise, the products used, the trace with its standard error (None with
    trace_samples=0). `report` is the numerics' full `HessianReport` (eigenvectors included)."""

    analysis = "hessian"

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    converged: tuple[bool, ...]
    which: str
    bottom_eigenvalues: tuple[float, ...]
    bottom_residuals: tuple[float, ...]
    bottom_converged: tuple[bool, ...]
    hvps: int
    trace: float | None
    trace_stderr: float | None
    loss: float
    images: int
    batches: int
    params: HessianParams = field(repr=False)
    report: Any = field(repr=False, compare=False)

    def _draw(self) -> Any:
        return single_figure(self)


def result_of(report: HessianReport, p: HessianParams) -> HessianResult:
    """The result of one report, `data` being what the plugin writes for one epoch: the report's
    summary and the series attributes."""
    _, attrs = series([(0, report)], p)
    attrs["trace_method"] = p.trace_method
    top = report.eigen[0]
    bottom = report.eigen[1] if p.smallest else None

    def floats(t: Any) -> tuple:
        return tuple(float(v) for v in t)

    return HessianResult(
        eigenvalues=floats(top.values),
        residuals=floats(top.residuals),
        converged=tuple(bool(c) for c in top.converged),
        which=top.which,
        bottom_eigenvalues=floats(bottom.values) if bottom else (),
        bottom_residuals=floats(bottom.residuals) if bottom else (),
        bottom_converged=tuple(bool(c) for c in bottom.converged) if bottom else (),
        hvps=int(report.hvps),
        trace=None if report.trace is None else float(report.trace.trace),
        trace_stderr=None if report.trace is None else float(report.trace.stderr),
        loss=float(report.loss),
        images=report.n_batches * report.images_per_batch,
        batches=report.n_batches,
        params=p,
        report=report,
        data={**report.summary(), **attrs},
    )


def hessian(
    model: nn.Module,
    batch: Any,
    *,
    loss: Any = None,
    weight_decay: float = 0.0,
    **params: Any,
) -> HessianResult:
    """Top and bottom Hessian (or GGN) eigenvalues, trace and density of `model`'s mean loss on
    `batch`, with the parameters and defaults of `probe analyze -p hessian`.

    `batch`: (x, y) tensors or an iterable of them (the first batches * n_images images are
    used). `loss(logits, y)` is the mean loss differentiated (default cross-entropy).
    `weight_decay` is the coefficient of an L2 term 0.5 * wd * ||w||^2 added to the loss (the
    plugin's boolean `weight_decay` takes it from the run's config; here there is no run).
    The model is evaluated in eval mode (bn=batch: per-mini-batch statistics) and not changed.
    """
    from probe.library.batch import as_batch, check_loss, untouched

    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool):
        raise UsageError(
            "weight_decay", f"expected the L2 coefficient (float), got {weight_decay!r}"
        )
    if weight_decay < 0:
        raise UsageError("weight_decay", f"must be >= 0, got {weight_decay}")
    p = make(HessianParams, {**params, "weight_decay": weight_decay > 0}, "hessian")
    check_loss(loss)
    with untouched(model):
        if p.bn != "eval":
            numerics.require_batchnorm(model, f"bn={p.bn}", "bn=eval")
        check_cost(p, sum(w.numel() for w in model.parameters() if w.requires_grad), "")
        x, y = as_batch(batch, p.batches * p.n_images)
        n = select(p, len(y), "")
        config = replace(hessian_config(p, float(weight_decay)), loss_fn=loss)
        report = numerics.hessian_analysis(model, x[:n], y[:n], config)
    return result_of(report, p)
