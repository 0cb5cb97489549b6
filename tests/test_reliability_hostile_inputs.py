"""Issue 11 (items 2, 4, 5): hostile files and options, each one line naming the file or option.

A table of crafted inputs, each run through the real command line in this process
(click's CliRunner): JSON nested 10,000 deep and 5,000-digit integers in config.json
and metrics.jsonl, symbolic links to /dev/zero and FIFOs where a file is expected,
HDF5 dumps with external links, external storage and virtual datasets pointing at a
file outside the run (seal recomputed, so only the structure check can refuse them),
dumps declaring shapes the run cannot have, checkpoints whose seal verifies but whose
fields do not fit, a poisoned dataset cache, and every bound on an option or plugin
parameter. Each case asserts the exact one-line message, the exit code, that no
traceback was printed, and that a sentinel tree outside the run is byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from reliability_helpers import (
    install_test_plugins,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    probe_cli,
    train_small,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from probe.contract.registry import reset_registry
from probe.datasets import tensors as data
from probe.rundir import activations, checkpoint
from probe.testing import make_image_folder

CKPT = "checkpoints/epoch_0002.safetensors"
DUMP = "activations/epoch_0002.h5"
PROBE_SET = "data/probe_set.safetensors"
NOT_REGULAR = "is a symbolic link, not a regular file (probe does not follow links here)"


# --- the template run, the sentinel tree, and running a case --------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Epochs 0-2 of a width-4 run whose config names a small image folder (so
    --resume can load data)."""
    root = tmp_path_factory.mktemp("hostile")
    images = make_image_folder(root / "images", n_train=8, n_test=3)
    return train_small(root / "run", data=str(images))


@pytest.fixture(autouse=True)
def plugins():
    yield install_test_plugins()
    reset_registry(None)


@pytest.fixture(autouse=True)
def deadline():
    """A FIFO or /dev/zero that is read instead of refused would hang: fail the test instead."""

    def expired(*_: Any) -> None:
        raise TimeoutError("the command did not finish in 120 s (a FIFO or device read?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@dataclass
class Env:
    run: Path
    outside: Path  # the sentinel tree: must be byte-identical after every case
    tmp: Path
    cache: Path


def make_outside(outside: Path, template: Path) -> None:
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "secret.bin").write_bytes(bytes(range(256)) * 4)
    with h5py.File(outside / "data.h5", "w") as f:
        f.create_dataset("data", data=np.ones((10, 4), dtype=np.float16))
    shutil.copy(template / "config.json", outside / "config.json")
    shutil.copy(template / CKPT, outside / "epoch_0002.safetensors")
    (outside / "nested").mkdir()
    (outside / "nested" / "thesis.tex").write_text("\\documentclass{article}\n")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_command(env: Env, command: list[str] | Callable[[Env], tuple[int, str]]) -> tuple[int, str]:
    if callable(command):
        return command(env)
    result = probe_cli(*[a.format(run=env.run, tmp=env.tmp, outside=env.outside) for a in command])
    return result.exit_code, result.output


# --- crafting files -------------------------------------------------------------------------------


def replace_with_link(target: str) -> Callable[[Env, Path], None]:
    def setup(env: Env, path: Path) -> None:
        path.unlink()
        path.symlink_to(target.format(outside=env.outside))

    return setup


