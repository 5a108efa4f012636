"""File-system helpers shared by the modules that make files durable.

A new, renamed or unlinked directory entry is only durable once its directory is fsynced. Callers
choose what a failure means:

- ``strict=True``: the caller is about to promise something that depends on the entry (a sealed
  segment, a newly created key, an acknowledged incident), so the error is raised;
- ``strict=False``: best effort (a deletion, a trimmed log line, a space reserve); an entry that is not
  durable only means the work is redone, or found again, after a power cut, so errors are ignored.

It also holds the one way edgerec creates files and its data directory with private modes.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def fsync_dir(path: str | Path, *, strict: bool) -> None:
    """fsync the directory ``path``; raises OSError only when ``strict``. A no-op where directories
    cannot be opened (Windows, for the officer's tools: NTFS makes a new entry durable with the file)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


# ----- modes of what edgerec creates ------------------------------------------------------------------
# Every file edgerec creates is private to the service user whatever the umask of whoever runs it (the
# CLI, run from a shell with umask 022, may be the first to create the catalog); public keys are 0644.
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def create_private(path: str | Path, flags: int = os.O_WRONLY | os.O_CREAT, *,
                   mode: int = PRIVATE_FILE_MODE) -> int:
    """``os.open(path, flags)`` for a file edgerec writes; returns the descriptor. The file ends up with
    exactly ``mode``: a new one despite the umask, an existing one of ours with looser bits is tightened."""
    # O_CLOEXEC and fchmod are missing on Windows, where the officer's tools also run (modes mean little
    # there); O_BINARY is Windows-only.
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), mode)
    try:
        if hasattr(os, "fchmod") and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: str | Path) -> None:
    """Tighten an existing file of ours to PRIVATE_FILE_MODE (files another program created for us, such as
    SQLite's -wal and -shm); a missing file, or one of another user, is left as it is."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.stat(path).st_mode) & ~PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE)


def private_dir_action(mode: int, uid: int, euid: int) -> str:
    """What to do with an existing data directory: 'ok', 'tighten' (ours, but others may enter it) or
    'refuse' (another user's: its owner, not edgerec, decides who may read it)."""
    if uid != euid:
        return "refuse"
    return "tighten" if stat.S_IMODE(mode) & 0o077 else "ok"


def ensure_private_dir(path: Path, euid: int | None = None) -> str | None:
    """Create ``path`` (0700) or make an existing one private; returns what was changed, for the log
    (None: nothing), and raises EdgerecError when it is another user's directory."""
    from .errors import EdgerecError

    euid = os.geteuid() if euid is None else euid
    try:
        st = os.stat(path)
    except FileNotFoundError:
        path.mkdir(parents=True, mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is narrowed by the umask only, never widened
        return None
    action = private_dir_action(st.st_mode, st.st_uid, euid)
    old_mode = stat.S_IMODE(st.st_mode)
    if action == "refuse":
        raise EdgerecError(f"data_dir {path}: owned by uid {st.st_uid}, not by this process's user "
                           f"(uid {euid}), mode {old_mode:04o}: refusing to keep footage in a directory "
                           f"whose owner decides who reads it; give it to the service user "
                           f"(chown edgerec: {path}) or choose another data_dir")
    if action == "tighten":
        os.chmod(path, PRIVATE_DIR_MODE)
        return f"data_dir {path} had mode {old_mode:04o}: tightened to 0700 (footage metadata is private)"
    return None


def prepare_data_dir(path: Path, source: str | None = None) -> str | None:
    """``ensure_private_dir`` for the daemon and the commands that write: a data directory that cannot be
    made, or is not writable (a read-only mount, /proc), is a ConfigError naming ``data_dir`` and why."""
    from .errors import ConfigError

    try:
        tightened = ensure_private_dir(path)
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot use {path}: {exc.strerror or exc}", source) from None
    # access(2) says EROFS for a read-only file system, whoever asks (root too).
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir: {path} is not writable (a read-only mount, or another user's "
                          "directory): the recorder must write footage there", source)
    return tightened
