"""The offloader: copies held (or all) footage to an S3-compatible bucket, in a process of its own.

``edgerec offload -c CONFIG`` runs passes every ``PASS_INTERVAL_S`` until stopped; ``--once`` runs passes
until the backlog is empty (exit 0) or the store fails (exit 1). A pass:

1. reads which footage is wanted from the catalog (segments overlapping a holding incident's window,
   or every segment with ``what: all``) and which segment files are still being written;
2. uploads each wanted sealed segment the offload table does not list, newest first, then checks it
   (``Store.put_file``: size, digest metadata and the ETag of these very bytes) and lists it;
3. uploads the complete-chunk prefix of each wanted segment still being written as a provisional
   object ``NAME.seg.partial`` (again when it has grown and ``PROVISIONAL_REFRESH_S`` has passed), and
   deletes it once the sealed segment is in the store;
4. uploads the device's public key once, and each holding incident's record whenever it changed;
   audits ``incident_offloaded`` when an incident's footage is all in the store (once while it is
   open, once after it closed).

The offloader never writes, moves or deletes footage or catalog rows: it reads them, and writes only its
own table (``offloadstate.py``), its status file and audit lines. A store that fails stops the pass; the
next one starts after a backoff (``BACKOFF_S``), so a store that is down, slow, full or refusing costs
the recorder nothing. Retention stays local: what the store keeps is the bucket's lifecycle rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import offloadstatus, segfile, statusfile, store
from .audit import AuditLog
from .catalog import Catalog, IncidentRow, SegmentRow
from .config import Config
from .errors import EdgerecError, SegmentError
from .layout import CATALOG_NAME, DEVICE_PUB_NAME, SEGMENT_SUFFIX, DataDir, start_ns_from_name
from .offloadstate import Offloaded, OffloadState
from .timefmt import DAY_NS, rfc3339

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 2.0  # how often the service looks for new work (a catalog query and a directory scan)
PROVISIONAL_REFRESH_S = 20.0  # a growing open segment is uploaded again at most this often
BACKOFF_S = (2.0, 5.0, 10.0, 30.0, 60.0)  # after a failed pass; the last one repeats
RECORD_VERSION = 1
PARTIAL_SUFFIX = SEGMENT_SUFFIX + segfile.PARTIAL_SUFFIX


# ----- what to upload (pure) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenSegment:
    """A ``.seg.partial`` file the recorder is writing."""

    rel_path: str  # camera/day/NAME.seg.partial
    camera: str
    start_ns: int


def holding_incidents(incidents: Iterable[IncidentRow], now_ns: int, grace_ns: int) -> list[IncidentRow]:
    return [i for i in incidents if i.holds_at(now_ns, grace_ns)]


def incident_wants(incident: IncidentRow, camera: str, start_ns: int, end_ns: int | None,
                   now_ns: int) -> bool:
    """Does the incident hold footage of ``camera`` spanning [start_ns, end_ns] (None: still recording)?"""
    if not incident.covers(camera):
        return False
    lo, hi = incident.hold_start_ns, incident.hold_end_ns
    end = now_ns if end_ns is None else end_ns
    return end >= lo and (hi is None or start_ns <= hi)


def wanted_open_segments(open_segments: Iterable[OpenSegment], holding: list[IncidentRow], what: str,
                         now_ns: int) -> list[OpenSegment]:
    return [s for s in open_segments
            if what == "all" or any(incident_wants(i, s.camera, s.start_ns, None, now_ns) for i in holding)]


def next_backoff_s(failures: int) -> float:
    return BACKOFF_S[min(max(failures, 1), len(BACKOFF_S)) - 1]


def incident_record(device_id: str, incident: IncidentRow, now_ns: int, grace_ns: int,
                    segments: list[dict[str, Any]], provisional: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON record of an incident as the store keeps it (no time of writing: it changes only when
    its content does, so it is uploaded only then)."""
    state = "open" if incident.is_open else ("grace" if incident.holds_at(now_ns, grace_ns) else "released")
    return {
        "record_version": RECORD_VERSION,
        "device_id": device_id,
        "incident": incident.to_json_dict(),
        "state": state,
        "hold": {"from": rfc3339(incident.hold_start_ns), "to": rfc3339(incident.hold_end_ns)},
        "segments": segments,
        "provisional": provisional,
    }


