"""What a Hessian analysis returns: `HessianReport` (and `BlockResult` per parameter block).

A report holds the eigenpairs of the combined operator (the mean loss over all batches), with
several batches each batch's eigenpairs, loss and trace, and, when asked, the trace, the
spectral density and per-block figures. `summary()` is the JSON-safe dict the hessian analysis
stores (`hessian.json`); `over_batches(pos)` and `computed_on()` are its parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from probe.numerics.curvature.linear import EigenResult
from probe.numerics.curvature.trace import Density, TraceResult, standard_error

__all__ = ["BlockResult", "HessianReport"]


@dataclass
class BlockResult:
    """One parameter block's diagonal Hessian block: its top (LA) eigenpair and its trace."""

    name: str
    params: list[str]
    dim: int
    eigen: EigenResult
    trace: TraceResult | None
    index: torch.Tensor  # the block's positions in the flat parameter vector

    def summary(self) -> dict:
        out = {
            "name": self.name,
            "params": self.params,
            "dim": self.dim,
            "top": float(self.eigen.values[0]),
            "top_residual": float(self.eigen.residuals[0]),
            "top_converged": bool(self.eigen.converged[0]),
            "hvps": self.eigen.hvps,
        }
        if self.trace is not None:
            out["trace"], out["trace_stderr"] = self.trace.trace, self.trace.stderr
        return out


@dataclass
class HessianReport:
    """Everything `hessian_analysis` measured, with the loss it differentiated.

    `eigen`, `trace`, `density` and `blocks` are those of the combined operator (the
    mean loss over all batches). With several batches, `per_batch[b]` holds batch b's
    eigenpairs and `trace_per_batch[b]` its trace; `hvps` counts products over one
    batch (a product of the combined operator counts once per batch).
    """

    loss: float
    loss_definition: str
    eigen: list[EigenResult]
    trace: TraceResult | None
    density: Density | None
    overlap: torch.Tensor | None = None  # |<previous_i, current_i>| for the LA vectors
    subspace_overlap: float | None = None
    hvps: int = 0
    names: list[str] = field(default_factory=list)
    operator: str = "hessian"
    n_batches: int = 1
    images_per_batch: int = 0
    bn: str = "eval"
    dtype: str = "float32"
    per_batch: list[list[EigenResult]] = field(default_factory=list)
    loss_per_batch: list[float] = field(default_factory=list)
    trace_per_batch: list[TraceResult] = field(default_factory=list)
    blocks: list[BlockResult] = field(default_factory=list)

    def get(self, which: str) -> EigenResult | None:
        return next((e for e in self.eigen if e.which == which), None)

    def computed_on(self) -> dict:
        """What every number of this report was computed on."""
        return {
            "operator": self.operator,
            "images": self.n_batches * self.images_per_batch,
            "batches": self.n_batches,
            "images_per_batch": self.images_per_batch,
            "bn": self.bn,
            "dtype": self.dtype,
        }

    def over_batches(self, pos: int) -> dict:
        """Per-batch values of eigen[pos] with their residuals and converged flags; the mean and
        standard error over the batches whose value converged (and how many did); the combined
        values. An unconverged per-batch value is kept, flagged, and left out of the mean."""
        ends = [e[pos] for e in self.per_batch] if self.per_batch else [self.eigen[pos]]
        per = torch.stack([e.values for e in ends]).to(torch.float64)
        ok = torch.stack([e.converged for e in ends]).to(torch.bool)
        mean, se = [], []
        for i in range(per.shape[1]):
            good = per[ok[:, i], i]
            mean.append(float(good.mean()) if len(good) else math.nan)
            se.append(standard_error(good))
        return {
            "per_batch": per.tolist(),
            "per_batch_residual": torch.stack([e.residuals for e in ends]).tolist(),
            "per_batch_converged": ok.tolist(),
            "per_batch_method": [e.method for e in ends],
            "mean_over_batches": mean,
            "se_over_batches": se,
            "n_converged_over_batches": ok.sum(0).tolist(),
            "combined": self.eigen[pos].values.tolist(),
        }

    def summary(self) -> dict:
        out = {
            "loss": self.loss,
            "loss_definition": self.loss_definition,
            "hvps": self.hvps,
            "computed_on": self.computed_on(),
            "eigen": [e.summary() for e in self.eigen],
            "eigenvalues": {e.which: self.over_batches(i) for i, e in enumerate(self.eigen)},
        }
        if self.loss_per_batch:
            out["loss_per_batch"] = self.loss_per_batch
        if self.trace is not None:
            out["trace"] = {
                "trace": self.trace.trace,
                "stderr": self.trace.stderr,
                "samples": self.trace.samples,
                "combined": self.trace.trace,
                "combined_stderr": self.trace.stderr,
                **self.trace.error_summary(),
            }
            if self.trace_per_batch:
                per = [t.trace for t in self.trace_per_batch]
                out["trace"].update(
                    per_batch=per,
                    per_batch_stderr=[t.stderr for t in self.trace_per_batch],
                    mean_over_batches=sum(per) / len(per),
                    se_over_batches=standard_error(per),
                )
        if self.blocks:
            out["blocks"] = [b.summary() for b in self.blocks]
        if self.overlap is not None:
            out["overlap"] = self.overlap.tolist()
            out["subspace_overlap"] = self.subspace_overlap
        return out
