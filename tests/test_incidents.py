"""Incident commands: the shared parser, hold windows, and the service (idempotence, durability, audit)."""

from __future__ import annotations

import errno
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import replace as dc_replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.audit import AuditLog, tail_entries, verify_audit
from edgerec.catalog import Catalog, IncidentRow
from edgerec.errors import CatalogError, CommandError
from edgerec.holds import WindowIndex, holds
from edgerec.incidents import (
    IncidentService,
    command_result_for_error,
    incidents_from_audit,
    parse_command,
    unconfirmed_claims,
    window_limit_problem,
)
from edgerec.spacereserve import SpaceReserve, make_reserve
from edgerec.timefmt import parse_rfc3339, parse_time, rfc3339
from tests.helpers.audit import counted_incident_lines
from tests.helpers.catalog import DAY, MIN, T0, add_segment, make_config
from tests.helpers.daemon import run_cli, write_config

CAMERAS = ("gate", "yard")
NOW = T0 + DAY


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 1_000_000_000


def parse(obj):
    return parse_command(obj, cameras=CAMERAS, now_ns=NOW)


OPEN = {"action": "open", "id": "INC-2026-0042", "camera": "gate", "from": "2026-11-20T09:55:00Z",
        "to": "2026-11-20T10:30:00Z", "reason": "bike stolen", "by": "officer"}


# ----- parsing ------------------------------------------------------------------------------------------
def test_full_open_command_parses():
    cmd = parse(OPEN)
    assert cmd.action == "open" and cmd.id == "INC-2026-0042" and cmd.camera == "gate"
    assert cmd.from_ns == ns("2026-11-20T09:55:00Z") and cmd.to_ns == ns("2026-11-20T10:30:00Z")
    assert cmd.reason == "bike stolen" and cmd.by == "officer"


def test_open_defaults_from_to_now_and_to_open_ended():
    cmd = parse({"action": "open", "id": "A", "camera": "*"})
    assert cmd.from_ns == NOW and cmd.to_ns is None and cmd.camera == "*"
    assert parse({**OPEN, "to": None}).to_ns is None


def test_close_command_parses():
    cmd = parse({"action": "close", "id": "INC-1", "by": "boss"})
    assert cmd.action == "close" and cmd.id == "INC-1" and cmd.by == "boss" and cmd.camera is None


@pytest.mark.parametrize(("obj", "message"), [
    ({**OPEN, "colour": "red"}, "unknown field"),
    ({"action": "close", "id": "A", "camera": "gate"}, "unknown field"),
    ({**OPEN, "action": "delete"}, "unknown action"),
    ({k: v for k, v in OPEN.items() if k != "action"}, "'action' is missing"),
    ({**OPEN, "action": 1}, "'action' must be a string"),
    ({k: v for k, v in OPEN.items() if k != "id"}, "'id' is missing"),
    ({**OPEN, "id": ""}, "'id'"),
    ({**OPEN, "id": "x" * 65}, "'id'"),
    ({**OPEN, "id": "has space"}, "'id'"),
    ({**OPEN, "id": "a/b"}, "'id'"),
    ({**OPEN, "id": 42}, "'id' must be a string, not a number"),
    ({**OPEN, "camera": "garage"}, "unknown camera"),
    ({**OPEN, "camera": ["gate"]}, "'camera' must be a string, not an array"),
    ({k: v for k, v in OPEN.items() if k != "camera"}, "'camera' is missing"),
    ({**OPEN, "from": "yesterday"}, "'from'"),
    ({**OPEN, "from": "2026-11-20 09:55"}, "'from'"),  # no offset: not RFC 3339
    ({**OPEN, "from": 1_700_000_000}, "'from' must be an RFC 3339 time string, not a number"),
    ({**OPEN, "to": "2026-11-20T09:00:00Z"}, "'to' is before 'from'"),
    ({**OPEN, "to": True}, "'to' must be an RFC 3339 time string, not a boolean"),
    ({**OPEN, "reason": "x" * 1001}, "'reason' is too long"),
    ({**OPEN, "by": {"name": "x"}}, "'by' must be a string, not an object"),
    ({**OPEN, "reason": "line\nbreak"}, "field .reason. contains a control character .U\\+000A"),
    ("open", "must be an object"),
])
def test_bad_commands_are_refused_naming_the_problem(obj, message):
    with pytest.raises(CommandError, match=message) as info:
        parse(obj)
    assert "\n" not in str(info.value)


def test_rfc3339_variants():
    assert parse_rfc3339("2026-11-20T09:55:00Z") == ns("2026-11-20T09:55:00Z")
    assert parse_rfc3339("2026-11-20T10:55:00+01:00") == ns("2026-11-20T09:55:00Z")
    assert parse_rfc3339("2026-11-20t09:55:00.123456789z") == ns("2026-11-20T09:55:00Z") + 123_456_789
    assert parse_rfc3339("2026-11-20T09:55:00.5Z") == ns("2026-11-20T09:55:00Z") + 500_000_000
    with pytest.raises(ValueError):
        parse_rfc3339("2026-13-20T09:55:00Z")


