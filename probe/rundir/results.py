"""Where analysis results live, how they are keyed, and how they are read back.

Layout (see docs/run-directory.md):
  RUN/analyses/<analysis>/<variant>/epoch_NNNN/   one per-epoch result
  RUN/analyses/<analysis>/<variant>/run/          one result over the selected epochs
Each result directory holds the analysis's files and `manifest.json` (its index
entry: parameters, versions, inputs with their fingerprints, cache key, scalars).
The directory is built under a temporary name and renamed into place with the
manifest already inside, so a result either exists whole or not at all.
`<variant>` is `default` for default parameters, else `p-<hash>` of the parameters.

The cache key covers exactly what the job read. The Context records every input
as the job opens it (a checkpoint, a dump, a stored batch, config.json, metrics
rows, the list of complete epochs), under an *input name* from a small grammar
(`INPUT_NAME`), with a fingerprint that ignores what cannot change a result: files
by content hash, config.json without where and for how long training ran, metrics
by the rows read. A cache check reads the manifest, re-fingerprints exactly the
inputs it lists and compares keys; no absolute path or mtime is part of a key, so
renaming or moving a run, or extending its training, keeps earlier results.

A failure is recorded as `<key>.failed.json` beside where the result would be,
so reports can list it with the command that retries it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from probe.errors import ProbeError
from probe.io import atomic, paths, safeio, userstate
from probe.io.jsonsafe import dumps, jsonable  # noqa: F401 (results.jsonable: kept for its callers)
from probe.rundir.run import ANALYSES, CONFIG, METRICS, TRAIN_DEFAULTS, Run

RESULT_FORMAT = "probe-result/1"
MANIFEST = "manifest.json"
KEY_FORMAT = 2  # bumped when what a key covers changes: older results are then recomputed once

# Input names, as recorded by the Context and listed in a manifest's "inputs".
_FILE_INPUT = (
    r"checkpoints/epoch_\d{4,9}\.safetensors"
    r"|activations/epoch_\d{4,9}\.h5"
    r"|predictions/epoch_\d{4,9}\.safetensors"
    r"|data/(?:probe_set|analysis_batch|examples)\.safetensors"
)
FILE_INPUT = re.compile(rf"^(?:{_FILE_INPUT})$")
# A result's own files (analyses/<analysis>/<variant>/<epoch_NNNN|run>/...), memoised too.
_RESULT_FILE = re.compile(rf"^{ANALYSES}/[^/]+/[^/]+/[^/]+/.+$")
INPUT_NAME = re.compile(
    rf"^(?:{_FILE_INPUT}|config\.json"
    r"|metrics\.jsonl(?:#\d{1,9}(?:,\d{1,9}){0,99999})?"
    r"|epochs(?:#upto=\d{1,9})?)$"
)
MAX_INPUTS = 100_000  # a manifest listing more is not trusted (read as "not cached")
MAX_RESULT_FILES = 10_000  # the same for the files a manifest lists

# config.json entries that cannot change a stored epoch's result: where training ran, where its
# data lay, how long it was planned to run (extending a run rewrites it), and what derives from
# those.
CONFIG_UNKEYED = frozenset({"device", "device_name", "versions", "config_hash", "data_source"})
TRAIN_UNKEYED = frozenset({"epochs", "device", "data", "example_records"})

# Before 2026-12-07 the file-hash memo lived in RUN/analyses/ under this name, where anyone who
# could write into the run could forge it; it is now kept in the user's state folder
# (probe.io.userstate) and an old one in a run is never read.
FINGERPRINT_CACHE = ".fingerprints.json"
_FP_CACHE_MAX_BYTES = 16 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a regular file; a symlink, FIFO or device is one RunFileError, never hashed."""
    return safeio.sha256_file(path)


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(
        dumps(obj, "str", sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def variant_name(params: dict[str, Any], defaults: dict[str, Any]) -> str:
    if dumps(params, "str", sort_keys=True) == dumps(defaults, "str", sort_keys=True):
        return "default"
    return "p-" + hashlib.sha256(dumps(params, "str", sort_keys=True).encode()).hexdigest()[:10]


def keyed_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as analyses see it (`ctx.config()`) and as keys cover it: a copy without
    the entries that cannot change a stored epoch's result (CONFIG_UNKEYED, TRAIN_UNKEYED)."""
    out = {k: v for k, v in config.items() if k not in CONFIG_UNKEYED}
    if isinstance(out.get("train"), dict):
        # keys a newer probe added are filled with their defaults, so resuming an older run (which
        # rewrites `train` with every current key) changes nothing unless a value really changed
        train = {**TRAIN_DEFAULTS, **out["train"]}
        out["train"] = {k: v for k, v in train.items() if k not in TRAIN_UNKEYED}
    return json.loads(dumps(out, "str"))  # a deep copy: a plugin changing it changes nothing else


def metrics_rows(rows: list[dict[str, Any]], epochs: list[int] | None) -> list[dict[str, Any]]:
    """The metrics rows of `epochs` (all rows for None), as `ctx.metrics(epochs)` returns them."""
    if epochs is None:
        return rows
    wanted = set(epochs)
    return [r for r in rows if r.get("epoch") in wanted]


def metrics_input(epochs: list[int] | None) -> str:
    return (
        METRICS if epochs is None else f"{METRICS}#" + ",".join(str(e) for e in sorted(set(epochs)))
    )


def epochs_input(upto: int | None) -> str:
    return "epochs" if upto is None else f"epochs#upto={upto}"


class Fingerprints:
    """Fingerprints of one run's inputs by input name, for the keys of one command.

    Files are hashed by content. A small per-run memo remembers each file's hash with its
    (size, mtime_ns, ctime_ns, inode), so an unchanged file is not read again; it is a pure
    optimisation: an entry is used only while all four still match (a copied, moved or
    rewritten file is hashed again), and a damaged or oversized memo is ignored. The memo
    lives in the user's state folder (`probe.io.userstate`, keyed by the run's real path),
    never in the run: a digest written into the run by someone else would be the file's
    own claim about itself.
    """

    def __init__(self, run: Run, persistent: bool = True):
        self.run = run
        self.persistent = persistent
        self._stat: dict[str, tuple[tuple[int, int, int, int], str]] = (
            self._load() if persistent else {}
        )
        self._dirty = False
        self._memo: dict[str, str] = {}
        self._sources: dict[str, str] = {}

    def source(self, analysis: Any) -> str:
        """`source_hash(analysis)`, once per analysis and command."""
        if analysis.name not in self._sources:
            self._sources[analysis.name] = source_hash(analysis)
        return self._sources[analysis.name]

    def __call__(self, name: str) -> str:
        if not INPUT_NAME.match(name):
            raise ValueError(f"not an input name: {name!r}")
        try:
            if FILE_INPUT.match(name):
                return self._file(name)
            if name == CONFIG:  # Run.config is read once per Run: so is its fingerprint
                if CONFIG not in self._memo:
                    self._memo[CONFIG] = canonical_hash(keyed_config(self.run.config))
                return self._memo[CONFIG]
            if name.startswith(METRICS):
                try:
                    memo_key = f"{name}@{_stat_key(self.run.path / METRICS)}"
                except FileNotFoundError:
                    memo_key = f"{name}@missing"
                if memo_key not in self._memo:
                    _, _, sel = name.partition("#")
                    epochs = [int(e) for e in sel.split(",")] if sel else None
                    self._memo[memo_key] = canonical_hash(metrics_rows(self.run.metrics(), epochs))
                return self._memo[memo_key]
            _, _, sel = name.partition("#upto=")
            have = self.run.epochs()
            return canonical_hash([e for e in have if e <= int(sel)] if sel else have)
        except Exception as exc:  # unreadable: never equal to what a computed result recorded
            return f"unreadable ({type(exc).__name__})"

    def file_digest(self, name: str) -> str:
        """SHA-256 of the run's file `name` (relative, no `..`; not through a link out of the
        run), through the same stat-keyed memo as the inputs: a result's own files are
        checked on every cache hit, and re-hashing unchanged ones would cost each hit a read
        of every figure and array."""
        if not safe_relative(name):
            raise ValueError(f"not a file of the run: {name!r}")
        return self._file(name)

    def _file(self, name: str) -> str:
        path = self.run.path / name
        try:
            before = _stat_key(path)
        except FileNotFoundError:
            return "missing"
        hit = self._stat.get(name)
        if hit is not None and hit[0] == before:
            return hit[1]
        digest = safeio.sha256_file(path, within=self.run.path)  # not through a link out of the run
        if _stat_key(path) == before:  # not changed while it was read
            self._stat[name] = (before, digest)
            self._dirty = True
        return digest

    def _cache_path(self) -> Path:
        return userstate.state_file("fingerprints", str(self.run.path.resolve()))

    def _load(self) -> dict[str, tuple[tuple[int, int, int, int], str]]:
        out: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        p = self._cache_path()
        # a regular file inside the run, bounded: anything else is ignored (the cache is a speed-up)
        try:
            d = safeio.read_json(p, max_bytes=_FP_CACHE_MAX_BYTES)
        except ProbeError:
            return out
        files = (
            d.get("files")
            if isinstance(d, dict) and d.get("format") == "probe-fingerprints/1"
            else None
        )
        if not isinstance(files, dict):
            return out
        for name, v in list(files.items())[:MAX_INPUTS]:
            if (
                isinstance(name, str)
                and (FILE_INPUT.match(name) or _RESULT_FILE.match(name))
                and safe_relative(name)
                and isinstance(v, list)
                and len(v) == 5
                and all(type(x) is int for x in v[:4])
                and isinstance(v[4], str)
                and re.fullmatch(r"[0-9a-f]{64}", v[4])
            ):
                out[name] = ((v[0], v[1], v[2], v[3]), v[4])
        return out

    def save(self) -> None:
        """Write the stat cache back (if it learnt something and analyses/ exists); never fails."""
        if not (self.persistent and self._dirty and (self.run.path / ANALYSES).is_dir()):
            return
        try:
            userstate.ensure_parent(self._cache_path())
            atomic.write_json(
                self._cache_path(),
                {
                    "format": "probe-fingerprints/1",
                    "files": {
                        k: [*stat, digest] for k, (stat, digest) in sorted(self._stat.items())
                    },
                },
            )
            self._dirty = False
        except Exception:
            pass


def _stat_key(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def job_identity(
    analysis: Any,
    params: dict[str, Any],
    epoch: int | None,
    epochs: list[int],
    source: str | None = None,
) -> dict[str, Any]:
    """What a key covers besides the inputs: the analysis, its versions, parameters and epochs
    (and, in development mode, a hash of the plugin's source)."""
    ident: dict[str, Any] = {
        "key_format": KEY_FORMAT,
        "format": RESULT_FORMAT,
        "analysis": analysis.name,
        "version": str(analysis.version),
        "provider": analysis.provider,
        "provider_version": str(analysis.provider_version),
        "params": params,
        "scope": analysis.scope,
        "epoch": epoch,
        "epochs": list(epochs),
    }
    if source:
        ident["source"] = source
    return ident


def result_key(identity: dict[str, Any], inputs: dict[str, str]) -> str:
    """The cache key: the job's identity and the fingerprint of every input it read."""
    return canonical_hash({"identity": identity, "inputs": inputs})


def listed_inputs(manifest: dict[str, Any]) -> dict[str, str] | None:
    """A manifest's inputs if well-formed (names from the grammar, bounded), else None."""
    inputs = manifest.get("inputs")
    if not isinstance(inputs, dict) or len(inputs) > MAX_INPUTS:
        return None
    if not all(
        isinstance(k, str) and isinstance(v, str) and INPUT_NAME.match(k) for k, v in inputs.items()
    ):
        return None
    return inputs


def is_cached(
    manifest: dict[str, Any] | None, identity: dict[str, Any], fingerprints: Fingerprints
) -> bool:
    """Whether a finished result is still valid: re-fingerprint exactly the inputs it lists."""
    if manifest is None:
        return False
    inputs = listed_inputs(manifest)
    if inputs is None:
        return False
    current = {}
    for name, recorded in inputs.items():
        current[name] = fingerprints(name)
        if current[name] != recorded:  # stop at the first change: nothing more to hash
            return False
    return result_key(identity, current) == manifest.get("key")


def source_hash(analysis: Any) -> str:
    """SHA-256 of the source of the package (or module) that defines the analysis's run function.

    For development mode (PROBE_DEV=1): an edit to any file of the plugin changes the key.
    """
    fn = analysis.run
    fn = getattr(fn, "func", fn)  # functools.partial
    modname = getattr(fn, "__module__", None) or type(fn).__module__
    top = sys.modules.get(modname.split(".")[0]) if modname else None
    files: list[Path] = []
    if top is not None and getattr(top, "__path__", None):
        for root in top.__path__:
            files += sorted(Path(root).rglob("*.py"))[:5000]
    else:
        mod = sys.modules.get(modname or "")
        if mod is not None and getattr(mod, "__file__", None):
            files.append(Path(mod.__file__))
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f"{f.name}\0".encode())
            h.update(f.read_bytes())
        except OSError:
            h.update(b"unreadable\0")
    return h.hexdigest()


def dev_mode() -> bool:
    """PROBE_DEV=1 (or true/yes): keys also cover the plugin's source, so edits recompute."""
    return os.environ.get("PROBE_DEV", "").strip().lower() in ("1", "true", "yes", "on")


def result_dir(run: Run, analysis: str, variant: str, epoch: int | None) -> Path:
    return (
        run.path
        / ANALYSES
        / analysis
        / variant
        / (f"epoch_{epoch:04d}" if epoch is not None else "run")
    )


def read_manifest(path: Path, within: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a result directory, or None if absent, unreadable or (with `within`)
    outside it."""
    try:
        m = safeio.read_json(path / MANIFEST, max_bytes=safeio.MAX_CONFIG_BYTES, within=within)
        return m if isinstance(m, dict) and m.get("format") == RESULT_FORMAT else None
    except ProbeError:
        return None


def seal_of(manifest: dict[str, Any]) -> str:
    """The digest of a manifest's content without its seal, given the manifest as its JSON
    file holds it (parsed: NaN already null, tuples lists; the writer seals
    `json.loads(dumps(manifest))`, a cache check the manifest it read).

    A manifest lists each of its result's files with its SHA-256 (`file_sha256`) and is
    sealed by this digest: a scalar edited in place, a file deleted or changed no longer
    matches, and the result is computed again instead of served (or shown) as cached."""
    return canonical_hash({k: v for k, v in manifest.items() if k != "seal"})


def seal_holds(manifest: dict[str, Any]) -> bool:
    """The manifest's own content is as it was sealed (reads no other file)."""
    return isinstance(manifest.get("seal"), str) and manifest["seal"] == seal_of(manifest)


def files_present(target: Path, manifest: dict[str, Any]) -> bool:
    """Every file the manifest lists is a regular file in `target` (stat only)."""
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) > MAX_RESULT_FILES:
        return False
    return all(
        isinstance(f, str) and safe_relative(f) and paths.is_regular(target / f) for f in files
    )


def result_intact(target: Path, manifest: dict[str, Any], fingerprints: Fingerprints) -> bool:
    """The seal holds and every listed file hashes to its recorded digest (through the
    fingerprints' stat-keyed memo: an unchanged file is not read again)."""
    digests = manifest.get("file_sha256")
    if not (seal_holds(manifest) and files_present(target, manifest) and isinstance(digests, dict)):
        return False
    base = target.relative_to(fingerprints.run.path).as_posix()
    try:
        return all(
            digests.get(f) == fingerprints.file_digest(f"{base}/{f}") for f in manifest["files"]
        )
    except ProbeError:  # a link or a file of another kind where a result file was
        return False


def safe_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def iter_results(run: Run) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every finished result of a run whose manifest's seal holds and whose files are there,
    with its manifest (a broken one is left to `probe analyze`, which computes it again)."""
    root = run.path / ANALYSES
    if not root.is_dir():
        return
    for manifest in sorted(root.glob(f"*/*/*/{MANIFEST}")):
        m = read_manifest(manifest.parent, run.path)
        if m is not None and seal_holds(m) and files_present(manifest.parent, m):
            yield manifest.parent, m


def iter_failures(run: Run) -> Iterator[dict[str, Any]]:
    root = run.path / ANALYSES
    if not root.is_dir():
        return
    for p in sorted(root.glob("*/*/*.failed.json")):
        try:
            yield safeio.read_json(p, max_bytes=safeio.MAX_CONFIG_BYTES, within=run.path)
        except ProbeError:
            continue


def scalars(run_dir: str | Path) -> dict[str, Any]:
    """Scalars of the newest result of each analysis (default variant preferred).

    Keys are `<analysis>.<scalar>`; per-epoch analyses report their last epoch's
    value, and `<analysis>.<scalar>@<epoch>` for every epoch analysed. Per-layer
    scalars (`ctx.out.layer_scalars`) are `<analysis>.<metric>.<layer>` (and `...@<epoch>`).
    """
    run = Run(run_dir)
    out: dict[str, Any] = {}
    results = sorted(
        iter_results(run), key=lambda r: (r[1]["variant"] != "default", -(r[1].get("epoch") or -1))
    )
    for _, m in reversed(results):  # later entries overwrite: default variant, last epoch win
        flat = dict(m.get("scalars") or {})
        for table in (m.get("layer_scalars") or {}).values():
            for layer, metrics in (
                ((table or {}).get("values") or {}).items() if isinstance(table, dict) else ()
            ):
                for metric, v in (metrics or {}).items() if isinstance(metrics, dict) else ():
                    flat[f"{metric}.{layer}"] = v
        for k, v in flat.items():
            if m.get("epoch") is not None:
                out[f"{m['analysis']}.{k}@{m['epoch']}"] = v
            out[f"{m['analysis']}.{k}"] = v
    return out
