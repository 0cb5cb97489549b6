"""The one place an in-process analysis turns its `batch` argument into tensors, and the guard
that leaves the model as it found it.

`batch` is an `(x, y)` pair of tensors, or any iterable of `(x, y)` pairs (a DataLoader):
batches are concatenated until `n` images are gathered, then iteration stops (a DataLoader
over a large data set is never read to its end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from probe.errors import UsageError

__all__ = ["as_batch", "as_inputs", "check_loss", "untouched"]


def _pair(item: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (
        isinstance(item, (tuple, list))
        and len(item) >= 2
        and torch.is_tensor(item[0])
        and torch.is_tensor(item[1])
    ):
        return item[0], item[1]
    raise UsageError(
        "batch", f"{where} must be an (x, y) pair of tensors, got {type(item).__name__}"
    )


def as_batch(batch: Any, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x, y)`: the first `n` images (all with n=None) of a tensor pair or an iterable of pairs."""
    if n is not None and n < 1:
        raise UsageError("n_images", f"must be >= 1, got {n}")
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[0]):
        x, y = _pair(batch, "batch")
        xs, ys = [x], [y]
    else:
        try:
            items = iter(batch)
        except TypeError:
            raise UsageError(
                "batch", f"expected (x, y) tensors or a DataLoader, got {type(batch).__name__}"
            ) from None
        xs, ys, count = [], [], 0
        for item in items:
            x, y = _pair(item, "each item of batch")
            xs.append(x)
            ys.append(y)
            count += len(x)
            if n is not None and count >= n:
                break
    x, y = (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))
    if len(x) == 0:
        raise UsageError("batch", "holds no images")
    if len(y) != len(x):
        raise UsageError("batch", f"has {len(x)} inputs but {len(y)} labels")
    return (x, y) if n is None else (x[:n], y[:n])


def as_inputs(x: Any, n: int | None = None) -> torch.Tensor:
    """Inputs only: a tensor, an `(x, y)` pair, or an iterable of either (first `n` images)."""
    if torch.is_tensor(x):
        return x if n is None else x[:n]
    if isinstance(x, (tuple, list)) and len(x) == 2 and torch.is_tensor(x[0]):
        return as_batch(x, n)[0]
    try:
        items = iter(x)
    except TypeError:
        raise UsageError(
            "x", f"expected a tensor or a DataLoader, got {type(x).__name__}"
        ) from None
    xs, count = [], 0
    for item in items:
        t = item if torch.is_tensor(item) else _pair(item, "each item of x")[0]
        xs.append(t)
        count += len(t)
        if n is not None and count >= n:
            break
    if not xs:
        raise UsageError("x", "holds no images")
    out = torch.cat(xs)
    return out if n is None else out[:n]


def check_loss(loss: Any) -> None:
    """`loss` must be None (mean cross-entropy) or a callable `loss(logits, y) -> scalar mean`."""
    if loss is not None and not callable(loss):
        raise UsageError("loss", f"expected a callable loss(logits, y), got {type(loss).__name__}")


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's `requires_grad` on exit.

    The numerics already never write weights or buffers (functional calls, running statistics
    off); this guard makes the flags a promise of the API too, also when an analysis raises."""
    if not isinstance(model, nn.Module):
        raise UsageError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