def test_parse_time_accepts_local_times_for_the_cli():
    local = datetime(2026, 11, 20, 9, 55).timestamp()
    assert parse_time("2026-11-20 09:55") == int(local) * 1_000_000_000
    assert parse_time("2026-11-20 09:55:30") == int(local + 30) * 1_000_000_000
    assert parse_time("2026-11-20T09:55:00Z") == ns("2026-11-20T09:55:00Z")
    with pytest.raises(CommandError, match="RFC 3339"):
        parse_time("next tuesday")


@given(st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z"))
def test_every_well_formed_id_is_accepted(incident_id):
    assert parse({**OPEN, "id": incident_id}).id == incident_id


@given(st.text(min_size=1, max_size=80).filter(lambda s: not all(c.isascii() and (c.isalnum() or c in "._:-")
                                                                   for c in s) or len(s) > 64))
def test_malformed_ids_are_refused(incident_id):
    with pytest.raises(CommandError):
        parse({**OPEN, "id": incident_id})


@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=30)
                       | st.lists(st.integers(), max_size=2), max_size=8))
def test_arbitrary_objects_never_raise_anything_but_command_error(obj):
    try:
        parse(obj)
    except CommandError:
        pass


# ----- hold windows -------------------------------------------------------------------------------------
def test_hold_window_semantics():
    inc = IncidentRow("A", "gate", T0, T0 + 10 * MIN, "", "", T0, pre_roll_ns=MIN, post_roll_ns=MIN)
    grace = 7 * DAY
    assert holds(inc, "gate", T0 - 2 * MIN, T0 - MIN, NOW, grace)  # pre-roll reaches back
    assert not holds(inc, "gate", T0 - 3 * MIN, T0 - 2 * MIN - 1, NOW, grace)
    assert holds(inc, "gate", T0 + 11 * MIN, T0 + 12 * MIN, NOW, grace)  # post-roll
    assert not holds(inc, "yard", T0, T0 + MIN, NOW, grace)  # another camera
    star = IncidentRow("B", "*", T0, None, "", "", T0)
    assert holds(star, "yard", T0 + 300 * DAY, T0 + 300 * DAY + MIN, NOW, grace)  # open-ended: new footage


def test_window_index_finds_overlaps_across_merged_blocks():
    idx = WindowIndex([("gate", 0, 10, "a"), ("gate", 5, 20, "b"), ("*", 30, None, "c"), ("yard", 0, 1, "d")])
    assert idx.any_overlap("gate", 15, 16) and not idx.any_overlap("gate", 21, 29)
    assert sorted(idx.overlapping("gate", 9, 12)) == ["a", "b"]
    assert idx.overlapping("gate", 11, 12) == ["b"]
    assert idx.overlapping("yard", 1000, 2000) == ["c"]
    assert idx.overlapping("other", 0, 5) == []


# ----- the service --------------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path):
    catalog = Catalog.open(tmp_path)
    audit = AuditLog(tmp_path / "audit.log")
    service = IncidentService(catalog, audit, make_config(tmp_path))
    yield service, catalog, tmp_path
    catalog.close()


def audit_events(path):
    return [json.loads(line) for line in (path / "audit.log").read_text().splitlines()]


def open_cmd(**overrides):
    return parse({**OPEN, **overrides})


def test_open_is_committed_and_audited_before_returning(env):
    service, catalog, data_dir = env
    result = service.apply(open_cmd(), NOW)
    assert result.ok and not result.duplicate and result.error is None
    other = Catalog.open(data_dir)  # another connection sees it: committed
    try:
        row = other.get_incident("INC-2026-0042")
    finally:
        other.close()
    assert row is not None and row.camera == "gate" and row.pre_roll_ns == 60 * 10**9 and row.opened_ns == NOW
    events = audit_events(data_dir)
    assert events[-1]["event"] == "incident_opened" and events[-1]["id"] == "INC-2026-0042"
    assert events[-1]["from"] == "2026-11-20T09:55:00.000Z" and events[-1]["by"] == "officer"
    assert verify_audit(data_dir / "audit.log").ok


def test_same_open_again_is_a_duplicate(env):
    service, _, data_dir = env
    service.apply(open_cmd(), NOW)
    again = service.apply(open_cmd(reason="other words"), NOW + MIN)
    assert again.ok and again.duplicate
    assert len(audit_events(data_dir)) == 1


