"""Export: decrypt segments and remux their video, without re-encoding, into one standard MP4.

Decisions (also stated in the manifest):

- **Bad segments are reported, not hidden.** Each segment is checked (framing, trailer hash and device
  signature, then every chunk authenticated while decrypting, strictly; a segment marked ``recovered``
  after a crash is read up to its last good chunk). A segment that fails is left out of the MP4, named
  with the reason in the manifest and in ``ExportResult.problems``, and the export goes on with the next
  one. A break in the hash chain between two consecutive segments is reported the same way.
- **Gaps are closed.** The MP4's timeline is continuous: each segment follows the previous one directly,
  so a player shows the footage without frozen stretches. Where each segment sits in the MP4 and when
  it was really recorded are both in the manifest (``output_start_s`` and ``start``/``end``).
- **No plaintext in the data directory.** A segment is decrypted into memory and demuxed from there; the
  only files written are the MP4 (through a temporary name, then renamed) and its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import __version__, segfile
from .errors import EdgerecError, SegmentError
from .timefmt import rfc3339

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
MP4_OPTIONS = {"movflags": "+faststart"}  # index at the front: plays while it downloads
DEFAULT_FRAME_RATE = Fraction(25)
HASH_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class SegmentReport:
    """One segment's line in the manifest."""

    path: str
    included: bool
    verification: str  # "ok", or what is wrong
    digest: str | None = None  # SHA-256 of the segment file (the hash-chain link), hex
    sequence: int | None = None
    device_id: str | None = None
    camera: str | None = None
    start: str | None = None  # real recording time, RFC 3339 UTC
    end: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    state: str | None = None  # "sealed" | "recovered"
    clock_synced: bool | None = None
    chain: str | None = None  # "ok", "first" or "broken" (relative to the previous segment in the export)
    frames: int = 0  # video frames taken into the MP4
    output_start_s: float | None = None  # where this segment begins in the MP4


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest_path: Path
    segments: tuple[SegmentReport, ...]
    frames: int
    duration_s: float
    problems: tuple[str, ...] = field(default=())

    @property
    def segments_ok(self) -> int:
        return sum(1 for s in self.segments if s.included)


def manifest_path_for(out: Path) -> Path:
    return out.with_name(out.name + MANIFEST_SUFFIX)


def chain_status(previous: segfile.SealedSegment | None, current: segfile.SealedSegment) -> str:
    """Does ``current`` link to ``previous`` (the segment exported just before it)?"""
    if previous is None:
        return "first"
    if current.meta.camera == previous.meta.camera and current.meta.prev_digest == previous.digest:
        return "ok"
    return "broken"


def _fraction(value: Any) -> Fraction | None:
    if value is None or not value:
        return None
    return Fraction(int(value.numerator), int(value.denominator))


