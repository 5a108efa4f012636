"""Export: decrypt segments and remux their video, without re-encoding, into one standard MP4 (with their
kept audio: ``exportaudio``).

Decisions (also stated in the manifest):

- **Bad segments are reported, not hidden.** Each segment is checked (framing, trailer hash and device
  signature, then every chunk authenticated while decrypting, strictly). A segment that fails is left
  out of the MP4, named with the reason in the manifest and in ``ExportResult.problems``, and the export
  goes on with the next one. A break in the hash chain is reported the same way.
- **Chain order.** A camera's segments go into the MP4 in the order of their sequence numbers (from the
  authenticated headers), not of their names; each one's link to the one before is stated
  (``segfile.link_status``).
- **Recovered segments are footage, and say so.** A segment closed by crash recovery ends at its last
  intact chunk; it is read strictly like any other and included, with ``state: "recovered"`` and a note
  in the manifest.
- **Only frames the device counted.** A segment's ``frames`` counts the frames whose bytes are all in
  it; its payload may end with (part of) one more frame when it was cut short. Exactly ``frames`` frames
  go into the MP4; the rest is counted in ``frames_left_out``.
- **Real time, gaps kept.** Contiguous segments follow each other frame by frame; where footage is
  missing (the camera was down, a segment was left out) the MP4's timestamps jump by the gap, so a
  player's clock never glues two moments together. Every gap is listed with its reason
  (``exporttimeline.find_gaps``: the catalog's, else a segment left out, else unknown).
- **Trimmed without re-encoding.** With a requested range, the first frame at or after its start is
  presented at 0; the frames of its GOP before it get negative timestamps, for which FFmpeg's MP4 muxer
  writes an edit list that hides them; nothing at or after the range's end is kept. The manifest states
  the first and last frame shown and the frames kept for decoding only.
- **No plaintext in the data directory.** A segment is decrypted into memory and demuxed from there; the
  only files written are the MP4 (through a temporary name, then renamed) and its manifest, both 0600.
- **Every export says who and why.** ``ExportAccess`` (by, reason) is required and goes into the manifest;
  ``origin`` says where the segments came from (a data directory, a bundle, a store).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import __version__, segfile
from .errors import EdgerecError, SegmentError, UsageError
from .exportaudio import AudioExport
from .exporttimeline import GAP_MIN_NS, ExportGap, KnownGap, LeftOut, find_gaps, keep_range
from .fsutil import create_private
from .payloadstreams import PayloadStreams, parse_declaration
from .redact import redact_obj
from .timefmt import NS_PER_S, rfc3339

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 2  # 2: the output keeps real time, is trimmed, lists its gaps
REASON_MAX_CHARS = 500
# faststart: the index at the front, so that it plays while it downloads. Video in milliseconds: an MP4
# sample's duration is 32 bits, and the frame before a gap lasts the whole gap (at 90 kHz, 13 h at most;
# in ms, 49 days).
VIDEO_TIMESCALE = 1000
MP4_OPTIONS = {"movflags": "+faststart", "video_track_timescale": str(VIDEO_TIMESCALE)}
MAX_JUMP_NS = 24 * 86_400 * NS_PER_S  # a longer gap is shortened to this in the output's clock
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
    chain: str | None = None  # segfile.link_status relative to the segment before it in this export
    frames: int = 0  # video frames taken into the MP4
    frames_left_out: int = 0  # demuxed beyond the segment's own frame count (a frame cut by a crash)
    output_start_s: float | None = None  # where this segment begins in the MP4
    note: str | None = None  # e.g. why a recovered segment is shorter than it was meant to be


@dataclass(frozen=True)
class ExportAccess:
    """Who exports and why: required for every export, written into its manifest (and, for a data
    directory given by its config, the device's audit log)."""

    by: str
    reason: str

    def __post_init__(self) -> None:
        reason = self.reason.strip()
        if not reason:
            raise UsageError("an export needs a reason (--reason): why this footage is looked at")
        if len(reason) > REASON_MAX_CHARS:
            raise UsageError(f"--reason is {len(reason)} characters; at most {REASON_MAX_CHARS}")
        if not self.by.strip():
            raise UsageError("an export needs a name (--by): who looks at this footage")
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "by", self.by.strip())

    def to_json_dict(self) -> dict[str, str]:
        return {"by": self.by, "reason": self.reason}