def test_resent_open_without_from_is_a_duplicate(env):
    service, catalog, _ = env
    first = parse_command({"action": "open", "id": "NOW-1", "camera": "*"}, cameras=CAMERAS, now_ns=NOW)
    again = parse_command({"action": "open", "id": "NOW-1", "camera": "*"}, cameras=CAMERAS, now_ns=NOW + MIN)
    assert service.apply(first, NOW).ok
    result = service.apply(again, NOW + MIN)
    assert result.ok and result.duplicate and catalog.get_incident("NOW-1").from_ns == NOW


def test_conflicting_open_is_an_error(env):
    service, catalog, _ = env
    service.apply(open_cmd(), NOW)
    result = service.apply(open_cmd(camera="yard"), NOW)
    assert not result.ok and "different window or camera" in result.error
    assert not service.apply(open_cmd(to=None), NOW).ok
    assert catalog.get_incident("INC-2026-0042").camera == "gate"


def test_close_then_close_again_is_a_duplicate_and_unknown_close_is_an_error(env):
    service, catalog, data_dir = env
    service.apply(open_cmd(), NOW)
    closed = service.apply(parse({"action": "close", "id": "INC-2026-0042", "by": "boss"}), NOW + DAY)
    assert closed.ok and not closed.duplicate
    assert catalog.get_incident("INC-2026-0042").closed_ns == NOW + DAY
    again = service.apply(parse({"action": "close", "id": "INC-2026-0042"}), NOW + 2 * DAY)
    assert again.ok and again.duplicate
    assert catalog.get_incident("INC-2026-0042").closed_ns == NOW + DAY
    unknown = service.apply(parse({"action": "close", "id": "NOPE"}), NOW)
    assert not unknown.ok and "unknown incident" in unknown.error
    # The refused close is on the record too (docs/security.md, input at the edges).
    assert [e["event"] for e in audit_events(data_dir)] == ["incident_opened", "incident_closed",
                                                             "incident_refused"]
    assert audit_events(data_dir)[1]["by"] == "boss"


def test_reopen_after_close_stays_closed_and_is_a_duplicate(env):
    service, catalog, _ = env
    service.apply(open_cmd(), NOW)
    service.apply(parse({"action": "close", "id": "INC-2026-0042"}), NOW + DAY)
    result = service.apply(open_cmd(), NOW + 2 * DAY)  # a redelivered old open
    assert result.ok and result.duplicate and not catalog.get_incident("INC-2026-0042").is_open


def test_held_counts_in_the_reply(env):
    service, catalog, _ = env
    start = ns("2026-11-20T09:55:00Z")
    for i in range(60):
        add_segment(catalog, "gate", i, start - 10 * MIN + i * MIN, size=100)
        add_segment(catalog, "yard", i, start - 10 * MIN + i * MIN, size=1)
    result = service.apply(open_cmd(), NOW)
    # 09:55 - 1 min pre-roll .. 10:30 + 1 min post-roll on gate: segments starting 09:53 .. 10:31
    assert result.held_segments == 39 and result.held_bytes == 3900
    star = service.apply(parse({**OPEN, "id": "B", "camera": "*", "to": None}), NOW + 1)
    assert star.held_segments == 2 * (60 - 8)
    payload = service.incidents_payload()
    assert [p["id"] for p in payload] == ["INC-2026-0042", "B"] and payload[0]["held_segments"] == 39


def test_failed_audit_append_leaves_nothing_recorded(env, tmp_path):
    service, catalog, _ = env

    class BrokenAudit:
        def append(self, event, **fields):
            raise OSError(28, "No space left on device")

    service.audit = BrokenAudit()
    result = service.apply(open_cmd(), NOW)
    assert not result.ok and "not recorded" in result.error and "No space" in result.error
    assert catalog.get_incident("INC-2026-0042") is None


# ----- a full disk: the space reserve, and audit lines for commits that failed ------------------------------
def catalog_incident_lines(catalog):
    """The (event, id) lines the catalog's incidents call for, in the order of opening."""
    out = []
    for inc in catalog.incidents():
        out.append(("incident_opened", inc.id))
        if inc.closed_ns is not None:
            out.append(("incident_closed", inc.id))
    return out


class FullDiskCatalog:
    """The real catalog, except that a commit fails as SQLite's does when the WAL cannot grow on a full
    disk (the transaction is rolled back) while ``full()`` says so; every other call is the real one."""

    def __init__(self, catalog, full):
        self._catalog, self._full, self.refused = catalog, full, 0

    def __getattr__(self, name):
        return getattr(self._catalog, name)

    @contextmanager
    def transaction(self):
        with self._catalog.transaction():
            yield
            if self._full():
                self.refused += 1
                raise sqlite3.OperationalError("database or disk is full")


class RefusingAudit:
    """The real audit log, refusing appends (ENOSPC, nothing written) while ``refuse()`` says so."""

    def __init__(self, audit, refuse):
        self.audit, self.refuse, self.refused = audit, refuse, 0

    def append_many(self, entries):
        if self.refuse():
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.audit.append_many(entries)

    def append(self, event, **fields):
        self.append_many([(event, fields)])


