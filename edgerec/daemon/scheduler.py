"""When a retention sweep is due, and the disk-full gate that pauses new segments while only held footage
is left. Pure: the worker thread feeds in the clock and the disk's state and acts on the answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Under the free-space mark a sweep runs at once, but at most this often (a sweep that could not free
# enough is not retried every tick) ...
PRESSURE_SWEEP_MIN_INTERVAL_S = 1.0
# ... and while only held footage is left (disk_full) at most this often: nothing changes until space is
# freed, which is noticed on the next tick (one statvfs), or a hold's grace period ends.
DISK_FULL_RESWEEP_S = 30.0

SweepReason = Literal["disk_pressure", "interval"]


@dataclass
class SweepScheduler:
    """Sweep every ``sweep_interval_s``, at once after a clock jump, and under the free-space mark (at most
    every PRESSURE_SWEEP_MIN_INTERVAL_S, or DISK_FULL_RESWEEP_S while the disk is full); when space comes
    back while the disk is full, at once."""

    sweep_interval_s: float
    next_sweep_s: float = 0.0  # monotonic; 0: at the first look
    last_sweep_s: float = float("-inf")

    def due(self, now_s: float, *, pressure: bool, disk_full: bool, clock_jumped: bool) -> SweepReason | None:
        """The reason to sweep now, or None; a sweep it calls for counts as started at ``now_s``."""
        if clock_jumped:
            self.next_sweep_s = 0.0  # the sweep logs, audits and publishes the jump (once)
        due = now_s >= self.next_sweep_s
        if pressure:
            wait_s = DISK_FULL_RESWEEP_S if disk_full else PRESSURE_SWEEP_MIN_INTERVAL_S
            due = due or now_s >= self.last_sweep_s + wait_s
        elif disk_full:
            due = True
        if not due:
            return None
        self.next_sweep_s = now_s + self.sweep_interval_s
        self.last_sweep_s = now_s
        return "disk_pressure" if pressure else "interval"


GateChange = Literal["disk_full", "disk_ok"]


@dataclass
class DiskFullGate:
    """Recorders start no new segment while ``full`` is set (their ``may_start_segment``)."""

    full: bool = False

    def set(self, full: bool) -> GateChange | None:
        """Take the latest verdict; the change it makes, if any, for the log and the event."""
        was_full, self.full = self.full, full
        if full and not was_full:
            return "disk_full"
        if was_full and not full:
            return "disk_ok"
        return None
