"""The daemon's status document (status file, ``edgerec status``, MQTT, systemd's STATUS= line).

``build_status`` is pure: the main thread hands it the recorders' counters, the disk usage and the catalog
facts the worker thread last read (``read_catalog_facts``, the only SQL here), so rebuilding the status
on the main thread never waits on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import offloadstatus
from ..chainheads import ChainHead, status_heads
from ..timefmt import rfc3339

if TYPE_CHECKING:
    from ..catalog import CameraSummary, Catalog
    from ..config import IncidentsConfig
    from ..incidents import IncidentService
    from ..recorder import CameraError, RecorderStats


@dataclass(frozen=True)
class CatalogFacts:
    """What the status needs from the catalog, read on the worker thread."""

    summaries: Mapping[str, CameraSummary] = field(default_factory=dict)
    gaps: Mapping[str, int] = field(default_factory=dict)
    held_bytes: int = 0
    open_incident_ids: frozenset[str] = frozenset()
    # Each camera's newest catalogued segment (also of cameras no longer configured, whose footage is
    # still here): published so that it can be recorded off the device and given to `verify --head`.
    chain_heads: tuple[ChainHead, ...] = ()
    # The offload service's status file, read with the facts (``read_offload``); None until then.
    offload: Mapping[str, Any] | None = None


def read_catalog_facts(catalog: Catalog, incidents: IncidentService, cameras: Sequence[str],
                       incidents_config: IncidentsConfig, now_ns: int) -> CatalogFacts:
    """The catalog's side of the status: a few queries, run by the worker thread."""
    return CatalogFacts(
        summaries=catalog.camera_summaries(),
        gaps={name: catalog.count_gaps(name) for name in cameras},
        held_bytes=catalog.held_bytes(now_ns, incidents_config),
        open_incident_ids=frozenset(i.id for i in incidents.list_open()),
        chain_heads=read_chain_heads(catalog),
    )


def read_chain_heads(catalog: Catalog) -> tuple[ChainHead, ...]:
    """Each camera's chain head from the catalog: a row is added only after its file was renamed and the
    directory synced, so a published head names a segment that exists."""
    heads = []
    for camera in catalog.cameras():
        row = catalog.last_segment(camera)
        if row is not None:
            heads.append(ChainHead(camera, row.sequence, row.digest, rfc3339(row.start_ns)))
    return tuple(heads)


def read_offload(enabled: bool, paths: Sequence[Path], device_id: str) -> dict[str, Any]:
    """The ``offload`` section from the offloader's own status file (a few stats and one small read,
    run by the worker with the catalog facts; nothing when offload is off)."""
    return offloadstatus.section(offloadstatus.read(paths, device_id) if enabled else None, enabled)


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class CameraStatus:
    """One recorder slot as the main thread sees it."""

    stats: RecorderStats
    thread_restarts: int


@dataclass(frozen=True)
class StatusInputs:
    """Everything a status is made of, gathered by the main thread without touching SQLite."""

    version: str
    device_id: str
    pid: int
    started_wall_ns: int
    uptime_s: float
    now_ns: int
    disk_full: bool
    clock: Mapping[str, Any]
    audit_head: Mapping[str, Any]
    cameras: Mapping[str, CameraStatus]
    facts: CatalogFacts
    disk: DiskUsage
    retention_days: float
    last_sweep: Mapping[str, Any] | None
    uncatalogued_segments: int
    mqtt: Mapping[str, Any]
    last_errors: Sequence[Mapping[str, Any]]
    # Cameras whose old recorder has not ended after a stop: not restarted until it does (seconds waited).
    recorders_not_stopped: Mapping[str, float] = field(default_factory=dict)
    # Alarms about the record itself (None: none): the catalog keeps less than the audit log says
    # (holdcheck), the data directory is behind a head published earlier (rollback).
    catalog_disagrees: Mapping[str, Any] | None = None
    rollback_suspected: Mapping[str, Any] | None = None


