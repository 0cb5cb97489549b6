"""The user's own state folder: what probe remembers between commands that no run may claim.

Everything inside a run, sweep, import or cache folder is untrusted input, so a shortcut
that decides whether a file must be read again cannot live there: anyone who can write
into the run could forge it. Such shortcuts (the file-hash memo of
`probe.rundir.results.Fingerprints`) live here instead, in a folder only the user writes:
$PROBE_STATE, else $XDG_STATE_HOME/probe, else ~/.local/state/probe (made with mode 0700).
Losing it costs only time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def state_dir() -> Path:
    """The folder (not created here)."""
    if os.environ.get("PROBE_STATE"):
        return Path(os.environ["PROBE_STATE"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "probe"


def state_file(kind: str, key: str) -> Path:
    """`state_dir()/kind/<digest of key>.json`: one file per key (e.g. a run's real path)."""
    return state_dir() / kind / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


def ensure_parent(path: Path) -> None:
    """Create the folders above `path` (user-only permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
