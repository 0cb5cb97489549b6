"""Untrusted text made safe for one terminal line.

File names, keys and messages from a run, sweep, import or data folder are untrusted: a
name holding a newline could forge a second `error:` line, an escape sequence could set
the terminal's title or hide what follows. Everything probe prints that may carry such
text goes through `clean`: control, format (bidi) and line/paragraph separator
characters are shown as `\\uXXXX` escapes, and long text is cut.
"""

from __future__ import annotations

import unicodedata
from typing import Any

UNSAFE = ("Cc", "Cf", "Zl", "Zp")  # controls (newline, ESC), bidi/format, separators


def clean(text: Any, limit: int = 300) -> str:
    """`text` made safe for one terminal line: control and bidi characters shown escaped,
    long text cut."""
    s = "".join(
        c if unicodedata.category(c) not in UNSAFE else f"\\u{ord(c):04x}"
        for c in str(text)[: limit * 2]
    )
    return s if len(s) <= limit else s[: limit - 1] + "…"
