"""Start-up reconciliation on real encrypted segments: recovery, adoption, quarantine, vanished files and
interrupted deletions; and incidents restored from the real audit log into a real catalog."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.audit import AuditLog, tail_entries, verify_audit
from edgerec.catalog import Catalog, IncidentRow
from edgerec.chainstart import KeptFile
from edgerec.errors import CatalogError
from edgerec.incidents import IncidentService, parse_command, unconfirmed_claims
from edgerec.layout import CATALOG_NAME, QUARANTINE_DIR
from edgerec.reconcile import reconcile, restore_incidents
from edgerec.segfile import SegmentWriter
from edgerec.timefmt import rfc3339
from tests.helpers.catalog import MIN, T0, make_config
from tests.helpers.events import from_records, named
from tests.helpers.segments import OpenFails, make_keys, make_meta

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


def test_the_quarantine_line_names_the_number_each_file_claims(env):
    """So that the camera's chain goes on past it (chainstart) and verify finds its hole explained: the
    header's number, when the header can be read and names the camera whose directory holds it."""
    data_dir, keys, catalog, audit = env
    stranger = Ed25519PrivateKey.generate()
    crash_partial(data_dir, keys, sequence=5, signing_key=stranger)
    crash_partial(data_dir, keys, sequence=9, start_ns=T0 + MIN, signing_key=stranger)
    misfiled = crash_partial(data_dir, keys, camera="yard", sequence=40, signing_key=stranger)
    moved = data_dir / "door" / misfiled.relative_to(data_dir / "yard")  # a yard header in door/
    moved.parent.mkdir(parents=True)
    misfiled.rename(moved)
    garbled = data_dir / "gate" / "2026-11-11" / "20261111T000500.000Z.seg.partial"
    garbled.parent.mkdir(parents=True, exist_ok=True)
    garbled.write_bytes(b"EDGERSEG" + bytes(1000))  # a header's worth of bytes, not a header
    report = reconcile(data_dir, catalog, keys.device, audit=audit)
    assert len(report.quarantined) == 4
    [line] = [e for e in tail_entries(data_dir / "audit.log") if e["event"] == "segments_quarantined"]
    claims = {item.split()[0].removeprefix("path="): n for item, n in zip(line["paths"], line["sequences"],
                                                                         strict=True)}
    assert sorted(claims.values(), key=str) == [5, 9, None, None]
    assert claims[garbled.relative_to(data_dir).as_posix()] is None
    assert claims[moved.relative_to(data_dir).as_posix()] is None
    assert line["newest_quarantined"] == {"gate": {"sequence": 9}}


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


@pytest.mark.parametrize("err", [errno.EMFILE, errno.EIO], ids=errno.errorcode.get)
def test_files_that_cannot_be_opened_now_stay_in_place_and_are_taken_at_the_next_start(
        env, monkeypatch, caplog, err):
    """Opening a .partial and a segment the catalog lacks fails for a reason of the system (too many open
    files, an I/O error). Nothing says either file is damaged: both stay where they are (not set aside),
    each error is reported naming its file, and the next reconciliation recovers and adopts them."""
    data_dir, keys, catalog, audit = env
    sealed = write_real(data_dir, keys, sequence=0)
    partial = crash_partial(data_dir, keys, sequence=1, start_ns=T0 + MIN)
    blobs = {p: p.read_bytes() for p in (sealed.path, partial)}
    opens = OpenFails(monkeypatch, sealed.path, partial, err=err)
    with caplog.at_level(logging.ERROR, logger="edgerec.reconcile"):
        report = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    assert opens.failed == 4  # each file's recovery or adoption, then its header (for the number it claims)
    why = os.strerror(err)
    rels = {p: p.relative_to(data_dir).as_posix() for p in blobs}
    assert sorted(report.errors) == sorted([f"path={rels[partial]} cannot recover: {why}; kept in place",
                                            f"path={rels[sealed.path]} cannot read: {why}; kept in place"])
    for line in report.errors:  # each one in the log too, not only counted
        assert any(line in r.getMessage() for r in caplog.records), line
    assert (report.quarantined, report.recovered, report.adopted, report.removed) == ([], [], [], [])
    # Each kept file is named for its camera's chain, which goes on past it; their headers cannot be read
    # either, so their numbers are not known, only their names' times.
    assert sorted(report.kept, key=lambda k: k.path) == sorted(
        [KeptFile("gate", rels[partial], None, T0 + MIN), KeptFile("gate", rels[sealed.path], None, T0)],
        key=lambda k: k.path)
    assert not (data_dir / QUARANTINE_DIR).exists()
    assert {p: p.read_bytes() for p in blobs} == blobs  # both in place, as they were
    assert catalog.segments() == []
    assert "segments_quarantined" not in (audit_events(data_dir) if audit.path.exists() else [])

    opens.stop()  # the next start: the error is gone
    again = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    final = partial.with_name(partial.name.removesuffix(".partial"))
    assert again.errors == [] and again.quarantined == [] and again.kept == []
    assert again.recovered == [final.relative_to(data_dir).as_posix()]
    assert again.adopted == [rels[sealed.path]]
    assert [(r.sequence, r.state) for r in catalog.segments()] == [(0, "sealed"), (1, "recovered")]
    assert sealed.path.read_bytes() == blobs[sealed.path] and not partial.exists()


