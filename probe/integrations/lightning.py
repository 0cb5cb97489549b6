"""A PyTorch Lightning callback that records a run directory while `Trainer.fit` trains.

    from probe.integrations.lightning import ProbeCallback

    cb = ProbeCallback("runs/mine", model="resnet", model_params={"depth": 20},
                       dataset="cifar10", data="~/data/cifar10", model_attr="net")
    lightning.Trainer(max_epochs=30, callbacks=[cb]).fit(module, loader)

At fit start it opens a `probe.Recorder` (the keyword arguments are the recorder's)
and records epoch 0, the initialisation; at the end of each training epoch it records
epoch `trainer.current_epoch + 1` with the trainer's logged metrics that are finite
scalars and its optimizer; at fit end (or on an exception) it closes the recorder.
The network recorded is `pl_module`, or `getattr(pl_module, model_attr)` when the
LightningModule holds the network as an attribute. `model=` (a family name or a
`probe.ModelSpec`) says which family its state dict is; without it the network is
recorded as any `nn.Module` (a reference to its class; docs/own-loop.md, "Any
nn.Module"). Only the global rank-zero process records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from probe.errors import UsageError
from probe.training.recorder import RESERVED, Recorder


class ProbeCallback(Callback):
    """Records `Trainer.fit` into `run_dir` through `probe.Recorder` (the module docstring)."""

    def __init__(
        self, run_dir: str | Path, *, model_attr: str | None = None, **recorder_kwargs: Any
    ) -> None:
        if "dataset" not in recorder_kwargs:
            raise UsageError("ProbeCallback", "give the recorder's dataset= (and any other option)")
        self.run_dir = Path(run_dir)
        self.model_attr = model_attr
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def network(self, pl_module: Any) -> torch.nn.Module:
        """The module whose state dict is the family's: `pl_module` or its `model_attr`."""
        if self.model_attr is None:
            return pl_module
        net = getattr(pl_module, self.model_attr, None)
        if not isinstance(net, torch.nn.Module):
            raise UsageError(
                "model_attr",
                f"{type(pl_module).__name__}.{self.model_attr} is not a torch.nn.Module",
            )
        return net

    def _optimizer(self, trainer: Any) -> torch.optim.Optimizer | None:
        opts = list(getattr(trainer, "optimizers", []) or [])
        return opts[0] if len(opts) == 1 and isinstance(opts[0], torch.optim.Optimizer) else None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank != 0:
            return
        net = self.network(pl_module)
        kwargs = dict(self.recorder_kwargs)
        kwargs.setdefault("device", str(next(net.parameters()).device))
        kwargs.setdefault("epochs", trainer.max_epochs if trainer.max_epochs != -1 else None)
        # without model=: the network itself, recorded as any nn.Module (docs/own-loop.md)
        model, dataset = kwargs.pop("model", net), kwargs.pop("dataset")
        self.recorder = Recorder(self.run_dir, model, dataset, **kwargs)
        self.recorder.record(0, net, self._optimizer(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is None:
            return
        metrics = logged_scalars(trainer.callback_metrics)
        self.recorder.record(
            trainer.current_epoch + 1, self.network(pl_module), self._optimizer(trainer), metrics
        )

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None


def logged_scalars(metrics: Any) -> dict[str, float]:
    """The finite scalars of the trainer's logged metrics, without the names the recorder
    measures itself (a validation step's `val_loss` is the loop's, not probe's)."""
    out: dict[str, float] = {}
    for k, v in dict(metrics or {}).items():
        if not isinstance(k, str) or k in RESERVED:
            continue
        if torch.is_tensor(v):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out
