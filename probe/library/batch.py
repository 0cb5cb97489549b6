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


def _first(batch: Any, n: int | None, take: Any, option: str, kinds: str) -> list[Any]:
    """`take(item)` for the items of the iterable `batch` until they hold `n` images (all with
    n=None): iteration stops there, so a DataLoader over a large data set is not read to its
    end. An item taken is a tensor or a tuple whose first element counts the images."""
    try:
        items = iter(batch)
    except TypeError:
        raise UsageError(option, f"expected {kinds}, got {type(batch).__name__}") from None
    out, count = [], 0
    for item in items:
        got = take(item)
        out.append(got)
        count += len(got[0] if isinstance(got, tuple) else got)
        if n is not None and count >= n:
            break
    return out


def as_batch(batch: Any, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x, y)`: the first `n` images (all with n=None) of a tensor pair or an iterable of pairs."""
    if n is not None and n < 1:
        raise UsageError("n_images", f"must be >= 1, got {n}")
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[0]):
        pairs = [_pair(batch, "batch")]
    else:
        pairs = _first(
            batch,
            n,
            lambda item: _pair(item, "each item of batch"),
            "batch",
            "(x, y) tensors or a DataLoader",
        )
    if not pairs:
        raise UsageError("batch", "holds no images")
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
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
    xs = _first(
        x,
        n,
        lambda item: item if torch.is_tensor(item) else _pair(item, "each item of x")[0],
        "x",
        "a tensor or a DataLoader",
    )
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
