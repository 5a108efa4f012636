"""The audit log: an append-only file of JSON lines, each carrying the SHA-256 of the line before it.

Who held what and why, every deletion, export, configuration change, clock jump and tamper alarm is
appended here (``<data_dir>/audit.log``). A line is::

    {"n": 7, "ts": "2026-11-20T09:55:00.123Z", "event": "incident_opened", ...fields, "prev": "<hex>"}

``n`` counts lines from 1; ``prev`` is the SHA-256 (hex) of the previous line's bytes without its newline
(64 zeros on the first line). Removing, inserting or editing a line breaks the chain at that point, and
``verify_audit`` names the line. Rewriting the whole tail from some line on (or editing the last line)
cannot be detected from the file alone: the head (``AuditLog.head``: the number of lines and the hash of
the last one) is published in the daemon's status, and ``verify_audit(path, expected_head)`` checks that
a head seen earlier is still in the log at its place.

Each append is fsynced: the events are rare and each one is a promise. A line torn by a power cut (no
final newline) was never acknowledged; it is cut off at the next append, or at daemon start-up by
``AuditLog.repair_tail`` (so ``edgerec audit verify`` does not report a power cut as tampering), and the
cut is itself recorded as an ``audit_torn_tail`` line (``bytes``, ``sha256`` of what was cut, and
``line``: the number the cut line would have had, which the repair line takes). ``verify_audit`` lists
every such repair (``AuditVerifyResult.repairs``), so a cut is never silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .fsutil import create_private, fsync_dir
from .redact import redact_obj
from .timefmt import rfc3339

log = logging.getLogger(__name__)

GENESIS_PREV = "0" * 64
TORN_TAIL_EVENT = "audit_torn_tail"
_TAIL_READ_BYTES = 1 << 16
_HEAD_RE = re.compile(r"([0-9]+):([0-9a-fA-F]{64})")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def encode_line(n: int, ts: str, event: str, fields: dict[str, Any], prev: str) -> bytes:
    """The bytes of one audit line (without the newline)."""
    obj: dict[str, Any] = {"n": n, "ts": ts, "event": event}
    for key, value in fields.items():
        if key in ("n", "ts", "event", "prev"):
            raise ValueError(f"audit field name {key!r} is reserved")
        obj[key] = value
    obj["prev"] = prev
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, default=str).encode("ascii")


@dataclass(frozen=True)
class AuditHead:
    """The head of the chain: the number of lines and the SHA-256 (hex) of the last one (what the next
    line chains on). Written ``LINES:SHA256``; an empty log's head is ``0:000...0``."""

    lines: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.lines}:{self.sha256}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "sha256": self.sha256}


EMPTY_HEAD = AuditHead(0, GENESIS_PREV)


def parse_head(text: str) -> AuditHead:
    """``LINES:SHA256`` (as the status shows the head) → AuditHead; ValueError saying what is wrong."""
    match = _HEAD_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected LINES:SHA256, the number of lines and the 64 hex digits of the last "
                         "line's SHA-256, as the status's audit_head shows them")
    head = AuditHead(int(match.group(1)), match.group(2).lower())
    if head.lines == 0:
        raise ValueError("the head of an empty log (0 lines) anchors nothing")
    return head


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever the file's content does (ctime cannot be set back by anybody)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_last_line(f: BinaryIO, size: int) -> bytes:
    """The last complete line of a file whose size is ``size`` and which ends with a newline."""
    start = size
    chunk = b""
    while start > 0:
        step = min(_TAIL_READ_BYTES, start)
        start -= step
        f.seek(start)
        chunk = f.read(step) + chunk
        body = chunk[:-1]
        cut = body.rfind(b"\n")
        if cut >= 0:
            return body[cut + 1 :]
    return chunk[:-1]


