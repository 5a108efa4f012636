"""Where a camera's hash chain goes on when a recorder starts with nothing handed over (a daemon start, a
camera added): after the newest segment the camera ever sealed, whether it is still here or not.

A camera's sequence numbers only go up, and each segment links to the digest of the one before it, even
when retention (or start-up repair) has since removed that one. The catalog alone cannot say where that
is: it forgets a segment when the segment goes (every one of a camera that was offline for longer than
its retention, or footage after an old held segment), and it is a cache that may be rebuilt from the
files or be an older copy. The audit log is the record: every line that removes catalogued segments
(``segments_deleted`` from retention and from deletions finished at start-up, ``segments_missing`` from
start-up repair) carries ``newest_removed``: per camera, the sequence number and digest of the newest
segment it removes (the status's ``chain_heads`` form without ``start``).

A segment start-up reconciliation sets aside (``segments_quarantined``: a ``.partial`` it cannot recover,
a file it cannot adopt) may be the camera's newest, and its file, in ``quarantine/``, still claims its
number. So that line carries ``newest_quarantined``: per camera, the highest sequence number it set aside
(from the file's header; a file whose header cannot be read claims none). The chain goes on past that
number too, but links to the newest segment it can link to (removed, catalogued or queued): a
quarantined file has no digest to trust (``next_link``).

A file start-up keeps in place because it cannot be read for an error of the system (EIO, EACCES, ...:
``reconcile``) is most often the camera's newest segment: a ``.partial`` left unsealed by a crash, or a
sealed segment the crash kept out of the catalog (between the seal's rename and the catalog insert); a
later start recovers or adopts it under its number. So the chain goes on past it too (``past_kept``),
exactly as a recorder goes on past an unsealed segment it gives up: the next segment takes the number
after it and still links to the newest segment it can link to; chain walks explain that link as
``segfile.LINK_PAST``.

``RemovedHeads`` reads those fields from the log (the whole log once per process, then only what was
appended; only the fields themselves are decoded, not the line's list of paths) and keeps each camera's
highest; the daemon goes on from the newest of that, the camera's newest catalogued segment and its
newest segment still on its way into the catalog (``newest``). Design: docs/design/storage.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .audit import AppendedLines
from .chainheads import ChainHead, heads_from_status

NEWEST_REMOVED = "newest_removed"
NEWEST_QUARANTINED = "newest_quarantined"
_REMOVED_MARK = b'"' + NEWEST_REMOVED.encode() + b'":'
_QUARANTINED_MARK = b'"' + NEWEST_QUARANTINED.encode() + b'":'
_decoder = json.JSONDecoder()
# The catalog keeps sequence numbers as SQLite integers (signed 64-bit): a chain cannot go on past this.
SEQUENCE_LIMIT = 2**63 - 1


def newest_removed(segments: Iterable[tuple[str, int, str | None]]) -> dict[str, dict[str, Any]]:
    """The ``newest_removed`` field of a line removing ``segments`` (camera, sequence, digest hex; a
    segment whose digest is unknown is left out): per camera, the highest sequence and its digest."""
    best: dict[str, ChainHead] = {}
    for camera, sequence, digest in segments:
        if digest is None:
            continue
        known = best.get(camera)
        if known is None or sequence > known.sequence:
            best[camera] = ChainHead(camera, sequence, digest)
    return {camera: {"sequence": h.sequence, "digest": h.digest} for camera, h in sorted(best.items())}


def heads_of(value: Any) -> list[ChainHead]:
    """The heads a ``newest_removed`` value names ([] when it is missing or malformed)."""
    if not isinstance(value, Mapping) or not value:
        return []
    try:
        return heads_from_status({"chain_heads": value})
    except ValueError:
        return []


def newest_quarantined(numbers: Iterable[tuple[str, int | None]]) -> dict[str, dict[str, int]]:
    """The ``newest_quarantined`` field of a line setting aside files that claim ``numbers`` (camera,
    sequence; None: the file claims none): per camera, the highest."""
    best: dict[str, int] = {}
    for camera, sequence in numbers:
        if sequence is not None and sequence > best.get(camera, -1):
            best[camera] = sequence
    return {camera: {"sequence": sequence} for camera, sequence in sorted(best.items())}


def quarantined_of(value: Any) -> dict[str, int]:
    """Camera -> sequence of a ``newest_quarantined`` value ({} when it is missing; malformed entries are
    left out)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for camera, entry in value.items():
        sequence = entry.get("sequence") if isinstance(entry, Mapping) else None
        if isinstance(camera, str) and type(sequence) is int and 0 <= sequence < SEQUENCE_LIMIT:
            out[camera] = sequence
    return out


