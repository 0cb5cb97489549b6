"""`probe import`: someone else's per-epoch state dicts become a run directory probe can analyse.

A folder of state dicts (one file per epoch) plus a model family, its parameters and
a data set: each file is loaded into the family's model and recorded through
`probe.Recorder`, so the probe set, the analysis batch, the activation dumps and
the validation metrics are computed on import, exactly as `probe train` computes them.

Nothing is unpickled: `.safetensors` files are read by safetensors, `.pt`/`.pth`
files only through `torch.load(weights_only=True)`, which rebuilds tensors and
plain containers and refuses any other object.

File names: the epoch is the last run of digits in the file name without its
extension (`epoch_3.pt`, `ckpt-0003.safetensors`, `model_e10.pth`; `resnet20_7.pt`
is epoch 7). Every file is checked before anything is written: a file of another
kind, a name without digits, two files of one epoch, a gap between epochs, a file
that does not load or whose tensors do not fit the family: each is one line naming
the file or the epoch. The smallest epoch is the first one recorded; a folder
without epoch 0 has no initialisation, and its first file's epoch is its first epoch.

The recorder builds the run's plan (probe.rundir.plan) and writes through the run
writer (probe.rundir.writer) that `probe train` writes through too.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from probe.errors import RunFileError, UsageError
from probe.io import safeio
from probe.training.model import parse_pairs
from probe.training.normalization import NormalizationAssumed, assumption_line, parse_channels
from probe.training.statekeys import apply_renames, parse_renames, suggest_renames

SUFFIXES = (".safetensors", ".pt", ".pth")
_DIGITS = re.compile(r"[0-9]+")
_LETTER = re.compile(r"[A-Za-z]")
# The lines of torch's weights-only refusal that are advice, not the reason.
_TORCH_ADVICE = re.compile(
    r"weights_only|Weights only load failed|Check the documentation|Please file an issue"
    r"|trusted source",
)
_ADVICE_SENTENCE = re.compile(r"\.?\s+(?:Please|Re-running|Do it only)\b")
_UNPICKLER_PREFIX = re.compile(r"^WeightsUnpickler error:\s*")
# .pt dicts that hold the state dict under a key
_WRAPPERS = (
    "state_dict",
    "model",
    "model_state_dict",
    "net",
)
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
MAX_FILES = 100_000
MAX_EPOCH = 10_000_000  # the most epochs a run may declare (probe.training.recorder)


def epoch_of(name: str) -> int | None:
    """The epoch a file name gives: its last run of digits, without the extension (None when it
    has none). The extension is the part after the last dot when it holds a letter (`.pt`,
    `.safetensors`, `.th`, `.ckpt`, `.h5`), so `model.th` has no epoch and `epoch_3.ckpt` is 3."""
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem and _LETTER.search(ext)):
        stem = name
    runs = _DIGITS.findall(stem)
    return int(runs[-1]) if runs else None  # a name is at most 255 bytes: int() is cheap


def list_epochs(folder: Path) -> dict[int, Path]:
    """{epoch: file} for the checkpoint files in `folder`; anything else there, a gap or a
    duplicate is one error."""
    if not folder.is_dir():
        raise UsageError("FOLDER", f"{folder} is not a folder")
    found: dict[int, Path] = {}
    entries = sorted(folder.iterdir())
    if len(entries) > MAX_FILES:
        raise UsageError(
            "FOLDER",
            f"{folder} holds {len(entries):,} entries, more than the {MAX_FILES:,} probe imports",
        )
    for p in entries:
        if p.name.startswith("."):
            continue  # hidden files (.DS_Store, editors' swap files) are not checkpoints
        if p.is_symlink() or not p.is_file():
            what = "a link" if p.is_symlink() else "not a regular file"
            raise RunFileError(
                p,
                f"not a checkpoint file ({what}): a folder of checkpoints may hold only regular "
                "torch or safetensors files (move it out)",
            )
        if not p.name.lower().endswith(SUFFIXES) and file_kind(p) is None:
            raise RunFileError(
                p,
                "not a checkpoint file: neither a torch file (zip or legacy) nor a safetensors "
                "file (move it out)",
            )
        epoch = epoch_of(p.name)
        if epoch is None:
            raise RunFileError(
                p,
                "no epoch in its name: the epoch is the last run of digits (epoch_3.pt, "
                "ckpt-0003.safetensors)",
            )
        if epoch > MAX_EPOCH:
            raise RunFileError(
                p, f"epoch {epoch:,} is over the {MAX_EPOCH:,} epochs a run may hold (rename it)"
            )
        if epoch in found:
            raise RunFileError(
                p, f"epoch {epoch} again (also {found[epoch].name}); keep one file per epoch"
            )
        found[epoch] = p
    if not found:
        raise UsageError("FOLDER", f"{folder} holds no checkpoint files")
    epochs = sorted(found)
    # The first gap, found arithmetically: two files named epoch 0 and epoch 10,000,000
    # must not build a set of ten million numbers.
    gaps = [(a, b) for a, b in zip(epochs, epochs[1:], strict=False) if b != a + 1]
    if gaps:
        first_gap, n_missing = gaps[0][0] + 1, sum(b - a - 1 for a, b in gaps)
        more = f" (and {n_missing - 1:,} more)" if n_missing > 1 else ""
        raise UsageError(
            "FOLDER",
            f"{folder}: epoch {first_gap}{more} is missing between {found[epochs[0]].name} "
            f"and {found[epochs[-1]].name}; epochs must run without gaps",
        )
    return {e: found[e] for e in epochs}


def sniff(fh: Any) -> str | None:
    """ "torch" (a zip file, or a pickle: torch's legacy format, which the weights-only
    unpickler judges), "safetensors" (an 8-byte header length, then its JSON), or None."""
    head = fh.read(9)
    fh.seek(0)
    if head[:2] == b"PK" and zipfile.is_zipfile(fh):
        return "torch"
    # pickle protocol 2+: torch.save(..., _use_new_zipfile_serialization=False)
    if head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def file_kind(path: Path) -> str | None:
    """The kind of the file `path`: by its name for .safetensors/.pt/.pth, else by its first
    bytes (sniff); None: neither kind."""
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".pt", ".pth")):
        return "torch"
    try:
        with safeio.open_regular(path) as fh:
            return sniff(fh)
    except (OSError, RunFileError):
        return None


def refusal(path: Path, exc: BaseException, kind: str | None = None) -> str:
    """Why `path` was not loaded, in probe's words.

    torch's message for a file that weights-only loading refuses leads with advice to load
    it unsafely (which runs whatever code the file names) and puts the reason last; probe
    keeps the reason and drops that advice."""
    if (kind or file_kind(path)) == "safetensors":
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        return f"not a loadable safetensors file ({text})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = " ".join(
        _UNPICKLER_PREFIX.sub("", line) for line in lines if not _TORCH_ADVICE.search(line)
    ).strip()
    # "... was not an allowed global by default. Please use add_safe_globals ...": the reason
    reason = _ADVICE_SENTENCE.split(reason)[0][:300]
    if lines and lines[0].startswith("Weights only load failed"):
        why = f" ({reason})" if reason else ""
        return (
            f"refused: it holds something other than tensors and plain containers{why}; probe "
            "loads torch files weights-only and never unpickles the objects a file names: "
            "save the state dict itself (torch.save(model.state_dict(), ...)) or as safetensors"
        )
    return f"not a loadable weights-only torch file ({reason or type(exc).__name__})"


def check_inflated_size(path: Path, zip_name: str, max_bytes: int) -> None:
    """Refuse a torch zip file (`path`, opened as `zip_name`) whose records declare more than
    `max_bytes` uncompressed.

    torch inflates compressed records when it loads, even weights-only, so a 2.9 MB file can
    declare 3 GB; the zip's central directory says so before anything is inflated."""
    try:
        with zipfile.ZipFile(zip_name) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports a damaged file itself
    if total > max_bytes:
        raise RunFileError(
            path,
            f"declares {total:,} bytes uncompressed, more than the {max_bytes:,} its model's "
            "state can take",
        )