def replace_with_fifo(env: Env, path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def folder_outside(env: Env, path: Path) -> None:
    """Move a run folder (checkpoints/, activations/, data/) outside the run and leave
    a link in its place."""
    target = env.outside / f"moved-{path.name}"
    shutil.move(str(path), target)
    path.symlink_to(target, target_is_directory=True)


def write_text(text: str) -> Callable[[Env, Path], None]:
    def setup(env: Env, path: Path) -> None:
        path.write_text(text)

    return setup


def sparse(size: int) -> Callable[[Env, Path], None]:
    def setup(env: Env, path: Path) -> None:
        with open(path, "r+b") as fh:
            fh.truncate(size)

    return setup


DEEP_JSON = "[" * 10_000 + "]" * 10_000
BIG_INT = "9" * 5000


def metrics_lines(*lines: str) -> Callable[[Env, Path], None]:
    def setup(env: Env, path: Path) -> None:
        good = path.read_text().splitlines()
        path.write_text("\n".join(line.replace("{good}", good[0]) for line in lines) + "\n")

    return setup


def reseal_checkpoint(
    mutate: Callable[[dict[str, torch.Tensor], dict[str, str]], None],
) -> Callable[[Env, Path], None]:
    """Change a checkpoint's tensors or metadata and recompute content_sha256,
    so the seal verifies."""

    def setup(env: Env, path: Path) -> None:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        mutate(tensors, meta)
        meta["content_sha256"] = checkpoint._digest(tensors, meta)
        path.unlink()
        save_file(tensors, str(path), metadata=meta)
        assert checkpoint._digest(load_file(str(path)), meta) == meta["content_sha256"]

    return setup


def drop(name: str):
    return lambda t, m: t.pop(name)


def retype(name: str, dtype: torch.dtype):
    return lambda t, m: t.__setitem__(name, t[name].to(dtype))


def reshape(name: str, shape: tuple[int, ...]):
    return lambda t, m: t.__setitem__(name, torch.zeros(shape, dtype=t[name].dtype))


def add(name: str, value: torch.Tensor):
    return lambda t, m: t.__setitem__(name, value)


def set_meta(key: str, value: str):
    return lambda t, m: m.__setitem__(key, value)


def adam_state(t: dict[str, torch.Tensor], m: dict[str, str]) -> None:
    """Adam's state (exp_avg, exp_avg_sq, step) in place of SGD's momentum buffers: fits the
    parameters, not SGD."""
    for name in [k for k in t if k.endswith("/momentum_buffer")]:
        base = name.rsplit("/", 1)[0]
        v = t.pop(name)
        t[f"{base}/exp_avg"], t[f"{base}/exp_avg_sq"], t[f"{base}/step"] = (
            v,
            v.abs(),
            torch.tensor(3.0),
        )


def model_only(t: dict[str, torch.Tensor], m: dict[str, str]) -> None:
    for k in [k for k in t if not k.startswith("model/")]:
        t.pop(k)


def reseal_dump(build: Callable[[Env, h5py.File], None]) -> Callable[[Env, Path], None]:
    """Change a dump's HDF5 structure, then recompute its checksum header so `verify` passes."""

    def setup(env: Env, path: Path) -> None:
        with h5py.File(path, "r+") as f:
            build(env, f)
        activations._seal(path)
        activations.verify(path)

    return setup


def external_link(env: Env, f: h5py.File) -> None:
    del f["pooled/features.2"]
    f["pooled/features.2"] = h5py.ExternalLink(str(env.outside / "data.h5"), "/data")


def external_storage(env: Env, f: h5py.File) -> None:
    del f["pooled/features.2"]
    f.create_dataset(
        "pooled/features.2",
        shape=(10, 4),
        dtype="f2",
        external=[(str(env.outside / "secret.bin"), 0, 80)],
    )


def virtual_dataset(env: Env, f: h5py.File) -> None:
    del f["pooled/features.2"]
    layout = h5py.VirtualLayout(shape=(10, 4), dtype="f2")
    layout[:] = h5py.VirtualSource(str(env.outside / "data.h5"), "data", shape=(10, 4))
    f.create_virtual_dataset("pooled/features.2", layout)


def soft_link(env: Env, f: h5py.File) -> None:
    del f["pooled/features.2"]
    f["pooled/features.2"] = h5py.SoftLink("/pooled/features.6")


def dataset(
    name: str, shape: tuple[int, ...], dtype: str = "f2", **kw: Any
) -> Callable[[Env, h5py.File], None]:
    def build(env: Env, f: h5py.File) -> None:
        if name in f:
            del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, **kw)

    return build


def reseal_batch(mutate: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Env, Path], None]:
    def setup(env: Env, path: Path) -> None:
        t = load_file(str(path))
        mutate(t)
        save_file(t, str(path))

    return setup


# --- the dataset cache ($PROBE_CACHE) -------------------------------------------------------------


def load_folder_twice(
    poison: Callable[[Path, tuple[str, ...]], None],
) -> Callable[[Env], tuple[int, str]]:
    """Build the cache, poison it, load again: the second load must warn once and
    return the true data."""

    def command(env: Env) -> tuple[int, str]:
        folder = make_image_folder(env.tmp / "images", n_train=2, n_test=1)
        truth = data.load_dataset("cifar10", str(folder), quiet=True)
        (cached,) = env.cache.glob("folder-*.safetensors")
        poison(cached, truth.classes)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            again = data.load_dataset("cifar10", str(folder), quiet=True)
        assert torch.equal(again.train_x, truth.train_x) and torch.equal(
            again.train_y, truth.train_y
        )
        assert torch.equal(again.test_y, truth.test_y)
        assert (
            data.load_dataset("cifar10", str(folder), quiet=True).train_y.max() < 10
        )  # rebuilt, now trusted again
        return 0, err.getvalue().replace(str(cached), "{cache}")

    return command


def poison_cache(mutate: Callable[[dict[str, torch.Tensor]], None], *, reseal: bool = True):
    def poison(path: Path, classes: tuple[str, ...]) -> None:
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        mutate(t)
        if reseal:
            meta["content_sha256"] = data._digest(t, classes)
        save_file(t, str(path), metadata=meta)

    return poison


