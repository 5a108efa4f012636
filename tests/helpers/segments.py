"""Helpers for tests that need real encrypted segments: keys, metadata and a one-call segment writer.

Other test modules may import these (``from tests.helpers.segments import make_keys, write_segment``).
"""

from __future__ import annotations

import errno
import os
import random
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgerec import segfile
from edgerec.segfile import CHUNK_BYTES_DEFAULT, SealedSegment, SegmentMeta, SegmentWriter

START_NS = 1_750_000_000_000_000_000


@dataclass(frozen=True)
class TestKeys:
    """A recipient key pair (the officer) and a device signing key."""

    __test__ = False  # not a pytest test class

    recipient: X25519PrivateKey
    device: Ed25519PrivateKey

    @property
    def recipient_public(self) -> X25519PublicKey:
        return self.recipient.public_key()


def make_keys() -> TestKeys:
    return TestKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())


def make_meta(**overrides: object) -> SegmentMeta:
    meta = SegmentMeta(
        device_id="pi-test-01",
        camera="front-door",
        sequence=7,
        start_ns=START_NS,
        clock_synced=True,
        boot_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        monotonic_ns=123_456_789_000,
        codec="h264",
        container="mpegts",
        prev_digest=bytes(range(32)),
    )
    return replace(meta, **overrides)  # type: ignore[arg-type]


def write_segment(
    path: Path,
    data: bytes,
    keys: TestKeys,
    *,
    recipients: Sequence[X25519PublicKey] | None = None,
    meta: SegmentMeta | None = None,
    chunk_bytes: int = CHUNK_BYTES_DEFAULT,
    write_size: int = 1316,
    seed: int = 0,
) -> SealedSegment:
    """Write ``data`` as a closed segment in writes of about ``write_size`` bytes (varied by ``seed``);
    ``note`` is called after every write with a frame count and an end time derived from it."""
    rng = random.Random(seed)
    writer = SegmentWriter(
        path,
        meta or make_meta(),
        recipients if recipients is not None else [keys.recipient_public],
        keys.device,
        chunk_bytes=chunk_bytes,
    )
    pos = frames = 0
    while pos < len(data):
        n = max(1, rng.randint(write_size // 2, write_size * 3 // 2))
        writer.write(data[pos : pos + n])
        pos += n
        frames += 1
        writer.note(START_NS + frames * 40_000_000, frames)
    return writer.close()


@dataclass(frozen=True)
class Record:
    """One record of a segment file, located by offsets (for tampering tests)."""

    offset: int
    kind: int
    raw: bytes


def split_records(blob: bytes) -> tuple[bytes, list[Record]]:
    """Cut a segment file into its header and its records (chunks, then the trailer), trusting the framing."""
    header_len = struct.unpack_from(">I", blob, 12)[0]
    records = []
    pos = header_len
    while pos < len(blob):
        kind = blob[pos]
        if kind == segfile.KIND_TRAILER:
            size = segfile.TRAILER_BYTES
        else:
            ct_len = struct.unpack_from(">I", blob, pos + 1)[0]
            size = segfile.CHUNK_OVERHEAD_BYTES - segfile.TAG_BYTES + ct_len
        records.append(Record(pos, kind, blob[pos : pos + size]))
        pos += size
    return blob[:header_len], records


class DirSyncFailsAtSeal:
    """segfile's directory fsync failing once with EIO: at the ``nth`` seal, on the call
    ``SegmentWriter.close`` makes after its rename. The sealed file is then under its final name and its
    ``.partial`` gone, but close raises. Every other call (a writer's open, a recovery) is the real fsync.
    ``failed``: the directory of the seal that failed, once it has. ``then(directory)``, if given, runs
    just before that failure is raised (what else happens to the directory meanwhile)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nth: int = 1,
                 then: Callable[[Path], None] | None = None):
        self.nth = nth
        self.then = then
        self.seals = 0
        self.failed: Path | None = None
        self._real = segfile.fsync_dir
        monkeypatch.setattr(segfile, "fsync_dir", self)

    def __call__(self, path: str | Path, *, strict: bool) -> None:
        if sys._getframe(1).f_code is SegmentWriter.close.__code__:  # the seal's call, not another
            self.seals += 1
            if self.seals == self.nth:
                self.failed = Path(path)
                if self.then is not None:
                    self.then(self.failed)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        self._real(path, strict=strict)


class OpenFails:
    """``os.open`` (and with ``also_stat`` also ``os.stat``) of the files in ``paths`` failing with ``err``
    (EIO, EMFILE, EACCES, ...) as an error of the system would: the next ``times`` times, or until ``stop``
    when ``times`` is None. Every other call is the real one, and so is every call once it has stopped.
    ``failed``: the calls it failed so far."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *paths: Path, err: int, times: int | None = None,
                 also_stat: bool = False):
        self.paths = {os.path.abspath(p) for p in paths}
        self.err = err
        self.left = times
        self.failed = 0
        self._lock = threading.Lock()
        real_open, real_stat = os.open, os.stat

        def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            self._maybe_fail(path, dir_fd)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def fake_stat(path: Any, *, dir_fd: int | None = None,
                      follow_symlinks: bool = True) -> os.stat_result:
            self._maybe_fail(path, dir_fd)
            return real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        monkeypatch.setattr(os, "open", fake_open)
        if also_stat:
            monkeypatch.setattr(os, "stat", fake_stat)

    def stop(self) -> None:
        with self._lock:
            self.left = 0

    def _maybe_fail(self, path: Any, dir_fd: int | None) -> None:
        if dir_fd is not None or isinstance(path, int):
            return
        if os.path.abspath(os.fsdecode(path)) not in self.paths:
            return
        with self._lock:
            if self.left is not None:
                if self.left <= 0:
                    return
                self.left -= 1
            self.failed += 1
        raise OSError(self.err, os.strerror(self.err), os.fsdecode(path))
