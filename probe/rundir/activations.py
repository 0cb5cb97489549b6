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

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.contract.families import ModelSpec
from probe.errors import RunFileError, UsageError
from probe.io import atomic, safeio
from probe.rundir.checkpoint import check_spec
from probe.rundir.run import CONFIG, MAX_IMAGES, Run

FORMAT = "probe-activations/1"
USERBLOCK = 512
_SEAL = FORMAT.encode() + b" sha256="


class ActivationRecorder:
    """Forward hooks that keep the first `n` samples' outputs of the chosen layers."""

    def __init__(
        self, model: torch.nn.Module, layers: list[str], full_maps: tuple[str, ...], n: int
    ):
        modules = dict(model.named_modules())
        unknown = [name for name in full_maps if name not in modules]
        if unknown:
            raise UsageError(
                "--full-maps",
                f"unknown layer(s) {', '.join(unknown)}; recorded layers are {', '.join(layers)}",
            )
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
                    g.create_dataset(
                        name,
                        data=torch.cat(parts).numpy(),
                        chunks=True,
                        compression="gzip",
                        shuffle=True,
                    )
                m = f.create_group("maps")
                for name, parts in self.maps.items():
                    arr = torch.cat(parts).contiguous().numpy()
                    m.create_dataset(
                        name,
                        data=arr,
                        chunks=(min(64, arr.shape[0]), *arr.shape[1:]),
                        compression="gzip",
                        shuffle=True,
                    )
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
    A symbolic link, FIFO or device is refused before a byte is read.
    """
    path = Path(path)
    with safeio.open_regular(path) as fh:
        _verify_open(path, fh)


def _verify_open(path: Path, fh) -> None:
    try:
        fh.seek(0)
        head = fh.read(USERBLOCK)
        if not head.startswith(_SEAL):
            raise RunFileError(path, "not a probe activation dump (no probe checksum header)")
        expected = head[len(_SEAL) : len(_SEAL) + 64].decode("ascii", "replace")
        actual = _sha256_after_userblock(fh)
    except OSError as exc:
        raise RunFileError(path, f"cannot read activation dump ({exc.strerror or exc})") from None
    if actual != expected:
        raise RunFileError(
            path, "checksum mismatch: the file is damaged (truncated, bit flip or partial copy)"
        )


@dataclass(frozen=True)
class Expected:
    """What a run's dumps may declare: at most `max_samples` rows, each layer's per-sample shape."""

    max_samples: int
    num_classes: int
    shapes: dict[
        str, tuple[int, ...]
    ]  # module name -> output shape of one sample (C, H, W) or (features,)


# Bounds for a dump outside a run directory (no config to compare against).
MAX_SAMPLES = 100_000  # the probe set is drawn from the test split (10,000 images for CIFAR-10)
MAX_ELEMENTS = 2**29  # one dataset: 1 GiB as float16
_ALLOWED_FILTERS = {
    1,
    2,
    3,
}  # deflate (gzip), shuffle, fletcher32: what h5py writes without plugins


def expected_for_run(run_dir: str | Path) -> Expected | None:
    """The shapes the run's model spec and probe-set size allow, or None when `run_dir` is not a
    readable run."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        return None
    run = Run(run_dir)
    cfg = run.config
    try:
        spec = ModelSpec.from_json(json.dumps(cfg.get("model_spec")), source=run_dir / CONFIG)
        size = cfg["train"].get("probe_set_size")
        if type(size) is not int or not 1 <= size <= MAX_IMAGES:
            raise ValueError(f"probe_set_size {size!r}")
    except (ValueError, TypeError) as exc:
        raise RunFileError(
            run_dir / CONFIG, f"damaged model spec or probe-set size ({str(exc)[:200]})"
        ) from None
    check_spec(spec, run_dir / CONFIG)
    try:
        shapes = layer_shapes(spec)
    except Exception as exc:  # e.g. a depth whose poolings shrink the images to nothing
        h, w = spec.input.size
        raise RunFileError(
            run_dir / CONFIG,
            f"model spec does not fit {h}x{w} images ({(str(exc).splitlines() or [''])[0][:120]})",
        ) from None
    return Expected(size, spec.num_classes, shapes)


