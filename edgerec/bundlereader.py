"""Reading incident bundles on the officer's computer: open one safely, verify it, export from it.

A bundle comes from elsewhere (a USB stick, a mail drop), so it is read as hostile input: only regular
members with names of the bundle's own form are read, never extracted by name (segments are copied to
files named by their position in a private temporary directory, still encrypted), duplicate names, links,
devices, sparse and oversized members are refused, and compressed tars are not opened at all.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import keys, segfile
from .bundle import (
    AUDIT_HEAD_NAME,
    AUDIT_LINES_NAME,
    CATALOG_NAME,
    DEVICE_PUB_NAME,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SEGMENTS_PREFIX,
    SIGNATURE_NAME,
    BundleError,
    check_signature,
    member_kind,
    segment_camera,
)
from .errors import EdgerecError, KeyFormatError, SegmentError, UsageError
from .export import ExportAccess, ExportResult
from .exporttimeline import KnownGap
from .timefmt import rfc3339

MEMBERS_MAX = 200_000
METADATA_MAX_BYTES = 64 * 1024 * 1024  # manifest, catalog rows, audit lines
SEGMENT_MAX_BYTES = 8 * 1024 * 1024 * 1024
NAME_MAX_CHARS = 255
COPY_BLOCK_BYTES = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def name_problem(name: str) -> str | None:
    """Why a member name is unsafe or not of the bundle's form, or None."""
    if not name or len(name) > NAME_MAX_CHARS:
        return "empty or overlong name"
    if name.startswith("/") or "\\" in name or not _SAFE_NAME.fullmatch(name):
        return "not a plain relative name"
    if any(part in (".", "..") for part in name.split("/")):
        return "a '.' or '..' in the name"
    return None


@dataclass
class BundleReport:
    """The outcome of ``verify_bundle``: problems make it fail, notes do not."""

    path: str
    checked: int = 0  # segments verified
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return [*self.summary, *(f"problem: {p}" for p in self.problems), *(f"note: {n}" for n in self.notes),
                f"bundle {self.path}: {self.checked} segments checked: {verdict}"]

    def to_json_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "bundle": self.path, "checked": self.checked, "problems": self.problems,
                "notes": self.notes, "summary": self.summary}


class BundleFile:
    """An opened bundle: an index of its regular members by name, and the structural problems found."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.members: dict[str, tarfile.TarInfo] = {}
        self.problems: list[str] = []
        try:
            self._tar = tarfile.open(self.path, mode="r:")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise UsageError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{self.path}: is a directory, not a bundle file") from None
        except (tarfile.TarError, OSError, ValueError, UnicodeError, EOFError) as exc:
            raise BundleError(f"{self.path}: not a bundle (not an uncompressed tar file: {exc})") from None
        try:
            self._index()
        except (tarfile.TarError, OSError, ValueError, UnicodeError, EOFError) as exc:
            self._tar.close()
            raise BundleError(f"{self.path}: damaged tar file ({exc})") from None

    def _index(self) -> None:
        duplicates: set[str] = set()
        for seen, info in enumerate(self._tar, start=1):
            if seen > MEMBERS_MAX:
                self.problems.append(f"more than {MEMBERS_MAX} members: not a bundle; the rest not read")
                break
            problem = self._member_problem(info)
            if problem is not None:
                self.problems.append(f"member {info.name[:300]!r}: {problem}; refused")
            elif info.name in self.members or info.name in duplicates:
                if info.name not in duplicates:
                    self.problems.append(f"member {info.name!r}: duplicate name; refused (which copy counts "
                                         "would depend on the reader)")
                duplicates.add(info.name)
                self.members.pop(info.name, None)
            else:
                self.members[info.name] = info
        # The index above is all that is kept. (``members`` is TarFile's real list; typeshed omits it.)
        self._tar.members = []  # type: ignore[attr-defined]

    @staticmethod
    def _member_problem(info: tarfile.TarInfo) -> str | None:
        problem = name_problem(info.name)
        if problem is not None:
            return problem
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.issparse():
            kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk()
                    else "a directory" if info.isdir() else "not a regular file")
            return f"{kind}"
        limit = SEGMENT_MAX_BYTES if member_kind(info.name) == "segment" else METADATA_MAX_BYTES
        if info.size > limit:
            return f"{info.size} bytes, over the limit of {limit} for this member"
        return None

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> BundleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _open_member(self, name: str) -> Iterator[IO[bytes]]:
        f = self._tar.extractfile(self.members[name])
        if f is None:  # pragma: no cover - only regular members are indexed
            raise BundleError(f"{self.path}: member {name} cannot be read")
        try:
            yield f
        finally:
            f.close()

    def read(self, name: str) -> bytes:
        """A small member's bytes (metadata members are capped at METADATA_MAX_BYTES by the index)."""
        try:
            with self._open_member(name) as f:
                return f.read(METADATA_MAX_BYTES + 1)[:METADATA_MAX_BYTES]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{self.path}: member {name} cannot be read ({exc})") from None

    def digest(self, name: str, into: BinaryIO | None = None) -> tuple[str, int]:
        """SHA-256 (hex) and size of a member's bytes, streamed (and copied to ``into`` when given)."""
        sha = hashlib.sha256()
        size = 0
        try:
            with self._open_member(name) as f:
                while block := f.read(COPY_BLOCK_BYTES):
                    sha.update(block)
                    size += len(block)
                    if into is not None:
                        into.write(block)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{self.path}: member {name} cannot be read ({exc})") from None
        return sha.hexdigest(), size


