"""The retention clock: the time on which footage ages, built so that nobody can make it run fast.

The wall clock of a Pi is whatever NTP (unauthenticated, on a school LAN) or a stale image says. The
retention clock never takes its pace from it: while the daemon runs it advances exactly with the
monotonic clock (CLOCK_BOOTTIME); across a restart it is credited with the downtime only as far as
the evidence allows (the same boot id proves it by the monotonic clock; a new boot gets its uptime
plus the wall clock's claim capped at ``max_credit_ns``, or the whole claim when an authenticated time
source confirms it). Design and worst cases: docs/design/time.md.

Everything here is pure: it takes readings and anchors and returns anchors and decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .clock import ClockReading
from .walltime import RELEASE_FLOOR_NS

# Kinds of evidence for the time credited across a restart (``Credit.evidence``).
FIRST_START = "first_start"  # no earlier anchor: the clock starts at the wall clock (or the release floor)
SAME_BOOT = "monotonic"  # same boot: the monotonic clock measured the downtime exactly
WALL_CAPPED = "wall_capped"  # new boot: uptime + the wall clock's claim, at most the cap
TRUSTED = "trusted"  # new boot: an authenticated time source confirmed the wall clock's claim
INCONSISTENT = "inconsistent"  # same boot, but the monotonic clock is behind the anchor's: nothing credited


@dataclass(frozen=True)
class Anchor:
    """One simultaneous reading of the retention clock and the kernel's clocks.

    ``rclock_ns`` is the retention clock at that moment; the anchor maps the monotonic clock of
    ``boot_id`` onto it (retention time = ``rclock_ns`` + (monotonic − ``mono_ns``)).
    """

    boot_id: str
    mono_ns: int
    wall_ns: int
    rclock_ns: int

    def at(self, mono_ns: int) -> int:
        """The retention clock at ``mono_ns`` of the same boot (never before the anchor)."""
        return self.rclock_ns + max(0, mono_ns - self.mono_ns)

    def to_fields(self) -> dict[str, Any]:
        """The anchor as audit-log fields (integers: exact, and cheap to parse back)."""
        return {"boot_id": self.boot_id, "mono_ns": self.mono_ns, "wall_ns": self.wall_ns,
                "rclock_ns": self.rclock_ns}


@dataclass(frozen=True)
class Credit:
    """What a start credited for the time since the last anchor, and on what evidence.

    ``claimed_ns``: what the wall clock says passed; ``credited_ns``: what the retention clock took.
    ``uncredited_ns`` = claimed − credited when the claim was capped (footage is kept that much longer
    than its retention period: the price of not believing an unauthenticated clock).
    """

    evidence: str
    claimed_ns: int
    credited_ns: int

    @property
    def uncredited_ns(self) -> int:
        return max(0, self.claimed_ns - self.credited_ns)

    def to_fields(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "claimed_s": round(self.claimed_ns / 1e9, 3),
                "credited_s": round(self.credited_ns / 1e9, 3),
                "uncredited_s": round(self.uncredited_ns / 1e9, 3)}


def start(previous: Anchor | None, reading: ClockReading, *, max_credit_ns: int,
          trusted_wall_ns: int | None = None,
          release_floor_ns: int = RELEASE_FLOOR_NS) -> tuple[Anchor, Credit]:
    """The retention clock at a start, from the last anchor persisted before it.

    - No anchor: the clock starts at the wall clock, or at the release floor if the wall clock is
      before it (a Pi that booted at 1970). Footage older than this start is aged from the moment it
      is first seen (``stamp_segment``), so a clock set ahead at the first start deletes nothing.
    - Same boot: the monotonic clock says exactly how long the daemon was stopped (nothing, when the
      anchor claims a monotonic time still ahead: it cannot be believed).
    - New boot: at least the uptime passed since the anchor (this boot began after it); beyond that,
      the wall clock's claim is credited up to ``max_credit_ns``, or wholly when ``trusted_wall_ns``
      (an authenticated reading taken at this start) confirms it.
    """
    if previous is None:
        rclock = max(reading.wall_ns, release_floor_ns)
        return Anchor(reading.boot_id, reading.mono_ns, reading.wall_ns, rclock), Credit(FIRST_START, 0, 0)
    if previous.boot_id == reading.boot_id:
        if reading.mono_ns < previous.mono_ns:  # cannot happen in one boot: an anchor not to be believed
            return (Anchor(reading.boot_id, reading.mono_ns, reading.wall_ns, previous.rclock_ns),
                    Credit(INCONSISTENT, 0, 0))
        elapsed = reading.mono_ns - previous.mono_ns
        return (Anchor(reading.boot_id, reading.mono_ns, reading.wall_ns, previous.rclock_ns + elapsed),
                Credit(SAME_BOOT, elapsed, elapsed))
    uptime = max(0, reading.mono_ns)
    if trusted_wall_ns is not None:
        claimed = trusted_wall_ns - previous.wall_ns
        credited, evidence = max(uptime, claimed), TRUSTED
    else:
        claimed = reading.wall_ns - previous.wall_ns
        credited, evidence = min(max(uptime, claimed), uptime + max(0, max_credit_ns)), WALL_CAPPED
    return (Anchor(reading.boot_id, reading.mono_ns, reading.wall_ns, previous.rclock_ns + credited),
            Credit(evidence, max(claimed, 0), credited))


def now(anchor: Anchor, reading: ClockReading) -> int:
    """The retention clock while running: the anchor advanced by the monotonic clock, never by the wall
    clock. A reading of another boot (cannot happen in one process) gets the anchor's time."""
    if reading.boot_id != anchor.boot_id:
        return anchor.rclock_ns
    return anchor.at(reading.mono_ns)


