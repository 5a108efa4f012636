"""Who may change what the daemon runs: the rule, like sshd's StrictModes, that a config file (and every
directory above it, the password files and key files it names) is trusted only when nobody but root
and the service's own user can change it.

A file or directory fails the rule when it is owned by another user, or writable by its group or by
everyone. A world-writable directory with the sticky bit (``/tmp``) owned by root or the service user
passes: there, nobody else can rename or remove an entry they do not own. ``untrusted_reason`` decides
from stat results (pure); ``check_trusted`` only stats the files and their directories.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UntrustedFileError


@dataclass(frozen=True)
class FileStat:
    """What the rule needs to know about one file or directory."""

    path: str
    uid: int
    mode: int  # st_mode: type and permission bits
    owner: str = ""  # the owner's user name, for the message ("" when unknown)


def untrusted_reason(st: FileStat, euid: int) -> str | None:
    """Why nobody should trust ``st`` as input of a process running as ``euid`` (None: it may be trusted).

    The reason names the file and the command that fixes it.
    """
    is_dir = stat.S_ISDIR(st.mode)
    what = "directory" if is_dir else "file"
    if st.uid not in (0, euid):
        owner = st.owner or f"uid {st.uid}"
        return (f"{st.path}: refusing to use a {what} owned by {owner} (only root or the service user "
                f"may own it, or another user could change what edgerec runs); fix: chown root {st.path}")
    if is_dir and st.mode & stat.S_ISVTX and st.mode & stat.S_IWOTH:
        return None  # sticky: others can add entries but not replace ours
    loose = st.mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose:
        who = "group and others" if loose == (stat.S_IWGRP | stat.S_IWOTH) else (
            "its group" if loose == stat.S_IWGRP else "others")
        return (f"{st.path}: refusing to use a {what} writable by {who} (mode {stat.S_IMODE(st.mode):04o}: "
                f"another user could change what edgerec runs); fix: chmod go-w {st.path}")
    return None


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def paths_to_check(path: Path) -> list[Path]:
    """``path`` and every directory above it, as given and with symbolic links resolved."""
    out: list[Path] = []
    for start in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        for p in (start, *start.parents):
            if p not in out:
                out.append(p)
    return out


def check_trusted(paths: Iterable[Path], euid: int | None = None) -> None:
    """Raise UntrustedFileError naming every file or directory in ``paths`` (and above) that fails the rule.

    A file that does not exist (yet) is skipped; the directories above it are still checked, since whoever
    can write them can put the file there.
    """
    euid = os.geteuid() if euid is None else euid
    problems: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        for p in paths_to_check(path):
            if p in seen:
                continue
            seen.add(p)
            try:
                st = os.stat(p)
            except OSError:
                continue
            reason = untrusted_reason(FileStat(str(p), st.st_uid, st.st_mode, _owner_name(st.st_uid)), euid)
            if reason is not None:
                problems.append(reason)
    if problems:
        raise UntrustedFileError(problems)
