"""What the audit log says was removed from each camera's chain, and whether that explains a segment that
is missing. Pure: ``removal_record`` takes the parsed audit lines.

The rule (``edgerec verify``): a segment missing from a camera's chain, in the middle, at the start or at
the newest end, is a problem unless the audit log records its removal:

- ``segments_deleted`` (retention, an interrupted deletion finished at start-up) names every file, and
  since this version its sequence numbers (``sequences``); a ``segments_spared`` line after it takes
  those files back (they were not deleted);
- ``segments_quarantined`` and ``partials_removed`` (start-up reconciliation) name damaged or empty
  files set aside or removed; ``segments_quarantined`` names the sequence number each file claims
  (``sequences``, null for a file whose header cannot be read) since this version;
- ``segments_missing`` is *not* a removal: it says that start-up found a catalogued file gone, which is
  exactly what the rule reports.

A missing sequence number is explained by a line naming that sequence; lines that name only paths (older
logs, reconciliation) explain holes by count: a hole of k segments between two present segments is
explained when the log names at least k removed files of that camera whose names (start times) lie
between those two segments' names. The rule is the same for every hole, whether the segment after it
links to the one before it (``skip``: the numbers in between were set aside unsealed, and the chain went
on past them) or not.

Lines that remove catalogued segments also name, per camera, the newest one's sequence and digest
(``newest_removed``, see ``chainstart``): a camera's chain goes on from it, so the segment after a removed
one links to a digest the log records (``digests``), and a number the log records removed under another
file name, found again, means the chain was started again.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .chainstart import NEWEST_REMOVED, heads_of
from .layout import PARTIAL_SUFFIX, start_ns_from_name

REMOVAL_EVENTS = frozenset({"segments_deleted", "segments_quarantined", "partials_removed"})
_PATH_FIELD = re.compile(r"path=(\S+)")  # reconciliation's items read "path=REL to=... why=..."


@dataclass
class CameraRemovals:
    """One camera's recorded removals: sequences named, and the name times of files named by path only."""

    sequences: set[int] = field(default_factory=set)
    by_path: dict[str, int | None] = field(default_factory=dict)  # path -> sequence (None: not named)
    missing_paths: set[str] = field(default_factory=set)  # found gone at start-up (segments_missing)
    # sequence -> digest (hex) of removed segments the log names with their digest (``newest_removed``)
    digests: dict[int, str] = field(default_factory=dict)
    # numbers of files set aside at start-up (quarantined): no digest to link to, the chain went on past
    set_aside: set[int] = field(default_factory=set)

    def name_times(self, present: set[str]) -> list[int]:
        """Sorted name times of the files removed by path only (not also present now)."""
        out = []
        for path, seq in self.by_path.items():
            if seq is None and path not in present:
                ns = start_ns_from_name(PurePosixPath(path.removesuffix(PARTIAL_SUFFIX)))  # type: ignore[arg-type]
                if ns is not None:
                    out.append(ns)
        return sorted(out)


def _item_path(item: Any) -> str | None:
    if not isinstance(item, str):
        return None
    match = _PATH_FIELD.match(item)
    return match.group(1) if match else item


def _camera_of(path: str) -> str:
    return path.split("/", 1)[0]


def removal_record(entries: Iterable[Mapping[str, Any]]) -> dict[str, CameraRemovals]:
    """Per camera, what the audit lines (oldest first) record as removed from its chain."""
    record: dict[str, CameraRemovals] = {}
    for entry in entries:
        event = entry.get("event")
        paths = entry.get("paths")
        if not isinstance(paths, list):
            continue
        if event == "segments_deleted" and entry.get("reason") == "quarantine_age":
            continue  # files in quarantine/, already set aside from the chain
        if event in REMOVAL_EVENTS or event == "segments_missing":
            for head in heads_of(entry.get(NEWEST_REMOVED)):
                record.setdefault(head.camera, CameraRemovals()).digests[head.sequence] = head.digest
        sequences = entry.get("sequences")
        if not (isinstance(sequences, list) and len(sequences) == len(paths)):
            sequences = [None] * len(paths)
        for item, seq in zip(paths, sequences, strict=True):
            path = _item_path(item)
            if path is None:
                continue
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            cam = record.setdefault(_camera_of(path), CameraRemovals())
            if event in REMOVAL_EVENTS:
                cam.by_path[path] = seq
                if seq is not None:
                    cam.sequences.add(seq)
                    if event == "segments_quarantined":
                        cam.set_aside.add(seq)
            elif event == "segments_spared":
                old = cam.by_path.pop(path, None)
                if old is not None:
                    cam.sequences.discard(old)
                if seq is not None:
                    cam.sequences.discard(seq)
            elif event == "segments_missing":
                cam.missing_paths.add(path)
    return record


@dataclass(frozen=True)
class Hole:
    """Sequence numbers missing from a camera's chain: ``first``..``last`` (inclusive), between the
    segments named ``after_ns`` and ``before_ns`` (None: the chain's start, or its newest end)."""

    first: int
    last: int
    after_ns: int | None
    before_ns: int | None

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Missing:
    """The sequence numbers of a hole nobody explains: ``count`` of them, from ``first`` to ``last``.
    Kept as a span, not a list: a hole can be as wide as a header's number says."""

    first: int
    last: int
    count: int

    def __str__(self) -> str:
        """``5``, ``5..9`` or ``5..9 (3 of them)`` (also ``5..6 (1 of them)``: one of the two, not known
        which)."""
        if self.count == 1 and self.first == self.last:
            return str(self.first)
        span = f"{self.first}..{self.last}"
        return span if self.last - self.first + 1 == self.count else f"{span} ({self.count} of them)"


def unexplained(hole: Hole, sequences: list[int], name_times: list[int]) -> Missing | None:
    """The numbers of ``hole`` the record does not explain (None when all are explained). ``sequences``:
    the camera's removed sequence numbers, sorted; ``name_times``: ``removals.name_times(present)``; both
    computed once per camera. The work is bounded by the record, not by the width of the hole."""
    lo = bisect.bisect_left(sequences, hole.first)
    named = set(sequences[lo:bisect.bisect_right(sequences, hole.last)])
    left = hole.count - len(named)
    lo = 0 if hole.after_ns is None else bisect.bisect_right(name_times, hole.after_ns)
    hi = len(name_times) if hole.before_ns is None else bisect.bisect_left(name_times, hole.before_ns)
    by_path = max(0, hi - lo)
    if by_path >= left:
        return None
    # Files named by path only explain the lowest numbers not named: the rest are unexplained.
    first, skipped = hole.first, 0
    while first in named or skipped < by_path:
        skipped += first not in named
        first += 1
    last = hole.last
    while last in named:
        last -= 1
    return Missing(first, last, left - by_path)