def advance(anchor: Anchor, reading: ClockReading) -> Anchor:
    """A fresh anchor for ``reading`` on the same line (persisted so that a restart starts from it)."""
    return Anchor(reading.boot_id, reading.mono_ns, reading.wall_ns, now(anchor, reading))


class Epochs:
    """The retention clock of earlier boots, from their anchors: which retention time a segment
    recorded at (boot id, monotonic time) ended at, for footage whose catalog row was lost."""

    def __init__(self, anchors: Iterable[Anchor] = ()):
        self._offsets: dict[str, int] = {}
        for a in anchors:
            # The smallest offset a boot was ever anchored at: retention time only ever lagged further
            # behind its monotonic clock... never ahead, so the smallest is the safe (younger) one.
            offset = a.rclock_ns - a.mono_ns
            known = self._offsets.get(a.boot_id)
            self._offsets[a.boot_id] = offset if known is None else min(known, offset)

    def __contains__(self, boot_id: str) -> bool:
        return boot_id in self._offsets

    def rclock_at(self, boot_id: str, mono_ns: int) -> int | None:
        offset = self._offsets.get(boot_id)
        return None if offset is None else mono_ns + offset


def stamp_segment(boot_id: str, mono_start_ns: int, duration_ns: int, rclock_now_ns: int,
                  epochs: Epochs) -> int:
    """The retention time a segment ended at: from its boot's anchor when known, and never later than
    now (footage cannot have ended in the future). Unknown boots get now: such footage (adopted after a
    lost catalog, or from before this clock existed) is aged from the moment it is first seen, never
    from a wall time that could have been spoofed."""
    at = epochs.rclock_at(boot_id, mono_start_ns)
    if at is None:
        return rclock_now_ns
    return min(at + max(0, duration_ns), rclock_now_ns)


def anchor_from_fields(fields: Mapping[str, Any]) -> Anchor | None:
    """An anchor written by ``Anchor.to_fields`` (in an audit line), or None if the fields are not one."""
    try:
        boot_id, mono, wall, rclock = (fields["boot_id"], fields["mono_ns"], fields["wall_ns"],
                                       fields["rclock_ns"])
    except (KeyError, TypeError):
        return None
    if not isinstance(boot_id, str) or not all(type(v) is int for v in (mono, wall, rclock)):
        return None
    return Anchor(boot_id, mono, wall, rclock)


def newest_anchor(candidates: Iterable[Anchor | None]) -> Anchor | None:
    """The anchor to start from among several records of it (catalog cache, audit log): the one with
    the latest retention time is the newest; a cache that claims a later time than the record allows is
    not believed (``check_cache``)."""
    best: Anchor | None = None
    for a in candidates:
        if a is not None and (best is None or a.rclock_ns > best.rclock_ns):
            best = a
    return best


def check_cache(cached: Anchor | None, recorded: Anchor | None) -> str | None:
    """Why an anchor cached outside the audit log cannot be believed, or None.

    The audit log is the record; a cached anchor may be newer (written at every sweep) but never ahead
    of what the monotonic clock allows from the recorded one: same boot, retention time advanced by at
    most the monotonic time between them.
    """
    if cached is None or recorded is None:
        return None
    if cached.boot_id == recorded.boot_id:
        if cached.mono_ns < recorded.mono_ns:
            return "cached anchor is older than the audit log's"
        if cached.rclock_ns - recorded.rclock_ns > cached.mono_ns - recorded.mono_ns:
            return "cached retention time ran ahead of the monotonic clock"
        return None
    return "cached anchor is of another boot than the audit log's newest"


class RetentionClock:
    """The running retention clock: an anchor taken at start, advanced by the monotonic clock of each
    reading. ``read`` gives kernel clock readings (``clock.read_clock``; tests inject theirs)."""

    def __init__(self, anchor: Anchor, read: Callable[[], ClockReading], credit: Credit | None = None):
        self.anchor = anchor
        self.credit = credit
        self._read = read

    def reading(self) -> tuple[int, ClockReading]:
        """(retention time, the reading it came from)."""
        reading = self._read()
        return now(self.anchor, reading), reading

    def now_ns(self) -> int:
        return self.reading()[0]

    def checkpoint(self) -> Anchor:
        """A fresh anchor on the same line (to persist: a restart in this boot starts exactly from it)."""
        return advance(self.anchor, self._read())

    def stamp(self, boot_id: str, mono_start_ns: int, duration_ns: int, epochs: Epochs | None = None) -> int:
        """The retention time a segment recorded at (boot id, monotonic start) ended at."""
        known = Epochs([self.anchor]) if epochs is None else epochs
        return stamp_segment(boot_id, mono_start_ns, duration_ns, self.now_ns(), known)