def link_cache(path: Path, classes: tuple[str, ...]) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def cache_classes(path: Path, classes: tuple[str, ...]) -> None:
    t = load_file(str(path))
    save_file(
        t,
        str(path),
        metadata={
            "format": data.CACHE_FORMAT,
            "classes": ",".join(classes[:3]),
            "content_sha256": data._digest(t, classes[:3]),
        },
    )


def hessian_cost(top_k: int, n: int, **kw: Any) -> Callable[[Env], tuple[int, str]]:
    def command(env: Env) -> tuple[int, str]:
        import probe_plugins.hessian as H
        from probe.errors import UsageError

        try:
            H.check_cost(H.Params(top_k=top_k, **kw), n)
        except UsageError as exc:
            return exc.exit_code, f"error: {exc}"
        return 0, ""

    return command


# --- the table ------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    file: str | None  # the run file the setup changes (None: no change)
    setup: Callable[[Env, Path], None] | None
    command: list[str] | Callable[[Env], tuple[int, str]]
    message: str  # the one line, with {run}, {path}, {outside}, {tmp}, {cache} filled in
    code: int


ANALYZE_CURVES = ["analyze", "{run}", "-p", "curves"]
ANALYZE_PEEK = ["analyze", "{run}", "-p", "peek", "-e", "last"]
ANALYZE_RSM = ["analyze", "{run}", "-p", "rsm", "-e", "last"]
RESUME = ["train", "--run-dir", "{run}", "--resume"]
TRAIN = ["train", "--run-dir", "{tmp}/new", "--data", "{tmp}/nowhere"]
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SEAL = "field"