@pytest.fixture
def reserve(tmp_path):
    r = SpaceReserve.in_dir(tmp_path)
    make_reserve(r.path, 64 * 1024)
    return r


def test_an_open_whose_commit_hits_a_full_disk_gives_up_the_reserve_and_is_recorded_once(env, reserve):
    service, catalog, data_dir = env
    for i in range(3):
        add_segment(catalog, "gate", i, ns("2026-11-20T10:00:00Z") + i * MIN, size=100)
    service.catalog = full = FullDiskCatalog(catalog, reserve.path.exists)  # full until it is given up
    service.reserve = reserve
    result = service.apply(open_cmd(), NOW)
    assert result.ok and not result.duplicate and result.error is None
    assert (result.held_segments, result.held_bytes) == (3, 300)
    assert full.refused == 1 and not reserve.path.exists()
    assert catalog.get_incident("INC-2026-0042").opened_ns == NOW
    # The first run's line was written before its commit failed: the log says so, then records the retry.
    events = audit_events(data_dir)
    assert [e["event"] for e in events] == ["incident_opened", "incident_not_recorded", "incident_opened"]
    assert events[1]["id"] == "INC-2026-0042" and events[1]["action"] == "open"
    assert "disk is full" in events[1]["error"]
    assert counted_incident_lines(events) == catalog_incident_lines(catalog) == [
        ("incident_opened", "INC-2026-0042")]
    assert verify_audit(data_dir / "audit.log").ok
    assert service.apply(open_cmd(), NOW + MIN).duplicate


def test_a_close_whose_commit_hits_a_full_disk_gives_up_the_reserve_and_is_recorded_once(env, reserve):
    service, catalog, data_dir = env
    assert service.apply(open_cmd(), NOW).ok
    service.catalog = FullDiskCatalog(catalog, reserve.path.exists)
    service.reserve = reserve
    result = service.apply(parse({"action": "close", "id": "INC-2026-0042", "by": "boss"}), NOW + DAY)
    assert result.ok and not result.duplicate
    row = catalog.get_incident("INC-2026-0042")
    assert (row.closed_ns, row.closed_by) == (NOW + DAY, "boss")
    events = audit_events(data_dir)
    assert [e["event"] for e in events] == ["incident_opened", "incident_closed", "incident_not_recorded",
                                            "incident_closed"]
    assert events[2]["action"] == "close"
    assert counted_incident_lines(events) == catalog_incident_lines(catalog)
    assert verify_audit(data_dir / "audit.log").ok


def test_an_audit_log_refusing_the_line_gives_up_the_reserve_and_writes_it_once(env, reserve):
    service, catalog, data_dir = env
    service.audit = refusing = RefusingAudit(service.audit, reserve.path.exists)
    service.reserve = reserve
    result = service.apply(open_cmd(), NOW)
    assert result.ok and not result.duplicate and refusing.refused == 1 and not reserve.path.exists()
    assert [e["event"] for e in audit_events(data_dir)] == ["incident_opened"]  # nothing to void
    assert catalog.get_incident("INC-2026-0042") is not None


def test_with_no_reserve_left_a_full_disk_is_not_recorded_and_the_written_line_is_voided(env):
    service, catalog, data_dir = env
    disk_full = [True]
    service.catalog = FullDiskCatalog(catalog, lambda: disk_full[0])
    service.reserve = SpaceReserve.in_dir(data_dir)  # none there: given up earlier
    result = service.apply(open_cmd(), NOW)
    assert not result.ok and result.error.startswith("not recorded: ") and "disk is full" in result.error
    assert catalog.get_incident("INC-2026-0042") is None and catalog.incident_changes() == 0
    events = audit_events(data_dir)
    assert [e["event"] for e in events] == ["incident_opened", "incident_not_recorded"]
    assert counted_incident_lines(events) == catalog_incident_lines(catalog) == []
    assert verify_audit(data_dir / "audit.log").ok
    # Space again: the sender's retry is a new incident, not a duplicate of a half-written one.
    disk_full[0] = False
    again = service.apply(open_cmd(), NOW + MIN)
    assert again.ok and not again.duplicate
    assert counted_incident_lines(audit_events(data_dir)) == catalog_incident_lines(catalog) == [
        ("incident_opened", "INC-2026-0042")]


