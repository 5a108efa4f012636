"""The space reserve: a file of allocated blocks in the data directory, given up when a write that must not
be lost fails because the disk is completely full.

Two kinds of write go through it: a retention sweep's audit lines and catalog marks (the writes that free
space must not be the ones that cannot be made) and incident commands (an incident must be recorded most
of all when the disk is full). The write is tried; if it fails for lack of space, the reserve is unlinked
and the write tried once more.

Only the daemon makes the file (``keep``, after each sweep, once there is twice its size free); any
process may give it up (``release``): the CLI's ``edgerec incident open`` unlinks it while the daemon runs,
which is safe because nobody holds it open, and the daemon makes it again later.

The decisions (``is_disk_full_error``, ``reserve_wanted``) are pure; the file operations are at the edge.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .errors import EdgerecError
from .fsutil import create_private, fsync_dir
from .layout import DataDir

log = logging.getLogger(__name__)

# Room for the audit lines and catalog writes of a sweep on a full disk (a batch of deletions needs a few
# hundred KiB of WAL and one audit line) or of an incident command (a few pages of WAL and one line).
RESERVE_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


# ----- decisions (pure) ---------------------------------------------------------------------------------
# SQLite's codes for a full disk: a write ("database or disk is full"), and growing the WAL index (-shm),
# which a process makes when it is the first to open the catalog ("disk I/O error").
_SQLITE_FULL_CODES = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE)


def is_disk_full_error(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from a file write, or SQLite's full-disk errors behind a CatalogError (its cause, or
    its context when the message hid it: ``Catalog.open``)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, sqlite3.Error):
        code = getattr(inner, "sqlite_errorcode", None)
        return code in _SQLITE_FULL_CODES or "disk is full" in str(inner)
    return False


def reserve_wanted(size_bytes: int, exists: bool, free_bytes: int) -> bool:
    """Should a reserve of ``size_bytes`` be made now? Only with twice its size free: making it must not
    be what fills the disk."""
    return size_bytes > 0 and not exists and free_bytes >= 2 * size_bytes


# ----- the file -----------------------------------------------------------------------------------------
def free_bytes_at(path: Path) -> int:
    """Free space for an unprivileged writer, as the rest of edgerec reads it (``shutil.disk_usage``)."""
    return shutil.disk_usage(path).free


@dataclass
class SpaceReserve:
    """The reserve file at ``path``. ``size_bytes``: how big ``keep`` makes it (0: keep none, as the CLI
    does, but still give up one that exists)."""

    path: Path
    size_bytes: int = 0
    free_bytes: Callable[[Path], int] = field(default=free_bytes_at, repr=False)

    @classmethod
    def in_dir(cls, data_dir: Path | str, size_bytes: int = 0) -> SpaceReserve:
        return cls(DataDir(Path(data_dir)).reserve_path, size_bytes)

    def with_room(self, write: Callable[[], T]) -> T:
        """Run ``write`` (a catalog transaction or an audit append); if it fails because the disk is full,
        give up the reserve and run it once more. Any other failure, or a second one, is raised."""
        try:
            return write()
        except (OSError, EdgerecError) as exc:
            if not is_disk_full_error(exc) or not self.release():
                raise
        return write()

    def release(self) -> bool:
        """Unlink the reserve; False if there was none to give up."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk full: space reserve released path=%s bytes=%d", self.path, size)
        return True

    def keep(self) -> bool:
        """Make the reserve if it is missing and there is room for it; True if it was made now. A failure
        is logged, never raised: a missing reserve only matters on a full disk, and is made again later."""
        if self.size_bytes <= 0:
            return False  # nothing to keep: no need to look at the disk
        try:
            if not reserve_wanted(self.size_bytes, self.path.exists(), self.free_bytes(self.path.parent)):
                return False
            make_reserve(self.path, self.size_bytes)
        except OSError as exc:
            log.warning("space reserve not made path=%s error=%s", self.path, exc)
            return False
        log.info("space reserve made path=%s bytes=%d", self.path, self.size_bytes)
        return True


def make_reserve(path: Path, size_bytes: int) -> None:
    """Write a file of ``size_bytes`` with its blocks allocated (so giving it up really frees them)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = create_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            os.posix_fallocate(fd, 0, size_bytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            block = bytes(1 << 16)  # no fallocate (some filesystems): write zeros
            for offset in range(0, size_bytes, len(block)):
                os.pwrite(fd, block[: size_bytes - offset], offset)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent, strict=False)  # best effort: a lost reserve is made again
