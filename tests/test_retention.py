"""Retention: the pure policy (examples and hypothesis properties) and the sweeper on real files."""

from __future__ import annotations

import errno
import json
import sqlite3
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.audit import AuditLog, verify_audit
from edgerec.catalog import Catalog, IncidentRow, SegmentRow
from edgerec.clock import ClockReading
from edgerec.errors import CatalogError, CommandError
from edgerec.holds import holds
from edgerec.layout import RESERVE_NAME
from edgerec.retention import (
    DeletedSegment,
    DiskState,
    RetentionPolicy,
    Sweeper,
    batches_by_directory,
    plan_deletions,
)
from edgerec.spacereserve import (
    SpaceReserve,
    is_disk_full_error,
    make_reserve,
    reserve_wanted,
)
from tests.helpers.catalog import DAY, MIN, T0, add_segment, make_config
from tests.helpers.events import from_records, named

GRACE = 7 * DAY
POLICY = RetentionPolicy(default_days=28, camera_days={"short": 7}, min_free_bytes=1000, min_free_pct=None,
                         release_grace_ns=GRACE)
ROOMY = DiskState(total_bytes=10**9, free_bytes=10**8)


def row(seg_id: int, start_ns: int, *, camera: str = "gate", duration_ns: int = MIN, size: int = 100,
        time_ok: bool = True, rclock_end_ns: int | None = None) -> SegmentRow:
    """A segment row; on the retention clock it ended at its recorded end unless ``rclock_end_ns`` says
    otherwise (a healthy clock)."""
    end_ns = start_ns + duration_ns
    return SegmentRow(seg_id, camera, seg_id, f"{camera}/{seg_id}.seg", start_ns, end_ns,
                      size, 25, "00", "sealed", True, "boot", 0, time_ok,
                      rclock_end_ns=end_ns if rclock_end_ns is None else rclock_end_ns)


def incident(inc_id: str, camera: str, from_ns: int, to_ns: int | None, *, closed_ns: int | None = None,
             roll_ns: int = 0) -> IncidentRow:
    return IncidentRow(inc_id, camera, from_ns, to_ns, "", "", from_ns, closed_ns, None, roll_ns, roll_ns)


def chosen(plan) -> dict[int, str]:
    return {d.segment_id: d.reason for d in plan.deletions}


# ----- the pure policy: examples --------------------------------------------------------------------------
def test_footage_past_its_age_is_deleted_and_younger_footage_is_kept():
    segs = [row(1, T0), row(2, T0 + DAY)]
    now = T0 + MIN + 28 * DAY  # segment 1 ended exactly 28 days ago
    assert chosen(plan_deletions(segs, [], now, POLICY, ROOMY)) == {1: "age"}
    assert chosen(plan_deletions(segs, [], now - 1, POLICY, ROOMY)) == {}


def test_per_camera_retention_override():
    segs = [row(1, T0, camera="short"), row(2, T0, camera="gate")]
    assert chosen(plan_deletions(segs, [], T0 + 8 * DAY, POLICY, ROOMY)) == {1: "age"}


def test_held_footage_is_kept_past_its_age_and_released_after_close_and_grace():
    segs = [row(1, T0), row(2, T0 + 10 * MIN)]
    inc = incident("A", "gate", T0 + 30 * 10**9, T0 + 40 * 10**9)  # overlaps segment 1 only
    now = T0 + 40 * DAY
    assert chosen(plan_deletions(segs, [inc], now, POLICY, ROOMY)) == {2: "age"}
    closed = replace(inc, closed_ns=now)
    assert chosen(plan_deletions(segs, [closed], now + GRACE - 1, POLICY, ROOMY)) == {2: "age"}
    assert chosen(plan_deletions(segs, [closed], now + GRACE, POLICY, ROOMY)) == {1: "released", 2: "age"}


def test_segment_held_by_two_incidents_stays_until_both_are_released():
    segs = [row(1, T0)]
    now = T0 + 60 * DAY
    a = incident("A", "gate", T0, T0 + MIN, closed_ns=T0 + 30 * DAY)  # released at T0 + 37 days
    b = incident("B", "*", T0, None)
    assert chosen(plan_deletions(segs, [a, b], now, POLICY, ROOMY)) == {}
    b_closed = replace(b, closed_ns=T0 + 50 * DAY)  # released at T0 + 57 days
    assert chosen(plan_deletions(segs, [a, b_closed], T0 + 57 * DAY - 1, POLICY, ROOMY)) == {}
    assert chosen(plan_deletions(segs, [a, b_closed], T0 + 57 * DAY, POLICY, ROOMY)) == {1: "released"}