def test_a_void_line_the_disk_refuses_goes_first_into_the_next_audit_write(env):
    service, catalog, data_dir = env
    disk_full = [True]
    service.catalog = FullDiskCatalog(catalog, lambda: disk_full[0])
    # The line fits in the log's last block, the line voiding it does not (nor does anything after it).
    service.audit = RefusingAudit(service.audit, lambda: disk_full[0] and (data_dir / "audit.log").exists())
    assert not service.apply(open_cmd(), NOW).ok
    assert [e["event"] for e in audit_events(data_dir)] == ["incident_opened"]  # owed, not forgotten
    disk_full[0] = False
    assert service.apply(open_cmd(id="OTHER"), NOW + MIN).ok
    events = audit_events(data_dir)
    assert [(e["event"], e["id"]) for e in events] == [
        ("incident_opened", "INC-2026-0042"), ("incident_not_recorded", "INC-2026-0042"),
        ("incident_opened", "OTHER")]
    assert counted_incident_lines(events) == catalog_incident_lines(catalog) == [("incident_opened", "OTHER")]
    assert verify_audit(data_dir / "audit.log").ok


class FailsAfterCommit(FullDiskCatalog):
    """The commit goes through, then making it durable fails (as ``Catalog._sync_wal`` can)."""

    @contextmanager
    def transaction(self):
        with self._catalog.transaction():
            yield
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as exc:
            raise CatalogError("catalog: cannot sync: Input/output error") from exc


def test_a_line_whose_change_was_committed_is_never_voided(env, reserve):
    service, catalog, data_dir = env
    service.catalog = FailsAfterCommit(catalog, lambda: True)
    service.reserve = reserve
    result = service.apply(open_cmd(), NOW)
    # Not known to be durable, so not acknowledged; but the catalog has it, so its line stands.
    assert not result.ok and "cannot sync" in result.error
    assert reserve.path.exists()  # not a full disk: not retried
    assert [e["event"] for e in audit_events(data_dir)] == ["incident_opened"]
    assert counted_incident_lines(audit_events(data_dir)) == catalog_incident_lines(catalog)
    service.catalog = catalog
    assert service.apply(open_cmd(), NOW + MIN).duplicate  # the sender's retry


def test_unconfirmed_claims_are_the_last_unvoided_line_of_each_id_and_action():
    lines = [
        {"event": "incident_opened", "id": "A"},
        {"event": "incident_opened", "id": "B"},
        {"event": "incident_not_recorded", "id": "B", "action": "open"},
        {"event": "incident_opened", "id": "B"},  # the retry, recorded
        {"event": "incident_closed", "id": "A"},
        {"event": "incident_opened", "id": "C"},
        {"event": "incident_not_recorded", "id": "C", "action": "open"},
        {"event": "segment_deleted", "path": "x"},
        {"event": "incident_opened", "id": 7},  # not a string id: not an incident line of ours
    ]
    assert unconfirmed_claims(lines) == [("A", "open"), ("B", "open"), ("A", "close")]


def test_a_line_a_power_cut_kept_from_its_commit_is_voided_at_start_up(env):
    service, catalog, data_dir = env
    service.apply(open_cmd(id="KEPT"), NOW)
    service.apply(parse({"action": "close", "id": "KEPT", "by": "officer"}), NOW + MIN)
    # What a power cut between the audit line's fsync and the catalog's commit leaves: the line alone.
    service.audit.append("incident_opened", id="LOST", camera="gate", **{"from": "2026-11-20T09:55:00.000Z"},
                         to=None, reason="", by="officer")
    service.audit.append("incident_closed", id="KEPT-2", by="officer")  # closing one never opened
    entries = tail_entries(data_dir / "audit.log")
    assert service.void_unrecorded(entries) == [("LOST", "open"), ("KEPT-2", "close")]
    events = audit_events(data_dir)
    assert [(e["event"], e["id"], e.get("action")) for e in events[-2:]] == [
        ("incident_not_recorded", "LOST", "open"), ("incident_not_recorded", "KEPT-2", "close")]
    assert counted_incident_lines(events) == catalog_incident_lines(catalog)
    assert verify_audit(data_dir / "audit.log").ok
    # Once settled, a second start finds nothing to void.
    assert service.void_unrecorded(tail_entries(data_dir / "audit.log")) == []


