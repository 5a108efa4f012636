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

``RemovedHeads`` reads those fields from the log (the whole log once per process, then only what was
appended; only the field itself is decoded, not the line's list of paths) and keeps each camera's
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
_FIELD_MARK = b'"' + NEWEST_REMOVED.encode() + b'":'
_decoder = json.JSONDecoder()


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


def newest(*heads: ChainHead | None) -> ChainHead | None:
    """The head with the highest sequence number (None when there is none)."""
    return max((h for h in heads if h is not None), key=lambda h: h.sequence, default=None)


@dataclass
class RemovedHeads(AppendedLines):
    """Each camera's newest removed segment as the audit log records it (``refresh`` reads what was
    appended). What it has seen is kept when the log is read again from the start (replaced or rolled
    back under a running daemon): a chain never goes back."""

    heads: dict[str, ChainHead] = field(default_factory=dict)

    def _take_line(self, raw: bytes) -> None:
        at = raw.find(_FIELD_MARK)
        if at < 0:
            return
        # Only the field is decoded. The mark cannot occur inside a JSON string (a quote there is
        # escaped), so this is the line's own key.
        try:
            value, _ = _decoder.raw_decode(raw[at + len(_FIELD_MARK):].decode("utf-8", "replace"))
        except ValueError:
            return
        for head in heads_of(value):
            known = self.heads.get(head.camera)
            if known is None or head.sequence > known.sequence:
                self.heads[head.camera] = head

    def get(self, camera: str) -> ChainHead | None:
        return self.heads.get(camera)