def test_a_kept_partial_whose_header_reads_names_its_number(env, monkeypatch):
    """Only the recovery's open fails (a bad sector met once): the header read after it names the number
    the file claims, which its camera's chain goes on past."""
    data_dir, keys, catalog, audit = env
    write_real(data_dir, keys, sequence=6)
    partial = crash_partial(data_dir, keys, sequence=7, start_ns=T0 + MIN)
    opens = OpenFails(monkeypatch, partial, err=errno.EIO, times=1)
    report = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    assert opens.failed == 1 and partial.exists()
    assert report.kept == [KeptFile("gate", partial.relative_to(data_dir).as_posix(), 7, T0 + MIN)]


def test_a_kept_uncatalogued_segment_whose_header_reads_names_its_number(env, monkeypatch):
    """A sealed segment the catalog lacks (a crash between the seal's rename and the catalog insert) whose
    adoption meets an error of the system once: it stays in place, named with the number its header
    claims, so its camera's chain goes on past it; the next start adopts it as it is."""
    data_dir, keys, catalog, audit = env
    write_real(data_dir, keys, sequence=6)
    reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    sealed = write_real(data_dir, keys, sequence=7, start_ns=T0 + MIN)
    blob = sealed.path.read_bytes()
    opens = OpenFails(monkeypatch, sealed.path, err=errno.EIO, times=1)
    report = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    rel = sealed.path.relative_to(data_dir).as_posix()
    assert opens.failed == 1 and sealed.path.read_bytes() == blob
    assert report.errors == [f"path={rel} cannot read: {os.strerror(errno.EIO)}; kept in place"]
    assert report.kept == [KeptFile("gate", rel, 7, T0 + MIN)] and report.adopted == []
    again = reconcile(data_dir, catalog, keys.device, keys.device.public_key(), audit=audit)
    assert again.kept == [] and again.adopted == [rel]
    assert [(r.sequence, r.state) for r in catalog.segments()] == [(6, "sealed"), (7, "sealed")]


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
    [line] = [e for e in tail_entries(data_dir / "audit.log") if e["event"] == "segments_missing"]
    # The newest row dropped is named with its digest: the camera's chain goes on after it.
    assert line["newest_removed"] == {"gate": {"sequence": 2, "digest": other_day.digest.hex()}}


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
    [line] = [e for e in tail_entries(data_dir / "audit.log") if e["event"] == "segments_deleted"]
    assert line["reason"] == "interrupted_deletion"
    assert line["newest_removed"] == {"gate": {"sequence": 1, "digest": b.digest}}


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


# ----- incidents restored from the audit log ----------------------------------------------------------------
def record_incidents(data_dir: Path) -> list[IncidentRow]:
    """Two incidents recorded by the real service (A open, B closed), in a catalog then closed."""
    catalog = Catalog.open(data_dir)
    service = IncidentService(catalog, AuditLog(data_dir / "audit.log"), make_config(data_dir))
    try:
        for inc_id, camera in (("A", "gate"), ("B", "*")):
            cmd = parse_command({"action": "open", "id": inc_id, "camera": camera, "reason": f"why {inc_id}",
                                 "from": rfc3339(T0), "to": rfc3339(T0 + 2 * MIN), "by": "ann"},
                                cameras=("gate", "yard"), now_ns=time.time_ns())
            assert service.apply(cmd, time.time_ns()).ok
        close = parse_command({"action": "close", "id": "B", "by": "bob"}, cameras=(), now_ns=0)
        assert service.apply(close, time.time_ns()).ok
        return catalog.incidents()
    finally:
        catalog.close()