def test_tail_entries_reads_only_the_end_of_the_log_and_skips_torn_lines(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(200):
        log.append("note", i=i)
    entries = tail_entries(log.path, max_bytes=1000)
    assert entries and entries[-1]["i"] == 199 and len(entries) < 20
    assert [e["i"] for e in entries] == list(range(200 - len(entries), 200))  # whole lines only
    with open(log.path, "ab") as f:
        f.write(b'{"n":201,"ts":"x","ev')  # torn by a power cut
    assert tail_entries(log.path, max_bytes=1000)[-1]["i"] == 199
    assert tail_entries(tmp_path / "none.log") == []


def test_handle_turns_parse_errors_into_replies(env):
    service, _, _ = env
    reply = service.handle({"action": "open", "id": "bad id", "camera": "gate"}, NOW)
    assert not reply.ok and reply.id == "bad id" and reply.action == "open" and "'id'" in reply.error
    assert reply.to_json_dict() == {"id": "bad id", "action": "open", "ok": False, "error": reply.error,
                                    "duplicate": False, "held_segments": 0, "held_bytes": 0}
    assert command_result_for_error(["not", "an", "object"], "boom").id is None
    assert command_result_for_error({"id": 5, "action": "open"}, "bad").to_json_dict() == {
        "id": None, "action": "open", "ok": False, "error": "bad", "duplicate": False, "held_segments": 0,
        "held_bytes": 0}  # only textual id and action are echoed
    assert service.handle({**OPEN}, NOW).ok


def test_handle_is_the_one_entry_point_and_never_raises_what_a_command_can_cause(env):
    """Malformed, unknown, conflicting, over a limit and not recorded: each is a refusing reply."""
    service, catalog, _ = env
    for obj in (None, ["open"], {"action": 7}, {"action": "close", "id": "NOPE"}):
        reply = service.handle(obj, NOW)
        assert not reply.ok and reply.error and reply.held_segments == 0
    assert service.handle({**OPEN}, NOW).ok
    conflict = service.handle({**OPEN, "camera": "yard"}, NOW)
    assert not conflict.ok and "different window or camera" in conflict.error
    service.max_open = 1
    limited = service.handle({**OPEN, "id": "SECOND"}, NOW)
    assert not limited.ok and "incidents.max_open" in limited.error
    service.max_open = 20
    service.audit = RefusingAudit(service.audit, lambda: True)
    lost = service.handle({**OPEN, "id": "THIRD"}, NOW)
    assert not lost.ok and lost.error.startswith("not recorded:") and catalog.get_incident("THIRD") is None


def test_list_open_and_all(env):
    service, _, _ = env
    service.apply(open_cmd(), NOW)
    service.apply(parse({**OPEN, "id": "B"}), NOW + 1)
    service.apply(parse({"action": "close", "id": "B"}), NOW + 2)
    assert [i.id for i in service.list_open()] == ["INC-2026-0042"]
    assert [i.id for i in service.list_all()] == ["INC-2026-0042", "B"]
    d = service.list_open()[0].to_json_dict()
    assert d["from"] == "2026-11-20T09:55:00.000Z" and d["to"] == "2026-11-20T10:30:00.000Z"
    assert d["state"] == "open"
    assert datetime.fromisoformat(d["opened"].replace("Z", "+00:00")).tzinfo == UTC


# ----- limits -------------------------------------------------------------------------------------------
def test_window_limit_bounds_from_before_now_and_the_closed_window_length():
    assert window_limit_problem(NOW - 31 * DAY, None, NOW, 31) is None  # exactly the limit: allowed
    assert "before now" in window_limit_problem(NOW - 31 * DAY - 1, None, NOW, 31)
    assert window_limit_problem(NOW - 10 * DAY, NOW - 10 * DAY + 31 * DAY, NOW, 31) is None
    assert "spans 31.0 days" in window_limit_problem(NOW - 10 * DAY, NOW + 21 * DAY + 1, NOW, 31)
    # A future window is bounded by its length too; an open-ended one from now is always allowed.
    assert "spans" in window_limit_problem(NOW + DAY, NOW + 40 * DAY, NOW, 31)
    assert window_limit_problem(NOW, None, NOW, 0.5) is None


def limited_service(data_dir, **limits):
    cfg = make_config(data_dir)
    cfg = dc_replace(cfg, incidents=dc_replace(cfg.incidents, **limits))
    return IncidentService(Catalog.open(data_dir), AuditLog(data_dir / "audit.log"), cfg)


def test_open_from_further_back_than_max_window_days_is_refused_and_audited(tmp_path):
    service = limited_service(tmp_path, max_window_days=31)
    try:
        since_1970 = parse({"action": "open", "id": "ALL", "camera": "*", "from": "1970-01-01T00:00:00Z",
                            "by": "mallory"})
        result = service.apply(since_1970, NOW)
        assert not result.ok and "incidents.max_window_days allows 31" in result.error
        too_long = open_cmd(id="LONG", **{"from": rfc3339(NOW - DAY), "to": rfc3339(NOW + 31 * DAY)})
        assert "spans 32.0 days" in service.apply(too_long, NOW).error
        assert service.catalog.incidents() == []  # nothing stored
        refused = [e for e in audit_events(tmp_path) if e["event"] == "incident_refused"]
        assert [(e["id"], e["by"], e["from"]) for e in refused] == [
            ("ALL", "mallory", "1970-01-01T00:00:00.000Z"), ("LONG", "officer", rfc3339(NOW - DAY))]
        assert verify_audit(tmp_path / "audit.log").ok
        # Open-ended from 30 days back is within the limit and stays open-ended.
        ok = open_cmd(id="OPEN-ENDED", camera="*", **{"from": rfc3339(NOW - 30 * DAY), "to": None})
        assert service.apply(ok, NOW).ok
        assert service.catalog.get_incident("OPEN-ENDED").to_ns is None
    finally:
        service.catalog.close()


def test_one_more_than_max_open_incidents_is_refused(tmp_path):
    service = limited_service(tmp_path, max_open=2)
    try:
        assert service.apply(open_cmd(id="A"), NOW).ok
        assert service.apply(open_cmd(id="B"), NOW).ok
        third = service.apply(open_cmd(id="C"), NOW)
        assert not third.ok and "2 incidents are open, incidents.max_open allows 2" in third.error
        assert service.catalog.get_incident("C") is None
        assert service.apply(open_cmd(id="A"), NOW + MIN).duplicate  # a re-sent open is not a new incident
        assert service.apply(parse({"action": "close", "id": "A", "by": "officer"}), NOW).ok
        assert service.apply(open_cmd(id="C"), NOW).ok  # closing one makes room
        assert [e["id"] for e in audit_events(tmp_path) if e["event"] == "incident_refused"] == ["C"]
    finally:
        service.catalog.close()


def test_refusals_over_mqtt_handle_are_error_replies(tmp_path):
    service = limited_service(tmp_path, max_open=1)
    try:
        assert service.handle({**OPEN, "id": "A"}, NOW).ok
        reply = service.handle({**OPEN, "id": "B"}, NOW).to_json_dict()
        assert reply["ok"] is False and reply["id"] == "B" and "max_open" in reply["error"]
    finally:
        service.catalog.close()


def test_cli_open_over_the_limit_exits_1_and_stores_nothing(tmp_path, officer):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "gate", "url": "testsrc"}], incidents={"max_window_days": 2})
    proc = run_cli("incident", "open", "--config", str(cfg), "--id", "OLD", "--camera", "gate",
                   "--from", "2020-01-01T00:00:00Z", "--by", "tester")
    assert proc.returncode == 1, proc.stderr
    assert "max_window_days" in proc.stdout
    catalog = Catalog.open(data_dir)
    try:
        assert catalog.incidents() == []
    finally:
        catalog.close()


