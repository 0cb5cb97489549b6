"""Confinement: every path probe writes through a run or sweep folder stays inside it.

A run, sweep or cache folder is untrusted input: anyone who could write into it
could have left a symbolic link where probe expects a folder (`analyses/`,
`analyses/curves/default`, `logs/`, `report/`), or a sweep file naming a point
`/some/other/dir` or `../x`. Following either would let probe write, replace or
delete files elsewhere. The helpers here check a path component by component with
`lstat` (which never follows a link) before anything is written, and refuse with
one line naming the offending path. The user's own command line is trusted: the
run directory given on it may itself be a link, only what lies below it is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from probe.errors import ProbeError

# bytes in one file name on every filesystem probe is used on (ext4, xfs, btrfs, apfs, tmpfs)
NAME_MAX = 255


class ConfinementError(ProbeError):
    """A path below a run or sweep folder would lead out of it (a link, `..`, an absolute name)."""


def _relative_parts(rel: str | Path, root: Path) -> tuple[str, ...]:
    text = str(rel)
    if "\0" in text:
        raise ConfinementError(f"{root}: refusing a path holding a NUL byte ({text!r})")
    pure = PurePosixPath(text)
    if pure.is_absolute() or any(part == ".." for part in pure.parts):
        raise ConfinementError(
            f"{root}: refusing {text!r}, which leads out of it (absolute or with '..')"
        )
    return tuple(part for part in pure.parts if part != ".")


def confined(root: str | Path, rel: str | Path) -> Path:
    """`root/rel`, after checking that nothing below `root` on the way is a symbolic link.

    Every existing component of `rel` must be a real directory (the last one may be
    anything but a link); components that do not exist yet are fine, since probe
    creates them as real folders. Raises `ConfinementError` (one line) otherwise.
    """
    root = Path(root)
    p = root
    parts = _relative_parts(rel, root)
    for i, part in enumerate(parts):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            break
        except OSError as exc:
            raise ConfinementError(f"{p}: cannot be checked ({exc.strerror or exc})") from None
        if stat.S_ISLNK(st.st_mode):
            raise ConfinementError(
                f"{p}: is a symbolic link; probe never writes through a link out of {root} "
                "(replace it with a real folder or file)"
            )
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise ConfinementError(f"{p}: expected a folder, found a file of another kind")
    return root.joinpath(*parts) if parts else root


def lstat_or_none(path: str | Path) -> os.stat_result | None:
    """`os.lstat` (never following a link), or None when nothing can be looked at there
    (absent, a name too long, a NUL byte, no permission): for walking an untrusted folder."""
    try:
        return os.lstat(path)
    except (OSError, ValueError):
        return None


def is_regular(path: str | Path) -> bool:
    """True for a regular file that is not a symbolic link; never follows one."""
    st = lstat_or_none(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def is_real_dir(path: str | Path) -> bool:
    """True for a directory that is not a symbolic link; never follows one."""
    st = lstat_or_none(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def is_link(path: str | Path) -> bool:
    """True for a symbolic link (dangling or not); never follows it."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def check_name(name: object, where: str) -> str:
    """A single folder name read from disk (a sweep point, a status key): no separator, no `..`, not
    too long."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ConfinementError(
            f"{where}: {name!r} is not a folder name (it must be one name, no '/' or '..')"
        )
    if len(os.fsencode(name)) > NAME_MAX:
        raise ConfinementError(
            f"{where}: a name of {len(os.fsencode(name))} bytes is longer than a folder name may "
            f"be ({NAME_MAX})"
        )
    return name


def child_dir(parent: str | Path, name: object, where: str) -> Path:
    """`parent/name` for a name read from a file in `parent` (a sweep point): one name, not a
    link."""
    return confined(parent, check_name(name, where))


def longest_name(path: str | Path) -> tuple[str, int]:
    """The longest component of `path` and its length in bytes (to check NAME_MAX before
    writing)."""
    parts = Path(path).parts or ("",)
    longest = max(parts, key=lambda s: len(os.fsencode(s)))
    return longest, len(os.fsencode(longest))


def path_max(path: str | Path) -> int:
    """PATH_MAX of the filesystem holding `path` (or its nearest existing ancestor); 4096 if
    unknown."""
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return int(os.pathconf(candidate, "PC_PATH_MAX"))
            except (OSError, ValueError):
                break
    return 4096
