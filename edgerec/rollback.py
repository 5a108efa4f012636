"""Rollback detection: a data directory put back to an older copy (to undo an incident, a deletion's
record, anything the audit log says) shows as an audit log *behind* a head the daemon published earlier.

The daemon remembers the last audit head and chain heads it published in
``<data_dir>/published-heads.json`` (0600, replaced atomically; outside the catalog) and, with MQTT,
reads its own retained status back from the broker at start-up (``mqtt.read_retained``). If the log has
fewer lines than such a head, or another line at that number, or a camera's chain ends before the chain
head published for it (its newest segments gone, the whole directory older), the start raises
``rollback_suspected`` (log error, status, MQTT event, audit line) and recording goes on. A copy that
includes the heads file is older too: the broker's retained status (off the device) is the anchor that a
copy of the whole directory cannot roll back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditHead, line_hash
from .chainheads import ChainHead
from .fsutil import create_private, fsync_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Behind:
    """A head seen earlier (``remembered``, from ``source``: ``heads_file`` or ``mqtt``) that the data
    directory no longer reaches; ``found``: its head now; ``problem``: how it differs."""

    source: str
    remembered: AuditHead | ChainHead
    found: AuditHead | ChainHead
    problem: str

    def to_json_dict(self) -> dict[str, Any]:
        return {"source": self.source, "remembered": str(self.remembered), "found": str(self.found),
                "problem": self.problem}


class Rollback(_Behind):
    """The audit log is behind a head published earlier."""

    @property
    def message(self) -> str:
        return (f"rollback suspected: the audit log is behind the head published earlier "
                f"({self.source}: {self.remembered}); {self.problem}. The data directory may have been "
                "replaced by an older copy: compare it with a backup and `edgerec audit verify --head "
                f"{self.remembered}`")


class ChainRollback(_Behind):
    """A camera's chain is behind the chain head published for it earlier."""

    remembered: ChainHead

    @property
    def message(self) -> str:
        return (f"rollback suspected: camera {self.remembered.camera}'s chain is behind the head published "
                f"earlier ({self.source}: {self.remembered}); {self.problem}. Its newest segments are gone "
                f"or the data directory is an older copy: `edgerec verify --head {self.remembered}` says "
                "whether the audit log records their removal")


def chains_behind(remembered: Iterable[ChainHead], current: Mapping[str, ChainHead],
                  source: str) -> ChainRollback | None:
    """Pure: the first camera whose newest segment now (``current``) comes before the head published for
    it earlier, or is another segment at that sequence. Cameras with no footage now are not judged
    (retention may have deleted all of a removed camera's)."""
    for head in sorted(remembered, key=lambda h: h.camera):
        now = current.get(head.camera)
        if now is None:
            continue
        if now.sequence < head.sequence:
            return ChainRollback(source, head, now, f"its newest segment is sequence {now.sequence}, before "
                                                    f"the {head.sequence} published")
        if now.sequence == head.sequence and now.digest != head.digest:
            return ChainRollback(source, head, now, f"sequence {head.sequence} is another segment "
                                                    f"(SHA-256 {now.digest})")
    return None


def compare_heads(remembered: AuditHead, lines: int, hash_at: str | None) -> str | None:
    """Pure: why a log of ``lines`` lines whose line number ``remembered.lines`` hashes to ``hash_at``
    (None: no such line) is behind ``remembered``; None when it still has that line at its place."""
    if remembered.lines == 0:
        return None
    if lines < remembered.lines:
        return f"the log has {lines} lines, fewer than the {remembered.lines} published"
    if hash_at != remembered.sha256:
        return f"line {remembered.lines} is not the line published (SHA-256 {hash_at})"
    return None


def check_log(path: Path, remembered: AuditHead, source: str) -> Rollback | None:
    """Read the audit log at ``path`` once and compare it with ``remembered``."""
    lines, hash_at, last = 0, None, None
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn: not a line
                lines += 1
                last = raw[:-1]
                if lines == remembered.lines:
                    hash_at = line_hash(last)
    except FileNotFoundError:
        pass
    problem = compare_heads(remembered, lines, hash_at)
    if problem is None:
        return None
    found = AuditHead(lines, line_hash(last)) if last is not None else AuditHead(0, "0" * 64)
    return Rollback(source, remembered, found, problem)


def head_from_json(obj: Any) -> AuditHead | None:
    """``{"lines": N, "sha256": HEX}`` (as status and the heads file carry it) → AuditHead, or None."""
    if not isinstance(obj, dict):
        return None
    lines, sha = obj.get("lines"), obj.get("sha256")
    if (isinstance(lines, int) and not isinstance(lines, bool) and lines >= 0 and isinstance(sha, str)
            and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return AuditHead(lines, sha)
    return None


@dataclass(frozen=True)
class Published:
    """What the heads file remembers: the audit head and each camera's chain head last published."""

    audit_head: AuditHead | None
    chain_heads: tuple[ChainHead, ...] = ()


def chain_heads_from_json(obj: Any) -> tuple[ChainHead, ...]:
    """A status's (or the heads file's) ``chain_heads`` → ChainHeads; what is malformed is left out."""
    from .chainheads import heads_from_status

    try:
        return tuple(heads_from_status({"chain_heads": obj}))
    except ValueError:
        return ()


def load_published(path: Path) -> Published | None:
    """The heads file (None: no file, or not readable as one: logged)."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("published heads not read path=%s error=%s", path, exc)
        return None
    if not isinstance(obj, dict):
        log.warning("published heads file is not an object path=%s", path)
        return None
    head = head_from_json(obj.get("audit_head"))
    if head is None:
        log.warning("published heads file has no audit head path=%s", path)
    return Published(head, chain_heads_from_json(obj.get("chain_heads")))


def save_published(path: Path, published: Published) -> None:
    """Replace the heads file (0600) durably: it must outlive a power cut to be worth it."""
    from .chainheads import status_heads

    doc = {"audit_head": published.audit_head.to_json_dict() if published.audit_head else None,
           "chain_heads": status_heads(published.chain_heads)}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = create_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.write(fd, json.dumps(doc).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent, strict=False)
