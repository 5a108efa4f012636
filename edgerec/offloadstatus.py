"""The offloader's status file ``offload.json``: where the offload service writes it, and how the daemon
(its MQTT status) and `edgerec status` read it.

The offloader (``offload.py``) writes it after every pass and at least every ``REFRESH_S`` while it runs
(a long upload or a backoff included), so a file older than ``STALE_AFTER_S`` means the offloader is
stopped or stuck. Under systemd the file is in the offload unit's own runtime directory
``/run/edgerec-offload`` (RAM, gone when the unit stops); the recorder's unit, running as the same user,
reads it there: neither unit needs write access to the other's directory. Without systemd it is in the
data directory. Reading it imports no S3 client: the recorder never loads one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import statusfile
from .errors import EdgerecError

STATUS_FILE_NAME = "offload.json"
# What systemd makes of edgerec-offload.service's RuntimeDirectory=edgerec-offload.
SERVICE_RUNTIME_DIR = Path("/run/edgerec-offload")
REFRESH_S = 10.0  # the running offloader rewrites its file at least this often
STALE_AFTER_S = 30.0  # three refreshes missed: the offloader is stopped or stuck
# The fields the daemon's status carries (``section``): the offloader's own, less its pid and bucket.
SECTION_FIELDS = ("state", "backlog_segments", "backlog_bytes", "oldest_waiting", "last_upload",
                  "last_error", "last_error_at")


def status_path(data_dir: Path, env: Mapping[str, str]) -> Path:
    """Where the offloader writes: its runtime directory under systemd, else the data directory."""
    runtime = statusfile.runtime_directory(env)
    return (runtime if runtime is not None else Path(data_dir)) / STATUS_FILE_NAME


def candidates(data_dir: Path, env: Mapping[str, str]) -> list[Path]:
    """Where readers look: the offload unit's runtime directory, the reader's own (an offloader run by
    another unit), the data directory (an offloader run from a shell)."""
    places = [SERVICE_RUNTIME_DIR, statusfile.runtime_directory(env), Path(data_dir)]
    out: list[Path] = []
    for place in places:
        if place is not None and place / STATUS_FILE_NAME not in out:
            out.append(place / STATUS_FILE_NAME)
    return out


def read(paths: Sequence[Path], device_id: str | None, now: float | None = None) -> dict[str, Any] | None:
    """The freshest offload status among ``paths`` that belongs to ``device_id``, marked with ``age_s``
    and ``stale``; None when there is none. A damaged or unreadable file counts as absent: the offloader
    replaces it within seconds."""
    found = []
    for path in paths:
        try:
            status = statusfile.read_status(path, now=now, stale_after_s=STALE_AFTER_S)
        except EdgerecError:
            continue
        if device_id is not None and status.get("device_id") not in (None, device_id):
            continue  # another config's offloader sharing a runtime directory
        found.append(status)
    if not found:
        return None
    return min(found, key=lambda st: st["age_s"] if st.get("age_s") is not None else float("inf"))


def section(status: Mapping[str, Any] | None, enabled: bool) -> dict[str, Any]:
    """The ``offload`` section of the daemon's status (pure). Disabled: ``{"enabled": false}``. Enabled
    but no file: state ``not_running``. A stale file keeps its figures (the last known backlog) and says
    ``stale: true``."""
    if not enabled:
        return {"enabled": False}
    if status is None:
        return {"enabled": True, "state": "not_running", "stale": True, "updated_at": None, "age_s": None,
                **{name: None for name in SECTION_FIELDS if name != "state"}}
    out: dict[str, Any] = {"enabled": True}
    out.update({name: status.get(name) for name in SECTION_FIELDS})
    out.update(updated_at=status.get("updated_at"), age_s=status.get("age_s"),
               stale=bool(status.get("stale")))
    return out


def news(offload: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What in the offload section is news for MQTT: the last error (set, changed or cleared) and whether
    the offloader is running (stale). Not the backlog: it grows and empties with every provisional
    refresh during an open incident (and every segment with ``what: all``), so it goes out with the
    periodic status, like the other counters."""
    if not offload or not offload.get("enabled"):
        return None
    return (offload.get("last_error"), offload.get("stale"))


def format_line(status: Mapping[str, Any]) -> str:
    """`edgerec status`'s line for the offloader (pure)."""
    oldest = status.get("oldest_waiting") or "-"
    line = (f"offload: {status.get('state', '?')}, waiting {status.get('backlog_segments') or 0} segments "
            f"({statusfile.human_bytes(status.get('backlog_bytes') or 0)}), oldest waiting {oldest}, "
            f"last upload {status.get('last_upload') or '-'}")
    if status.get("stale"):
        age = status.get("age_s")
        line += (f"; STALE: not updated for {age:.0f} s (is edgerec-offload running?)" if age is not None
                 else "; STALE")
    if status.get("last_error"):
        line += f"; last error ({status.get('last_error_at')}): {status['last_error']}"
    return line