def tail_entries(path: Path | str, max_bytes: int = _TAIL_READ_BYTES) -> list[dict[str, Any]]:
    """The parsed complete lines in the last ``max_bytes`` of the log (oldest first; [] when there is no
    log). For start-up checks of the most recent events, without reading a log of years."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return []
    raw_lines = data.split(b"\n")
    raw_lines.pop()  # after the last newline: empty, or a torn line
    if start > 0 and raw_lines:
        raw_lines.pop(0)  # the read began inside this line
    return [obj for obj in map(_parse, raw_lines) if obj is not None]


_FOLLOW_READ_BYTES = 1 << 20


@dataclass
class AppendedLines:
    """A reader of an audit log that reads only what was appended since it last looked, keyed by the head
    it read up to: the byte offset, the line count and the hash of the last line it read. A log that no
    longer has that line there (replaced, rolled back, cut) is read again from the start. Subclasses say
    what a line is to them (``_take_line``) and what to forget when the log is read again (``_reset``)."""

    path: Path
    offset: int = 0  # bytes read (whole lines)
    lines: int = 0
    last_hash: str | None = None  # of the last line read
    full_reads: int = 0  # how often the whole log was read (for tests and the performance notes)

    def _take_line(self, raw: bytes) -> None:
        """One complete line (without its newline), in order."""

    def _reset(self) -> None:
        """The log is read again from the start: forget what depends on its lines."""

    def _restart(self) -> None:
        self.offset, self.lines, self.last_hash = 0, 0, None
        self._reset()

    def refresh(self) -> None:
        """Read the lines appended since the last call (all of them the first time, or when the log no
        longer has the last line read at its place). A torn last line is left for later."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 (closed by the with below; a missing log is no log)
        except FileNotFoundError:
            self._restart()
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if self.offset and (size < self.offset or self.last_hash is None
                                or line_hash(_read_last_line(f, self.offset)) != self.last_hash):
                log.warning("audit log changed other than by appending; reading it again path=%s", self.path)
                self._restart()
            if self.offset == 0:
                self.full_reads += 1
            f.seek(self.offset)
            rest = b""
            while True:
                chunk = f.read(_FOLLOW_READ_BYTES)
                if not chunk:
                    break
                data = rest + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                for raw in data[:cut].split(b"\n"):
                    self.lines += 1
                    self.last_hash = line_hash(raw)
                    self._take_line(raw)
                self.offset += cut + 1
                rest = data[cut + 1 :]


AuditEntry = tuple[str, dict[str, Any]]  # (event, fields) of one line to append


class AuditSink(Protocol):
    """What a writer of audit lines needs (``AuditLog`` is one)."""

    def append(self, event: str, **fields: Any) -> None: ...

    def append_many(self, entries: Sequence[AuditEntry]) -> None: ...