def read_verified(bundle: BundleFile, manifest: Manifest, name: str) -> bytes:
    """A metadata member's bytes, refused (BundleError) unless they are what the signed manifest lists."""
    entry = manifest.members.get(name)
    if entry is None or name not in bundle.members:
        raise BundleError(f"{bundle.path}: refused: member {name} is missing (edgerec verify --bundle "
                          "names every problem)")
    data = bundle.read(name)
    if hashlib.sha256(data).hexdigest() != str(entry["sha256"]).lower() or len(data) != entry["bytes"]:
        raise BundleError(f"{bundle.path}: refused: tampered member {name} (edgerec verify --bundle names "
                          "every problem)")
    return data


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(COPY_BLOCK_BYTES):
            sha.update(block)
    return sha.hexdigest()


# ----- the signed manifest ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    device_key: Ed25519PublicKey
    device_id: str
    incident: str
    members: dict[str, dict[str, Any]]  # by name
    selection: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return keys.device_fingerprint(self.device_key)

    def segment_names(self, camera: str | None = None) -> list[str]:
        names = [n for n, m in self.members.items() if m.get("kind") == "segment"]
        if camera is not None:
            names = [n for n in names if segment_camera(n) == camera]
        return sorted(names, key=lambda n: (segment_camera(n), PurePosixPath(n).name))


def read_manifest(bundle: BundleFile,
                  trusted: Ed25519PublicKey | None = None) -> tuple[Manifest | None, list[str]]:
    """Parse the manifest and check its signature; (manifest or None, problems). The manifest is returned
    only when it is well formed; its signature problems are in the list."""
    problems: list[str] = []
    if MANIFEST_NAME not in bundle.members:
        return None, ["no manifest.json: not a bundle, or its manifest was removed (unsigned)"]
    raw = bundle.read(MANIFEST_NAME)
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not an edgerec bundle manifest")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {doc.get('format_version')!r}; this edgerec reads "
                             f"{FORMAT_VERSION}")
        device = doc["device"]
        public = keys.parse_device_public_key(str(device["public_key"]), source="manifest device key")
        members = {}
        for entry in doc["members"]:
            name = str(entry["name"])
            if name_problem(name) or member_kind(name) is None or name in members:
                raise ValueError(f"member entry {name[:100]!r} is not a bundle member name")
            if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"member entry {name!r} lacks bytes or sha256")
            members[name] = entry
        manifest = Manifest(doc, public, str(device["id"]), str(doc["incident"]), members,
                            dict(doc.get("selection") or {}))
    except (ValueError, KeyError, TypeError, KeyFormatError) as exc:
        return None, [f"manifest.json unreadable: {exc}"]
    if SIGNATURE_NAME not in bundle.members:
        problems.append("manifest.json is not signed (no manifest.sig)")
    elif not check_signature(raw, bundle.read(SIGNATURE_NAME), public):
        problems.append("manifest signature invalid: the manifest was altered or forged")
    if trusted is not None and keys.device_key_id(trusted) != keys.device_key_id(public):
        problems.append(f"wrong device: the bundle is signed by device key {manifest.fingerprint}, not by "
                        f"the expected {keys.device_fingerprint(trusted)}")
    return manifest, problems


