"""The daemon's status file: written atomically every few seconds, read and summarised by `edgerec status`.

The layout of the status dict is documented in docs/operations.md ("The status file"). Reading never
trusts the file to be current: a file older than ``STALE_AFTER_S`` is returned marked ``stale``.
``format_status`` is pure (data in, text out) and tolerates missing fields, so an older or newer
daemon's file still prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgerecError
from .fsutil import create_private
from .humanize import duration_parts, local_time_text
from .redact import redact_obj

STATUS_FILE_NAME = "status.json"
# The daemon rewrites the file every few seconds; this much silence means it is stuck or gone.
STALE_AFTER_S = 30.0
# What systemd makes of the unit's RuntimeDirectory=edgerec: `edgerec status` run from a shell has no
# $RUNTIME_DIRECTORY, so it looks here too.
SERVICE_RUNTIME_DIR = Path("/run/edgerec")


# ----- where the file is ---------------------------------------------------------------------------------


def runtime_directory(env: Mapping[str, str]) -> Path | None:
    """The first directory of systemd's ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=``), if any."""
    first = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(first) if first.startswith("/") else None


def daemon_status_path(status_file: Path | None, data_dir: Path, env: Mapping[str, str]) -> Path:
    """Where the daemon writes: ``status_file`` if configured, else the runtime directory under systemd
    (RAM: the file is rewritten every few seconds and should not wear an SD card), else the data dir."""
    if status_file is not None:
        return Path(status_file)
    runtime = runtime_directory(env)
    return (runtime if runtime is not None else Path(data_dir)) / STATUS_FILE_NAME


def status_path_candidates(status_file: Path | None, data_dir: Path, env: Mapping[str, str]) -> list[Path]:
    """Where `edgerec status` looks, in order: a configured ``status_file`` only; otherwise every place
    ``daemon_status_path`` may have chosen for a daemon run by systemd or from a shell."""
    if status_file is not None:
        return [Path(status_file)]
    places = [runtime_directory(env), SERVICE_RUNTIME_DIR, Path(data_dir)]
    candidates: list[Path] = []
    for place in places:
        if place is not None and place / STATUS_FILE_NAME not in candidates:
            candidates.append(place / STATUS_FILE_NAME)
    return candidates


@dataclass(frozen=True)
class StatusLocation:
    """What `edgerec status` needs from a config file to find the daemon's status."""

    status_file: Path | None
    data_dir: Path
    device_id: str | None


def location_from_raw_config(path: Path) -> StatusLocation | None:
    """Read only ``data_dir``, ``status_file`` and ``device_id`` from a config file that failed validation,
    so `edgerec status` still works after a broken edit (the daemon keeps running with the previous one);
    None when even these cannot be read."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("data_dir"), str):
        return None
    base_dir = Path(path).parent  # as load_config takes relative paths

    def from_base(value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else base_dir / value

    status_file = data.get("status_file")
    device_id = data.get("device_id")
    return StatusLocation(
        status_file=from_base(status_file) if isinstance(status_file, str) else None,
        data_dir=from_base(data["data_dir"]),
        device_id=device_id if isinstance(device_id, str) else None,
    )


def read_daemon_status(
    candidates: Sequence[Path], device_id: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """The freshest status among ``candidates`` that belongs to ``device_id`` (with ``status_file``: its
    path). A file of another device (another config's daemon) is ignored, as are missing files."""
    found: list[dict[str, Any]] = []
    for path in candidates:
        if not Path(path).exists():
            continue
        status = read_status(path, now=now)
        if device_id is not None and status.get("device_id") not in (None, device_id):
            continue
        found.append({**status, "status_file": str(path)})
    if not found:
        where = " or ".join(str(p) for p in candidates)
        raise EdgerecError(f"no status file at {where}: is the daemon running? (systemctl status edgerec)")
    return min(found, key=lambda st: st["age_s"] if st.get("age_s") is not None else float("inf"))


def remove_leftover(path: Path) -> bool:
    """Delete a status file an earlier run left where this run does not write (so `edgerec status`
    cannot mistake it for current); True when one was removed."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


# ----- writing and reading -----------------------------------------------------------------------------


def write_status(path: Path, status: dict[str, Any], *, fsync: bool = False) -> None:
    """Replace ``path`` with ``status`` as JSON so that readers see the old or the new file, never half.

    No fsync by default: the file is rewritten every few seconds, and after a power cut an old or
    empty status is harmless (the daemon writes a fresh one at start).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(redact_obj(status), indent=2, default=str).encode() + b"\n"
    fd = create_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def read_status(
    path: Path, now: float | None = None, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any]:
    """Load the status file; adds ``age_s`` (seconds since ``updated_at``) and ``stale`` (bool)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        mtime_s = path.stat().st_mtime
    except FileNotFoundError:
        raise EdgerecError(
            f"no status file at {path}: is the daemon running? (systemctl status edgerec)"
        ) from None
    except PermissionError:
        raise EdgerecError(f"cannot read {path}: permission denied; run as root or as user edgerec") from None
    except OSError as exc:
        raise EdgerecError(f"cannot read status file {path}: {exc.strerror or exc}") from None
    try:
        status = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgerecError(
            f"status file {path} is damaged ({exc}); the daemon rewrites it within seconds"
        ) from None
    if not isinstance(status, dict):
        raise EdgerecError(f"status file {path} is damaged (not a JSON object)")
    return mark_staleness(status, now=now, fallback_updated_s=mtime_s, stale_after_s=stale_after_s)


def mark_staleness(
    status: dict[str, Any], now: float | None, fallback_updated_s: float | None, stale_after_s: float
) -> dict[str, Any]:
    now_s = _epoch_s(now)
    updated_s = parse_time(status.get("updated_at"))
    if updated_s is None:
        updated_s = fallback_updated_s
    age_s = None if updated_s is None else round(now_s - updated_s, 3)
    stale = age_s is None or age_s > stale_after_s
    return {**status, "age_s": age_s, "stale": stale}


# ----- formatting ------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """RFC 3339 (``2024-05-01T12:00:00.123Z``) → seconds since the epoch; None when absent or invalid."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _epoch_s(now: float | datetime | None) -> float:
    if now is None:
        return datetime.now(UTC).timestamp()
    if isinstance(now, datetime):
        return now.timestamp()
    return float(now)


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: Any) -> str:
    """``0.4s``, ``42s``, ``5m 3s``, ``2h 10m``, ``3d 4h``."""
    if not isinstance(seconds, int | float):
        return "?"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    days, hours, minutes, secs = duration_parts(s)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def human_bitrate(bps: Any) -> str:
    if not isinstance(bps, int | float):
        return "?"
    return f"{bps / 1e6:.2f} Mbit/s" if bps >= 100_000 else f"{bps / 1e3:.0f} kbit/s"


