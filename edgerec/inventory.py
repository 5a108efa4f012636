"""What footage a data directory holds: listing, whole-tree verification and time-range selection.

These work from the segment files themselves (the truth), so they also work on a copy of a data directory
taken off the device; the catalog, when present, adds gaps and is checked against the files, and the
audit log, when present, must explain every segment missing from a chain (``deletions``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import segfile
from .chainheads import ChainHead
from .deletions import CameraRemovals, Hole, Missing, removal_record, unexplained
from .errors import SegmentError
from .exporttimeline import KnownGap
from .humanize import local_time_text, plural
from .layout import (
    CATALOG_NAME,
    DEVICE_PUB_NAME,
    PARTIAL_SUFFIX,
    SEGMENT_GLOB,
    DataDir,
    day_dir_name,
    start_ns_from_name,
)
from .timefmt import rfc3339

log = logging.getLogger(__name__)


def camera_dirs(data_dir: Path, camera: str | None = None) -> list[Path]:
    if camera is not None:
        d = data_dir / camera
        return [d] if d.is_dir() else []
    return sorted(p for p in data_dir.iterdir() if p.is_dir() and any(p.glob(SEGMENT_GLOB)))


def segment_files(data_dir: Path, camera: str) -> list[Path]:
    """A camera's segment files in time order (by their names, which sort by start time)."""
    return sorted((data_dir / camera).glob(SEGMENT_GLOB), key=lambda p: p.name)


def segments_in_range(data_dir: Path, camera: str, from_ns: int, to_ns: int) -> list[Path]:
    """Segment files of ``camera`` whose time span overlaps [from_ns, to_ns).

    A segment's end is taken as the next segment's start (cheap: no file is opened); the last one is
    opened to read its end. A last one whose end cannot be read (damaged, or an I/O error) may reach into
    the range: it is chosen when it starts before the range ends, so that the export reports it (left out,
    and why) instead of leaving it out unsaid.
    """
    named = [(start_ns_from_name(p), p) for p in segment_files(data_dir, camera)]
    files = [(s, p) for s, p in named if s is not None]
    chosen = []
    for i, (start, path) in enumerate(files):
        end = files[i + 1][0] if i + 1 < len(files) else last_segment_end(path)
        if start < to_ns and (end is None or end > from_ns):
            chosen.append(path)
    return chosen


def last_segment_end(path: Path) -> int | None:
    """The media end of a camera's last segment, or None when it cannot be read (a damaged file, or an
    error of the system: either way, what it holds is not known)."""
    try:
        return segfile.read_info(path).end_ns
    except (SegmentError, OSError) as exc:
        log.warning("end of the last segment not readable; taken as unknown path=%s error=%s", path, exc)
        return None


def recorded_gaps(data_dir: Path, camera: str, from_ns: int, to_ns: int) -> list[KnownGap]:
    """The gaps of ``camera`` overlapping [from_ns, to_ns] as the device recorded them in its catalog.

    Read through a read-only connection: an export changes nothing in the data directory (a copy taken
    off the device may be on read-only media). No catalog, or one that cannot be read: no recorded gaps
    (the export still finds the holes from the segments' times, with reason "unknown")."""
    path = data_dir / CATALOG_NAME
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT from_ns, to_ns, reason FROM gaps WHERE camera = ? AND to_ns >= ? "
                                "AND from_ns <= ? ORDER BY from_ns", (camera, from_ns, to_ns)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("catalog not readable, gap reasons unknown path=%s error=%s", path, exc)
        return []
    return [KnownGap(int(a), int(b), str(reason)) for a, b, reason in rows]


def _device_key(data_dir: Path) -> Any:
    from . import keys

    pub = data_dir / DEVICE_PUB_NAME
    return keys.load_device_public_key(pub) if pub.exists() else None


