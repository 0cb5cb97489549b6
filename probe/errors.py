"""The one family of errors probe prints as a single line.

Anything a user can cause (a bad option, a damaged file, a missing directory) is
raised as a `ProbeError`; the CLI prints `error: <message>` and exits non-zero
instead of showing a traceback. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

from pathlib import Path


class ProbeError(Exception):
    """A problem the user can fix; printed as one line."""

    exit_code = 1


class UsageError(ProbeError):
    """A bad option or parameter value (exit code 2, like click's usage errors)."""

    exit_code = 2

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"{option}: {message}")


class RunFileError(ProbeError):
    """A file of a run directory is missing, damaged or of the wrong kind.

    The message starts with the path, so the user knows which file to look at.
    """

    def __init__(self, path: str | Path, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class NotARunError(RunFileError):
    """A directory that is not a probe run directory."""


class Skip(ProbeError):
    """An analysis that does not apply to this model or run, with the one-line reason.

    `raise probe.Skip("the model has no Conv2d layer")` from an analysis: the job's
    status is "skipped" (not a failure: `probe analyze` exits 0), printed as
    `skipped: <analysis> epoch N: <reason>`. The reason is recorded beside where the
    result would be (`<epoch_NNNN|run>.skipped.json`, keyed like a result on the inputs
    the job read before skipping), so an unchanged run is not asked again and
    `probe report` lists the analysis as not applicable rather than missing.
    """
