"""Where analysis results live, how they are keyed, and how they are read back.

Layout (see docs/run-directory.md):
  RUN/analyses/<analysis>/<variant>/epoch_NNNN/   one per-epoch result
  RUN/analyses/<analysis>/<variant>/run/          one result over the selected epochs
Each result directory holds the analysis's files and `manifest.json` (its index
entry: parameters, versions, input checksums, cache key, scalars). The directory
is built under a temporary name and renamed into place with the manifest already
inside, so a result either exists whole or not at all. `<variant>` is `default`
for default parameters, else `p-<hash>` of the parameters.

A failure is recorded as `<key>.failed.json` beside where the result would be,
so reports can list it with the command that retries it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import safeio
from .errors import ProbeError
from .rundir import ANALYSES, Run

RESULT_FORMAT = "probe-result/1"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """SHA-256 of a regular file; a symlink, FIFO or device is one RunFileError, never hashed."""
    return safeio.sha256_file(path)


def variant_name(params: dict[str, Any], defaults: dict[str, Any]) -> str:
    if params == defaults:
        return "default"
    return "p-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def result_key(analysis: Any, params: dict[str, Any], inputs: dict[str, str]) -> str:
    """The cache key: analysis, its version and provider version, parameters, input checksums."""
    blob = json.dumps({
        "format": RESULT_FORMAT, "analysis": analysis.name, "version": analysis.version,
        "provider": analysis.provider, "provider_version": analysis.provider_version,
        "params": params, "inputs": inputs,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def result_dir(run: Run, analysis: str, variant: str, epoch: int | None) -> Path:
    return run.path / ANALYSES / analysis / variant / (f"epoch_{epoch:04d}" if epoch is not None else "run")


def read_manifest(path: Path, within: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a result directory, or None if absent, unreadable or (with `within`) outside it."""
    try:
        m = safeio.read_json(path / MANIFEST, max_bytes=safeio.MAX_CONFIG_BYTES, within=within)
        return m if isinstance(m, dict) and m.get("format") == RESULT_FORMAT else None
    except ProbeError:
        return None


def iter_results(run: Run) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every finished result of a run, with its manifest."""
    root = run.path / ANALYSES
    if not root.is_dir():
        return
    for manifest in sorted(root.glob(f"*/*/*/{MANIFEST}")):
        m = read_manifest(manifest.parent, run.path)
        if m is not None:
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
    value, and `<analysis>.<scalar>@<epoch>` for every epoch analysed.
    """
    run = Run(run_dir)
    out: dict[str, Any] = {}
    results = sorted(iter_results(run), key=lambda r: (r[1]["variant"] != "default", -(r[1].get("epoch") or -1)))
    for _, m in reversed(results):  # later entries overwrite: default variant, last epoch win
        for k, v in (m.get("scalars") or {}).items():
            if m.get("epoch") is not None:
                out[f"{m['analysis']}.{k}@{m['epoch']}"] = v
            out[f"{m['analysis']}.{k}"] = v
    return out