def listing(data_dir: Path, camera: str | None = None) -> dict[str, Any]:
    """Segments and gaps per camera, from the catalog when there is one, else from the files."""
    cameras: dict[str, Any] = {}
    catalog_path = data_dir / CATALOG_NAME
    if catalog_path.exists():
        from .catalog import Catalog

        cat = Catalog.open_readonly(data_dir)
        try:
            for row in cat.segments(camera=camera):
                cameras.setdefault(row.camera, {"segments": [], "gaps": []})["segments"].append({
                    "start": rfc3339(row.start_ns), "end": rfc3339(row.end_ns), "path": row.path,
                    "bytes": row.size_bytes, "frames": row.frames, "state": row.state,
                    "sequence": row.sequence, "digest": row.digest})
            for gap in cat.gaps(camera=camera):
                cameras.setdefault(gap.camera, {"segments": [], "gaps": []})["gaps"].append({
                    "from": rfc3339(gap.from_ns), "to": rfc3339(gap.to_ns),
                    "seconds": round((gap.to_ns - gap.from_ns) / 1e9, 3), "reason": gap.reason})
        finally:
            cat.close()
    else:
        for cam_dir in camera_dirs(data_dir, camera):
            segs = cameras.setdefault(cam_dir.name, {"segments": [], "gaps": []})["segments"]
            for path in segment_files(data_dir, cam_dir.name):
                try:
                    info = segfile.read_info(path)
                except SegmentError as exc:
                    segs.append({"path": str(path.relative_to(data_dir)), "error": exc.what})
                    continue
                except OSError as exc:  # listed as unreadable, never left out
                    segs.append({"path": str(path.relative_to(data_dir)),
                                 "error": f"cannot read: {exc.strerror or exc}"})
                    continue
                segs.append({"start": rfc3339(info.meta.start_ns), "end": rfc3339(info.end_ns),
                             "path": str(path.relative_to(data_dir)), "bytes": info.size_bytes,
                             "frames": info.frames, "state": info.state, "sequence": info.meta.sequence,
                             "digest": info.digest.hex()})
    return {"cameras": cameras}


def format_listing(listing_: dict[str, Any]) -> str:
    lines = []
    for name, cam in sorted(listing_["cameras"].items()):
        segs = cam["segments"]
        total = sum(s.get("bytes", 0) for s in segs)
        lines.append(f"{name}: {plural(len(segs), 'segment')}, {total / 1e6:.1f} MB, "
                     f"{plural(len(cam['gaps']), 'gap')}")
        events = [(s.get("start", ""), "seg", s) for s in segs] + [(g["from"], "gap", g) for g in cam["gaps"]]
        for _, kind, item in sorted(events, key=lambda e: e[0]):
            if kind == "gap":
                seconds = item.get("seconds")
                length = f"  ({seconds:.1f} s)" if seconds is not None else ""
                span = f"{local_time_text(item['from'])} .. {local_time_text(item['to'])}"
                lines.append(f"  GAP  {span}{length}  {item['reason']}")
            elif "error" in item:
                lines.append(f"  BAD  {item['path']}: {item['error']}")
            else:
                lines.append(f"  {local_time_text(item['start'])} .. {local_time_text(item['end'])}  "
                             f"{item['frames']:>6} frames "
                             f"{item['bytes'] / 1e6:8.2f} MB  {item['state']}  {item['path']}")
    return "\n".join(lines) if lines else "no footage"


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # valid segments that end at their last intact chunk

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return [*(f"problem: {p}" for p in self.problems), *(f"note: {n}" for n in self.notes),
                f"{self.checked} segments checked ({len(self.recovered)} recovered after a crash): {verdict}"]

    def to_json_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problems": self.problems, "notes": self.notes,
                "recovered": self.recovered}


# A segment's name is its start time to the millisecond, moved on by up to this much when the name was
# taken (the recorder tries the next millisecond, up to 1000 times).
NAME_SLACK_NS = 1_000_000_000


def name_problem(path: Path, camera_dir: Path, meta: segfile.SegmentMeta) -> str | None:
    """What is wrong with where a segment lies, given its (authenticated) header; None when nothing.

    The name and the directories are not authenticated: a renamed, moved or swapped file is found here,
    while the chain walk (by sequence) stays intact."""
    if meta.camera != camera_dir.name:
        return (f"the header says camera {meta.camera!r}, the file lies in {camera_dir.name!r}: "
                "moved or swapped")
    name_ns = start_ns_from_name(path)
    start_ms_ns = meta.start_ns - meta.start_ns % 1_000_000
    if name_ns is None or not 0 <= name_ns - start_ms_ns < NAME_SLACK_NS or (
        path.parent.name != day_dir_name(name_ns)
    ):
        return (f"the name does not match the header's start time {rfc3339(meta.start_ns)} "
                f"(sequence {meta.sequence}): renamed or swapped")
    return None


