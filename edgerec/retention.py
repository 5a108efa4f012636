"""Retention: the pure policy that decides which segments to delete and why, and the sweeper that
applies it with the delete protocol and writes the audit log.

The policy (``plan_deletions``) takes candidate segments, the incidents, a time, the policy values and
the disk state, and returns deletions with their reasons:

- ``age``: the segment ended more than ``retention_days`` (per camera, default 28) ago, on the retention
  clock (``rclock_end_ns``; docs/design/time.md), never by its wall-clock stamps;
- ``released``: the same, but an incident held it past its age; it goes once the hold is released
  (close + grace period);
- ``disk_pressure``: free space is under ``min_free``; the oldest *unheld* footage across cameras goes
  first, even if younger than its age, until back above the mark. Held footage never goes for space;
  when only held footage is left the plan says ``disk_full``.

Footage with an implausible recording time (``time_ok`` false) ages like any other on the retention clock,
but disk pressure, which goes by recording time, never picks it.

Cost: the sweeper hands the policy only candidates, never the whole catalog: per camera the segments
older than its cutoff (an index range), and, only under disk pressure, the oldest segments across
cameras a page at a time until the plan frees enough. A sweep's cost therefore grows with what it
deletes (plus footage held past its age), not with the size of the catalog.

A deletion goes: audit line (fsynced) → catalog mark → unlink → directory fsync → catalog drop, a batch
at a time, so every deleted file is named in the audit log before it goes, whatever interrupts the
sweep. A completely full disk cannot take the audit line or the catalog mark, so these writes go
through the daemon's space reserve (``spacereserve.SpaceReserve``): given up when a write fails for lack
of space, made again after a sweep once there is room.

Holds come from the catalog checked against the audit log (``holdcheck.HoldChecker``), never from the
catalog alone: a sweep holds what either of them holds, and while they disagree it deletes nothing by
age (disk pressure still takes the oldest footage neither holds). See ``_checked_incidents``.

Time: a sweep runs on the retention clock (``retentionclock``, started and recorded by ``rclockstore``),
which no wall-clock jump moves; a given ``now`` may only be earlier. Clock jumps are still the sweeper's
to report: ``clock_jumped`` is a cheap check the daemon makes every tick (it only asks for a sweep at
once); the sweep writes the one ``clock_jump`` audit line and log line per jump
(``SweepReport.clock_jump_ns``), because the wall clock stamps the evidence.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from . import chainstart, rclockstore, trustedtime
from . import clock as clockmod
from . import retentionclock as rc
from .audit import AuditEntry, AuditSink
from .catalog import Catalog, IncidentRow, SegmentRow
from .errors import CatalogError, EdgerecError, UsageError
from .fsutil import fsync_dir
from .holdcheck import CheckedHolds, HoldChecker
from .holds import Holds, WindowIndex, held_index
from .layout import DataDir, day_dir_name, is_day_dir_name
from .spacereserve import SpaceReserve
from .timefmt import DAY_NS, rfc3339

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 28.0
REASONS = ("age", "released", "disk_pressure")
DELETE_BATCH = 2000  # rows per mark/unlink/drop round (one directory): the catalog lock is held briefly
AUDIT_PATHS_PER_LINE = 500  # ids listed in a re-dating line
PRESSURE_FIRST_PAGE = 1024


# ----- the configuration it needs -----------------------------------------------------------------------
class RetentionSettings(Protocol):
    """The ``retention`` section of the configuration (``config.RetentionConfig``)."""

    @property
    def days(self) -> float: ...
    @property
    def sweep_interval_s(self) -> float: ...
    @property
    def min_free_bytes(self) -> int | None: ...
    @property
    def min_free_pct(self) -> float | None: ...
    @property
    def downtime_credit_days(self) -> float: ...
    @property
    def trusted_time(self) -> str | None: ...
    @property
    def trusted_time_ca_file(self) -> Path | None: ...


class CameraRetention(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def retention_days(self) -> float | None: ...


class GraceSettings(Protocol):
    @property
    def release_grace_days(self) -> float: ...


class RetentionConfigSlice(Protocol):
    """The slice of the configuration retention needs (``config.Config`` has it)."""

    @property
    def retention(self) -> RetentionSettings: ...
    @property
    def incidents(self) -> GraceSettings: ...
    @property
    def cameras(self) -> Sequence[CameraRetention]: ...


# ----- the policy (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskState:
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class RetentionPolicy:
    default_days: float = DEFAULT_RETENTION_DAYS
    camera_days: Mapping[str, float] = field(default_factory=dict)
    min_free_bytes: int | None = None
    min_free_pct: float | None = 5.0
    release_grace_ns: int = 7 * DAY_NS
    downtime_credit_ns: int = DAY_NS  # a new boot's unproven downtime credited at most (docs/design/time.md)

    @classmethod
    def from_config(cls, config: RetentionConfigSlice) -> RetentionPolicy:
        r = config.retention
        return cls(
            default_days=r.days,
            camera_days={c.name: c.retention_days for c in config.cameras if c.retention_days is not None},
            min_free_bytes=r.min_free_bytes,
            min_free_pct=r.min_free_pct,
            release_grace_ns=int(config.incidents.release_grace_days * DAY_NS),
            downtime_credit_ns=int(r.downtime_credit_days * DAY_NS),
        )

    def retention_ns(self, camera: str) -> int:
        return int(self.camera_days.get(camera, self.default_days) * DAY_NS)

    @property
    def max_retention_ns(self) -> int:
        return int(max([self.default_days, *self.camera_days.values()]) * DAY_NS)

    def min_free_target(self, disk: DiskState) -> int:
        """Free bytes the disk should keep."""
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        if self.min_free_pct is not None:
            return int(disk.total_bytes * self.min_free_pct / 100.0)
        return 0


class Deletion(NamedTuple):
    segment_id: int
    reason: str  # age | released | disk_pressure


@dataclass(frozen=True)
class RetentionPlan:
    """What to delete; ``disk_full``: under the free-space mark and only held (or undatable) footage left.
    ``shortfall_bytes``: how far the plan stays below the mark (0 when it reaches it)."""

    deletions: tuple[Deletion, ...]
    disk_full: bool = False
    shortfall_bytes: int = 0
    freed_bytes: int = 0

    def __iter__(self) -> Iterator[Deletion]:
        return iter(self.deletions)

    def __len__(self) -> int:
        return len(self.deletions)


def plan_deletions(segments: Iterable[SegmentRow], incidents: Iterable[IncidentRow], now_ns: int,
                   policy: RetentionPolicy, disk: DiskState, *, complete: bool = True) -> RetentionPlan:
    """Decide which of ``segments`` to delete at ``now_ns`` and why.

    ``segments`` are the candidates (duplicates are ignored); ``complete`` says they include every
    deletable segment, so that a remaining shortfall means the disk is full of held footage (when
    False, the caller fetches more candidates and plans again).
    """
    hold = Holds.at(incidents, now_ns, policy.release_grace_ns)

    deletions: list[Deletion] = []
    spare: list[SegmentRow] = []  # unheld and not yet of age: what disk pressure may take
    seen: set[int] = set()
    keep_by_camera: dict[str, int] = {}
    freed = 0
    # This loop runs once per candidate (tens of thousands when a day of many cameras expires): the
    # common case (unheld, of age, never held past it) is kept to a few cheap operations.
    held_any, released_any = hold.held.any_overlap, hold.released.any_overlap
    add_seen = seen.add
    for seg in segments:
        seg_id, camera = seg.id, seg.camera
        if seg_id in seen or seg.deleting_ns is not None:
            continue
        add_seen(seg_id)
        start_ns, end_ns = seg.start_ns, seg.end_ns
        if held_any(camera, start_ns, end_ns):
            continue
        keep_ns = keep_by_camera.get(camera)
        if keep_ns is None:
            keep_ns = keep_by_camera[camera] = policy.retention_ns(camera)
        # Age is measured on the retention clock (docs/design/time.md): from the retention time the
        # segment ended at, never from its wall-clock stamps. An unstamped row is not of age yet.
        rclock_end = seg.rclock_end_ns
        expiry_ns = rclock_end + keep_ns if rclock_end is not None else None
        if expiry_ns is not None and expiry_ns <= now_ns:
            # (released_any first: the cheap test that rules out most candidates)
            kept_past_age = released_any(camera, start_ns, end_ns) and hold.kept_past(
                camera, start_ns, end_ns, expiry_ns)
            deletions.append(Deletion(seg_id, "released" if kept_past_age else "age"))
            freed += seg.size_bytes
        elif seg.time_ok:  # disk pressure goes by recording time: only footage whose time is believed
            spare.append(seg)

    shortfall = max(0, policy.min_free_target(disk) - disk.free_bytes - freed)
    if shortfall:
        spare.sort(key=lambda s: (s.start_ns, s.id))
        for seg in spare:
            if shortfall <= 0:
                break
            deletions.append(Deletion(seg.id, "disk_pressure"))
            freed += seg.size_bytes
            shortfall -= seg.size_bytes
        shortfall = max(0, shortfall)
    return RetentionPlan(tuple(deletions), disk_full=bool(shortfall) and complete, shortfall_bytes=shortfall,
                         freed_bytes=freed)


def _trusted_time_source(settings: RetentionSettings) -> Callable[[], int | None] | None:
    """The configured authenticated time source (``retention.trusted_time``), asked only at a new boot."""
    url = settings.trusted_time
    if url is None:
        return None
    ca_file = settings.trusted_time_ca_file
    return lambda: trustedtime.fetch(url, ca_file)


# ----- the sweeper (I/O) ------------------------------------------------------------------------------
def statvfs_disk_state(path: Path) -> DiskState:
    # shutil.disk_usage: statvfs's f_blocks and f_bavail (space an unprivileged writer may use), as the
    # status and the space reserve read it.
    usage = shutil.disk_usage(path)
    return DiskState(total_bytes=usage.total, free_bytes=usage.free)


class DeletedSegment(NamedTuple):
    """A segment a sweep deleted (or would delete); a tuple for the same reason as SegmentRow."""

    id: int
    camera: str
    path: str
    start_ns: int
    end_ns: int
    size_bytes: int
    reason: str
    sequence: int | None = None  # its place in the camera's chain (named in the audit line)
    digest: str | None = None  # its digest (the audit line names the newest one's: chainstart.py)

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "camera": self.camera, "path": self.path, "start": rfc3339(self.start_ns),
                "end": rfc3339(self.end_ns), "bytes": self.size_bytes, "reason": self.reason}


@dataclass(frozen=True)
class SweepReport:
    now_ns: int
    time_source: str  # retention (the retention clock) | given (--now)
    dry_run: bool
    deleted: tuple[DeletedSegment, ...]
    disk_full: bool
    free_bytes: int
    min_free_bytes: int
    shortfall_bytes: int = 0
    clock_jump_ns: int | None = None
    redated: int = 0
    finished_pending: int = 0
    quarantine_deleted: int = 0
    errors: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @cached_property
    def deleted_bytes(self) -> int:
        return sum(d.size_bytes for d in self.deleted)

    @cached_property
    def _reason_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(REASONS, 0)
        for reason in (d.reason for d in self.deleted):
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def by_reason(self) -> dict[str, int]:
        return dict(self._reason_counts)

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{verb} {d.reason:<13} {d.path}  {rfc3339(d.start_ns)} .. {rfc3339(d.end_ns)}  "
               f"{d.size_bytes} bytes" for d in self.deleted]
        reasons = ", ".join(f"{k} {v}" for k, v in self.by_reason().items() if v) or "nothing"
        out.append(f"retention at {rfc3339(self.now_ns)} ({self.time_source} time): {verb} "
                   f"{len(self.deleted)} segments, {self.deleted_bytes} bytes ({reasons})")
        if self.disk_full:
            out.append(f"DISK FULL: {self.shortfall_bytes} bytes short of the free-space mark and only held "
                       "footage left; recording pauses until space returns")
        out += [f"error: {e}" for e in self.errors]
        return out

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "now": rfc3339(self.now_ns), "time_source": self.time_source, "dry_run": self.dry_run,
            "deleted": [d.to_json_dict() for d in self.deleted], "deleted_count": len(self.deleted),
            "deleted_bytes": self.deleted_bytes, "by_reason": self.by_reason(), "disk_full": self.disk_full,
            "free_bytes": self.free_bytes, "min_free_bytes": self.min_free_bytes,
            "shortfall_bytes": self.shortfall_bytes,
            "clock_jump_s": None if self.clock_jump_ns is None else self.clock_jump_ns / 1e9,
            "redated": self.redated, "finished_pending": self.finished_pending,
            "quarantine_deleted": self.quarantine_deleted, "errors": list(self.errors),
            "elapsed_s": round(self.elapsed_s, 3),
        }


class Sweeper:
    """Runs retention sweeps over a data directory: plan, then audit → mark → unlink → drop.

    ``free_space`` reads the disk (statvfs of the data directory by default); ``clock`` gives clock
    readings (``clock.read_clock`` by default). Without an explicit ``now_ns`` a sweep runs on the retention
    clock (``rclock``, the daemon's, or one started from the recorded anchors on first use); a given
    ``now_ns`` beyond it is refused unless it is a dry run.
    ``reserve``: the space reserve its writes may give up on a full disk, and that it makes again after
    each sweep (the daemon's keeps 4 MiB; by default the data directory's, kept by nobody, only given up).
    """

    def __init__(self, catalog: Catalog, audit: AuditSink, config: RetentionConfigSlice, data_dir: Path | str,
                 free_space: Callable[[], DiskState] | None = None,
                 clock: Callable[[], clockmod.ClockReading] | None = None, *,
                 reserve: SpaceReserve | None = None, rclock: rc.RetentionClock | None = None,
                 trusted_wall: Callable[[], int | None] | None = None,
                 hold_checker: HoldChecker | None = None):
        self.catalog = catalog
        self.audit = audit
        self.data_dir = Path(data_dir)
        self.policy = RetentionPolicy.from_config(config)
        self._free_space = free_space or (lambda: statvfs_disk_state(self.data_dir))
        self._clock = clock or clockmod.read_clock
        # Wall-clock jumps: one watch for the daemon's cheap per-tick check, one per sweep, which logs and
        # audits the jump. Neither moves the retention clock.
        self._clock_watch = clockmod.ClockWatch(threshold_s=config.retention.sweep_interval_s)
        self._sweep_watch = clockmod.ClockWatch(threshold_s=config.retention.sweep_interval_s)
        self._rclock = rclock
        self._trusted_wall = trusted_wall or _trusted_time_source(config.retention)
        self._audited_rclock_ns: int | None = None  # the newest anchor this sweeper wrote to the audit log
        # Every catalog or audit write of a sweep goes through it: the write that frees space must not be
        # the one that cannot be made.
        self.reserve = reserve if reserve is not None else SpaceReserve.in_dir(self.data_dir)
        self.hold_checker = hold_checker or HoldChecker(catalog, audit, DataDir(self.data_dir).audit_path)
        self.last_hold_check: CheckedHolds | None = None  # the last sweep's (the daemon reports it)

    def reconfigure(self, config: RetentionConfigSlice) -> None:
        """Take a reloaded configuration, keeping the running retention clock."""
        self.policy = RetentionPolicy.from_config(config)
        self._clock_watch.threshold_ns = int(config.retention.sweep_interval_s * 1e9)
        self._sweep_watch.threshold_ns = self._clock_watch.threshold_ns

    @property
    def rclock(self) -> rc.RetentionClock:
        """The retention clock sweeps run on; started (and its start audited) on first use unless the
        daemon handed over the one it started."""
        if self._rclock is None:
            self._rclock = self.reserve.with_room(partial(self._start_rclock, record=True))
            self._audited_rclock_ns = self._rclock.anchor.rclock_ns
        return self._rclock

    def _start_rclock(self, *, record: bool) -> rc.RetentionClock:
        audit_path = getattr(self.audit, "path", None) or DataDir(self.data_dir).audit_path
        return rclockstore.start_clock(self.catalog, self.audit, Path(audit_path), self._clock,
                                       max_credit_ns=self.policy.downtime_credit_ns,
                                       trusted_wall=self._trusted_wall, record=record)

    def peek_now_ns(self) -> int:
        """The retention clock now, without starting (or recording) it: for dry runs and CLI commands."""
        clock = self._rclock or self._start_rclock(record=False)
        return clock.now_ns()

    def clock_jumped(self) -> bool:
        """Has the wall clock jumped against the monotonic clock since the last call? A cheap check for
        the daemon's tick: it only means "sweep now"; the sweep logs and audits the jump (once)."""
        reading = self._clock()
        return self._clock_watch.observe(reading.wall_ns, reading.mono_ns) is not None

    def below_min_free(self) -> bool:
        """Is free space under the mark? (Cheap: one statvfs; the daemon asks every tick.)"""
        disk = self._free_space()
        return disk.free_bytes < self.policy.min_free_target(disk)

    # ----- one sweep --------------------------------------------------------------------------------
    def sweep(self, now_ns: int | None = None, dry_run: bool = False) -> SweepReport:
        started = time.monotonic()
        errors: list[str] = []
        redated = finished = 0
        clock = self._rclock or (self._start_rclock(record=False) if dry_run else self.rclock)
        rclock_ns, reading = clock.reading()
        jump_ns = self._sweep_watch.observe(reading.wall_ns, reading.mono_ns)
        if jump_ns is not None:
            self._clock_jump(reading, jump_ns, rclock_ns)
        if now_ns is None:
            now_ns, source = rclock_ns, "retention"
        else:
            if not dry_run and now_ns > rclock_ns:
                raise UsageError(
                    f"--now {rfc3339(now_ns)} is after the retention clock ({rfc3339(rclock_ns)}): a sweep "
                    "that deletes never runs ahead of it (docs/design/time.md); --dry-run shows what a "
                    "later sweep would delete")
            source = "given"
        # Things stamped by the wall clock alone (day directories, quarantined files, gap rows) are judged
        # by the earlier of the two clocks, so a clock set ahead or back cannot age them either.
        wall_cut_ns = min(now_ns, reading.wall_ns)
        anchor = clock.anchor if dry_run else self._checkpoint(clock)
        clock_fields = {"now": rfc3339(now_ns), "time_source": source, "clock": anchor.to_fields()}
        newest_ns = self.catalog.newest_plausible_end_ns()
        trusted = reading.synced and clockmod.plausible(reading.wall_ns, newest_ns)
        if trusted and not dry_run:
            redated = self._redate(reading)
        if not dry_run:
            finished = self._finish_pending(wall_cut_ns, errors)
            self._checkpoint_audit(anchor)

        incident_changes = self.catalog.incident_changes()  # before the incidents are read for the plan
        plan, rows, disk = self._plan(now_ns, dry_run)
        deleted = tuple(DeletedSegment(r.id, r.camera, r.path, r.start_ns, r.end_ns, r.size_bytes, d.reason,
                                        r.sequence, r.digest)
                        for d in plan.deletions for r in (rows[d.segment_id],))
        quarantine_deleted = 0
        if not dry_run:
            deleted = self._apply(deleted, now_ns, errors, incident_changes, clock_fields, wall_cut_ns)
            gaps_cutoff_ns = wall_cut_ns - self.policy.max_retention_ns
            self.reserve.with_room(lambda: self.catalog.prune_gaps(gaps_cutoff_ns))
            quarantine_deleted = self._expire_quarantine(wall_cut_ns, errors)
            self.reserve.keep()
        report = SweepReport(now_ns, source, dry_run, deleted, plan.disk_full, disk.free_bytes,
                             self.policy.min_free_target(disk), plan.shortfall_bytes, jump_ns, redated,
                             finished, quarantine_deleted, tuple(errors), time.monotonic() - started)
        self._log(report)
        return report

    def _plan(self, now_ns: int, dry_run: bool) -> tuple[RetentionPlan, dict[int, SegmentRow], DiskState]:
        cat, policy = self.catalog, self.policy
        relevant_since_ns = now_ns - policy.release_grace_ns - policy.max_retention_ns
        incidents, by_age = self._checked_incidents(relevant_since_ns, dry_run)
        candidates: list[SegmentRow] = []
        if by_age:
            for camera in cat.cameras():
                candidates += cat.expired_candidates(camera, now_ns - policy.retention_ns(camera))
        disk = self._free_space()
        plan = plan_deletions(candidates, incidents, now_ns, policy, disk, complete=False)
        page, after = PRESSURE_FIRST_PAGE, None
        while plan.shortfall_bytes:
            # Under pressure: add the oldest footage across cameras, a growing page at a time.
            more = cat.oldest_segments(page, after)
            candidates += more
            complete = len(more) < page
            plan = plan_deletions(candidates, incidents, now_ns, policy, disk, complete=complete)
            if complete:
                break
            after = (more[-1].start_ns, more[-1].id)
            page *= 2
        rows: dict[int, SegmentRow] = {}
        for seg in candidates:
            rows.setdefault(seg.id, seg)
        return plan, rows, disk

    def _checked_incidents(self, relevant_since_ns: int, dry_run: bool) -> tuple[list[IncidentRow], bool]:
        """Where a sweep's holds come from: the catalog's incidents checked against the audit log
        (``holdcheck``), and whether footage may go by age (not while the two disagree). Raises
        CatalogError when the log cannot be read: deleting without it could delete what it holds."""
        checked = self._check(relevant_since_ns, dry_run)
        return checked.incidents, checked.agrees

    def check_holds(self, now_ns: int) -> CheckedHolds:
        """Check the catalog's incidents against the audit log now (between sweeps; see ``holdcheck``)."""
        return self._check(now_ns - self.policy.release_grace_ns - self.policy.max_retention_ns, False)

    def _check(self, relevant_since_ns: int, dry_run: bool) -> CheckedHolds:
        try:
            checked = self.reserve.with_room(
                lambda: self.hold_checker.check(relevant_since_ns, write=not dry_run))
        except OSError as exc:
            raise CatalogError(f"holds not checked: the audit log {self.hold_checker.ledger.path} cannot be "
                               f"read ({exc.strerror or exc}); nothing is deleted without it") from exc
        self.last_hold_check = checked
        return checked

    # ----- the delete protocol ----------------------------------------------------------------------
    def _apply(self, planned: Sequence[DeletedSegment], now_ns: int, errors: list[str],
               incident_changes: int, clock_fields: Mapping[str, Any],
               wall_cut_ns: int) -> tuple[DeletedSegment, ...]:
        """Audit, mark, unlink, drop. ``incident_changes``: the catalog's incident counter read before
        the plan; an incident committed since then is checked against each batch as it is marked."""
        if not planned:
            return ()
        batches = batches_by_directory(planned, DELETE_BATCH)
        # The audit lines come first, all of them with one fsync: a marked row is deleted by whoever
        # finds it (the next sweep, reconciliation), so no row may be marked before the log names it.
        # If power fails part way, the next sweep deletes (and names) the rest again.
        self.reserve.with_room(lambda: self._audit_deletions(batches, clock_fields))
        done: list[DeletedSegment] = []
        guard = _HoldGuard(self.catalog, self.policy, now_ns, incident_changes)
        for planned_batch in batches:  # one directory at a time: one directory fsync per batch
            batch = self.reserve.with_room(partial(self._mark_unheld, planned_batch, guard, now_ns))
            if not batch:
                continue
            gone, dirs = self._unlink([(d.id, d.path) for d in batch], errors)
            self.reserve.with_room(partial(self.catalog.drop, gone))
            if len(gone) == len(batch):
                done += batch
            else:
                gone_set = set(gone)
                done += [d for d in batch if d.id in gone_set]
            self._remove_empty_date_dirs(dirs, wall_cut_ns)
        return tuple(done)

    def _mark_unheld(self, batch: Sequence[DeletedSegment], guard: _HoldGuard,
                     now_ns: int) -> list[DeletedSegment]:
        """Mark a batch for deletion, minus what an incident committed since the plan now holds.

        The incident counter is read in the marking transaction: an incident open commits either
        before it (and is seen here) or after the rows are marked (their deletion was decided, and named
        in the audit log, before the incident existed)."""
        with self.catalog.transaction():
            keep = list(batch)
            spared = guard.newly_held(batch)
            if spared:
                spared_ids = {d.id for d in spared}
                keep = [d for d in batch if d.id not in spared_ids]
                # The audit log already names these as deleted: say that they were not.
                self.audit.append("segments_spared", reason="incident", camera=spared[0].camera,
                                  count=len(spared), paths=[d.path for d in spared],
                                  sequences=[d.sequence for d in spared])
                log.warning("retention spared segments held by a new incident camera=%s segments=%d",
                            spared[0].camera, len(spared))
            if keep:
                self.catalog.mark_deleting([d.id for d in keep], now_ns)
        return keep

    def _audit_deletions(self, batches: Sequence[Sequence[DeletedSegment]],
                         clock_fields: Mapping[str, Any]) -> None:
        """One ``segments_deleted`` line per directory (a camera's day) and reason, naming every file and
        its sequence number (``edgerec verify`` explains holes in a camera's chain with them), the newest
        one's digest (``newest_removed``: the camera's chain goes on after it even when nothing newer is
        left, ``chainstart``), and the time it was decided at with the clock it came from
        (``clock_fields``)."""
        entries: list[AuditEntry] = []
        early = early_bytes = 0
        for batch in batches:
            by_reason: dict[str, list[DeletedSegment]] = {}
            for d in batch:
                by_reason.setdefault(d.reason, []).append(d)
            for reason, items in by_reason.items():
                size = sum(d.size_bytes for d in items)
                entries.append(("segments_deleted", {
                    "reason": reason, "camera": items[0].camera, "count": len(items), "bytes": size,
                    "paths": [d.path for d in items], "sequences": [d.sequence for d in items],
                    chainstart.NEWEST_REMOVED: chainstart.newest_removed(
                        (d.camera, d.sequence, d.digest) for d in items if d.sequence is not None),
                    **clock_fields}))
                if reason == "disk_pressure":
                    early += len(items)
                    early_bytes += size
        self.audit.append_many(entries)
        if early:
            log.warning("retention early deletion reason=disk_pressure segments=%d bytes=%d", early,
                        early_bytes)

    def _unlink(self, items: Sequence[tuple[int, str]], errors: list[str]) -> tuple[list[int], set[str]]:
        """Unlink segment files (a missing file counts as deleted); returns the ids gone and their
        directories (plain strings: pathlib costs more than the unlink itself at tens of thousands)."""
        gone: list[int] = []
        dirs: set[str] = set()
        root = os.fspath(self.data_dir) + "/"
        for seg_id, rel in items:
            try:
                os.unlink(root + rel)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"{root + rel}: cannot delete: {exc.strerror}")
                log.error("segment delete failed path=%s error=%s", root + rel, exc)
                continue
            gone.append(seg_id)
            dirs.add(root + rel.rpartition("/")[0])
        for d in dirs:
            # best effort: an unlink lost to a power cut leaves a marked row, finished by the next sweep
            fsync_dir(d, strict=False)
        return gone, dirs

    def _finish_pending(self, now_ns: int, errors: list[str]) -> int:
        """Rows left marked by an earlier sweep (a failed unlink): delete their files and rows now."""
        pending = self.catalog.marked_deleting()
        if not pending:
            return 0
        gone, dirs = self._unlink([(r.id, r.path) for r in pending], errors)
        self.reserve.with_room(lambda: self.catalog.drop(gone))
        self._remove_empty_date_dirs(dirs, now_ns)
        log.info("retention finished pending deletions segments=%d", len(gone))
        return len(gone)

    def _remove_empty_date_dirs(self, dirs: Iterable[str], now_ns: int) -> None:
        """Remove emptied ``YYYY-MM-DD`` directories of days before yesterday (today's may be in use)."""
        limit = day_dir_name(now_ns - DAY_NS)
        for d in dirs:
            name = os.path.basename(d)
            if not is_day_dir_name(name) or name >= limit or Path(d) == self.data_dir:
                continue
            try:
                os.rmdir(d)
            except OSError:
                continue  # not empty, or already gone
            log.info("retention removed empty directory path=%s", d)

    def _clock_jump(self, reading: clockmod.ClockReading, jump_ns: int, rclock_ns: int) -> None:
        """The one log line and audit line of a wall-clock jump (the daemon publishes the event). The
        retention clock does not follow it; both times are recorded."""
        seconds = round(jump_ns / 1e9, 3)
        log.warning("clock jump seconds=%.3f wall=%s synced=%s retention_time=%s", seconds,
                    rfc3339(reading.wall_ns), reading.synced, rfc3339(rclock_ns))
        self.reserve.with_room(lambda: self.audit.append(
            "clock_jump", seconds=seconds, wall=rfc3339(reading.wall_ns), synced=reading.synced,
            boot_id=reading.boot_id, retention_time=rfc3339(rclock_ns)))

    def _checkpoint(self, clock: rc.RetentionClock) -> rc.Anchor:
        """Cache a fresh anchor in the catalog. Best effort and never through the space reserve: on a full
        disk it is skipped (the audit log's anchors still bound the next start), and the reserve stays for
        the writes that free space."""
        try:
            return rclockstore.checkpoint(self.catalog, clock)
        except (EdgerecError, OSError) as exc:
            log.debug("retention clock anchor not cached error=%s", exc)
            return clock.checkpoint()

    def record_stop(self) -> None:
        """At a clean stop: the retention clock's anchor into the catalog and the audit log, so that the
        next start goes on from this moment (exactly, if it is in the same boot)."""
        if self._rclock is None:
            return
        try:
            anchor = rclockstore.checkpoint(self.catalog, self._rclock)
            self.audit.append(rclockstore.CLOCK_EVENT, by="stop", clock=anchor.to_fields(),
                              rclock=rfc3339(anchor.rclock_ns), wall=rfc3339(anchor.wall_ns))
        except (EdgerecError, OSError) as exc:  # a full disk: the next start goes on from an older anchor
            log.error("retention clock not recorded at stop error=%s", exc)

    def _checkpoint_audit(self, anchor: rc.Anchor) -> None:
        """An anchor line in the audit log at least once a day (retention time) while running, so a
        catalog lost later still finds a recent one to go on from."""
        last = self._audited_rclock_ns
        if last is not None and anchor.rclock_ns - last < rclockstore.CHECKPOINT_EVERY_NS:
            return
        try:  # not through the space reserve: it stays for the writes that free space
            self.audit.append(rclockstore.CLOCK_EVENT, by="checkpoint", clock=anchor.to_fields(),
                              rclock=rfc3339(anchor.rclock_ns), wall=rfc3339(anchor.wall_ns))
        except OSError as exc:
            log.warning("retention clock checkpoint not audited error=%s", exc)
            return
        self._audited_rclock_ns = anchor.rclock_ns

    def _redate(self, reading: clockmod.ClockReading) -> int:
        suspects = self.catalog.suspect_segments(reading.boot_id)
        if not suspects:
            return 0
        redates = clockmod.redate([(s.id, s.boot_id, s.monotonic_ns, s.start_ns, s.end_ns) for s in suspects],
                                  reading)
        n = self.catalog.apply_redates(redates)
        if n:
            self.audit.append("segments_redated", count=n, boot_id=reading.boot_id,
                              ids=[r.segment_id for r in redates][:AUDIT_PATHS_PER_LINE])
            log.warning("segments re-dated after clock sync count=%d boot_id=%s", n, reading.boot_id)
        return n

    def _expire_quarantine(self, now_ns: int, errors: list[str]) -> int:
        """Quarantined files (damaged segments set aside at start-up) follow the default retention too."""
        qdir = DataDir(self.data_dir).quarantine_dir
        if not qdir.is_dir():
            return 0
        cutoff_s = (now_ns - int(self.policy.default_days * DAY_NS)) / 1e9
        removed = []
        for path in sorted(qdir.rglob("*")):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff_s:
                    path.unlink()
                    removed.append(str(path.relative_to(self.data_dir)))
            except OSError as exc:
                errors.append(f"{path}: cannot delete: {exc.strerror}")
        if removed:
            self.audit.append("segments_deleted", reason="quarantine_age", count=len(removed), paths=removed)
            log.info("retention deleted quarantined files count=%d", len(removed))
        return len(removed)

    @staticmethod
    def _log(report: SweepReport) -> None:
        reasons = " ".join(f"{k}={v}" for k, v in report.by_reason().items())
        log.info("retention swept dry_run=%s now=%s time_source=%s deleted=%d bytes=%d %s disk_full=%s "
                 "elapsed_s=%.3f", report.dry_run, rfc3339(report.now_ns), report.time_source,
                 len(report.deleted), report.deleted_bytes, reasons, report.disk_full, report.elapsed_s)
        if report.disk_full:
            log.error("disk full: only held footage left shortfall_bytes=%d", report.shortfall_bytes)


