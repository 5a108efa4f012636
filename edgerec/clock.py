"""Trusted time: is the wall clock synchronised, has it jumped, and which wall times can be believed.

A Raspberry Pi has no battery-backed clock: it boots with the last saved time (or 1970) and jumps when
NTP syncs. Retention must never delete footage because of such a jump, so this module gives

- readings of the kernel's state (``clock_synced``, ``boot_id``, ``monotonic_ns``, ``read_clock``),
- pure rules over readings: ``plausible`` (can a wall time be believed), ``ClockWatch`` (did the wall
  clock jump relative to the monotonic clock) and ``redate`` (new dates for footage recorded under a
  wrong clock, from the boot id and the monotonic clock, once the clock is right).

Which time footage *ages* on is not the wall clock at all: see ``retentionclock`` and
docs/design/time.md.

Tests feed readings; nothing here sleeps.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .walltime import PLAUSIBLE_SLACK_NS, RELEASE_FLOOR_NS, WallTimeRules

log = logging.getLogger(__name__)

# adjtimex(2): the kernel's clock state and status bits.
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class _Timex(ctypes.Structure):
    # Only the fields up to ``status`` are read; they have the same layout on every Linux ABI (int, then
    # longs). The tail is padding large enough for the rest of ``struct timex`` on 32 and 64 bit.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


_libc: ctypes.CDLL | None = None


def clock_synced() -> bool:
    """True when the kernel says the wall clock is synchronised (NTP/timesyncd disciplines it).

    Reads ``adjtimex`` with modes=0 (read-only, needs no privilege). Not synchronised when the call
    returns TIME_ERROR or STA_UNSYNC is set; False when the call is unavailable.
    """
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        tx = _Timex()
        state = _libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    if state < 0:
        return False
    return state != _TIME_ERROR and not (tx.status & _STA_UNSYNC)


_boot_id_cache: str | None = None


def boot_id() -> str:
    """The kernel's random id of this boot (changes at every boot); 'unknown' where there is none."""
    global _boot_id_cache
    if _boot_id_cache is None:
        try:
            with open(_BOOT_ID_PATH, encoding="ascii") as f:
                _boot_id_cache = f.read().strip() or "unknown"
        except OSError:
            _boot_id_cache = "unknown"
    return _boot_id_cache


def monotonic_ns() -> int:
    """A clock that never jumps: CLOCK_BOOTTIME where available (it keeps counting during suspend)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime_ns(boottime)
    return time.monotonic_ns()


@dataclass(frozen=True)
class ClockReading:
    """One simultaneous look at the clocks."""

    wall_ns: int
    mono_ns: int
    boot_id: str
    synced: bool


def read_clock() -> ClockReading:
    return ClockReading(time.time_ns(), monotonic_ns(), boot_id(), clock_synced())


def plausible(wall_ns: int, newest_catalogued_ns: int | None, release_floor_ns: int = RELEASE_FLOOR_NS,
              *, slack_ns: int = PLAUSIBLE_SLACK_NS) -> bool:
    """Can ``wall_ns`` be believed? Not before the release floor, not before the newest footage already
    catalogued (less a few seconds of slack): ``walltime.WallTimeRules``."""
    return WallTimeRules(release_floor_ns, slack_ns).plausible(wall_ns, newest_catalogued_ns)


class ClockWatch:
    """Detects wall-clock jumps: the wall clock moved by more than ``threshold_s`` more (or less) than the
    monotonic clock since the previous reading. Pure: feed it readings.

    ``observe`` returns the jump in ns (positive = forward) or None.
    """

    def __init__(self, threshold_s: float):
        self.threshold_ns = int(threshold_s * 1e9)
        self._last: tuple[int, int] | None = None

    def observe(self, wall_ns: int, mono_ns: int) -> int | None:
        last, self._last = self._last, (wall_ns, mono_ns)
        if last is None:
            return None
        jump_ns = (wall_ns - last[0]) - (mono_ns - last[1])
        return jump_ns if abs(jump_ns) > self.threshold_ns else None


@dataclass(frozen=True)
class Redate:
    """New wall times for a segment recorded under a wrong clock."""

    segment_id: int
    start_ns: int
    end_ns: int


def redate(segments: Iterable[tuple[int, str, int, int, int]], anchor: ClockReading) -> list[Redate]:
    """Re-date footage of the anchor's boot: start = anchor wall time − (anchor monotonic − segment
    monotonic). ``segments`` are (id, boot_id, monotonic_ns at start, start_ns, end_ns); those of other
    boots cannot be re-dated this way and are left out."""
    out = []
    for seg_id, seg_boot, seg_mono, start_ns, end_ns in segments:
        if seg_boot != anchor.boot_id or seg_mono > anchor.mono_ns:
            continue
        new_start = anchor.wall_ns - (anchor.mono_ns - seg_mono)
        out.append(Redate(seg_id, new_start, new_start + max(0, end_ns - start_ns)))
    return out