def verify_tree(data_dir: Path, *, private_key: Any = None, camera: str | None = None,
                heads: Sequence[ChainHead] = ()) -> VerifyReport:
    """Verify every segment file (framing, signature; with a key also every chunk), each camera's hash
    chain walked by sequence number, where each file lies, the catalog against the files (rows, digests),
    and every segment missing from a chain against the audit log's record of removals (``deletions``):
    in the middle, at the start, and at the newest end (the catalog's rows, ``heads`` seen earlier). The
    record is checked against the chain too: a segment after a removed one links to the digest the log
    records for that one, and no number the log records removed (or set aside) is found again in another
    file."""
    report = VerifyReport()
    device_key = _device_key(data_dir)
    if device_key is None:
        report.notes.append(f"no {DEVICE_PUB_NAME} in {data_dir}: signatures checked with the key in each "
                            "header")
    removals = _read_removals(data_dir, report)
    on_disk: set[str] = set()
    found: dict[str, _Found] = {}  # relative path -> what its check found
    chains: dict[str, list[tuple[segfile.ChainLink, Path]]] = {}
    unread: dict[str, list[_Unreadable]] = {}
    for cam_dir in camera_dirs(data_dir, camera):
        links: list[tuple[segfile.ChainLink, Path]] = []
        unreadable: list[_Unreadable] = []
        for path in segment_files(data_dir, cam_dir.name):
            rel = str(path.relative_to(data_dir))
            on_disk.add(rel)
            report.checked += 1
            try:
                check = segfile.check_segment(path, private_key=private_key, device_key=device_key)
            except OSError as exc:  # not known to be damaged, but not verified either: a problem all the same
                unreadable.append(_Unreadable(path, (f"{path}: cannot read: {exc.strerror or exc}",)))
                continue
            link = segfile.ChainLink.of(check)
            if link is None:  # the header is unreadable: no sequence, no place in the chain
                unreadable.append(_Unreadable(path, tuple(str(e) for e in check.problems)))
                continue
            report.problems.extend(str(e) for e in check.problems)
            if check.state == "recovered" and check.ok:
                report.recovered.append(str(path))
                report.notes.append(f"{path}: recovered after a crash: it ends at its last intact chunk")
            assert check.header is not None
            digest = link.digest.hex() if link.digest is not None else None
            found[rel] = _Found(link.sequence, digest, check.ok)
            misplaced = name_problem(path, cam_dir, check.header.meta)
            if misplaced is not None:
                report.problems.append(f"{path}: {misplaced}")
            links.append((link, path))
        chains[cam_dir.name] = links
        unread[cam_dir.name] = unreadable
        _report_unreadable(unreadable, links, report)
        partials = sorted(cam_dir.glob(f"*/*{PARTIAL_SUFFIX}"))
        _walk_chain(links, report, _Explainer.of(removals, cam_dir.name, on_disk, partials, unreadable))
        for partial in partials:
            report.notes.append(f"{partial}: unfinished segment (recording, or recovered at next start)")
    _check_catalog(data_dir, camera, on_disk, found, removals, report)
    _check_missing_at_start_up(data_dir, camera, on_disk, removals, report)
    for head in heads:
        if camera is None or head.camera == camera:
            explainer = _Explainer.of(removals, head.camera, on_disk, unreadable=unread.get(head.camera, []))
            _check_head(head, chains.get(head.camera, []), explainer, report)
    return report


@dataclass(frozen=True)
class _Found:
    sequence: int
    digest: str | None
    intact: bool


@dataclass(frozen=True)
class _Unreadable:
    """A segment file whose header could not be read (damaged, or the file could not be opened): it has no
    sequence number, so no place in the chain walk. Its problems are reported once, with the place its
    name gives it (``_place_of``)."""

    path: Path
    problems: tuple[str, ...]


def _report_unreadable(unreadable: Sequence[_Unreadable], links: list[tuple[segfile.ChainLink, Path]],
                       report: VerifyReport) -> None:
    """Each unreadable file's problems, the last one saying which sequence number it may be."""
    for item in unreadable:
        *first, last = item.problems or (f"{item.path}: its header cannot be read",)
        report.problems.extend(first)
        report.problems.append(f"{last}; {_place_of(item.path, links)}")


