"""Does the catalog hold what the audit log says it must? Pure: the comparison of the catalog's
incidents with the incidents the audit log records (``replay.incidents_from_audit``), and the holds a
sweep uses when they differ.

The audit log is the record; the catalog is a cache of it that anyone with a shell and ``sqlite3`` can
edit. A disagreement is an incident whose catalog row keeps *less* than its log lines say: a row that
is missing, closed earlier (or closed at all while the log has it open), on another camera, or with a
narrower window. Rows that keep more (an incident only the catalog has, a close the log does not
have yet) release nothing and are not disagreements.

Whatever the two say, a sweep holds the union of both (``stricter``): a segment either of them holds is
held. A disagreement also stops deletions by age until the catalog is repaired (``edgerec incident
repair``); the caller does that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import holds
from ..catalog import IncidentRow
from ..timefmt import rfc3339

# Times in the log are written to the millisecond, a close's a few milliseconds after the command's time:
# a catalog row this much "weaker" is the same incident. More is a change (and releases nothing anyway:
# the sweep holds by the stricter of the two).
SLACK_NS = 60 * 10**9
REPAIR_HINT = "edgerec incident repair -c CONFIG"


@dataclass(frozen=True, order=True)
class Disagreement:
    """One incident whose catalog row keeps less than its audit lines say. ``kind``: ``missing``,
    ``closed_early``, ``camera`` or ``window``; ``detail`` says what each side says."""

    id: str
    kind: str
    detail: str

    def to_json_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "detail": self.detail}


def _time(ns: int | None) -> str:
    return rfc3339(ns) if ns is not None else "none"


def disagreement(cat: IncidentRow | None, log: IncidentRow, slack_ns: int = SLACK_NS) -> Disagreement | None:
    """How the catalog's row ``cat`` of an incident keeps less than the log's ``log`` (None: it does not)."""
    if cat is None:
        return Disagreement(log.id, "missing", "in the audit log, not in the catalog")
    if log.closed_ns is None and cat.closed_ns is not None:
        return Disagreement(log.id, "closed_early",
                            f"catalog: closed {_time(cat.closed_ns)}; audit log: open")
    if log.closed_ns is not None and cat.closed_ns is not None and cat.closed_ns < log.closed_ns - slack_ns:
        return Disagreement(log.id, "closed_early", f"catalog: closed {_time(cat.closed_ns)}; "
                            f"audit log: closed {_time(log.closed_ns)}")
    if cat.camera != log.camera and cat.camera != holds.ALL_CAMERAS:
        return Disagreement(log.id, "camera",
                            f"catalog: camera {cat.camera}; audit log: camera {log.camera}")
    cat_lo, cat_hi = holds.window(cat)
    log_lo, log_hi = holds.window(log)
    narrower_end = cat_hi is not None and (log_hi is None or cat_hi < log_hi - slack_ns)
    if cat_lo > log_lo + slack_ns or narrower_end:
        return Disagreement(log.id, "window", f"catalog: holds {_time(cat_lo)} .. {_time(cat_hi)}; "
                            f"audit log: {_time(log_lo)} .. {_time(log_hi)}")
    return None


def compare(logged: Iterable[IncidentRow], catalog_row: Callable[[str], IncidentRow | None],
            slack_ns: int = SLACK_NS) -> list[Disagreement]:
    """The incidents of ``logged`` (as the audit log tells them) whose catalog row (``catalog_row(id)``)
    keeps less, sorted by id."""
    found = (disagreement(catalog_row(log.id), log, slack_ns) for log in logged)
    return sorted(d for d in found if d is not None)


def stricter(catalog: Iterable[IncidentRow], logged: Iterable[IncidentRow]) -> list[IncidentRow]:
    """The incidents a sweep holds by: both sides' rows. Holds are unions of windows, so a segment is held
    when either the catalog's row or the log's holds it: per incident, the stricter of the two."""
    return [*catalog, *logged]


def relevant(logged: Iterable[IncidentRow], since_ns: int | None) -> list[IncidentRow]:
    """The logged incidents that may still hold something: open, or closed at or after ``since_ns``."""
    return [row for row in logged
            if since_ns is None or row.closed_ns is None or row.closed_ns >= since_ns]


def mismatch_digest(disagreements: Sequence[Disagreement]) -> str:
    """What identifies one mismatch (the same disagreements give the same digest): alarmed once each."""
    text = json.dumps([d.to_json_dict() for d in sorted(disagreements)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mismatch_message(disagreements: Sequence[Disagreement]) -> str:
    """The one-line alarm: what disagrees and how to repair it."""
    ids = ", ".join(f"{d.id} ({d.kind})" for d in disagreements[:10])
    more = f" and {len(disagreements) - 10} more" if len(disagreements) > 10 else ""
    return (f"catalog disagrees with the audit log for {len(disagreements)} incident(s): {ids}{more}; "
            f"their footage stays held and nothing is deleted by age until the catalog is repaired "
            f"with `{REPAIR_HINT}`")


def mismatch_fields(disagreements: Sequence[Disagreement], limit: int = 50) -> dict[str, Any]:
    """The fields of the ``catalog_mismatch`` audit line, MQTT event and status entry."""
    return {"count": len(disagreements), "digest": mismatch_digest(disagreements),
            "incidents": [d.to_json_dict() for d in disagreements[:limit]], "repair": REPAIR_HINT}