def lose_catalog(data_dir: Path) -> None:
    """What an operator does with a damaged catalog: move it (and its WAL files) away."""
    for path in data_dir.glob(CATALOG_NAME + "*"):
        path.rename(path.with_name(path.name + ".damaged"))


def same_incident(restored: IncidentRow, original: IncidentRow) -> bool:
    """Equal but for the times taken from the lines' ts: at most a moment after the command's own."""
    def late(a: int | None, b: int | None) -> bool:  # a: ms precision, never before b
        if a is None or b is None:
            return a is b
        return 0 <= a - b // 10**6 * 10**6 < 2 * 10**9

    untimed = {"opened_ns": 0, "closed_ns": None}
    return (late(restored.opened_ns, original.opened_ns) and late(restored.closed_ns, original.closed_ns)
            and replace(restored, **untimed) == replace(original, **untimed))


def incident_lines(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]


def test_a_new_catalog_gets_the_incidents_back_from_the_audit_log(tmp_path, caplog):
    original = record_incidents(tmp_path)
    lose_catalog(tmp_path)
    catalog = Catalog.open(tmp_path)
    try:
        assert catalog.created and catalog.incidents() == [] and not catalog.incidents_checked()
        caplog.set_level(logging.INFO)
        result = restore_incidents(catalog, AuditLog(tmp_path / "audit.log"))
        assert result is not None and result.chain.ok and result.catalog_created and result.problems == ()
        restored = catalog.incidents()
        assert [r.id for r in restored] == ["A", "B"] and list(result.restored) == restored
        assert all(same_incident(r, o) for r, o in zip(restored, original, strict=True)), (restored, original)
        assert restored[0].is_open and not restored[1].is_open and restored[1].closed_by == "bob"
        assert catalog.incidents_checked() and catalog.incident_changes() >= 2
        line = incident_lines(tmp_path)[-1]
        assert line["event"] == "incidents_restored"
        assert {k: line[k] for k in ("count", "open", "source", "chain_ok", "catalog", "ids")} == {
            "count": 2, "open": 1, "source": "audit log", "chain_ok": True, "catalog": "created",
            "ids": ["A", "B"]}
        assert verify_audit(tmp_path / "audit.log").ok
        warnings = [e for e in from_records(caplog.records) if e.level == "warning"]
        assert named(warnings, "open incident restored from the audit log", id="A", camera="gate")
        assert not [e for e in warnings if e.has(id="B")]  # a closed one holds nothing new: no warning
        # Checked once: the next open finds the mark, and restores and audits nothing more.
        lines = len(incident_lines(tmp_path))
        assert restore_incidents(catalog, AuditLog(tmp_path / "audit.log")) is None
        assert len(incident_lines(tmp_path)) == lines and catalog.incidents() == restored
    finally:
        catalog.close()


def test_restoring_first_leaves_the_start_up_void_check_nothing_to_void(tmp_path):
    record_incidents(tmp_path)
    lose_catalog(tmp_path)
    catalog = Catalog.open(tmp_path)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        service = IncidentService(catalog, audit, make_config(tmp_path))
        # In the other order the void check takes every line of the lost catalog for an interrupted commit.
        assert sorted(unconfirmed_claims(tail_entries(audit.path))) == [("A", "open"), ("B", "close"),
                                                                         ("B", "open")]
        restore_incidents(catalog, audit)
        assert service.void_unrecorded(tail_entries(audit.path)) == []
        assert "incident_not_recorded" not in {e["event"] for e in incident_lines(tmp_path)}
    finally:
        catalog.close()