def _place_of(path: Path, links: list[tuple[segfile.ChainLink, Path]]) -> str:
    """Which numbers of the camera's chain a file whose header cannot be read may be: those missing between
    the two segments (walked by sequence) between whose names its name lies. A name is not authenticated,
    so this is where the file claims to be, not what it is: those numbers stay unconfirmed."""
    name_ns = start_ns_from_name(path)
    if name_ns is None:
        return "its sequence number is not known (its header cannot be read), nor its place (its name)"
    lies = "its sequence number is not known (its header cannot be read): by its name it lies"
    walk = _walk_order(links)
    if not walk:
        return f"{lies} in a camera with no readable segment"
    previous: segfile.ChainLink | None = None
    previous_path: Path | None = None
    for link, link_path in walk:
        hole = _hole_before(previous, previous_path, link, link_path)
        if hole is not None and _named_within(name_ns, hole):
            where = f"between sequence {previous.sequence} and" if previous is not None else "before"
            maybe = (f"in the place of sequence {hole.first}, which is therefore not confirmed"
                     if hole.count == 1 else f"where sequence(s) {_span(hole)} are not here: it may be any "
                     "of them, none of which is confirmed")
            return f"{lies} {where} sequence {link.sequence}, {maybe}"
        previous, previous_path = link, link_path
    newest, newest_path = walk[-1]
    newest_ns = start_ns_from_name(newest_path)
    if newest_ns is not None and name_ns > newest_ns:
        return f"{lies} after sequence {newest.sequence}, the newest here: it may be a later one"
    return f"{lies} where no number is missing from the chain: it is none of the chain's segments"


def _walk_order(links: list[tuple[segfile.ChainLink, Path]]) -> list[tuple[segfile.ChainLink, Path]]:
    """The segments the chain walk goes on from, in its order (the first of two with one number)."""
    walk: list[tuple[segfile.ChainLink, Path]] = []
    for link, path in segfile.chain_order(links):
        if not walk or walk[-1][0].sequence != link.sequence:
            walk.append((link, path))
    return walk


def _named_within(name_ns: int, hole: Hole) -> bool:
    """Whether a name time lies between a hole's neighbours' names (as ``deletions.unexplained`` counts)."""
    return ((hole.after_ns is None or name_ns > hole.after_ns)
            and (hole.before_ns is None or name_ns < hole.before_ns))


def _read_removals(data_dir: Path, report: VerifyReport) -> dict[str, CameraRemovals] | None:
    """The audit log's record of removals (None when there is no audit log); a broken log is a problem
    (its record is still used: ``edgerec audit verify`` says more)."""
    from .audit import verify_audit

    path = DataDir(data_dir).audit_path
    if not path.exists():
        report.notes.append(f"no audit log in {data_dir}: no removal of a segment can be explained")
        return None
    result = verify_audit(path)
    if not result.ok:
        torn = result.line == result.lines and "incomplete" in (result.problem or "")
        (report.notes if torn else report.problems).append(f"{path}: {result.message}")
    entries = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                entries.append(obj)
    return removal_record(entries)