# ----- verification ----------------------------------------------------------------------------------
def verify_bundle(path: Path, *, private_key: X25519PrivateKey | None = None,
                  device_key: Ed25519PublicKey | None = None) -> BundleReport:
    """Check a bundle: structure, manifest signature (against ``device_key`` when given), every member's
    digest, every segment (with ``private_key`` also every chunk), the hash chains, catalog and audit."""
    report = BundleReport(str(path))
    with BundleFile(path) as bundle:
        report.problems.extend(bundle.problems)
        manifest, problems = read_manifest(bundle, device_key)
        report.problems.extend(problems)
        if manifest is None:
            return report
        report.summary.append(
            f"incident {manifest.incident} from device {manifest.device_id} (device key "
            f"{manifest.fingerprint}); footage {manifest.selection.get('from')} .. "
            f"{manifest.selection.get('to')}, created {manifest.raw.get('created')}")
        if device_key is None:
            report.notes.append("signature checked against the key the bundle carries: compare the device "
                                f"key fingerprint {manifest.fingerprint} with the one noted for this device, "
                                "or give --device-pub")
        _check_members(bundle, manifest, report)
        catalog = _check_catalog(bundle, manifest, report)
        _check_device_pub(bundle, manifest, report)
        _check_segments(bundle, manifest, catalog, private_key, report)
        _check_audit(bundle, manifest, report)
    return report


def _check_members(bundle: BundleFile, manifest: Manifest, report: BundleReport) -> None:
    for name in sorted(set(bundle.members) - set(manifest.members) - {MANIFEST_NAME, SIGNATURE_NAME}):
        report.problems.append(f"extra member {name}: not in the signed manifest")
    for name, entry in manifest.members.items():
        if name in bundle.members:
            continue
        what = "segment" if entry.get("kind") == "segment" else "member"
        report.problems.append(f"missing {what} {name}: listed in the manifest, not in the bundle")
    for name in sorted(set(manifest.members) & set(bundle.members)):
        if manifest.members[name].get("kind") == "segment":
            continue  # hashed while staged for its own check
        _check_digest(bundle, manifest, name, report)


def _check_digest(bundle: BundleFile, manifest: Manifest, name: str, report: BundleReport,
                  into: BinaryIO | None = None) -> bool:
    entry = manifest.members[name]
    digest, size = bundle.digest(name, into)
    if digest != entry["sha256"].lower() or size != entry["bytes"]:
        report.problems.append(f"tampered member {name}: SHA-256 {digest} ({size} bytes), the manifest "
                               f"says {entry['sha256']} ({entry['bytes']} bytes)")
        return False
    return True


def _load_json(bundle: BundleFile, name: str, report: BundleReport) -> Any:
    if name not in bundle.members:
        return None
    try:
        return json.loads(bundle.read(name))
    except ValueError:
        report.problems.append(f"{name}: not valid JSON")
        return None


