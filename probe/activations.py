"""Activation dumps of the probe set: recorded during validation, written as HDF5.

The probe set is a fixed subset of the validation images, put at the front of the
validation order, so its activations are captured by forward hooks during the
validation pass that runs anyway: a dump costs no extra forward pass.

File layout (activations/epoch_NNNN.h5; see docs/run-directory.md):
  /pooled/<layer>   float16 [P, C]        per-channel spatial mean, every recorded layer
  /maps/<layer>     float16 [P, C, H, W]  full feature maps, layers asked for with --full-maps
  /logits           float32 [P, classes]
  attrs: format, epoch, layers (recorded layer names in order)

The file starts with a 512-byte HDF5 user block (HDF5 and h5py skip it) holding
`probe-activations/1 sha256=<hex>`: the SHA-256 of the rest of the file. `read`
checks it before HDF5 parses anything, so a truncated or bit-flipped dump is one
clear error, never slightly different numbers (HDF5 has no checksums in its
default format) and never a parser stuck on a damaged structure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .errors import RunFileError

FORMAT = "probe-activations/1"
USERBLOCK = 512
_SEAL = FORMAT.encode() + b" sha256="


class ActivationRecorder:
    """Forward hooks that keep the first `n` samples' outputs of the chosen layers."""

    def __init__(self, model: torch.nn.Module, layers: list[str], full_maps: tuple[str, ...], n: int):
        modules = dict(model.named_modules())
        unknown = [name for name in full_maps if name not in modules]
        if unknown:
            from .errors import UsageError

            raise UsageError("--full-maps", f"unknown layer(s) {', '.join(unknown)}; recorded layers are {', '.join(layers)}")
        self.layers = list(layers)
        self.full_maps = tuple(full_maps)
        self.n = n
        self.seen = 0
        self.pooled: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        self.maps: dict[str, list[torch.Tensor]] = {name: [] for name in self.full_maps}
        self.logits: list[torch.Tensor] = []
        self._handles = []
        for name in sorted(set(self.layers) | set(self.full_maps)):
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _take(self, out: torch.Tensor) -> torch.Tensor:
        return out[: max(0, self.n - self.seen)]

    def _hook(self, name: str):
        def hook(_module, _inputs, out):
            if self.seen >= self.n:
                return
            part = self._take(out.detach())
            if name in self.pooled:
                pooled = part.float().mean(dim=(2, 3)) if part.dim() == 4 else part.float()
                self.pooled[name].append(pooled.to(torch.float16).cpu())
            if name in self.maps:
                self.maps[name].append(part.to(torch.float16).cpu())

        return hook

    def after_batch(self, logits: torch.Tensor) -> None:
        """Call after each forward pass, with that batch's logits."""
        if self.seen < self.n:
            self.logits.append(self._take(logits.detach()).float().cpu())
            self.seen += logits.shape[0]

    @property
    def done(self) -> bool:
        return self.seen >= self.n

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def write(self, path: str | Path, epoch: int) -> None:
        """Atomically write what was recorded."""
        import h5py

        def writer(tmp: Path) -> None:
            with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
                f.attrs["format"] = FORMAT
                f.attrs["epoch"] = epoch
                f.attrs["layers"] = np.array(self.layers, dtype=h5py.string_dtype())
                g = f.create_group("pooled")
                for name, parts in self.pooled.items():
                    g.create_dataset(name, data=torch.cat(parts).numpy(), chunks=True, compression="gzip", shuffle=True)
                m = f.create_group("maps")
                for name, parts in self.maps.items():
                    arr = torch.cat(parts).contiguous().numpy()
                    m.create_dataset(name, data=arr, chunks=(min(64, arr.shape[0]), *arr.shape[1:]), compression="gzip", shuffle=True)
                f.create_dataset("logits", data=torch.cat(self.logits).numpy())
            _seal(tmp)

        atomic.write_with(path, writer, suffix=".h5")


def _sha256_after_userblock(fh) -> str:
    fh.seek(USERBLOCK)
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _seal(path: Path) -> None:
    """Write the checksum of everything after the user block into the user block."""
    with open(path, "r+b") as fh:
        digest = _sha256_after_userblock(fh)
        fh.seek(0)
        fh.write(_SEAL + digest.encode() + b"\n")


def verify(path: str | Path) -> None:
    """Raise RunFileError unless `path` is a dump whose checksum matches.

    Hashing a dump costs milliseconds per megabyte; it is redone on every read
    rather than cached, because a bit flip on disk changes neither size nor mtime.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(USERBLOCK)
            if not head.startswith(_SEAL):
                raise RunFileError(path, "not a probe activation dump (no probe checksum header)")
            expected = head[len(_SEAL):len(_SEAL) + 64].decode("ascii", "replace")
            actual = _sha256_after_userblock(fh)
    except OSError as exc:
        raise RunFileError(path, f"cannot read activation dump ({exc.strerror or exc})") from None
    if actual != expected:
        raise RunFileError(path, "checksum mismatch: the file is damaged (truncated, bit flip or partial copy)")


def read(path: str | Path, layer: str | None = None, kind: str = "pooled") -> np.ndarray | dict:
    """Read one dataset (`kind` = pooled, maps or logits) or, with layer=None, the layer list.

    Any damage (truncation, bit flip in the header, a non-HDF5 file) is one RunFileError.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise RunFileError(path, "activation dump does not exist")
    verify(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise RunFileError(path, f"not a probe activation dump (format {f.attrs.get('format')!r})")
            if layer is None and kind != "logits":
                return {"layers": [s.decode() if isinstance(s, bytes) else str(s) for s in f.attrs["layers"]],
                        "maps": sorted(f["maps"].keys()), "epoch": int(f.attrs["epoch"])}
            key = "logits" if kind == "logits" else f"{kind}/{layer}"
            if key not in f:
                have = sorted(f[kind].keys()) if kind in f else []
                raise RunFileError(path, f"no {kind} activations for layer {layer!r} (have: {', '.join(have) or 'none'})")
            return f[key][()]
    except RunFileError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError for damaged files
        raise RunFileError(path, f"damaged activation dump ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})") from None