# ----- the MP4 writer -----------------------------------------------------------------------------------
class _Mp4Remuxer:
    """Appends the video packets of one TS payload after another, on one continuous timeline."""

    def __init__(self, path: Path):
        self.path = path
        self._container: Any = None
        self._stream: Any = None
        self._params: tuple[str, int, int] | None = None
        self._next_dts: int | None = None  # where the next segment starts, in the output time base
        self._time_base: Fraction | None = None
        self.frames = 0
        self.end_ts = 0

    def params_of(self, stream: Any) -> tuple[str, int, int]:
        ctx = stream.codec_context
        return (ctx.name, int(ctx.width or 0), int(ctx.height or 0))

    def compatible(self, stream: Any) -> bool:
        return self._params is None or self.params_of(stream) == self._params

    def append(self, payload: bytes) -> tuple[int, float]:
        """Remux one segment's TS payload; return (frames, where it starts in the MP4 in seconds)."""
        with av.open(io.BytesIO(payload), "r", format="mpegts") as ts:
            if not ts.streams.video:
                raise ValueError("no video stream in the decrypted payload")
            in_stream = ts.streams.video[0]
            if not self.compatible(in_stream):
                raise ValueError(f"stream parameters {self.params_of(in_stream)} differ from the first "
                                 f"segment's {self._params}; export it separately")
            packets = [p for p in ts.demux(in_stream) if p.size and p.dts is not None]
            if not packets:
                raise ValueError("no video packets in the decrypted payload")
            if self._container is None:
                self._open(in_stream)
            return self._mux_segment(packets, in_stream)

    def _open(self, template: Any) -> None:
        self._container = av.open(str(self.path), "w", format="mp4", options=dict(MP4_OPTIONS))
        self._stream = self._container.add_stream_from_template(template)
        self._params = self.params_of(template)
        self._time_base = _fraction(template.time_base) or Fraction(1, 90_000)

    def _mux_segment(self, packets: list[Any], in_stream: Any) -> tuple[int, float]:
        tb = _fraction(packets[0].time_base) or self._time_base
        assert tb is not None and self._time_base is not None
        frame_ticks = _frame_ticks(packets, in_stream, tb)
        base = packets[0].dts
        start = self._next_dts if self._next_dts is not None else 0
        shift = start - base
        last_dts = start - 1
        end = start
        frames = 0
        for packet in packets:
            dts = packet.dts + shift
            pts = (packet.pts if packet.pts is not None else packet.dts) + shift
            if dts <= last_dts:  # never hand the muxer a step backwards
                dts = last_dts + 1
            pts = max(pts, dts)
            duration = packet.duration if packet.duration and packet.duration > 0 else frame_ticks
            end = max(end, pts + duration, dts + duration)
            packet.dts, packet.pts = dts, pts
            packet.time_base = tb
            packet.stream = self._stream
            self._container.mux(packet)
            last_dts = dts
            frames += 1
        # Decode times continue one frame after the last one: with B-frames the presentation times run
        # ahead of the decode times, so continuing from them would open a gap at every segment boundary.
        self._next_dts = last_dts + frame_ticks
        self.frames += frames
        self.end_ts = max(self.end_ts, end)
        self._time_base = tb
        return frames, float(start * tb)

    @property
    def duration_s(self) -> float:
        return float(self.end_ts * self._time_base) if self._time_base else 0.0

    @property
    def opened(self) -> bool:
        return self._container is not None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _frame_ticks(packets: list[Any], stream: Any, tb: Fraction) -> int:
    """One frame's duration: the smallest positive step between decode times, else the stream's rate."""
    steps = [b.dts - a.dts for a, b in zip(packets, packets[1:], strict=False) if b.dts > a.dts]
    if steps:
        return min(steps)
    rate = _fraction(stream.average_rate) or DEFAULT_FRAME_RATE
    return max(1, round(1 / (rate * tb)))


# ----- one segment --------------------------------------------------------------------------------
def _read_segment(path: Path, private_key: X25519PrivateKey) -> tuple[segfile.SealedSegment, bytes]:
    """Check a segment and decrypt its payload into memory; raise SegmentError on any problem."""
    if path.name.endswith(segfile.PARTIAL_SUFFIX):  # a provisional copy from a store (docs/offload.md)
        return segfile.read_provisional(path, private_key)
    info = segfile.read_info(path)
    if info.state == "recovered":
        errors: list[SegmentError] = []
        payload = b"".join(segfile.decrypt(path, private_key, recover=True, errors=errors))
        if errors:
            raise errors[0]
    else:
        payload = b"".join(segfile.decrypt(path, private_key))
    return info, payload


def _report_for(path: Path, info: segfile.SealedSegment | None, **fields: Any) -> SegmentReport:
    if info is None:
        return SegmentReport(path=str(path), **fields)
    meta = info.meta
    return SegmentReport(
        path=str(path), digest=info.digest.hex(), sequence=meta.sequence, device_id=meta.device_id,
        camera=meta.camera, start=rfc3339(meta.start_ns), end=rfc3339(info.end_ns), start_ns=meta.start_ns,
        end_ns=info.end_ns, state=info.state, clock_synced=meta.clock_synced, **fields,
    )