def _check_catalog(bundle: BundleFile, manifest: Manifest, report: BundleReport) -> dict[str, dict[str, Any]]:
    """The catalog's segment rows by member name (checked against the manifest)."""
    doc = _load_json(bundle, CATALOG_NAME, report)
    if not isinstance(doc, dict):
        return {}
    rows: dict[str, dict[str, Any]] = {}
    incident = doc.get("incident")
    if not isinstance(incident, dict):
        incident = {}
    if incident.get("id") != manifest.incident:
        report.problems.append(f"catalog.json is about incident {incident.get('id')!r}, the manifest about "
                               f"{manifest.incident!r}")
    absent = {a.get("path") for a in manifest.raw.get("absent") or [] if isinstance(a, dict)}
    for row in doc.get("segments") or []:
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            report.problems.append("catalog.json: a segment row without a path")
            continue
        name = SEGMENTS_PREFIX + row["path"]
        rows[name] = row
        if name not in manifest.members and row["path"] not in absent:
            report.problems.append(f"missing segment {name}: in the catalog rows, neither bundled nor "
                                   "listed as absent")
    for item in manifest.raw.get("absent") or []:
        if isinstance(item, dict):
            report.notes.append(f"segment {item.get('path')} not in the bundle: {item.get('reason')}")
    return rows


def _check_device_pub(bundle: BundleFile, manifest: Manifest, report: BundleReport) -> None:
    if DEVICE_PUB_NAME not in bundle.members:
        return
    try:
        text = bundle.read(DEVICE_PUB_NAME).decode("utf-8").strip()
        public = keys.parse_device_public_key(text, source=DEVICE_PUB_NAME)
    except (UnicodeDecodeError, KeyFormatError) as exc:
        report.problems.append(f"device.pub unreadable: {exc}")
        return
    if keys.device_key_id(public) != keys.device_key_id(manifest.device_key):
        report.problems.append("wrong device: device.pub is not the key that signed the manifest")


def _check_segments(bundle: BundleFile, manifest: Manifest, catalog: dict[str, dict[str, Any]],
                    private_key: X25519PrivateKey | None, report: BundleReport) -> None:
    """Check every segment on its own (staged one at a time, in name order), then walk each camera's chain
    by sequence number (``_walk_chain``)."""
    absent_seqs = {(a.get("camera"), a.get("sequence")) for a in manifest.raw.get("absent") or []
                   if isinstance(a, dict)}
    names = [n for n in manifest.segment_names() if n in bundle.members]
    by_camera: dict[str, list[str]] = {}
    for name in names:
        by_camera.setdefault(segment_camera(name), []).append(name)
    with tempfile.TemporaryDirectory(prefix="edgerec-verify-") as tmp:
        staged = Path(tmp) / "segment.seg"
        for camera, cam_names in by_camera.items():
            links: list[tuple[segfile.ChainLink, str]] = []
            unread: set[int] = set()  # what the catalog rows say the segments with no readable header are
            for name in cam_names:
                with open(staged, "wb") as f:
                    _check_digest(bundle, manifest, name, report, into=f)
                report.checked += 1
                row = catalog.get(name)
                try:
                    link = _check_one_segment(staged, name, manifest, row, private_key, report, camera)
                except OSError as exc:  # its copy could not be read: not verified, so a problem all the same
                    report.problems.append(f"{name}: cannot read its staged copy: {exc.strerror or exc}; "
                                           f"{_unread_place(row)}")
                    link = None
                if link is not None:
                    links.append((link, name))
                elif (sequence := _row_sequence(row)) is not None:
                    unread.add(sequence)
            staged.unlink(missing_ok=True)
            known = {s for c, s in absent_seqs if c == camera and isinstance(s, int)} | unread
            _walk_chain(links, sorted(known), report)