def test_open_ended_incident_holds_new_footage():
    inc = incident("A", "*", T0, None)
    segs = [row(i, T0 + i * DAY, camera=c) for i in range(1, 5) for c in ("gate", "yard")]
    segs = [s._replace(id=k) for k, s in enumerate(segs)]
    assert chosen(plan_deletions(segs, [inc], T0 + 400 * DAY, POLICY, ROOMY)) == {}


def test_pre_and_post_roll_widen_the_hold():
    segs = [row(1, T0), row(2, T0 + 2 * MIN), row(3, T0 + 4 * MIN)]
    bare = incident("A", "gate", T0 + 2 * MIN + 30 * 10**9, T0 + 2 * MIN + 40 * 10**9)
    assert chosen(plan_deletions(segs, [bare], T0 + 60 * DAY, POLICY, ROOMY)) == {1: "age", 3: "age"}
    rolled = replace(bare, pre_roll_ns=100 * 10**9, post_roll_ns=100 * 10**9)  # 00:50 .. 04:20
    assert chosen(plan_deletions(segs, [rolled], T0 + 60 * DAY, POLICY, ROOMY)) == {}


def test_disk_pressure_deletes_oldest_unheld_across_cameras_until_above_the_mark():
    segs = [row(1, T0 + 2 * MIN, camera="gate"), row(2, T0 + MIN, camera="yard"), row(3, T0, camera="gate"),
            row(4, T0 + 3 * MIN, camera="yard")]
    held = incident("H", "gate", T0, T0)  # holds segment 3 (the oldest)
    disk = DiskState(total_bytes=10**6, free_bytes=850)  # 150 bytes under the 1000-byte mark
    plan = plan_deletions(segs, [held], T0 + DAY, POLICY, disk)
    assert chosen(plan) == {2: "disk_pressure", 1: "disk_pressure"}
    assert [d.segment_id for d in plan.deletions] == [2, 1]  # oldest first
    assert not plan.disk_full and plan.shortfall_bytes == 0


def test_age_deletions_count_towards_the_free_space_mark():
    segs = [row(1, T0, size=500), row(2, T0 + 20 * DAY)]
    disk = DiskState(total_bytes=10**6, free_bytes=600)
    assert chosen(plan_deletions(segs, [], T0 + 29 * DAY, POLICY, disk)) == {1: "age"}


def test_only_held_footage_left_means_disk_full_and_nothing_held_is_touched():
    segs = [row(1, T0), row(2, T0 + MIN)]
    held = incident("H", "*", T0, None)
    plan = plan_deletions(segs, [held], T0 + DAY, POLICY, DiskState(10**6, 0))
    assert plan.deletions == () and plan.disk_full and plan.shortfall_bytes == 1000


def test_incomplete_candidates_report_shortfall_but_not_disk_full():
    plan = plan_deletions([row(1, T0)], [], T0 + DAY, POLICY, DiskState(10**6, 0), complete=False)
    assert plan.shortfall_bytes == 900 and not plan.disk_full


def test_percent_mark():
    policy = RetentionPolicy(min_free_bytes=None, min_free_pct=5.0)
    assert policy.min_free_target(DiskState(total_bytes=10_000, free_bytes=0)) == 500
    segs = [row(1, T0, size=300), row(2, T0 + MIN, size=300)]
    plan = plan_deletions(segs, [], T0 + DAY, policy, DiskState(10_000, 400))
    assert chosen(plan) == {1: "disk_pressure"}


def test_implausibly_dated_footage_ages_on_the_retention_clock_but_is_never_taken_for_space():
    """Its wall time cannot be believed, its retention time can: it goes when it is really old, and
    disk pressure (which goes by recording time) never picks it."""
    young = row(1, T0, time_ok=False, rclock_end_ns=T0 + 99 * DAY)
    old = row(2, T0, time_ok=False, rclock_end_ns=T0 + 2 * DAY)
    assert chosen(plan_deletions([young, old], [], T0 + 100 * DAY, POLICY, DiskState(10**6, 0))) == {2: "age"}


def test_age_is_measured_on_the_retention_clock_not_the_wall_stamps():
    """A segment stamped by a wall clock set 40 days back is not old for that: its retention time says
    it ended a minute ago."""
    spoofed = row(1, T0 - 40 * DAY, rclock_end_ns=T0 - MIN)
    assert chosen(plan_deletions([spoofed], [], T0, POLICY, ROOMY)) == {}
    unstamped = SegmentRow(2, "gate", 2, "gate/2.seg", T0 - 40 * DAY, T0 - 40 * DAY + MIN, 100, 25, "00",
                           "sealed", True, "boot", 0, True)  # no retention time yet: not of age
    assert chosen(plan_deletions([unstamped], [], T0, POLICY, ROOMY)) == {}