class AuditLog:
    """Appends hash-chained lines to an audit file; safe to share between threads.

    The file is opened per append (append mode), so several processes (the daemon and the CLI) can
    write the same log; the chain head is re-read under an exclusive ``flock`` before each append.
    """

    def __init__(self, path: Path | str, *, clock_ns: Callable[[], int] = time.time_ns):
        self.path = Path(path)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        # The head and the file's stamp (_stamp) when it was taken, one tuple replaced whole (read
        # without the lock): this process's appends keep it current, so asking for the head every status
        # tick costs one stat, and no wait behind an append's fsync.
        self._known: tuple[AuditHead, tuple[int, int, int, int] | None] | None = None

    def head(self) -> AuditHead:
        """The head of the chain (lines, hash of the last complete line): published in the daemon's
        status, it anchors the chain elsewhere (``verify_audit(path, expected_head)``).

        The file is read only the first time and when its stat shows that someone else wrote it (the
        CLI appends too). A head that went back (fewer lines, or the same number with another last
        line) was not made by appending: that is logged as an error."""
        known = self._known
        try:
            stamp = _stamp(os.stat(self.path))
        except FileNotFoundError:
            stamp = None
        except OSError as exc:  # keep the last known head; the next tick tries again
            log.debug("audit log not stat-able path=%s error=%s", self.path, exc)
            return known[0] if known is not None else EMPTY_HEAD
        if known is not None and known[1] == stamp:
            return known[0]
        with self._lock:  # changed: an append of ours is finishing (wait for it), or someone else wrote
            self._refresh_head()
            return self._known[0] if self._known is not None else EMPTY_HEAD

    def _refresh_head(self) -> None:
        """Read the head again if the file changed since it was known (caller holds self._lock). No
        flock: a line being appended meanwhile reads as torn (left out) and changes the stamp again."""
        previous = self._known[0] if self._known is not None else None
        try:
            with open(self.path, "rb") as f:
                stamp = _stamp(os.fstat(f.fileno()))
                if self._known is not None and self._known[1] == stamp:
                    return
                n, prev, _torn = self._tail_state(f)
            head = AuditHead(n, prev)
        except FileNotFoundError:
            stamp, head = None, EMPTY_HEAD
        except OSError as exc:
            log.warning("audit log head not read path=%s error=%s", self.path, exc)
            return
        if previous is not None and (head.lines < previous.lines
                                     or (head.lines == previous.lines and head != previous)):
            log.error("audit log changed other than by appending path=%s head_was=%s head_now=%s",
                      self.path, previous, head)
        self._known = (head, stamp)

    def _remember_head(self, fd: int, n: int, prev: str) -> None:
        """After this process wrote the log (caller holds self._lock): the new head, without a read."""
        try:
            stamp: tuple[int, int, int, int] | None = _stamp(os.fstat(fd))
        except OSError:
            stamp = None  # read again next time
        self._known = (AuditHead(n, prev), stamp)

    def append(self, event: str, **fields: Any) -> None:
        """Append one event and fsync it; raises OSError when the disk refuses."""
        self.append_many([(event, fields)])

    def append_many(self, entries: Sequence[AuditEntry]) -> None:
        """Append several events (``(event, fields)``) with one write and one fsync: a retention sweep
        names all its deletions before the first one, without an fsync per line. On an error none of
        them counts as written (a torn tail is cut at the next append)."""
        if not entries:
            return
        with self._locked_tail() as (f, fd, n, prev, torn):
            if torn is not None:
                n, prev = self._cut_torn_tail(f, fd, n, prev, torn)
            ts = rfc3339(self._clock_ns())
            lines = []
            for event, fields in entries:
                n += 1
                # Redacted before hashing: a credential in a chained line could never be removed.
                line = encode_line(n, ts, event, redact_obj(fields), prev)
                prev = line_hash(line)
                lines.append(line)
            f.flush()
            _write_at_end(fd, f.seek(0, os.SEEK_END), b"\n".join(lines) + b"\n")
            self._remember_head(fd, n, prev)

    def repair_tail(self) -> int:
        """Cut a line torn by a power cut (no final newline) and record the cut as ``audit_torn_tail``,
        as the next append would; returns the number of bytes cut (0: the tail was whole, or no log yet).
        The daemon calls it at start-up, so that the log verifies before anything else is appended."""
        if not self.path.exists():
            return 0
        with self._locked_tail() as (f, fd, n, prev, torn):
            if torn is None:
                return 0
            n, prev = self._cut_torn_tail(f, fd, n, prev, torn)  # flushes its line
            os.fsync(fd)
            self._remember_head(fd, n, prev)
            return len(torn)

    @contextmanager
    def _locked_tail(self) -> Iterator[tuple[BinaryIO, int, int, str, bytes | None]]:
        """The log opened read-write under this process's lock and an exclusive ``flock`` (other
        processes append too), with its tail state: (file, fd, lines, hash of the last line, torn tail)."""
        with self._lock:
            import fcntl  # here, not at the top: the officer's tools import this module on any OS

            fd = self._open_rw()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                with open(fd, "r+b", closefd=False) as f:
                    yield (f, fd, *self._tail_state(f))
            finally:
                os.close(fd)  # also releases the flock

    def _open_rw(self) -> int:
        existed = self.path.exists()
        fd = create_private(self.path, os.O_RDWR | os.O_CREAT)
        if not existed:
            # strict: a new log's first line is a promise; its directory entry must be durable too.
            try:
                fsync_dir(self.path.parent, strict=True)
            except OSError:
                os.close(fd)
                raise
        return fd

    @staticmethod
    def _tail_state(f: Any) -> tuple[int, str, bytes | None]:
        """(n of the last complete line, its hash, torn tail bytes or None)."""
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0, GENESIS_PREV, None
        f.seek(size - 1)
        torn: bytes | None = None
        if f.read(1) != b"\n":
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1
            torn = data[cut:]
            size = cut
            if size == 0:
                return 0, GENESIS_PREV, torn
        last = _read_last_line(f, size)
        try:
            n = int(json.loads(last)["n"])
        except (ValueError, KeyError, TypeError):
            n = 0  # a damaged last line: keep chaining; verify_audit reports it
        return n, line_hash(last), torn

    def _cut_torn_tail(self, f: Any, fd: int, n: int, prev: str, torn: bytes) -> tuple[int, str]:
        size = f.seek(0, os.SEEK_END)
        f.truncate(size - len(torn))
        log.warning("audit log torn tail cut path=%s bytes=%d", self.path, len(torn))
        line = encode_line(n + 1, rfc3339(self._clock_ns()), TORN_TAIL_EVENT,
                           {"bytes": len(torn), "sha256": line_hash(torn), "line": n + 1}, prev)
        f.seek(0, os.SEEK_END)
        f.write(line + b"\n")
        f.flush()
        return n + 1, line_hash(line)


