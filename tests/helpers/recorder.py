"""A recorder under test with its sinks: ``make_rig`` builds a ``Recorder`` that collects the segments it
seals and the gaps it reports, plus ways to read the footage back and check the hash chain; ``FullDisk``
fails the segment files' writes as a full disk does."""

from __future__ import annotations

import errno
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import segfile
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.recorder import ChainState, Recorder, RecorderStats


@dataclass
class Rig:
    recorder: Recorder
    data_dir: Path
    private_key: X25519PrivateKey
    sealed: list[segfile.SealedSegment] = field(default_factory=list)
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)


def make_rig(tmp_path: Path, camera: CameraConfig, *, private_key: X25519PrivateKey | None = None,
             **kwargs: Any) -> Rig:
    """A recorder of ``camera`` into ``tmp_path/data``; ``kwargs`` override its arguments (a camera's
    next recorder: the same ``private_key`` and ``signing_key``, the ``chain`` and ``unsealed`` handed
    over)."""
    private_key = private_key or X25519PrivateKey.generate()
    data_dir = tmp_path / "data"
    sealed: list[segfile.SealedSegment] = []
    gaps: list[tuple[str, int, int, str]] = []
    options: dict[str, Any] = {
        "segment_seconds": 1.0,
        "durability": DurabilityConfig(flush_seconds=0.5, fsync_seconds=1.0),
        "chain": ChainState(next_sequence=7, prev_digest=bytes(range(32))),
        "rand": lambda: 0.0,
        "signing_key": Ed25519PrivateKey.generate(),
    }
    options.update(kwargs)
    recorder = Recorder(camera, data_dir=data_dir, device_id="pi-test", recipients=[private_key.public_key()],
                        on_sealed=sealed.append, on_gap=lambda *gap: gaps.append(gap), **options)
    return Rig(recorder, data_dir, private_key, sealed, gaps)


def decrypted_packets(path: Path, private_key: X25519PrivateKey, *, recover: bool = False) -> list[bytes]:
    payload = b"".join(segfile.decrypt(path, private_key, recover=recover))
    if not payload:
        return []
    with av.open(io.BytesIO(payload), format="mpegts") as ts:
        return [bytes(p) for p in ts.demux(video=0) if p.size]


def assert_chain(sealed: list[segfile.SealedSegment], first: ChainState) -> None:
    start = first.next_sequence
    assert [s.meta.sequence for s in sealed] == list(range(start, start + len(sealed)))
    assert sealed[0].meta.prev_digest == first.prev_digest
    for a, b in zip(sealed, sealed[1:], strict=False):
        assert b.meta.prev_digest == a.digest


class FullDisk:
    """An ENOSPC switch for the segment files: while ``full`` is set, segfile's writes and the recovery
    of a ``.partial`` fail as on a full filesystem (the rest of the system is left alone).

    For the unsealed-segment paths a real full filesystem (tests/helpers/tmpfs.py) is not enough: a
    ``.partial``'s last block usually has room for the 130-byte trailer of its recovery, so whether
    recovery fails on a filled tmpfs is chance. This switch makes it fail until the test clears it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.full = threading.Event()
        real_os, real_recover = segfile.os, segfile.recover_partial
        disk = self

        class _Os:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_os, name)

            @staticmethod
            def write(fd: int, data: Any) -> int:
                if disk.full.is_set():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_os.write(fd, data)

        def recover_partial(partial: Path, signing_key: Any, **expected: Any) -> segfile.SealedSegment:
            if disk.full.is_set():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_recover(partial, signing_key, **expected)

        monkeypatch.setattr(segfile, "os", _Os())
        monkeypatch.setattr(segfile, "recover_partial", recover_partial)


def recorder_stats(camera: str, state: str = "recording") -> RecorderStats:
    """A recorder's stats as the status is built from them (fixed figures; connected while recording)."""
    return RecorderStats(camera=camera, state=state, connected=state == "recording", fps=10.004,
                         bitrate_bps=1234.5, last_packet_monotonic=1.0, last_packet_age_s=0.123,
                         segments=3, bytes=300, error=None, reconnects=0)
