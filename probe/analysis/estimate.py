"""How long the jobs of a `probe analyze` will take, printed before they start.

Each analysis may declare the work of one job in units (`probe.contract.cost`: Hessian-vector
products, forward+backward passes or forward passes, of so many images). One unit of each kind
is timed once on the run's model, on a small slice of its stored analysis batch, and the counts
are multiplied out: an estimate, labelled "about", never a promise (the time per image is taken
as constant, and solvers that stop when they converge are counted at their bound). Only jobs that
are to be computed are estimated, so a fully cached command never gets here and imports no torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from probe.analysis.job import Job
from probe.contract.cost import Cost, RunInfo
from probe.contract.modulespec import CodeNotTrusted
from probe.numerics.device import device_string

__all__ = ["costs_of", "estimate_lines", "fmt_seconds", "measure_units", "run_info"]

SLICE = 32  # images timed per unit (fewer: per-call overhead dominates, and per image is off)
NAMES = {"hvp": ("product", "products"), "backward": ("f+b pass", "f+b passes")}
NAMES["forward"] = ("forward", "forwards")


def run_info(job: Job, device: str = "cpu") -> tuple[RunInfo, Any, Any]:
    """The job's `RunInfo`, with the model (of its last epoch) and the stored images."""
    from torch import nn

    run = job.run
    epochs = job.epochs or run.epochs()
    model = run.load_checkpoint(epochs[-1]).build_model(device) if epochs else None
    batch = run.analysis_batch()
    modules = list(model.modules()) if model is not None else []
    info = RunInfo(
        stored_images=len(batch.labels),
        n_params=sum(p.numel() for p in model.parameters() if p.requires_grad) if model else 0,
        conv_layers=sum(isinstance(m, nn.Conv2d) for m in modules),
        linear_layers=sum(isinstance(m, nn.Linear) for m in modules),
        epochs=max(len(job.epochs), 1),
    )
    return info, model, batch


def measure_units(
    model: Any, batch: Any, device: str, kinds: Sequence[str], repeats: int = 1
) -> dict[str, float]:
    """Seconds per image of one forward, one forward+backward and one Hessian-vector product on
    `model` (eval mode), timed on the first `SLICE` stored images (best of `repeats`)."""
    import torch
    import torch.nn.functional as F

    x = batch.normalized(device)[:SLICE]
    y = batch.labels[:SLICE].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def backward() -> None:
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    graph: list[Any] = []

    def hvp() -> None:
        # the curvature operators keep the first-order graph and differentiate it per product
        if not graph:
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            graph.append(sum((g * g.detach()).sum() for g in grads))
        torch.autograd.grad(graph[0], params, retain_graph=True)

    out = {}
    for name, fn in (("forward", forward), ("backward", backward), ("hvp", hvp)):
        if name not in kinds:
            continue
        best = float("inf")
        for i in range(repeats + 1):  # the first call warms up
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - t0)
        out[name] = best / len(x)
    return out


def costs_of(job: Job, info: RunInfo) -> list[Cost] | None:
    """The job's declared costs (None: its analysis declares none)."""
    declared = job.analysis.cost
    if declared is None:
        return None
    got = declared(job.params, info)
    return [got] if isinstance(got, Cost) else list(got)


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 1):.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _term(c: Cost) -> str:
    one, many = NAMES[c.unit]
    units = c.units
    return f"{'up to ' if c.upto else ''}~{units:,} {one if units == 1 else many} of {c.images:,}"


def estimate_lines(jobs: Sequence[Job], device: str) -> list[str]:
    """One line per analysis with jobs to compute, then the total: what and about how long.

    Loads the model and times a unit only when some analysis declares a cost."""
    by_name: dict[str, list[Job]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    declared = [job for job in jobs if job.analysis.cost is not None]
    per_image: dict[str, float] = {}
    info = None
    if declared:
        device = device_string(device)
        try:
            info, model, batch = run_info(declared[0], device)
        except CodeNotTrusted:  # a user's own class without --trust-code: not built, not timed
            declared = []
    # each job's declared costs, computed once (its epochs are the job's own)
    costs = {id(job): costs_of(job, _with_epochs(info, job)) or [] for job in declared}
    if declared:
        kinds = {c.unit for job in declared for c in costs[id(job)]}
        if model is not None and kinds:
            per_image = measure_units(model, batch, device, sorted(kinds))
    lines, total = [], 0.0
    for name, group in by_name.items():
        what = f"{len(group)} job{'s' if len(group) > 1 else ''}"
        if group[0].epoch is None and len(group[0].epochs) > 1:
            what += f" ({len(group[0].epochs)} epochs)"
        if info is None or group[0].analysis.cost is None:
            lines.append(f"{name}: {what}, cost not declared")
            continue
        seconds = 0.0
        for job in group:
            for c in costs[id(job)]:
                seconds += c.units * c.images * c.factor * per_image.get(c.unit, 0.0)
        total += seconds
        terms = " + ".join(_term(c) for c in costs[id(group[0])])
        unit = _unit_note(costs[id(group[0])], per_image)
        lines.append(f"{name}: {what} x {terms} images, about {fmt_seconds(seconds)}{unit}")
    if declared:
        lines.append(
            f"about {fmt_seconds(total)} in all for the declared costs, an estimate (one unit "
            f"timed on this model, {device})"
        )
    return lines


def _with_epochs(info: RunInfo, job: Job) -> RunInfo:
    from dataclasses import replace

    return replace(info, epochs=max(len(job.epochs), 1))


def _unit_note(costs: list[Cost], per_image: dict[str, float]) -> str:
    if not costs or not per_image:
        return ""
    c = max(costs, key=lambda c: c.units * c.images * c.factor * per_image[c.unit])
    one = NAMES[c.unit][0]
    return f" (1 {one} ~ {c.images * c.factor * per_image[c.unit]:.2g} s here)"
