"""The daemon's supervisor: owns the recorder threads, the worker thread, the MQTT link and the status
file; applies signals and config changes; answers to systemd.

Who does what (docs/design/threads.md): the main thread ticks a few times a second and never waits on
SQLite or on another thread. It restarts dead recorder threads, replaces a reloaded camera's recorder once
the old one has ended, builds the status from counters and cached catalog facts, and feeds systemd's
watchdog only while every part is alive. The worker thread (``worker.py``) does the slow jobs: catalog
inserts, retention sweeps and the disk-full gate, the catalog side of the status, and config reloads.
Recorders run in their own threads and never wait on anything here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__, chainstart, clock, fsutil, keys, notify, offloadstatus, rollback, statusfile
from ..audit import AuditLog, tail_entries
from ..catalog import Catalog
from ..catalogqueue import CatalogQueue, Gap
from ..chainheads import ChainHead
from ..ciphersuite import suite_for_config
from ..config import CameraConfig, Config, load_config
from ..errors import ConfigError, EdgerecError, UntrustedFileError
from ..holdcheck import CheckedHolds, HoldChecker
from ..incidents import IncidentService
from ..layout import DataDir
from ..reconcile import ReconcileReport, reconcile, restore_incidents
from ..recorder import ChainState, ConnectionChange, Handover, Recorder, RecorderStats
from ..retention import Sweeper
from ..segfile import SealedSegment
from ..spacereserve import RESERVE_BYTES, SpaceReserve, is_disk_full_error
from ..timefmt import rfc3339
from .reload import ReloadPlan, plan_reload
from .scheduler import DiskFullGate, SweepScheduler
from .status import (
    CameraStatus,
    CatalogFacts,
    DiskUsage,
    StatusInputs,
    build_status,
    camera_states,
    error_entry,
    read_catalog_facts,
    read_chain_heads,
    read_offload,
    status_line,
    status_news,
)
from .worker import Worker

if TYPE_CHECKING:  # health.py pulls in numpy: loaded only when a camera has health analysis on
    from ..health import HealthChange
    from ..mqtt import MqttLink, MqttLinkSettings

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
# A recorder asked to stop (reload, removal) that is still running after this long is reported; its camera
# is not restarted until it has ended (a second recorder would fork the hash chain).
RECORDER_STOP_REPORT_S = 10.0
# One worker job (a sweep of a large catalog, a reload) may take this long before the watchdog is
# withheld: a worker stuck longer no longer sweeps, so the disk would fill unseen.
WORKER_STALL_S = 300.0
# How long start-up repair waits between tries while the disk is too full for it.
REPAIR_RETRY_S = 5.0
# At shutdown, how long to wait for the worker's current job (a sweep stops between batches).
WORKER_STOP_TIMEOUT_S = 30.0
# How often the worker looks for incident changes to check against the audit log between sweeps, and
# persists a new audit head (rollback.py).
HOLD_CHECK_INTERVAL_S = 5.0
HEADS_SAVE_INTERVAL_S = 2.0
# How long start-up waits for the broker to hand back the daemon's own retained status.
RETAINED_READ_TIMEOUT_S = 3.0


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
class _Retiring:
    """A recorder asked to stop. Its camera's next recorder (``replacement``) starts only once this one
    has ended, from what it hands over (``Recorder.handover``)."""

    recorder: Recorder
    since_monotonic: float
    replacement: CameraConfig | None
    reported: bool = False


@dataclass
class _Signals:
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


RecorderFactory = Callable[..., Recorder]
# Told of every event the daemon publishes: (kind, fields).
EventObserver = Callable[[str, dict[str, Any]], None]


class Daemon:
    """``edgerec run``: record every configured camera until stopped.

    ``recorder_factory`` makes each recorder (``Recorder``'s signature); ``worker_stall_s``: how long one
    worker job may run before the watchdog is withheld."""

    def __init__(self, config: Config, *, exit_at_eof: bool = False,
                 recorder_factory: RecorderFactory = Recorder, worker_stall_s: float = WORKER_STALL_S):
        self.config = config
        self.exit_at_eof = exit_at_eof
        self.signals = _Signals()
        self.started_monotonic = time.monotonic()
        self.started_wall_ns = time.time_ns()
        self._recorder_factory = recorder_factory
        self.worker_stall_s = worker_stall_s
        # Main thread only: the recorder slots and the recorders on their way out.
        self.slots: dict[str, _RecorderSlot] = {}
        self.retiring: dict[str, _Retiring] = {}
        # What the ended recorder of a removed camera handed over, for the camera's next recorder should it
        # be added again: its chain head, and a segment it could neither seal nor recover.
        self.handed_over: dict[str, Handover] = {}
        # The files (.partial or sealed, not catalogued) start-up reconciliation kept in place (an error of
        # the system), per camera: a camera's chain goes on past them (chain_for), as a later start
        # recovers or adopts them under their numbers.
        self.kept_files: dict[str, list[chainstart.KeptFile]] = {}
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=10)  # appended from any thread
        self.gate = DiskFullGate()  # set by the worker; read by recorders (may_start_segment) and the status
        self.last_sweep: dict[str, Any] | None = None
        self.scheduler = SweepScheduler(config.retention.sweep_interval_s)
        self._next_status_monotonic = 0.0
        self._config_watcher: Any = None
        self.mqtt: MqttLink | None = None
        # Told of every event after MQTT, on the thread that raised it (add them before serve(); they must
        # not block or raise): what was published, for those who have no broker to listen on.
        self.event_observers: list[EventObserver] = []
        # Under systemd the status file goes to the runtime directory (RAM) unless status_file says otherwise.
        self.status_path = statusfile.daemon_status_path(config.status_file, config.data_dir, os.environ)
        self._ready_sent = False
        # The status is built by the main thread only, from the catalog facts the worker last read; other
        # threads read the snapshot and set _status_dirty to ask for a new one (and facts_wanted to ask
        # the worker to read the catalog again first).
        self.status_snapshot: dict[str, Any] | None = None
        self.facts = CatalogFacts()
        self._status_dirty = threading.Event()
        self.facts_wanted = threading.Event()
        self._next_facts_monotonic = 0.0
        self._snapshot_cameras: dict[str, tuple[str, bool]] = {}
        self._snapshot_news: tuple[Any, ...] | None = None  # status_news of the last snapshot
        self._last_disk_low_monotonic = float("-inf")
        # Why retention may not run in this process (None: it may): deleting without every hold known
        # could delete footage an incident keeps.
        self.sweeps_blocked: str | None = None
        # Alarms about the record (status ``catalog_disagrees``, ``rollback_suspected``): see holdcheck.py
        # and rollback.py.
        self.catalog_disagrees: dict[str, Any] | None = None
        self.rollback_suspected: dict[str, Any] | None = None
        self._checked_incident_changes: int | None = None
        self._next_hold_check_monotonic = 0.0
        self._saved: rollback.Published | None = None  # what the heads file holds
        self._next_heads_save_monotonic = 0.0
        # Start-up repair (reconciliation) has not succeeded yet: no camera starts, no sweep runs.
        self.repair_pending = False
        self._next_repair_monotonic = 0.0
        # Sealed segments on their way into the catalog: recorder threads put, the worker inserts.
        self.uncatalogued = CatalogQueue(
            lambda segment: self.catalog.add_segment(segment),
            lambda gap: self.catalog.add_gap(gap.camera, gap.from_ns, gap.to_ns, gap.reason))
        # Work the worker hands back to the main thread (a reload's camera changes).
        self._main_inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # The configuration the worker's last reload plan leads to (worker only).
        self._planned_config = config
        self.worker = Worker(self._worker_idle, tick_s=TICK_SECONDS)

    @property
    def disk_full(self) -> bool:
        return self.gate.full

    # ----- set-up -------------------------------------------------------------------------------------
    def open_state(self) -> None:
        """Open keys, catalog, audit log, incidents and sweeper, and repair what a crash left. On a disk
        too full for the repair the daemon still comes up, reporting disk_full, and retries it."""
        cfg = self.config
        # Footage metadata, the catalog and logs are nobody else's business, also outside systemd's UMask.
        os.umask(0o077)
        # Raises when the directory is another user's, or cannot be made or written (one line, exit 2).
        source = None if cfg.source_path is None else str(cfg.source_path)
        tightened = fsutil.prepare_data_dir(cfg.data_dir, source)
        if tightened:
            log.warning("%s", tightened)
        self.signing_key = keys.load_or_create_device_key(cfg.data_dir)
        self.recipients = [keys.parse_public_key(r) for r in cfg.recipients]
        # The daemon keeps a space reserve so that on a completely full disk a sweep can still write its
        # audit line and catalog marks, an incident command can still be recorded, and the catalog can be
        # opened (the first opener makes the WAL index) after a restart on a full disk.
        self.reserve = SpaceReserve.in_dir(cfg.data_dir, RESERVE_BYTES)
        self.catalog = self.reserve.with_room(lambda: Catalog.open(cfg.data_dir))
        self.audit = AuditLog(DataDir(cfg.data_dir).audit_path)
        # Each camera's newest removed segment, for where its chain goes on (read when a camera starts).
        self.removed_heads = chainstart.RemovedHeads(self.audit.path)
        # A line torn by a power cut would make `audit verify` report BROKEN until the next append.
        try:
            self.audit.repair_tail()
        except OSError as exc:  # e.g. a full disk: the next append cuts it instead
            log.error("audit log tail not repaired path=%s error=%s", self.audit.path, exc)
        self._check_rollback_file()
        self.incidents = IncidentService(self.catalog, self.audit, cfg, self.reserve)
        checker = HoldChecker(self.catalog, self.audit, self.audit.path,
                              pending_voids=self.incidents.owed_entries)
        self.sweeper = Sweeper(self.catalog, self.audit, cfg, cfg.data_dir, reserve=self.reserve,
                               hold_checker=checker)
        # The retention clock starts now (its start, with what it credited for the downtime, goes into the
        # audit log), so that every segment catalogued from here on is stamped with it. On a disk too full
        # even for that, the first sweep starts it, and stamps what was catalogued meanwhile.
        try:
            rclock = self.reserve.with_room(lambda: self.sweeper.rclock)
            self.incidents.rclock_now = rclock.now_ns
        except (EdgerecError, OSError) as exc:
            if is_disk_full_error(exc):
                log.error("retention clock not started yet (the first sweep starts it) error=%s", exc)
            else:  # an unreadable audit log: no anchor to go on from, so no sweep may run
                self.sweeps_blocked = self.sweeps_blocked or f"retention clock not started: {exc}"
                self._error(f"retention disabled until a restart: {self.sweeps_blocked}")
        # A lost catalog's incidents come back from the audit log: before anything can sweep, and before
        # the void check in _repair, which would otherwise take every line of the lost catalog for one a
        # power cut kept from its commit. If the log cannot be read, the daemon records but never sweeps
        # until a restart succeeds: sweeping without the holds could delete the footage they keep, and not
        # recording at all would lose more.
        try:
            restore_incidents(self.catalog, self.audit, reserve=self.reserve)
        except (EdgerecError, OSError) as exc:
            self.sweeps_blocked = f"incidents not checked against the audit log: {exc}"
            self._error(f"retention disabled until a restart: {self.sweeps_blocked}")
        self._read_removed_heads()  # the whole log, once: a camera's start then reads only what is new
        if not self._repair():
            self.repair_pending = True
            self._set_disk_full(True, reason="start-up repair needs space")
        elif self._saved is not None:  # the chains as the files are, after the repair
            self._check_chain_rollback(self._saved.chain_heads, "heads_file")
        self._refresh_facts()

    # ----- the record's alarms: rollback (start-up) and the catalog checked against the log -----------------
    def _check_rollback_file(self) -> None:
        """Is the audit log behind the head this daemon last published (the heads file)?"""
        path = DataDir(self.config.data_dir).published_heads_path
        self._saved = rollback.load_published(path)
        if self._saved is not None and self._saved.audit_head is not None:
            self._rollback(rollback.check_log(self.audit.path, self._saved.audit_head, "heads_file"))

    def _check_chain_rollback(self, remembered: Iterable[ChainHead], source: str) -> None:
        """Is a camera's chain (as the repaired catalog has it, i.e. as the files are) behind the chain head
        published for it?"""
        if self.rollback_suspected is not None:
            return
        current = {h.camera: h for h in read_chain_heads(self.catalog)}
        self._rollback(rollback.chains_behind(remembered, current, source))

    def _check_rollback_mqtt(self) -> None:
        """Is the audit log behind the head in the status the broker kept for us (read before the link
        publishes a new one)?"""
        from ..mqtt import MqttLinkSettings, Topics, read_retained

        settings = MqttLinkSettings.from_config(self.config)
        try:
            payload = read_retained(settings, Topics.from_config(settings).status, RETAINED_READ_TIMEOUT_S)
        except ConfigError as exc:
            log.warning("retained status not read error=%s", exc)
            return
        if payload is None:
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            log.warning("retained status is not JSON; not compared")
            return
        remembered = rollback.head_from_json(obj.get("audit_head") if isinstance(obj, dict) else None)
        if remembered is not None and self.rollback_suspected is None:
            self._rollback(rollback.check_log(self.audit.path, remembered, "mqtt"))
        if isinstance(obj, dict):
            self._check_chain_rollback(rollback.chain_heads_from_json(obj.get("chain_heads")), "mqtt")

    def _rollback(self, found: rollback.Rollback | rollback.ChainRollback | None) -> None:
        """Raise the alarm (log, status, audit line; the event goes out when MQTT is up); records on."""
        if found is None:
            return
        self.rollback_suspected = found.to_json_dict()
        self._error(found.message)
        self._audit("rollback_suspected", **found.to_json_dict())

    def _maybe_save_head(self, now: float) -> None:
        """Remember the audit head (the one the status publishes) outside the catalog, when it changed."""
        if now < self._next_heads_save_monotonic:
            return
        self._next_heads_save_monotonic = now + HEADS_SAVE_INTERVAL_S
        published = rollback.Published(self.audit.head(), tuple(self.facts.chain_heads))
        if published == self._saved or published.audit_head is None or published.audit_head.lines == 0:
            return
        try:
            rollback.save_published(DataDir(self.config.data_dir).published_heads_path, published)
        except OSError as exc:
            log.warning("published head not saved error=%s", exc)
            return
        self._saved = published

    def _maybe_check_holds(self, now: float) -> None:
        """Between sweeps: when an incident changed (any process), check the catalog against the log at
        once, so that a confirmation soon vouches for the new line (and a mismatch is reported)."""
        if now < self._next_hold_check_monotonic or self.sweeps_blocked is not None or self.repair_pending:
            return
        self._next_hold_check_monotonic = now + HOLD_CHECK_INTERVAL_S
        try:
            changes = self.catalog.incident_changes()
            if changes == self._checked_incident_changes:
                return
            self.sweeper.check_holds(time.time_ns())
            self._checked_incident_changes = changes
        except (EdgerecError, OSError) as exc:
            log.warning("holds not checked against the audit log error=%s", exc)
            return
        self._hold_check_done(self.sweeper.last_hold_check)

    def _hold_check_done(self, checked: CheckedHolds | None) -> None:
        """Report a check's outcome: status while the catalog disagrees, the event once per mismatch."""
        if checked is None:
            return
        before = self.catalog_disagrees
        self.catalog_disagrees = None if checked.agrees else checked.fields()
        if checked.new_alarm:
            self._error(checked.message)  # the checker has written the audit line
            self._event("catalog_mismatch", **checked.fields())
        elif before is not None and checked.agrees:
            log.warning("catalog agrees with the audit log again; retention deletes by age again")
            self._event("catalog_agrees")
        if before != self.catalog_disagrees:
            self._status_dirty.set()

    def _repair(self) -> bool:
        """Start-up reconciliation (it logs each repair and audits recoveries) and the void check. False
        while the disk is too full for it: recorders must not start before it (their chains go on from
        the segments it adopts), so it is retried until it succeeds."""
        try:
            report = self.reserve.with_room(self._reconcile)
            if report.errors and self._disk_short() and self.reserve.release():
                report = self._reconcile()  # what it could not catalogue, now with the reserve's room
        except (EdgerecError, OSError) as exc:
            if not is_disk_full_error(exc):
                raise
            log.error("start-up repair waits for disk space error=%s", exc)
            return False
        if report.errors and self._disk_short():
            # A recovered segment left out of the catalog would be forked by a recorder starting from
            # the catalog's last segment: wait for space, then reconcile again.
            log.error("start-up repair waits for disk space errors=%d", len(report.errors))
            return False
        self.kept_files = {}
        for kept in report.kept:
            self.kept_files.setdefault(kept.camera, []).append(kept)
        try:  # an incident line whose commit a power cut prevented is voided, so log and catalog agree
            self.incidents.void_unrecorded(tail_entries(self.audit.path))
        except (EdgerecError, OSError) as exc:  # a full disk: the next start tries again
            log.error("audit log not checked against the catalog error=%s", exc)
        return True

    def _reconcile(self) -> ReconcileReport:
        cfg = self.config
        return reconcile(cfg.data_dir, self.catalog, self.signing_key,
                         device_key=self.signing_key.public_key(), audit=self.audit)

    def _disk_short(self) -> bool:
        try:
            return self.sweeper.below_min_free()
        except OSError:
            return True

    def _start_mqtt(self, config: Config | None = None, replacing: MqttLink | None = None,
                    next_settings: MqttLinkSettings | None = None) -> list[str]:
        """Make the MQTT link for ``config`` (None when MQTT is off) the daemon's, then start it.
        ``replacing``: the link it takes over from, stopped in between (told of ``next_settings``), so that
        an event published meanwhile waits in the new link rather than go to one that is stopping; returns
        the discovery removals the old link could not send."""
        config = config or self.config
        link = self._new_mqtt_link(config) if config.mqtt.enabled else None
        # Known before it starts: once connected, the link at once runs the commands the broker kept for
        # us, on its own thread, and their events go out through ``self.mqtt``.
        self.mqtt = link
        unsent = replacing.stop(next_settings=next_settings) if replacing is not None else []
        if link is not None:
            try:
                link.start()
            except ConfigError as exc:  # unreadable password file or TLS files: record anyway, without MQTT
                self.mqtt = None
                self._error(f"mqtt not started: {exc}")
        return unsent

    def _new_mqtt_link(self, config: Config) -> MqttLink:
        from ..mqtt import MqttLink, MqttLinkSettings  # paho is only imported when MQTT is on

        return MqttLink(
            MqttLinkSettings.from_config(config),
            status=self._mqtt_status,
            incidents=self._incidents_payload,
            on_command=self.handle_command,
            on_refused=lambda fields: self.incidents.audit_refusal(fields, "mqtt"),
        )

    def _mqtt_status(self) -> dict[str, Any]:
        """The status for the MQTT publisher thread: the main thread's last snapshot (the link puts its
        own counters in, read as it publishes)."""
        return self.status_snapshot or {"device_id": self.config.device_id, "state": "starting"}

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.signals.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.signals.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.signals.reload.set())

    def _watch_config_file(self) -> None:
        path = self.config.source_path
        if path is None:
            return
        from ..configwatch import ConfigFileWatcher

        self._config_watcher = ConfigFileWatcher(path, self.signals.reload.set)
        self._config_watcher.start()

    # ----- recorders (main thread) ----------------------------------------------------------------------
    def _read_removed_heads(self) -> bool:
        try:
            self.removed_heads.refresh()
        except OSError as exc:  # recording goes on; a chain may repeat numbers the log would have said
            self._error(f"audit log not read for where the cameras' chains go on: {exc}")
            return False
        return True

    def chain_for(self, camera: str) -> ChainState:
        """Where a camera that had no recorder in this process goes on: after the newest segment it ever
        sealed. That one is queued, catalogued, or removed since (retention, start-up repair), and then
        the audit log names it (``chainstart``): start-up reconciliation recovered what a crash left
        unsealed, and a segment whose deletion was decided is named in the log before its row goes. What
        reconciliation set aside instead (in ``quarantine/``) keeps its number: the chain goes on past the
        highest number the log records set aside too, still linked to that newest segment. So does a
        file it kept in place (a ``.partial``, or a sealed segment not catalogued), newer than that segment
        (``chainstart.past_kept``). A camera that had a recorder goes on from what that one handed over
        instead: it may have left a segment unsealed, which none of these holds."""
        self._read_removed_heads()
        queued = self.uncatalogued.last_for(camera)
        last = self.catalog.last_segment(camera)
        head = chainstart.newest(
            None if queued is None else ChainHead(camera, queued.meta.sequence, queued.digest.hex()),
            None if last is None else ChainHead(camera, last.sequence, last.digest),
            self.removed_heads.get(camera))
        sequence, prev_digest = chainstart.next_link(head, self.removed_heads.quarantined_up_to(camera))
        starts = [s for s in (None if queued is None else queued.meta.start_ns,
                              None if last is None else last.start_ns) if s is not None]
        past, passed = chainstart.past_kept(sequence, self.kept_files.get(camera, ()),
                                            max(starts, default=None))
        for kept, number in passed:
            log.warning("chain goes on past a file kept in place camera=%s path=%s skipped=%d "
                        "number_known=%s next_sequence=%d", camera, kept.path, number,
                        kept.sequence is not None, past)
        return ChainState(next_sequence=past, prev_digest=prev_digest)

    def _make_recorder(self, camera: CameraConfig, handover: Handover | None = None) -> Recorder:
        cfg = self.config
        if handover is None:
            handover = Handover(self.chain_for(camera.name))
        return self._recorder_factory(
            camera,
            data_dir=cfg.data_dir,
            device_id=cfg.device_id,
            segment_seconds=cfg.segment_seconds,
            durability=cfg.durability,
            recipients=self.recipients,
            suite=suite_for_config(cfg.segment_cipher),
            signing_key=self.signing_key,
            chain=handover.chain,
            unsealed=handover.unsealed,  # recovered before the new recorder's first segment
            on_sealed=self.on_sealed,
            on_gap=self.on_gap,
            may_start_segment=lambda: not self.gate.full,
            exit_at_eof=self.exit_at_eof,
            health_thresholds=cfg.health,
            on_health=self.on_health,
            on_connection=self.on_connection,
        )

    def _start_camera(self, camera: CameraConfig, handover: Handover | None = None) -> None:
        """Start ``camera``'s recorder from ``handover``, else from what its last recorder in this process
        handed over, else from the queued and catalogued segments (``chain_for``)."""
        if handover is None:
            handover = self.handed_over.pop(camera.name, None)
        recorder = self._make_recorder(camera, handover)
        self.slots[camera.name] = _RecorderSlot(camera, recorder)
        recorder.start()
        log.info("camera started camera=%s url_kind=%s", camera.name, camera.kind)

    def _retire_camera(self, name: str, replacement: CameraConfig | None) -> None:
        """Ask the camera's recorder to stop; ``replacement`` (if any) starts once it has ended."""
        slot = self.slots.pop(name, None)
        if slot is None:
            retiring = self.retiring.get(name)
            if retiring is not None:
                retiring.replacement = replacement
            elif replacement is not None:
                self._start_camera(replacement)
            return
        slot.recorder.request_stop()
        self.retiring[name] = _Retiring(slot.recorder, time.monotonic(), replacement)
        log.info("camera stopping camera=%s restart=%s", name, replacement is not None)

    def _finish_retirements(self, now: float) -> None:
        """Start a retired camera's replacement once the old recorder has sealed its last segment and
        ended, from what it hands over (its chain head, and a segment it could not seal, which the
        replacement recovers first): never two recorders on one hash chain, never one sequence number
        twice. A removed camera's hand-over is kept for its return. One that does not end is reported
        once and waited for (its camera stays stopped)."""
        for name, retiring in list(self.retiring.items()):
            old = retiring.recorder
            if old.is_alive():
                waited = now - retiring.since_monotonic
                if not retiring.reported and waited > RECORDER_STOP_REPORT_S:
                    retiring.reported = True
                    self._error(f"recorder of camera {name} has not stopped after {waited:.0f} s; "
                                "the camera restarts once it has")
                continue
            del self.retiring[name]
            log.info("camera stopped camera=%s", name)
            if retiring.replacement is not None:
                self._start_camera(retiring.replacement, old.handover())
            else:
                self.handed_over[name] = old.handover()
            self._status_dirty.set()

    def on_sealed(self, segment: SealedSegment) -> None:
        """A recorder sealed ``segment`` (its thread): queued for the worker; no SQLite on this thread."""
        self.uncatalogued.put(segment)  # the worker inserts it within a tick

    def on_gap(self, camera: str, from_ns: int, to_ns: int, reason: str) -> None:
        # Reported when the gap has ended; camera_down/camera_up went out when it began and ended. Queued
        # behind the segments sealed before it, like them.
        self.uncatalogued.put(Gap(camera, from_ns, to_ns, reason))

    def on_connection(self, change: ConnectionChange) -> None:
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

    def on_health(self, camera: str, change: HealthChange) -> None:
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
            slot.recorder = self._make_recorder(slot.camera, rec.handover())  # from the dead thread
            slot.recorder.start()

    def health_problem(self, now: float | None = None,
                       stats: dict[str, RecorderStats] | None = None) -> str | None:
        """Why the watchdog is withheld (for the log), or None when every part is alive: the worker idle
        or within WORKER_STALL_S of one job, every recorder alive and receiving (or backing off on
        purpose), the MQTT thread alive. The main thread asks, so it is alive too. ``stats``: the
        cameras' stats if the caller has them already."""
        now = time.monotonic() if now is None else now
        if not self.worker.is_alive():
            return "worker thread is dead"
        busy = self.worker.busy()
        if busy is not None and now - busy.since_s > self.worker_stall_s:
            return f"worker stuck in job {busy.job} for {now - busy.since_s:.0f} s"
        for name, slot in self.slots.items():
            rec = slot.recorder
            if rec.finished:
                continue
            if not rec.is_alive():
                return f"recorder thread of camera {name} is dead"
            st = stats[name] if stats is not None and name in stats else rec.stats()
            if st.state in ("backoff", "connecting", "waiting_disk"):
                continue
            age = st.last_packet_age_s
            if age is not None and age > slot.camera.stall_seconds * WATCHDOG_GRACE_FACTOR:
                return f"camera {name} sent nothing for {age:.1f} s while recording"
        if self.mqtt is not None and not self.mqtt.thread_alive():
            return "mqtt thread is dead"
        return None

    # ----- incidents (MQTT thread) ----------------------------------------------------------------------
    def handle_command(self, obj: Any) -> dict[str, Any]:
        """An incident command from MQTT: the incident service parses, applies and replies."""
        result = self.incidents.handle(obj, time.time_ns(), source="mqtt")
        if result.ok and not result.duplicate:
            # The event also asks for new catalog facts and a new status; the worker republishes the
            # incident list when it sees the set of open incidents change (also for the CLI's commands).
            self._event(f"incident_{'opened' if result.action == 'open' else 'closed'}", id=result.id)
        return result.to_json_dict()

    def _incidents_payload(self) -> list[dict[str, Any]]:
        """Open incidents with their windows and held segment counts (MQTT publisher thread; the catalog
        serialises its callers)."""
        return self.incidents.incidents_payload()

    # ----- the worker's duties ---------------------------------------------------------------------------
    def _worker_idle(self) -> None:
        """Every tick on the worker: catalog inserts, start-up repair still owed, sweeps, catalog facts."""
        now = time.monotonic()
        if self.repair_pending:
            self._retry_repair(now)
        self.catalogue_sealed()
        self.sweep_if_due(now)
        self._maybe_check_holds(now)
        self._maybe_save_head(now)
        self._maybe_refresh_facts(now)

    def _retry_repair(self, now: float) -> None:
        if now < self._next_repair_monotonic:
            return
        self._next_repair_monotonic = now + REPAIR_RETRY_S
        if not self._repair():
            return
        log.warning("start-up repair done; cameras start")
        self.repair_pending = False
        self._main_inbox.put(self._start_cameras)
        self._set_disk_full(False)

    def catalogue_sealed(self, *, force: bool = False) -> None:
        """Insert the queued sealed segments and gaps (``force``: also those backing off after a refusal);
        a change asks for fresh catalog facts, and so for a new status."""
        behind = self.uncatalogued.behind()
        if self.uncatalogued.drain(force=force) or self.uncatalogued.behind() != behind:
            self.facts_wanted.set()

    def _maybe_refresh_facts(self, now: float) -> None:
        """Read the catalog side of the status when asked (a segment catalogued, an event) or every
        STATUS_FILE_INTERVAL_S (incidents the CLI opened). A change asks the main thread for a status."""
        if not self.facts_wanted.is_set() and now < self._next_facts_monotonic:
            return
        asked = self.facts_wanted.is_set()
        self.facts_wanted.clear()
        self._next_facts_monotonic = now + STATUS_FILE_INTERVAL_S
        before = self.facts.open_incident_ids
        try:
            self._refresh_facts()
        except (EdgerecError, OSError) as exc:
            log.warning("catalog facts not read error=%s", exc)
            return
        link = self.mqtt
        if self.facts.open_incident_ids != before and link is not None:
            link.publish_incidents()
            asked = True
        if asked:
            self._status_dirty.set()

    def _refresh_facts(self) -> None:
        cfg = self.config
        facts = read_catalog_facts(self.catalog, self.incidents, [c.name for c in cfg.cameras],
                                   cfg.incidents, time.time_ns())
        offload = read_offload(cfg.offload.enabled, offloadstatus.candidates(cfg.data_dir, os.environ),
                               cfg.device_id)
        self.facts = dataclasses.replace(facts, offload=offload)

    def sweep_if_due(self, now: float) -> None:
        """Run a retention sweep if the scheduler says one is due at monotonic ``now`` (the worker's tick);
        the queued segments go into the catalog first."""
        if self.sweeps_blocked is not None or self.repair_pending:
            return
        pressure = self.sweeper.below_min_free()
        reason = self.scheduler.due(now, pressure=pressure, disk_full=self.gate.full,
                                    clock_jumped=self.sweeper.clock_jumped())
        if reason is None:
            return
        self.catalogue_sealed(force=True)  # so that the sweep sees (and counts) every sealed segment
        self._sweep(reason)
        self.facts_wanted.set()

    def _sweep(self, reason: str) -> None:
        try:
            try:
                report = self.sweeper.sweep()
            finally:
                self._hold_check_done(self.sweeper.last_hold_check)
        except (EdgerecError, OSError) as exc:
            # A sweep that cannot write (a disk so full that even the space reserve did not help) must
            # not stop the daemon; under the mark, recording pauses as for held footage and resumes by
            # itself once a later sweep succeeds.
            self._error(f"retention sweep failed: {exc}")
            try:
                full = self.sweeper.below_min_free()
            except OSError:
                full = self.gate.full
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
        change = self.gate.set(full)
        if change == "disk_full":
            self._error("disk full: only held footage is left; not starting new segments")
            self._event("disk_full", **fields)
        elif change == "disk_ok":
            log.warning("disk space back; recording resumes")
            self._event("disk_ok")

    # ----- reload (worker, then main) ---------------------------------------------------------------------
    def _reload_job(self) -> None:
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
        old = self._planned_config
        plan = plan_reload(old, new)
        if plan.unchanged:
            log.info("config unchanged path=%s", path)
            return
        if plan.rejected is not None:
            self._error(f"config reload rejected: {plan.rejected}")
            return
        self._planned_config = new
        self.incidents.reconfigure(new)
        # The same sweeper keeps its clock history, so a reload cannot make it trust a jumped clock.
        self.sweeper.reconfigure(new)
        self.scheduler.sweep_interval_s = new.retention.sweep_interval_s
        self._main_inbox.put(lambda: self._apply_reload(new, plan))
        self._reload_mqtt(old, new, plan)
        self.facts_wanted.set()
        restarted = sorted(c.name for c in plan.restart)
        self._audit("config_changed", path=str(path), cameras_added=sorted(c.name for c in plan.start),
                    cameras_removed=list(plan.stop), cameras_restarted=restarted)
        log.info("config reloaded path=%s cameras=%s", path,
                 ",".join(sorted(c.name for c in new.cameras if c.enabled)))

    def _reload_mqtt(self, old: Config, new: Config, plan: ReloadPlan) -> None:
        if self.mqtt is None and not new.mqtt.enabled:
            return
        from ..mqtt import MqttLinkSettings  # paho is only imported when MQTT is on

        if plan.mqtt_changed:
            # The old link clears the Home Assistant entities the new settings leave behind at the old
            # place (removed cameras; all of them when discovery, the broker or the prefix changed); what
            # it could not send, a new link to the same broker sends once connected.
            settings = MqttLinkSettings.from_config(new)
            unsent = self._start_mqtt(new, replacing=self.mqtt, next_settings=settings)
            if unsent and self.mqtt is not None:
                self.mqtt.take_over_removals(unsent, previous=MqttLinkSettings.from_config(old))
        elif self.mqtt is not None:
            self.mqtt.reconfigure(MqttLinkSettings.from_config(new))  # discovery follows the cameras

    def _apply_reload(self, new: Config, plan: ReloadPlan) -> None:
        """Main thread: take the new configuration and stop, start or restart cameras as planned."""
        self.config = new
        self.recipients = [keys.parse_public_key(r) for r in new.recipients]
        for name in plan.stop:
            self._retire_camera(name, replacement=None)
        for cam in plan.restart:
            self._retire_camera(cam.name, replacement=cam)  # seals the open segment: a segment boundary
        for cam in plan.start:
            if cam.name in self.retiring:
                self.retiring[cam.name].replacement = cam
            else:
                self._start_camera(cam)
        self._status_dirty.set()

    # ----- status (main thread) ----------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.last_errors.append(error_entry(message))

    def _event(self, kind: str, **fields: Any) -> None:
        """Publish an event (any thread). Every event also changes the status: ask the worker for fresh
        catalog facts and the main loop for a fresh snapshot, which it then publishes at once."""
        self.facts_wanted.set()
        self._status_dirty.set()
        link = self.mqtt
        if link is not None:
            link.publish_event(kind, **fields)
        for observer in self.event_observers:
            observer(kind, fields)

    def status(self) -> dict[str, Any]:
        """The status from recorder counters and the cached catalog facts (no SQL)."""
        cfg = self.config
        now = time.monotonic()
        usage = shutil.disk_usage(cfg.data_dir)
        link = self.mqtt
        return build_status(StatusInputs(
            version=__version__,
            device_id=cfg.device_id,
            pid=os.getpid(),
            started_wall_ns=self.started_wall_ns,
            uptime_s=now - self.started_monotonic,
            now_ns=time.time_ns(),
            disk_full=self.gate.full,
            clock={"synced": clock.clock_synced(), "boot_id": clock.boot_id()},
            audit_head=self.audit.head().to_json_dict(),
            cameras={name: CameraStatus(slot.recorder.stats(), slot.restarts)
                     for name, slot in self.slots.items()},
            facts=self.facts,
            disk=DiskUsage(usage.total, usage.used, usage.free),
            retention_days=cfg.retention.days,
            last_sweep=self.last_sweep,
            uncatalogued_segments=self.uncatalogued.behind(),
            mqtt=link.stats() if link is not None else {"enabled": False},
            last_errors=list(self.last_errors),
            recorders_not_stopped={name: now - r.since_monotonic for name, r in self.retiring.items()
                                   if r.reported},
            catalog_disagrees=self.catalog_disagrees,
            rollback_suspected=self.rollback_suspected,
        ))

    def _write_status(self, now: float, stats: dict[str, RecorderStats] | None = None) -> None:
        """Rebuild the status snapshot every STATUS_FILE_INTERVAL_S, or on the next tick when something
        changed (an event, a camera's state, a segment catalogued), and hand it to the status file and
        systemd; MQTT is told only of news (``status_news``): a sealed segment waits for the periodic
        status, or MQTT would publish one per segment."""
        if stats is None:
            stats = {n: s.recorder.stats() for n, s in self.slots.items()}
        states = camera_states(stats)
        changed = self._status_dirty.is_set() or states != self._snapshot_cameras
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
        news, self._snapshot_news = self._snapshot_news, status_news(status)
        link = self.mqtt
        if news != self._snapshot_news and link is not None:
            link.status_changed()
        try:
            statusfile.write_status(self.status_path, status)
        except OSError as exc:
            log.warning("status file not written path=%s error=%s", self.status_path, exc)
            return
        notify.status(status_line(status))

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

    # ----- main loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        """``edgerec run``: signals, start-up, then the main loop until SIGTERM/SIGINT."""
        self._install_signal_handlers()
        self.open_state()
        return self.serve()

    def _start_cameras(self) -> None:
        for cam in self.config.cameras:
            if cam.enabled and cam.name not in self.slots and cam.name not in self.retiring:
                self._start_camera(cam)

    def serve(self) -> int:
        """The main loop, after ``open_state``; returns the exit code once stopped."""
        default_status = self.config.data_dir / statusfile.STATUS_FILE_NAME
        if self.status_path != default_status and statusfile.remove_leftover(default_status):
            log.info("old status file removed path=%s now_at=%s", default_status, self.status_path)
        try:
            # Watch first, then check once: an edit made while the cameras were starting is not missed.
            self._watch_config_file()
            self.signals.reload.set()
            if not self.repair_pending:
                self._start_cameras()
            if self.config.mqtt.enabled:
                self._check_rollback_mqtt()  # before our first status replaces the retained one
            self._write_status(time.monotonic())  # the first snapshot, for MQTT's first status
            self._start_mqtt()
            if self.rollback_suspected is not None:
                self._event("rollback_suspected", **self.rollback_suspected)
            self.worker.start()
            watchdog = notify.Watchdog()
            while not self.signals.stop.wait(TICK_SECONDS):
                self._tick(time.monotonic(), watchdog)
                if self.exit_at_eof and self.slots and not self.retiring and all(
                        s.recorder.finished for s in self.slots.values()):
                    log.info("all file sources ended; exiting")
                    break
        finally:
            self._shutdown()
        return 0

    def _tick(self, now: float, watchdog: notify.Watchdog) -> None:
        self._maybe_ready(now)
        if self.signals.reload.is_set():
            self.signals.reload.clear()
            self.worker.submit("reload", self._reload_job)
        while True:
            try:
                handed_back = self._main_inbox.get_nowait()
            except queue.Empty:
                break
            handed_back()
        self._finish_retirements(now)
        self._supervise_recorders(now)
        # Each camera's stats once per tick, for the status and the watchdog alike (four ticks a second).
        stats = {name: slot.recorder.stats() for name, slot in self.slots.items()}
        self._write_status(now, stats)
        problem = self.health_problem(now, stats)
        watchdog.tick(problem is None, reason=problem)

    def _shutdown(self) -> None:
        notify.stopping()
        log.info("stopping: sealing open segments")
        if self._config_watcher is not None:
            self._config_watcher.stop()
        worker_stopped = not self.worker.is_alive() or self.worker.stop(WORKER_STOP_TIMEOUT_S)
        if not worker_stopped:
            log.error("worker did not stop; sealed segments are left to start-up reconciliation")
        recorders = [s.recorder for s in self.slots.values()] + [r.recorder for r in self.retiring.values()]
        for rec in recorders:
            rec.request_stop()
        for rec in recorders:
            rec.stop(10.0)
        log.info("cameras stopped count=%d", len(self.slots))
        if worker_stopped:
            self.catalogue_sealed(force=True)
            try:
                self._refresh_facts()
            except (EdgerecError, OSError) as exc:
                log.warning("catalog facts not read error=%s", exc)
        if self.uncatalogued:
            log.warning("sealed segments left uncatalogued; start-up reconciliation adopts them count=%d",
                        len(self.uncatalogued))
        try:  # the last status still lists the cameras, each now 'stopped'
            statusfile.write_status(self.status_path, {**self.status(), "state": "stopped"})
        except OSError:
            pass
        self._next_heads_save_monotonic = 0.0
        self._maybe_save_head(time.monotonic())  # the head the last status showed, for the next start
        if self.mqtt is not None:
            self.mqtt.stop()
        self.sweeper.record_stop()
        self.catalog.close()
        log.info("stopped")
