"""Incident bundles: one tar file, made on the device, with everything an officer needs for one incident,
still encrypted and signed by the device (the format is specified in docs/bundle-format.md).

A bundle holds the incident's sealed segments (its window plus pre- and post-roll, of every camera it
covers, or fewer when narrowed), ``device.pub``, the catalog rows (incident, segments, gaps), the audit
lines that concern the incident and the log's head, and ``manifest.json`` listing every member with its
SHA-256, signed with the device key in ``manifest.sig``. No private key of the officer is needed to make
one and none leaves the device: the device key signs, it does not travel.

Against a live recorder: the catalog rows are read in one transaction (a snapshot), and each segment file
is opened and copied whole; a file deleted in between (only unheld footage is deleted) is listed as
``absent`` in the manifest, a file whose bytes differ from its catalog row is bundled as it is (its
signature and digest then fail verification on the officer's side, which is the point).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import __version__, keys
from .errors import EdgerecError, UsageError
from .layout import DataDir
from .timefmt import rfc3339

if TYPE_CHECKING:  # the officer's side reads bundles without the device's catalog and audit log
    from .audit import AuditLog
    from .catalog import Catalog, GapRow, IncidentRow, SegmentRow

log = logging.getLogger(__name__)

FORMAT = "edgerec-bundle"
FORMAT_VERSION = 1
# Signed bytes: this context, then the manifest's exact bytes (no other Ed25519 message of edgerec starts so).
SIGNATURE_CONTEXT = b"edgerec bundle manifest v1\n"
SIGNATURE_BYTES = 64
BUNDLE_MODE = 0o600

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
DEVICE_PUB_NAME = "device.pub"
CATALOG_NAME = "catalog.json"
AUDIT_LINES_NAME = "audit/lines.jsonl"
AUDIT_HEAD_NAME = "audit/head.jsonl"
SEGMENTS_PREFIX = "segments/"
# segments/<camera>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.mmmZ>.seg: the data directory's own layout.
SEGMENT_MEMBER_RE = re.compile(
    r"segments/([A-Za-z0-9][A-Za-z0-9_-]{0,63})/(\d{4}-\d{2}-\d{2})/(\d{8}T\d{6}\.\d{3}Z\.seg)")
KIND_OF = {DEVICE_PUB_NAME: "device_key", CATALOG_NAME: "catalog", AUDIT_LINES_NAME: "audit_lines",
           AUDIT_HEAD_NAME: "audit_head"}
COPY_BLOCK_BYTES = 1 << 20
INCIDENT_IDS_LISTED = 20


class BundleError(EdgerecError):
    """A bundle cannot be made, or a file is not a usable bundle."""


# ----- pure parts: names, selection, manifest ------------------------------------------------------
def segment_member(rel_path: str) -> str:
    """The member name of a segment, from its path relative to the data directory."""
    return SEGMENTS_PREFIX + rel_path


def member_kind(name: str) -> str | None:
    if name in KIND_OF:
        return KIND_OF[name]
    return "segment" if SEGMENT_MEMBER_RE.fullmatch(name) else None


def segment_camera(name: str) -> str:
    match = SEGMENT_MEMBER_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"not a segment member name: {name!r}")
    return match.group(1)


@dataclass(frozen=True)
class Selection:
    """What a bundle holds: an incident's footage of ``cameras`` (None: all it covers) in [from_ns, to_ns]."""

    incident_id: str
    cameras: tuple[str, ...] | None
    from_ns: int
    to_ns: int
    narrowed: bool = False

    def covers(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def to_json_dict(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras) if self.cameras is not None else "*",
                "from": rfc3339(self.from_ns), "to": rfc3339(self.to_ns), "from_ns": self.from_ns,
                "to_ns": self.to_ns, "narrowed": self.narrowed}