def test_duplicate_candidates_are_planned_once():
    segs = [row(1, T0), row(1, T0)]
    assert len(plan_deletions(segs, [], T0 + 30 * DAY, POLICY, ROOMY)) == 1


# ----- the pure policy: properties ----------------------------------------------------------------------
CAMS = ("gate", "yard", "short")

segments_st = st.lists(
    st.tuples(st.sampled_from(CAMS), st.integers(0, 60 * 24), st.integers(1, 120), st.integers(1, 500),
              st.sampled_from([True, True, True, False])),
    max_size=40,
).map(lambda items: [row(i, T0 + start * 1800 * 10**9, camera=cam, duration_ns=dur * 10**9 * 30, size=size,
                         time_ok=ok) for i, (cam, start, dur, size, ok) in enumerate(items)])

incidents_st = st.lists(
    st.tuples(st.sampled_from((*CAMS, "*")), st.integers(0, 60 * 24), st.none() | st.integers(0, 200),
              st.none() | st.integers(0, 60 * 24), st.integers(0, 10)),
    max_size=6,
).map(lambda items: [
    incident(f"I{k}", cam, T0 + start * 1800 * 10**9,
             None if length is None else T0 + (start + length) * 1800 * 10**9,
             closed_ns=None if closed is None else T0 + closed * 1800 * 10**9, roll_ns=roll * MIN)
    for k, (cam, start, length, closed, roll) in enumerate(items)])

now_st = st.integers(0, 80 * 48).map(lambda h: T0 + h * 1800 * 10**9)
disk_st = st.builds(lambda free: DiskState(10**6, free), st.integers(0, 3000))


def held_by_any(seg, incidents, now_ns):
    return any(holds(i, seg.camera, seg.start_ns, seg.end_ns, now_ns, GRACE) for i in incidents)


@settings(max_examples=300, deadline=None)
@given(segments_st, incidents_st, now_st, disk_st)
def test_property_held_footage_is_never_chosen_and_undatable_never_for_space(segs, incidents, now, disk):
    plan = plan_deletions(segs, incidents, now, POLICY, disk)
    by_id = {s.id: s for s in segs}
    for d in plan.deletions:
        seg = by_id[d.segment_id]
        assert seg.time_ok or d.reason != "disk_pressure"
        assert not held_by_any(seg, incidents, now)


@settings(max_examples=300, deadline=None)
@given(segments_st, incidents_st, now_st, disk_st)
def test_property_nothing_younger_than_its_limit_unless_disk_pressure(segs, incidents, now, disk):
    plan = plan_deletions(segs, incidents, now, POLICY, disk)
    by_id = {s.id: s for s in segs}
    for d in plan.deletions:
        seg = by_id[d.segment_id]
        expired = seg.end_ns + POLICY.retention_ns(seg.camera) <= now
        assert expired == (d.reason in ("age", "released"))
    # Every unheld, datable, expired segment goes.
    expected = {s.id for s in segs if s.time_ok and not held_by_any(s, incidents, now)
                and s.end_ns + POLICY.retention_ns(s.camera) <= now}
    assert expected <= {d.segment_id for d in plan.deletions}
    if disk.free_bytes >= 1000:
        assert all(d.reason != "disk_pressure" for d in plan.deletions)


@settings(max_examples=300, deadline=None)
@given(segments_st, incidents_st, now_st, disk_st)
def test_property_disk_pressure_takes_oldest_first_and_disk_full_only_when_nothing_unheld_is_left(
        segs, incidents, now, disk):
    plan = plan_deletions(segs, incidents, now, POLICY, disk)
    chosen_ids = {d.segment_id for d in plan.deletions}
    pressure = [s for s in segs if s.id in chosen_ids and chosen(plan)[s.id] == "disk_pressure"]
    spare = [s for s in segs if s.id not in chosen_ids and s.time_ok and not held_by_any(s, incidents, now)]
    if pressure:
        newest_taken = max((s.start_ns, s.id) for s in pressure)
        assert all((s.start_ns, s.id) > newest_taken for s in spare)
    freed = sum(s.size_bytes for s in segs if s.id in chosen_ids)
    assert plan.disk_full == (disk.free_bytes + freed < 1000)
    if plan.disk_full:
        assert spare == []


# ----- the sweeper on real files --------------------------------------------------------------------------
class Disk:
    """An injected free-space reading."""

    def __init__(self, free_bytes=10**9, total_bytes=10**10):
        self.free_bytes, self.total_bytes = free_bytes, total_bytes

    def __call__(self):
        return DiskState(self.total_bytes, self.free_bytes)