def _check_one_segment(path: Path, name: str, manifest: Manifest, row: dict[str, Any] | None,
                       private_key: X25519PrivateKey | None, report: BundleReport,
                       camera: str) -> segfile.ChainLink | None:
    """Check one staged segment on its own: what the chain walk knows of it (None: its header cannot be
    read, so it has no sequence number and no place in the walk)."""
    from .inventory import name_problem as place_problem

    check = segfile.check_segment(path, private_key=private_key, device_key=manifest.device_key)
    problems = [f"{name}: {error.what}" for error in check.problems]
    link = segfile.ChainLink.of(check)
    if link is None or check.header is None:
        # Reported once, with the number the (signed) catalog row gives it: the walk does not report
        # that number again as missing, and the segment stays a problem.
        *first, last = problems or [f"{name}: its header cannot be read"]
        report.problems.extend([*first, f"{last}; {_unread_place(row)}"])
        return None
    report.problems.extend(problems)
    meta = check.header.meta
    if meta.device_id != manifest.device_id:
        report.problems.append(f"{name}: wrong device: recorded by {meta.device_id!r}, the bundle is from "
                               f"{manifest.device_id!r}")
    # The walk goes by sequence, so a segment under another one's name shows here, not as a chain break.
    misplaced = place_problem(Path(PurePosixPath(name)), Path(camera), meta)
    if misplaced is not None:
        report.problems.append(f"{name}: {misplaced}")
    try:
        info = segfile.read_info(path)
    except SegmentError:
        return link
    if row is None:
        report.problems.append(f"{name}: no catalog row for this segment")
    elif row.get("digest") != info.digest.hex() or row.get("sequence") != meta.sequence:
        report.problems.append(f"{name}: differs from its catalog row (digest {info.digest.hex()}, catalog "
                               f"{row.get('digest')}): a different segment in its place")
    return link


def _row_sequence(row: dict[str, Any] | None) -> int | None:
    sequence = (row or {}).get("sequence")
    return sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None


def _unread_place(row: dict[str, Any] | None) -> str:
    """What is known of the sequence number of a segment whose header cannot be read."""
    sequence = _row_sequence(row)
    if sequence is None:
        return "its sequence number is not known (its header cannot be read, and no catalog row gives it)"
    return (f"its header cannot be read: its catalog row says it is sequence {sequence}, which is therefore "
            "not confirmed")


def _walk_chain(links: list[tuple[segfile.ChainLink, str]], known: list[int], report: BundleReport) -> None:
    """One camera's chain, walked by sequence number, never by name or start time (spec section 7.6: a
    clock step backwards gives a later segment an earlier name, and a name is not authenticated; the
    sequence is in the signed header). A number missing between two segments is a problem unless it is
    ``known`` (sorted): listed in the manifest's ``absent``, or the catalog's number of a bundled segment
    whose header cannot be read (a problem of its own already, naming that number)."""
    before: segfile.ChainLink | None = None  # the one walked before ``previous``
    previous: segfile.ChainLink | None = None
    for link, name in segfile.chain_order(links):
        status = segfile.link_status(previous, link, before=before)
        if status == segfile.LINK_DUPLICATE:  # a fork: the walk goes on from the first of the two
            report.problems.append(f"{name}: a second segment with sequence {link.sequence}: the chain "
                                   "forked")
            continue
        if previous is not None and link.sequence > previous.sequence + 1:
            if _unaccounted(previous.sequence + 1, link.sequence - 1, known):
                report.problems.append(f"{name}: hash chain broken: sequence {link.sequence} follows "
                                       f"{previous.sequence} (a segment is missing)")
        elif status == segfile.LINK_BROKEN:
            report.problems.append(f"{name}: hash chain broken: prev_digest differs from the previous "
                                   "segment's digest")
        elif status == segfile.LINK_PAST:
            assert before is not None and previous is not None
            report.notes.append(f"{name}: {segfile.past_note(before, previous)}")
        before, previous = segfile.walked_before(status, before, previous), link


def _unaccounted(first: int, last: int, known: list[int]) -> bool:
    """Whether some number of ``first``..``last`` is not ``known`` (counted, never walked: a damaged
    header can claim any number)."""
    return bisect.bisect_right(known, last) - bisect.bisect_left(known, first) < last - first + 1


