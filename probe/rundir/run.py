"""Reading a run directory. The format itself is documented in docs/run-directory.md.

A run directory is self-contained: its config, the per-epoch checkpoints (epoch 0
is the initialisation), per-epoch activation dumps of the probe set, the stored
probe set and analysis batch, and the metrics. An epoch is *complete* when its
checkpoint exists: the checkpoint is renamed into place after that epoch's
activations, so a reader (an analysis running while training goes on) only ever
sees finished epochs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from probe.contract.families import ModelSpec
from probe.contract.modulespec import TRUST, CodeTrust
from probe.errors import NotARunError, ProbeError, RunFileError, UsageError
from probe.io import safeio
from probe.io.jsonsafe import dumps

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
ACTIVATIONS = "activations"
PREDICTIONS = "predictions"
DATA = "data"
ANALYSES = "analyses"
PROBE_SET = f"{DATA}/probe_set.safetensors"
ANALYSIS_BATCH = f"{DATA}/analysis_batch.safetensors"
EXAMPLES = f"{DATA}/examples.safetensors"  # the training images whose predictions are recorded
MAX_EXAMPLES = 100_000  # recorded training examples a run may declare (default 1,000)
MAX_BATCH_BYTES = 1 << 30  # the stored probe set and analysis batch: a few MB at the default sizes
MAX_RESULT_JSON = 64 << 20  # one JSON file of a result (per-layer tables, eigenvalue lists)
MAX_IMAGES = 10_000_000  # image counts a config may declare (subset, probe set, analysis batch)
# What a `train` table lacks reads as these: probe train's defaults. A run written before a key
# existed (or by probe.Recorder, whose table holds only what it knows) is keyed and read as if it
# had the key at this value. A key added to probe train's config is added here too (a test checks).
TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "data": None,
        "dataset": "cifar10",
        "model": "simplecnn",
        "model_params": (),
        "epochs": 30,
        "batch_size": 128,
        "val_batch_size": 256,
        "subset_train_size": 10_000,
        "optimizer": "SGD",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "constant",
        "step_size": 10,
        "gamma": 0.1,
        "model_depth": 4,
        "base_width": 32,
        "target_params": None,
        "dropout": 0.0,
        "augment": True,
        "seed": 42,
        "device": "auto",
        "precision": "fp32",
        "channels_last": True,
        "compile": False,
        "probe_set_size": 1000,
        "analysis_batch_size": 1024,
        "full_maps": (),
        "val_size": None,
        "example_records": 1000,
    }
)
_EPOCH_FILE = re.compile(r"^epoch_([0-9]{4,9})\.safetensors$")


def is_temp(path: Path) -> bool:
    """A temporary file or folder of an atomic write (`.<name>.<random>.tmp`), not in the run."""
    return path.name.startswith(".") and path.name.endswith((".tmp", ".old"))


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINTS}/epoch_{epoch:04d}.safetensors"


def activations_name(epoch: int) -> str:
    return f"{ACTIVATIONS}/epoch_{epoch:04d}.h5"


def predictions_name(epoch: int) -> str:
    return f"{PREDICTIONS}/epoch_{epoch:04d}.safetensors"


@dataclass(frozen=True)
class DataBatch:
    """Stored images (uint8 NCHW), labels, and their indices in the original split."""

    images: Any
    labels: Any
    indices: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalized(self, device: str = "cpu"):
        """Float32 images normalised as in training (no augmentation)."""
        from probe.datasets.tensors import normalize

        return normalize(self.images.to(device), self.mean, self.std)


def metrics_row_problem(row: dict[str, Any]) -> str | None:
    """Why a metrics record is not one probe writes (None: it is): every value is a number,
    a string, a boolean or null; a list or an object would reach float() in an analysis."""
    for k, v in row.items():
        if not (v is None or isinstance(v, (bool, int, float, str))):
            kind = "a list" if isinstance(v, list) else f"a {type(v).__name__}"
            return f"{str(k)[:80]!r} holds {kind}, not a number or a string"
    return None


class Run:
    """A run directory on disk. Cheap to create; reads lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotARunError(self.path, "no such run directory")
        if not os.path.lexists(
            self.path / CONFIG
        ):  # a link or FIFO here is refused, precisely, by `config`
            raise NotARunError(
                self.path,
                f"not a probe run directory (no {CONFIG}); create one with "
                f"`probe train --run-dir {self.path}`",
            )

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def config(self) -> dict[str, Any]:
        """config.json: {"train": the resolved config, "model_spec", "versions", "device", ...}.

        Checked as data (a bounded JSON object with a `train` table); probe train turns
        `train` back into its config (probe.training.trainplan.stored_config).
        """
        p = self.path / CONFIG
        d = safeio.read_json(p, max_bytes=safeio.MAX_CONFIG_BYTES, within=self.path)
        if not isinstance(d, dict) or not isinstance(d.get("train"), dict):
            raise RunFileError(p, "not a probe config (no 'train' table)")
        return d

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / checkpoint_name(epoch)

    def activations_path(self, epoch: int) -> Path:
        return self.path / activations_name(epoch)

    def epochs(self) -> list[int]:
        """Complete epochs (those with a checkpoint), ascending."""
        d = self.path / CHECKPOINTS
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name)))

    def select_epochs(self, spec: str) -> list[int]:
        """Parse `all`, `last`, `0,5,last`, `2-6` or `::5` against the complete epochs."""
        have = self.epochs()
        if not have:
            raise RunFileError(self.path / CHECKPOINTS, "no complete epoch yet")
        spec = spec.strip()
        if spec == "all":
            return have
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if part == "last":
                out.append(have[-1])
            elif part == "first":
                out.append(have[0])
            elif re.fullmatch(r"::[0-9]{1,9}", part) and int(part[2:]) > 0:
                step = int(part[2:])
                out += [e for e in have if e % step == 0 or e == have[-1]]
            elif re.fullmatch(r"[0-9]{1,9}-[0-9]{1,9}", part):
                a, b = map(int, part.split("-"))
                out += [e for e in have if a <= e <= b]
            elif re.fullmatch(r"[0-9]{1,9}", part):
                if int(part) not in have:
                    raise UsageError(
                        "--epochs",
                        f"epoch {part} is not complete in {self.path} (complete: {_ranges(have)})",
                    )
                out.append(int(part))
            else:
                raise UsageError(
                    "--epochs", f"cannot parse {part!r}; use all, last, 0,5,last, 2-6 or ::5"
                )
        return sorted(set(out))

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl, one dict per epoch; a torn last line (a crash mid-write) is skipped."""
        p = self.path / METRICS
        if not p.exists() and not p.is_symlink():
            return []
        rows = []
        for i, row in safeio.read_jsonl(p, within=self.path, numbered=True):
            if (
                not isinstance(row, dict)
                or type(row.get("epoch")) is not int
                or not 0 <= row["epoch"] < 10**9
            ):
                raise RunFileError(p, f"line {i} is not a metrics record (no integer 'epoch')")
            why = metrics_row_problem(row)
            if why:
                raise RunFileError(p, f"line {i}: {why}")
            rows.append(row)
        return rows

    def _batch(self, rel: str) -> DataBatch:
        from safetensors.torch import load  # here: reading config or metrics needs no torch

        p = self.path / rel
        data = safeio.read_bytes(p, MAX_BATCH_BYTES, within=self.path)
        try:
            t = load(data)
            spec = ModelSpec.from_dict(self.config["model_spec"])
            batch = DataBatch(t["images"], t["labels"], t["indices"], spec.mean, spec.std)
        except Exception as exc:
            raise RunFileError(
                p, f"damaged ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
            ) from None
        _check_batch(p, batch, spec)
        return batch

    def probe_set(self) -> DataBatch:
        """The fixed, class-stratified validation images whose activations are dumped."""
        return self._batch(PROBE_SET)

    def analysis_batch(self) -> DataBatch:
        """The fixed, un-augmented training images for loss-based analyses."""
        return self._batch(ANALYSIS_BATCH)

    def has_examples(self) -> bool:
        """Whether the run records per-example predictions (runs before 2026-12 do not)."""
        return os.path.lexists(self.path / EXAMPLES)

    def examples(self) -> DataBatch:
        """The fixed, class-stratified, un-augmented training images whose logits are recorded
        after every epoch (data/examples.safetensors)."""
        batch = self._batch(EXAMPLES)
        n = len(batch.labels)
        if not 0 < n <= MAX_EXAMPLES or batch.images.dim() != 4 or len(batch.indices) != n:
            raise RunFileError(self.path / EXAMPLES, "damaged (images, labels, indices disagree)")
        return batch

    def example_logits(self, epoch: int, n_examples: int, n_classes: int):
        """Epoch `epoch`'s logits of the recorded examples, float32 [n_examples, n_classes];
        the file is bounded by that shape before it is read."""
        from safetensors.torch import load

        p = self.path / predictions_name(epoch)
        data = safeio.read_bytes(p, 4 * n_examples * n_classes + (1 << 16), within=self.path)
        try:
            logits = load(data)["logits"]
        except Exception as exc:
            raise RunFileError(p, f"damaged ({type(exc).__name__})") from None
        if tuple(logits.shape) != (n_examples, n_classes) or not logits.dtype.is_floating_point:
            raise RunFileError(
                p, f"holds logits of shape {list(logits.shape)}, not [{n_examples}, {n_classes}]"
            )
        return logits.float()

    def load_checkpoint(self, epoch: int):
        from probe.rundir import checkpoint

        ckpt = checkpoint.load(self.checkpoint_path(epoch), within=self.path)
        if ckpt.epoch != epoch:  # a copied or renamed file: its weights are not this epoch's
            raise RunFileError(ckpt.path, f"holds epoch {ckpt.epoch}, not epoch {epoch}")
        return ckpt

    def model(self, epoch: int, device: str = "cpu", factory: Any = None):
        """A fresh model for `epoch` in eval mode; changing it never changes the file.

        A run of your own class (family `module`) is rebuilt by `factory`, a callable you
        give that returns the untrained module (its weights are then loaded and checked);
        without it that is one `probe.Skip` line naming --trust-code. Nothing the run names
        is imported.
        """
        ckpt = self.load_checkpoint(epoch)
        if factory is None:
            return ckpt.build_model(device)
        token = TRUST.set(CodeTrust(factory=factory))
        try:
            return ckpt.build_model(device)
        finally:
            TRUST.reset(token)

    def results(self, analysis: str, variant: str = "default") -> dict[int | None, Result]:
        """The finished results of `analysis` (`probe analyze` or `probe.analyze` wrote them),
        by epoch (None: a run-wide result): manifest, scalars and every JSON file, read
        bounded. A result whose manifest seal or JSON files do not hold is left out (`probe
        analyze` computes it again). `variant`: "default" (default parameters) or a `p-...`
        folder name."""
        out: dict[int | None, Result] = {}
        base = self.path / ANALYSES / analysis / variant
        if not _PLAIN.match(analysis) or not _PLAIN.match(variant) or not base.is_dir():
            return out
        for folder in sorted(base.iterdir()):
            m = _EPOCH_DIR.match(folder.name)
            if not (m or folder.name == "run") or not folder.is_dir() or folder.is_symlink():
                continue
            result = _read_result(self.path, folder, analysis, variant)
            if result is not None:
                out[int(m.group(1)) if m else None] = result
        return out


@dataclass(frozen=True)
class Result:
    """One finished analysis result: where it is, its manifest, headline scalars, JSON files."""

    analysis: str
    variant: str
    epoch: int | None
    path: Path
    manifest: dict[str, Any]
    json: dict[str, Any]  # file name without .json -> its parsed content

    @property
    def scalars(self) -> dict[str, Any]:
        return dict(self.manifest.get("scalars") or {})


_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_EPOCH_DIR = re.compile(r"^epoch_([0-9]{4,9})$")


def _read_result(root: Path, folder: Path, analysis: str, variant: str) -> Result | None:
    """The result in `folder` if its manifest is sealed (the rule of results.seal_of) and each
    JSON file it lists hashes to its recorded digest; else None."""
    try:
        m = safeio.read_json(
            folder / "manifest.json", max_bytes=safeio.MAX_CONFIG_BYTES, within=root
        )
        if not isinstance(m, dict) or not isinstance(m.get("seal"), str):
            return None
        body = dumps(
            {k: v for k, v in m.items() if k != "seal"},
            "str",
            sort_keys=True,
            separators=(",", ":"),
        )
        digests = m.get("file_sha256")
        if hashlib.sha256(body.encode()).hexdigest() != m["seal"] or not isinstance(digests, dict):
            return None
        files: dict[str, Any] = {}
        for name in m.get("files") or []:
            if not isinstance(name, str) or not name.endswith(".json") or not _PLAIN.match(name):
                continue
            p = folder / name
            if safeio.sha256_file(p, MAX_RESULT_JSON, within=root) != digests.get(name):
                return None
            files[name.removesuffix(".json")] = safeio.read_json(
                p, max_bytes=MAX_RESULT_JSON, within=root
            )
    except ProbeError:
        return None
    epoch = m.get("epoch")
    return Result(analysis, variant, epoch if type(epoch) is int else None, folder, m, files)


def _check_batch(path: Path, batch: DataBatch, spec: Any) -> None:
    """Images uint8 [N, C, H, W] as the model spec's input, labels [N] in 0..classes-1, indices
    [N]: else one RunFileError."""
    import torch

    x, y, idx = batch.images, batch.labels, batch.indices
    n = x.shape[0] if x.dim() == 4 else -1
    h, w = spec.input.size
    if (
        x.dtype != torch.uint8
        or x.dim() != 4
        or tuple(x.shape[1:]) != (spec.in_channels, h, w)
        or n < 1
    ):
        raise RunFileError(
            path,
            f"'images' must be uint8 [N, {spec.in_channels}, {h}, {w}], "
            f"got {x.dtype} {list(x.shape)}",
        )
    for name, t in (("labels", y), ("indices", idx)):
        if (
            t.dim() != 1
            or t.shape[0] != n
            or t.dtype.is_floating_point
            or t.dtype == torch.bool
            or t.is_complex()
        ):
            raise RunFileError(
                path, f"'{name}' must be integers [{n}], got {t.dtype} {list(t.shape)}"
            )
    if bool(((y < 0) | (y >= spec.num_classes)).any()):
        raise RunFileError(path, f"'labels' hold values outside 0..{spec.num_classes - 1}")
    if bool((idx < 0).any()):
        raise RunFileError(path, "'indices' hold negative values")


def _ranges(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    return (
        f"{epochs[0]}-{epochs[-1]}"
        if epochs == list(range(epochs[0], epochs[-1] + 1))
        else ",".join(map(str, epochs))
    )
