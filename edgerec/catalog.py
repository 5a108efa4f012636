"""The catalog: an SQLite index of segments, gaps and incidents at ``<data_dir>/catalog.sqlite3``.

The segment files are the truth; the catalog indexes them so that listing, holds and retention need not
open files. It runs in WAL mode with ``synchronous=NORMAL`` (a power cut may lose the last commits, and
start-up reconciliation adopts the files they described). The schema is versioned with ``PRAGMA
user_version`` and upgraded by the ordered ``MIGRATIONS``.

Threading: one connection guarded by one re-entrant lock. The recorders add a row a minute each, the
sweeper deletes in batches every few minutes and incident commands are rare, so contention is nil;
a single connection gives every thread the same view, makes ``transaction()`` (several writes plus an
audit line, committed together) simple, and closes cleanly. Other processes (the CLI) open their own
``Catalog``; WAL lets them read while the daemon writes, and ``busy_timeout`` covers brief write locks.

Indexes keep every periodic query proportional to what it returns: ``(camera, start_ns)`` for listings,
windows and age candidates, ``(start_ns)`` for the oldest footage across cameras, ``(camera, sequence)``
for chains, partial indexes for rows being deleted and rows with implausible times, and per-camera
totals maintained by triggers so that status never counts rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from . import holds
from .errors import CatalogError
from .fsutil import create_private, fsync_dir, make_private
from .layout import CATALOG_NAME, DataDir
from .redact import redact
from .timefmt import DAY_NS, rfc3339
from .walltime import WALL_TIME_RULES, WallTimeRules

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
_IN_CHUNK = 500  # ids per "IN (...)" statement (well under SQLite's variable limit)
INCIDENT_CHANGES_KEY = "incident_changes"  # meta counter: incident opens + closes, see incident_changes()
INCIDENTS_CHECKED_KEY = "incidents_checked"  # meta flag: incidents checked against the audit log
HELD_CACHE_S = 60.0  # held bytes in status may lag this much behind new footage

_SCHEMA_V1 = """
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    path TEXT NOT NULL,              -- relative to the data directory, '/' separated
    start_ns INTEGER NOT NULL,       -- UTC ns (re-dated when the clock was wrong)
    end_ns INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    digest TEXT NOT NULL,            -- hex SHA-256 of the segment (its trailer's digest)
    state TEXT NOT NULL CHECK (state IN ('sealed', 'recovered')),
    clock_synced INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    monotonic_ns INTEGER NOT NULL,   -- monotonic clock at start, for re-dating
    time_ok INTEGER NOT NULL,        -- 0: recorded under an implausible wall time
    recorded_start_ns INTEGER,       -- the start as recorded, when re-dated
    deleting_ns INTEGER              -- set when marked for deletion (the delete protocol's first step)
);
CREATE UNIQUE INDEX segments_path ON segments(path);
CREATE INDEX segments_camera_start ON segments(camera, start_ns);
CREATE INDEX segments_start ON segments(start_ns);
CREATE INDEX segments_camera_sequence ON segments(camera, sequence);
CREATE INDEX segments_deleting ON segments(deleting_ns) WHERE deleting_ns IS NOT NULL;
CREATE INDEX segments_suspect ON segments(camera, sequence) WHERE time_ok = 0;

CREATE TABLE camera_totals (
    camera TEXT PRIMARY KEY,
    segments INTEGER NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
-- Rows arrive one at a time (a trigger keeps the totals); they leave in batches, and Catalog.drop
-- subtracts each batch once per camera (a per-row delete trigger would double the cost of a sweep).
CREATE TRIGGER segments_totals_insert AFTER INSERT ON segments BEGIN
    INSERT INTO camera_totals (camera, segments, bytes) VALUES (NEW.camera, 1, NEW.size_bytes)
    ON CONFLICT (camera) DO UPDATE SET segments = segments + 1, bytes = bytes + NEW.size_bytes;
END;

CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    from_ns INTEGER NOT NULL,
    to_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX gaps_camera_from ON gaps(camera, from_ns);
CREATE INDEX gaps_to ON gaps(to_ns);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,            -- a camera name or '*'
    from_ns INTEGER NOT NULL,
    to_ns INTEGER,                   -- NULL: open-ended
    reason TEXT NOT NULL,
    opened_by TEXT NOT NULL,
    opened_ns INTEGER NOT NULL,
    closed_ns INTEGER,
    closed_by TEXT,
    pre_roll_ns INTEGER NOT NULL,    -- as configured when opened
    post_roll_ns INTEGER NOT NULL
);
CREATE INDEX incidents_closed ON incidents(closed_ns);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

# The retention clock (docs/design/time.md): each segment's age is measured from the retention time it
# ended at, never from its wall-clock stamps; the newest anchor of that clock is cached here (the audit
# log is its record).
_SCHEMA_V2 = """
-- retention clock when it ended; NULL: not yet stamped
ALTER TABLE segments ADD COLUMN rclock_end_ns INTEGER;
CREATE INDEX segments_camera_rclock ON segments(camera, rclock_end_ns);
CREATE TABLE clock_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    boot_id TEXT NOT NULL,
    mono_ns INTEGER NOT NULL,
    wall_ns INTEGER NOT NULL,
    rclock_ns INTEGER NOT NULL
);
"""

# Index i upgrades a catalog from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)

_SEGMENT_COLUMNS = (
    "id, camera, sequence, path, start_ns, end_ns, size_bytes, frames, digest, state, clock_synced, "
    "boot_id, monotonic_ns, time_ok, recorded_start_ns, deleting_ns, rclock_end_ns"
)


class SegmentRow(NamedTuple):
    """A catalogued segment. An immutable tuple rather than a frozen dataclass: sweeps and listings build
    them by the tens of thousands, and a tuple is made ten times faster. Flags are SQLite's 0/1."""

    id: int
    camera: str
    sequence: int
    path: str  # relative to the data directory
    start_ns: int
    end_ns: int
    size_bytes: int
    frames: int
    digest: str
    state: str
    clock_synced: bool
    boot_id: str
    monotonic_ns: int
    time_ok: bool = True
    recorded_start_ns: int | None = None
    deleting_ns: int | None = None
    rclock_end_ns: int | None = None  # retention time it ended at (its age is measured from it)


_segment = SegmentRow._make


@dataclass(frozen=True, slots=True)
class GapRow:
    id: int
    camera: str
    from_ns: int
    to_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """An incident as stored. The hold window is [hold_start_ns, hold_end_ns] (None = no end yet)."""

    id: str
    camera: str  # a camera name or '*'
    from_ns: int
    to_ns: int | None
    reason: str
    by: str
    opened_ns: int
    closed_ns: int | None = None
    closed_by: str | None = None
    pre_roll_ns: int = 0
    post_roll_ns: int = 0

    @property
    def is_open(self) -> bool:
        return self.closed_ns is None

    # What it holds, and until when, is decided by ``holds``; these ask it.
    @property
    def hold_start_ns(self) -> int:
        return holds.window_start_ns(self)

    @property
    def hold_end_ns(self) -> int | None:
        """End of the footage held; an open-ended incident holds until it is closed (plus post-roll)."""
        return holds.window_end_ns(self)

    def released_ns(self, grace_ns: int) -> int | None:
        """When the hold ends: close time plus the grace period (None while open)."""
        return holds.released_ns(self, grace_ns)

    def holds_at(self, now_ns: int, grace_ns: int) -> bool:
        return holds.holds_at(self, now_ns, grace_ns)

    def covers(self, camera: str) -> bool:
        return holds.covers(self, camera)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "camera": self.camera, "from": rfc3339(self.from_ns), "to": rfc3339(self.to_ns),
            "reason": self.reason, "by": self.by, "opened": rfc3339(self.opened_ns),
            "closed": rfc3339(self.closed_ns), "closed_by": self.closed_by,
            "pre_roll_s": self.pre_roll_ns / 1e9, "post_roll_s": self.post_roll_ns / 1e9,
            "state": "open" if self.is_open else "closed",
        }