def _age(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def camera_error(error: CameraError | None) -> dict[str, Any] | None:
    """A camera's error for the status: its message, since when, last seen, and (past errors) until."""
    if error is None:
        return None
    out = {"message": error.message, "since": rfc3339(error.since_ns), "at": rfc3339(error.at_ns)}
    if error.until_ns is not None:
        out["until"] = rfc3339(error.until_ns)
    return out


def camera_status(cam: CameraStatus, facts: CatalogFacts) -> dict[str, Any]:
    st = cam.stats
    summary = facts.summaries.get(st.camera)
    return {
        "state": st.state,
        "connected": st.connected,
        "fps": round(st.fps, 2),
        "bitrate_bps": int(st.bitrate_bps),
        "last_packet_age_s": _age(st.last_packet_age_s),
        "segments": summary.segments if summary else 0,
        "bytes": summary.bytes if summary else 0,
        "oldest": rfc3339(summary.oldest_start_ns) if summary else None,
        "newest": rfc3339(summary.newest_end_ns) if summary else None,
        "health": st.health,
        # The error now (null once the camera delivers again), and the last few that have ended.
        "error": camera_error(st.error),
        "past_errors": [camera_error(e) for e in st.past_errors],
        "reconnects": st.reconnects,
        "gaps": facts.gaps.get(st.camera, 0),
        "down_since": rfc3339(st.down_since_ns),
        "down_reason": st.down_reason,
        "last_gap": None if st.last_gap is None else {
            "from": rfc3339(st.last_gap[0]), "to": rfc3339(st.last_gap[1]), "reason": st.last_gap[2]},
        "stalls": st.stalls,
        "timestamp_discontinuities": st.discontinuities,
        # The camera's audio track: kept in the segments, or dropped (the camera's ``audio`` policy).
        "audio": None if st.audio is None else {
            "codec": st.audio.codec, "policy": "kept" if st.audio.kept else "dropped",
            "dropped_packets": st.audio.dropped_packets},
        "thread_restarts": cam.thread_restarts,
    }


def build_status(i: StatusInputs) -> dict[str, Any]:
    """The status document (see docs/operations.md for its fields)."""
    summaries = i.facts.summaries
    oldest = min((s.oldest_start_ns for s in summaries.values() if s.oldest_start_ns), default=None)
    disk = i.disk
    return {
        "version": i.version,
        "device_id": i.device_id,
        "pid": i.pid,
        "started_at": rfc3339(i.started_wall_ns),
        "updated_at": rfc3339(i.now_ns),
        "uptime_s": round(i.uptime_s, 1),
        "state": "disk_full" if i.disk_full else "recording",
        "clock": dict(i.clock),
        # Kept in memory by AuditLog: stored off the device, it anchors the log.
        "audit_head": dict(i.audit_head),
        "catalog_disagrees": None if i.catalog_disagrees is None else dict(i.catalog_disagrees),
        "rollback_suspected": None if i.rollback_suspected is None else dict(i.rollback_suspected),
        # Each camera's newest segment (sequence, digest, start): recorded off the device, it lets
        # `edgerec verify --head` find the newest segments removed.
        "chain_heads": status_heads(i.facts.chain_heads),
        "cameras": {name: camera_status(cam, i.facts) for name, cam in i.cameras.items()},
        "disk": {
            "free_bytes": disk.free,
            "free_pct": round(100.0 * disk.free / disk.total, 2) if disk.total else 0.0,
            "used_bytes": disk.used,
            "total_bytes": disk.total,
        },
        "oldest_footage_age_s": None if oldest is None else round((i.now_ns - oldest) / 1e9),
        "retention": {
            "days": i.retention_days,
            "last_sweep": i.last_sweep and i.last_sweep["at"],
            "deleted_last_sweep": i.last_sweep and i.last_sweep["deleted"],
            "disk_full": i.disk_full,
        },
        "incidents_open": len(i.facts.open_incident_ids),
        "open_incident_ids": sorted(i.facts.open_incident_ids),
        "held_bytes": i.facts.held_bytes,
        "uncatalogued_segments": i.uncatalogued_segments,
        "recorders_not_stopped": {name: round(s, 1) for name, s in i.recorders_not_stopped.items()},
        "mqtt": dict(i.mqtt),
        "offload": None if i.facts.offload is None else dict(i.facts.offload),
        "last_errors": list(i.last_errors),
    }


def camera_states(stats: Mapping[str, RecorderStats]) -> dict[str, tuple[str, bool]]:
    """What a status change is made of, per camera (cheap enough for every tick)."""
    return {name: (st.state, st.connected) for name, st in stats.items()}


def status_news(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """The part of a status whose change is news: published at once (coalesced by the MQTT link to one
    status a second). Counters, ages and the newest footage change with every sealed segment: they go
    out with the periodic status (mqtt.status_interval_s)."""
    cameras = status.get("cameras") or {}

    def camera(c: Mapping[str, Any]) -> tuple[Any, ...]:
        health = c.get("health") or {}
        error = c.get("error") or {}
        audio = c.get("audio") or {}
        return (c.get("state"), c.get("connected"), c.get("down_since"), health.get("state"),
                tuple(health.get("active") or ()), error.get("message"), audio.get("codec"),
                audio.get("policy"))

    errors = status.get("last_errors") or []
    return (
        status.get("state"),
        (status.get("clock") or {}).get("synced"),
        # Which incidents are open, not only how many: one closed and another opened between two
        # snapshots is news too.
        tuple(status.get("open_incident_ids") or ()),
        (status.get("retention") or {}).get("disk_full"),
        status.get("catalog_disagrees") is not None,
        status.get("rollback_suspected") is not None,
        tuple(sorted(status.get("recorders_not_stopped") or {})),
        # The newest daemon error (the list is capped, so its length stops changing).
        tuple(sorted(errors[-1].items())) if errors else None,
        tuple((name, camera(c)) for name, c in sorted(cameras.items())),
        offloadstatus.news(status.get("offload")),
    )


def status_line(status: Mapping[str, Any]) -> str:
    """systemd's one-line STATUS=."""
    cams = status["cameras"]
    recording = sum(1 for c in cams.values() if c["state"] == "recording")
    return (f"{recording}/{len(cams)} cameras recording, {status['incidents_open']} open incidents, "
            f"disk {status['disk']['free_pct']}% free")


def error_entry(message: str, now_ns: int | None = None) -> dict[str, str]:
    """One entry of the status's ``last_errors``."""
    return {"at": rfc3339(time.time_ns() if now_ns is None else now_ns), "message": message}