# ----- status ----------------------------------------------------------------------------------------------
@dataclass
class PassResult:
    uploaded: int = 0
    uploaded_bytes: int = 0
    # What the pass found to upload and has not uploaded (yet): key -> (start_ns, bytes). Counted before
    # the first upload, so a store that is down shows the whole backlog, not the first object.
    waiting: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None
    fatal: bool = False  # credentials refused or bucket missing: retrying will not help by itself
    incidents_complete: list[str] = field(default_factory=list)

    @property
    def backlog_segments(self) -> int:
        return len(self.waiting)

    @property
    def backlog_bytes(self) -> int:
        return sum(size for _, size in self.waiting.values())

    @property
    def oldest_waiting_ns(self) -> int | None:
        return min((start for start, _ in self.waiting.values()), default=None)

    @property
    def empty(self) -> bool:
        return not self.waiting and self.error is None

    def wait(self, key: str, start_ns: int, size: int) -> None:
        self.waiting[key] = (start_ns, size)

    def done(self, key: str) -> None:
        self.waiting.pop(key, None)


# ----- the offloader ---------------------------------------------------------------------------------------
def store_settings(config: Config) -> store.StoreSettings:
    o = config.offload
    secret = None
    if o.secret_access_key_file is not None:
        secret = store.read_secret_file(o.secret_access_key_file, "offload.secret_access_key_file")
    return store.StoreSettings(bucket=o.bucket, endpoint=o.endpoint, region=o.region,
                               access_key_id=o.access_key_id, secret_access_key=secret,
                               addressing_style=o.addressing_style)


