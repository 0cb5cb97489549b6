"""The rules of a run directory's writer: what probe may delete there, what it refuses to touch.

A run directory may sit in a user's project folder, so `--force` removes only what
the writer itself makes (`PROBE_FILES`, `PROBE_DIRS` holding only probe's own file
names, the temporaries of those writes) and refuses, naming them, when anything else
is there. The checks here read only; they run before anything is touched, and again
under the lock (probe.rundir.writer). `probe train`'s checks of its options before
any data is loaded are probe.training.trainplan.preflight. See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from probe.errors import ProbeError, RunFileError, UsageError
from probe.io import paths, safeio
from probe.io.paths import is_real_dir, is_regular
from probe.rundir import lock
from probe.rundir import run as rundir
from probe.rundir.lock import LOCK_FILE

# What `probe train` itself puts in a run directory: --force removes these and nothing else.
PROBE_FILES = (rundir.CONFIG, rundir.METRICS, LOCK_FILE)
PROBE_DIRS = (
    rundir.CHECKPOINTS,
    rundir.ACTIVATIONS,
    rundir.PREDICTIONS,
    rundir.DATA,
    rundir.ANALYSES,
    "logs",
    "report",
)
# Inside the training's own folders only its own file names are expected (anything else is the
# user's).
_TRAINING_FILES = {
    rundir.CHECKPOINTS: re.compile(r"^epoch_\d{4,}\.safetensors$"),
    rundir.ACTIVATIONS: re.compile(r"^epoch_\d{4,}\.h5$"),
    rundir.PREDICTIONS: re.compile(r"^epoch_\d{4,}\.safetensors$"),
    rundir.DATA: re.compile(r"^(probe_set|analysis_batch|examples)\.safetensors$"),
}
# Temporaries of probe's own writes (`.<name>.<random>.tmp`, a swapped-out `.report.<...>.old`),
# by folder: a user's `.notes.tmp` is not one of them.
_TEMPS = {
    "": re.compile(r"^\.(config\.json|metrics\.jsonl|report)\..+\.(tmp|old)$"),
    rundir.CHECKPOINTS: re.compile(r"^\.epoch_\d{4,}\.safetensors\..+\.tmp$"),
    rundir.ACTIVATIONS: re.compile(r"^\.epoch_\d{4,}\.h5\..+\.tmp$"),
    rundir.PREDICTIONS: re.compile(r"^\.epoch_\d{4,}\.safetensors\..+\.tmp$"),
    rundir.DATA: re.compile(r"^\.(probe_set|analysis_batch|examples)\.safetensors\..+\.tmp$"),
}
_CONFIG_LIMIT = 1 << 20  # a config.json is a few kB; reading a larger one is not worth the memory


def is_probe_run(run_dir: Path) -> bool:
    """Whether `run_dir/config.json` is a regular file whose JSON says `"format": "probe-run/..."`.

    A regular file, bounded in size and nesting (probe.io.safeio): anything else is not a probe run.
    """
    try:
        d = safeio.read_json(run_dir / rundir.CONFIG, max_bytes=_CONFIG_LIMIT)
    except ProbeError:
        return False
    return (
        isinstance(d, dict)
        and isinstance(d.get("format"), str)
        and d["format"].startswith("probe-run/")
    )


def foreign_entries(run_dir: Path) -> list[str]:
    """Entries of a run directory that probe did not make (run-relative names, sorted).

    Probe's own: config.json, metrics.jsonl, its lock file, checkpoints/, activations/
    and data/ holding only their epoch and batch files, analyses/, logs/, report/,
    and its temporaries. A link is never probe's, whatever its name.
    """
    out: list[str] = []
    for p in sorted(run_dir.iterdir()):
        name = p.name
        if paths.is_link(p):
            out.append(name)
        elif _TEMPS[""].match(name):
            continue
        elif name in PROBE_FILES:
            if not is_regular(p):
                out.append(name)
        elif name in PROBE_DIRS:
            if not is_real_dir(p):
                out.append(name)
            elif name in _TRAINING_FILES:
                pattern = _TRAINING_FILES[name]
                out += [
                    f"{name}/{c.name}"
                    for c in sorted(p.iterdir())
                    if paths.is_link(c)
                    or not ((pattern.match(c.name) or _TEMPS[name].match(c.name)) and is_regular(c))
                ]
        else:
            out.append(name)
    return out


def has_content(run_dir: Path) -> bool:
    """A folder holding more than probe's temporaries and a lock file (a run killed while writing
    its first file holds only those)."""
    return any(
        not (_TEMPS[""].match(p.name) and not paths.is_link(p)) and p.name != LOCK_FILE
        for p in run_dir.iterdir()
    )


def remove_training_temps(run_dir: Path) -> list[Path]:
    """Remove the temporary files of probe's own training writes that a killed process left.

    Only under the lock (no other writer), only regular files named like probe's
    temporaries of its own files; a user's `.notes.tmp` stays.
    """
    removed = []
    for folder, pattern in _TEMPS.items():
        d = run_dir / folder
        if not is_real_dir(d):
            continue
        for p in d.iterdir():
            if pattern.match(p.name) and p.name.endswith(".tmp") and is_regular(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def check_run_dir(run_dir: Path, *, resume: bool, force: bool, locked: bool = False) -> None:
    """Refuse to overwrite or to resume the wrong thing, before anything is written.

    Reads only. `locked`: the caller holds the run's training lock (so it is not asked who does).
    """
    if resume and force:
        raise UsageError("--resume", "--resume and --force contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError("--run-dir", f"{run_dir} exists and is not a directory")
    if not run_dir.is_dir():
        if resume:
            raise UsageError("--resume", f"{run_dir} holds no run to resume (no {rundir.CONFIG})")
        return
    if not locked and (who := lock.holder(run_dir)) is not None:
        raise lock.busy_error(run_dir, who)
    try:
        exists = has_content(run_dir)
    except OSError as exc:
        raise ProbeError(f"{run_dir}: cannot be listed ({exc.strerror or exc})") from None
    if resume:
        if not is_regular(run_dir / rundir.CONFIG):
            raise UsageError("--resume", f"{run_dir} holds no run to resume (no {rundir.CONFIG})")
        for name in (
            rundir.CONFIG,
            rundir.METRICS,
            rundir.CHECKPOINTS,
            rundir.ACTIVATIONS,
            rundir.DATA,
        ):
            # a link here would make training write outside the run
            p = paths.confined(run_dir, name)
            if os.path.lexists(p) and not (
                is_regular(p) if name in PROBE_FILES else is_real_dir(p)
            ):
                kind = "regular file" if name in PROBE_FILES else "folder"
                raise RunFileError(
                    p,
                    f"expected a {kind}, found something else (a FIFO, a device, a file...); "
                    "move it away to resume",
                )
    elif exists:
        if not force:
            raise UsageError(
                "--run-dir",
                f"{run_dir} already exists; use --resume to continue it or --force to replace it",
            )
        if not is_probe_run(run_dir):
            raise UsageError(
                "--force",
                f"{run_dir} is not a probe run (its {rundir.CONFIG} is missing or does not say "
                "probe-run/...); refusing to delete anything in it",
            )
        foreign = foreign_entries(run_dir)
        if foreign:
            shown = ", ".join(foreign[:8]) + (
                f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
            )
            raise UsageError(
                "--force",
                f"{run_dir} holds files probe did not make ({shown}); move them out or pick "
                "another --run-dir; nothing was deleted",
            )


def clear_run(run_dir: Path) -> None:
    """Remove probe's own entries of a checked run, config.json last; leave anything else.

    Called under the lock after `check_run_dir` found nothing foreign; a file that
    appeared since (the user is still in the folder) is not probe's and is left,
    with the training folder holding it. Removing config.json last keeps an
    interrupted --force a probe run, so the same command can finish it.
    """
    entries = [p for p in sorted(run_dir.iterdir()) if p.name != LOCK_FILE and not paths.is_link(p)]
    entries.sort(key=lambda p: p.name == rundir.CONFIG)
    for p in entries:
        try:
            if p.name in _TRAINING_FILES and is_real_dir(p):
                pattern = _TRAINING_FILES[p.name]
                for c in p.iterdir():
                    if (pattern.match(c.name) or _TEMPS[p.name].match(c.name)) and is_regular(c):
                        c.unlink()
                with contextlib.suppress(OSError):
                    p.rmdir()  # not empty: something not probe's is in it
            elif (p.name in PROBE_DIRS or _TEMPS[""].match(p.name)) and is_real_dir(p):
                # probe's wholesale (analyses/, logs/, report/, a temporary); never follows a link
                shutil.rmtree(p)
            elif (p.name in PROBE_FILES or _TEMPS[""].match(p.name)) and is_regular(p):
                p.unlink()
        except OSError as exc:
            raise ProbeError(
                f"{p}: could not be removed ({exc.strerror or exc}); the old run is partly "
                "removed, rerun the same command to finish"
            ) from None


# The longest tail probe writes below a run directory while training
# (`/activations/.epoch_NNNN.h5.<pid>.<random>.h5.tmp`), with room to spare.
_WRITE_TAIL = 80


def check_path(run_dir: Path, option: str = "--run-dir") -> None:
    """The run directory's name and path length against the filesystem's limits.

    ENAMETOOLONG would otherwise surface at the first write (or at the first
    `exists()`, which raises it). Touches nothing.
    """
    absolute = Path(os.path.abspath(run_dir))
    longest, n = paths.longest_name(absolute)
    if n > paths.NAME_MAX:
        raise UsageError(
            option,
            f"the folder name {longest[:40]}... is {n} bytes; a file name may have at most "
            f"{paths.NAME_MAX}",
        )
    limit = paths.path_max(absolute)
    if len(os.fsencode(str(absolute))) + _WRITE_TAIL > limit:
        raise UsageError(
            option,
            f"{str(absolute)[:60]}... is {len(os.fsencode(str(absolute)))} bytes long; with the "
            f"files inside it that passes this filesystem's limit of {limit}; pick a shorter path",
        )


def check_new_run_dir(run_dir: Path, force: bool, option: str = "run_dir") -> None:
    """For a writer that starts a run (probe.Recorder, `probe import`): an existing, non-empty
    `run_dir` is refused unless `force` and it is a probe run holding nothing foreign."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(option, f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and not force and has_content(run_dir):
        raise UsageError(
            option,
            f"{run_dir} already exists and is not empty; pick another run directory, or pass "
            "force=True (--force) to replace the probe run there",
        )
    check_run_dir(run_dir, resume=False, force=force)