def _incident(row: tuple[Any, ...]) -> IncidentRow:
    return IncidentRow(*row)


_INCIDENT_COLUMNS = ("id, camera, from_ns, to_ns, reason, opened_by, opened_ns, closed_ns, closed_by, "
                     "pre_roll_ns, post_roll_ns")


class SegmentMetaLike(Protocol):
    """The header fields of a segment the catalog records (``segfile.SegmentMeta`` has them)."""

    @property
    def camera(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def clock_synced(self) -> bool: ...
    @property
    def boot_id(self) -> str: ...
    @property
    def monotonic_ns(self) -> int: ...


class ClosedSegment(Protocol):
    """A closed segment as ``add_segment`` takes it (``segfile.SealedSegment`` is one)."""

    @property
    def path(self) -> Path: ...
    @property
    def meta(self) -> SegmentMetaLike: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def state(self) -> str: ...


class NewDates(Protocol):
    """New wall times for a segment recorded under a wrong clock (``clock.Redate`` is one)."""

    @property
    def segment_id(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...


class GraceConfig(Protocol):
    """The slice of the incidents configuration the held-bytes status needs."""

    @property
    def release_grace_days(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CameraSummary:
    camera: str
    segments: int
    bytes: int
    oldest_start_ns: int | None
    newest_end_ns: int | None


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]


class Catalog:
    """The SQLite catalog of one data directory; safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, data_dir: Path, time_rules: WallTimeRules = WALL_TIME_RULES):
        self._conn = conn
        self.data_dir = data_dir
        self.path = DataDir(data_dir).catalog_path
        self.time_rules = time_rules  # which recording times are plausible (see add_segment)
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._sync_on_commit = False  # set by writes that are promises (incidents); see transaction()
        self._held_cache: tuple[tuple[int, int], float, int] | None = None  # (key, monotonic s, bytes)
        self._max_duration_ns = self._meta("max_duration_ns", 0)
        self.created = False  # set by open(): the file was made by this open (there was no catalog)
        # The retention time a new segment ended at (meta, end_ns) -> ns; set by whoever runs the retention
        # clock (the daemon, a sweeping CLI). Without one, rows stay unstamped until the next clock start
        # stamps them (``unstamped_segments``).
        self.rclock_stamp: Callable[[Any, int], int] | None = None

    # ----- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path | str, *, time_rules: WallTimeRules = WALL_TIME_RULES) -> Catalog:
        """Open (or create) the catalog of ``data_dir``. ``time_rules``: which recording times the
        catalog takes as plausible (``walltime``; the clock module applies the same rules)."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise CatalogError(f"data directory {data_dir} does not exist")
        path = DataDir(data_dir).catalog_path
        created = not path.exists() or path.stat().st_size == 0  # SQLite makes an empty file a new catalog
        if not path.exists():  # SQLite would create it 0644 under umask 022; its -wal and -shm copy its mode
            os.close(create_private(path))
        for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            make_private(existing)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            # The context (the sqlite3 error) stays attached: spacereserve.is_disk_full_error reads it.
            raise CatalogError(open_error_message(path, exc)) from None
        catalog = cls(conn, data_dir.resolve(), time_rules)
        catalog.created = created
        return catalog

    @classmethod
    def open_readonly(cls, data_dir: Path | str) -> Catalog:
        """Open an existing catalog only to read it (listing, verify): nothing is created or changed, and
        SQLite's read transactions see one committed state of it. CatalogError when there is none."""
        data_dir = Path(data_dir)
        path = DataDir(data_dir).catalog_path
        if not path.is_file():
            raise CatalogError(f"no catalog in {data_dir}: nothing has been recorded there yet")
        # With no writer (no -wal file: the daemon is stopped and closed it cleanly) the file is opened as
        # immutable: SQLite then makes no -wal and -shm files, which a reader could not remove again (and
        # which, made by root, would keep the service from opening its own catalog). With a writer they
        # exist already, owned by it, and the reader only reads them.
        immutable = "" if path.with_name(path.name + "-wal").exists() else "&immutable=1"
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True,
                                   isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a damaged file is named here
            return cls(conn, data_dir.resolve())
        except sqlite3.DatabaseError as exc:
            raise CatalogError(open_error_message(path, exc)) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ----- incidents restored from the audit log (see reconcile.restore_incidents) -------------------
    def incidents_checked(self) -> bool:
        """Has this catalog's incident table been checked against the audit log (and restored from it)?"""
        return self._meta(INCIDENTS_CHECKED_KEY, 0) == 1

    def restore_incidents(self, rows: Iterable[IncidentRow]) -> list[IncidentRow]:
        """Inside one transaction: insert the ``rows`` this catalog lacks (by id; rows it has are left as
        they are) and mark it checked against the audit log. Returns the inserted rows; none when another
        process marked it first (it restored them)."""
        with self.transaction():
            if self.incidents_checked():
                return []
            missing = [row for row in rows if self.get_incident(row.id) is None]
            for row in missing:
                self.insert_incident(row)
            self._set_meta(INCIDENTS_CHECKED_KEY, 1)
            # Synced even with nothing restored (once per catalog): a mark lost to a power cut would have
            # the next start read the whole log again and restore lines a power cut kept from the catalog.
            self._sync_on_commit = True
        return missing

    # ----- plumbing ---------------------------------------------------------------------------------
    def replace_incident(self, inc: IncidentRow) -> None:
        """Write ``inc`` over the row of its id (or insert it): the repair of a catalog that disagrees with
        the audit log (``holdcheck.repair_catalog``). Synced at commit, like every incident change."""
        with self.transaction():
            self._conn.execute(
                f"INSERT OR REPLACE INTO incidents ({_INCIDENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (inc.id, inc.camera, inc.from_ns, inc.to_ns, inc.reason, inc.by, inc.opened_ns, inc.closed_ns,
                 inc.closed_by, inc.pre_roll_ns, inc.post_roll_ns))
            self._bump_incident_changes()
            self._sync_on_commit = True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (and e.g. an audit append) into one commit; nests (inner blocks join the outer)."""
        with self._lock:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield
                finally:
                    self._tx_depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise CatalogError(f"catalog {self.path}: cannot write: {exc}") from exc
            self._tx_depth = 1
            self._sync_on_commit = False
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._tx_depth = 0
                self._sync_on_commit = False
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    where = self.path
                    raise CatalogError(f"catalog {where}: write failed: {exc}") from exc
                raise
            self._tx_depth = 0
            if self._sync_on_commit:
                self._sync_on_commit = False
                self._sync_wal()

    def _sync_wal(self) -> None:
        """Make the last commit durable. ``synchronous=NORMAL`` does not sync the WAL at commit (segment
        rows can be rebuilt from the files after a power cut), but an incident is acknowledged to its
        sender once committed and exists nowhere else. ``fsync`` of any descriptor of the WAL flushes it;
        the directory is synced too, in case the WAL file itself is new."""
        wal = self.path.with_name(CATALOG_NAME + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: the commit went straight into the database file
        except OSError as exc:
            raise CatalogError(f"catalog {wal}: cannot sync: {exc.strerror}") from exc
        try:
            os.fsync(fd)
            fsync_dir(self.data_dir, strict=True)  # strict: the incident is acknowledged after this
        except OSError as exc:
            raise CatalogError(f"catalog {wal}: cannot sync: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise CatalogError(f"catalog {self.path}: read failed: {exc}") from exc

    def _meta(self, key: str, default: int) -> int:
        row = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0][0] if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def relative_path(self, path: Path | str) -> str:
        p = Path(path)
        if not p.is_absolute():
            p = Path.cwd() / p
        try:
            return Path(os.path.normpath(p)).relative_to(self.data_dir).as_posix()
        except ValueError:
            resolved = p.resolve()
            try:
                return resolved.relative_to(self.data_dir).as_posix()
            except ValueError:
                raise CatalogError(
                    f"segment {path} is not inside the data directory {self.data_dir}") from None

    def absolute_path(self, row: SegmentRow | str) -> Path:
        return self.data_dir / (row.path if isinstance(row, SegmentRow) else row)

    # ----- segments ---------------------------------------------------------------------------------
    def add_segment(self, seg: ClosedSegment) -> SegmentRow:
        """Catalogue a sealed (or recovered) segment; adding the same path again returns the stored row.

        The wall time is judged here: before the release date, or earlier than the end of the camera's
        previous plausibly dated segment, it is marked implausible (``time_ok`` False), and retention
        leaves it alone until it is re-dated or bounded.
        """
        meta = seg.meta
        rel = self.relative_path(seg.path)
        start_ns, end_ns = int(meta.start_ns), int(seg.end_ns)
        with self.transaction():
            existing = self.segment_by_path(rel)
            if existing is not None:
                return existing
            prev = self._read(
                "SELECT end_ns FROM segments WHERE camera = ? AND sequence < ? AND time_ok = 1 "
                "ORDER BY sequence DESC LIMIT 1", (meta.camera, meta.sequence))
            prev_end = prev[0][0] if prev else None
            time_ok = self.time_rules.plausible(start_ns, prev_end)
            stamp = self.rclock_stamp
            rclock_end = stamp(meta, end_ns) if stamp is not None else None
            cur = self._conn.execute(
                "INSERT INTO segments (camera, sequence, path, start_ns, end_ns, size_bytes, frames, digest, "
                "state, clock_synced, boot_id, monotonic_ns, time_ok, rclock_end_ns) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (meta.camera, int(meta.sequence), rel, start_ns, end_ns, int(seg.size_bytes), int(seg.frames),
                 bytes(seg.digest).hex(), seg.state, int(bool(meta.clock_synced)), str(meta.boot_id),
                 int(meta.monotonic_ns), int(time_ok), rclock_end))
            duration = max(0, end_ns - start_ns)
            if duration > self._max_duration_ns:
                self._max_duration_ns = duration
                self._set_meta("max_duration_ns", duration)
            seg_id = cur.lastrowid
        if not time_ok:
            log.warning("segment time implausible camera=%s path=%s start=%s previous_end=%s",
                        meta.camera, rel, rfc3339(start_ns), rfc3339(prev_end))
        row = self.segment_by_id(int(seg_id or 0))
        assert row is not None
        return row

    def segment_by_id(self, seg_id: int) -> SegmentRow | None:
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE id = ?", (seg_id,))
        return _segment(rows[0]) if rows else None

    def segment_by_path(self, path: str) -> SegmentRow | None:
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE path = ?", (path,))
        return _segment(rows[0]) if rows else None

    def _overlap_clause(self, start_ns: int | None, end_ns: int | None) -> tuple[str, list[int]]:
        """SQL selecting segments overlapping [start_ns, end_ns]; bounded on start_ns so the index is used."""
        clauses, params = [], []
        if end_ns is not None:
            clauses.append("start_ns <= ?")
            params.append(end_ns)
        if start_ns is not None:
            clauses.append("start_ns >= ? AND end_ns >= ?")
            params += [start_ns - self._max_duration_ns, start_ns]
        return " AND ".join(clauses), params

    def segments(self, camera: str | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> list[SegmentRow]:
        """Segments (of a camera) overlapping [start_ns, end_ns] (None = unbounded), in start order."""
        clause, params = self._overlap_clause(start_ns, end_ns)
        where = [c for c in (clause, "camera = ?" if camera is not None else "") if c]
        if camera is not None:
            params.append(camera)  # type: ignore[arg-type]
        sql = f"SELECT {_SEGMENT_COLUMNS} FROM segments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY camera, start_ns" if camera is None else " ORDER BY start_ns"
        return [_segment(r) for r in self._read(sql, params)]

    def last_segment(self, camera: str) -> SegmentRow | None:
        """The camera's segment with the highest sequence number (the head of its chain)."""
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE camera = ? "
                          "ORDER BY sequence DESC LIMIT 1", (camera,))
        return _segment(rows[0]) if rows else None

    def cameras(self) -> list[str]:
        """Cameras with footage (an index skip-scan: one probe per camera, not per row)."""
        rows = self._read(
            "WITH RECURSIVE c(name) AS (SELECT min(camera) FROM segments UNION ALL "
            "SELECT (SELECT min(camera) FROM segments WHERE camera > c.name) FROM c "
            "WHERE c.name IS NOT NULL) "
            "SELECT name FROM c WHERE name IS NOT NULL")
        return [r[0] for r in rows]

    def expired_candidates(self, camera: str, cutoff_ns: int) -> list[SegmentRow]:
        """Segments of ``camera`` that ended at or before ``cutoff_ns`` on the retention clock (not being
        deleted). Their wall-clock stamps play no part: a wrongly set clock cannot age footage."""
        return [_segment(r) for r in self._read(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE camera = ? AND rclock_end_ns <= ? "
            "AND deleting_ns IS NULL ORDER BY start_ns", (camera, cutoff_ns))]

    def unstamped_segments(self) -> list[tuple[int, str, int, int]]:
        """(id, boot id, monotonic ns at start, duration ns) of rows without a retention time yet: rows
        from before the retention clock existed, or added where no clock ran (a CLI, a lost catalog)."""
        return [(int(r[0]), str(r[1]), int(r[2]), max(0, int(r[4]) - int(r[3]))) for r in self._read(
            "SELECT id, boot_id, monotonic_ns, start_ns, end_ns FROM segments WHERE rclock_end_ns IS NULL")]

    def stamp_segments(self, stamps: Iterable[tuple[int, int]]) -> int:
        """Give rows (id, retention time they ended at); only rows still unstamped are changed."""
        with self.transaction():
            cur = self._conn.executemany(
                "UPDATE segments SET rclock_end_ns = ? WHERE id = ? AND rclock_end_ns IS NULL",
                [(r, seg_id) for seg_id, r in stamps])
            return cur.rowcount

    def clock_anchor(self) -> tuple[str, int, int, int] | None:
        """The cached newest anchor of the retention clock: (boot id, monotonic, wall, retention time)."""
        rows = self._read("SELECT boot_id, mono_ns, wall_ns, rclock_ns FROM clock_anchor WHERE id = 1")
        return (str(rows[0][0]), int(rows[0][1]), int(rows[0][2]), int(rows[0][3])) if rows else None

    def set_clock_anchor(self, boot_id: str, mono_ns: int, wall_ns: int, rclock_ns: int) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO clock_anchor (id, boot_id, mono_ns, wall_ns, rclock_ns) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET boot_id = excluded.boot_id, mono_ns = excluded.mono_ns, "
                "wall_ns = excluded.wall_ns, rclock_ns = excluded.rclock_ns",
                (boot_id, mono_ns, wall_ns, rclock_ns))

    def oldest_segments(self, limit: int, after: tuple[int, int] | None = None) -> list[SegmentRow]:
        """The oldest segments across cameras by (start_ns, id), after the given key (keyset paging)."""
        params: tuple[int, ...]
        if after is None:
            sql, params = "deleting_ns IS NULL", ()
        else:
            sql, params = "deleting_ns IS NULL AND (start_ns > ? OR (start_ns = ? AND id > ?))", (
                after[0], after[0], after[1])
        return [_segment(r) for r in self._read(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE {sql} ORDER BY start_ns, id LIMIT ?",
            (*params, limit))]

    def newest_plausible_end_ns(self) -> int | None:
        """End of the newest plausibly dated footage (a lower bound for the true time)."""
        rows = self._read("SELECT end_ns FROM segments WHERE time_ok = 1 ORDER BY start_ns DESC LIMIT 1")
        return rows[0][0] if rows else None

    def suspect_segments(self, boot_id: str | None = None) -> list[SegmentRow]:
        """Segments recorded under an implausible wall time (of one boot, when given)."""
        rows = self._read(f"SELECT {_SEGMENT_COLUMNS} FROM segments "
                          "WHERE time_ok = 0 AND deleting_ns IS NULL")
        segs = [_segment(r) for r in rows]
        return [s for s in segs if boot_id is None or s.boot_id == boot_id]

    def apply_redates(self, redates: Sequence[NewDates]) -> int:
        """Store new dates for footage recorded under a wrong clock (keeping the recorded start)."""
        if not redates:
            return 0
        with self.transaction():
            self._conn.executemany(
                "UPDATE segments SET recorded_start_ns = coalesce(recorded_start_ns, start_ns), "
                "start_ns = ?, end_ns = ?, time_ok = ? WHERE id = ?",
                [(r.start_ns, r.end_ns, int(self.time_rules.plausible(r.start_ns, None)), r.segment_id)
                 for r in redates])
        return len(redates)

    def mark_deleting(self, ids: Sequence[int], now_ns: int) -> None:
        """Step 1 of the delete protocol (then unlink, then ``drop``)."""
        with self.transaction():
            for chunk in _chunks(ids):
                self._conn.execute(f"UPDATE segments SET deleting_ns = ? WHERE id IN ({_marks(chunk)})",
                                   (now_ns, *chunk))

    def marked_deleting(self) -> list[SegmentRow]:
        return [_segment(r) for r in self._read(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE deleting_ns IS NOT NULL")]

    def drop(self, ids: Sequence[int]) -> None:
        """Remove rows (the delete protocol's last step, or rows whose files vanished)."""
        removed: dict[str, list[int]] = {}
        with self.transaction():
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                for camera, count, size in self._conn.execute(
                        f"SELECT camera, count(*), sum(size_bytes) FROM segments WHERE id IN ({marks}) "
                        "GROUP BY camera", tuple(chunk)):
                    totals = removed.setdefault(camera, [0, 0])
                    totals[0] += count
                    totals[1] += size
                self._conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", tuple(chunk))
            self._conn.executemany(
                "UPDATE camera_totals SET segments = segments - ?, bytes = bytes - ? WHERE camera = ?",
                [(count, size, camera) for camera, (count, size) in removed.items()])

    def paths_in_dir(self, rel_dir: str) -> dict[str, int]:
        """{file name: id} of the rows directly inside a directory (relative to the data directory)."""
        prefix = rel_dir.rstrip("/") + "/" if rel_dir not in ("", ".") else ""
        if prefix:
            rows = self._read("SELECT path, id FROM segments WHERE path >= ? AND path < ?",
                              (prefix, prefix[:-1] + "0"))  # '0' sorts right after '/'
        else:
            rows = self._read("SELECT path, id FROM segments WHERE path NOT LIKE '%/%'")
        return {p[len(prefix):]: i for p, i in rows if "/" not in p[len(prefix):]}

    def newest_of(self, ids: Sequence[int]) -> list[SegmentRow]:
        """Of the rows ``ids``, each camera's one with the highest sequence number."""
        best: dict[str, SegmentRow] = {}
        for chunk in _chunks(ids):
            # SQLite takes the bare columns of an aggregate query from the row max() picked.
            rows = self._read(f"SELECT {_SEGMENT_COLUMNS}, max(sequence) FROM segments "
                              f"WHERE id IN ({_marks(chunk)}) GROUP BY camera", chunk)
            for row in (_segment(r[:-1]) for r in rows):
                known = best.get(row.camera)
                if known is None or row.sequence > known.sequence:
                    best[row.camera] = row
        return list(best.values())

    def iter_paths(self, page: int = 5000) -> Iterator[tuple[int, str]]:
        """(id, path) of every row in path order, a page at a time (the lock is not held between pages)."""
        last = ""
        while True:
            rows = self._read("SELECT id, path FROM segments WHERE path > ? ORDER BY path LIMIT ?",
                              (last, page))
            if not rows:
                return
            yield from rows
            last = rows[-1][1]

    # ----- summaries --------------------------------------------------------------------------------
    def camera_summaries(self) -> dict[str, CameraSummary]:
        """Per camera: segment count and bytes (kept by triggers), oldest start, newest end."""
        out = {}
        for camera, count, size in self._read("SELECT camera, segments, bytes FROM camera_totals"):
            if count <= 0:
                continue
            out[camera] = CameraSummary(camera, count, size, self.oldest_start_ns(camera),
                                        self.newest_end_ns(camera))
        return out

    def oldest_start_ns(self, camera: str | None = None) -> int | None:
        if camera is None:
            rows = self._read("SELECT min(start_ns) FROM segments")
        else:
            rows = self._read("SELECT min(start_ns) FROM segments WHERE camera = ?", (camera,))
        return rows[0][0]

    def newest_end_ns(self, camera: str) -> int | None:
        rows = self._read("SELECT end_ns FROM segments WHERE camera = ? ORDER BY start_ns DESC LIMIT 1",
                          (camera,))
        return rows[0][0] if rows else None

    def totals(self) -> tuple[int, int]:
        """(segments, bytes) over all cameras."""
        rows = self._read("SELECT coalesce(sum(segments), 0), coalesce(sum(bytes), 0) FROM camera_totals")
        return rows[0][0], rows[0][1]

    def window_totals(self, camera: str, start_ns: int, end_ns: int | None) -> tuple[int, int]:
        """(segments, bytes) overlapping [start_ns, end_ns] on a camera ('*' = all cameras)."""
        clause, params = self._overlap_clause(start_ns, end_ns)
        if camera == "*":
            sql = f"SELECT count(*), coalesce(sum(size_bytes), 0) FROM segments WHERE {clause}"
        else:
            sql = f"SELECT count(*), coalesce(sum(size_bytes), 0) FROM segments WHERE camera = ? AND {clause}"
            params = [camera, *params]  # type: ignore[list-item]
        rows = self._read(sql, params)
        return rows[0][0], rows[0][1]

    def held_totals(self, now_ns: int, grace_ns: int) -> tuple[int, int]:
        """(segments, bytes) held by at least one incident at ``now_ns``, each segment counted once.

        Windows are merged per camera first (windows closer than the longest segment are joined, so a
        segment spanning two windows is not counted twice), then summed in SQL.
        """
        relevant = self.incidents(relevant_since_ns=now_ns - grace_ns)
        if not any(i.holds_at(now_ns, grace_ns) for i in relevant):
            return 0, 0
        count = size = 0
        by_camera = holds.held_windows(relevant, self.cameras(), now_ns, grace_ns,
                                       join_gap_ns=self._max_duration_ns)
        for camera, windows in by_camera.items():
            for lo, hi in windows:
                n, b = self.window_totals(camera, lo, hi)
                count += n
                size += b
        return count, size

    def held_bytes(self, now_ns: int, incidents: GraceConfig) -> int:
        """Bytes held by incidents, for status; recomputed at most every HELD_CACHE_S unless incidents
        changed, in this process or another (the CLI's): the catalog's change counter is the key.
        ``incidents`` is the IncidentsConfig (its grace period)."""
        grace_ns = int(incidents.release_grace_days * DAY_NS)
        key = (self.incident_changes(), grace_ns)
        cached = self._held_cache
        mono = time.monotonic()
        if cached is not None and cached[0] == key and mono - cached[1] < HELD_CACHE_S:
            return cached[2]
        held = self.held_totals(now_ns, grace_ns)[1]
        self._held_cache = (key, mono, held)
        return held

    # ----- gaps -------------------------------------------------------------------------------------
    def add_gap(self, camera: str, from_ns: int, to_ns: int, reason: str) -> None:
        with self.transaction():
            self._conn.execute("INSERT INTO gaps (camera, from_ns, to_ns, reason) VALUES (?, ?, ?, ?)",
                               (camera, int(from_ns), int(to_ns), redact(reason)))

    def gaps(self, camera: str | None = None, start_ns: int | None = None,
             end_ns: int | None = None) -> list[GapRow]:
        """Gaps (of a camera) overlapping [start_ns, end_ns], in time order."""
        where: list[str] = []
        params: list[str | int] = []
        if camera is not None:
            where.append("camera = ?")
            params.append(camera)
        if start_ns is not None:
            where.append("to_ns >= ?")
            params.append(start_ns)
        if end_ns is not None:
            where.append("from_ns <= ?")
            params.append(end_ns)
        sql = "SELECT id, camera, from_ns, to_ns, reason FROM gaps"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [GapRow(*r) for r in self._read(sql + " ORDER BY from_ns, camera", params)]

    def count_gaps(self, camera: str) -> int:
        return self._read("SELECT count(*) FROM gaps WHERE camera = ?", (camera,))[0][0]

    def prune_gaps(self, before_ns: int) -> int:
        """Forget gaps that ended before ``before_ns`` (the footage around them is gone too)."""
        with self.transaction():
            return self._conn.execute("DELETE FROM gaps WHERE to_ns < ?", (before_ns,)).rowcount

    # ----- incidents --------------------------------------------------------------------------------
    def get_incident(self, incident_id: str) -> IncidentRow | None:
        rows = self._read(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def insert_incident(self, inc: IncidentRow) -> None:
        with self.transaction():
            self._conn.execute(
                f"INSERT INTO incidents ({_INCIDENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (inc.id, inc.camera, inc.from_ns, inc.to_ns, inc.reason, inc.by, inc.opened_ns, inc.closed_ns,
                 inc.closed_by, inc.pre_roll_ns, inc.post_roll_ns))
            self._bump_incident_changes()
            self._sync_on_commit = True

    def close_incident(self, incident_id: str, closed_ns: int, closed_by: str) -> None:
        with self.transaction():
            self._conn.execute("UPDATE incidents SET closed_ns = ?, closed_by = ? "
                               "WHERE id = ? AND closed_ns IS NULL", (closed_ns, closed_by, incident_id))
            self._bump_incident_changes()
            self._sync_on_commit = True

    def _bump_incident_changes(self) -> None:
        """Count an incident open or close in the same transaction (see ``incident_changes``)."""
        self._set_meta(INCIDENT_CHANGES_KEY, self._meta(INCIDENT_CHANGES_KEY, 0) + 1)

    def incident_changes(self) -> int:
        """How many incident opens and closes were ever committed, by any process using this catalog.

        A retention sweep reads it when it plans and again inside the transaction that marks segments for
        deletion: if it moved, an incident was committed in between, and the sweep re-checks its plan
        against the incidents before marking anything."""
        return self._meta(INCIDENT_CHANGES_KEY, 0)

    def count_open_incidents(self) -> int:
        return self._read("SELECT count(*) FROM incidents WHERE closed_ns IS NULL")[0][0]

    def incidents(self, *, open_only: bool = False,
                  relevant_since_ns: int | None = None) -> list[IncidentRow]:
        """Incidents by opening time; ``relevant_since_ns`` keeps the open ones and those closed since."""
        params: tuple[int, ...]
        if open_only:
            sql, params = "WHERE closed_ns IS NULL", ()
        elif relevant_since_ns is not None:
            sql, params = "WHERE closed_ns IS NULL OR closed_ns >= ?", (relevant_since_ns,)
        else:
            sql, params = "", ()
        return [_incident(r) for r in self._read(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents {sql} ORDER BY opened_ns, id", params)]


def _marks(chunk: Sequence[int]) -> str:
    return ",".join("?" * len(chunk))


def open_error_message(path: Path, exc: sqlite3.DatabaseError) -> str:
    """What to tell the operator when SQLite refuses to open the catalog. Only a damaged file (not a
    database, malformed) is worth moving away; a full disk, a lock or an I/O error is not the file's fault,
    and a new catalog would not fix it."""
    if not isinstance(exc, sqlite3.OperationalError):
        return (f"catalog {path} is damaged ({exc}); stop edgerec, move it (and any {CATALOG_NAME}-wal and "
                "-shm next to it) away and start again: the catalog is rebuilt from the segment files and "
                "the audit log (segments are adopted from the files and incidents restored from the audit "
                "log)")
    keep = "the file is not damaged: keep it"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE) or "disk is full" in str(exc):
        why = f"the disk is full; {keep}, free some space and try again"
    elif primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        why = f"another process holds it locked; {keep} and try again (or stop the process that holds it)"
    elif primary == sqlite3.SQLITE_IOERR:
        why = ("the disk reported an I/O error; check it (dmesg) before anything else: a new catalog on a "
               "failing disk would not last")
    elif primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY):
        why = (f"check the owner and permissions of the file and of {path.parent} (run edgerec as the "
               f"service user); {keep}")
    else:
        why = f"{keep}; fix the cause and try again"
    return f"catalog {path} cannot be opened ({exc}): {why}"


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogError(f"catalog {path} has schema version {version}, newer than this edgerec supports "
                           f"({SCHEMA_VERSION}); upgrade edgerec")
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # executescript would commit first; run the statements one by one inside the transaction.
            for statement in _statements(MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        log.info("catalog migrated path=%s schema_version=%d", path, target + 1)


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (triggers contain ';' and end with 'END;')."""
    out, current = [], []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        current.append(stripped)
        text = "\n".join(current)
        if stripped.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            current = []
    if current:
        out.append("\n".join(current))
    return out
