"""Catalog rows for tests: a plausible time base, a ``Config`` for the catalog's users (retention,
incidents, reconciliation) and sealed segments added without recording anything."""

from __future__ import annotations

from pathlib import Path

from edgerec.catalog import Catalog
from edgerec.config import CameraConfig, Config, IncidentsConfig, RetentionConfig
from edgerec.segfile import SealedSegment, SegmentMeta
from edgerec.walltime import RELEASE_FLOOR_NS

S = 1_000_000_000
MIN = 60 * S
DAY = 86_400 * S
T0 = RELEASE_FLOOR_NS + 10 * DAY  # 2026-11-11, a plausible time


def make_config(data_dir: Path, cameras=("gate", "yard"), *, days=28.0, camera_days=None, min_free_bytes=None,
                min_free_pct=None, grace_days=7.0, pre_roll_s=60.0, post_roll_s=60.0) -> Config:
    camera_days = camera_days or {}
    return Config(
        device_id="pi-test", data_dir=data_dir, recipients=(),
        cameras=tuple(CameraConfig(c, "testsrc", retention_days=camera_days.get(c)) for c in cameras),
        retention=RetentionConfig(days=days, min_free_bytes=min_free_bytes, min_free_pct=min_free_pct),
        incidents=IncidentsConfig(pre_roll_s=pre_roll_s, post_roll_s=post_roll_s,
                                  release_grace_days=grace_days),
    )


def sealed(data_dir: Path, camera: str, sequence: int, start_ns: int, *, duration_ns: int = MIN,
           size: int = 1000, write: bool = True, boot_id: str = "boot-a", mono_ns: int | None = None,
           synced: bool = True) -> SealedSegment:
    """A SealedSegment at <camera>/<date>/<seq>.seg; ``write`` creates a plain file of ``size`` bytes."""
    from datetime import UTC, datetime

    day = datetime.fromtimestamp(start_ns / 1e9, UTC).strftime("%Y-%m-%d")
    path = data_dir / camera / day / f"{sequence:08d}.seg"
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
    meta = SegmentMeta("pi-test", camera, sequence, start_ns, synced, boot_id,
                       sequence * MIN if mono_ns is None else mono_ns, "h264", "mpegts")
    return SealedSegment(path, meta, sequence.to_bytes(32, "big"), size, 1, size, 25, start_ns + duration_ns,
                         "sealed")


def wall_rclock(meta, end_ns: int) -> int:
    """A retention clock that agrees with the wall clock (a healthy device): a segment ends, on it, at its
    recorded end. Unit tests of the policy use it; the clock's own rules are tested in
    test_retentionclock.py and through the daemon in test_time_attacks.py."""
    return end_ns


def add_segment(catalog: Catalog, camera: str, sequence: int, start_ns: int, **kw):
    if catalog.rclock_stamp is None:
        catalog.rclock_stamp = wall_rclock
    return catalog.add_segment(sealed(catalog.data_dir, camera, sequence, start_ns, **kw))
