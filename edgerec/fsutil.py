"""File-system helpers shared by the modules that make files durable.

A new, renamed or unlinked directory entry is only durable once its directory is fsynced. Callers
choose what a failure means:

- ``strict=True``: the caller is about to promise something that depends on the entry (a sealed
  segment, a newly created key, an acknowledged incident), so the error is raised;
- ``strict=False``: best effort (a deletion, a trimmed log line, a space reserve); an entry that is not
  durable only means the work is redone, or found again, after a power cut, so errors are ignored.
"""

from __future__ import annotations

import os
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