def test_a_catalog_never_checked_gets_only_what_it_lacks(tmp_path):
    original = record_incidents(tmp_path)
    lose_catalog(tmp_path)
    # A catalog an earlier edgerec made (no restore, no mark) that has since recorded B its own way.
    catalog = Catalog.open(tmp_path)
    try:
        own_b = replace(original[1], reason="recorded again by hand")
        catalog.insert_incident(own_b)
        catalog.close()
        catalog = Catalog.open(tmp_path)
        assert not catalog.created and not catalog.incidents_checked()
        result = restore_incidents(catalog, AuditLog(tmp_path / "audit.log"))
        assert result is not None and [r.id for r in result.restored] == ["A"] and not result.catalog_created
        assert catalog.get_incident("B") == own_b  # what the catalog has is left as it is
        line = incident_lines(tmp_path)[-1]
        assert (line["event"], line["count"], line["open"], line["catalog"]) == (
            "incidents_restored", 1, 1, "existing")
    finally:
        catalog.close()


def test_a_broken_chain_is_said_but_the_incidents_are_restored_anyway(tmp_path, caplog):
    record_incidents(tmp_path)
    log_path = tmp_path / "audit.log"
    lines = log_path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"reason":"why A"', '"reason":"edited"')
    log_path.write_text("".join(lines))
    lose_catalog(tmp_path)
    catalog = Catalog.open(tmp_path)
    try:
        caplog.set_level(logging.ERROR)
        result = restore_incidents(catalog, AuditLog(log_path))
        assert result is not None and not result.chain.ok
        assert [r.id for r in catalog.incidents()] == ["A", "B"]
        line = incident_lines(tmp_path)[-1]
        assert line["event"] == "incidents_restored" and line["chain_ok"] is False
        assert "BROKEN at line 1" in line["chain_problem"]
        assert [e.level for e in from_records(caplog.records) if "hash chain broken" in e.name] == ["error"]
    finally:
        catalog.close()


def test_malformed_incident_lines_are_audited_as_problems(tmp_path):
    audit = AuditLog(tmp_path / "audit.log")
    audit.append("incident_opened", id="GOOD", camera="gate", **{"from": rfc3339(T0)}, to=None, reason="",
                 by="ann", pre_roll_s=0.0, post_roll_s=0.0)
    audit.append("incident_opened", id="BAD", camera="gate", by="ann")  # no window
    with open(audit.path, "ab") as f:
        f.write(b'{"event":"incident_opened","id":"TORN"')  # torn by a power cut: cut, not a problem
    catalog = Catalog.open(tmp_path)
    try:
        result = restore_incidents(catalog, audit)
        assert result is not None and [r.id for r in result.restored] == ["GOOD"]
        assert len(result.problems) == 1 and "incident BAD not restored: field 'from'" in result.problems[0]
        events = incident_lines(tmp_path)
        assert [e["event"] for e in events[-2:]] == ["audit_torn_tail", "incidents_restored"]
        assert events[-1]["problems"] == list(result.problems)
        assert verify_audit(audit.path).ok
    finally:
        catalog.close()


def test_without_an_audit_log_there_is_nothing_to_restore_and_no_log_is_made(tmp_path):
    catalog = Catalog.open(tmp_path)
    try:
        assert restore_incidents(catalog, AuditLog(tmp_path / "audit.log")) is None
        assert catalog.incidents_checked() and not (tmp_path / "audit.log").exists()
    finally:
        catalog.close()


def test_an_unreadable_audit_log_stops_the_restore_and_leaves_the_catalog_unchecked(tmp_path):
    (tmp_path / "audit.log").mkdir()  # not readable as a file, even by root
    catalog = Catalog.open(tmp_path)
    try:
        with pytest.raises(CatalogError, match="incidents not restored: the audit log .* cannot be read"):
            restore_incidents(catalog, AuditLog(tmp_path / "audit.log"))
        assert not catalog.incidents_checked()
    finally:
        catalog.close()


def test_the_process_that_marks_first_restores_the_other_finds_it_done(tmp_path):
    record_incidents(tmp_path)
    lose_catalog(tmp_path)
    first, second = Catalog.open(tmp_path), Catalog.open(tmp_path)
    try:
        audit = AuditLog(tmp_path / "audit.log")
        assert len(restore_incidents(first, audit).restored) == 2
        assert restore_incidents(second, audit) is None
        assert [r.id for r in second.incidents()] == ["A", "B"]
        assert [e["event"] for e in incident_lines(tmp_path)].count("incidents_restored") == 1
    finally:
        first.close()
        second.close()
