"""report/inputs.json: the digest of everything a page shows, so a page is rebuilt only when
its inputs changed.

A page's inputs are the run's or sweep's files as read and checked (config, metrics, result
manifests, failure records, the warnings), the installed analyses, and the code that turns
them into the page: this package's modules and templates and the readers of untrusted files
(probe.rundir.readers), plus, for a sweep's page, the modules that build its table. A changed
layout or reading rule is a changed input. When the stored digest matches and the page is
there, nothing is rewritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from probe.errors import RunFileError
from probe.io import safeio
from probe.io.paths import is_regular
from probe.rundir import readers

REPORT_DIR = "report"  # RUN/report/ and SWEEP/report/
INDEX = "index.html"
STAMP = "inputs.json"
STAMP_FORMAT = "probe-report/1"

PACKAGE = Path(__file__).parent
TEMPLATES = PACKAGE / "templates"


def code_digest(*modules: ModuleType) -> str:
    """SHA-256 of the report's own modules and templates, of probe.rundir.readers, and of the
    source of `modules` (what else a page's layout depends on)."""
    files = [
        *sorted(PACKAGE.glob("*.py")),
        *(Path(m.__file__ or "") for m in (readers, *modules)),
        *sorted(TEMPLATES.iterdir()),
    ]
    h = hashlib.sha256()
    for p in files:
        if p.is_file():
            h.update(f"{p.parent.name}/{p.name}".encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def digest(blob: Any) -> str:
    """SHA-256 of a JSON-able description of a page's inputs (keys sorted)."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(report_dir: Path, want: str) -> bool:
    """The page in `report_dir` was built from inputs of digest `want` and is still there."""
    try:  # confined to the run or sweep: a linked report/ is never read, and refused when written
        stamp = safeio.read_json(
            report_dir / STAMP, max_bytes=safeio.MAX_CONFIG_BYTES, within=report_dir.parent
        )
    except RunFileError:
        return False
    return (
        isinstance(stamp, dict) and stamp.get("digest") == want and is_regular(report_dir / INDEX)
    )