def _check_audit(bundle: BundleFile, manifest: Manifest, report: BundleReport) -> None:
    from .audit import GENESIS_PREV, line_hash

    head = manifest.raw.get("audit_head") or {}
    if AUDIT_HEAD_NAME in bundle.members:
        line = bundle.read(AUDIT_HEAD_NAME)
        expected = head.get("sha256")
        actual = line_hash(line[:-1]) if line.endswith(b"\n") else (GENESIS_PREV if not line else "")
        if actual != expected:
            report.problems.append(f"{AUDIT_HEAD_NAME}: its SHA-256 is not the audit head the manifest names")
        report.summary.append(f"audit log head {head.get('lines')}:{expected} (check it on the device with "
                              "edgerec audit verify --head LINES:SHA256)")
    if AUDIT_LINES_NAME in bundle.members:
        for i, raw in enumerate(bundle.read(AUDIT_LINES_NAME).splitlines(), start=1):
            try:
                entry = json.loads(raw)
                n = entry["n"]
            except (ValueError, KeyError, TypeError):
                report.problems.append(f"{AUDIT_LINES_NAME} line {i}: not an audit line")
                continue
            if isinstance(n, int) and isinstance(head.get("lines"), int) and n > head["lines"]:
                report.problems.append(f"{AUDIT_LINES_NAME} line {i}: number {n} is past the head")


# ----- export ----------------------------------------------------------------------------------------
def open_checked(path: Path) -> tuple[BundleFile, Manifest]:
    """Open a bundle for export: refused (BundleError naming each problem) unless its structure is sound
    and its manifest validly signed. Member digests are checked as the segments are read."""
    bundle = BundleFile(path)
    try:
        manifest, problems = read_manifest(bundle)
        problems = bundle.problems + problems
        if problems or manifest is None:
            raise BundleError("\n".join([f"{path}: refused: {p}" for p in problems]
                                        + ["(edgerec verify --bundle names every problem)"]))
    except BaseException:
        bundle.close()
        raise
    return bundle, manifest


def bundle_cameras(manifest: Manifest) -> list[str]:
    return sorted({segment_camera(n) for n in manifest.segment_names()})


