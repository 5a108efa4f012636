"""Where the retention clock's anchors are kept, and how a start finds the one to go on from.

The audit log is the record: every start writes a ``retention_clock`` line with its anchor and what it
credited, and every line that deletes footage by age carries the anchor it used. The catalog caches the
newest anchor (written at every sweep); a cached anchor is believed only as far as the recorded one and
the monotonic clock allow (``retentionclock.check_cache``). Design: docs/design/time.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import retentionclock as rc
from .audit import AuditSink, tail_entries
from .catalog import Catalog
from .clock import ClockReading
from .timefmt import DAY_NS, rfc3339

log = logging.getLogger(__name__)

CLOCK_EVENT = "retention_clock"
# Audit lines that carry an anchor: starts and checkpoints, and the lines of deletions by age.
ANCHOR_EVENTS = (CLOCK_EVENT, "segments_deleted")
CHECKPOINT_EVERY_NS = DAY_NS  # an anchor line at least this often (on the retention clock) while running
_FIRST_READ_BYTES = 1 << 16


def _anchored(entries: list[dict[str, Any]]) -> Iterator[rc.Anchor]:
    for entry in reversed(entries):
        if entry.get("event") in ANCHOR_EVENTS:
            anchor = rc.anchor_from_fields(entry.get("clock") or {})
            if anchor is not None:
                yield anchor


def recorded_anchor(audit_path: Path) -> rc.Anchor | None:
    """The newest anchor in the audit log: read from its end, a window growing until one is found."""
    try:
        size = os.stat(audit_path).st_size
    except FileNotFoundError:
        return None
    window = _FIRST_READ_BYTES
    while True:
        for anchor in _anchored(tail_entries(audit_path, window)):
            return anchor
        if window >= size:
            return None
        window *= 16


def all_recorded_anchors(audit_path: Path) -> list[rc.Anchor]:
    """Every anchor in the audit log (for footage of earlier boots whose catalog rows were lost)."""
    try:
        size = os.stat(audit_path).st_size
    except FileNotFoundError:
        return []
    return list(_anchored(tail_entries(audit_path, size + 1)))


def _cached_anchor(catalog: Catalog) -> rc.Anchor | None:
    row = catalog.clock_anchor()
    return rc.Anchor(*row) if row is not None else None


def start_clock(catalog: Catalog, audit: AuditSink, audit_path: Path, read: Callable[[], ClockReading], *,
                max_credit_ns: int, trusted_wall: Callable[[], int | None] | None = None,
                record: bool = True) -> rc.RetentionClock:
    """Start the retention clock: go on from the newest believable anchor, credit the downtime as the
    evidence allows, record the decision in the audit log, cache the anchor, and stamp catalog rows that
    have no retention time yet. ``record`` False only computes it (a dry run, a CLI incident command):
    nothing is written, and nothing is stamped."""
    recorded = recorded_anchor(audit_path)
    cached = _cached_anchor(catalog)
    doubt = rc.check_cache(cached, recorded)
    previous = recorded if doubt else rc.newest_anchor([recorded, cached])
    reading = read()
    trusted_ns = None
    if previous is not None and previous.boot_id != reading.boot_id and trusted_wall is not None:
        trusted_ns = trusted_wall()
    anchor, credit = rc.start(previous, reading, max_credit_ns=max_credit_ns,
                              trusted_wall_ns=trusted_ns)
    clock = rc.RetentionClock(anchor, read, credit)
    if not record:
        return clock
    fields: dict[str, Any] = {"by": "start", "clock": anchor.to_fields(), "rclock": rfc3339(anchor.rclock_ns),
                              "wall": rfc3339(reading.wall_ns), "synced": reading.synced,
                              **credit.to_fields()}
    if doubt:
        fields["cache_not_believed"] = doubt
        log.error("retention clock: the catalog's cached anchor is not believed (%s); going on from the "
                  "audit log's", doubt)
    audit.append(CLOCK_EVENT, **fields)
    catalog.set_clock_anchor(anchor.boot_id, anchor.mono_ns, anchor.wall_ns, anchor.rclock_ns)
    if credit.uncredited_ns:
        log.warning("retention clock credited less downtime than the wall clock claims evidence=%s "
                    "claimed_s=%.0f credited_s=%.0f", credit.evidence, credit.claimed_ns / 1e9,
                    credit.credited_ns / 1e9)
    stamp_unstamped(catalog, clock, audit_path)
    catalog.rclock_stamp = lambda meta, end_ns: clock.stamp(
        str(meta.boot_id), int(meta.monotonic_ns), max(0, int(end_ns) - int(meta.start_ns)))
    return clock


def stamp_unstamped(catalog: Catalog, clock: rc.RetentionClock, audit_path: Path) -> int:
    """Give rows without a retention time one: from their boot's anchor when the audit log knows it,
    else now (aged from when first seen). Reads the whole audit log only when such rows exist."""
    rows = catalog.unstamped_segments()
    if not rows:
        return 0
    epochs = rc.Epochs([clock.anchor, *all_recorded_anchors(audit_path)])
    now_ns = clock.now_ns()
    n = catalog.stamp_segments(
        (seg_id, rc.stamp_segment(boot, mono, duration, now_ns, epochs))
        for seg_id, boot, mono, duration in rows)
    log.info("retention clock stamped segments count=%d", n)
    return n


def checkpoint(catalog: Catalog, clock: rc.RetentionClock) -> rc.Anchor:
    """Cache a fresh anchor in the catalog (every sweep): a restart in this boot goes on from it."""
    anchor = clock.checkpoint()
    catalog.set_clock_anchor(anchor.boot_id, anchor.mono_ns, anchor.wall_ns, anchor.rclock_ns)
    return anchor