class _HoldGuard:
    """The incidents as the sweep planned with them, re-read when the catalog's counter says an
    incident was opened or closed since."""

    def __init__(self, catalog: Catalog, policy: RetentionPolicy, now_ns: int, planned_changes: int):
        self.catalog, self.policy, self.now_ns = catalog, policy, now_ns
        self.changes = planned_changes
        self.held: WindowIndex[None] | None = None  # None: nothing changed since the plan

    def newly_held(self, batch: Sequence[DeletedSegment]) -> list[DeletedSegment]:
        """The segments of ``batch`` an incident holds now (call inside the marking transaction)."""
        changes = self.catalog.incident_changes()
        if changes != self.changes:
            grace_ns = self.policy.release_grace_ns
            self.held = held_index(self.catalog.incidents(relevant_since_ns=self.now_ns - grace_ns),
                                   self.now_ns, grace_ns)
            self.changes = changes
        if not self.held:
            return []
        return [d for d in batch if self.held.any_overlap(d.camera, d.start_ns, d.end_ns)]


def batches_by_directory(items: Sequence[DeletedSegment], limit: int) -> list[list[DeletedSegment]]:
    """Group deletions by directory (in order of first appearance), at most ``limit`` to a batch."""
    by_dir: dict[str, list[DeletedSegment]] = {}
    for d in items:
        by_dir.setdefault(d.path.rpartition("/")[0], []).append(d)
    return [group[i : i + limit] for group in by_dir.values() for i in range(0, len(group), limit)]