def newest(*heads: ChainHead | None) -> ChainHead | None:
    """The head with the highest sequence number (None when there is none)."""
    return max((h for h in heads if h is not None), key=lambda h: h.sequence, default=None)


def next_link(head: ChainHead | None, quarantined: int | None) -> tuple[int, bytes]:
    """Where a chain goes on (next sequence number, prev_digest): after ``head``, the newest segment it
    links to, and after ``quarantined``, the highest number a set-aside file claims, whichever is higher;
    always linked to ``head`` (a zero digest when there is none: the camera's first segment)."""
    after = max(-1 if head is None else head.sequence, -1 if quarantined is None else quarantined)
    return after + 1, bytes(32) if head is None else bytes.fromhex(head.digest)


@dataclass(frozen=True)
class KeptFile:
    """A segment file start-up reconciliation kept in place (an error of the system kept it from being
    recovered, for a ``.partial``, or adopted, for a sealed segment the catalog lacks): a segment its
    camera may have begun after the newest one the catalog holds."""

    camera: str
    path: str  # relative to the data directory
    sequence: int | None  # the number its header claims (None: the header cannot be read either)
    start_ns: int | None  # the start time its name carries (None: not a segment's name)


def past_kept(next_sequence: int, kept: Iterable[KeptFile],
              newest_start_ns: int | None) -> tuple[int, list[tuple[KeptFile, int]]]:
    """Where a camera's chain goes on, from ``next_sequence``, past the files of it kept in place
    (``kept``, this camera's only; ``.partial`` or sealed, the same rule), and each file it went past with
    the number left to it. A file whose number is known is passed when that number is still ahead
    (``>= next_sequence``); one whose header cannot be read is taken for one number when its name is later
    than the start of the camera's newest segment here (``newest_start_ns``; None: there is none). Files
    older than the chain's head change nothing: their numbers are behind it. Taken in name order, so that
    each file whose number is unknown takes the number after the file before it."""
    passed: list[tuple[KeptFile, int]] = []
    for file in sorted(kept, key=lambda k: (k.start_ns is None, k.start_ns or 0, k.path)):
        if file.sequence is not None:
            if file.sequence < next_sequence:
                continue
            number = file.sequence
        elif newest_start_ns is None or (file.start_ns is not None and file.start_ns > newest_start_ns):
            number = next_sequence
        else:
            continue
        passed.append((file, number))
        next_sequence = number + 1
    return next_sequence, passed


def _field(raw: bytes, mark: bytes) -> Any:
    """The value of the line's field whose key is ``mark`` (None when it has none). Only the field is
    decoded. The mark cannot occur inside a JSON string (a quote there is escaped), so it is the line's
    own key."""
    at = raw.find(mark)
    if at < 0:
        return None
    try:
        value, _ = _decoder.raw_decode(raw[at + len(mark):].decode("utf-8", "replace"))
    except ValueError:
        return None
    return value


@dataclass
class RemovedHeads(AppendedLines):
    """Each camera's newest removed segment, and the highest number a segment set aside at start-up
    claims, as the audit log records them (``refresh`` reads what was appended). What it has seen is
    kept when the log is read again from the start (replaced or rolled back under a running daemon): a
    chain never goes back."""

    heads: dict[str, ChainHead] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)

    def _take_line(self, raw: bytes) -> None:
        for head in heads_of(_field(raw, _REMOVED_MARK)):
            known = self.heads.get(head.camera)
            if known is None or head.sequence > known.sequence:
                self.heads[head.camera] = head
        for camera, sequence in quarantined_of(_field(raw, _QUARANTINED_MARK)).items():
            if sequence > self.quarantined.get(camera, -1):
                self.quarantined[camera] = sequence

    def get(self, camera: str) -> ChainHead | None:
        return self.heads.get(camera)

    def quarantined_up_to(self, camera: str) -> int | None:
        """The highest sequence number a set-aside file of ``camera`` claims (None: none)."""
        return self.quarantined.get(camera)
