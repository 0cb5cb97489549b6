"""The validation pass of a recorded epoch: metrics.jsonl's `val_*`, the activation dump, and the
recorded examples' logits (predictions/epoch_NNNN.safetensors).

Every epoch a run records is validated in eval mode on the plan's validation order,
whose first images are the probe set: forward hooks (probe.rundir.activations) keep
those images' activations during this pass, so a dump costs no forward pass of its
own. The input is normalised as in training (and channels-last, bf16 autocast when
the plan trains that way), so the dump shows what the trained model computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probe.datasets import tensors as data
from probe.rundir.activations import ActivationRecorder
from probe.rundir.plan import RunPlan


def model_input(plan: RunPlan, x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images as the plan's model takes them: normalised, channels-last if it trains so."""
    x = data.normalize(x_uint8, plan.spec.mean, plan.spec.std)
    return x.contiguous(memory_format=torch.channels_last) if plan.channels_last else x


@torch.no_grad()
def validate(
    plan: RunPlan,
    model: torch.nn.Module,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    dump: ActivationRecorder,
) -> dict[str, float]:
    """Loss and accuracy over (`val_x`, `val_y`) in eval mode; the probe set's activations go
    to `dump`.

    The caller puts the model back in the mode it was in (the writer does).
    """
    model.eval()
    device = val_x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = val_x.shape[0]
    bf16 = plan.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    step = plan.val_batch_size
    for start in range(0, n, step):
        x = model_input(plan, val_x[start : start + step])
        y = val_y[start : start + step]
        with autocast:
            logits = model(x).float()
        dump.after_batch(logits)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return {"val_loss": loss_sum.item() / n, "val_acc": correct.item() / n}


@torch.no_grad()
def example_logits(plan: RunPlan, model: torch.nn.Module, x_uint8: torch.Tensor) -> torch.Tensor:
    """The recorded examples' logits (float32, on the CPU), in eval mode, un-augmented and
    normalised as in training: what `forgetting` reads. The caller restores the mode."""
    model.eval()
    bf16 = plan.precision == "bf16"
    out = []
    for start in range(0, len(x_uint8), plan.val_batch_size):
        x = model_input(plan, x_uint8[start : start + plan.val_batch_size])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x).float().cpu())
    return torch.cat(out).contiguous()


def weight_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all parameters together (metrics.jsonl's `weight_norm`)."""
    with torch.no_grad():
        return torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(list(model.parameters())))
        ).item()