def plan_selection(incident: IncidentRow, now_ns: int, *, camera: str | None = None,
                   from_ns: int | None = None, to_ns: int | None = None,
                   known_cameras: Iterable[str] = ()) -> Selection:
    """The footage to bundle: the incident's held window (window plus rolls; an open-ended incident up to
    ``now_ns``), narrowed by ``camera`` and ``from_ns``/``to_ns``; UsageError when the narrowing leaves
    nothing or names a camera the incident does not cover."""
    start = incident.hold_start_ns
    end = incident.hold_end_ns if incident.hold_end_ns is not None else now_ns
    cameras: tuple[str, ...] | None = None if incident.camera == "*" else (incident.camera,)
    if camera is not None:
        if incident.camera != "*" and camera != incident.camera:
            raise UsageError(f"--camera {camera}: incident {incident.id} covers camera "
                             f"{incident.camera} only")
        known = sorted(set(known_cameras))
        if incident.camera == "*" and camera not in known:
            raise UsageError(f"--camera {camera}: no such camera (cameras: {', '.join(known) or 'none'})")
        cameras = (camera,)
    lo = start if from_ns is None else max(start, from_ns)
    hi = end if to_ns is None else min(end, to_ns)
    if hi <= lo:
        raise UsageError(f"--from/--to leave nothing of incident {incident.id}'s held footage "
                         f"({rfc3339(start)} .. {rfc3339(end)})")
    narrowed = camera is not None or lo != start or hi != end
    return Selection(incident.id, cameras, lo, hi, narrowed)


def unknown_incident_message(incident_id: str, existing: Sequence[str]) -> str:
    if not existing:
        return f"no incident {incident_id!r}: there are no incidents on this device"
    shown = list(existing)[-INCIDENT_IDS_LISTED:]
    more = f" (the latest {len(shown)} of {len(existing)})" if len(existing) > len(shown) else ""
    return f"no incident {incident_id!r}; incidents{more}: {', '.join(shown)}"


def concerns(entry: dict[str, Any], selection: Selection, paths: set[str]) -> bool:
    """Does an audit entry concern the bundled incident: its own lines, or deletions and spares of
    footage in the bundle's range?"""
    if entry.get("id") == selection.incident_id or entry.get("incident") == selection.incident_id:
        return True
    named = entry.get("paths")
    if entry.get("event") in ("segments_deleted", "segments_spared") and isinstance(named, list):
        from .layout import start_ns_from_name

        for rel in named:
            if not isinstance(rel, str):
                continue
            if rel in paths:
                return True
            parts = rel.split("/")
            start = start_ns_from_name(Path(parts[-1]))
            if (len(parts) == 3 and selection.covers(parts[0]) and start is not None
                    and selection.from_ns <= start <= selection.to_ns):
                return True
    return False