@dataclass(frozen=True)
class _Explainer:
    """One camera's side of the removal rule: which missing sequences the audit log explains."""

    removals: CameraRemovals | None
    sequences: list[int]  # the numbers the log records removed, sorted
    name_times: list[int]
    has_log: bool
    gone_by_sequence: dict[int, str]  # sequence -> path of a file the log records removed, not here now
    # name times of the camera's .partial files here now: not recorded yet (start-up recovers or sets
    # them aside), so they account for a hole of the walk (by count), as a note
    pending_times: list[int] = field(default_factory=list)
    # name times of the camera's files here whose header cannot be read: each is a problem of its own,
    # naming the numbers it may be (``_place_of``), so a hole they account for is not reported again
    unreadable_times: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, record: dict[str, CameraRemovals] | None, camera: str, present: set[str],
           partials: Sequence[Path] = (), unreadable: Sequence[_Unreadable] = ()) -> _Explainer:
        pending = sorted(ns for ns in (start_ns_from_name(p.with_name(p.name.removesuffix(PARTIAL_SUFFIX)))
                                       for p in partials) if ns is not None)
        unread = sorted(ns for ns in (start_ns_from_name(u.path) for u in unreadable) if ns is not None)
        removals = None if record is None else record.get(camera)
        if removals is None:
            return cls(None, [], [], record is not None, {}, pending, unread)
        gone = {seq: path for path, seq in removals.by_path.items()
                if seq is not None and path not in present}
        return cls(removals, sorted(removals.sequences), removals.name_times(present), True, gone, pending,
                   unread)

    def unexplained(self, hole: Hole) -> Missing | None:
        return unexplained(hole, self.sequences, self.name_times)

    def pending_explains(self, hole: Hole) -> bool:
        """Whether the .partial files here account for what the log leaves unexplained in ``hole``."""
        return bool(self.pending_times) and unexplained(
            hole, self.sequences, sorted(self.name_times + self.pending_times)) is None

    def unaccounted(self, hole: Hole) -> Missing | None:
        """What the log leaves unexplained in ``hole`` (``unexplained``), less as many numbers as there are
        files here whose header cannot be read named between its neighbours; None when nothing is left.
        Those files explain nothing away: each is a problem of its own, naming the numbers it may be
        (``_place_of``), so verify still fails (also when a segment was removed and a damaged file put
        in its place); they only keep the hole from being reported a second time. What is left is
        reported, as the span of the unexplained numbers with the count left (which of them are missing
        is not known)."""
        missing = self.unexplained(hole)
        if missing is None or not self.unreadable_times:
            return missing
        left = unexplained(hole, self.sequences, sorted(self.name_times + self.unreadable_times))
        return None if left is None else Missing(missing.first, missing.last, left.count)

    def linked_before(self, sequence: int) -> int:
        """The number a segment links to when the one before it is not here: the next lower one, past the
        numbers the log records set aside at start-up (their files have no digest to link to)."""
        before = sequence - 1
        while self.removals is not None and before in self.removals.set_aside:
            before -= 1
        return before

    def recorded_digest(self, sequence: int) -> str | None:
        """The digest the log records for removed segment ``sequence`` (None: not recorded)."""
        return None if self.removals is None else self.removals.digests.get(sequence)

    def reused(self, sequence: int) -> str | None:
        """The file the log records removed with ``sequence`` (a segment with it here is another one)."""
        return self.gone_by_sequence.get(sequence)

    def problem(self, missing: Missing) -> str:
        why = "the audit log does not record their removal" if self.has_log else "there is no audit log"
        return f"segment(s) {missing} missing from the chain and {why}"


# A first segment or a gap whose link the audit log confirms: noted once, as that.
LINK_RECORDED = "recorded"


def _hole_before(previous: segfile.ChainLink | None, previous_path: Path | None, link: segfile.ChainLink,
                 path: Path) -> Hole | None:
    """The numbers missing between the segment walked before and this one (before the first one walked:
    from 0), whatever the link says: every hole is explained by the same rule (``deletions``)."""
    if previous is None:
        return Hole(0, link.sequence - 1, None, start_ns_from_name(path)) if link.sequence > 0 else None
    if link.sequence <= previous.sequence + 1:
        return None
    assert previous_path is not None
    return Hole(previous.sequence + 1, link.sequence - 1, start_ns_from_name(previous_path),
                start_ns_from_name(path))


def _walk_chain(links: list[tuple[segfile.ChainLink, Path]], report: VerifyReport,
                explainer: _Explainer) -> None:
    """Report how each segment follows the one before it, in sequence order (spec section 7.6), and
    whether the audit log explains each hole (``deletions``)."""
    before: segfile.ChainLink | None = None  # the one walked before ``previous``
    previous: segfile.ChainLink | None = None
    previous_path: Path | None = None
    for link, path in segfile.chain_order(links):
        status = segfile.link_status(previous, link, before=before)
        where = f"{path} (sequence {link.sequence})"
        after = f"sequence {previous.sequence}" if previous is not None else ""
        hole = _hole_before(previous, previous_path, link, path)
        missing = _check_hole(hole, where, explainer, report)
        reused = explainer.reused(link.sequence)
        if reused is not None:
            report.problems.append(f"{where}: the audit log records {reused} removed with this sequence "
                                   "number: two files claim it (the camera's chain was started again, or did "
                                   "not go on past the removed one)")
        if hole is not None and status != segfile.LINK_SKIP:  # a skip's link is checked: it is here
            status = _check_recorded_link(link, where, after, status, missing is None, explainer, report)
        if status == segfile.LINK_BROKEN:
            report.problems.append(f"{where}: hash chain broken: prev_digest is not the digest of {after}")
        elif status == segfile.LINK_DUPLICATE:
            report.problems.append(f"{where}: a second segment with this sequence number: the chain forked")
        elif status == segfile.LINK_UNCONFIRMED:
            report.notes.append(f"{where}: link not confirmed: {after} before it is damaged")
        elif status == segfile.LINK_PAST:
            assert before is not None and previous is not None
            report.notes.append(f"{where}: {segfile.past_note(before, previous)}")
        elif missing is None:
            note = _explained_note(status, after, hole)
            if note:
                report.notes.append(f"{where}: {note}")
        if status != segfile.LINK_DUPLICATE:  # a fork: the walk goes on from the first of the two
            before, previous, previous_path = segfile.walked_before(status, before, previous), link, path