class SimClock:
    """Kernel clock readings for a sweeper: wall and monotonic clocks of one boot advancing together
    (a healthy clock), moved on by the test."""

    def __init__(self, wall_ns: int = T0, boot_id: str = "boot-sim", synced: bool = True):
        self.wall_ns, self.mono_ns, self.boot_id, self.synced = wall_ns, 10**9, boot_id, synced

    def advance_to(self, wall_ns: int) -> None:
        if wall_ns > self.wall_ns:
            self.mono_ns += wall_ns - self.wall_ns
            self.wall_ns = wall_ns

    def __call__(self) -> ClockReading:
        return ClockReading(self.wall_ns, self.mono_ns, self.boot_id, self.synced)


class TimedSweeper(Sweeper):
    """A sweeper whose clock has reached the time it is asked to sweep at: these tests age footage by
    letting (simulated) time pass, since a sweep that deletes never runs ahead of its retention clock."""

    def __init__(self, *args, sim: SimClock, **kw):
        super().__init__(*args, clock=sim, **kw)
        self.sim = sim

    def sweep(self, now_ns=None, dry_run=False):
        if now_ns is not None:
            self.sim.advance_to(now_ns)
        return super().sweep(now_ns=now_ns, dry_run=dry_run)


@pytest.fixture
def world(tmp_path):
    cfg = make_config(tmp_path, min_free_bytes=10_000)
    catalog = Catalog.open(tmp_path)
    audit = AuditLog(tmp_path / "audit.log")
    disk = Disk()
    sweeper = TimedSweeper(catalog, audit, cfg, tmp_path, free_space=disk, sim=SimClock())
    yield cfg, catalog, audit, disk, sweeper
    catalog.close()