@functools.lru_cache(maxsize=32)
def layer_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Every module's output shape for one input image, without memory.

    Walked layer by layer from the module types (conv 3x3 with padding 1, 2x2
    max-pool, global pooling, flatten, linear); a module of another type falls
    back to a forward pass on the meta device (correct, but its first use costs
    about a second).
    """
    from torch import nn

    if spec.is_module:  # a user's own class: the output shapes its layout stored
        return dict(spec.module.outputs)
    model = spec.skeleton()
    shapes: dict[str, tuple[int, ...]] = {}
    shape: tuple[int, ...] = (spec.in_channels, *spec.input.size)
    for name, m in model.named_modules():
        if not name or name in ("features", "classifier"):
            continue
        if (
            isinstance(m, nn.Conv2d)
            and m.kernel_size == (3, 3)
            and m.padding == (1, 1)
            and m.stride == (1, 1)
        ):
            shape = (m.out_channels, *shape[1:])
        elif (
            isinstance(m, nn.MaxPool2d) and m.kernel_size == 2 and m.stride == 2 and m.padding == 0
        ):
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size == 1:
            shape = (shape[0], 1, 1)
        elif isinstance(m, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(m, nn.Linear):
            shape = (m.out_features,)
        elif not isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.Dropout)):
            return _layer_shapes_by_forward(model, spec)
        if 0 in shape:
            raise ValueError(f"{name} has no output left ({list(shape)})")
        shapes[name] = shape
    shapes["features"] = shapes[
        f"features.{len(model.features) - 1}"
    ]  # the containers: their last module's output
    shapes["classifier"] = shape
    return shapes


def _layer_shapes_by_forward(model, spec) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        handles = [
            m.register_forward_hook(
                lambda _m, _i, out, name=name: (
                    shapes.__setitem__(name, tuple(out.shape[1:])) if torch.is_tensor(out) else None
                )
            )
            for name, m in model.named_modules()
            if name
        ]
        model.eval()(torch.empty(1, spec.in_channels, *spec.input.size))
        for h in handles:
            h.remove()
    return shapes


def _refuse_links(path: Path, group, where: str) -> dict:
    """The members of `group` as objects; a soft or external link (anything but a hard link) is
    refused."""
    import h5py

    out = {}
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise RunFileError(
                path,
                f"{where}{name} is an HDF5 external link to {link.filename}:{link.path}; "
                "probe reads nothing outside the file",
            )
        if not isinstance(link, h5py.HardLink):
            raise RunFileError(
                path,
                f"{where}{name} is an HDF5 {type(link).__name__}; probe writes only plain datasets",
            )
        out[name] = group[name]
    return out


def _check_dataset(
    path: Path, ds, name: str, dtype: str, shape: tuple[int, ...] | None, rank: int, max_rows: int
) -> int:
    """Refuse external or virtual storage, unknown filters, the wrong dtype or a shape the run
    cannot have."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(path, f"{name} is not a dataset")
    if ds.is_virtual:
        raise RunFileError(
            path, f"{name} is a virtual dataset (it maps other files); probe refuses it"
        )
    if ds.external:
        raise RunFileError(
            path,
            f"{name} keeps its data in an external file ({ds.external[0][0]!r}); probe refuses it",
        )
    plist = ds.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    if filters - _ALLOWED_FILTERS:
        raise RunFileError(
            path,
            f"{name} uses HDF5 filter(s) {sorted(filters - _ALLOWED_FILTERS)} "
            "(probe writes gzip and shuffle only)",
        )
    if ds.dtype != np.dtype(dtype) or len(ds.shape) != rank:
        raise RunFileError(
            path, f"{name} must be {dtype} of rank {rank}, got {ds.dtype} {list(ds.shape)}"
        )
    if not 1 <= ds.shape[0] <= max_rows:
        raise RunFileError(
            path,
            f"{name} declares shape {list(ds.shape)}: {ds.shape[0]:,} probe images, "
            f"expected 1 to {max_rows:,}",
        )
    if shape is not None and tuple(ds.shape[1:]) != shape:
        raise RunFileError(
            path,
            f"{name} declares shape {list(ds.shape)}; this run's model gives "
            f"[P, {', '.join(map(str, shape))}]",
        )
    if math.prod(ds.shape) > MAX_ELEMENTS:
        raise RunFileError(
            path,
            f"{name} declares shape {list(ds.shape)} ({math.prod(ds.shape):,} values), "
            f"more than {MAX_ELEMENTS:,}",
        )
    return ds.shape[0]


