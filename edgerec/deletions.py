"""What the audit log says was removed from each camera's chain, and whether that explains a segment that
is missing. Pure: ``removal_record`` takes the parsed audit lines.

The rule (``edgerec verify``): a segment missing from a camera's chain, in the middle, at the start or at
the newest end, is a problem unless the audit log records its removal:

- ``segments_deleted`` (retention, an interrupted deletion finished at start-up) names every file, and
  since this version its sequence numbers (``sequences``); a ``segments_spared`` line after it takes
  those files back (they were not deleted);
- ``segments_quarantined`` and ``partials_removed`` (start-up reconciliation) name damaged or empty
  files set aside or removed;
- ``segments_missing`` is *not* a removal: it says that start-up found a catalogued file gone, which is
  exactly what the rule reports.

A missing sequence number is explained by a line naming that sequence; lines that name only paths (older
logs, reconciliation) explain holes by count: a hole of k segments between two present segments is
explained when the log names at least k removed files of that camera whose names (start times) lie
between those two segments' names.

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


def unexplained(hole: Hole, removals: CameraRemovals | None, name_times: list[int]) -> list[int]:
    """The sequences of ``hole`` the record does not explain ([] when all are explained). ``name_times``:
    ``removals.name_times(present)``, computed once per camera."""
    if removals is None:
        return list(range(hole.first, hole.last + 1))
    left = [s for s in range(hole.first, hole.last + 1) if s not in removals.sequences]
    if not left:
        return []
    lo = 0 if hole.after_ns is None else bisect.bisect_right(name_times, hole.after_ns)
    hi = len(name_times) if hole.before_ns is None else bisect.bisect_left(name_times, hole.before_ns)
    by_path = max(0, hi - lo)
    return [] if by_path >= len(left) else left[by_path:]


def describe(sequences: list[int]) -> str:
    """``5``, ``5..9`` or ``5..9 (3 of them)`` for a list of sequence numbers."""
    if len(sequences) == 1:
        return str(sequences[0])
    contiguous = sequences[-1] - sequences[0] + 1 == len(sequences)
    span = f"{sequences[0]}..{sequences[-1]}"
    return span if contiguous else f"{span} ({len(sequences)} of them)"
