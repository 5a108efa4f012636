"""The data directory's layout: the one place that says where each file edgerec keeps lives and how a
segment file is named. Pure: names and paths only, no file is touched here.

    <data_dir>/
      catalog.sqlite3                      the SQLite index (plus -wal and -shm next to it)
      audit.log                            the hash-chained audit log
      device.key, device.pub               the device signing key and its public half
      .space-reserve                       blocks given up when the disk is completely full
      quarantine/<camera>/<day>/<name>     damaged files set aside at start-up
      <camera>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.mmmZ>.seg           a closed segment (UTC start time)
      <camera>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.mmmZ>.seg.partial   a segment being written

A file is written under its final name plus ``PARTIAL_SUFFIX`` and renamed when complete; so a segment
being written ends in ``PARTIAL_SEGMENT_SUFFIX``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SEGMENT_SUFFIX = ".seg"
PARTIAL_SUFFIX = ".partial"  # appended to a file's final name while it is being written
PARTIAL_SEGMENT_SUFFIX = SEGMENT_SUFFIX + PARTIAL_SUFFIX  # a segment being written (or left by a crash)
SEGMENT_GLOB = f"*/*{SEGMENT_SUFFIX}"  # a camera directory's segment files: <day>/<name>.seg
CATALOG_NAME = "catalog.sqlite3"
AUDIT_NAME = "audit.log"
QUARANTINE_DIR = "quarantine"
RESERVE_NAME = ".space-reserve"
DEVICE_KEY_NAME = "device.key"
DEVICE_PUB_NAME = "device.pub"
PUBLISHED_HEADS_NAME = "published-heads.json"  # the audit head the daemon last published (rollback.py)

_SEGMENT_NAME = re.compile(r"^(\d{8}T\d{6})\.(\d{3})Z\.seg$")
_DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def segment_name(start_ns: int) -> str:
    """``YYYYMMDDTHHMMSS.mmmZ.seg`` (UTC, millisecond): names sort by start time."""
    seconds, rest_ns = divmod(start_ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC)
    return f"{when:%Y%m%dT%H%M%S}.{rest_ns // 1_000_000:03d}Z{SEGMENT_SUFFIX}"


def day_dir_name(ns: int) -> str:
    """The ``YYYY-MM-DD`` (UTC) directory that holds footage starting at ``ns``."""
    return f"{datetime.fromtimestamp(ns // 1_000_000_000, UTC):%Y-%m-%d}"


def is_day_dir_name(name: str) -> bool:
    return _DAY_DIR.match(name) is not None


def segment_path(data_dir: Path, camera: str, start_ns: int) -> Path:
    """``<data_dir>/<camera>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.mmmZ>.seg`` (UTC): sortable, filesystem-safe."""
    return Path(data_dir) / camera / day_dir_name(start_ns) / segment_name(start_ns)


def partial_path(path: Path) -> Path:
    """The name a file is written under until it is complete (``path`` + ``PARTIAL_SUFFIX``)."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def start_ns_from_name(path: Path) -> int | None:
    """The start time a segment's name carries (the inverse of ``segment_path``); None for other names."""
    m = _SEGMENT_NAME.match(path.name)
    if m is None:
        return None
    dt = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + int(m.group(2)) * 1_000_000


@dataclass(frozen=True)
class DataDir:
    """The files of one data directory, by role."""

    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    @property
    def audit_path(self) -> Path:
        return self.root / AUDIT_NAME

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def reserve_path(self) -> Path:
        return self.root / RESERVE_NAME

    @property
    def device_key_path(self) -> Path:
        return self.root / DEVICE_KEY_NAME

    @property
    def device_pub_path(self) -> Path:
        return self.root / DEVICE_PUB_NAME

    @property
    def published_heads_path(self) -> Path:
        return self.root / PUBLISHED_HEADS_NAME

    def camera_dir(self, camera: str) -> Path:
        return self.root / camera

    def segment_path(self, camera: str, start_ns: int) -> Path:
        return segment_path(self.root, camera, start_ns)

    def quarantine_path(self, rel: str) -> Path:
        """Where a file at ``rel`` (relative to the root) is set aside."""
        return self.root / QUARANTINE_DIR / rel
