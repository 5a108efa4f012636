"""The SQLite catalog: schema and migrations, segments, gaps, incidents, summaries, time plausibility,
the delete protocol helpers, and use from several threads. Real SQLite in tmp dirs."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from edgerec.catalog import SCHEMA_VERSION, Catalog, IncidentRow
from edgerec.clock import Redate
from edgerec.errors import CatalogError
from edgerec.holds import merge_windows
from edgerec.layout import CATALOG_NAME
from tests.helpers.catalog import DAY, MIN, T0, S, add_segment, make_config, sealed


@pytest.fixture
def cat(tmp_path):
    c = Catalog.open(tmp_path)
    yield c
    c.close()


def test_open_creates_a_versioned_wal_catalog(tmp_path):
    Catalog.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / CATALOG_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"segments", "incidents", "gaps", "camera_totals"} <= tables
    conn.close()
    Catalog.open(tmp_path).close()  # reopening an up-to-date catalog changes nothing


def test_newer_schema_is_refused_with_advice(tmp_path):
    Catalog.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / CATALOG_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="upgrade edgerec"):
        Catalog.open(tmp_path)


def test_damaged_catalog_is_reported_with_what_to_do(tmp_path):
    (tmp_path / CATALOG_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="rebuilt from the segment files"):
        Catalog.open(tmp_path)


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(CatalogError):
        Catalog.open(tmp_path / "nope")


def test_segment_rows_round_trip_and_add_is_idempotent(cat):
    seg = sealed(cat.data_dir, "gate", 3, T0, size=1234)
    row = cat.add_segment(seg)
    assert row.camera == "gate" and row.sequence == 3 and row.size_bytes == 1234
    assert row.path == seg.path.relative_to(cat.data_dir).as_posix() and not row.path.startswith("/")
    assert row.start_ns == T0 and row.end_ns == T0 + MIN and row.time_ok and row.digest == seg.digest.hex()
    assert row.state == "sealed" and row.clock_synced and row.boot_id == "boot-a"
    again = cat.add_segment(seg)
    assert again.id == row.id
    assert cat.totals() == (1, 1234)
    assert cat.absolute_path(row) == seg.path.resolve()


def test_segment_outside_data_dir_is_refused(cat, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(CatalogError, match="not inside"):
        cat.add_segment(sealed(other, "gate", 1, T0))


def test_segments_query_returns_overlapping_in_order(cat):
    for i in range(10):
        add_segment(cat, "gate", i, T0 + i * MIN)
        add_segment(cat, "yard", i, T0 + i * MIN + 30 * S)
    rows = cat.segments("gate", T0 + 2 * MIN + S, T0 + 4 * MIN)
    assert [r.sequence for r in rows] == [2, 3, 4]
    assert [r.sequence for r in cat.segments("gate")] == list(range(10))
    both = cat.segments(None, T0 + 9 * MIN + 45 * S, None)
    assert {(r.camera, r.sequence) for r in both} == {("gate", 9), ("yard", 9)}
    assert cat.cameras() == ["gate", "yard"]


def test_last_segment_follows_the_sequence_not_the_clock(cat):
    add_segment(cat, "gate", 0, T0 + DAY)
    add_segment(cat, "gate", 1, T0)  # the clock went back: an earlier start but a later sequence
    assert cat.last_segment("gate").sequence == 1
    assert cat.last_segment("yard") is None


def test_summaries_come_from_maintained_totals(cat):
    for i in range(5):
        add_segment(cat, "gate", i, T0 + i * MIN, size=100)
    add_segment(cat, "yard", 0, T0 + 30 * S, size=7)
    s = cat.camera_summaries()
    assert s["gate"].segments == 5 and s["gate"].bytes == 500
    assert s["gate"].oldest_start_ns == T0 and s["gate"].newest_end_ns == T0 + 5 * MIN
    assert s["yard"].bytes == 7
    gate_ids = [r.id for r in cat.segments("gate")][:2]
    cat.drop(gate_ids)
    s = cat.camera_summaries()
    assert s["gate"].segments == 3 and s["gate"].bytes == 300 and s["gate"].oldest_start_ns == T0 + 2 * MIN
    assert cat.oldest_start_ns() == T0 + 30 * S
    cat.drop([r.id for r in cat.segments("yard")])
    assert "yard" not in cat.camera_summaries()


def test_delete_protocol_marks_then_drops(cat):
    rows = [add_segment(cat, "gate", i, T0 + i * MIN) for i in range(3)]
    cat.mark_deleting([rows[0].id], T0 + DAY)
    assert [r.id for r in cat.marked_deleting()] == [rows[0].id]
    assert cat.marked_deleting()[0].deleting_ns == T0 + DAY
    # Marked rows are not candidates again.
    assert rows[0].id not in [r.id for r in cat.expired_candidates("gate", T0 + DAY)]
    assert rows[0].id not in [r.id for r in cat.oldest_segments(10)]
    cat.drop([rows[0].id])
    assert cat.marked_deleting() == [] and len(cat.segments()) == 2


def test_many_ids_are_marked_and_dropped_in_chunks(cat):
    rows = [add_segment(cat, "gate", i, T0 + i * MIN, write=False) for i in range(1200)]
    ids = [r.id for r in rows]
    cat.mark_deleting(ids, T0)
    assert len(cat.marked_deleting()) == 1200
    cat.drop(ids)
    assert cat.totals() == (0, 0)


def test_expired_candidates_and_oldest_pages(cat):
    for i in range(6):
        add_segment(cat, "gate", i, T0 + i * MIN)
        add_segment(cat, "yard", i, T0 + i * MIN + S)
    assert [r.sequence for r in cat.expired_candidates("gate", T0 + 3 * MIN)] == [0, 1, 2]
    first = cat.oldest_segments(4)
    assert [(r.camera, r.sequence) for r in first] == [("gate", 0), ("yard", 0), ("gate", 1), ("yard", 1)]
    nxt = cat.oldest_segments(4, (first[-1].start_ns, first[-1].id))
    assert [(r.camera, r.sequence) for r in nxt] == [("gate", 2), ("yard", 2), ("gate", 3), ("yard", 3)]


def test_time_before_release_date_is_marked_implausible(cat):
    row = add_segment(cat, "gate", 0, 0)  # a Pi that booted at 1970
    assert not row.time_ok
    assert cat.suspect_segments() == [row]


def test_time_going_back_behind_previous_segment_is_marked_implausible(cat):
    add_segment(cat, "gate", 0, T0)
    add_segment(cat, "gate", 1, T0 + MIN)
    back = add_segment(cat, "gate", 2, T0 - 3600 * S)  # fake-hwclock restored an hour-old time
    assert not back.time_ok
    # Still behind the last plausible segment: still suspect (not compared with the suspect one).
    assert not add_segment(cat, "gate", 3, T0 - 3600 * S + MIN).time_ok
    assert add_segment(cat, "gate", 4, T0 + 2 * MIN).time_ok
    assert cat.newest_plausible_end_ns() == T0 + 3 * MIN
    # Another camera's history does not make this one suspect.
    assert add_segment(cat, "yard", 0, T0 - DAY).time_ok


def test_redates_keep_the_recorded_start(cat):
    row = add_segment(cat, "gate", 0, 100 * S)
    cat.apply_redates([Redate(row.id, T0, T0 + MIN)])
    new = cat.segment_by_id(row.id)
    assert new.start_ns == T0 and new.end_ns == T0 + MIN and new.time_ok and new.recorded_start_ns == 100 * S
    assert cat.suspect_segments() == []


def test_gaps_are_stored_queried_counted_and_pruned(cat):
    cat.add_gap("gate", T0, T0 + MIN, "camera_down")
    cat.add_gap("gate", T0 + DAY, T0 + DAY + MIN, "source_error")
    cat.add_gap("yard", T0 + 5 * S, T0 + 10 * S, "camera_down")
    assert [g.reason for g in cat.gaps("gate")] == ["camera_down", "source_error"]
    assert [g.camera for g in cat.gaps(None, T0 + 7 * S, T0 + 8 * S)] == ["gate", "yard"]
    assert cat.count_gaps("gate") == 2 and cat.count_gaps("nobody") == 0
    assert cat.prune_gaps(T0 + DAY) == 2
    assert [g.reason for g in cat.gaps()] == ["source_error"]


def test_incident_rows_and_windows(cat):
    inc = IncidentRow("INC-1", "gate", T0, None, "theft", "officer", T0 + DAY, pre_roll_ns=MIN,
                      post_roll_ns=MIN)
    cat.insert_incident(inc)
    got = cat.get_incident("INC-1")
    assert got == inc and got.is_open and got.hold_start_ns == T0 - MIN and got.hold_end_ns is None
    cat.close_incident("INC-1", T0 + 2 * DAY, "boss")
    closed = cat.get_incident("INC-1")
    assert closed.closed_ns == T0 + 2 * DAY and closed.closed_by == "boss"
    assert closed.hold_end_ns == T0 + 2 * DAY + MIN  # open-ended: held until closed (+ post-roll)
    assert closed.holds_at(T0 + 8 * DAY, 7 * DAY) and not closed.holds_at(T0 + 9 * DAY, 7 * DAY)
    assert cat.incidents(open_only=True) == []
    assert [i.id for i in cat.incidents(relevant_since_ns=T0 + 3 * DAY)] == []
    assert [i.id for i in cat.incidents()] == ["INC-1"]
    assert closed.to_json_dict()["state"] == "closed"


def test_held_totals_count_each_segment_once(cat):
    for i in range(10):
        add_segment(cat, "gate", i, T0 + i * MIN, size=10)
        add_segment(cat, "yard", i, T0 + i * MIN, size=1)
    cat.insert_incident(IncidentRow("A", "gate", T0 + 2 * MIN, T0 + 4 * MIN, "", "", T0))
    cat.insert_incident(IncidentRow("B", "*", T0 + 3 * MIN, T0 + 3 * MIN, "", "", T0))
    # A holds gate 1..4 (touching boundaries count), B holds 2..3 of both cameras.
    assert cat.held_totals(T0, 7 * DAY) == (4 + 2, 40 + 2)
    assert cat.window_totals("gate", T0 + 2 * MIN, T0 + 4 * MIN) == (4, 40)
    assert cat.window_totals("*", T0 + 3 * MIN, T0 + 3 * MIN) == (4, 22)
    cfg = make_config(cat.data_dir)
    assert cat.held_bytes(T0, cfg.incidents) == 42
    cat.close_incident("A", T0, "x")
    assert cat.held_bytes(T0 + 8 * DAY, cfg.incidents) == 22  # A released; the cached 42 is not reused


def test_merge_windows_joins_overlaps_and_open_ends():
    assert merge_windows([(5, 10), (0, 3), (8, 12)]) == [(0, 3), (5, 12)]
    assert merge_windows([(0, 3), (4, 6)], join_gap_ns=2) == [(0, 6)]
    assert merge_windows([(0, None), (5, 6)]) == [(0, None)]


def test_paths_in_dir_and_iter_paths(cat):
    a = add_segment(cat, "gate", 0, T0)
    add_segment(cat, "gate", 1, T0 + DAY)
    parent = a.path.rsplit("/", 1)[0]
    assert list(cat.paths_in_dir(parent)) == ["00000000.seg"]
    assert [p for _, p in cat.iter_paths(page=1)] == sorted(r.path for r in cat.segments())


def test_threads_share_one_catalog(cat):
    errors = []

    def recorder(camera):
        try:
            for i in range(50):
                add_segment(cat, camera, i, T0 + i * MIN, write=False)
                cat.last_segment(camera)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=recorder, args=(f"cam{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cat.totals()[0] == 200
    assert all(s.segments == 50 for s in cat.camera_summaries().values())


def test_transaction_rolls_back_every_write_on_error(cat):
    with pytest.raises(RuntimeError), cat.transaction():
        cat.insert_incident(IncidentRow("X", "gate", T0, None, "", "", T0))
        add_segment(cat, "gate", 0, T0)
        raise RuntimeError("audit failed")
    assert cat.get_incident("X") is None and cat.segments() == []


def test_second_process_sees_commits(cat):
    add_segment(cat, "gate", 0, T0)
    other = Catalog.open(cat.data_dir)
    try:
        assert len(other.segments()) == 1
    finally:
        other.close()


def test_sqlite_failures_become_catalog_errors_and_roll_back(cat):
    inc = IncidentRow("DUP", "gate", T0, None, "", "", T0)
    cat.insert_incident(inc)
    with pytest.raises(CatalogError, match="write failed"):
        cat.insert_incident(inc)
    assert len(cat.incidents()) == 1
    cat.insert_incident(IncidentRow("NEXT", "gate", T0, None, "", "", T0 + 1))  # the connection still works
    assert len(cat.incidents()) == 2


def test_incident_changes_count_opens_and_closes_seen_by_every_connection(tmp_path):
    first = Catalog.open(tmp_path)
    second = Catalog.open(tmp_path)
    try:
        assert first.incident_changes() == 0 and first.count_open_incidents() == 0
        first.insert_incident(IncidentRow("A", "gate", T0, None, "", "", T0))
        second.insert_incident(IncidentRow("B", "*", T0, T0 + MIN, "", "", T0))
        assert second.incident_changes() == first.incident_changes() == 2
        second.close_incident("A", T0 + DAY, "boss")
        assert first.incident_changes() == 3 and first.count_open_incidents() == 1
        with pytest.raises(CatalogError), first.transaction():  # a rolled-back open is not counted
            first.insert_incident(IncidentRow("C", "gate", T0, None, "", "", T0))
            raise CatalogError("audit line not written")
        assert second.incident_changes() == 3 and second.get_incident("C") is None
    finally:
        first.close()
        second.close()
