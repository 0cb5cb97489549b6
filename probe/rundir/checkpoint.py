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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probe.contract.families import MAX_MODEL_PARAMS, FamilyNotInstalled, ModelSpec
from probe.errors import RunFileError
from probe.io import atomic, safeio
from probe.version import __version__

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

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """A fresh model with these weights, in eval mode, on `device`.

        The spec is checked against the stored tensors on the meta device first, so
        a spec that does not fit them is one error, never a huge allocation.
        """
        check_spec(self.spec, self.path)
        shapes = {k: s for k, (_, s, _) in self.spec.state_layout().items()}
        stored = {k: tuple(v.shape) for k, v in self.model_state.items()}
        bad = sorted(k for k in shapes.keys() | stored.keys() if shapes.get(k) != stored.get(k))
        if bad:
            k = bad[0]
            raise RunFileError(
                self.path,
                f"tensors do not match the model spec ({len(bad)} differ; {k}: "
                f"spec {shapes.get(k, 'none')}, file {stored.get(k, 'none')})",
            )
        model = self.spec.build()
        model.load_state_dict(self.model_state, strict=True)
        return model.to(device).eval()


def check_spec(spec: ModelSpec, path: Path) -> None:
    """Refuse a spec the installed family would not build, or of an absurd size (a crafted or
    damaged file).

    The spec's own fields were checked when it was parsed (`ModelSpec.from_dict`);
    here the family must be installed, must accept the parameters (types, ranges,
    its own checks), and the model must have at most MAX_MODEL_PARAMS parameters,
    counted on the meta device before anything is allocated.
    """
    try:
        spec.family_params()
        n = spec.num_params()  # a user's own class (spec.is_module): from its layout, no code
    except FamilyNotInstalled as exc:
        raise RunFileError(path, str(exc)) from None
    except Exception as exc:  # the family refuses the parameters, or its builder fails on them
        raise RunFileError(path, f"damaged model spec ({spec.family}: {_short(exc)})") from None
    if n > MAX_MODEL_PARAMS:
        raise RunFileError(
            path, f"damaged model spec ({spec.describe()} would have {n:,} parameters)"
        )


_check_spec = check_spec  # the name probe.analysis.context imports


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry but itself."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(
        json.dumps(
            {k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True
        ).encode()
    )
    return h.hexdigest()


