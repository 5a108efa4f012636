"""Start-up reconciliation on real encrypted segments: recovery, adoption, quarantine, vanished files and
interrupted deletions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.audit import AuditLog, verify_audit
from edgerec.catalog import Catalog
from edgerec.reconcile import QUARANTINE_DIR, reconcile
from edgerec.segfile import SegmentWriter
from tests.segfile_helpers import make_keys, make_meta
from tests.test_catalog import MIN, T0

PAYLOAD = bytes(range(256)) * 40  # 10 KiB of "TS"


def seg_path(data_dir: Path, camera: str, start_ns: int) -> Path:
    t = datetime.fromtimestamp(start_ns / 1e9, UTC)
    return data_dir / camera / t.strftime("%Y-%m-%d") / (t.strftime("%Y%m%dT%H%M%S.") + "000Z.seg")


def open_writer(data_dir, keys, camera="gate", sequence=0, start_ns=T0, signing_key=None):
    meta = make_meta(camera=camera, sequence=sequence, start_ns=start_ns, monotonic_ns=sequence * MIN)
    writer = SegmentWriter(seg_path(data_dir, camera, start_ns), meta, [keys.recipient_public],
                           signing_key or keys.device, chunk_bytes=1024)
    for i in range(10):
        writer.write(PAYLOAD[i * 1024 : (i + 1) * 1024])
        writer.note(start_ns + (i + 1) * 6 * 10**9, (i + 1) * 25)
    return writer


def write_real(data_dir, keys, **kw):
    return open_writer(data_dir, keys, **kw).close()


def crash_partial(data_dir, keys, **kw) -> Path:
    """A .partial as a power cut leaves it: chunks written, no final chunk, no trailer, torn tail."""
    writer = open_writer(data_dir, keys, **kw)
    snapshot = writer.partial_path.read_bytes()
    writer.abort()
    writer.partial_path.write_bytes(snapshot + b"\x01\x00\x00")  # a few bytes of a chunk being written
    return writer.partial_path


@pytest.fixture
def env(tmp_path):
    keys = make_keys()
    catalog = Catalog.open(tmp_path)
    audit = AuditLog(tmp_path / "audit.log")
    yield tmp_path, keys, catalog, audit
    catalog.close()


def audit_events(data_dir):
    return [json.loads(line)["event"] for line in (data_dir / "audit.log").read_text().splitlines()]


def test_partial_left_by_a_crash_is_recovered_and_catalogued(env):
    data_dir, keys, catalog, audit = env
    partial = crash_partial(data_dir, keys)
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    final = partial.with_name(partial.name.removesuffix(".partial"))
    rel = final.relative_to(data_dir).as_posix()
    assert report.recovered == [rel]
    assert final.exists() and not partial.exists()
    row = catalog.segment_by_path(rel)
    assert row is not None and row.state == "recovered" and row.frames > 0 and row.start_ns == T0
    assert row.end_ns > T0
    assert audit_events(data_dir) == ["segments_recovered"]
    assert any("recovered" in line for line in report.lines())


def test_partial_without_a_whole_header_is_removed(env):
    data_dir, keys, catalog, audit = env
    partial = data_dir / "gate" / "2026-11-11" / "20261111T000000.000Z.seg.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"EDGERSEG\x00\x01")
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert report.removed == [partial.relative_to(data_dir).as_posix()]
    assert not partial.exists() and catalog.segments() == []


def test_unrecoverable_partial_is_quarantined_not_deleted(env):
    data_dir, keys, catalog, audit = env
    partial = crash_partial(data_dir, keys, signing_key=Ed25519PrivateKey.generate())  # another device's
    rel = partial.relative_to(data_dir).as_posix()
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert len(report.quarantined) == 1 and rel in report.quarantined[0]
    assert (data_dir / QUARANTINE_DIR / rel).exists() and not partial.exists()
    assert catalog.segments() == []
    assert "segments_quarantined" in audit_events(data_dir)


def test_segment_missing_from_the_catalog_is_adopted(env):
    data_dir, keys, catalog, audit = env
    sealed = write_real(data_dir, keys, sequence=4)
    report = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    rel = sealed.path.relative_to(data_dir).as_posix()
    assert report.adopted == [rel]
    row = catalog.segment_by_path(rel)
    assert row.sequence == 4 and row.digest == sealed.digest.hex() and row.size_bytes == sealed.size_bytes
    assert row.end_ns == sealed.end_ns and row.state == "sealed"


def test_damaged_or_foreign_segment_not_in_the_catalog_is_quarantined(env):
    data_dir, keys, catalog, audit = env
    good = write_real(data_dir, keys, sequence=0)
    stranger = Ed25519PrivateKey.generate()
    foreign = write_real(data_dir, keys, sequence=1, start_ns=T0 + MIN, signing_key=stranger)
    damaged = write_real(data_dir, keys, sequence=2, start_ns=T0 + 2 * MIN)
    blob = bytearray(damaged.path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.path.write_bytes(bytes(blob))
    report = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    assert report.adopted == [good.path.relative_to(data_dir).as_posix()]
    assert len(report.quarantined) == 2
    assert not foreign.path.exists() and not damaged.path.exists()
    assert (data_dir / QUARANTINE_DIR / damaged.path.relative_to(data_dir)).exists()


def test_rows_of_vanished_files_are_dropped(env):
    data_dir, keys, catalog, audit = env
    kept = write_real(data_dir, keys, sequence=0)
    gone = write_real(data_dir, keys, sequence=1, start_ns=T0 + MIN)
    other_day = write_real(data_dir, keys, sequence=2, start_ns=T0 + 86_400 * 10**9)
    for s in (kept, gone, other_day):
        catalog.add_segment(s)
    gone.path.unlink()
    other_day.path.unlink()
    other_day.path.parent.rmdir()  # the whole directory vanished
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    expected = sorted(s.path.relative_to(data_dir).as_posix() for s in (gone, other_day))
    assert sorted(report.dropped) == expected
    assert [r.sequence for r in catalog.segments()] == [0]
    assert "segments_missing" in audit_events(data_dir)


def test_interrupted_deletion_is_finished(env):
    data_dir, keys, catalog, audit = env
    a = catalog.add_segment(write_real(data_dir, keys, sequence=0))
    b = catalog.add_segment(write_real(data_dir, keys, sequence=1, start_ns=T0 + MIN))
    catalog.mark_deleting([a.id, b.id], T0)
    (data_dir / b.path).unlink()  # the crash came after one unlink
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert sorted(report.finished_deletions) == sorted([a.path, b.path])
    assert not (data_dir / a.path).exists() and catalog.segments() == []
    assert report.adopted == [] and report.dropped == []
    assert verify_audit(data_dir / "audit.log").ok


def test_agreeing_catalog_and_disk_give_an_empty_report(env):
    data_dir, keys, catalog, audit = env
    for i in range(3):
        catalog.add_segment(write_real(data_dir, keys, sequence=i, start_ns=T0 + i * MIN))
    crash_partial(data_dir, keys, sequence=3, start_ns=T0 + 3 * MIN, signing_key=Ed25519PrivateKey.generate())
    first = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert first.changed and len(first.quarantined) == 1
    second = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert not second.changed and second.lines() == []
    assert len(catalog.segments()) == 3
