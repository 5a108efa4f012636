"""Chain heads: each camera's newest segment (sequence, digest, start), as the daemon publishes them in its
status and retained MQTT status, and as an operator gives them back to ``edgerec verify --head``. Pure.

A hash chain alone cannot show that its newest segments were removed: the shortened chain is still a
chain. A head recorded off the device earlier (``CAMERA=SEQUENCE:SHA256``) can: the segment with that
sequence must still be there with that digest, or its removal must be in the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .inputcheck import text_problem

_HEAD_RE = re.compile(r"([^=\s]{1,64})=([0-9]{1,18}):([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class ChainHead:
    """A camera's chain head: the sequence number and digest (hex SHA-256) of its newest segment."""

    camera: str
    sequence: int
    digest: str
    start: str | None = None  # RFC 3339 start of that segment, when known (the status says it)

    def __str__(self) -> str:
        return f"{self.camera}={self.sequence}:{self.digest}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "digest": self.digest, "start": self.start}


def status_heads(heads: Iterable[ChainHead]) -> dict[str, dict[str, Any]]:
    """The status document's ``chain_heads``: camera → {sequence, digest, start}."""
    return {h.camera: h.to_json_dict() for h in sorted(heads, key=lambda h: h.camera)}


def parse_chain_head(text: str) -> ChainHead:
    """``CAMERA=SEQUENCE:SHA256`` → ChainHead; ValueError saying what is wrong."""
    match = _HEAD_RE.fullmatch(text.strip())
    if match is None or text_problem(match.group(1)) is not None:
        raise ValueError("expected CAMERA=SEQUENCE:SHA256, a camera name, its newest segment's sequence "
                         "number and the 64 hex digits of its digest, as the status's chain_heads shows them")
    return ChainHead(match.group(1), int(match.group(2)), match.group(3).lower())


def heads_from_status(status: Mapping[str, Any]) -> list[ChainHead]:
    """The chain heads of a status document (the status file, or the retained MQTT status saved to a
    file); ValueError when it has none or they are malformed."""
    heads = status.get("chain_heads")
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError("the status document has no chain_heads")
    out = []
    for camera, head in heads.items():
        if not isinstance(head, Mapping):
            raise ValueError(f"chain_heads[{camera!r}] is not an object")
        out.append(parse_chain_head(f"{camera}={head.get('sequence')}:{head.get('digest')}"))
    return out


def parse_heads_file(text: str) -> list[ChainHead]:
    """The heads in a file: a status document (JSON with ``chain_heads``), or ``CAMERA=SEQ:SHA256`` lines
    (blank lines and ``#`` comments ignored). ValueError naming the bad line."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            status = json.loads(stripped)
        except ValueError:
            raise ValueError("not valid JSON (a status document was expected)") from None
        if not isinstance(status, Mapping):
            raise ValueError("not a status document")
        return heads_from_status(status)
    heads = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            heads.append(parse_chain_head(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if not heads:
        raise ValueError("no chain heads in the file")
    return heads