def _check_hole(hole: Hole | None, where: str, explainer: _Explainer, report: VerifyReport) -> Missing | None:
    """Report the numbers of ``hole`` nobody explains (a note while a .partial here may still account for
    them: the next start recovers it or sets it aside, and records it); returns what the log leaves
    unexplained."""
    missing = explainer.unexplained(hole) if hole is not None else None
    if hole is None or missing is None:
        return None
    if explainer.pending_explains(hole):
        report.notes.append(f"{where}: sequence(s) {_span(hole)} before it not here, but a .partial is (the "
                            "next start recovers it or sets it aside)")
    elif (left := explainer.unaccounted(hole)) is not None:  # else unreadable files here name them
        report.problems.append(f"{where}: {explainer.problem(left)}")
    return missing


def _check_recorded_link(link: segfile.ChainLink, where: str, after: str, status: str, explained: bool,
                         explainer: _Explainer, report: VerifyReport) -> str:
    """A segment whose predecessor is not here links to the digest the audit log records for that one,
    if it records one (past the numbers set aside at start-up, whose files have no digest to link to).
    Returns the status to report: ``LINK_RECORDED`` when the record confirms the link."""
    before = explainer.linked_before(link.sequence)
    recorded = explainer.recorded_digest(before)
    if recorded is None:
        return status
    if link.prev_digest.hex() != recorded:
        report.problems.append(f"{where}: hash chain broken: prev_digest is not the digest the audit log "
                               f"records for sequence {before} (removed)")
        return status
    if not explained or status not in (segfile.LINK_FIRST, segfile.LINK_GAP):
        return status
    follows = f"follows {after}; " if status == segfile.LINK_GAP else ""
    set_aside = ""
    if before < link.sequence - 1:
        numbers = Missing(before + 1, link.sequence - 1, link.sequence - 1 - before)
        set_aside = f" (sequence(s) {numbers} after it were set aside at start-up)"
    report.notes.append(f"{where}: {follows}links to sequence {before}, deleted: the audit log records its "
                        f"removal and its digest{set_aside}")
    return LINK_RECORDED


def _explained_note(status: str, after: str, hole: Hole | None) -> str | None:
    """What to note about a link whose hole (if any) the audit log explains."""
    if status == segfile.LINK_GAP:
        return (f"follows {after}; the segments numbered in between are not here (their removal is in the "
                "audit log)")
    if status == segfile.LINK_SKIP and hole is not None:
        return (f"follows {after} directly; sequence(s) {_span(hole)} in between were never sealed: set "
                "aside at start-up (the audit log records it)")
    if status == segfile.LINK_FIRST:
        return "first segment here; the ones before it are gone (their removal is in the audit log)"
    if status == segfile.LINK_START and hole is not None:
        return (f"the camera's first segment; sequence(s) {_span(hole)} before it were never sealed: set "
                "aside at start-up (the audit log records it)")
    return None


def _span(hole: Hole) -> Missing:
    return Missing(hole.first, hole.last, hole.count)


