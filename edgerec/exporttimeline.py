"""Where an export's frames sit in time: which packets a trimmed export keeps, and which gaps in the
footage an export spans (pure: no I/O).

An export keeps real time. Its MP4 starts at the first frame at or after the requested start (earlier
frames of that GOP are kept for decoding and hidden by the MP4's edit list), ends with the last frame
before the requested end, and jumps where the footage has a hole, so a player's clock runs with the
wall clock. ``find_gaps`` names every gap: its times, length and reason (from the catalog when it has
one, else from a segment left out of the export, else "unknown").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .timefmt import NS_PER_S, rfc3339

# Holes shorter than this between one segment and the next are timing jitter of a continuous recording
# (a segment ends where the local clock says the next keyframe arrived), not a gap in the footage.
GAP_MIN_NS = 500_000_000
UNKNOWN_REASON = "unknown"
REASON_MAX_CHARS = 300  # on a terminal line; the manifest keeps the whole reason


@dataclass(frozen=True)
class KnownGap:
    """A gap as the device recorded it (a catalog row): the camera was down, the disk full, ..."""

    from_ns: int
    to_ns: int
    reason: str


@dataclass(frozen=True)
class LeftOut:
    """A segment that was in the range but not exported (bad, or a substitute): its time and why."""

    start_ns: int
    end_ns: int
    why: str


@dataclass(frozen=True)
class ExportGap:
    """A stretch of the exported range without footage."""

    from_ns: int
    to_ns: int
    reason: str
    source: str  # "catalog": the device recorded it; "segments": found from the segments' own times

    @property
    def seconds(self) -> float:
        return (self.to_ns - self.from_ns) / NS_PER_S

    def to_json_dict(self) -> dict[str, Any]:
        return {"from": rfc3339(self.from_ns), "to": rfc3339(self.to_ns), "seconds": round(self.seconds, 3),
                "reason": self.reason, "source": self.source, "from_ns": self.from_ns, "to_ns": self.to_ns}

    def line(self) -> str:
        """One line for a terminal. The reason comes from a catalog, maybe a bundle's from elsewhere:
        control characters in it (escape sequences) are shown as '?', never sent to the terminal."""
        reason = "".join(c if c.isprintable() else "?" for c in self.reason)[:REASON_MAX_CHARS]
        return f"gap {rfc3339(self.from_ns)} .. {rfc3339(self.to_ns)} ({self.seconds:.1f} s): {reason}"


def keep_range(walls: Sequence[int], keyframes: Sequence[bool], from_ns: int | None,
               to_ns: int | None) -> tuple[int, int] | None:
    """The packets (decode order, as [first, end) indices) of one segment that a trimmed export keeps:
    from the last keyframe at or before ``from_ns`` (so that the first frame shown can be decoded) up to
    the first packet at or after ``to_ns``. Cutting the decode order there never keeps a frame after
    ``to_ns`` nor one whose reference is cut (with B-frames the last frames before ``to_ns`` may go too:
    they refer to a later one). ``walls``: each packet's wall clock time. None when no frame of the
    segment that can be decoded is in [from_ns, to_ns)."""
    first = 0
    if from_ns is not None:
        for i, (wall, key) in enumerate(zip(walls, keyframes, strict=True)):
            if key and wall <= from_ns:
                first = i
    end = len(walls)
    if to_ns is not None:
        end = next((i for i in range(first, len(walls)) if walls[i] >= to_ns), len(walls))
    lo = from_ns if from_ns is not None else walls[0] if walls else 0
    if not any(w >= lo for w in walls[first:end]):
        return None
    return first, end


def find_gaps(footage: Sequence[tuple[int, int]], known: Sequence[KnownGap], left_out: Sequence[LeftOut],
              from_ns: int | None = None, to_ns: int | None = None,
              min_ns: int = GAP_MIN_NS) -> list[ExportGap]:
    """Every gap in the export, in time order.

    ``footage``: (start_ns, end_ns) of what the export shows, per segment. A hole of more than ``min_ns``
    between them is a gap (the output's timestamps jump over it); its reason comes from the recorded
    gaps (``known``) it overlaps, else from the segments left out there, else it is "unknown". Recorded
    gaps in [from_ns, to_ns] (default: the footage's span) that no hole covers are listed too, clipped
    to the range: where the footage starts late or ends early, they say why. (A range that merely
    reaches beyond the footage is no gap: the manifest's first and last frame times say where it is.)"""
    spans = sorted(footage)
    if not spans:
        return []
    lo = spans[0][0] if from_ns is None else from_ns
    hi = max(end for _, end in spans) if to_ns is None else to_ns
    holes: list[tuple[int, int]] = []
    cursor = spans[0][1]
    for start, end in spans[1:]:
        if start - cursor > min_ns:
            holes.append((cursor, start))
        cursor = max(cursor, end)
    gaps = [_explain(a, b, known, left_out) for a, b in holes]
    for gap in known:
        a, b = max(gap.from_ns, lo), min(gap.to_ns, hi)
        if b > a and not any(_overlaps(gap.from_ns, gap.to_ns, x, y) for x, y in holes):
            gaps.append(ExportGap(a, b, gap.reason or UNKNOWN_REASON, "catalog"))
    return sorted(gaps, key=lambda g: (g.from_ns, g.to_ns))


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def _explain(a: int, b: int, known: Sequence[KnownGap], left_out: Sequence[LeftOut]) -> ExportGap:
    recorded = [g for g in known if _overlaps(g.from_ns, g.to_ns, a, b)]
    if recorded:
        # The device's own times of the gap (the hole between frames is only measured from them).
        start = max(min(g.from_ns for g in recorded), a - GAP_MIN_NS)
        end = min(max(g.to_ns for g in recorded), b + GAP_MIN_NS)
        reasons = _unique(g.reason for g in recorded if g.reason) or [UNKNOWN_REASON]
        return ExportGap(start, end, "; ".join(reasons), "catalog")
    # A segment whose end is unknown (its trailer is damaged) is taken as the instant it started.
    why = _unique(s.why for s in left_out if _overlaps(s.start_ns, max(s.end_ns, s.start_ns + 1), a, b))
    return ExportGap(a, b, "; ".join(why) if why else UNKNOWN_REASON, "segments")


def _unique(items: Any) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
