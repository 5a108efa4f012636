"""The daemon: owns every recorder, the sweeper, the MQTT link and the status file, and answers to systemd.

One main thread ticks a few times a second: it restarts dead recorder threads, runs retention sweeps,
writes the status file, feeds systemd's watchdog only while the recorders are healthy, and applies
signals (SIGTERM/SIGINT stop, SIGHUP reload) and config-file changes. Recorders run in their own threads
and never wait on anything here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__, clock, fsutil, keys, notify, statusfile
from .audit import AuditLog, tail_entries
from .catalog import Catalog
from .catalogqueue import CatalogQueue, Gap
from .config import CameraConfig, Config, load_config
from .errors import ConfigError, EdgerecError, UntrustedFileError
from .incidents import IncidentService
from .reconcile import reconcile, restore_incidents
from .recorder import ChainState, ConnectionChange, Recorder
from .retention import Sweeper
from .segfile import SealedSegment
from .spacereserve import RESERVE_BYTES, SpaceReserve
from .timefmt import rfc3339

if TYPE_CHECKING:  # health.py pulls in numpy: loaded only when a camera has health analysis on
    from .health import HealthChange

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
STATUS_FILE_INTERVAL_S = 2.0
RECORDER_RESTART_BACKOFF_S = (1.0, 30.0)
# A recorder that has had no packet for this long (and is not deliberately backing off) is unhealthy.
WATCHDOG_GRACE_FACTOR = 2.0
# READY=1 waits for every camera's first connection attempt, but no longer than this (TimeoutStartSec=60).
READY_TIMEOUT_S = 20.0
# A disk too small for the retention period makes every pressure sweep delete young footage: say so on
# MQTT at most this often rather than on each sweep.
DISK_LOW_EVENT_INTERVAL_S = 3600.0
# Under the free-space mark a sweep runs at once, but at most this often (a sweep that could not free
# enough is not retried every tick) ...
PRESSURE_SWEEP_MIN_INTERVAL_S = 1.0
# ... and while only held footage is left (disk_full) at most this often: nothing changes until space is
# freed, which is noticed on the next tick (one statvfs), or a hold's grace period ends.
DISK_FULL_RESWEEP_S = 30.0


def _first_attempt_done(recorder: Recorder) -> bool:
    """The camera is open, or its first attempt failed (it retries), or its thread has ended."""
    st = recorder.stats()
    return st.state != "connecting" or st.reconnects > 0 or not recorder.is_alive()


@dataclass
class _RecorderSlot:
    camera: CameraConfig
    recorder: Recorder
    restarts: int = 0
    next_restart_monotonic: float = 0.0


@dataclass
class _Signals:
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


class Daemon:
    """``edgerec run``: record every configured camera until stopped."""

    def __init__(self, config: Config, *, exit_at_eof: bool = False):
        self.config = config
        self.exit_at_eof = exit_at_eof
        self.signals = _Signals()
        self.started_monotonic = time.monotonic()
        self.started_wall_ns = time.time_ns()
        self.slots: dict[str, _RecorderSlot] = {}
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=10)
        self.disk_full = False
        self.last_sweep: dict[str, Any] | None = None
        self._next_sweep_monotonic = 0.0
        self._last_sweep_monotonic = float("-inf")
        self._next_status_monotonic = 0.0
        self._config_watcher = None
        self.mqtt = None
        # Under systemd the status file goes to the runtime directory (RAM) unless status_file says otherwise.
        self.status_path = statusfile.daemon_status_path(config.status_file, config.data_dir, os.environ)
        self._ready_sent = False
        # The status is built by the main thread only (it walks self.slots and self.last_errors, which the
        # main thread changes); other threads read this snapshot and set _status_dirty to ask for a new one.
        self.status_snapshot: dict[str, Any] | None = None
        self._status_dirty = threading.Event()
        self._snapshot_cameras: dict[str, tuple[str, bool]] = {}
        self._open_incident_ids: frozenset[str] | None = None
        self._last_disk_low_monotonic = float("-inf")
        # Why retention may not run in this process (None: it may): deleting without every hold known
        # could delete footage an incident keeps.
        self.sweeps_blocked: str | None = None
        # Sealed segments on their way into the catalog: recorder threads put, the main loop inserts.
        self.uncatalogued = CatalogQueue(
            lambda segment: self.catalog.add_segment(segment),
            lambda gap: self.catalog.add_gap(gap.camera, gap.from_ns, gap.to_ns, gap.reason))

    # ----- set-up -------------------------------------------------------------------------------------
    def _open_state(self) -> None:
        cfg = self.config
        # Footage metadata, the catalog and logs are nobody else's business, also outside systemd's UMask.
        os.umask(0o077)
        tightened = fsutil.ensure_private_dir(cfg.data_dir)  # raises when the directory is another user's
        if tightened:
            log.warning("%s", tightened)
        self.signing_key = keys.load_or_create_device_key(cfg.data_dir)
        self.recipients = [keys.parse_public_key(r) for r in cfg.recipients]
        self.catalog = Catalog.open(cfg.data_dir)
        self.audit = AuditLog(cfg.data_dir / "audit.log")
        # A line torn by a power cut would make `audit verify` report BROKEN until the next append.
        try:
            self.audit.repair_tail()
        except OSError as exc:  # e.g. a full disk: the next append cuts it instead
            log.error("audit log tail not repaired path=%s error=%s", self.audit.path, exc)
        # The daemon keeps a space reserve so that on a completely full disk a sweep can still write its
        # audit line and catalog marks, and an incident command can still be recorded.
        self.reserve = SpaceReserve.in_dir(cfg.data_dir, RESERVE_BYTES)
        # A lost catalog's incidents come back from the audit log: before anything can sweep, and before
        # the void check below, which would otherwise take every line of the lost catalog for one a power
        # cut kept from its commit. If the log cannot be read, the daemon records but never sweeps until a
        # restart succeeds: sweeping without the holds could delete the footage they keep, and not
        # recording at all would lose more.
        try:
            restore_incidents(self.catalog, self.audit, reserve=self.reserve)
        except (EdgerecError, OSError) as exc:
            self.sweeps_blocked = f"incidents not checked against the audit log: {exc}"
            self._error(f"retention disabled until a restart: {self.sweeps_blocked}")
        # reconcile logs each repair itself and records recoveries in the audit log.
        reconcile(cfg.data_dir, self.catalog, self.signing_key, device_key=self.signing_key.public_key(),
                  audit=self.audit)
        self.incidents = IncidentService(self.catalog, self.audit, cfg, self.reserve)
        try:  # an incident line whose commit a power cut prevented is voided, so log and catalog agree
            self.incidents.void_unrecorded(tail_entries(self.audit.path))
        except (EdgerecError, OSError) as exc:  # a full disk: the next start tries again
            log.error("audit log not checked against the catalog error=%s", exc)
        self.sweeper = Sweeper(self.catalog, self.audit, cfg, cfg.data_dir, reserve=self.reserve)

    def _start_mqtt(self) -> None:
        if not self.config.mqtt.enabled:
            self.mqtt = None
            return
        from .mqtt import MqttLink  # paho is only imported when MQTT is on

        link = MqttLink(
            self.config,
            status=self._mqtt_status,
            incidents=self._incidents_payload,
            on_command=self.handle_command,
        )
        try:
            link.start()
        except ConfigError as exc:  # unreadable password file or TLS files: record anyway, without MQTT
            self.mqtt = None
            self._error(f"mqtt not started: {exc}")
            return
        self.mqtt = link

    def _mqtt_status(self) -> dict[str, Any]:
        """The status for the MQTT publisher thread: the main thread's last snapshot, with the link's own
        counters read now (a snapshot taken while disconnected would say so until the next one)."""
        snapshot = self.status_snapshot or {"device_id": self.config.device_id, "state": "starting"}
        link = self.mqtt
        return {**snapshot, "mqtt": link.stats()} if link is not None else snapshot

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.signals.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.signals.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.signals.reload.set())

    def _watch_config_file(self) -> None:
        path = self.config.source_path
        if path is None:
            return
        from .configwatch import ConfigFileWatcher

        self._config_watcher = ConfigFileWatcher(path, self.signals.reload.set)
        self._config_watcher.start()

    # ----- recorders ----------------------------------------------------------------------------------
    def _chain_for(self, camera: str) -> ChainState:
        # A queued segment is newer than any catalogued one of the camera: the chain goes on from it.
        queued = self.uncatalogued.last_for(camera)
        if queued is not None:
            return ChainState(next_sequence=queued.meta.sequence + 1, prev_digest=queued.digest)
        last = self.catalog.last_segment(camera)
        if last is None:
            return ChainState(next_sequence=0, prev_digest=bytes(32))
        return ChainState(next_sequence=last.sequence + 1, prev_digest=bytes.fromhex(last.digest))

    def _make_recorder(self, camera: CameraConfig) -> Recorder:
        cfg = self.config
        return Recorder(
            camera,
            data_dir=cfg.data_dir,
            device_id=cfg.device_id,
            segment_seconds=cfg.segment_seconds,
            durability=cfg.durability,
            recipients=self.recipients,
            signing_key=self.signing_key,
            chain=self._chain_for(camera.name),
            on_sealed=self._on_sealed,
            on_gap=self._on_gap,
            may_start_segment=lambda: not self.disk_full,
            exit_at_eof=self.exit_at_eof,
            health_thresholds=cfg.health,
            on_health=self._on_health,
            on_connection=self._on_connection,
        )

    def _start_camera(self, camera: CameraConfig) -> None:
        recorder = self._make_recorder(camera)
        self.slots[camera.name] = _RecorderSlot(camera, recorder)
        recorder.start()
        log.info("camera started camera=%s url_kind=%s", camera.name, camera.kind)

    def _stop_camera(self, name: str, timeout_s: float = 10.0) -> None:
        slot = self.slots.pop(name, None)
        if slot is not None:
            slot.recorder.stop(timeout_s)
            log.info("camera stopped camera=%s", name)

    def _on_sealed(self, segment: SealedSegment) -> None:
        self.uncatalogued.put(segment)  # the main loop inserts it within a tick: no SQLite on this thread

    def _catalogue_sealed(self, *, force: bool = False) -> None:
        behind = self.uncatalogued.behind()
        if self.uncatalogued.drain(force=force) or self.uncatalogued.behind() != behind:
            self._status_dirty.set()

    def _on_gap(self, camera: str, from_ns: int, to_ns: int, reason: str) -> None:
        # Reported when the gap has ended; camera_down/camera_up went out when it began and ended. Queued
        # behind the segments sealed before it, like them.
        self.uncatalogued.put(Gap(camera, from_ns, to_ns, reason))

    def _on_connection(self, change: ConnectionChange) -> None:
        """A camera stopped delivering or delivers again: audit it and publish it at once."""
        if change.up:
            fields = {"camera": change.camera, "reason": change.reason, "since": rfc3339(change.at_ns),
                      "down_since": rfc3339(change.since_ns)}
        else:
            fields = {"camera": change.camera, "reason": change.reason, "since": rfc3339(change.since_ns)}
        kind = "camera_up" if change.up else "camera_down"
        self._audit(kind, **fields)
        self._event(kind, **fields)

    def _audit(self, event: str, **fields: Any) -> None:
        """An audit line for a daemon event; a disk too full to take it must not stop the daemon."""
        try:
            self.audit.append(event, **fields)
        except OSError as exc:
            log.error("audit line not written event=%s error=%s", event, exc)

    def _on_health(self, camera: str, change: HealthChange) -> None:
        fields = {"camera": camera, "condition": change.condition, "active": change.active,
                  "detail": change.detail}
        log.warning("health change camera=%s condition=%s active=%s detail=%s", camera, change.condition,
                    change.active, change.detail)
        self._audit("tamper", **fields)
        self._event("tamper", **fields)

    def _supervise_recorders(self, now: float) -> None:
        for name, slot in list(self.slots.items()):
            rec = slot.recorder
            if rec.is_alive() or rec.finished:
                continue
            if now < slot.next_restart_monotonic:
                continue
            if slot.next_restart_monotonic == 0.0:
                delay = min(RECORDER_RESTART_BACKOFF_S[0] * 2**slot.restarts, RECORDER_RESTART_BACKOFF_S[1])
                slot.next_restart_monotonic = now + delay
                self._error(f"recorder thread for {name} died; restarting in {delay:.0f} s")
                continue
            slot.restarts += 1
            slot.next_restart_monotonic = 0.0
            slot.recorder = self._make_recorder(slot.camera)
            slot.recorder.start()

    def recorders_healthy(self) -> bool:
        """Feeds systemd's watchdog: every recorder alive and receiving, or backing off on purpose."""
        return self.health_problem() is None

    def health_problem(self) -> str | None:
        """Why the watchdog is withheld (for the log), or None when the daemon is healthy."""
        for name, slot in self.slots.items():
            rec = slot.recorder
            if rec.finished:
                continue
            if not rec.is_alive():
                return f"recorder thread of camera {name} is dead"
            st = rec.stats()
            if st.state in ("backoff", "connecting", "waiting_disk"):
                continue
            age = st.last_packet_age_s
            if age is not None and age > slot.camera.stall_seconds * WATCHDOG_GRACE_FACTOR:
                return f"camera {name} sent nothing for {age:.1f} s while recording"
        if self.mqtt is not None and not self.mqtt.thread_alive():
            return "mqtt thread is dead"
        return None

    # ----- incidents (CLI and MQTT share IncidentService.handle; this is the MQTT entry) -----------------
    def handle_command(self, obj: dict[str, Any]) -> dict[str, Any]:
        result = self.incidents.handle(obj, time.time_ns())
        if result.ok and not result.duplicate:
            # The event also asks the main loop for a new status; it republishes the incident list when it
            # sees the set of open incidents change (as it does for incidents opened with the CLI).
            self._event(f"incident_{'opened' if result.action == 'open' else 'closed'}", id=result.id)
        return result.to_json_dict()

    def _incidents_payload(self) -> list[dict[str, Any]]:
        """Open incidents with their windows and held segment counts (MQTT publisher thread; the catalog
        serialises its callers)."""
        return self.incidents.incidents_payload()

    # ----- retention ----------------------------------------------------------------------------------
    def _sweep(self, reason: str) -> None:
        try:
            report = self.sweeper.sweep()
        except (EdgerecError, OSError) as exc:
            # A sweep that cannot write (a disk so full that even the space reserve did not help) must
            # not stop the daemon; under the mark, recording pauses as for held footage and resumes by
            # itself once a later sweep succeeds.
            self._error(f"retention sweep failed: {exc}")
            try:
                full = self.sweeper.below_min_free()
            except OSError:
                full = self.disk_full
            self._set_disk_full(full, shortfall_bytes=None, min_free_bytes=None)
            return
        self.last_sweep = {"at": rfc3339(time.time_ns()), "deleted": len(report.deleted), "reason": reason}
        if report.clock_jump_ns is not None:
            # The sweeper has logged and audited the jump; the daemon only publishes it.
            self._event("clock_jump", seconds=round(report.clock_jump_ns / 1e9, 3),
                        retention_time=report.time_source)
        if report.deleted:
            self._event("retention_swept", deleted=len(report.deleted), bytes=report.deleted_bytes)
        early = report.by_reason().get("disk_pressure", 0)
        if early and time.monotonic() >= self._last_disk_low_monotonic + DISK_LOW_EVENT_INTERVAL_S:
            self._last_disk_low_monotonic = time.monotonic()
            log.warning("disk low: footage deleted before its retention period deleted=%d free_bytes=%d "
                        "min_free_bytes=%d", early, report.free_bytes, report.min_free_bytes)
            self._event("disk_low", deleted=early, free_bytes=report.free_bytes,
                        min_free_bytes=report.min_free_bytes)
        self._set_disk_full(report.disk_full, shortfall_bytes=report.shortfall_bytes,
                            min_free_bytes=report.min_free_bytes)

    def _set_disk_full(self, full: bool, **fields: Any) -> None:
        """The disk-full gate: recorders start no new segment while it is set (``may_start_segment``)."""
        was_full, self.disk_full = self.disk_full, full
        if full and not was_full:
            self._error("disk full: only held footage is left; not starting new segments")
            self._event("disk_full", **fields)
        elif was_full and not full:
            log.warning("disk space back; recording resumes")
            self._event("disk_ok")

    def _maybe_sweep(self, now: float) -> None:
        """Sweep every sweep_interval_s, at once after a clock jump, and under the free-space mark (at
        most every PRESSURE_SWEEP_MIN_INTERVAL_S, or DISK_FULL_RESWEEP_S while only held footage is
        left); when space comes back while the disk is full, at once."""
        if self.sweeps_blocked is not None:
            return
        if self.sweeper.clock_jumped():
            self._next_sweep_monotonic = 0.0  # the sweep logs, audits and publishes the jump (once)
        pressure = self.sweeper.below_min_free()
        due = now >= self._next_sweep_monotonic
        if pressure:
            wait_s = DISK_FULL_RESWEEP_S if self.disk_full else PRESSURE_SWEEP_MIN_INTERVAL_S
            due = due or now >= self._last_sweep_monotonic + wait_s
        elif self.disk_full:
            due = True
        if due:
            self._next_sweep_monotonic = now + self.config.retention.sweep_interval_s
            self._last_sweep_monotonic = now
            self._catalogue_sealed(force=True)  # so that the sweep sees (and counts) every sealed segment
            self._sweep("disk_pressure" if pressure else "interval")

    # ----- status -------------------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.last_errors.append({"at": rfc3339(time.time_ns()), "message": message})

    def _event(self, kind: str, **fields: Any) -> None:
        """Publish an event (any thread). Every event also changes the status: ask the main loop for a
        fresh snapshot, which it then publishes at once."""
        self._status_dirty.set()
        link = self.mqtt
        if link is not None:
            link.publish_event(kind, **fields)

    def status(self) -> dict[str, Any]:
        cfg = self.config
        now_ns = time.time_ns()
        cameras: dict[str, Any] = {}
        summaries = self.catalog.camera_summaries()
        for name, slot in self.slots.items():
            st = slot.recorder.stats()
            summary = summaries.get(name)
            cameras[name] = {
                "state": st.state,
                "connected": st.connected,
                "fps": round(st.fps, 2),
                "bitrate_bps": int(st.bitrate_bps),
                "last_packet_age_s": None if st.last_packet_age_s is None else round(st.last_packet_age_s, 2),
                "segments": summary.segments if summary else 0,
                "bytes": summary.bytes if summary else 0,
                "oldest": rfc3339(summary.oldest_start_ns) if summary else None,
                "newest": rfc3339(summary.newest_end_ns) if summary else None,
                "health": st.health,
                "last_error": st.last_error,
                "reconnects": st.reconnects,
                "gaps": self.catalog.count_gaps(name),
                "down_since": rfc3339(st.down_since_ns),
                "down_reason": st.down_reason,
                "last_gap": None if st.last_gap is None else {
                    "from": rfc3339(st.last_gap[0]), "to": rfc3339(st.last_gap[1]), "reason": st.last_gap[2]},
                "stalls": st.stalls,
                "timestamp_discontinuities": st.discontinuities,
                "thread_restarts": slot.restarts,
            }
        usage = shutil.disk_usage(cfg.data_dir)
        oldest = min((s.oldest_start_ns for s in summaries.values() if s.oldest_start_ns), default=None)
        return {
            "version": __version__,
            "device_id": cfg.device_id,
            "pid": os.getpid(),
            "started_at": rfc3339(self.started_wall_ns),
            "updated_at": rfc3339(now_ns),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "state": "disk_full" if self.disk_full else "recording",
            "clock": {"synced": clock.clock_synced(), "boot_id": clock.boot_id()},
            # Kept in memory by AuditLog (one stat per status): stored off the device, it anchors the log.
            "audit_head": self.audit.head().to_json_dict(),
            "cameras": cameras,
            "disk": {
                "free_bytes": usage.free,
                "free_pct": round(100.0 * usage.free / usage.total, 2) if usage.total else 0.0,
                "used_bytes": usage.used,
                "total_bytes": usage.total,
            },
            "oldest_footage_age_s": None if oldest is None else round((now_ns - oldest) / 1e9),
            "retention": {
                "days": cfg.retention.days,
                "last_sweep": self.last_sweep and self.last_sweep["at"],
                "deleted_last_sweep": self.last_sweep and self.last_sweep["deleted"],
                "disk_full": self.disk_full,
            },
            "incidents_open": len(self.incidents.list_open()),
            "held_bytes": self.catalog.held_bytes(now_ns, cfg.incidents),
            "uncatalogued_segments": self.uncatalogued.behind(),
            "mqtt": self.mqtt.stats() if self.mqtt is not None else {"enabled": False},
            "last_errors": list(self.last_errors),
        }

    def _write_status(self, now: float) -> None:
        """Main thread: rebuild the status snapshot every STATUS_FILE_INTERVAL_S, or on the next tick when
        something changed (an event, a camera's state), and hand it to the status file, systemd and MQTT."""
        changed = self._status_dirty.is_set() or self._camera_states() != self._snapshot_cameras
        if not changed and now < self._next_status_monotonic:
            return
        self._status_dirty.clear()  # before building: a change during the build asks for another one
        self._next_status_monotonic = now + STATUS_FILE_INTERVAL_S
        try:
            status = self.status()
        except OSError as exc:  # disk_usage of the data directory
            log.warning("status not built error=%s", exc)
            return
        self.status_snapshot = status  # replaced, never changed in place: readers may be serialising it
        self._snapshot_cameras = {n: (c["state"], c["connected"]) for n, c in status["cameras"].items()}
        self._notify_mqtt(changed)
        try:
            statusfile.write_status(self.status_path, status)
        except OSError as exc:
            log.warning("status file not written path=%s error=%s", self.status_path, exc)
            return
        notify.status(self._status_line(status))

    def _camera_states(self) -> dict[str, tuple[str, bool]]:
        """What a status change is made of, per camera (cheap enough for every tick)."""
        states = {}
        for name, slot in self.slots.items():
            st = slot.recorder.stats()
            states[name] = (st.state, st.connected)
        return states

    def _notify_mqtt(self, changed: bool) -> None:
        """Publish the new snapshot at once when something changed, and the incident list when the set of
        open incidents changed (commands over MQTT, and the CLI, which writes the catalog directly)."""
        link = self.mqtt
        if link is None:
            return
        open_ids = frozenset(i.id for i in self.incidents.list_open())
        if open_ids != self._open_incident_ids:
            if self._open_incident_ids is not None:  # the first time: the link publishes them on connect
                link.publish_incidents()
                changed = True
            self._open_incident_ids = open_ids
        if changed:
            link.status_changed()

    @staticmethod
    def _status_line(status: dict[str, Any]) -> str:
        cams = status["cameras"]
        recording = sum(1 for c in cams.values() if c["state"] == "recording")
        return (f"{recording}/{len(cams)} cameras recording, {status['incidents_open']} open incidents, "
                f"disk {status['disk']['free_pct']}% free")

    # ----- reload -------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config file (SIGHUP or an edit of the file); a broken file changes nothing."""
        log.info("config reload requested path=%s", self.config.source_path)
        announce = self._ready_sent  # before the first READY=1 systemd is still waiting for start-up
        if announce:
            notify.reloading()
        try:
            self._reload()
        finally:
            if announce:
                notify.ready()

    def _maybe_ready(self, now: float) -> None:
        """READY=1 once every camera is open or has failed its first attempt and is retrying, so that
        `systemctl start` returns with the cameras connected; or after READY_TIMEOUT_S, so that a camera
        that neither answers nor fails cannot hold up the start."""
        if self._ready_sent:
            return
        waiting = [name for name, slot in self.slots.items() if not _first_attempt_done(slot.recorder)]
        if waiting and now - self.started_monotonic < READY_TIMEOUT_S:
            return
        self._ready_sent = True
        notify.ready()
        log.info("edgerec running device_id=%s cameras=%d still_connecting=%s", self.config.device_id,
                 len(self.slots), ",".join(waiting) or "none")

    def _reload(self) -> None:
        path = self.config.source_path
        if path is None:
            return
        try:
            new = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                self._error(f"config reload rejected: {problem}")
            log.warning("config reload rejected; the running configuration stays path=%s problems=%d",
                        path, len(exc.problems))
            if isinstance(exc, UntrustedFileError):  # someone else may have tried to change what we run
                self._audit("config_refused", path=str(path), problems=exc.problems)
            return
        if new == self.config:
            log.info("config unchanged path=%s", path)
            return
        immutable = [k for k in ("device_id", "data_dir") if getattr(new, k) != getattr(self.config, k)]
        if immutable:
            self._error(f"config reload rejected: {', '.join(immutable)} cannot change while running")
            return
        old = self.config
        self.config = new
        self.recipients = [keys.parse_public_key(r) for r in new.recipients]
        old_cams = {c.name: c for c in old.cameras if c.enabled}
        new_cams = {c.name: c for c in new.cameras if c.enabled}
        recording_changed = (old.segment_seconds, old.durability, old.recipients, old.health) != (
            new.segment_seconds, new.durability, new.recipients, new.health)
        removed = sorted(old_cams.keys() - new_cams.keys())
        for name in removed:
            self._stop_camera(name)
        restarted = []
        for name, cam in new_cams.items():
            if name in old_cams and old_cams[name] == cam and not recording_changed:
                continue
            if name in self.slots:
                self._stop_camera(name)  # seals the open segment: the restart is at a segment boundary
                restarted.append(name)
            self._start_camera(cam)
        self.incidents.reconfigure(new)
        # The same sweeper keeps its clock history, so a reload cannot make it trust a jumped clock.
        self.sweeper.reconfigure(new)
        if old.mqtt != new.mqtt:
            # The old link clears the Home Assistant entities the new settings leave behind at the old
            # place (removed cameras; all of them when discovery, the broker or the prefix changed); what
            # it could not send, a new link to the same broker sends once connected.
            unsent = self.mqtt.stop(next_config=new) if self.mqtt is not None else []
            self._start_mqtt()
            if unsent and self.mqtt is not None:
                self.mqtt.take_over_removals(unsent, previous=old)
        elif self.mqtt is not None:
            self.mqtt.reconfigure(new)  # same link; discovery follows the cameras added or removed
        self._status_dirty.set()
        added = sorted(new_cams.keys() - old_cams.keys())
        self._audit("config_changed", path=str(path), cameras_added=added, cameras_removed=removed,
                    cameras_restarted=sorted(restarted))
        log.info("config reloaded path=%s cameras=%s", path, ",".join(sorted(new_cams)))

    # ----- main loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signal_handlers()
        self._open_state()
        default_status = self.config.data_dir / statusfile.STATUS_FILE_NAME
        if self.status_path != default_status and statusfile.remove_leftover(default_status):
            log.info("old status file removed path=%s now_at=%s", default_status, self.status_path)
        try:
            # Watch first, then check once: an edit made while the cameras were starting is not missed.
            self._watch_config_file()
            self.signals.reload.set()
            for cam in self.config.cameras:
                if cam.enabled:
                    self._start_camera(cam)
            self._write_status(time.monotonic())  # the first snapshot, for MQTT's first status
            self._start_mqtt()
            watchdog = notify.Watchdog()
            while not self.signals.stop.wait(TICK_SECONDS):
                now = time.monotonic()
                self._maybe_ready(now)
                if self.signals.reload.is_set():
                    self.signals.reload.clear()
                    self.reload()
                self._supervise_recorders(now)
                self._catalogue_sealed()
                self._maybe_sweep(now)
                self._write_status(now)
                problem = self.health_problem()
                watchdog.tick(problem is None, reason=problem)
                if self.exit_at_eof and self.slots and all(s.recorder.finished for s in self.slots.values()):
                    log.info("all file sources ended; exiting")
                    break
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        notify.stopping()
        log.info("stopping: sealing open segments")
        if self._config_watcher is not None:
            self._config_watcher.stop()
        for slot in self.slots.values():
            slot.recorder.stop(10.0)
        log.info("cameras stopped count=%d", len(self.slots))
        self._catalogue_sealed(force=True)
        if self.uncatalogued:
            log.warning("sealed segments left uncatalogued; start-up reconciliation adopts them count=%d",
                        len(self.uncatalogued))
        try:  # the last status still lists the cameras, each now 'stopped'
            statusfile.write_status(self.status_path, {**self.status(), "state": "stopped"})
        except OSError:
            pass
        if self.mqtt is not None:
            self.mqtt.stop()
        self.catalog.close()
        log.info("stopped")