def encode_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=True) + "\n").encode("ascii")


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` member: the Ed25519 signature of context + manifest, in hex, and a newline."""
    return key.sign(SIGNATURE_CONTEXT + manifest).hex().encode("ascii") + b"\n"


def check_signature(manifest: bytes, signature_member: bytes, public: Ed25519PublicKey) -> bool:
    try:
        signature = bytes.fromhex(signature_member.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return False
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public.verify(signature, SIGNATURE_CONTEXT + manifest)
    except InvalidSignature:
        return False
    return True


# ----- reading the device's state ----------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """The catalog rows of one bundle, read in one transaction."""

    incident: IncidentRow
    segments: tuple[SegmentRow, ...]  # by camera then start
    gaps: tuple[GapRow, ...]
    selection: Selection


def read_snapshot(catalog: Catalog, incident_id: str, now_ns: int, *, camera: str | None = None,
                  from_ns: int | None = None, to_ns: int | None = None,
                  config_cameras: Iterable[str] = ()) -> Snapshot:
    with catalog.transaction():  # one snapshot: no row sealed or deleted half-way through the reads
        incident = catalog.get_incident(incident_id)
        if incident is None:
            raise UsageError(unknown_incident_message(incident_id, [i.id for i in catalog.incidents()]))
        known = set(config_cameras) | set(catalog.cameras())
        selection = plan_selection(incident, now_ns, camera=camera, from_ns=from_ns, to_ns=to_ns,
                                   known_cameras=known)
        cams = selection.cameras if selection.cameras is not None else tuple(sorted(known))
        segments = [row for cam in cams for row in catalog.segments(cam, selection.from_ns, selection.to_ns)]
        gaps = [gap for cam in cams for gap in catalog.gaps(cam, selection.from_ns, selection.to_ns)]
    return Snapshot(incident, tuple(segments), tuple(gaps), selection)


@dataclass(frozen=True)
class AuditExcerpt:
    lines: bytes  # the lines concerning the incident, verbatim, each ending in a newline
    head_line: bytes  # the log's last complete line, verbatim, with its newline (empty: no log)
    head_lines: int
    head_sha256: str


def read_audit_excerpt(path: Path, selection: Selection, paths: set[str]) -> AuditExcerpt:
    """The lines of the audit log at ``path`` that concern the bundle, and its head, as of now: lines
    appended while it is read (past the size seen at the start) are not taken."""
    from .audit import GENESIS_PREV, line_hash

    picked: list[bytes] = []
    last = b""
    count = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return AuditExcerpt(b"", b"", 0, GENESIS_PREV)
    with f:
        size = os.fstat(f.fileno()).st_size
        done = 0
        while done < size:
            raw = f.readline(size - done)
            done += len(raw)
            if not raw.endswith(b"\n"):
                break  # a torn tail (never acknowledged) or one still being written
            count += 1
            last = raw
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and concerns(entry, selection, paths):
                picked.append(raw)
    head_sha = line_hash(last[:-1]) if last else GENESIS_PREV
    return AuditExcerpt(b"".join(picked), last, count, head_sha)


# ----- writing the tar -------------------------------------------------------------------------------
class _HashingWriter:
    """A write-only file that hashes and counts what goes through it (the bundle's own digest)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class _HashingReader:
    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        return data


@dataclass
class _Members:
    tar: tarfile.TarFile
    mtime: int
    entries: list[dict[str, Any]] = field(default_factory=list)

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self.mtime, BUNDLE_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes, *, listed: bool = True) -> None:
        import io

        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))
        if listed:
            self.entries.append({"name": name, "kind": member_kind(name), "bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()})

    def add_file(self, name: str, f: BinaryIO) -> str:
        """Add an open file whole (its size when opened: sealed segments do not change); its SHA-256."""
        size = os.fstat(f.fileno()).st_size
        reader = _HashingReader(f)
        self.tar.addfile(self._info(name, size), reader)
        digest = reader.sha256.hexdigest()
        self.entries.append({"name": name, "kind": "segment", "bytes": size, "sha256": digest})
        return digest


@dataclass(frozen=True)
class BundleResult:
    path: Path
    sha256: str
    size_bytes: int
    members: int
    segments: int
    absent: tuple[dict[str, Any], ...]
    selection: Selection
    device_fingerprint: str

    def to_json_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.size_bytes,
                "members": self.members, "segments": self.segments, "absent": list(self.absent),
                "selection": self.selection.to_json_dict(), "device_fingerprint": self.device_fingerprint}


def _row_json(row: Any) -> dict[str, Any]:
    obj = row._asdict() if hasattr(row, "_asdict") else asdict(row)
    for key in ("clock_synced", "time_ok"):
        if key in obj:
            obj[key] = bool(obj[key])
    return obj


def _incident_json(incident: Any, now_ns: int, grace_ns: int) -> dict[str, Any]:
    obj = asdict(incident)
    obj["state"] = "open" if incident.is_open else ("closed" if incident.holds_at(now_ns, grace_ns)
                                                    else "released")
    obj["from"], obj["to"] = rfc3339(incident.from_ns), rfc3339(incident.to_ns)
    obj["hold_start"], obj["hold_end"] = rfc3339(incident.hold_start_ns), rfc3339(incident.hold_end_ns)
    return obj


def write_bundle(data_dir: Path, snapshot: Snapshot, device_key: Ed25519PrivateKey, device_id: str,
                 out: Path, *, now_ns: int, grace_ns: int) -> BundleResult:
    """Write the bundle of ``snapshot`` to ``out`` (0600, through a temporary file, fsynced, renamed)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: the directory {out.parent} does not exist")
    public = device_key.public_key()
    public_text = keys.format_device_public_key(public)
    fingerprint = keys.device_fingerprint(public)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), BUNDLE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, BUNDLE_MODE)
        with open(fd, "wb", closefd=True) as raw:
            sink = _HashingWriter(raw)
            members, absent = _write_members(sink, data_dir, snapshot, public_text, fingerprint, device_key,
                                              device_id, now_ns=now_ns, grace_ns=grace_ns)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    from .fsutil import fsync_dir

    fsync_dir(out.parent, strict=False)
    segments = sum(1 for m in members if m["kind"] == "segment")
    return BundleResult(out, sink.sha256.hexdigest(), sink.size, len(members) + 2, segments, tuple(absent),
                        snapshot.selection, fingerprint)


def _write_members(sink: _HashingWriter, data_dir: Path, snapshot: Snapshot, public_text: str,
                   fingerprint: str, device_key: Ed25519PrivateKey, device_id: str, *, now_ns: int,
                   grace_ns: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    selection = snapshot.selection
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        m = _Members(tar, now_ns // 1_000_000_000)
        m.add_bytes(DEVICE_PUB_NAME, f"{public_text}\n".encode("ascii"))
        catalog_doc = {
            "incident": _incident_json(snapshot.incident, now_ns, grace_ns),
            "segments": [_row_json(r) for r in snapshot.segments],
            "gaps": [_row_json(g) for g in snapshot.gaps],
        }
        m.add_bytes(CATALOG_NAME, encode_json(catalog_doc))
        absent: list[dict[str, Any]] = []
        bundled: set[str] = set()
        for row in snapshot.segments:
            reason = _add_segment(m, data_dir, row)
            if reason is None:
                bundled.add(row.path)
            else:
                absent.append({"path": row.path, "camera": row.camera, "sequence": row.sequence,
                               "digest": row.digest, "reason": reason})
        excerpt = read_audit_excerpt(DataDir(data_dir).audit_path, selection,
                                     {r.path for r in snapshot.segments})
        m.add_bytes(AUDIT_LINES_NAME, excerpt.lines)
        m.add_bytes(AUDIT_HEAD_NAME, excerpt.head_line)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool": f"edgerec {__version__}",
            "created": rfc3339(now_ns),
            "device": {"id": device_id, "public_key": public_text, "fingerprint": fingerprint},
            "incident": snapshot.incident.id,
            "selection": selection.to_json_dict(),
            "members": m.entries,
            "absent": absent,
            "audit_head": {"lines": excerpt.head_lines, "sha256": excerpt.head_sha256},
        }
        manifest_bytes = encode_json(manifest)
        m.add_bytes(MANIFEST_NAME, manifest_bytes, listed=False)
        m.add_bytes(SIGNATURE_NAME, sign_manifest(manifest_bytes, device_key), listed=False)
    return m.entries, absent


def _add_segment(m: _Members, data_dir: Path, row: SegmentRow) -> str | None:
    """Add one catalogued segment; None when added, else why it is absent."""
    if row.deleting_ns is not None:
        return "being deleted on the device (not held)"
    name = segment_member(row.path)
    if member_kind(name) != "segment":
        return f"unexpected path in the catalog: {row.path!r}"
    try:
        f = open(data_dir / row.path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        log.warning("bundle: segment missing path=%s", row.path)
        return "missing on the device (deleted while the bundle was made, or lost)"
    with f:
        digest = m.add_file(name, f)
    if digest != row.digest:
        log.warning("bundle: segment differs from its catalog row path=%s sha256=%s catalog=%s", row.path,
                    digest, row.digest)
    return None


def make_bundle(data_dir: Path, catalog: Catalog, audit: AuditLog, *, incident_id: str, out: Path,
                device_id: str, grace_ns: int, camera: str | None = None, from_ns: int | None = None,
                to_ns: int | None = None,
                config_cameras: Iterable[str] = (), now_ns: int | None = None) -> BundleResult:
    """All of ``edgerec bundle``: snapshot, write, and the ``bundle_created`` audit line."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    snapshot = read_snapshot(catalog, incident_id, now_ns, camera=camera, from_ns=from_ns, to_ns=to_ns,
                             config_cameras=config_cameras)
    device_key = keys.load_device_key(DataDir(data_dir).device_key_path)
    result = write_bundle(data_dir, snapshot, device_key, device_id, out, now_ns=now_ns, grace_ns=grace_ns)
    audit.append("bundle_created", id=incident_id, members=result.members, sha256=result.sha256,
                 bytes=result.size_bytes, segments=result.segments, absent=len(result.absent),
                 cameras=snapshot.selection.to_json_dict()["cameras"], **{
                     "from": rfc3339(snapshot.selection.from_ns), "to": rfc3339(snapshot.selection.to_ns)},
                 out=str(out))
    log.info("bundle written id=%s path=%s segments=%d absent=%d sha256=%s", incident_id, out,
             result.segments, len(result.absent), result.sha256)
    return result