# ----- incidents as the audit log tells them ------------------------------------------------------------
def opened_line(n, inc_id, ts, **fields):
    return {"n": n, "ts": ts, "event": "incident_opened", "id": inc_id, "camera": "gate",
            "from": "2026-11-20T09:55:00.000Z", "to": "2026-11-20T10:30:00.000Z", "reason": "r", "by": "ann",
            "pre_roll_s": 60.0, "post_roll_s": 30.0, **fields}


def closed_line(n, inc_id, ts, by="bob"):
    return {"n": n, "ts": ts, "event": "incident_closed", "id": inc_id, "by": by, "reason": ""}


def void_line(n, inc_id, action):
    return {"n": n, "ts": "2026-11-21T00:00:00.000Z", "event": "incident_not_recorded", "id": inc_id,
            "action": action, "error": "disk full"}


def test_incidents_from_audit_gives_back_what_the_service_recorded(tmp_path):
    catalog = Catalog.open(tmp_path)
    clock = [NOW]
    audit = AuditLog(tmp_path / "audit.log", clock_ns=lambda: clock[0])
    service = IncidentService(catalog, audit, make_config(tmp_path))
    try:
        assert service.apply(open_cmd(id="A"), NOW).ok
        assert service.apply(open_cmd(id="B", camera="*", to=None, reason="open-ended"), NOW).ok
        clock[0] = NOW + MIN
        assert service.apply(parse({"action": "close", "id": "A", "by": "bob"}), NOW + MIN).ok
        logged = incidents_from_audit(tail_entries(audit.path))
        # The lines' ts is the command's time here (one clock): every field comes back exactly.
        assert logged.problems == ()
        assert sorted(logged.incidents, key=lambda i: i.id) == sorted(catalog.incidents(), key=lambda i: i.id)
        assert {i.id: i.closed_by for i in logged.incidents} == {"A": "bob", "B": None}
    finally:
        catalog.close()