def _check_head(head: ChainHead, links: list[tuple[segfile.ChainLink, Path]], explainer: _Explainer,
                report: VerifyReport) -> None:
    """A head seen earlier: the segment with its sequence is here with its digest, or its removal (and
    that of every segment up to it) is in the audit log."""
    at = [(link, path) for link, path in links if link.sequence == head.sequence]
    if at:
        if any(link.digest is not None and link.digest.hex() == head.digest for link, _ in at):
            report.notes.append(f"chain head {head} seen earlier: confirmed")
        else:
            report.problems.append(f"{at[0][1]} (sequence {head.sequence}): not the segment of the chain "
                                   f"head {head} seen earlier: replaced, or the chain was started again")
        return
    recorded = explainer.recorded_digest(head.sequence)
    if recorded is not None and recorded != head.digest:
        report.problems.append(f"camera {head.camera}: the audit log records sequence {head.sequence} "
                               f"removed with digest {recorded}, not the chain head {head} seen earlier: "
                               "the chain was started again, or the log rewritten")
        return
    newest = max(links, key=lambda item: item[0].sequence, default=None)
    if newest is not None and newest[0].sequence > head.sequence:
        report.notes.append(f"chain head {head} seen earlier: its segment is no longer here (see the chain "
                            "walk for its removal)")
        return
    first = 0 if newest is None else newest[0].sequence + 1
    hole = Hole(first, head.sequence, None if newest is None else start_ns_from_name(newest[1]), None)
    missing = explainer.unexplained(hole)
    left = explainer.unaccounted(hole)
    if left is not None:
        report.problems.append(f"camera {head.camera}: the newest {explainer.problem(left)} (chain head "
                               f"{head} seen earlier)")
    elif missing is not None:  # files here whose header cannot be read may be these: each is a problem
        report.notes.append(f"chain head {head} seen earlier: not confirmed: a file here whose header cannot "
                            "be read may be its segment (see its problem)")
    else:
        report.notes.append(f"chain head {head} seen earlier: its segments up to it were removed (the audit "
                            "log records it)")


def _check_catalog(data_dir: Path, camera: str | None, on_disk: set[str], found: dict[str, _Found],
                   removals: dict[str, CameraRemovals] | None, report: VerifyReport) -> None:
    """The catalog (a cache of the files) against them: every row's file is here with the row's digest,
    or its removal is in the audit log; every file has a row (else it is adopted at the next start)."""
    if not (data_dir / CATALOG_NAME).exists():
        return None
    from .catalog import Catalog

    cat = Catalog.open_readonly(data_dir)
    try:
        rows = {r.path: r for r in cat.segments(camera=camera)}
    finally:
        cat.close()
    for rel in sorted(set(rows) - on_disk):
        row = rows[rel]
        cam = (removals or {}).get(row.camera)
        if cam is not None and (row.sequence in cam.sequences or rel in cam.by_path):
            report.notes.append(f"{data_dir / rel}: deleted (the audit log records it); its catalog row goes "
                                "at the next sweep")
        elif (data_dir / rel).exists():
            report.notes.append(f"{data_dir / rel}: sealed while this verify ran")  # a live recorder
        else:
            why = "the audit log does not record its removal" if removals is not None else "no audit log"
            report.problems.append(f"{data_dir / rel} (sequence {row.sequence}): in the catalog but the file "
                                   f"is missing, and {why}")
    for rel in sorted(set(rows) & on_disk):
        row, seen = rows[rel], found.get(rel)
        if seen is not None and seen.intact and seen.digest is not None and seen.digest != row.digest:
            report.problems.append(f"{data_dir / rel}: the catalog's digest {row.digest} is not the file's "
                                   f"{seen.digest}: the file was replaced after it was catalogued (or the "
                                   "catalog edited)")
    for extra in sorted(on_disk - set(rows)):
        report.notes.append(f"{data_dir / extra}: not in the catalog (adopted at next start)")


def _check_missing_at_start_up(data_dir: Path, camera: str | None, on_disk: set[str],
                               removals: dict[str, CameraRemovals] | None, report: VerifyReport) -> None:
    """Files that start-up found gone from under their catalog rows (``segments_missing``): removed
    without a record, whichever end of the chain they were at."""
    for cam_name, cam in sorted((removals or {}).items()):
        if camera is not None and cam_name != camera:
            continue
        for rel in sorted(cam.missing_paths - on_disk - set(cam.by_path)):
            report.problems.append(f"{data_dir / rel}: found missing at a start-up (audit line "
                                   "segments_missing): removed without a deletion record")
