"""Checkpoints: one safetensors file per epoch, enough to rebuild the model alone.

Tensor names (see docs/run-directory.md, the one description of the format):
  model/<state_dict key>                weights and BatchNorm buffers
  optimizer/<parameter name>/<key>      optimizer state (momentum, Adam moments, step)
  rng/torch, rng/cuda, rng/data         random-number states, for exact resume
Metadata (strings): format, epoch, model_spec (JSON), config_hash, metrics (JSON),
optimizer (JSON hyper-parameters), probe_version, content_sha256.

`content_sha256` covers every tensor's name, dtype, shape and bytes and every other
metadata entry, so a bit flip anywhere in the file (an epoch number or a width in
the metadata included) is reported instead of being trained or analysed on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import atomic
from .errors import RunFileError
from .model import ModelSpec, SimpleCNN

FORMAT = "probe-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model's state, its spec, and what training stored beside it."""

    path: Path
    epoch: int
    spec: ModelSpec
    model_state: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    optimizer_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer_meta: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)

    def build_model(self, device: str | torch.device = "cpu") -> SimpleCNN:
        """A fresh model with these weights, in eval mode, on `device`.

        The spec is checked against the stored tensors on the meta device first, so
        a spec that does not fit them is one error, never a huge allocation.
        """
        _check_spec(self.spec, self.path)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in self.spec.build().state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in self.model_state.items()}
        bad = sorted(k for k in shapes.keys() | stored.keys() if shapes.get(k) != stored.get(k))
        if bad:
            k = bad[0]
            raise RunFileError(self.path, f"tensors do not match the model spec ({len(bad)} differ; {k}: "
                                          f"spec {shapes.get(k, 'none')}, file {stored.get(k, 'none')})")
        model = self.spec.build()
        model.load_state_dict(self.model_state, strict=True)
        return model.to(device).eval()


def _check_spec(spec: ModelSpec, path: Path) -> None:
    """Refuse a spec whose fields have the wrong type or an absurd size (a crafted or damaged file)."""
    for name in ("depth", "base_width", "num_classes", "in_channels", "hidden"):
        v = getattr(spec, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65536:
            raise RunFileError(path, f"damaged model spec ({name} = {v!r})")
    if spec.depth > 64 or not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
        raise RunFileError(path, f"damaged model spec (depth {spec.depth!r}, dropout {spec.dropout!r})")
    for name in ("mean", "std"):
        v = getattr(spec, name)
        if len(v) != spec.in_channels or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise RunFileError(path, f"damaged model spec ({name} = {v!r})")


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry but itself."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def save(
    path: str | Path,
    *,
    epoch: int,
    model: SimpleCNN,
    metrics: dict[str, Any],
    config_hash: str,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write the checkpoint of `epoch` (temp file, fsync, rename)."""
    from safetensors.torch import save_file

    from . import __version__

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value):
                        tensors[f"optimizer/{names[id(p)]}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
        opt_meta = {k: v for k, v in optimizer.param_groups[0].items() if k != "params" and isinstance(v, (int, float, bool, str, type(None), tuple, list))}
    for k, v in (rng or {}).items():
        tensors[f"rng/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    meta = {
        "format": FORMAT,
        "epoch": str(epoch),
        "model_spec": model.spec.to_json(),
        "config_hash": config_hash,
        "metrics": json.dumps(metrics, allow_nan=True),
        "optimizer": json.dumps(opt_meta),
        "probe_version": __version__,
    }
    meta["content_sha256"] = _digest(tensors, meta)
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a checkpoint without reading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise RunFileError(path, "checkpoint does not exist") from None
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise RunFileError(path, f"not a readable safetensors checkpoint ({_short(exc)})") from None


def load(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Read and check a checkpoint; any damage becomes one RunFileError naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise RunFileError(path, f"not a probe checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise RunFileError(path, f"damaged checkpoint ({_short(exc)})") from None
    if verify and _digest(tensors, meta) != meta.get("content_sha256"):
        raise RunFileError(path, "checksum mismatch: the file is damaged (bit flip or partial copy)")
    try:
        spec = ModelSpec.from_json(meta["model_spec"])
        epoch = int(meta["epoch"])
        metrics = json.loads(meta.get("metrics", "{}"))
        opt_meta = json.loads(meta.get("optimizer", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise RunFileError(path, f"damaged checkpoint metadata ({_short(exc)})") from None
    model_state, opt_state, rng = {}, {}, {}
    for name, t in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "model":
            model_state[rest] = t
        elif kind == "optimizer":
            pname, _, key = rest.rpartition("/")
            opt_state.setdefault(pname, {})[key] = t
        elif kind == "rng":
            rng[rest] = t
    return Checkpoint(path, epoch, spec, model_state, metrics, meta.get("config_hash", ""), opt_state, opt_meta, rng)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SimpleCNN:
    """Rebuild the model stored in a checkpoint, from that file alone, in eval mode."""
    return load(path).build_model(device)


def restore_optimizer(optimizer: torch.optim.Optimizer, model: SimpleCNN, ckpt: Checkpoint) -> None:
    """Load the optimizer state saved by `save` into a freshly built optimizer."""
    sd = optimizer.state_dict()
    order = [n for n, _ in model.named_parameters()]
    state = {}
    for i, name in enumerate(order):
        if name in ckpt.optimizer_state:
            state[i] = {k: v.clone() for k, v in ckpt.optimizer_state[name].items()}
    sd["state"] = state
    optimizer.load_state_dict(sd)


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