CASES = [
    # config.json
    Case(
        "config nested 10000 deep",
        CONFIG,
        write_text(DEEP_JSON),
        RESUME,
        "error: {path}: is nested more than 64 levels deep",
        1,
    ),
    Case(
        "config 5000-digit integer",
        CONFIG,
        write_text('{"train": {"epochs": ' + BIG_INT + "}}"),
        RESUME,
        "error: {path}: holds an integer of 5,000 digits (at most 40 allowed)",
        1,
    ),
    Case(
        "config link to /dev/zero",
        CONFIG,
        replace_with_link("/dev/zero"),
        RESUME,
        f"error: {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "config link outside the run",
        CONFIG,
        replace_with_link("{outside}/config.json"),
        RESUME,
        f"error: {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "config FIFO",
        CONFIG,
        replace_with_fifo,
        RESUME,
        "error: {path}: is a FIFO (named pipe), not a regular file",
        1,
    ),
    Case(
        "config 2 MB",
        CONFIG,
        sparse(2 << 20),
        RESUME,
        "error: {path}: is 2,097,152 bytes, more than the 1,048,576 allowed for this file",
        1,
    ),
    Case(
        "config not UTF-8",
        CONFIG,
        lambda env, p: p.write_bytes(b'{"train": "\xff"}'),
        RESUME,
        "error: {path}: is not UTF-8 text (byte 11)",
        1,
    ),
    Case(
        "config seed 2**64-1 (resume)",
        CONFIG,
        lambda env, p: p.write_text(
            p.read_text().replace('"seed": 0', '"seed": 18446744073709551615')
        ),
        RESUME,
        "error: {path}: seed: must be <= 9223372036854775807, got 18446744073709551615",
        2,
    ),
    # metrics.jsonl
    Case(
        "metrics 5000-digit integer",
        METRICS,
        metrics_lines("{good}", '{"epoch": ' + BIG_INT + "}", "{good}"),
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: line 2 holds an integer of 5,000 digits (at most 40 allowed)",
        1,
    ),
    Case(
        "metrics nested 10000 deep",
        METRICS,
        metrics_lines(DEEP_JSON, "{good}"),
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: line 1 is nested more than 64 levels deep",
        1,
    ),
    Case(
        "metrics epoch 10**12",
        METRICS,
        metrics_lines('{"epoch": 1000000000000}', "{good}"),
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: line 1 is not a metrics record (no integer 'epoch')",
        1,
    ),
    Case(
        "metrics list value",
        METRICS,
        metrics_lines("{good}", '{"epoch": 1, "train_loss": [0.5, 0.4]}'),
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: line 2: 'train_loss' holds a list, not a number or a string",
        1,
    ),
    Case(
        "metrics link to /dev/zero",
        METRICS,
        replace_with_link("/dev/zero"),
        ANALYZE_CURVES,
        f"FAILED curves (run): {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "metrics FIFO",
        METRICS,
        replace_with_fifo,
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: is a FIFO (named pipe), not a regular file",
        1,
    ),
    Case(
        "metrics directory",
        METRICS,
        lambda env, p: (p.unlink(), p.mkdir()),
        ANALYZE_CURVES,
        "FAILED curves (run): {path}: is a directory, not a regular file",
        1,
    ),
    # checkpoints: not regular files
    Case(
        "checkpoint link to /dev/zero",
        CKPT,
        replace_with_link("/dev/zero"),
        ANALYZE_PEEK,
        f"FAILED peek epoch 2: {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "checkpoint link outside the run",
        CKPT,
        replace_with_link("{outside}/epoch_0002.safetensors"),
        ANALYZE_PEEK,
        f"FAILED peek epoch 2: {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "checkpoint FIFO",
        CKPT,
        replace_with_fifo,
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: is a FIFO (named pipe), not a regular file",
        1,
    ),
    Case(
        "checkpoints folder linked outside",
        "checkpoints",
        folder_outside,
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {run}/checkpoints/epoch_0002.safetensors: lies outside "
        "{run} through a symbolic link (resolves to {outside}/moved-checkpoints); probe "
        "reads nothing outside it",
        1,
    ),
    # checkpoints: sealed, crafted fields
    Case(
        "checkpoint without rng/torch",
        CKPT,
        reseal_checkpoint(drop("rng/torch")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field rng/torch: missing (needed to resume exactly)",
        1,
    ),
    Case(
        "checkpoint rng/torch as int32",
        CKPT,
        reseal_checkpoint(retype("rng/torch", torch.int32)),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field rng/torch: not a CPU generator state (int32 [5056])",
        1,
    ),
    Case(
        "checkpoint rng/data truncated",
        CKPT,
        reseal_checkpoint(reshape("rng/data", (100,))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field rng/data: not a CPU generator state (uint8 [100])",
        1,
    ),
    Case(
        "checkpoint unknown rng",
        CKPT,
        reseal_checkpoint(add("rng/numpy", torch.zeros(3, dtype=torch.uint8))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field rng/numpy: not a random-number state probe writes",
        1,
    ),
    Case(
        "checkpoint extra model tensor",
        CKPT,
        reseal_checkpoint(add("model/extra.weight", torch.zeros(3))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model/extra.weight: not a tensor of this model spec",
        1,
    ),
    Case(
        "checkpoint missing model tensor",
        CKPT,
        reseal_checkpoint(drop("model/features.0.weight")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model/features.0.weight: missing "
        "(the model spec has it)",
        1,
    ),
    Case(
        "checkpoint model tensor float64",
        CKPT,
        reseal_checkpoint(retype("model/features.0.weight", torch.float64)),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model/features.0.weight: expected float32 "
        "[4, 3, 3, 3], got float64 [4, 3, 3, 3]",
        1,
    ),
    Case(
        "checkpoint model tensor reshaped",
        CKPT,
        reseal_checkpoint(reshape("model/classifier.5.weight", (10, 9))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model/classifier.5.weight: expected float32 [10, 256], "
        "got float32 [10, 9]",
        1,
    ),
    Case(
        "checkpoint BN counter as float",
        CKPT,
        reseal_checkpoint(retype("model/features.1.num_batches_tracked", torch.float32)),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model/features.1.num_batches_tracked: expected "
        "int64 [], got float32 []",
        1,
    ),
    Case(
        "checkpoint optimizer state misshaped",
        CKPT,
        reseal_checkpoint(reshape("optimizer/features.0.weight/momentum_buffer", (4, 3))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field optimizer/features.0.weight/momentum_buffer: expected "
        "float32 [4, 3, 3, 3], got float32 [4, 3]",
        1,
    ),
    Case(
        "checkpoint optimizer state of no parameter",
        CKPT,
        reseal_checkpoint(add("optimizer/features.99.weight/momentum_buffer", torch.zeros(2))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field optimizer/features.99.weight/momentum_buffer: the "
        "model has no parameter 'features.99.weight'",
        1,
    ),
    Case(
        "checkpoint unknown optimizer state",
        CKPT,
        reseal_checkpoint(add("optimizer/features.0.bias/velocity", torch.zeros(4))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field optimizer/features.0.bias/velocity: not an "
        "optimizer state probe writes",
        1,
    ),
    Case(
        "checkpoint unknown tensor group",
        CKPT,
        reseal_checkpoint(add("junk/x", torch.zeros(1))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field junk/x: not a tensor probe writes "
        "(model/, optimizer/ or rng/)",
        1,
    ),
    Case(
        "checkpoint epoch 10**12",
        CKPT,
        reseal_checkpoint(set_meta("epoch", "1000000000000")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field epoch: expected a whole number, got '1000000000000'",
        1,
    ),
    Case(
        "checkpoint metrics nested deep",
        CKPT,
        reseal_checkpoint(set_meta("metrics", DEEP_JSON)),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field metrics: is nested more than 64 levels deep",
        1,
    ),
    Case(
        "checkpoint metrics a list",
        CKPT,
        reseal_checkpoint(set_meta("metrics", "[1]")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field metrics: expected a JSON object, got list",
        1,
    ),
    Case(
        "checkpoint model spec 5000-digit width",
        CKPT,
        reseal_checkpoint(
            lambda t, m: m.__setitem__(
                "model_spec", m["model_spec"].replace('"base_width": 4', f'"base_width": {BIG_INT}')
            )
        ),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model_spec: holds an integer of 5,000 digits "
        "(at most 40 allowed)",
        1,
    ),
    Case(
        "checkpoint model spec unknown key",
        CKPT,
        reseal_checkpoint(
            lambda t, m: m.__setitem__(
                "model_spec", m["model_spec"].replace("{", '{"evil": 1, ', 1)
            )
        ),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: field model_spec: unknown model spec keys ['evil']",
        1,
    ),
    Case(
        "resume: checkpoint without rng/torch",
        CKPT,
        reseal_checkpoint(drop("rng/torch")),
        [*RESUME, "--epochs", "2"],
        "warning: {path}: field rng/torch: missing (needed to resume exactly); resuming "
        "from an earlier epoch",
        0,
    ),
    Case(
        "resume: Adam state in an SGD run",
        CKPT,
        reseal_checkpoint(adam_state),
        RESUME,
        "error: {path}: field optimizer/features.0.weight: holds exp_avg, exp_avg_sq, step, but "
        "SGD keeps momentum_buffer",
        1,
    ),
    Case(
        "resume: model-only checkpoint",
        CKPT,
        reseal_checkpoint(model_only),
        RESUME,
        "error: {path}: field rng/torch: missing (needed to resume exactly)",
        1,
    ),
    # activation dumps
    Case(
        "dump link to /dev/zero",
        DUMP,
        replace_with_link("/dev/zero"),
        ANALYZE_PEEK,
        f"FAILED peek epoch 2: {{path}}: {NOT_REGULAR}",
        1,
    ),
    Case(
        "dump FIFO",
        DUMP,
        replace_with_fifo,
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: is a FIFO (named pipe), not a regular file",
        1,
    ),
    Case(
        "activations folder linked outside",
        "activations",
        folder_outside,
        ANALYZE_RSM,
        "FAILED rsm epoch 2: {run}/activations/epoch_0002.h5: lies outside {run} through a "
        "symbolic link (resolves to {outside}/moved-activations); probe reads nothing outside it",
        1,
    ),
    Case(
        "data folder linked outside",
        "data",
        folder_outside,
        ANALYZE_RSM,
        "FAILED rsm epoch 2: {run}/data/probe_set.safetensors: lies outside {run} through a "
        "symbolic link (resolves to {outside}/moved-data); probe reads nothing outside it",
        1,
    ),
    Case(
        "dump external link",
        DUMP,
        reseal_dump(external_link),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 is an HDF5 external link to "
        "{outside}/data.h5:/data; probe reads nothing outside the file",
        1,
    ),
    Case(
        "dump external storage",
        DUMP,
        reseal_dump(external_storage),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 keeps its data in an external file "
        "('{outside}/secret.bin'); probe refuses it",
        1,
    ),
    Case(
        "dump virtual dataset",
        DUMP,
        reseal_dump(virtual_dataset),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 is a virtual dataset (it maps other "
        "files); probe refuses it",
        1,
    ),
    Case(
        "dump soft link",
        DUMP,
        reseal_dump(soft_link),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 is an HDF5 SoftLink; probe "
        "writes only plain datasets",
        1,
    ),
    Case(
        "dump declares (4e6, 256)",
        DUMP,
        reseal_dump(
            dataset("pooled/classifier.3", (4_000_000, 256), chunks=(1024, 256), compression="gzip")
        ),
        ANALYZE_RSM,
        "FAILED rsm epoch 2: {path}: /pooled/classifier.3 declares shape [4000000, 256]: "
        "4,000,000 probe images, expected 1 to 10",
        1,
    ),
    Case(
        "dump channel count",
        DUMP,
        reseal_dump(dataset("pooled/features.2", (10, 999))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 declares shape [10, 999]; this "
        "run's model gives [P, 4]",
        1,
    ),
    Case(
        "dump full maps too large",
        DUMP,
        reseal_dump(dataset("maps/features.2", (10, 4, 320, 320), chunks=(1, 4, 32, 32))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /maps/features.2 declares shape [10, 4, 320, 320]; this "
        "run's model gives [P, 4, 32, 32]",
        1,
    ),
    Case(
        "dump float64",
        DUMP,
        reseal_dump(dataset("pooled/features.2", (10, 4), "f8")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 must be float16 of rank "
        "2, got float64 [10, 4]",
        1,
    ),
    Case(
        "dump unknown layer",
        DUMP,
        reseal_dump(dataset("pooled/features.99", (10, 4))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.99: the run's model has "
        "no layer 'features.99'",
        1,
    ),
    Case(
        "dump extra object",
        DUMP,
        reseal_dump(dataset("payload", (3,))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: unexpected object /payload (a dump holds "
        "/pooled, /maps and /logits)",
        1,
    ),
    Case(
        "dump lzf filter",
        DUMP,
        reseal_dump(dataset("pooled/features.2", (10, 4), chunks=(10, 4), compression="lzf")),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 uses HDF5 filter(s) [32000] (probe "
        "writes gzip and shuffle only)",
        1,
    ),
    Case(
        "dump rows disagree",
        DUMP,
        reseal_dump(dataset("pooled/features.2", (7, 4))),
        ANALYZE_PEEK,
        "FAILED peek epoch 2: {path}: /pooled/features.2 declares 7 probe images, /logits 10",
        1,
    ),
    # the stored probe set
    Case(
        "probe set labels 1000",
        PROBE_SET,
        reseal_batch(lambda t: t["labels"].__setitem__(0, 1000)),
        ANALYZE_RSM,
        "FAILED rsm epoch 2: {path}: 'labels' hold values outside 0..9",
        1,
    ),
    Case(
        "probe set 8x8 images",
        PROBE_SET,
        reseal_batch(lambda t: t.__setitem__("images", t["images"][:, :, :8, :8].contiguous())),
        ANALYZE_RSM,
        "FAILED rsm epoch 2: {path}: 'images' must be uint8 [N, 3, 32, 32], got "
        "torch.uint8 [10, 3, 8, 8]",
        1,
    ),
    Case(
        "probe set link to /dev/zero",
        PROBE_SET,
        replace_with_link("/dev/zero"),
        ANALYZE_RSM,
        f"FAILED rsm epoch 2: {{path}}: {NOT_REGULAR}",
        1,
    ),
    # the dataset cache in $PROBE_CACHE: one warning, rebuilt, the true data returned
    Case(
        "cache labels 1000 (resealed)",
        None,
        None,
        load_folder_twice(poison_cache(lambda t: t["train_y"].__setitem__(0, 1000))),
        "warning: {cache}: train_y holds labels outside 0..9; ignoring it and rebuilding the cache",
        0,
    ),
    Case(
        "cache relabelled (resealed)",
        None,
        None,
        load_folder_twice(
            poison_cache(lambda t: t.__setitem__("train_y", (t["train_y"] + 1) % 10))
        ),
        "warning: {cache}: was not written by this user's probe, or was changed and resealed "
        "since (its digest is not the one probe recorded in $PROBE_STATE); ignoring it and "
        "rebuilding the cache",
        0,
    ),
    Case(
        "cache 8x8 images (resealed)",
        None,
        None,
        load_folder_twice(
            poison_cache(
                lambda t: t.__setitem__("train_x", t["train_x"][:, :, :8, :8].contiguous())
            )
        ),
        "warning: {cache}: train_x must be uint8 [N, 3, 32, 32], got torch.uint8 [20, 3, 8, 8]; "
        "ignoring it and rebuilding the cache",
        0,
    ),
    Case(
        "cache relabelled (checksum)",
        None,
        None,
        load_folder_twice(
            poison_cache(
                lambda t: t["test_y"].__setitem__(0, (int(t["test_y"][0]) + 1) % 10), reseal=False
            )
        ),
        "warning: {cache}: checksum mismatch (the cache was changed after probe wrote it); "
        "ignoring it and rebuilding the cache",
        0,
    ),
    Case(
        "cache link to /dev/zero",
        None,
        None,
        load_folder_twice(link_cache),
        f"warning: {{cache}}: {NOT_REGULAR}; ignoring it and rebuilding the cache",
        0,
    ),
    Case(
        "cache of three classes",
        None,
        None,
        load_folder_twice(cache_classes),
        "warning: {cache}: holds classes 'class0,class1,class2', expected "
        "'class0,class1,class2,class3,class4,class5,class6,class7,class8,class9'; ignoring it and "
        "rebuilding the cache",
        0,
    ),
    # options of probe train: refused before anything is read or allocated
    Case(
        "--seed 2**64-1",
        None,
        None,
        [*TRAIN, "--seed", "18446744073709551615"],
        "error: --seed: must be <= 9223372036854775807, got 18446744073709551615",
        2,
    ),
    Case(
        "--seed -1", None, None, [*TRAIN, "--seed", "-1"], "error: --seed: must be >= 0, got -1", 2
    ),
    Case(
        "--lr 1e308",
        None,
        None,
        [*TRAIN, "--lr", "1e308"],
        "error: --lr: must be <= 10.0, got 1e+308",
        2,
    ),
    Case(
        "--lr nan",
        None,
        None,
        [*TRAIN, "--lr", "nan"],
        "error: --lr: must be a finite number, got nan",
        2,
    ),
    Case(
        "--momentum inf",
        None,
        None,
        [*TRAIN, "--momentum", "inf"],
        "error: --momentum: must be a finite number, got inf",
        2,
    ),
    Case(
        "--weight-decay 1e308",
        None,
        None,
        [*TRAIN, "--weight-decay", "1e308"],
        "error: --weight-decay: must be <= 10.0, got 1e+308",
        2,
    ),
    Case(
        "--gamma -inf",
        None,
        None,
        [*TRAIN, "--gamma", "-inf"],
        "error: --gamma: must be a finite number, got -inf",
        2,
    ),
    Case(
        "--epochs superscript two",
        None,
        None,
        [*TRAIN, "--epochs", "\u00b2"],
        "error: Invalid value for '--epochs': '\u00b2' is not a valid integer. "
        "(see `cli train --help`)",
        2,
    ),
    Case(
        "--epochs 10**9",
        None,
        None,
        [*TRAIN, "--epochs", "1000000000"],
        "error: --epochs: must be <= 100000, got 1000000000",
        2,
    ),
    Case(
        "--batch-size 10**9",
        None,
        None,
        [*TRAIN, "--batch-size", "1000000000"],
        "error: --batch-size: must be <= 65536, got 1000000000",
        2,
    ),
    Case(
        "--base-width 1000000",
        None,
        None,
        [*TRAIN, "--base-width", "1000000"],
        "error: --base-width: must be <= 65536, got 1000000",
        2,
    ),
    Case(
        "--base-width 60000 (parameters)",
        None,
        None,
        [*TRAIN, "--base-width", "60000"],
        "error: --base-width: a depth-4 model of base width 60000 has 32,680,956,266 parameters, "
        "more than the 2,147,483,648 probe allows; use a smaller --base-width",
        2,
    ),
    Case(
        "--base-width 8192 (memory)",
        None,
        None,
        [*TRAIN, "--base-width", "8192", "--batch-size", "4096"],
        "error: --base-width: a depth-4 model of base width 8192 needs about 790 GiB to "
        "train at batch size 4096, more than the 64 GiB probe allows; use a smaller "
        "--base-width or batch size",
        2,
    ),
    Case(
        "--target-params 10**12",
        None,
        None,
        [*TRAIN, "--target-params", "1000000000000"],
        "error: --target-params: must be <= 2147483648, got 1000000000000",
        2,
    ),
    Case(
        "--config nested 10000 deep",
        None,
        None,
        lambda env: (
            env.tmp.joinpath("c.toml").write_text("a = " + DEEP_JSON),
            run_command(env, [*TRAIN, "--config", "{tmp}/c.toml"]),
        )[1],
        "error: --config: {tmp}/c.toml: is nested more than 64 levels deep",
        2,
    ),
    Case(
        "--config 5000-digit integer",
        None,
        None,
        lambda env: (
            env.tmp.joinpath("c.toml").write_text("epochs = " + BIG_INT),
            run_command(env, [*TRAIN, "--config", "{tmp}/c.toml"]),
        )[1],
        "error: --config: {tmp}/c.toml: holds an integer of more than 40 digits",
        2,
    ),
    Case(
        "--config FIFO",
        None,
        None,
        lambda env: (
            os.mkfifo(env.tmp / "c.toml"),
            run_command(env, [*TRAIN, "--config", "{tmp}/c.toml"]),
        )[1],
        "error: --config: {tmp}/c.toml: is a FIFO (named pipe), not a regular file",
        2,
    ),
    Case(
        "--config seed 2**64-1",
        None,
        None,
        lambda env: (
            env.tmp.joinpath("c.toml").write_text("seed = 18446744073709551615"),
            run_command(env, [*TRAIN, "--config", "{tmp}/c.toml"]),
        )[1],
        "error: {tmp}/c.toml: seed: must be <= 9223372036854775807, got 18446744073709551615",
        2,
    ),
    # analyze options and plugin parameters
    Case(
        "analyze --epochs superscript two",
        None,
        None,
        [*ANALYZE_CURVES, "-e", "\u00b2"],
        "error: --epochs: cannot parse '\u00b2'; use all, last, 0,5,last, 2-6 or ::5",
        2,
    ),
    Case(
        "landscape resolution in fullwidth digits",
        None,
        None,
        ["analyze", "{run}", "-p", "landscape", "--param", "resolution=\uff11\uff11"],
        "error: --param resolution: landscape: expected int, got '\uff11\uff11'",
        2,
    ),
    Case(
        "landscape span in Arabic-Indic digits",
        None,
        None,
        ["analyze", "{run}", "-p", "landscape", "--param", "span=\u0661.\u0665"],
        "error: --param span: landscape: expected float, got '\u0661.\u0665'",
        2,
    ),
    Case(
        "landscape resolution 1_1",
        None,
        None,
        ["analyze", "{run}", "-p", "landscape", "--param", "resolution=1_1"],
        "error: --param resolution: landscape: expected int, got '1_1'",
        2,
    ),
    Case(
        "landscape resolution 100000",
        None,
        None,
        ["analyze", "{run}", "-p", "landscape", "--param", "resolution=100000"],
        "error: --param resolution: landscape: must be <= 201, got 100000",
        2,
    ),
    Case(
        "hessian top_k 1000000",
        None,
        None,
        ["analyze", "{run}", "-p", "hessian", "--param", "top_k=1000000"],
        "error: --param top_k: hessian: must be <= 1000, got 1000000",
        2,
    ),
    Case(
        "hessian max_iter 10**9",
        None,
        None,
        ["analyze", "{run}", "-p", "hessian", "--param", "max_iter=1000000000"],
        "error: --param max_iter: hessian: must be <= 10000, got 1000000000",
        2,
    ),
    Case(
        "sharpness samples 10**9",
        None,
        None,
        ["analyze", "{run}", "-p", "sharpness", "--param", "samples=1000000000"],
        "error: --param samples: sharpness: must be <= 10000, got 1000000000",
        2,
    ),
    Case(
        "gradcheck n_images 10**9",
        None,
        None,
        ["analyze", "{run}", "-p", "gradcheck", "--param", "n_images=1000000000"],
        "error: --param n_images: gradcheck: must be <= 4096, got 1000000000",
        2,
    ),
    Case(
        "hessian top_k above the parameter count",
        None,
        None,
        hessian_cost(600, 500),
        "error: --param top_k: hessian: top_k=600 + smallest=1 eigenvalues asked of a "
        "model with 500 parameters",
        2,
    ),
    Case(
        "hessian Lanczos basis beyond memory",
        None,
        None,
        hessian_cost(3, 20_000_000, max_iter=10_000),
        "error: --param max_iter: hessian: a 10,000-step Lanczos basis of 20,000,000 parameters "
        "needs 1,490.1 GiB, more than 8 GiB",
        2,
    ),
]


def registry_with_builtins():
    """The built-in plugins plus the test analyses, for the --param cases."""
    import probe_plugins.gradcheck
    import probe_plugins.hessian
    import probe_plugins.landscape
    import probe_plugins.rsm
    import probe_plugins.sharpness
    from probe.contract.registry import PluginInfo

    reg = install_test_plugins()
    for mod in (
        probe_plugins.rsm,
        probe_plugins.landscape,
        probe_plugins.hessian,
        probe_plugins.sharpness,
        probe_plugins.gradcheck,
    ):
        reg.register(mod, PluginInfo(mod.__name__.rsplit(".", 1)[1], mod.__name__))
    return reg


def test_the_table_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 80
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_line(
    case: Case, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path / "run", tmp_path / "outside", tmp_path / "work", tmp_path / "cache")
    shutil.copytree(template, env.run)
    make_outside(env.outside, template)
    env.tmp.mkdir()
    monkeypatch.setenv("PROBE_CACHE", str(env.cache))
    registry_with_builtins()
    path = env.run / case.file if case.file else None
    if case.setup is not None:
        case.setup(env, path)
    before = (
        tree_digest(env.outside),
        sorted(p.relative_to(env.outside) for p in env.outside.rglob("*")),
    )
    code, output = run_command(env, case.command)
    expected = case.message.format(
        run=env.run, path=path, outside=env.outside, tmp=env.tmp, cache="{cache}"
    )
    assert "Traceback" not in output, output
    flagged = [
        line for line in output.splitlines() if line.startswith(("error:", "FAILED", "warning:"))
    ]
    assert flagged == [expected], output
    assert code == case.code, output
    assert (
        tree_digest(env.outside),
        sorted(p.relative_to(env.outside) for p in env.outside.rglob("*")),
    ) == before
    assert (env.outside / "nested" / "thesis.tex").is_file() and (
        env.outside / "secret.txt"
    ).is_file()


@pytest.mark.parametrize("depth, width, dropout", [(2, 3, 0.0), (4, 32, 0.0), (8, 7, 0.3)])
def test_declared_shapes_are_checked_against_the_model_itself(
    depth: int, width: int, dropout: float
) -> None:
    """The arithmetic walk that bounds a dump's shapes agrees with a real
    (meta-device) forward pass."""
    from probe.training.model import simplecnn_spec

    spec = simplecnn_spec(depth=depth, base_width=width, dropout=dropout)
    assert activations.layer_shapes(spec) == activations._layer_shapes_by_forward(
        spec.build().to("meta"), spec
    )