def save(
    path: str | Path,
    *,
    epoch: int,
    model: torch.nn.Module,
    spec: ModelSpec,
    metrics: dict[str, Any],
    config_hash: str,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write the checkpoint of `epoch` (temp file, fsync, rename)."""
    from safetensors.torch import save_file

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
                        tensors[f"optimizer/{names[id(p)]}/{key}"] = (
                            value.detach().to("cpu", copy=True).contiguous()
                        )
        opt_meta = {
            k: v
            for k, v in optimizer.param_groups[0].items()
            if k != "params" and isinstance(v, (int, float, bool, str, type(None), tuple, list))
        }
    for k, v in (rng or {}).items():
        tensors[f"rng/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    meta = {
        "format": FORMAT,
        "epoch": str(epoch),
        "model_spec": spec.to_json(),
        "config_hash": config_hash,
        "metrics": json.dumps(metrics, allow_nan=True),
        "optimizer": json.dumps(opt_meta),
        "probe_version": __version__,
    }
    meta["content_sha256"] = _digest(tensors, meta)
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: str | Path, *, within: str | Path | None = None) -> dict[str, str]:
    """The metadata of a checkpoint without reading its tensors (`within`: safeio.open_regular)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safeio.regular_path(path, within=within) as p, safe_open(p, framework="pt") as f:
            return dict(f.metadata() or {})
    except safeio.MissingFileError:
        raise RunFileError(path, "checkpoint does not exist") from None
    except RunFileError:
        raise
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise RunFileError(path, f"not a readable safetensors checkpoint ({_short(exc)})") from None


def size_bound(spec: ModelSpec) -> int:
    """The most bytes a probe checkpoint of `spec`'s model can take: every parameter and
    buffer in float64, twice more for an optimizer's state (Adam's two moments), plus the
    random-number states and the header. A larger file is refused before it is read."""
    numel = sum(math.prod(s) for _, s, _ in spec.state_layout().values())
    return 3 * 8 * numel + (4 << 20)


def load(path: str | Path, *, verify: bool = True, within: str | Path | None = None) -> Checkpoint:
    """Read and check a checkpoint; any damage becomes one RunFileError naming the file.

    Beyond the seal (`content_sha256`, which a crafted file can recompute), every
    field is checked against what `save` writes: the metadata's types, the model
    tensors' names, shapes and dtypes against the model spec, the optimizer state
    against the parameters, the random-number states. A sealed file that does
    not fit is one error naming the field, never a traceback later.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path, within=within)
    if meta.get("format") != FORMAT:
        raise RunFileError(
            path, f"not a probe checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        spec = ModelSpec.from_json(meta["model_spec"], source=f"{path}: field model_spec")
    except KeyError:
        raise RunFileError(path, "field model_spec: missing") from None
    except (ValueError, TypeError) as exc:
        raise RunFileError(path, f"field model_spec: {_short(exc)}") from None
    check_spec(spec, path)
    try:  # at most what the spec's model (with an optimizer's state) can hold, before a read
        with safeio.regular_path(path, max_bytes=size_bound(spec), within=within) as p:
            tensors = load_file(p)
    except RunFileError:
        raise
    except Exception as exc:
        raise RunFileError(path, f"damaged checkpoint ({_short(exc)})") from None
    if verify and _digest(tensors, meta) != meta.get("content_sha256"):
        raise RunFileError(
            path, "checksum mismatch: the file is damaged (bit flip or partial copy)"
        )
    epoch_text = meta.get("epoch", "")
    if not re.fullmatch(r"[0-9]{1,9}", epoch_text):
        raise RunFileError(path, f"field epoch: expected a whole number, got {epoch_text[:40]!r}")
    epoch = int(epoch_text)
    metrics = _json_field(path, meta, "metrics")
    opt_meta = _json_field(path, meta, "optimizer")
    if "epoch" in metrics and metrics["epoch"] != epoch:
        raise RunFileError(path, f"field metrics: holds epoch {metrics['epoch']!r}, not {epoch}")
    if not isinstance(meta.get("config_hash", ""), str):
        raise RunFileError(path, "field config_hash: not a string")
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
        else:
            raise RunFileError(
                path, f"field {name}: not a tensor probe writes (model/, optimizer/ or rng/)"
            )
    params = _check_model_state(path, spec, model_state)
    _check_optimizer_state(path, params, opt_state)
    _check_rng(path, rng, required=bool(rng or opt_state))
    return Checkpoint(
        path,
        epoch,
        spec,
        model_state,
        metrics,
        meta.get("config_hash", ""),
        opt_state,
        opt_meta,
        rng,
    )


def _json_field(path: Path, meta: dict[str, str], name: str) -> dict[str, Any]:
    try:
        value = safeio.loads_json(meta.get(name, "{}"), source=f"{path}: field {name}")
    except RunFileError as exc:
        raise RunFileError(path, str(exc)[len(str(path)) + 2 :]) from None
    if not isinstance(value, dict):
        raise RunFileError(
            path, f"field {name}: expected a JSON object, got {type(value).__name__}"
        )
    return value


def _check_model_state(
    path: Path, spec: ModelSpec, state: dict[str, torch.Tensor]
) -> dict[str, tuple[int, ...]]:
    """Names, shapes and dtypes of the model tensors against the spec (built on the meta device);
    returns parameter shapes."""
    expected = spec.state_layout()
    for k in sorted(expected.keys() | state.keys()):
        if k not in state:
            raise RunFileError(path, f"field model/{k}: missing (the model spec has it)")
        if k not in expected:
            raise RunFileError(path, f"field model/{k}: not a tensor of this model spec")
        (dtype, shape, _), got = expected[k], state[k]
        if str(got.dtype).removeprefix("torch.") != dtype or tuple(got.shape) != shape:
            raise RunFileError(
                path,
                f"field model/{k}: expected {dtype} {list(shape)}, "
                f"got {str(got.dtype).removeprefix('torch.')} {list(got.shape)}",
            )
    return {n: s for n, (_, s, is_param) in expected.items() if is_param}


OPTIMIZER_STATE_KEYS = {
    "momentum_buffer",
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "step",
}  # what a checkpoint holds


def _check_optimizer_state(
    path: Path, params: dict[str, tuple[int, ...]], state: dict[str, dict[str, torch.Tensor]]
) -> None:
    for pname in sorted(state):
        for key, t in sorted(state[pname].items()):
            field_name = f"optimizer/{pname}/{key}"
            if pname not in params:
                raise RunFileError(
                    path, f"field {field_name}: the model has no parameter {pname!r}"
                )
            if key not in OPTIMIZER_STATE_KEYS:
                raise RunFileError(path, f"field {field_name}: not an optimizer state probe writes")
            want = () if key == "step" else params[pname]
            if t.dtype != torch.float32 or tuple(t.shape) != want:
                raise RunFileError(
                    path,
                    f"field {field_name}: expected float32 {list(want)}, got "
                    f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}",
                )
            if key == "step" and not (math.isfinite(float(t)) and 0 <= float(t) < 2**31):
                raise RunFileError(path, f"field {field_name}: {float(t)} is not a step count")


def rng_problem(rng: dict[str, Any], *, required: bool) -> str | None:
    """Why `rng` is not a set of random-number states a checkpoint may hold (None: it is).

    rng/torch and rng/data must be CPU generator states (uint8 [5056]); rng/cuda uint8 [n].
    The writer asks this before writing and the reader after reading: one rule."""
    for key in sorted(rng):
        if key not in ("torch", "data", "cuda"):
            return f"rng/{key}: not a random-number state probe writes"
        if not torch.is_tensor(rng[key]):
            return f"rng/{key}: a {type(rng[key]).__name__}, not a tensor"
    for key in ("torch", "data"):
        if key not in rng:
            if required:
                return f"rng/{key}: missing (needed to resume exactly)"
            continue
        try:
            torch.Generator().set_state(rng[key].detach().cpu())
        except (RuntimeError, TypeError, ValueError):
            t = rng[key]
            return (
                f"rng/{key}: not a CPU generator state "
                f"({str(t.dtype).removeprefix('torch.')} {list(t.shape)})"
            )
    if "cuda" in rng and (rng["cuda"].dtype != torch.uint8 or rng["cuda"].dim() != 1):
        return (
            f"rng/cuda: not a CUDA generator state ({rng['cuda'].dtype} {list(rng['cuda'].shape)})"
        )
    return None


def _check_rng(path: Path, rng: dict[str, torch.Tensor], *, required: bool) -> None:
    why = rng_problem(rng, required=required)
    if why:
        raise RunFileError(path, f"field {why}")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint, from that file alone, in eval mode."""
    return load(path).build_model(device)


def restore_optimizer(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, ckpt: Checkpoint
) -> None:
    """Load the optimizer state saved by `save` into a freshly built optimizer.

    Called when resuming: the checkpoint must then hold what resuming needs (the
    random-number states, an epoch in its metrics) and optimizer state of the
    kind this optimizer keeps; anything else is one RunFileError naming the field.
    """
    _check_rng(ckpt.path, ckpt.rng, required=True)
    if ckpt.metrics.get("epoch") != ckpt.epoch:
        raise RunFileError(ckpt.path, f"field metrics: no 'epoch' {ckpt.epoch} (needed to resume)")
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        kinds = [{"momentum_buffer"}, set()] if group.get("momentum") else [set()]
    else:
        kinds = [
            {"step", "exp_avg", "exp_avg_sq"}
            | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
        ]
    sd = optimizer.state_dict()
    order = [n for n, _ in model.named_parameters()]
    state = {}
    for i, name in enumerate(order):
        if name in ckpt.optimizer_state:
            keys = set(ckpt.optimizer_state[name])
            if keys not in kinds:
                want = " + ".join(sorted(kinds[0])) or "no state"
                raise RunFileError(
                    ckpt.path,
                    f"field optimizer/{name}: holds {', '.join(sorted(keys))}, but "
                    f"{type(optimizer).__name__} keeps {want}",
                )
            state[i] = {k: v.clone() for k, v in ckpt.optimizer_state[name].items()}
    sd["state"] = state
    optimizer.load_state_dict(sd)


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
