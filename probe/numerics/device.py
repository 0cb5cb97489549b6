"""Which torch device a `--device` value names: one rule for `probe train`, `probe.Recorder`,
`probe import` and `probe analyze`, with one error when it names a device torch does not see.

torch is imported inside the functions: `probe analyze` resolves its device only when a job
is computed, so a command whose jobs are all cached never imports torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from probe.errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` (CUDA when torch sees it, else the CPU), `cpu`, `cuda`, `cuda:N`, a torch.device."""
    import torch  # here, not at the top: see the module docstring

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device", "cuda was asked for but torch sees no CUDA device; use --device cpu or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(
            "--device", f"{name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from None


@functools.cache
def device_string(name: str) -> str:
    """`resolve_device(name)` as a string, once per process; `cpu` without importing torch."""
    if name == "cpu":
        return name
    return str(resolve_device(name))