class Offloader:
    def __init__(self, config: Config, the_store: store.Store, *, env: Mapping[str, str] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns):
        if config.device_id == store.ACCESS_DIR:
            raise EdgerecError(f"device_id {config.device_id!r} is the name of the store's access-record "
                               "folder; give the device another id to offload it")
        self.config = config
        self.store = the_store
        self.data_dir = config.data_dir
        self.prefix = config.offload.prefix
        self.device_id = config.device_id
        self.clock_ns = clock_ns
        self.status_path = offloadstatus.status_path(config.data_dir, os.environ if env is None else env)
        self._status: dict[str, Any] | None = None  # the last one written (refresh_status rewrites it)
        self._status_lock = threading.Lock()  # the pass and the heartbeat both write the file
        self._catalog: Catalog | None = None
        self._state: OffloadState | None = None
        self._audit = AuditLog(DataDir(config.data_dir).audit_path)
        self.last_error: str | None = None
        self.last_error_ns: int | None = None
        self.last_upload_ns: int | None = None
        self.refresh_s = PROVISIONAL_REFRESH_S  # --once: 0 (take every open segment as it is now)
        self.log_errors = True  # --once: the command prints the error line itself

    # ----- resources -----------------------------------------------------------------------------------
    def _open(self) -> tuple[Catalog, OffloadState]:
        if self._catalog is None or self._state is None:
            if not (self.data_dir / CATALOG_NAME).exists():
                raise EdgerecError(f"{self.data_dir}: no catalog yet (has the recorder run?)")
            self._catalog = Catalog.open(self.data_dir)
            self._state = OffloadState.open(self.data_dir)
        return self._catalog, self._state

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        if self._state is not None:
            self._state.close()
        self._catalog = self._state = None

    # ----- one pass ------------------------------------------------------------------------------------
    def run_pass(self) -> PassResult:
        result = PassResult()
        try:
            self._pass(result)
        except store.StoreError as exc:
            result.error = str(exc)
            result.fatal = isinstance(exc, store.StoreAuthError | store.StoreBucketError)
        if result.error:
            if result.error != self.last_error and self.log_errors:
                log.error("offload failed error=%r", result.error)
            self.last_error, self.last_error_ns = result.error, self.clock_ns()
        elif self.last_error is not None:
            log.info("offload works again after error=%r", self.last_error)
            self.last_error = None
        self.write_status(result)
        return result

    def _pass(self, result: PassResult) -> None:
        catalog, state = self._open()
        now_ns = self.clock_ns()
        grace_ns = int(self.config.incidents.release_grace_days * DAY_NS)
        incidents = catalog.incidents(relevant_since_ns=now_ns - grace_ns)
        holding = holding_incidents(incidents, now_ns, grace_ns)
        what = self.config.offload.what
        sealed = self._wanted_sealed(catalog, holding, what)
        open_segs = wanted_open_segments(self._open_segments(), holding, what, now_ns)
        sealed_names = {row.path for row in sealed}
        # Newest first: the footage a vandal is about to destroy; the whole backlog is counted first.
        todo = [row for row in sorted(sealed, key=lambda r: r.start_ns, reverse=True)
                if not self._is_offloaded(row, state)]
        for row in todo:
            result.wait(self._segment_key(row), row.start_ns, row.size_bytes)
        if sealed or open_segs or holding:
            self._put_device_key(state)
        # Open segments first: they are small (a refresh is only what is new) and the newest footage.
        for seg in open_segs:
            if seg.rel_path[: -len(segfile.PARTIAL_SUFFIX)] in sealed_names:
                continue
            self._put_provisional(seg, state, result, now_ns)
        for row in todo:
            self._put_sealed(row, state, result)
        self._drop_stale_provisionals(state, catalog)
        for inc in holding:
            self._put_incident(inc, catalog, state, result, now_ns, grace_ns, open_segs)

    def _wanted_sealed(self, catalog: Catalog, holding: list[IncidentRow], what: str) -> list[SegmentRow]:
        if what == "all":
            rows = catalog.segments()
        else:
            by_path: dict[str, SegmentRow] = {}
            for inc in holding:
                cameras = catalog.cameras() if inc.camera == "*" else [inc.camera]
                for camera in cameras:
                    for row in catalog.segments(camera, inc.hold_start_ns, inc.hold_end_ns):
                        by_path[row.path] = row
            rows = list(by_path.values())
        return [r for r in rows if r.deleting_ns is None]

    def _open_segments(self) -> list[OpenSegment]:
        found = []
        for path in self.data_dir.glob(f"*/*/*{PARTIAL_SUFFIX}"):
            start = start_ns_from_name(path.with_name(path.name[: -len(segfile.PARTIAL_SUFFIX)]))
            if start is not None:
                rel = path.relative_to(self.data_dir).as_posix()
                found.append(OpenSegment(rel, path.parts[-3], start))
        return found

    # ----- objects -------------------------------------------------------------------------------------
    def _put_device_key(self, state: OffloadState) -> None:
        key = store.device_pub_key(self.prefix, self.device_id)
        pub = self.data_dir / DEVICE_PUB_NAME
        if not pub.exists():
            return
        data = pub.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        row = state.get(key)
        if row is not None and row.sha256 == sha:
            return
        self.store.put_bytes(key, data, content_type="text/plain")
        state.put(Offloaded(key, "device_key", DEVICE_PUB_NAME, len(data), sha, self.clock_ns()))

    def _segment_key(self, row: SegmentRow) -> str:
        return store.segment_key_for(self.prefix, self.device_id, row.path)

    def _is_offloaded(self, row: SegmentRow, state: OffloadState) -> bool:
        done = state.get(self._segment_key(row))
        return done is not None and done.sha256 == row.digest

    def _put_sealed(self, row: SegmentRow, state: OffloadState, result: PassResult) -> None:
        key = self._segment_key(row)
        path = self.data_dir / row.path
        try:
            size, sha, etag = store.file_fingerprint(path)
        except (OSError, EdgerecError):
            result.done(key)  # deleted by retention meanwhile (it was not held, or its hold just ended)
            return
        if sha != row.digest:
            log.warning("segment file differs from its catalog digest path=%s", row.path)
        meta = {"camera": row.camera, "start": rfc3339(row.start_ns) or "", "state": row.state}
        self.store.put_file(key, path, size, sha, etag, meta)
        state.put(Offloaded(key, "segment", row.path, size, sha, self.clock_ns()))
        self._uploaded(result, size)
        result.done(key)
        provisional = store.provisional_key(key)
        if state.get(provisional) is not None:
            self.store.delete(provisional)
            state.remove(provisional)

    def _put_provisional(self, seg: OpenSegment, state: OffloadState, result: PassResult,
                         now_ns: int) -> None:
        path = self.data_dir / seg.rel_path
        try:
            prefix = segfile.readable_prefix(path)
        except SegmentError:
            return  # sealed and renamed meanwhile, or not even a header yet
        except OSError as exc:  # an error of the system: the file is fine, the next pass tries again
            log.warning("open segment not readable; offloaded at the next pass path=%s error=%s",
                        seg.rel_path, exc.strerror or exc)
            return
        if prefix.chunks == 0:
            return
        key = store.join(self.prefix, self.device_id, seg.rel_path)
        done = state.get(key)
        if done is not None and done.size_bytes >= prefix.size_bytes:
            return
        result.wait(key, seg.start_ns, prefix.size_bytes - (done.size_bytes if done else 0))
        if done is not None and now_ns - done.uploaded_ns < self.refresh_s * 1e9:
            return
        try:
            size, sha, etag = store.file_fingerprint(path, prefix.size_bytes)
        except (OSError, EdgerecError):
            result.done(key)
            return
        meta = {"camera": seg.camera, "start": rfc3339(seg.start_ns) or "", "state": "provisional",
                "chunks": str(prefix.chunks), "end": rfc3339(prefix.end_ns) or ""}
        self.store.put_file(key, path, size, sha, etag, meta)
        state.put(Offloaded(key, "provisional", seg.rel_path, size, sha, self.clock_ns()))
        self._uploaded(result, size)
        result.done(key)

    def _drop_stale_provisionals(self, state: OffloadState, catalog: Catalog) -> None:
        """A provisional object whose segment was sealed but is not wanted as a whole (its hold ended),
        or was uploaded sealed: delete it so the store never keeps a prefix beside nothing."""
        for row in state.all("provisional"):
            sealed_rel = row.path[: -len(segfile.PARTIAL_SUFFIX)]
            if (self.data_dir / row.path).exists():
                continue
            sealed_key = store.provisional_key(store.segment_key_for(self.prefix, self.device_id, sealed_rel))
            sealed_row = catalog.segment_by_path(sealed_rel)
            if sealed_row is not None and state.get(sealed_key[: -len(store.PROVISIONAL_SUFFIX)]) is None:
                continue  # the sealed one is still to come: keep the prefix until it is there
            self.store.delete(row.key)
            state.remove(row.key)

    def _put_incident(self, inc: IncidentRow, catalog: Catalog, state: OffloadState, result: PassResult,
                      now_ns: int, grace_ns: int, open_segs: list[OpenSegment]) -> None:
        segments = []
        waiting = 0
        cameras = catalog.cameras() if inc.camera == "*" else [inc.camera]
        for camera in cameras:
            for row in catalog.segments(camera, inc.hold_start_ns, inc.hold_end_ns):
                if row.deleting_ns is not None:
                    continue
                key = store.segment_key_for(self.prefix, self.device_id, row.path)
                done = state.get(key)
                offloaded = done is not None and done.sha256 == row.digest
                waiting += not offloaded
                segments.append({"key": key, "camera": camera, "start": rfc3339(row.start_ns),
                                 "end": rfc3339(row.end_ns), "sha256": row.digest, "size": row.size_bytes,
                                 "state": row.state, "offloaded": offloaded})
        provisional = []
        for seg in open_segs:
            if incident_wants(inc, seg.camera, seg.start_ns, None, now_ns):
                key = store.join(self.prefix, self.device_id, seg.rel_path)
                done = state.get(key)
                provisional.append({"key": key, "camera": seg.camera, "start": rfc3339(seg.start_ns),
                                    "bytes": done.size_bytes if done else 0,
                                    "sha256": done.sha256 if done else None})
        record = incident_record(self.device_id, inc, now_ns, grace_ns, segments, provisional)
        data = json.dumps(record, indent=2).encode() + b"\n"
        sha = hashlib.sha256(data).hexdigest()
        key = store.incident_key(self.prefix, self.device_id, inc.id)
        done = state.get(key)
        if done is None or done.sha256 != sha:
            self.store.put_bytes(key, data)
            state.put(Offloaded(key, "incident", "", len(data), sha, self.clock_ns()))
        if waiting == 0 and result.backlog_segments == 0:
            self._audit_complete(inc, state, len(segments), key)
            result.incidents_complete.append(inc.id)

    def _audit_complete(self, inc: IncidentRow, state: OffloadState, count: int, record_key: str) -> None:
        phase = "open" if inc.is_open else "closed"
        mark = f"audit-mark:{inc.id}:{phase}"
        if state.get(mark) is not None:
            return
        self._audit.append("incident_offloaded", id=inc.id, state=phase, segments=count,
                           bucket=self.config.offload.bucket, record=record_key)
        state.put(Offloaded(mark, "audit_mark", "", 0, "", self.clock_ns()))
        log.info("incident offloaded id=%s state=%s segments=%d", inc.id, phase, count)

    def _uploaded(self, result: PassResult, size: int) -> None:
        result.uploaded += 1
        result.uploaded_bytes += size
        self.last_upload_ns = self.clock_ns()

    # ----- status --------------------------------------------------------------------------------------
    def write_status(self, result: PassResult) -> None:
        status = {
            "device_id": self.device_id,
            "updated_at": rfc3339(self.clock_ns()),
            "pid": os.getpid(),
            "bucket": self.config.offload.bucket,
            "endpoint": self.config.offload.endpoint,
            "state": "error" if result.error else ("idle" if result.empty else "uploading"),
            "backlog_segments": result.backlog_segments,
            "backlog_bytes": result.backlog_bytes,
            "oldest_waiting": rfc3339(result.oldest_waiting_ns),
            "last_upload": rfc3339(self.last_upload_ns),
            "last_error": self.last_error,
            "last_error_at": rfc3339(self.last_error_ns),
        }
        with self._status_lock:
            self._status = status
            self._write_status()

    def refresh_status(self) -> None:
        """Rewrite the last status with the time now: the offloader is alive, in a long upload or a
        backoff (readers call a file older than ``offloadstatus.STALE_AFTER_S`` stale)."""
        with self._status_lock:
            if self._status is not None:
                self._status["updated_at"] = rfc3339(self.clock_ns())
                self._write_status()

    def _write_status(self) -> None:
        assert self._status is not None
        try:
            statusfile.write_status(self.status_path, self._status)
        except OSError as exc:
            log.warning("cannot write the offload status path=%s error=%s", self.status_path, exc)