def test_incidents_from_audit_honours_voids_retries_and_reopens():
    lines = [
        opened_line(1, "A", "2026-11-20T11:00:00.000Z"),
        closed_line(2, "A", "2026-11-20T12:00:00.000Z"),
        opened_line(3, "B", "2026-11-20T11:00:00.000Z"),
        void_line(4, "B", "open"),
        opened_line(5, "B", "2026-11-20T11:00:01.000Z", to=None),  # the retry counts
        opened_line(6, "C", "2026-11-20T11:00:00.000Z"),
        void_line(7, "C", "open"),  # never recorded
        opened_line(8, "D", "2026-11-20T11:00:00.000Z"),
        closed_line(9, "D", "2026-11-20T12:00:00.000Z"),
        void_line(10, "D", "close"),  # the close was not recorded: still open
        opened_line(11, "E", "2026-11-20T11:00:00.000Z"),
        closed_line(12, "E", "2026-11-20T12:00:00.000Z"),
        void_line(13, "E", "close"),
        closed_line(14, "E", "2026-11-20T12:05:00.000Z", by="carl"),  # the close's retry
        opened_line(15, "F", "2026-11-20T11:00:00.000Z"),
        closed_line(16, "F", "2026-11-20T12:00:00.000Z"),
        # F again, opened anew (a catalog lost before restores existed): the close above is the old one's.
        opened_line(17, "F", "2026-11-22T08:00:00.000Z", **{"from": "2026-11-22T07:00:00.000Z"}, to=None),
        {"n": 18, "ts": "2026-11-22T09:00:00.000Z", "event": "segments_deleted", "id": "A"},
    ]
    logged = incidents_from_audit(lines)
    assert logged.problems == ()
    got = {i.id: i for i in logged.incidents}
    assert list(got) == ["A", "B", "D", "E", "F"]
    assert (got["A"].closed_ns, got["A"].closed_by) == (ns("2026-11-20T12:00:00Z"), "bob")
    assert got["A"].opened_ns == ns("2026-11-20T11:00:00Z")
    assert (got["A"].from_ns, got["A"].to_ns) == (ns("2026-11-20T09:55:00Z"), ns("2026-11-20T10:30:00Z"))
    assert (got["A"].pre_roll_ns, got["A"].post_roll_ns, got["A"].by) == (60 * 10**9, 30 * 10**9, "ann")
    assert got["B"].is_open and got["B"].to_ns is None and got["B"].opened_ns == ns("2026-11-20T11:00:01Z")
    assert got["D"].is_open
    assert (got["E"].closed_ns, got["E"].closed_by) == (ns("2026-11-20T12:05:00Z"), "carl")
    assert got["F"].is_open and got["F"].from_ns == ns("2026-11-22T07:00:00Z")


def test_incidents_from_audit_reports_malformed_lines_and_keeps_going():
    lines = [
        opened_line(1, "BADFROM", "2026-11-20T11:00:00.000Z", **{"from": "yesterday"}),
        opened_line(2, "BACKWARDS", "2026-11-20T11:00:00.000Z", to="2026-11-20T09:00:00.000Z"),
        opened_line(3, "ROLL", "2026-11-20T11:00:00.000Z", pre_roll_s="60"),
        opened_line(4, "NOCAM", "2026-11-20T11:00:00.000Z", camera=None),
        opened_line(5, 7, "2026-11-20T11:00:00.000Z"),
        opened_line(6, "BADTS", "noon"),
        opened_line(7, "OK", "2026-11-20T11:00:00.000Z"),
        closed_line(8, "OK", "half past twelve"),  # a malformed close: it stays open, still holding
        closed_line(9, "NEVER-OPENED", "2026-11-20T12:00:00.000Z"),
        {"event": "incident_opened", "id": "NOTHING"},  # no n, no fields at all
    ]
    logged = incidents_from_audit(lines)
    assert [i.id for i in logged.incidents] == ["OK"] and logged.incidents[0].is_open
    problems = "\n".join(logged.problems)
    assert len(logged.problems) == 9, problems
    for expected in ("audit line 1 (incident_opened): incident BADFROM not restored: field 'from'",
                     "audit line 2 (incident_opened): incident BACKWARDS not restored: field 'to' is before",
                     "audit line 3 (incident_opened): incident ROLL not restored: field 'pre_roll_s'",
                     "incident NOCAM not restored: field 'camera'",
                     "audit line 5 (incident_opened): field 'id' 7 is not an incident id",
                     "incident BADTS not restored: field 'ts'",
                     "audit line 8 (incident_closed): incident OK left open (it keeps holding): field 'ts'",
                     "audit line 9 (incident_closed): incident NEVER-OPENED closed, but no line",
                     "audit line ? (incident_opened): incident NOTHING not restored"):
        assert expected in problems


_FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                          st.sampled_from(["2026-11-20T09:55:00Z", "open", "close", "A", "gate"]),
                          st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                               st.integers(), max_size=2))


@given(st.lists(st.fixed_dictionaries(
    {"event": st.sampled_from(["incident_opened", "incident_closed", "incident_not_recorded", "x"])},
    optional={k: _FIELD_VALUES for k in ("n", "ts", "id", "camera", "from", "to", "reason", "by",
                                          "pre_roll_s", "post_roll_s", "action")}), max_size=12))
def test_incidents_from_audit_never_raises_on_arbitrary_lines(lines):
    logged = incidents_from_audit(lines)
    assert all(isinstance(p, str) for p in logged.problems)
    assert all(i.closed_ns is None or isinstance(i.closed_ns, int) for i in logged.incidents)