def record(catalog, days=2, per_day=24, cameras=("gate", "yard"), size=1000, start=T0):
    rows = []
    for cam in cameras:
        for i in range(days * per_day):
            rows.append(add_segment(catalog, cam, i, start + i * (DAY // per_day), duration_ns=DAY // per_day,
                                    size=size))
    return rows


def deleted_in_audit(data_dir):
    out = {}
    for line in (data_dir / "audit.log").read_text().splitlines():
        obj = json.loads(line)
        if obj["event"] == "segments_deleted":
            assert obj["count"] == len(obj["paths"])
            for path in obj["paths"]:
                out[path] = obj["reason"]
    return out


def test_sweep_29_days_later_deletes_exactly_the_unheld_footage(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog)
    hour = 3600 * 10**9
    service_inc = IncidentRow("INC-1", "gate", T0 + 5 * hour, T0 + 6 * hour, "theft", "me", T0,
                              pre_roll_ns=MIN, post_roll_ns=MIN)
    catalog.insert_incident(service_inc)
    held = {r.id for r in rows if holds(service_inc, r.camera, r.start_ns, r.end_ns, T0, GRACE)}
    assert len(held) == 3  # 04:00-05:00 (pre-roll), 05:00-06:00, 06:00-07:00 (post-roll)
    now = T0 + 29 * DAY
    expired = {r.id for r in rows if r.end_ns + 28 * DAY <= now}
    report = sweeper.sweep(now_ns=now)
    deleted = {d.id for d in report.deleted}
    assert deleted == expired - held
    for r in rows:
        assert (catalog.data_dir / r.path).exists() == (r.id not in deleted)
    assert {r.id for r in catalog.segments()} == {r.id for r in rows} - deleted
    # The audit log names every deletion and its reason, and its chain is intact.
    assert deleted_in_audit(catalog.data_dir) == {r.path: "age" for r in rows if r.id in deleted}
    assert verify_audit(catalog.data_dir / "audit.log").ok
    assert report.deleted_bytes == 1000 * len(deleted) and not report.disk_full
    json.dumps(report.to_json_dict())
    assert report.lines()[-1].startswith("retention at")


def test_closing_an_incident_releases_its_footage_after_the_grace_period(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, cameras=("gate",))
    catalog.insert_incident(IncidentRow("INC-1", "*", T0, None, "", "", T0))
    now = T0 + 40 * DAY
    assert sweeper.sweep(now_ns=now).deleted == ()
    catalog.close_incident("INC-1", now, "boss")
    assert sweeper.sweep(now_ns=now + 7 * DAY - 1).deleted == ()
    report = sweeper.sweep(now_ns=now + 7 * DAY)
    assert {d.id for d in report.deleted} == {r.id for r in rows}
    assert {d.reason for d in report.deleted} == {"released"}
    assert set(deleted_in_audit(catalog.data_dir).values()) == {"released"}


def test_dry_run_changes_nothing(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1)
    report = sweeper.sweep(now_ns=T0 + 40 * DAY, dry_run=True)
    assert len(report.deleted) == len(rows) and report.dry_run
    assert all((catalog.data_dir / r.path).exists() for r in rows)
    assert len(catalog.segments()) == len(rows)
    assert not (catalog.data_dir / "audit.log").exists()
    assert report.lines()[0].startswith("would delete")


def test_disk_pressure_deletes_oldest_unheld_early_and_audits_it(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=24)
    catalog.insert_incident(IncidentRow("H", "gate", T0, T0, "", "", T0))  # holds gate's first segment
    disk.free_bytes = 10_000 - 3500  # 3.5 segments short of the mark
    assert sweeper.below_min_free()
    report = sweeper.sweep(now_ns=T0 + 2 * DAY)
    gone = sorted((d.start_ns, d.camera) for d in report.deleted)
    assert gone == [(T0, "yard"), (T0 + 3600 * 10**9, "gate"), (T0 + 3600 * 10**9, "yard"),
                    (T0 + 7200 * 10**9, "gate")]
    assert {d.reason for d in report.deleted} == {"disk_pressure"}
    assert not report.disk_full
    assert set(deleted_in_audit(catalog.data_dir).values()) == {"disk_pressure"}
    assert (catalog.data_dir / rows[0].path).exists()  # the held one


def test_disk_full_when_only_held_footage_is_left(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=4)
    catalog.insert_incident(IncidentRow("H", "*", T0 - DAY, None, "", "", T0))
    disk.free_bytes = 0
    report = sweeper.sweep(now_ns=T0 + 2 * DAY)
    assert report.disk_full and report.deleted == () and report.shortfall_bytes == 10_000
    assert any("DISK FULL" in line for line in report.lines())
    assert len(catalog.segments()) == len(rows)


def test_pressure_pages_through_a_large_catalog(world):
    cfg, catalog, audit, disk, sweeper = world
    for i in range(1500):
        add_segment(catalog, "gate", i, T0 + i * MIN, size=10, write=False)
    disk.free_bytes = 10_000 - 12_000  # needs 1200 segments: more than the first page
    report = sweeper.sweep(now_ns=T0 + 3 * DAY)
    assert len(report.deleted) == 1200 and not report.disk_full
    assert max(d.start_ns for d in report.deleted) == T0 + 1199 * MIN


def test_empty_date_directories_of_past_days_are_removed(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=2, per_day=2, cameras=("gate",))
    dirs = {(catalog.data_dir / r.path).parent for r in rows}
    assert len(dirs) == 2
    sweeper.sweep(now_ns=T0 + 40 * DAY)
    assert not any(d.exists() for d in dirs)
    assert (catalog.data_dir / "gate").is_dir()


def test_interrupted_deletion_is_finished_by_the_next_sweep(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=2, cameras=("gate",))
    catalog.mark_deleting([rows[0].id], T0)  # a sweep marked it, then the unlink failed
    report = sweeper.sweep(now_ns=T0 + DAY)
    assert report.finished_pending == 1
    assert not (catalog.data_dir / rows[0].path).exists()
    assert catalog.segment_by_id(rows[0].id) is None


@pytest.mark.parametrize("synced", [False, True])
def test_a_forward_clock_jump_does_not_delete_recent_footage(tmp_path, synced):
    """Synchronised or not (an attacker's NTP makes the kernel report it synchronised), a jump of the
    wall clock does not move the retention clock: footage ages only as the monotonic clock runs."""
    cfg = make_config(tmp_path, min_free_bytes=0)
    catalog = Catalog.open(tmp_path)
    readings = [ClockReading(T0 + DAY, 0, "b", synced)]
    sweeper = Sweeper(catalog, AuditLog(tmp_path / "audit.log"), cfg, tmp_path, free_space=Disk(),
                      clock=lambda: readings[-1])
    try:
        catalog.rclock_stamp = lambda meta, end_ns: sweeper.rclock.now_ns()  # stamped as they are recorded
        rows = record(catalog, days=1, per_day=4, cameras=("gate",), start=T0)
        assert sweeper.sweep().time_source == "retention"
        readings.append(ClockReading(T0 + 90 * DAY, 600 * 10**9, "b", synced))  # clock set 89 days ahead
        report = sweeper.sweep()
        assert report.clock_jump_ns is not None and report.now_ns == T0 + DAY + 600 * 10**9
        assert report.deleted == () and len(catalog.segments()) == len(rows)
        # Time keeps going on the monotonic clock: 28 days later the footage is due after all.
        readings.append(ClockReading(T0 + 90 * DAY + 28 * DAY, 28 * DAY + 600 * 10**9, "b", synced))
        assert len(sweeper.sweep().deleted) == len(rows)
    finally:
        catalog.close()


def test_footage_recorded_under_a_wrong_clock_is_kept_then_redated_when_the_clock_syncs(tmp_path):
    cfg = make_config(tmp_path, min_free_bytes=0)
    catalog = Catalog.open(tmp_path)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        # Booted at 1970: two segments with monotonic times 100 s and 160 s into the boot, catalogued
        # where no retention clock ran (they get their retention time when it starts).
        catalog.rclock_stamp = lambda meta, end_ns: None
        a = add_segment(catalog, "gate", 0, 100 * 10**9, mono_ns=100 * 10**9, boot_id="b")
        add_segment(catalog, "gate", 1, 160 * 10**9, mono_ns=160 * 10**9, boot_id="b")
        assert not a.time_ok
        sim = SimClock(T0, boot_id="b", synced=False)
        sim.mono_ns = 1000 * 10**9
        sweeper = TimedSweeper(catalog, audit, cfg, tmp_path, free_space=Disk(), sim=sim)
        assert sweeper.sweep().redated == 0  # not synchronised: not re-dated
        # Their retention time comes from this boot's anchor: they ended 840 and 900 s before it.
        assert {r.rclock_end_ns for r in catalog.segments()} == {T0 - 840 * 10**9, T0 - 780 * 10**9}
        assert sweeper.sweep().deleted == ()
        sim.synced = True
        sim.advance_to(T0 + 60 * 10**9)
        assert sweeper.sweep().redated == 2
        fixed = catalog.segment_by_id(a.id)
        assert fixed.time_ok and fixed.start_ns == T0 + 60 * 10**9 - 960 * 10**9
        assert fixed.recorded_start_ns == 100 * 10**9
        # 28 days of real (monotonic) time later, they are due.
        assert sweeper.sweep(now_ns=T0 - 840 * 10**9 + 28 * DAY - 1).deleted == ()
        assert len(sweeper.sweep(now_ns=T0 - 780 * 10**9 + 28 * DAY).deleted) == 2
    finally:
        catalog.close()


def test_undatable_footage_ages_from_its_retention_time(world):
    cfg, catalog, audit, disk, sweeper = world
    add_segment(catalog, "gate", 0, T0)
    catalog.rclock_stamp = lambda meta, end_ns: T0 + 2 * MIN  # recorded when the retention clock said so
    odd = add_segment(catalog, "gate", 1, T0 - 3600 * 10**9, boot_id="old-boot")  # clock went back an hour
    assert not odd.time_ok
    assert odd.id not in {d.id for d in sweeper.sweep(now_ns=T0 + 2 * MIN + 28 * DAY - 1).deleted}
    report = sweeper.sweep(now_ns=T0 + 2 * MIN + 28 * DAY)
    assert odd.id in {d.id for d in report.deleted}


def test_gaps_older_than_retention_are_pruned(world):
    cfg, catalog, audit, disk, sweeper = world
    catalog.add_gap("gate", T0, T0 + MIN, "camera_down")
    catalog.add_gap("gate", T0 + 20 * DAY, T0 + 20 * DAY + MIN, "camera_down")
    sweeper.sweep(now_ns=T0 + 30 * DAY)
    assert [g.from_ns for g in catalog.gaps()] == [T0 + 20 * DAY]


# ----- a full disk, clock jumps ---------------------------------------------------------------------------
class FullOnce:
    """An audit log whose disk is full until the space reserve is given up."""

    def __init__(self, audit, reserve):
        self.audit, self.reserve, self.refused = audit, reserve, 0

    def append_many(self, entries):
        if self.reserve.exists():
            self.refused += 1
            raise OSError(28, "No space left on device")
        self.audit.append_many(entries)

    def append(self, event, **fields):
        self.append_many([(event, fields)])


def test_a_sweep_on_a_full_disk_gives_up_the_space_reserve_to_name_and_delete(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=4, cameras=("gate",))
    reserve = catalog.data_dir / RESERVE_NAME
    make_reserve(reserve, 64 * 1024)
    assert reserve.stat().st_size == 64 * 1024
    sweeper.audit = full = FullOnce(audit, reserve)
    report = sweeper.sweep(now_ns=T0 + 40 * DAY)
    assert full.refused == 1 and not reserve.exists()
    assert {d.id for d in report.deleted} == {r.id for r in rows}
    assert set(deleted_in_audit(catalog.data_dir)) == {r.path for r in rows}


def test_nothing_is_marked_or_deleted_when_the_audit_line_cannot_be_written(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=4, cameras=("gate",))
    sweeper.audit = FullOnce(audit, catalog.data_dir)  # "the reserve" always exists: never any room
    with pytest.raises(OSError):
        sweeper.sweep(now_ns=T0 + 40 * DAY)
    assert catalog.marked_deleting() == []
    assert all((catalog.data_dir / r.path).exists() for r in rows)


def test_the_daemon_keeps_a_space_reserve_when_there_is_room(tmp_path):
    cfg = make_config(tmp_path, min_free_bytes=0)
    catalog = Catalog.open(tmp_path)
    try:
        sweeper = Sweeper(catalog, AuditLog(tmp_path / "audit.log"), cfg, tmp_path, free_space=Disk(),
                          reserve=SpaceReserve.in_dir(tmp_path, 128 * 1024))
        sweeper.sweep(now_ns=T0)
        assert (tmp_path / RESERVE_NAME).stat().st_size == 128 * 1024
    finally:
        catalog.close()


# ----- the space reserve ----------------------------------------------------------------------------------
def sqlite_failure(message, code):
    """A CatalogError as the catalog raises it for a failed SQLite statement."""
    inner = sqlite3.OperationalError(message)
    inner.sqlite_errorcode = code
    try:
        raise CatalogError(f"catalog: write failed: {message}") from inner
    except CatalogError as exc:
        return exc


def test_which_errors_mean_the_disk_is_full():
    assert is_disk_full_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full_error(OSError(errno.EIO, "Input/output error"))
    assert is_disk_full_error(sqlite_failure("database or disk is full", sqlite3.SQLITE_FULL))
    # Growing the WAL index (-shm) when the first process opens the catalog on a full disk.
    assert is_disk_full_error(sqlite_failure("disk I/O error", sqlite3.SQLITE_IOERR_SHMSIZE))
    assert not is_disk_full_error(sqlite_failure("disk I/O error", sqlite3.SQLITE_IOERR))
    assert not is_disk_full_error(CatalogError("catalog: cannot sync"))
    # Catalog.open hides the SQLite error from its message ("from None"); it is still its context.
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise CatalogError("catalog is unusable") from None
    except CatalogError as hidden:
        assert is_disk_full_error(hidden)


@pytest.mark.parametrize(("size", "exists", "free", "wanted"), [
    (1000, False, 2000, True),    # twice its size free: made
    (1000, False, 1999, False),   # making it must not be what fills the disk
    (1000, True, 10**9, False),   # there already
    (0, False, 10**9, False),     # a reserve of nothing (the CLI's): never made
])
def test_when_a_reserve_is_made(size, exists, free, wanted):
    assert reserve_wanted(size, exists, free) is wanted


class Writes:
    """A write that fails with ``errors`` in turn, then succeeds."""

    def __init__(self, *errors):
        self.errors, self.calls = list(errors), 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "written"


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def test_with_room_gives_up_the_reserve_and_writes_again_once(tmp_path):
    reserve = SpaceReserve.in_dir(tmp_path)
    make_reserve(reserve.path, 64 * 1024)
    write = Writes(sqlite_failure("database or disk is full", sqlite3.SQLITE_FULL))
    assert reserve.with_room(write) == "written" and write.calls == 2
    assert not reserve.path.exists()
    # No reserve left: the failure is the caller's, after one try.
    write = Writes(ENOSPC)
    with pytest.raises(OSError) as exc:
        reserve.with_room(write)
    assert exc.value is ENOSPC and write.calls == 1


def test_with_room_keeps_the_reserve_for_other_errors_and_raises_a_second_failure(tmp_path):
    reserve = SpaceReserve.in_dir(tmp_path)
    make_reserve(reserve.path, 4096)
    for error in (OSError(errno.EIO, "Input/output error"), CommandError("unknown incident id X")):
        write = Writes(error)
        with pytest.raises(type(error)):
            reserve.with_room(write)
        assert write.calls == 1 and reserve.path.exists()
    write = Writes(ENOSPC, OSError(errno.ENOSPC, "still full"))
    with pytest.raises(OSError, match="still full"):
        reserve.with_room(write)
    assert write.calls == 2 and not reserve.path.exists()


def test_keep_makes_the_reserve_only_with_room_and_release_gives_it_up(tmp_path):
    free = [10 * 1024]
    reserve = SpaceReserve(tmp_path / RESERVE_NAME, 8 * 1024, free_bytes=lambda path: free[0])
    assert not reserve.keep() and not reserve.path.exists()  # 10 KiB free: less than twice 8 KiB
    free[0] = 16 * 1024
    assert reserve.keep() and reserve.path.stat().st_size == 8 * 1024
    assert reserve.path.stat().st_blocks * 512 >= 8 * 1024  # allocated: giving it up frees real space
    assert not reserve.keep()  # already there
    assert reserve.release() and not reserve.path.exists()
    assert not reserve.release()  # nothing left to give up
    assert not SpaceReserve.in_dir(tmp_path).keep()  # size 0: the CLI's, never made


def test_a_clock_jump_is_logged_and_audited_once_by_the_sweep(tmp_path, caplog):
    cfg = make_config(tmp_path, min_free_bytes=0)
    catalog = Catalog.open(tmp_path)
    clock = [ClockReading(T0, 0, "b", True)]
    sweeper = Sweeper(catalog, AuditLog(tmp_path / "audit.log"), cfg, tmp_path, free_space=Disk(),
                      clock=lambda: clock[-1])
    try:
        assert not sweeper.clock_jumped()
        sweeper.sweep()
        clock.append(ClockReading(T0 + 3600 * 10**9 + 10**9, 10**9, "b", True))  # stepped an hour ahead
        assert sweeper.clock_jumped() and not sweeper.clock_jumped()
        report = sweeper.sweep()
        assert round(report.clock_jump_ns / 1e9) == 3600 and report.to_json_dict()["clock_jump_s"] == 3600
        assert sweeper.sweep().clock_jump_ns is None
        events = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert [(e["event"], round(e["seconds"])) for e in events if e["event"] == "clock_jump"] == [
            ("clock_jump", 3600)]
        assert len(named(from_records(caplog.records), "clock jump")) == 1
    finally:
        catalog.close()


def test_deletions_are_batched_per_directory():
    def d(i, path):
        return DeletedSegment(i, path.split("/")[0], path, 0, 0, 1, "age")

    items = [d(1, "a/2026-11-01/1.seg"), d(2, "b/2026-11-01/1.seg"), d(3, "a/2026-11-01/2.seg"),
             d(4, "a/2026-11-02/1.seg"), d(5, "a/2026-11-01/3.seg")]
    assert [[x.id for x in b] for b in batches_by_directory(items, 2)] == [[1, 3], [5], [2], [4]]


# ----- an incident committed while a sweep runs -----------------------------------------------------------
class OpensAnIncidentAfterNaming:
    """The sweep's audit log; right after the sweep names its deletions (after the plan, before any row
    is marked), an operator opens an incident through the real service on another catalog connection."""

    def __init__(self, audit, service, command, now_ns):
        self.audit, self.service, self.command, self.now_ns = audit, service, command, now_ns
        self.result = None

    def append_many(self, entries):
        self.audit.append_many(entries)
        if self.result is None and any(event == "segments_deleted" for event, _ in entries):
            self.result = self.service.handle(self.command, self.now_ns)

    def append(self, event, **fields):
        self.append_many([(event, fields)])


def test_incident_opened_between_plan_and_marking_keeps_its_footage(world):
    from edgerec.incidents import IncidentService
    from edgerec.timefmt import rfc3339

    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=24, cameras=("gate", "yard"))
    now = T0 + 40 * DAY
    hour = 3600 * 10**9
    other = Catalog.open(catalog.data_dir)  # as the CLI or another thread would
    inc_cfg = replace(cfg, incidents=replace(cfg.incidents, max_window_days=60))
    service = IncidentService(other, AuditLog(catalog.data_dir / "audit.log"), inc_cfg)
    command = {"action": "open", "id": "LATE", "camera": "gate", "from": rfc3339(T0 + 5 * hour),
               "to": rfc3339(T0 + 6 * hour), "by": "officer"}
    sweeper.audit = racer = OpensAnIncidentAfterNaming(audit, service, command, now)
    try:
        report = sweeper.sweep(now_ns=now)
        assert racer.result is not None and racer.result.ok
        incident = other.get_incident("LATE")
    finally:
        other.close()
    held = {r.id for r in rows if holds(incident, r.camera, r.start_ns, r.end_ns, now, GRACE)}
    assert len(held) == 3  # 04:00-07:00 on gate, with the rolls
    deleted = {d.id for d in report.deleted}
    assert deleted == {r.id for r in rows} - held
    for r in rows:
        assert (catalog.data_dir / r.path).exists() == (r.id in held)
    assert {r.id for r in catalog.segments()} == held and catalog.marked_deleting() == []
    # The log named them before the incident existed; it says they were spared, and its chain holds.
    events = [json.loads(line) for line in (catalog.data_dir / "audit.log").read_text().splitlines()]
    spared = [e for e in events if e["event"] == "segments_spared"]
    assert len(spared) == 1 and spared[0]["reason"] == "incident"
    assert set(spared[0]["paths"]) == {r.path for r in rows if r.id in held}
    assert verify_audit(catalog.data_dir / "audit.log").ok


def test_a_sweep_without_incident_changes_spares_nothing(world):
    cfg, catalog, audit, disk, sweeper = world
    rows = record(catalog, days=1, per_day=4, cameras=("gate",))
    report = sweeper.sweep(now_ns=T0 + 40 * DAY)
    assert {d.id for d in report.deleted} == {r.id for r in rows}
    assert "segments_spared" not in (catalog.data_dir / "audit.log").read_text()