def _write_at_end(fd: int, size: int, data: bytes) -> None:
    """Write ``data`` at offset ``size`` and fsync; on failure cut what was written, so that a full disk
    leaves no torn tail (and when even that fails, the next append cuts it)."""
    view = memoryview(data)
    offset = size
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise



@dataclass(frozen=True)
class AuditVerifyResult:
    """The outcome of checking an audit log. ``line`` is the 1-based number of the first broken line."""

    ok: bool
    lines: int
    line: int | None = None
    problem: str | None = None
    head_line: int | None = None  # the line an expected head was found at
    repairs: tuple[str, ...] = ()  # the torn tails cut at start-up or append, one sentence each

    @property
    def message(self) -> str:
        if self.ok:
            anchored = "" if self.head_line is None else f", line {self.head_line} is the expected head"
            return f"audit log OK: {self.lines} lines, hash chain intact{anchored}"
        return f"audit log BROKEN at line {self.line}: {self.problem}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "line": self.line, "problem": self.problem,
                "head_line": self.head_line, "repairs": list(self.repairs)}


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("prev"), str) or not isinstance(obj.get("n"), int):
        return None
    return obj


def verify_audit(path: Path | str, expected_head: AuditHead | None = None) -> AuditVerifyResult:
    """Check every line's JSON, sequence number and hash link; name the first broken line and why.
    With ``expected_head`` (a head published earlier), also check that the log still has that line at
    that place: the chain alone cannot show a tail rewritten consistently, or cut off.
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    raw_lines = data.split(b"\n") if data else [b""]
    if raw_lines[-1] != b"":
        return AuditVerifyResult(False, len(raw_lines), len(raw_lines),
                                 "last line is incomplete (torn write; cut at the next append)")
    raw_lines.pop()
    repairs = tuple(_repairs(raw_lines))
    result = _verify_chain(raw_lines)
    if result.ok and expected_head is not None:
        result = check_head(raw_lines, expected_head)
    return replace(result, repairs=repairs)


def _repairs(raw_lines: Sequence[bytes]) -> Iterator[str]:
    """One sentence per ``audit_torn_tail`` line: what a repair cut, so that ``audit verify`` shows it."""
    mark = b'"event":"' + TORN_TAIL_EVENT.encode() + b'"'
    for number, raw in enumerate(raw_lines, 1):
        if mark not in raw:
            continue
        obj = _parse(raw) or {}
        yield (f"line {number}: torn tail repaired at {obj.get('ts')}: cut {obj.get('bytes')} bytes "
               f"(SHA-256 {obj.get('sha256')}) that would have been line {obj.get('line', number)}")


def check_head(raw_lines: Sequence[bytes], head: AuditHead) -> AuditVerifyResult:
    """Whether line ``head.lines`` of a log (its lines without newlines) is the line ``head`` names."""
    total = len(raw_lines)
    if head.lines > total:
        return AuditVerifyResult(False, total, total + 1,
                                 f"the log ends at line {total}, before the expected head {head.lines}: "
                                 "lines were removed from the end (or the log replaced)")
    actual = line_hash(raw_lines[head.lines - 1])
    if actual != head.sha256:
        return AuditVerifyResult(False, total, head.lines,
                                 f"not the expected head (SHA-256 {actual}, expected {head.sha256}): the "
                                 "log was rewritten from this line or an earlier one")
    return AuditVerifyResult(True, total, head_line=head.lines)


def _verify_chain(raw_lines: Sequence[bytes]) -> AuditVerifyResult:
    """The chain check of ``verify_audit`` over the lines of a log (without newlines).

    How a break is told apart: a line whose ``prev`` matches the line two back means the line between
    was inserted; a jump in ``n`` means lines were removed; otherwise the line before the break was
    edited.
    """
    hashes = [line_hash(raw) for raw in raw_lines]
    for i, raw in enumerate(raw_lines):
        number = i + 1
        obj = _parse(raw)
        if obj is None:
            return AuditVerifyResult(False, len(raw_lines), number,
                                     "not a valid audit entry (JSON object with n and prev)")
        expected_prev = hashes[i - 1] if i > 0 else GENESIS_PREV
        expected_n = (_parse(raw_lines[i - 1]) or {}).get("n", 0) + 1 if i > 0 else 1
        if obj["prev"] == expected_prev and obj["n"] == expected_n:
            continue
        if i >= 2 and obj["prev"] == hashes[i - 2]:
            return AuditVerifyResult(False, len(raw_lines), number - 1,
                                     "line was inserted (the next line chains to the one before it)")
        if i >= 1 and obj["prev"] == expected_prev:
            # Hash link intact but the numbering is off: the line before was inserted with a forged
            # number, or this line's own number was edited.
            return AuditVerifyResult(False, len(raw_lines), number,
                                     f"sequence number {obj['n']} where {expected_n} was expected")
        if obj["n"] > expected_n:
            missing = obj["n"] - expected_n
            return AuditVerifyResult(False, len(raw_lines), number,
                                     f"{missing} line(s) removed before this line "
                                     f"(entries {expected_n}..{obj['n'] - 1} are missing)")
        if i == 0:
            return AuditVerifyResult(False, len(raw_lines), number,
                                     "first line does not start the chain (edited, or lines removed)")
        if obj["n"] < expected_n:
            return AuditVerifyResult(False, len(raw_lines), number,
                                     f"line was inserted (sequence number {obj['n']} repeats)")
        if i + 1 < len(raw_lines) and (_parse(raw_lines[i + 1]) or {}).get("prev") == hashes[i - 1]:
            return AuditVerifyResult(False, len(raw_lines), number,
                                     "line was inserted (the next line chains to the one before it)")
        return AuditVerifyResult(False, len(raw_lines), number - 1,
                                 "line was edited (its hash no longer matches the next line's prev)")
    return AuditVerifyResult(True, len(raw_lines))