def _safetensors_shapes(p: str) -> dict[str, Any]:
    """A safetensors file's tensors as meta tensors of their dtypes and shapes: its header
    only, nothing read or allocated."""
    import torch
    from safetensors import safe_open

    dtypes = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    out = {}
    with safe_open(p, framework="pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            dtype = dtypes.get(sl.get_dtype())
            if dtype is None:
                raise ValueError(f"tensor {k[:80]!r} has dtype {sl.get_dtype()}")
            out[k] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
    return out


def load_state(path: Path, max_bytes: int | None = None, *, lazy: bool = False) -> dict[str, Any]:
    """The state dict in `path`: safetensors, or torch.load(weights_only=True) (never a full
    unpickle).

    A .pt dict holding the state under "state_dict"/"model" (with an epoch, an optimizer...) is
    unwrapped, and a "module."/"_orig_mod." prefix on every key is removed. `max_bytes` (what
    the model's state can take) bounds the file, and a .pt zip's declared uncompressed size,
    before anything is loaded. `lazy`: names, dtypes and shapes only (safetensors: meta
    tensors from the header; .pt zip files: storages memory-mapped, not read), to check a
    whole folder before loading any file.
    """
    import torch  # here, and safetensors: `probe --help` lists this command without torch

    kind = file_kind(path)
    if kind is None and path.is_file() and not path.is_symlink():
        raise RunFileError(path, "neither a torch file (zip or legacy) nor a safetensors file")
    try:
        with safeio.regular_path(path, max_bytes) as p:
            if kind == "safetensors":
                from safetensors.torch import load_file

                obj: Any = _safetensors_shapes(p) if lazy else load_file(p)
            else:
                is_zip = zipfile.is_zipfile(p)
                if is_zip and max_bytes is not None:
                    check_inflated_size(path, p, max_bytes)
                # its note on pickle protocols is not the user's concern
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    # lazy: storages mapped, not read (zip files; an old-format file is read)
                    obj = torch.load(p, map_location="cpu", weights_only=True, mmap=lazy and is_zip)
    except RunFileError:
        raise
    # damaged files, and objects weights_only refuses to rebuild (an UnpicklingError)
    except Exception as exc:
        raise RunFileError(path, refusal(path, exc, kind)) from None
    if isinstance(obj, Mapping) and any(k.startswith("model/") for k in obj if isinstance(k, str)):
        obj = {
            k[len("model/") :]: v for k, v in obj.items() if k.startswith("model/")
        }  # a probe checkpoint
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(str(k) for k in list(obj)[:5])
            raise RunFileError(
                path,
                f"holds no state dict (a dict of tensors, or one under 'state_dict' or 'model'); "
                f"its keys: {keys}",
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise RunFileError(
            path, f"holds {type(obj).__name__}, not a state dict (a dict of tensors)"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise RunFileError(path, f"entry {bad[0][:80]!r} is not a tensor")
    header_only = lazy and kind == "safetensors"  # meta by construction
    for k, v in obj.items():  # what load_state_dict would choke on, named here
        if v.layout != torch.strided or (v.is_meta and not header_only) or v.is_quantized:
            kind = "meta" if v.is_meta else str(v.layout).removeprefix("torch.")
            raise RunFileError(
                path, f"entry {k[:80]!r} is a {kind} tensor, not a dense one with its values"
            )
    state = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def check_outside(folder: Path, run_dir: Path) -> None:
    """Refuse a source folder inside the run it would write: writing the run (and replacing
    an old one with --force) removes files there before every input has been read."""
    src, dst = folder.resolve(), run_dir.resolve()
    if src == dst or dst in src.parents:
        raise UsageError(
            "FOLDER",
            f"{folder} lies inside --run-dir {run_dir}, which the import writes (--force "
            "replaces it): copy the checkpoints to a folder outside the run first",
        )


def import_checkpoints(
    folder: str | Path,
    run_dir: str | Path,
    model: Any,
    dataset: Any,
    *,
    model_params: Mapping[str, Any] | None = None,
    data: str | None = None,
    probe_set_size: int = 1000,
    analysis_batch_size: int = 1024,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    log: Any = None,
    mean: Any = None,
    std: Any = None,
    val_size: int | None = None,
    rename: tuple[str, ...] | list[str] = (),
    note: Any = None,
) -> Path:
    """Write a run directory for the state dicts in `folder` (the module docstring); returns it.

    `mean`/`std`: the normalisation the model was trained with (`--mean/--std`; without them
    the data set's statistics are assumed, and `note`, else a warning, says so in one line).
    `val_size`: validate on fewer images (as `probe train --val-size`). `rename`: `OLD=NEW`
    key-prefix maps applied to every file's keys before they are fitted to the family."""
    import torch  # here, and the recorder: `probe --help` lists this command without torch

    from probe.rundir import checkpoint
    from probe.training.recorder import Recorder, state_mismatch

    folder, run_dir = Path(folder), Path(run_dir)
    log = log or (lambda s: None)
    renames = parse_renames(rename)
    check_outside(folder, run_dir)
    files = list_epochs(folder)
    sources = [
        {"epoch": e, "file": p.name, "sha256": safeio.sha256_file(p)} for e, p in files.items()
    ]
    with warnings.catch_warnings(record=note is not None) as caught:
        if note is not None:
            warnings.simplefilter("always", NormalizationAssumed)
        rec = Recorder(
            run_dir,
            model,
            dataset,
            model_params=model_params,
            data=data,
            probe_set_size=probe_set_size,
            analysis_batch_size=analysis_batch_size,
            seed=seed,
            epochs=max(files),
            force=force,
            device=device,
            mean=mean,
            std=std,
            val_size=val_size,
            _source={"kind": "import", "folder": str(folder.resolve()), "files": sources},
        )
    for w in caught or []:
        if issubclass(w.category, NormalizationAssumed):
            spec = rec.spec
            note(assumption_line(spec.mean, spec.std, "--mean R,G,B --std R,G,B"))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    spec = rec.spec
    # what a file of this model's state (with an optimizer's, as training scripts save) can take
    bound = checkpoint.size_bound(spec) + (64 << 20)
    # Every file is checked (from its header, or memory-mapped) before the first one is loaded
    # in full or recorded: a bad last file of 3,000 costs no 2,999 loads, and writes nothing.
    for p in files.values():
        header = apply_renames(p, load_state(p, bound, lazy=True), renames)
        why = state_mismatch(spec, header, cast=True)
        if why:
            hint = suggest_renames(spec.skeleton().state_dict(), header)
            try_ = " ".join(f"--rename {o}={n}" for o, n in hint)
            raise RunFileError(
                p, f"does not fit {spec.describe()}: {why}" + (f": try {try_}" if hint else "")
            )
    skeleton = spec.skeleton().state_dict()
    with rec:
        for epoch, p in files.items():
            loaded = apply_renames(p, load_state(p, bound), renames)
            state = {k: v.to(skeleton[k].dtype) for k, v in loaded.items()}
            with torch.device("cpu"):
                net = spec.build()
            net.load_state_dict(state, strict=True)
            row = rec.record(epoch, net.to(rec.device))
            log(
                f"epoch {epoch} ({p.name}): val_loss {row['val_loss']:.4f}  "
                f"val_acc {row['val_acc']:.4f}"
            )
    return run_dir


@click.command(
    "import", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--run-dir", required=True, type=click.Path(file_okay=False), help="The run directory to write."
)
@click.option(
    "--model",
    "--family",
    "family",
    required=True,
    help="Model family of the state dicts (see `probe models`).",
)
@click.option(
    "--model-param",
    "model_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of the family (repeatable), e.g. --model-param depth=20.",
)
@click.option(
    "--dataset",
    default="cifar10",
    show_default=True,
    help="Data set the model was trained on (see `probe datasets`).",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="A local copy of the data set (as for probe train).",
)
@click.option(
    "--probe-set-size",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Class-stratified validation images whose activations are dumped per epoch.",
)
@click.option(
    "--analysis-batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Training images stored for loss-based analyses.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the probe set and analysis batch.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--mean",
    default=None,
    metavar="R,G,B",
    help="Per-channel mean the model's images were normalised with, on the [0, 1] scale "
    "(with --std) [default: the data set's statistics, said in one line].",
)
@click.option(
    "--std",
    default=None,
    metavar="R,G,B",
    help="Per-channel std the model's images were normalised with (with --mean).",
)
@click.option(
    "--val-size",
    type=click.IntRange(min=1),
    default=None,
    help="Validate on the probe set plus a seeded, class-stratified rest, N images in all "
    "(at least --probe-set-size) [default: all].",
)
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename a key prefix in every file before fitting it to the family (repeatable), "
    "e.g. --rename linear.=fc.",
)
@click.option("--force", is_flag=True, help="Replace an existing probe run in --run-dir.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines.")
def import_command(
    folder: str,
    run_dir: str,
    family: str,
    model_params: tuple[str, ...],
    dataset: str,
    data: str | None,
    probe_set_size: int,
    analysis_batch_size: int,
    seed: int,
    device: str,
    mean: str | None,
    std: str | None,
    val_size: int | None,
    renames: tuple[str, ...],
    force: bool,
    quiet: bool,
) -> None:
    """Turn a FOLDER of per-epoch state dicts into a run directory probe can analyse.

    \b
    probe import ckpts/ --run-dir runs/theirs --model resnet --model-param depth=20 --dataset cifar10
    probe analyze runs/theirs --all && probe report runs/theirs

    FOLDER holds one file per epoch: safetensors, or torch files of any extension
    (.pt, .pth, .th, .ckpt, .tar, .bin) read only with torch.load(weights_only=True)
    (nothing is unpickled). The epoch is the last run of digits in the file name
    without its extension: epoch_3.pt, ckpt-0003.safetensors and model_e10.th are
    epochs 3, 3 and 10. Epochs must run without gaps; epoch 0
    is the initialisation if there is one, else the first file's epoch comes first.
    A .pt dict holding the weights under "state_dict" or "model" is unwrapped, and a
    "module." prefix (DataParallel) is removed. The validation metrics, activation
    dumps, probe set and analysis batch are computed on import; there is no optimizer
    state, so `probe train --resume` cannot continue the run. Give the normalisation
    the model was trained with (--mean/--std): without it the data set's statistics
    are assumed, and a line says so.
    """  # noqa: E501 (the help's example command is printed as it is written)
    params = parse_pairs(model_params)
    if val_size is not None and val_size < probe_set_size:
        raise UsageError(
            "--val-size", f"must be >= --probe-set-size ({probe_set_size}), got {val_size}"
        )
    import_checkpoints(
        folder,
        run_dir,
        family,
        dataset,
        model_params=params,
        data=data,
        probe_set_size=probe_set_size,
        analysis_batch_size=analysis_batch_size,
        seed=seed,
        device=device,
        force=force,
        log=None if quiet else (lambda s: click.echo(s)),
        mean=parse_channels(mean, "--mean"),
        std=parse_channels(std, "--std"),
        val_size=val_size,
        rename=renames,
        note=lambda s: click.echo(s, err=True),
    )
    if not quiet:
        click.echo(f"run directory: {run_dir}")
