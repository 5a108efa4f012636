"""What "held" means: the one place for the window maths of incident holds. Pure: no I/O.

An incident holds footage of its camera (or of every camera, ``*``) overlapping its window
[from − pre-roll, end + post-roll], where the end is ``to``, or for an open-ended incident its close
time (no end while it is open). It holds while it is open and for a grace period after it is closed
(``released_ns``), so a mistaken close cannot destroy evidence at once. Windows are closed intervals
of UTC ns: a segment [start, end] overlaps [lo, hi] when ``end >= lo`` and ``start <= hi``.

Holds are computed from incidents, never copied onto segments, so closing one releases exactly what it
held. The catalog (held totals for status), the incident service (what an incident holds) and retention
(what may be deleted) ask this module.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

ALL_CAMERAS = "*"

Window = tuple[int, int | None]  # [start_ns, end_ns]; end None: no end (yet)
P = TypeVar("P")
_Member = tuple[int, int | None, P]  # a window and its payload
_Blocks = tuple[list[int], list[int | None], list[list[_Member[P]]]]  # merged blocks: starts, ends, members


class Incident(Protocol):
    """The fields of an incident that decide what it holds (``catalog.IncidentRow`` has them)."""

    @property
    def camera(self) -> str: ...
    @property
    def from_ns(self) -> int: ...
    @property
    def to_ns(self) -> int | None: ...
    @property
    def closed_ns(self) -> int | None: ...
    @property
    def pre_roll_ns(self) -> int: ...
    @property
    def post_roll_ns(self) -> int: ...


# ----- one incident -----------------------------------------------------------------------------------
def window_start_ns(inc: Incident) -> int:
    return inc.from_ns - inc.pre_roll_ns


def window_end_ns(inc: Incident) -> int | None:
    """End of the footage held; an open-ended incident holds until it is closed (plus post-roll)."""
    if inc.to_ns is not None:
        return inc.to_ns + inc.post_roll_ns
    if inc.closed_ns is not None:
        return inc.closed_ns + inc.post_roll_ns
    return None


def window(inc: Incident) -> Window:
    return window_start_ns(inc), window_end_ns(inc)


def released_ns(inc: Incident, grace_ns: int) -> int | None:
    """When the hold ends: close time plus the grace period (None while open)."""
    return None if inc.closed_ns is None else inc.closed_ns + grace_ns


def holds_at(inc: Incident, now_ns: int, grace_ns: int) -> bool:
    """Does the incident hold anything at ``now_ns`` (open, or closed less than the grace period ago)?"""
    released = released_ns(inc, grace_ns)
    return released is None or now_ns < released


def covers(inc: Incident, camera: str) -> bool:
    return inc.camera == ALL_CAMERAS or inc.camera == camera


def overlaps(start_ns: int, end_ns: int, lo_ns: int, hi_ns: int | None) -> bool:
    """Does footage [start_ns, end_ns] overlap the window [lo_ns, hi_ns] (hi None: no end)?"""
    return end_ns >= lo_ns and (hi_ns is None or start_ns <= hi_ns)


def holds(inc: Incident, camera: str, start_ns: int, end_ns: int, now_ns: int, grace_ns: int) -> bool:
    """Does ``inc`` hold footage [start_ns, end_ns] of ``camera`` at ``now_ns``?"""
    return (covers(inc, camera) and holds_at(inc, now_ns, grace_ns)
            and overlaps(start_ns, end_ns, *window(inc)))


# ----- many incidents ---------------------------------------------------------------------------------
def merge_windows(windows: Iterable[Window], join_gap_ns: int = 0) -> list[Window]:
    """Union of [start, end] windows (end None = unbounded) as sorted disjoint windows; windows less than
    ``join_gap_ns`` apart are joined."""
    out: list[Window] = []
    for lo, hi in sorted(windows, key=lambda w: w[0]):
        if out:
            plo, phi = out[-1]
            if phi is None or lo <= phi + join_gap_ns:
                out[-1] = (plo, None if phi is None or hi is None else max(phi, hi))
                continue
        out.append((lo, hi))
    return out


def held_windows(incidents: Iterable[Incident], cameras: Iterable[str], now_ns: int, grace_ns: int,
                 join_gap_ns: int = 0) -> dict[str, list[Window]]:
    """Per camera, the merged windows held at ``now_ns`` (cameras with none are left out). With
    ``join_gap_ns`` the longest segment, a segment spanning two windows falls in one merged window, so
    summing footage per window counts it once."""
    holding = [inc for inc in incidents if holds_at(inc, now_ns, grace_ns)]
    out: dict[str, list[Window]] = {}
    for camera in cameras:
        merged = merge_windows((window(inc) for inc in holding if covers(inc, camera)), join_gap_ns)
        if merged:
            out[camera] = merged
    return out


class WindowIndex(Generic[P]):
    """Windows per camera (with '*' windows applied to every camera), queried by overlap in O(log n).

    Windows are merged per camera into disjoint blocks on first query; each block keeps its member
    windows and their payloads for the queries that need them (which incident released a segment, and
    when).
    """

    def __init__(self, windows: Iterable[tuple[str, int, int | None, P]]):
        self._by_camera: dict[str, list[_Member[P]]] = {}
        self._star: list[_Member[P]] = []
        for camera, lo, hi, payload in windows:
            target = self._star if camera == ALL_CAMERAS else self._by_camera.setdefault(camera, [])
            target.append((lo, hi, payload))
        self._blocks: dict[str, _Blocks[P]] = {}

    def _camera_blocks(self, camera: str) -> _Blocks[P]:
        blocks = self._blocks.get(camera)
        if blocks is None:
            starts: list[int] = []
            ends: list[int | None] = []
            members: list[list[_Member[P]]] = []
            for lo, hi, payload in sorted(self._by_camera.get(camera, []) + self._star, key=lambda w: w[0]):
                last = ends[-1] if ends else None
                if starts and (last is None or lo <= last):
                    ends[-1] = None if last is None or hi is None else max(last, hi)
                    members[-1].append((lo, hi, payload))
                else:
                    starts.append(lo)
                    ends.append(hi)
                    members.append([(lo, hi, payload)])
            blocks = (starts, ends, members)
            self._blocks[camera] = blocks
        return blocks

    def _overlapping_blocks(self, camera: str, start_ns: int, end_ns: int) -> Iterator[int]:
        starts, ends, _ = self._camera_blocks(camera)
        # Blocks are disjoint and sorted: the candidates start at or before end_ns; walk back while they
        # still reach start_ns.
        i = bisect.bisect_right(starts, end_ns) - 1
        while i >= 0:
            hi = ends[i]
            if hi is not None and hi < start_ns:
                break
            yield i
            i -= 1

    def __bool__(self) -> bool:
        return bool(self._star or self._by_camera)

    def any_overlap(self, camera: str, start_ns: int, end_ns: int) -> bool:
        # Called once per retention candidate: the cached blocks are looked up directly.
        starts, ends, _ = self._blocks.get(camera) or self._camera_blocks(camera)
        if not starts:
            return False
        # Only the last block starting at or before end_ns can reach start_ns: the ones before it end
        # before it begins.
        i = bisect.bisect_right(starts, end_ns) - 1
        if i < 0:
            return False
        hi = ends[i]
        return hi is None or hi >= start_ns

    def overlapping(self, camera: str, start_ns: int, end_ns: int) -> list[P]:
        """The payloads of the windows that overlap [start_ns, end_ns] on ``camera``."""
        _, _, members = self._camera_blocks(camera)
        out: list[P] = []
        for i in self._overlapping_blocks(camera, start_ns, end_ns):
            out += [p for lo, hi, p in members[i] if overlaps(start_ns, end_ns, lo, hi)]
        return out


def held_index(incidents: Iterable[Incident], now_ns: int, grace_ns: int) -> WindowIndex[None]:
    """The windows of the incidents that hold at ``now_ns``."""
    return WindowIndex((inc.camera, *window(inc), None) for inc in incidents
                       if holds_at(inc, now_ns, grace_ns))


@dataclass(frozen=True)
class Holds:
    """The incidents relevant to a retention plan at ``now_ns``, split into those that hold (``held``)
    and those already released (``released``, each window carrying its release time)."""

    held: WindowIndex[None]
    released: WindowIndex[int]

    @classmethod
    def at(cls, incidents: Iterable[Incident], now_ns: int, grace_ns: int) -> Holds:
        holding: list[tuple[str, int, int | None, None]] = []
        released: list[tuple[str, int, int | None, int]] = []
        for inc in incidents:
            start, end = window(inc)
            until = released_ns(inc, grace_ns)
            if until is None or now_ns < until:
                holding.append((inc.camera, start, end, None))
            else:
                released.append((inc.camera, start, end, until))
        return cls(WindowIndex(holding), WindowIndex(released))

    def kept_past(self, camera: str, start_ns: int, end_ns: int, expiry_ns: int) -> bool:
        """Was footage [start_ns, end_ns] (unheld now) kept past ``expiry_ns`` by a released hold?"""
        return self.released.any_overlap(camera, start_ns, end_ns) and any(
            r > expiry_ns for r in self.released.overlapping(camera, start_ns, end_ns))
