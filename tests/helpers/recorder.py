"""A recorder under test with its sinks: ``make_rig`` builds a ``Recorder`` that collects the segments it
seals and the gaps it reports, plus ways to read the footage back and check the hash chain."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import segfile
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.recorder import ChainState, Recorder


@dataclass
class Rig:
    recorder: Recorder
    data_dir: Path
    private_key: X25519PrivateKey
    sealed: list[segfile.SealedSegment] = field(default_factory=list)
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)


def make_rig(tmp_path: Path, camera: CameraConfig, **kwargs: Any) -> Rig:
    private_key = X25519PrivateKey.generate()
    data_dir = tmp_path / "data"
    sealed: list[segfile.SealedSegment] = []
    gaps: list[tuple[str, int, int, str]] = []
    options: dict[str, Any] = {
        "segment_seconds": 1.0,
        "durability": DurabilityConfig(flush_seconds=0.5, fsync_seconds=1.0),
        "chain": ChainState(next_sequence=7, prev_digest=bytes(range(32))),
        "rand": lambda: 0.0,
    }
    options.update(kwargs)
    recorder = Recorder(camera, data_dir=data_dir, device_id="pi-test", recipients=[private_key.public_key()],
                        signing_key=Ed25519PrivateKey.generate(), on_sealed=sealed.append,
                        on_gap=lambda *gap: gaps.append(gap), **options)
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