def age_since(timestamp: Any, now_s: float) -> str:
    t = parse_time(timestamp)
    return "never" if t is None else f"{human_duration(now_s - t)} ago"


def health_summary(health: Any) -> str:
    """``ok``, or the alarms: a dict of flags (``{"frozen": true}``) or an ``alarms`` list."""
    if not isinstance(health, dict) or not health:
        return "n/a"
    alarms = health.get("alarms")
    if isinstance(alarms, list):
        return ", ".join(map(str, alarms)) if alarms else "ok"
    if isinstance(health.get("state"), str):
        return health["state"]
    raised = [k for k, v in health.items() if v is True]
    return ", ".join(raised) if raised else "ok"


def _camera_lines(name: str, cam: dict[str, Any], now_s: float) -> list[str]:
    packet_age = cam.get("last_packet_age_s")
    packet = "no packet yet" if packet_age is None else f"last packet {human_duration(packet_age)} ago"
    connected = "connected" if cam.get("connected") else "not connected"
    fps = cam.get("fps")
    fps_text = f"{fps:.1f} fps" if isinstance(fps, int | float) else "? fps"
    lines = [
        f"  {name}: {cam.get('state', '?')}, {connected}, {packet}, {fps_text}, "
        f"{human_bitrate(cam.get('bitrate_bps'))}",
        f"    segments {cam.get('segments', '?')} ({human_bytes(cam.get('bytes'))}), "
        f"oldest from {age_since(cam.get('oldest'), now_s)}, "
        f"newest ends {age_since(cam.get('newest'), now_s)}",
        f"    health {health_summary(cam.get('health'))}, reconnects {cam.get('reconnects', 0)}, "
        f"gaps {cam.get('gaps', 0)}",
    ]
    if cam.get("down_since"):
        since = cam["down_since"]
        lines.append(f"    DOWN since {local_time_text(since)} ({age_since(since, now_s)}): "
                     f"{cam.get('down_reason') or 'unknown reason'}")
    gap = cam.get("last_gap")
    if isinstance(gap, dict) and gap.get("from"):
        lines.append(f"    last gap {local_time_text(gap.get('from'))} .. "
                     f"{local_time_text(gap.get('to'), '?')}: {gap.get('reason', '?')}")
    lines.extend(_camera_error_lines(cam, now_s))
    return lines


def _camera_error_lines(cam: dict[str, Any], now_s: float) -> list[str]:
    """The camera's current error (gone once it delivers again), then the last few that have ended."""
    lines = []
    error = cam.get("error")
    if isinstance(error, dict):
        lines.append(f"    ERROR now, since {local_time_text(error.get('since'))} "
                     f"(last seen {age_since(error.get('at'), now_s)}): {error.get('message', '?')}")
    elif cam.get("last_error"):  # a daemon from before current and past errors were told apart
        lines.append(f"    last error: {cam['last_error']}")
    past = [e for e in cam.get("past_errors") or [] if isinstance(e, dict)]
    if past:
        lines.append(f"    past errors (ended; the camera recovered), last {len(past)}:")
        for e in reversed(past):
            lines.append(f"      {local_time_text(e.get('since'))} .. {local_time_text(e.get('until'))}: "
                         f"{e.get('message', '?')}")
    return lines