def check_structure(path: Path, f, expect: Expected | None) -> None:
    """Check every object the dump declares before any data is read (docs/reliability.md, "Bounds").

    Only hard links; no external links, external raw storage, virtual datasets or
    unknown filters; float16 pooled [P, C] and maps [P, C, H, W], float32 logits
    [P, classes]; one P everywhere, at most the run's probe-set size; per-sample
    shapes as the run's model spec gives them. So a small file declaring a huge
    dataset is refused without allocating it, and nothing outside the file is read.
    """
    import h5py

    top = _refuse_links(path, f, "/")
    unknown = sorted(set(top) - {"pooled", "maps", "logits"})
    if unknown:
        raise RunFileError(
            path, f"unexpected object /{unknown[0]} (a dump holds /pooled, /maps and /logits)"
        )
    if "logits" not in top:
        raise RunFileError(path, "no /logits dataset")
    limit = expect.max_samples if expect else MAX_SAMPLES
    rows = {
        "/logits": _check_dataset(
            path,
            top["logits"],
            "/logits",
            "float32",
            (expect.num_classes,) if expect else None,
            2,
            limit,
        )
    }
    for group, rank in (("pooled", 2), ("maps", 4)):
        if group not in top:
            continue
        if not isinstance(top[group], h5py.Group):
            raise RunFileError(path, f"/{group} is not a group")
        for name, ds in _refuse_links(path, top[group], f"/{group}/").items():
            shape = None
            if expect is not None:
                if name not in expect.shapes:
                    raise RunFileError(
                        path, f"/{group}/{name}: the run's model has no layer {name!r}"
                    )
                full = expect.shapes[name]
                shape = (full[0],) if group == "pooled" and len(full) == 3 else full
                if group == "maps" and len(full) != 3:
                    raise RunFileError(path, f"/{group}/{name}: layer {name!r} has no feature maps")
            rows[f"/{group}/{name}"] = _check_dataset(
                path, ds, f"/{group}/{name}", "float16", shape, rank, limit
            )
    for name, n in rows.items():
        if n != rows["/logits"]:
            raise RunFileError(
                path, f"{name} declares {n:,} probe images, /logits {rows['/logits']:,}"
            )


def read(
    path: str | Path,
    layer: str | None = None,
    kind: str = "pooled",
    *,
    expect: Expected | None = None,
) -> np.ndarray | dict:
    """Read one dataset (`kind` = pooled, maps or logits) or, with layer=None, the layer list.

    Any damage (truncation, bit flip in the header, a non-HDF5 file) is one RunFileError.
    The file is opened once: its checksum is verified and HDF5 parses that same
    open file; `check_structure` runs before any data is read. `expect` defaults
    to what the run holding `path` (RUN/activations/epoch_N.h5) allows.
    """
    import h5py

    path = Path(path)
    within = None
    if path.parent.name == "activations" and (path.parent.parent / "config.json").exists():
        within = path.parent.parent  # a dump of a run: no link may lead out of the run
        if expect is None:
            try:
                expect = expected_for_run(within)
            except (
                RunFileError
            ):  # a damaged config.json is reported by what reads it; the fixed bounds still hold
                expect = None
    try:
        fh = safeio.open_regular(path, within=within)
    except safeio.MissingFileError:
        raise RunFileError(path, "activation dump does not exist") from None
    with fh:
        _verify_open(path, fh)
        fd_path = f"/proc/self/fd/{fh.fileno()}"
        try:
            with h5py.File(fd_path if os.path.exists(fd_path) else path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise RunFileError(
                        path, f"not a probe activation dump (format {f.attrs.get('format')!r})"
                    )
                check_structure(path, f, expect)
                if layer is None and kind != "logits":
                    return {
                        "layers": [
                            s.decode() if isinstance(s, bytes) else str(s)
                            for s in f.attrs["layers"]
                        ],
                        "maps": sorted(f["maps"].keys()),
                        "epoch": int(f.attrs["epoch"]),
                    }
                key = "logits" if kind == "logits" else f"{kind}/{layer}"
                if key not in f:
                    have = sorted(f[kind].keys()) if kind in f else []
                    raise RunFileError(
                        path,
                        f"no {kind} activations for layer {layer!r} "
                        f"(have: {', '.join(have) or 'none'})",
                    )
                return f[key][()]
        except RunFileError:
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError for damaged files
            raise RunFileError(
                path,
                f"damaged activation dump ({_first_line(exc)})",
            ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
