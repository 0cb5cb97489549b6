"""Someone else's state dict names: `probe import --rename OLD=NEW` and the rename a near fit
suggests.

Training code names its modules its own way (`linear.` where the family says `fc.`);
a rename of key prefixes, applied to every file before it is fitted to the family,
imports it without editing the files. When a file's missing and unexpected keys pair
up by shape after a prefix change, the refusal names that rename.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probe.errors import RunFileError, UsageError


def parse_renames(pairs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """`--rename OLD=NEW` prefix maps, in the order given (OLD may not be empty or repeated)."""
    out: list[tuple[str, str]] = []
    for text in pairs:
        old, eq, new = text.partition("=")
        if not eq or not old:
            raise UsageError(
                "--rename", f"expected OLD=NEW with a non-empty OLD prefix, got {text!r}"
            )
        if any(old == o for o, _ in out):
            raise UsageError("--rename", f"{old!r} is renamed twice; give each prefix once")
        out.append((old, new))
    return out


def apply_renames(path: Path, state: dict[str, Any], renames: list[tuple[str, str]]) -> dict:
    """`state` with each key's prefix renamed by the first rule whose OLD starts it; two keys
    becoming one is refused (naming both)."""
    if not renames:
        return state
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for k, v in state.items():
        new = next((n + k[len(o) :] for o, n in renames if k.startswith(o)), k)
        if new in out:
            raise RunFileError(
                path, f"--rename maps both {origin[new]!r} and {k!r} to {new!r}; fix the renames"
            )
        out[new], origin[new] = v, k
    return out


def suggest_renames(want: Mapping[str, Any], state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Prefix maps that turn every unexpected key of `state` into a missing key of `want` of
    the same shape (their last dotted parts kept); [] when no such maps cover them all."""
    missing = {k: tuple(v.shape) for k, v in want.items() if k not in state}
    extra = {k: tuple(v.shape) for k, v in state.items() if k not in want}
    if not missing or len(missing) != len(extra):
        return []
    rules: list[tuple[str, str]] = []
    left = dict(extra)
    while left:
        key = next(iter(left))
        tail = key.rpartition(".")[2]
        found = None
        for m, shape in missing.items():
            if shape != left[key] or m.rpartition(".")[2] != tail or "." not in key + m:
                continue
            old, new = key[: len(key) - len(tail)], m[: len(m) - len(tail)]
            mapped = {new + k[len(old) :]: v for k, v in left.items() if k.startswith(old)}
            if all(missing.get(k) == v for k, v in mapped.items()):
                found = (old, new)
                break
        if found is None:
            return []
        rules.append(found)
        for k in [k for k in left if k.startswith(found[0])]:
            del missing[found[1] + k[len(found[0]) :]]
            del left[k]
    return rules if not missing else []