def export_bundle(path: Path, private_key: X25519PrivateKey, out: Path, *, access: ExportAccess,
                  camera: str | None = None, from_ns: int | None = None, to_ns: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export one camera of a bundle, by default over the whole range it holds (the incident's window
    with its pre- and post-roll), selecting segments as an export from the data directory does."""
    from .exportsource import SegmentSource, export_sources, select_in_range
    from .inventory import last_segment_end
    from .layout import start_ns_from_name

    bundle, manifest = open_checked(path)
    with bundle:
        cameras = bundle_cameras(manifest)
        if camera is None:
            if len(cameras) != 1:
                raise UsageError(f"the bundle holds cameras {', '.join(cameras) or '(none)'}: give --camera")
            camera = cameras[0]
        elif camera not in cameras:
            raise UsageError(f"--camera {camera}: not in the bundle "
                             f"(cameras: {', '.join(cameras) or 'none'})")
        lo = int(manifest.selection.get("from_ns", 0)) if from_ns is None else from_ns
        hi = int(manifest.selection.get("to_ns", 0)) if to_ns is None else to_ns
        if hi <= lo:
            raise UsageError("--to must be after --from")
        names = [n for n in manifest.segment_names(camera) if n in bundle.members]
        catalog = _catalog_rows(bundle, manifest)
        with tempfile.TemporaryDirectory(prefix="edgerec-bundle-") as tmp:
            staged: dict[str, Path] = {}

            def stage(name: str) -> Path:
                if name not in staged:
                    target = Path(tmp) / f"{len(staged):06d}.seg"  # by position, never by member name
                    with open(target, "wb") as f:
                        bundle.digest(name, f)
                    staged[name] = target
                return staged[name]

            spans = [(start_ns_from_name(Path(PurePosixPath(n).name)) or 0, 0) for n in names]
            if names:
                # A last segment whose end cannot be read may reach into the range: as the range's end, it
                # is chosen if it starts before that, and the export names it (as a data directory's does).
                last_end = last_segment_end(stage(names[-1]))
                spans[-1] = (spans[-1][0], hi if last_end is None else last_end)
            chosen = [names[i] for i in select_in_range(spans, lo, hi)]
            if not chosen:
                raise EdgerecError(f"no footage of camera {camera!r} between {rfc3339(lo)} and {rfc3339(hi)} "
                                   "in the bundle")
            sources = [SegmentSource(label=n, path=stage(n), digest=_expected_digest(n, catalog, manifest))
                       for n in chosen]
            origin = {"kind": "bundle", "file": str(path), "sha256": sha256_file(path),
                      "incident": manifest.incident, "device_id": manifest.device_id,
                      "device_fingerprint": manifest.fingerprint, "manifest_signature": "ok",
                      "camera": camera, "from": rfc3339(lo), "to": rfc3339(hi)}
            return export_sources(sources, private_key, out, access=access, origin=origin, progress=progress,
                                  from_ns=lo, to_ns=hi, known_gaps=_recorded_gaps(bundle, manifest, camera))


def _catalog_doc(bundle: BundleFile, manifest: Manifest) -> dict[str, Any]:
    try:
        doc = json.loads(read_verified(bundle, manifest, CATALOG_NAME))
    except ValueError:
        raise BundleError(f"{bundle.path}: refused: catalog.json is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{bundle.path}: refused: catalog.json is not a JSON object")
    return doc


def _catalog_rows(bundle: BundleFile, manifest: Manifest) -> dict[str, dict[str, Any]]:
    rows = _catalog_doc(bundle, manifest).get("segments")
    if not isinstance(rows, list):
        return {}
    return {SEGMENTS_PREFIX + r["path"]: r for r in rows
            if isinstance(r, dict) and isinstance(r.get("path"), str)}


def _recorded_gaps(bundle: BundleFile, manifest: Manifest, camera: str) -> list[KnownGap]:
    """The camera's gaps as the device's catalog recorded them (catalog.json's gap rows); a row that is
    not as the device writes them is skipped (the export then calls that gap's reason unknown)."""
    gaps = []
    for row in _catalog_doc(bundle, manifest).get("gaps") or []:
        if not isinstance(row, dict) or row.get("camera") != camera:
            continue
        start, end, reason = row.get("from_ns"), row.get("to_ns"), row.get("reason")
        if isinstance(start, int) and isinstance(end, int) and end > start:
            gaps.append(KnownGap(start, end, reason if isinstance(reason, str) else ""))
    return gaps


def _expected_digest(name: str, catalog: dict[str, dict[str, Any]], manifest: Manifest) -> str:
    """What the device's catalog says the segment's SHA-256 is (else what the manifest lists)."""
    digest = (catalog.get(name) or {}).get("digest")
    return digest if isinstance(digest, str) else str(manifest.members[name]["sha256"])


def bundle_listing(path: Path) -> dict[str, Any]:
    """What ``edgerec ls --bundle`` shows: the incident, the cameras with their segments and gaps."""
    bundle, manifest = open_checked(path)
    with bundle:
        doc = _catalog_doc(bundle, manifest)
    try:
        return _listing(doc, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: catalog.json has an unexpected layout ({exc!r})") from None


def _listing(doc: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    cameras: dict[str, Any] = {}
    for row in doc.get("segments") or []:
        cameras.setdefault(row["camera"], {"segments": [], "gaps": []})["segments"].append({
            "start": rfc3339(row["start_ns"]), "end": rfc3339(row["end_ns"]), "path": row["path"],
            "bytes": row["size_bytes"], "frames": row["frames"], "state": row["state"],
            "sequence": row["sequence"], "digest": row["digest"]})
    for gap in doc.get("gaps") or []:
        cameras.setdefault(gap["camera"], {"segments": [], "gaps": []})["gaps"].append({
            "from": rfc3339(gap["from_ns"]), "to": rfc3339(gap["to_ns"]),
            "seconds": round((gap["to_ns"] - gap["from_ns"]) / 1e9, 3), "reason": gap["reason"]})
    return {"incident": doc.get("incident"), "device": manifest.raw.get("device"),
            "selection": manifest.selection, "absent": manifest.raw.get("absent") or [], "cameras": cameras}