def _header_lines(status: dict[str, Any], now_s: float) -> list[str]:
    lines = []
    age_s = status.get("age_s")
    if status.get("state") == "stopped":
        lines.append(f"DAEMON STOPPED at {status.get('updated_at', '?')}: the figures below are its last.")
    elif status.get("stale"):
        lines.append(
            f"WARNING: status is {human_duration(age_s)} old (updated {status.get('updated_at', '?')}): "
            "the daemon is stuck or not running; check `systemctl status edgerec`."
        )
    uptime_s = status.get("uptime_s")
    if uptime_s is None:
        started_s = parse_time(status.get("started_at"))
        uptime_s = None if started_s is None else now_s - started_s
    lines.append(
        f"edgerec {status.get('version', '?')} device {status.get('device_id', '?')}: "
        f"{status.get('state', '?')} (pid {status.get('pid', '?')}, up {human_duration(uptime_s)})"
    )
    clock = status.get("clock") or {}
    if clock.get("synced"):
        lines.append("clock: synced")
    else:
        lines.append("clock: NOT SYNCED: new footage carries the local clock; it is re-dated once NTP syncs")
    return lines


def _storage_lines(status: dict[str, Any], now_s: float) -> list[str]:
    disk = status.get("disk") or {}
    pct = disk.get("free_pct")
    pct_text = f"{pct:.1f}%" if isinstance(pct, int | float) else "?%"
    lines = [
        f"disk: {human_bytes(disk.get('free_bytes'))} free ({pct_text}) of "
        f"{human_bytes(disk.get('total_bytes'))}, {human_bytes(disk.get('used_bytes'))} used"
    ]
    ret = status.get("retention") or {}
    oldest_age = status.get("oldest_footage_age_s")
    sweep = age_since(ret.get("last_sweep"), now_s)
    deleted = ret.get("deleted_last_sweep")
    lines.append(
        f"retention: {ret.get('days', '?')} days, oldest footage "
        f"{'none' if oldest_age is None else human_duration(oldest_age)}, last sweep {sweep}"
        + (f" (deleted {deleted})" if deleted is not None else "")
    )
    if ret.get("disk_full"):
        lines.append("DISK FULL: only footage held by incidents is left; recording is paused")
    uncatalogued = status.get("uncatalogued_segments")
    if uncatalogued:
        lines.append(f"CATALOG BEHIND: {uncatalogued} sealed segments not yet in the catalog "
                     "(retried; see the log)")
    lines.append(
        f"incidents: {status.get('incidents_open', '?')} open, {human_bytes(status.get('held_bytes'))} held"
    )
    return lines


def _audit_line(head: Any) -> str | None:
    """The audit log's head, whole, so that it can be copied into `edgerec audit verify --head`."""
    if not isinstance(head, dict) or not isinstance(head.get("lines"), int):
        return None  # a daemon from before the head was published
    return f"audit log: {head['lines']} lines, head {head['lines']}:{head.get('sha256', '?')}"


def _chain_head_lines(heads: Any) -> list[str]:
    """Each camera's chain head, as `edgerec verify --head` takes it (CAMERA=SEQ:SHA256)."""
    if not isinstance(heads, dict) or not heads:
        return []  # a daemon from before the heads were published, or no footage yet
    lines = ["chain heads (for edgerec verify --head):"]
    for camera, head in sorted(heads.items()):
        if isinstance(head, dict):
            lines.append(f"  {camera}={head.get('sequence', '?')}:{head.get('digest', '?')}  "
                         f"(segment of {head.get('start', '?')})")
    return lines


def _mqtt_line(mqtt: Any) -> str:
    if not isinstance(mqtt, dict) or mqtt.get("enabled") is False:
        return "mqtt: disabled"
    state = "connected" if mqtt.get("connected") else "NOT CONNECTED"
    extra = [f"{k}={v}" for k, v in mqtt.items() if k not in ("connected", "enabled") and
             isinstance(v, int | float | str) and not isinstance(v, bool)]
    return f"mqtt: {state}" + (f" ({', '.join(extra)})" if extra else "")


def format_status(status: dict[str, Any], now: float | datetime | None = None) -> str:
    """The human-readable summary `edgerec status` prints."""
    now_s = _epoch_s(now)
    lines = _header_lines(status, now_s)
    cameras = status.get("cameras") or {}
    lines.append(f"cameras: {len(cameras)}")
    for name in sorted(cameras):
        lines.extend(_camera_lines(name, cameras[name] or {}, now_s))
    lines.extend(_storage_lines(status, now_s))
    audit = _audit_line(status.get("audit_head"))
    heads = _chain_head_lines(status.get("chain_heads"))
    if audit is not None:
        lines.append(audit)
    lines.extend(heads)
    lines.append(_mqtt_line(status.get("mqtt")))
    errors = status.get("last_errors") or []
    if errors:
        lines.append("recent daemon errors (a record, not necessarily still so):")
        for err in errors[-10:]:
            if isinstance(err, dict):
                lines.append(f"  {local_time_text(err.get('at'), '?')} ({age_since(err.get('at'), now_s)}): "
                             f"{err.get('message', '')}")
            else:
                lines.append(f"  {err}")
    return "\n".join(lines)