# ----- the export ---------------------------------------------------------------------------------
def export_segments(
    segment_paths: Sequence[Path],
    private_key: X25519PrivateKey,
    out: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Decrypt ``segment_paths`` (in the order given: time order) into one MP4 at ``out`` plus
    ``out.manifest.json``. Raises EdgerecError when not a single segment could be exported."""
    out = Path(out)
    if not out.parent.is_dir():
        raise EdgerecError(f"cannot write {out}: the directory {out.parent} does not exist")
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        log.info("export writes MP4 whatever the suffix out=%s", out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    remuxer = _Mp4Remuxer(tmp)
    reports: list[SegmentReport] = []
    problems: list[str] = []
    previous: segfile.SealedSegment | None = None
    total = len(segment_paths)
    try:
        for done, raw_path in enumerate(segment_paths, start=1):
            path = Path(raw_path)
            report, info = _export_one(path, private_key, remuxer, previous)
            reports.append(report)
            if report.verification != "ok":
                problems.append(f"{path}: {report.verification}")
            elif report.chain == "broken":
                problems.append(f"{path}: hash chain broken (the previous segment of this export is not the "
                                f"one this segment follows; a segment is missing or was replaced)")
            if report.included:
                previous = info
            if progress is not None:
                progress(done, total)
        if not remuxer.opened:
            first = problems[0] if problems else "no segments given"
            raise EdgerecError(f"nothing exported: no segment could be read ({first})")
        remuxer.close()
        _fsync_file(tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(Exception):
            remuxer.close()
        tmp.unlink(missing_ok=True)
    result = ExportResult(out=out, manifest_path=manifest_path_for(out), segments=tuple(reports),
                          frames=remuxer.frames, duration_s=remuxer.duration_s, problems=tuple(problems))
    write_manifest(result)
    log.info("export written out=%s segments=%d of %d frames=%d problems=%d", out, result.segments_ok, total,
             result.frames, len(problems))
    return result


def _export_one(path: Path, private_key: X25519PrivateKey, remuxer: _Mp4Remuxer,
                previous: segfile.SealedSegment | None) -> tuple[SegmentReport, segfile.SealedSegment | None]:
    info: segfile.SealedSegment | None = None
    try:
        info, payload = _read_segment(path, private_key)
    except SegmentError as exc:
        return _report_for(path, info, included=False, verification=exc.what), None
    except OSError as exc:
        return _report_for(path, None, included=False, verification=f"cannot read: {exc.strerror}"), None
    chain = chain_status(previous, info)
    try:
        frames, output_start_s = remuxer.append(payload)
    except (av.FFmpegError, ValueError) as exc:
        return _report_for(path, info, included=False, verification=f"cannot remux the video: {exc}",
                           chain=chain), info
    finally:
        del payload
    return _report_for(path, info, included=True, verification="ok", chain=chain, frames=frames,
                       output_start_s=round(output_start_s, 6)), info


# ----- output files -------------------------------------------------------------------------------
def write_manifest(result: ExportResult) -> None:
    """Write ``OUT.manifest.json`` atomically: what went into the MP4, from where, and what did not."""
    document = {
        "manifest_version": MANIFEST_VERSION,
        "tool": f"edgerec {__version__}",
        "created": rfc3339(time.time_ns()),
        "output": {
            "path": str(result.out),
            "sha256": _sha256_file(result.out),
            "frames": result.frames,
            "duration_s": round(result.duration_s, 6),
        },
        "policy": {
            "bad_segments": "left out of the output and listed here with the reason; the export goes on",
            "gaps": "closed: segments follow each other directly in the output timeline; real times are "
                    "start/end, the position in the output is output_start_s",
        },
        "segments": [asdict(s) for s in result.segments],
        "problems": list(result.problems),
    }
    path = result.manifest_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