# ----- running ---------------------------------------------------------------------------------------------
def run_once(offloader: Offloader, max_passes: int = 10) -> int:
    """Passes until the backlog is empty (0) or a pass fails (EdgerecError: one line, exit 1). Segments
    still being written are taken as they are at that moment (their provisional prefix)."""
    offloader.refresh_s = 0.0
    offloader.log_errors = False
    for _ in range(max_passes):
        result = offloader.run_pass()
        if result.error:
            raise EdgerecError(f"offload: {result.error}")
        if result.empty:
            return 0
    raise EdgerecError(f"offload: backlog not empty after {max_passes} passes")


def run_forever(offloader: Offloader, stop: threading.Event) -> int:
    heartbeat = threading.Thread(target=_heartbeat, args=(offloader, stop), name="offload-status",
                                 daemon=True)
    heartbeat.start()
    failures = 0
    while not stop.is_set():
        result = offloader.run_pass()
        if result.error:
            failures += 1
            delay = next_backoff_s(failures) * (2 if result.fatal else 1)
        else:
            failures = 0
            delay = 0.0 if result.uploaded else PASS_INTERVAL_S
        stop.wait(delay)
    return 0


def _heartbeat(offloader: Offloader, stop: threading.Event) -> None:
    while not stop.wait(offloadstatus.REFRESH_S):
        offloader.refresh_status()


def main(config: Config, *, once: bool) -> int:
    if not config.offload.enabled:
        raise EdgerecError("offload is not enabled in the config (offload.enabled: true)")
    settings = store_settings(config)
    the_store = store.Store(settings, store.Throttle(config.offload.bandwidth_limit_bytes_per_s))
    offloader = Offloader(config, the_store)
    try:
        if once:
            return run_once(offloader)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("offload started bucket=%s endpoint=%s what=%s", settings.bucket, settings.endpoint,
                 config.offload.what)
        return run_forever(offloader, stop)
    finally:
        offloader.close()