def os_user() -> str:
    """The name of the user running this process (the default of ``--by``), on any OS."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises OSError or KeyError depending on the version
        raise UsageError("cannot tell which user runs this (no login name): give --by NAME") from None


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest_path: Path
    segments: tuple[SegmentReport, ...]
    frames: int
    duration_s: float
    problems: tuple[str, ...] = field(default=())
    access: ExportAccess | None = None
    origin: Mapping[str, Any] | None = None
    gaps: tuple[ExportGap, ...] = field(default=())
    from_ns: int | None = None  # the requested range (None: the segments' own)
    to_ns: int | None = None
    first_frame_ns: int | None = None  # wall clock time of the first frame shown (at 0 in the MP4)
    last_frame_ns: int | None = None  # ... and of the last one
    preroll_frames: int = 0  # decoded but not shown: the first GOP's frames before --from
    preroll_from_ns: int | None = None  # wall clock time of the first of them

    @property
    def segments_ok(self) -> int:
        return sum(1 for s in self.segments if s.included)


def manifest_path_for(out: Path) -> Path:
    return out.with_name(out.name + MANIFEST_SUFFIX)


PROVISIONAL_NOTE = ("a provisional copy of a segment that was being written: every chunk authenticated, "
                    "no device signature (the device sealed the segment later, or never)")
OUTSIDE_NOTE = "none of its frames is in the requested range"
RECOVERED_NOTE = ("recovered after a crash: it ends at its last intact chunk; the footage after it was lost "
                  "with the power")


def export_order(paths: Sequence[Path]) -> list[tuple[Path, segfile.Header | None]]:
    """The segments in chain order: each camera's by sequence number (cameras in the order they first
    appear); files whose header cannot be read come last (they are reported, not exported)."""
    headers: list[tuple[Path, segfile.Header | None]] = []
    for raw in paths:
        path = Path(raw)
        try:
            headers.append((path, segfile.read_header(path)))
        except (SegmentError, OSError):
            headers.append((path, None))
    cameras: dict[str, int] = {}
    for _, header in headers:
        if header is not None:
            cameras.setdefault(header.meta.camera, len(cameras))
    readable = sorted(((p, h) for p, h in headers if h is not None),
                      key=lambda item: (cameras[item[1].meta.camera], item[1].meta.sequence))
    return readable + [(p, h) for p, h in headers if h is None]


def _fraction(value: Any) -> Fraction | None:
    if value is None or not value:
        return None
    return Fraction(int(value.numerator), int(value.denominator))


# ----- the MP4 writer -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Muxed:
    """What one segment put into the MP4."""

    frames: int  # packets muxed (0: none of its frames is in the requested range)
    output_start_s: float  # where its first keyframe is presented in the MP4
    left_out: int  # demuxed beyond the segment's own frame count
    footage: tuple[int, int] | None = None  # (first frame shown, end of the last frame), wall clock ns


class _Mp4Remuxer:
    """Appends the video packets of one TS payload after another on a timeline that keeps real time:
    contiguous segments follow each other frame by frame; after a hole in the footage the timestamps jump
    by the hole's length. Trimmed to [from_ns, to_ns): the first frame at or after ``from_ns`` is
    presented at 0, the frames of its GOP before it get negative times (FFmpeg's MP4 muxer then writes an
    edit list that hides them), and frames from ``to_ns`` on are left out."""

    def __init__(self, path: Path, from_ns: int | None = None, to_ns: int | None = None):
        self.path = path
        self.from_ns = from_ns
        self.to_ns = to_ns
        self._container: Any = None
        self._stream: Any = None
        self._params: tuple[str, int, int] | None = None
        self._next_dts: int | None = None  # where the next segment starts, in the output time base
        self._last_dts: int | None = None
        self._time_base: Fraction | None = None
        self.frames = 0
        self.end_ts = 0
        self.origin_ns: int | None = None  # wall clock time of the frame presented at 0
        self.last_frame_ns: int | None = None
        self.preroll_frames = 0  # decoded, not shown: the GOP's frames before the first one shown
        self.preroll_from_ns: int | None = None
        self._audio: AudioExport | None = None
        self._video_shift = 0  # how far the last segment's video was moved, in its time base

    def params_of(self, stream: Any) -> tuple[str, int, int]:
        ctx = stream.codec_context
        return (ctx.name, int(ctx.width or 0), int(ctx.height or 0))

    def compatible(self, stream: Any) -> bool:
        return self._params is None or self.params_of(stream) == self._params

    def append(self, payload: bytes, max_frames: int, start_ns: int,
               declared: PayloadStreams | None = None) -> _Muxed:
        """Remux the first ``max_frames`` video frames of one segment's TS payload (recorded from
        ``start_ns``, the wall clock time of its first keyframe), as far as they are in range, and its
        audio as ``declared`` (the header's codec field) over the same stretch."""
        declared = declared or PayloadStreams("")
        with av.open(io.BytesIO(payload), "r", format="mpegts") as ts:
            if not ts.streams.video:
                raise ValueError("no video stream in the decrypted payload")
            in_stream = ts.streams.video[0]
            if not self.compatible(in_stream):
                raise ValueError(f"stream parameters {self.params_of(in_stream)} differ from the first "
                                 f"segment's {self._params}; export it separately")
            packets = [p for p in ts.demux(in_stream) if p.size and p.dts is not None]
            left_out = max(0, len(packets) - max_frames)
            del packets[max_frames:]
            if not packets:
                raise ValueError("no video packets in the decrypted payload")
            walls = _walls(packets, start_ns)
            kept = keep_range(walls, [bool(p.is_keyframe) for p in packets], self.from_ns, self.to_ns)
            if kept is None:
                return _Muxed(0, 0.0, left_out)
            first, end = kept
            until = _video_end(packets[first:end])  # before muxing rewrites the packets' times
            if self._container is None:
                self._open(in_stream)
                self._open_audio(ts, declared)
            muxed = self._mux_segment(packets[first:end], walls[first:end], in_stream, left_out)
        self._mux_audio(payload, declared, until)
        return muxed

    def _open_audio(self, ts: Any, declared: PayloadStreams) -> None:
        """The MP4's audio stream, when its first segment has kept audio (before anything is muxed)."""
        self._audio = AudioExport.for_payload(self._container, ts, declared)

    def _mux_audio(self, payload: bytes, declared: PayloadStreams, until: int) -> None:
        """One segment's audio up to where its video taken ends, moved as its video was
        (``_video_shift``); audio that would land before the MP4's start is left out."""
        if self._audio is not None and self._time_base is not None:
            self._audio.mux_segment(payload, declared, self._video_shift, self._time_base, until)

    def _open(self, template: Any) -> None:
        # FFmpeg would create it 0666 less the umask: decrypted footage is for the one who exported it.
        os.close(create_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        self._container = av.open(str(self.path), "w", format="mp4", options=dict(MP4_OPTIONS))
        self._stream = self._container.add_stream_from_template(template)
        tag_for_apple_players(self._stream)
        self._params = self.params_of(template)
        self._time_base = _fraction(template.time_base) or Fraction(1, 90_000)

    def _mux_segment(self, packets: list[Any], walls: list[int], in_stream: Any, left_out: int) -> _Muxed:
        tb = _fraction(packets[0].time_base) or self._time_base
        assert tb is not None and self._time_base is not None
        frame_ticks = _frame_ticks(packets, in_stream, tb)
        shift = self._video_shift = self._shift_for(packets, walls, tb)
        min_step = max(1, math.ceil(1 / (VIDEO_TIMESCALE * tb)))  # one tick of the MP4's video track
        output_start = _pts(packets[0]) + shift  # before the loop below rewrites the packets' times
        last_dts = self._last_dts if self._last_dts is not None else packets[0].dts + shift - min_step
        end = None
        frames = 0
        for packet in packets:
            dts = packet.dts + shift
            pts = _pts(packet) + shift
            if dts < last_dts + min_step:  # never hand the muxer a step backwards (nor one it rounds away)
                dts = last_dts + min_step
            pts = max(pts, dts)
            duration = packet.duration if packet.duration and packet.duration > 0 else frame_ticks
            end = max(end if end is not None else pts, pts + duration, dts + duration)
            packet.dts, packet.pts = dts, pts
            packet.time_base = tb
            packet.stream = self._stream
            self._container.mux(packet)
            last_dts = dts
            frames += 1
        # Decode times continue one frame after the last one: with B-frames the presentation times run
        # ahead of the decode times, so continuing from them would open a gap at every segment boundary.
        self._next_dts = last_dts + frame_ticks
        self._last_dts = last_dts
        self.frames += frames
        self.end_ts = max(self.end_ts, end or 0)
        self._time_base = tb
        assert self.origin_ns is not None
        shown = [w for w in walls if w >= self.origin_ns]
        frame_ns = int(frame_ticks * tb * NS_PER_S)
        self.last_frame_ns = max(walls + ([self.last_frame_ns] if self.last_frame_ns is not None else []))
        footage = (min(shown), max(walls) + frame_ns) if shown else None
        return _Muxed(frames, float(output_start * tb), left_out, footage)

    def _shift_for(self, packets: list[Any], walls: list[int], tb: Fraction) -> int:
        """How far this segment's timestamps move in the output. The first segment puts its first frame
        in range at 0; a later one follows the previous one frame by frame (the recording was
        continuous), unless the wall clock says that footage is missing in between: then it sits where
        real time puts it, and the timestamps jump by the gap."""
        if self.origin_ns is None:
            origin = min((i for i, w in enumerate(walls) if self.from_ns is None or w >= self.from_ns),
                         key=lambda i: walls[i])
            self.origin_ns = walls[origin]
            self.preroll_frames = sum(1 for w in walls if w < self.origin_ns)
            self.preroll_from_ns = min(walls) if self.preroll_frames else None
            return -_pts(packets[origin])
        assert self._next_dts is not None
        continuous = self._next_dts - packets[0].dts
        real = round(Fraction(walls[0] - self.origin_ns, NS_PER_S) / tb) - _pts(packets[0])
        if (real - continuous) * tb * NS_PER_S <= GAP_MIN_NS:
            return continuous
        return min(real, continuous + round(Fraction(MAX_JUMP_NS, NS_PER_S) / tb))

    @property
    def duration_s(self) -> float:
        return float(self.end_ts * self._time_base) if self._time_base else 0.0

    @property
    def opened(self) -> bool:
        return self._container is not None

    def close(self) -> None:
        if self._container is not None:
            audio, self._audio = self._audio, None
            if audio is not None:
                audio.finish()
            self._container.close()
            self._container = None


def _video_end(packets: list[Any]) -> int:
    """Where the video taken from a segment ends (TS ticks): the end of its last frame shown."""
    return max((p.pts if p.pts is not None else p.dts) + max(p.duration or 0, 0) for p in packets)


def tag_for_apple_players(stream: Any) -> None:
    """H.265 in MP4 as ``hvc1`` (parameter sets in the sample description), which Apple players require;
    FFmpeg's default ``hev1`` they refuse to open. (An output stream's codec is the encoder, ``libx265``:
    its canonical name is the codec's.)"""
    if stream.codec_context.codec.canonical_name == "hevc":
        stream.codec_context.codec_tag = "hvc1"


def _pts(packet: Any) -> int:
    return int(packet.pts if packet.pts is not None else packet.dts)


def _walls(packets: list[Any], start_ns: int) -> list[int]:
    """Each packet's wall clock time: the segment's start is its first keyframe's (first in decode order)
    presentation time, as the recorder stamped it; the stream's own timestamps place the rest."""
    tb = _fraction(packets[0].time_base) or Fraction(1, 90_000)
    pts0 = _pts(packets[0])
    return [start_ns + (_pts(p) - pts0) * tb.numerator * NS_PER_S // tb.denominator for p in packets]


def _frame_ticks(packets: list[Any], stream: Any, tb: Fraction) -> int:
    """One frame's duration: the smallest positive step between decode times, else the stream's rate."""
    steps = [b.dts - a.dts for a, b in zip(packets, packets[1:], strict=False) if b.dts > a.dts]
    if steps:
        return min(steps)
    rate = _fraction(stream.average_rate) or DEFAULT_FRAME_RATE
    return max(1, round(1 / (rate * tb)))


# ----- one segment --------------------------------------------------------------------------------
def _read_segment(path: Path, private_key: X25519PrivateKey) -> tuple[segfile.SegmentCheck, bytes | None]:
    """Check a segment (keyless walk: framing, hashes, signature) and, when that passes, decrypt its
    payload into memory strictly (recovered segments allowed). Raises SegmentError when decryption fails;
    returns no payload when the keyless check already failed. A provisional copy from a store (the
    complete chunks of a segment that was being written, docs/offload.md) has no trailer to check: every
    chunk must authenticate instead."""
    if path.name.endswith(segfile.PARTIAL_SUFFIX):
        info, payload = segfile.read_provisional(path, private_key)
        header = segfile.read_header(path)
        return segfile.SegmentCheck(path, (), header, info.digest, info.state, info), payload
    check = segfile.check_segment(path)
    if not check.ok:
        return check, None
    return check, b"".join(segfile.decrypt(path, private_key, allow_recovered=True))


def _report_for(path: Path, check: segfile.SegmentCheck | None, **fields: Any) -> SegmentReport:
    if check is None or check.header is None:
        return SegmentReport(path=str(path), **fields)
    meta = check.header.meta
    common: dict[str, Any] = dict(
        path=str(path), digest=check.digest.hex() if check.digest else None, sequence=meta.sequence,
        device_id=meta.device_id, camera=meta.camera, start=rfc3339(meta.start_ns), start_ns=meta.start_ns,
        state=check.state, clock_synced=meta.clock_synced)
    if check.info is not None:
        common.update(end=rfc3339(check.info.end_ns), end_ns=check.info.end_ns)
    return SegmentReport(**common, **fields)


# ----- the export ---------------------------------------------------------------------------------
def export_segments(
    segment_paths: Sequence[Path],
    private_key: X25519PrivateKey,
    out: Path,
    *,
    access: ExportAccess,
    origin: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    expected_digests: Sequence[str | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    known_gaps: Sequence[KnownGap] = (),
) -> ExportResult:
    """Decrypt ``segment_paths`` (in the order given: time order) into one MP4 at ``out`` plus
    ``out.manifest.json``. Raises EdgerecError when not a single segment could be exported.

    ``access`` (who and why) and ``origin`` (where the segments came from) go into the manifest.
    ``labels``: how the manifest names each segment (default: its path; a bundle or a store names it by
    its member or object name). ``expected_digests``: the SHA-256 (hex) a catalog, a bundle manifest or a
    store says each segment has; a segment with another digest is left out as a substitute.

    ``from_ns``/``to_ns``: the requested range; the MP4 shows the frames in it (module docstring of
    ``exporttimeline``). ``known_gaps``: the gaps the device recorded for this camera (its catalog), which
    give the reasons of the gaps the manifest lists."""
    out = Path(out)
    if not out.parent.is_dir():
        raise EdgerecError(f"cannot write {out}: the directory {out.parent} does not exist")
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        log.info("export writes MP4 whatever the suffix out=%s", out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if from_ns is not None and to_ns is not None and to_ns <= from_ns:
        raise UsageError("the end of the range must be after its start")
    remuxer = _Mp4Remuxer(tmp, from_ns, to_ns)
    reports: list[SegmentReport] = []
    problems: list[str] = []
    # per camera: the segment walked last, and the one walked before it (``segfile.walked_before``)
    walked: dict[str, tuple[segfile.ChainLink, segfile.ChainLink | None]] = {}
    footage: list[tuple[int, int]] = []
    total = len(segment_paths)
    try:
        by_path = {str(Path(p)): i for i, p in enumerate(segment_paths)}
        for done, (path, header) in enumerate(export_order(segment_paths), start=1):
            i = by_path[str(path)]
            label = labels[i] if labels is not None else str(path)
            expected = expected_digests[i] if expected_digests is not None else None
            camera = header.meta.camera if header is not None else None
            previous, before = walked.get(camera, (None, None)) if camera is not None else (None, None)
            report, link, shown = _export_one(path, private_key, remuxer, previous, expected, before=before)
            if shown is not None:
                # A segment not cut at --to ends where the device says it ended (after its last frame).
                end_ns = report.end_ns
                if end_ns is not None and (to_ns is None or end_ns <= to_ns):
                    shown = (shown[0], max(shown[1], end_ns))
                footage.append(shown)
            report = replace(report, path=label)
            reports.append(report)
            if report.verification != "ok":
                problems.append(f"{label}: {report.verification}")
            if report.chain == segfile.LINK_BROKEN:
                problems.append(f"{label}: hash chain broken (it does not follow the segment numbered just "
                                f"before it; that one was replaced or altered)")
            elif report.chain == segfile.LINK_DUPLICATE:
                problems.append(f"{label}: a second segment with sequence {report.sequence}: "
                                "the chain forked")
            if link is not None and camera is not None and report.chain != segfile.LINK_DUPLICATE:
                walked[camera] = (link, segfile.walked_before(report.chain or "", before, previous))
            if progress is not None:
                progress(done, total)
        if not remuxer.opened:
            if problems:
                raise EdgerecError(f"nothing exported: no segment could be read ({problems[0]})")
            if reports:
                raise EdgerecError(f"nothing exported: none of the {len(reports)} segments has a frame in "
                                   "the requested range")
            raise EdgerecError("nothing exported: no segments given")
        remuxer.close()
        _fsync_file(tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(Exception):
            remuxer.close()
        tmp.unlink(missing_ok=True)
    left_out = [LeftOut(r.start_ns, r.end_ns or r.start_ns, f"segment {r.path} left out: {r.verification}")
                for r in reports if r.verification != "ok" and r.start_ns is not None]
    gaps = find_gaps(footage, known_gaps, left_out, from_ns, to_ns)
    result = ExportResult(out=out, manifest_path=manifest_path_for(out), segments=tuple(reports),
                          frames=remuxer.frames, duration_s=remuxer.duration_s, problems=tuple(problems),
                          access=access, origin=origin, gaps=tuple(gaps), from_ns=from_ns, to_ns=to_ns,
                          first_frame_ns=remuxer.origin_ns, last_frame_ns=remuxer.last_frame_ns,
                          preroll_frames=remuxer.preroll_frames, preroll_from_ns=remuxer.preroll_from_ns)
    write_manifest(result)
    log.info("export written out=%s segments=%d of %d frames=%d gaps=%d problems=%d", out, result.segments_ok,
             total, result.frames, len(gaps), len(problems))
    return result


def _export_one(path: Path, private_key: X25519PrivateKey, remuxer: _Mp4Remuxer,
                previous: segfile.ChainLink | None, expected_digest: str | None = None, *,
                before: segfile.ChainLink | None = None,
                ) -> tuple[SegmentReport, segfile.ChainLink | None, tuple[int, int] | None]:
    """Check, decrypt and remux one segment; its manifest line, what the chain walk knows of it and
    the wall clock span of the frames it shows. ``expected_digest``: what the catalog, a bundle or a
    store says it is (another one is a substitute). ``previous`` and ``before``: the camera's segments
    walked last and before that one (``segfile.link_status``)."""
    try:
        check, payload = _read_segment(path, private_key)
    except SegmentError as exc:
        try:
            damaged = segfile.check_segment(path)  # what the chain walk can still learn from it
        except OSError:
            return _report_for(path, None, included=False, verification=exc.what), None, None
        return (*_failed(path, damaged, exc.what, previous, before), None)
    except OSError as exc:  # an error of the system, not of the file: left out, and named as unread
        unread = _report_for(path, None, included=False, verification=f"cannot read: {exc.strerror or exc}")
        return unread, None, None
    if payload is None:
        return (*_failed(path, check, check.problems[0].what, previous, before), None)
    assert check.info is not None
    if expected_digest is not None and check.info.digest.hex() != expected_digest.lower():
        del payload
        what = (f"digest {check.info.digest.hex()} is not the expected {expected_digest} "
                "(a different segment in its place)")
        return (*_failed(path, check, what, previous, before), None)
    link = segfile.ChainLink.of(check)
    assert link is not None
    chain = segfile.link_status(previous, link, before=before)
    note = {"recovered": RECOVERED_NOTE, segfile.STATE_PROVISIONAL: PROVISIONAL_NOTE}.get(check.state or "")
    try:
        declared = parse_declaration(check.header.meta.codec) if check.header is not None else None
        muxed = remuxer.append(payload, check.info.frames, check.info.meta.start_ns, declared)
    except (av.FFmpegError, ValueError) as exc:
        return _report_for(path, check, included=False, verification=f"cannot remux the video: {exc}",
                           chain=chain, note=note), link, None
    finally:
        del payload
    if muxed.frames == 0:
        return _report_for(path, check, included=False, verification="ok", chain=chain,
                           note=OUTSIDE_NOTE), link, None
    return _report_for(path, check, included=True, verification="ok", chain=chain, frames=muxed.frames,
                       frames_left_out=muxed.left_out, output_start_s=round(muxed.output_start_s, 6),
                       note=note), link, muxed.footage


def _failed(path: Path, check: segfile.SegmentCheck, what: str, previous: segfile.ChainLink | None,
            before: segfile.ChainLink | None) -> tuple[SegmentReport, segfile.ChainLink | None]:
    """A segment left out: its line names why; as a link it is damaged (its digest proves nothing)."""
    link = segfile.ChainLink.of(check)
    if link is None:
        return _report_for(path, check, included=False, verification=what), None
    link = segfile.ChainLink(link.sequence, link.prev_digest, link.digest, intact=False)
    return _report_for(path, check, included=False, verification=what,
                       chain=segfile.link_status(previous, link, before=before)), link


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
            "frames_shown": result.frames - result.preroll_frames,
            "duration_s": round(result.duration_s, 6),
            "starts_at": rfc3339(result.first_frame_ns),
        },
        "range": {
            "requested_from": rfc3339(result.from_ns),
            "requested_to": rfc3339(result.to_ns),
            "first_frame": rfc3339(result.first_frame_ns),
            "last_frame": rfc3339(result.last_frame_ns),
            "first_frame_ns": result.first_frame_ns,
            "last_frame_ns": result.last_frame_ns,
            "preroll_frames": result.preroll_frames,
            "preroll_from": rfc3339(result.preroll_from_ns),
        },
        "gaps": [g.to_json_dict() for g in result.gaps],
        "access": result.access.to_json_dict() if result.access is not None else None,
        "origin": dict(result.origin) if result.origin is not None else None,
        "policy": {
            "bad_segments": "left out of the output and listed here with the reason; the export goes on",
            "gaps": "kept: the output keeps real time, so where footage is missing its timestamps jump by "
                    "the gap's length (a player holds the last frame before it); every gap in the range "
                    f"longer than {GAP_MIN_NS / NS_PER_S:g} s, or recorded by the device, is listed in "
                    "gaps with its reason (the device's catalog; a segment left out; else unknown); a gap "
                    f"longer than {MAX_JUMP_NS // (86_400 * NS_PER_S)} days is shortened to that in the "
                    "output's clock",
            "trim": "the output shows the frames in [requested_from, requested_to): it starts with the "
                    "first frame at or after requested_from (first_frame, at 0 in the output) and ends "
                    "with last_frame; the frames of its group of pictures before it (preroll_frames) are "
                    "in the file for decoding only, hidden by an edit list; nothing is re-encoded",
            "order": "each camera's segments by sequence number; chain says how each follows the one "
                     "before it (ok, skip, gap, unconfirmed, first, start; broken and duplicate are "
                     "problems)",
            "recovered_segments": "included up to their last intact chunk, with state 'recovered' and a note",
            "frames": "a segment contributes exactly the frames it counts; frames_left_out counts the "
                      "(possibly cut) frame a crash left after them",
        },
        "segments": [asdict(s) for s in result.segments],
        "problems": list(result.problems),
    }
    path = result.manifest_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(create_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as f:
            json.dump(redact_obj(document), f, indent=2)
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
    # Read-write: Windows refuses to flush a descriptor opened read-only.
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
