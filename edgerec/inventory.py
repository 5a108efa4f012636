"""What footage a data directory holds: listing, whole-tree verification and time-range selection.

These work from the segment files themselves (the truth), so they also work on a copy of a data directory
taken off the device; the catalog, when present, adds gaps and is checked against the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import segfile
from .errors import SegmentError
from .humanize import local_time_text, plural
from .layout import (
    CATALOG_NAME,
    DEVICE_PUB_NAME,
    PARTIAL_SUFFIX,
    SEGMENT_GLOB,
    day_dir_name,
    start_ns_from_name,
)
from .timefmt import rfc3339


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
    opened to read its end.
    """
    named = [(start_ns_from_name(p), p) for p in segment_files(data_dir, camera)]
    files = [(s, p) for s, p in named if s is not None]
    chosen = []
    for i, (start, path) in enumerate(files):
        if i + 1 < len(files):
            end = files[i + 1][0]
        else:
            try:
                end = segfile.read_info(path).end_ns
            except SegmentError:
                end = start
        if start < to_ns and end > from_ns:
            chosen.append(path)
    return chosen


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


def verify_tree(data_dir: Path, *, private_key: Any = None, camera: str | None = None) -> VerifyReport:
    """Verify every segment file (framing, signature; with a key also every chunk), each camera's hash
    chain walked by sequence number, where each file lies, and the catalog against the files."""
    report = VerifyReport()
    device_key = _device_key(data_dir)
    if device_key is None:
        report.notes.append(f"no {DEVICE_PUB_NAME} in {data_dir}: signatures checked with the key in each "
                            "header")
    # The catalog first, then the files: a segment is sealed (its file in place) before it is catalogued,
    # so every row read now has its file by the time the files are listed, even while the daemon records.
    catalogued = _catalog_paths(data_dir, camera)
    on_disk: set[str] = set()
    for cam_dir in camera_dirs(data_dir, camera):
        links: list[tuple[segfile.ChainLink, Path]] = []
        for path in segment_files(data_dir, cam_dir.name):
            on_disk.add(str(path.relative_to(data_dir)))
            report.checked += 1
            check = segfile.check_segment(path, private_key=private_key, device_key=device_key)
            report.problems.extend(str(e) for e in check.problems)
            if check.state == "recovered" and check.ok:
                report.recovered.append(str(path))
                report.notes.append(f"{path}: recovered after a crash: it ends at its last intact chunk")
            link = segfile.ChainLink.of(check)
            if link is None:
                continue  # the header is unreadable: no sequence, no place in the chain (reported above)
            assert check.header is not None
            misplaced = name_problem(path, cam_dir, check.header.meta)
            if misplaced is not None:
                report.problems.append(f"{path}: {misplaced}")
            links.append((link, path))
        _walk_chain(links, report)
        for partial in sorted(cam_dir.glob(f"*/*{PARTIAL_SUFFIX}")):
            report.notes.append(f"{partial}: unfinished segment (recording, or recovered at next start)")
    if catalogued is not None:
        _check_catalog(data_dir, camera, catalogued, on_disk, report)
    return report


def _walk_chain(links: list[tuple[segfile.ChainLink, Path]], report: VerifyReport) -> None:
    """Report how each segment follows the one before it, in sequence order (spec section 7.6)."""
    previous: segfile.ChainLink | None = None
    for link, path in segfile.chain_order(links):
        status = segfile.link_status(previous, link)
        where = f"{path} (sequence {link.sequence})"
        after = f"sequence {previous.sequence}" if previous is not None else ""
        if status == segfile.LINK_BROKEN:
            report.problems.append(f"{where}: hash chain broken: prev_digest is not the digest of {after}")
        elif status == segfile.LINK_DUPLICATE:
            report.problems.append(f"{where}: a second segment with this sequence number: the chain forked")
        elif status == segfile.LINK_GAP:
            report.notes.append(f"{where}: follows {after}; the segments numbered in between are not here "
                                "(deleted by retention, or missing)")
        elif status == segfile.LINK_SKIP:
            report.notes.append(f"{where}: follows {after} directly; the numbers in between were never "
                                "closed (a segment lost to a failed recovery is in quarantine)")
        elif status == segfile.LINK_UNCONFIRMED:
            report.notes.append(f"{where}: link not confirmed: {after} before it is damaged")
        elif status == segfile.LINK_FIRST:
            report.notes.append(f"{where}: first segment here; the ones before it are gone (retention)")
        if status != segfile.LINK_DUPLICATE:  # a fork: the walk goes on from the first of the two
            previous = link


def _catalog_paths(data_dir: Path, camera: str | None) -> set[str] | None:
    """The catalogued segment paths (of ``camera``), read-only; None when there is no catalog."""
    if not (data_dir / CATALOG_NAME).exists():
        return None
    from .catalog import Catalog

    cat = Catalog.open_readonly(data_dir)
    try:
        return {r.path for r in cat.segments(camera=camera)}
    finally:
        cat.close()


def _check_catalog(data_dir: Path, camera: str | None, rows: set[str], on_disk: set[str],
                   report: VerifyReport) -> None:
    """``rows`` were read before the files were listed. A row whose file is gone may have been deleted by
    retention since (file first, then the row): it is a problem only if it is still catalogued and its
    file still absent when read again."""
    missing = rows - on_disk
    if missing:
        still = _catalog_paths(data_dir, camera) or set()
        missing = {m for m in missing if m in still and not (data_dir / m).exists()}
    for missing_path in sorted(missing):
        report.problems.append(f"{data_dir / missing_path}: in the catalog but the file is missing")
    for extra in sorted(on_disk - rows):
        report.notes.append(f"{data_dir / extra}: not in the catalog (adopted at next start)")
