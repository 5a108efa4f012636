"""Keyframe-aligned cutting of a packet stream into MPEG-TS segments, muxed straight into a byte sink.

The segmenter takes compressed packets with their arrival wall-clock time and muxes them with PyAV into
a file-like object whose ``write()`` goes to the segment sink (the encrypting ``SegmentWriter``); no
plaintext ever touches a file. A segment starts on a keyframe with valid timestamps and is cut at the
first keyframe at or after ``segment_seconds``; the packet that triggers a cut opens the next segment,
so nothing is lost or duplicated between segments.

Time: a *run* is the packets of one connection. With ``timeline="arrival"`` (live cameras) a segment
starts at the local wall-clock time its first keyframe arrived, and the stream's own timestamps measure
time inside it; a segment cut by the next keyframe ends where the next one starts, so a camera whose
clock runs fast or slow does not drift away from local time over a long connection. With
``timeline="stream"`` (a file ingested faster than real time) the run's first packet's arrival anchors
the stream's timestamps for the whole run, ``wall0 + (pts - pts0) * time_base``, so the file keeps its
real timeline. Timestamps are kept as the stream has them and only shifted when needed (a negative start,
a jump, a step backwards, a wrap) so that concatenated segments play continuously; a jump also cuts the
segment at the next keyframe, so a new segment starts cleanly on the repaired timeline. The repair rules
are pure functions (``repair_timestamps``) so they can be hardened alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Protocol, overload

import av

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# A forward step in decode timestamps larger than this beyond the arrival time that passed (or any step
# back by a frame or more) is a discontinuity: the stream is re-based to continue where it was.
MAX_TIMESTAMP_JUMP_S = 10.0
DEFAULT_FRAME_RATE = Fraction(25)
MUX_TIME_BASE = Fraction(1, 90_000)  # MPEG-TS counts in 90 kHz ticks


class _PlainRatio:
    """A ratio whose ``numerator`` and ``denominator`` are plain slots, for PyAV's ``Packet.time_base``
    setter, which reads just those two: a Fraction's are Python properties, two Python calls on every
    packet whose time base is set."""

    __slots__ = ("numerator", "denominator")

    def __init__(self, ratio: Fraction):
        self.numerator, self.denominator = ratio.numerator, ratio.denominator


_MUX_TIME_BASE_PLAIN = _PlainRatio(MUX_TIME_BASE)
TS_MUXER_OPTIONS = {"flush_packets": "1"}  # hand each packet's bytes to the sink at once
TIMELINES = ("arrival", "stream")
# A run's first packets are held until their timestamps are known (RTSP gives the first keyframe none, and
# with B-frames the next ones no dts) and, on the arrival timeline, until this much local time has passed:
# packets that FFmpeg buffered while probing arrive in one burst, so the first keyframe's arrival is late.
RUN_START_HOLD_S = 0.5
RUN_START_BURST_S = 1.0  # ...or until the held packets span this much stream time
RUN_START_MAX_PACKETS = 250  # never hold more (a stream whose timestamps never appear)
BACKLOG_MIN_S = 0.1  # a first keyframe later than this behind the packets after it came in a backlog


class SegmentSink(Protocol):
    """Where a segment's bytes go (``SegmentWriter`` fulfils this)."""

    def write(self, data: bytes) -> Any: ...

    def note(self, end_ns: int, frames: int) -> None: ...


@dataclass(frozen=True)
class SegmentSummary:
    """One finished segment, as the segmenter saw it."""

    start_ns: int
    end_ns: int
    frames: int
    bytes: int
    first_pts: int  # in the run's time base, after repair
    time_base: Fraction


@dataclass(frozen=True)
class SegmenterCounters:
    dropped_leading: int = 0  # before the first keyframe with timestamps (of a run or after a refusal)
    dropped_no_sink: int = 0  # while ``open_sink`` refused to start a segment (disk full)
    repaired: int = 0  # timestamps changed by ``repair_timestamps``
    discontinuities: int = 0  # jumps that re-based the stream
    mux_errors: int = 0  # packets the muxer refused (dropped)
    segments: int = 0
    audio_dropped: int = 0  # audio packets outside a segment or with unusable timestamps


class SinkFailed(Exception):
    """The sink's ``write`` raised; ``__cause__`` is the original error (I/O error, disk full...)."""


# ----- timestamp repair (pure) ---------------------------------------------------------------------
@dataclass(frozen=True)
class TimestampState:
    """What the repair of the next packet needs to know (all in the run's time base)."""

    offset: int = 0  # added to every incoming timestamp
    last_dts: int | None = None  # last dts handed on (after offset)
    frame_ticks: int = 1  # one frame's duration, for continuing after a jump
    last_arrival_ns: int | None = None


@dataclass(frozen=True)
class Repaired:
    pts: int
    dts: int
    state: TimestampState
    changed: bool = False
    rebased: bool = False


def repair_timestamps(
    state: TimestampState,
    pts: int | None,
    dts: int | None,
    arrival_ns: int,
    time_base: Fraction,
    max_jump_s: float = MAX_TIMESTAMP_JUMP_S,
) -> Repaired | None:
    """Make one packet's timestamps usable by the muxer: present, strictly increasing dts, pts >= dts.

    Returns None when nothing can be made of the packet (no timestamp and nothing before it).
    """
    changed = rebased = False
    if dts is None and pts is None:
        if state.last_dts is None:
            return None
        out_dts = state.last_dts + state.frame_ticks
        return Repaired(out_dts, out_dts, replace(state, last_dts=out_dts, last_arrival_ns=arrival_ns), True)
    if dts is None:
        dts = pts
        changed = True
    assert dts is not None
    if pts is None:
        pts = dts
        changed = True
    offset = state.offset
    out_dts = dts + offset
    if state.last_dts is not None:
        tick_s = time_base.numerator / time_base.denominator  # float: jump detection needs no exactness
        step_s = (out_dts - state.last_dts) * tick_s
        waited_s = 0.0
        if state.last_arrival_ns is not None:
            waited_s = max(0.0, (arrival_ns - state.last_arrival_ns) / NS_PER_S)
        if out_dts - state.last_dts <= -state.frame_ticks or step_s > max_jump_s + waited_s:
            # A step back by a frame or more (a reset, a wrap, a restarted server) or forward by more than
            # the time that passed: re-base, continuing one frame (or the real waiting time) after the last
            # packet. Smaller steps back (duplicated or jittered timestamps) are only nudged below.
            advance = max(state.frame_ticks, round(waited_s / tick_s))
            offset = state.last_dts + advance - dts
            out_dts = dts + offset
            changed = rebased = True
        elif out_dts <= state.last_dts:
            out_dts = state.last_dts + 1
            changed = True
    out_pts = pts + offset
    if out_pts < out_dts:
        out_pts = out_dts
        changed = True
    new_state = TimestampState(offset, out_dts, state.frame_ticks, arrival_ns)
    return Repaired(out_pts, out_dts, new_state, changed, rebased)


def infer_leading_timestamps(stamps: list[tuple[int | None, int | None]], frame_ticks: int,
                             ) -> list[tuple[int | None, int | None]]:
    """Fill in the timestamps a run's first packets lack, counting frames back from the last packet that
    has both: its dts minus one frame per packet for a missing dts; for a missing pts, the dts (the first
    packet, a keyframe, gets one frame before the earliest pts after it instead, which is where a closed
    GOP's first picture is shown). Packets after the last complete one are left as they are."""
    complete = [i for i, (pts, dts) in enumerate(stamps) if pts is not None and dts is not None]
    anchor = complete[-1] if complete else None
    if anchor is None:
        return list(stamps)
    anchor_dts = stamps[anchor][1]
    assert anchor_dts is not None
    filled = []
    for i, (pts, dts) in enumerate(stamps[:anchor + 1]):
        dts = anchor_dts - (anchor - i) * frame_ticks if dts is None else dts
        filled.append((pts, dts))
    out: list[tuple[int | None, int | None]] = [(dts if pts is None else pts, dts) for pts, dts in filled]
    if filled[0][0] is None and len(filled) > 1:
        first_dts = filled[0][1]
        out[0] = (max(first_dts, min(pts for pts, _ in out[1:] if pts is not None) - frame_ticks), first_dts)
    return out + list(stamps[anchor + 1:])


def backlog_anchor_ns(arrivals_ns: list[int], pts: list[int], ns_per_tick: Fraction,
                      min_backlog_ns: int = round(BACKLOG_MIN_S * NS_PER_S)) -> int:
    """When the first of these packets (a keyframe) was really sent. No packet arrives before it was
    made, so the keyframe is at most ``arrival - (pts - pts_key)`` for every packet after it; the tightest
    bound wins when it shows a backlog (the packets FFmpeg buffered while it probed the camera), else the
    keyframe's own arrival stands (jitter of a few milliseconds is not worth moving the start)."""
    first_arrival, first_pts = arrivals_ns[0], pts[0]
    bound = min(a - int((p - first_pts) * ns_per_tick) for a, p in zip(arrivals_ns, pts, strict=True))
    return bound if first_arrival - bound >= min_backlog_ns else first_arrival


def is_segment_start(is_keyframe: bool, pts: int | None, dts: int | None) -> bool:
    """A segment may only start on a keyframe that has its timestamps."""
    return is_keyframe and dts is not None and pts is not None


def cut_ticks_for(segment_seconds: float, time_base: Fraction) -> int:
    """``segment_seconds`` in whole ticks of ``time_base`` (rounded up), so the per-packet test is integer."""
    return math.ceil(Fraction(segment_seconds) / time_base)


def should_cut(is_keyframe: bool, pts: int, segment_first_pts: int, cut_ticks: int,
               discontinuity: bool = False) -> bool:
    """Cut at the first keyframe at or after ``cut_ticks`` (``segment_seconds``) into the segment, or at
    the first keyframe after a timestamp discontinuity."""
    return is_keyframe and (discontinuity or pts - segment_first_pts >= cut_ticks)


def frame_ticks_for(template: Any, time_base: Fraction) -> int:
    """One frame's duration in ``time_base`` ticks, from the stream's frame rate (25 fps if unknown)."""
    rate = _fraction(getattr(template, "average_rate", None)) or _fraction(
        getattr(template, "guessed_rate", None)) or DEFAULT_FRAME_RATE
    return max(1, round(1 / (rate * time_base)))


def rescale_factors(from_tb: Fraction, to_tb: Fraction) -> tuple[int, int] | None:
    """``(num, den)`` in lowest terms with ``ticks_in_to_tb = ticks_in_from_tb * num / den``; None when the
    time bases are equal. Computed once per run so the per-packet rescaling is integer arithmetic only."""
    if from_tb == to_tb:
        return None
    factor = from_tb / to_tb
    return factor.numerator, factor.denominator


@overload
def rescale(ts: int, from_tb: Fraction, to_tb: Fraction) -> int: ...
@overload
def rescale(ts: None, from_tb: Fraction, to_tb: Fraction) -> None: ...
@overload
def rescale(ts: int | None, from_tb: Fraction, to_tb: Fraction) -> int | None: ...
def rescale(ts: int | None, from_tb: Fraction, to_tb: Fraction) -> int | None:
    """A timestamp in another time base, rounded to the nearest tick (exact integer arithmetic)."""
    if ts is None or from_tb == to_tb:
        return ts
    num = ts * from_tb.numerator * to_tb.denominator
    den = from_tb.denominator * to_tb.numerator
    return (2 * num + den) // (2 * den)


def _fraction(value: Any) -> Fraction | None:
    if value is None or not value:
        return None
    return Fraction(int(value.numerator), int(value.denominator))


# ----- muxing ---------------------------------------------------------------------------------------
class _SinkAdapter:
    """The file-like object PyAV muxes into: counts bytes and keeps the sink's own exception."""

    def __init__(self, sink: SegmentSink):
        self.sink = sink
        self.bytes = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise OSError("segment sink failed earlier")
        try:
            self.sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        self.bytes += len(data)
        return len(data)


class _OpenSegment:
    def __init__(self, template: Any, sink: SegmentSink, start_ns: int, first_pts: int, time_base: Fraction,
                 audio_template: Any = None):
        self.sink = sink
        self.adapter = _SinkAdapter(sink)
        self.start_ns = start_ns
        self.first_pts = first_pts
        self.time_base = time_base
        self.end_ns = start_ns
        self.frames = 0
        self.container = av.open(self.adapter, "w", format="mpegts", options=dict(TS_MUXER_OPTIONS))
        self.stream = self.container.add_stream_from_template(template)
        # The audio track kept as received (docs/segment-format.md: which codecs, and how G.711 is carried).
        self.audio = None
        if audio_template is not None:
            self.audio = self.container.add_stream_from_template(audio_template)

    def summary(self) -> SegmentSummary:
        return SegmentSummary(self.start_ns, self.end_ns, self.frames, self.adapter.bytes, self.first_pts,
                              self.time_base)


OpenSink = Callable[[int], "SegmentSink | None"]
CloseSink = Callable[[Any, SegmentSummary], None]
AbortSink = Callable[[Any, BaseException], None]


class Segmenter:
    """Cuts one camera's packets into segments. Not thread-safe: one thread pushes.

    ``open_sink(start_ns)`` returns the sink of a new segment, or None to refuse (disk full: packets are
    dropped and counted until a later keyframe is accepted). ``close_sink(sink, summary)`` is called after
    the muxer has written the segment's last bytes; ``abort_sink(sink, error)`` when writing failed.
    """

    def __init__(
        self,
        template: Any,
        *,
        segment_seconds: float,
        open_sink: OpenSink,
        close_sink: CloseSink,
        abort_sink: AbortSink | None = None,
        camera: str = "",
        timeline: str = "stream",
        audio_template: Any = None,
        backlog_hold: bool = False,
    ):
        if segment_seconds <= 0:
            raise ValueError("segment_seconds must be positive")
        if timeline not in TIMELINES:
            raise ValueError(f"timeline must be one of {TIMELINES}")
        self.template = template
        self.audio_template = audio_template
        # Network cameras: FFmpeg buffers packets while it probes them, then hands them on in one burst.
        self.backlog_hold = backlog_hold and timeline == "arrival"
        self.timeline = timeline
        self.segment_seconds = segment_seconds
        self._open_sink = open_sink
        self._close_sink = close_sink
        self._abort_sink = abort_sink
        self.camera = camera
        self.counters = SegmenterCounters()
        self._segment: _OpenSegment | None = None
        self._reset_run()

    # The run's state: set by ``_reset_run`` and ``_start_run``.
    _in_tb: Fraction | None  # the packets' own time base
    _time_base: Fraction | None  # the muxer's, in which the segmenter counts
    _scale: tuple[int, int] | None  # ``rescale_factors(in_tb, MUX_TIME_BASE)``
    # The timestamp repair state (``TimestampState``, kept as plain attributes for the hot path).
    _offset: int
    _last_dts: int | None
    _last_arrival_ns: int | None
    _frame_ticks: int
    _plain_step_max_ticks: int  # forward dts steps up to this need no repair, whatever the waiting
    # The start of a run (``_hold``): its first packets until their timing is known.
    _held: list[tuple[Any, int]]
    _held_audio: list[Any]
    _anchor_ns: int | None  # when the run's first keyframe was sent (arrival timeline)
    _last_audio_dts: int | None

    # -- public --
    @property
    def open_segment(self) -> SegmentSummary | None:
        return self._segment.summary() if self._segment is not None else None

    def push(self, packet: Any, arrival_ns: int) -> None:
        """Mux one video packet (cutting a segment first when due). Raises SinkFailed when the sink fails."""
        if self._in_tb is None:
            self._hold(packet, arrival_ns)
            return
        # The per-packet path: integer arithmetic on plain attributes (this runs 25-30 times a second per
        # camera, and Fraction arithmetic or a frozen dataclass per packet cost more than the muxing).
        # Work in the muxer's own time base: a repair step of one tick must survive the muxer's rescaling.
        pts, dts, duration = packet.pts, packet.dts, packet.duration
        scale = self._scale
        if scale is not None:
            num, den = scale
            half = den // 2  # round to the nearest tick (half up), as ``rescale``
            if pts is not None:
                pts = (pts * num + half) // den
            if dts is not None:
                dts = (dts * num + half) // den
            if duration:
                duration = (duration * num + half) // den
                packet.duration = duration
        last_dts = self._last_dts
        offset = self._offset
        if (pts is not None and dts is not None and last_dts is not None
                and 0 < dts + offset - last_dts <= self._plain_step_max_ticks and pts >= dts):
            # The common case, which ``repair_timestamps`` would return unchanged: dts moves forward by
            # less than the jump threshold and pts is not before dts.
            pts += offset
            dts += offset
        else:
            state = TimestampState(offset, last_dts, self._frame_ticks, self._last_arrival_ns)
            fixed = repair_timestamps(state, pts, dts, arrival_ns, MUX_TIME_BASE)
            if fixed is None:
                self._count(dropped_leading=1)
                return
            pts, dts = fixed.pts, fixed.dts
            self._offset = fixed.state.offset
            if fixed.changed:
                self._count(repaired=1, discontinuities=int(fixed.rebased))
                if fixed.rebased:
                    self._cut_pending = self._segment is not None
                    log.warning("timestamp discontinuity camera=%s rebased_to_dts=%d", self.camera, dts)
        self._last_dts = dts
        self._last_arrival_ns = arrival_ns
        packet.pts = pts
        packet.dts = dts
        if self._retag:
            packet.time_base = _MUX_TIME_BASE_PLAIN
        if not duration or duration <= 0:
            duration = self._frame_ticks
        # Nearly every packet goes on into the open segment; only a keyframe may cut, so the rule is asked
        # only then, and the muxing below is written out here rather than called (once per packet).
        segment = self._segment
        if segment is None or (packet.is_keyframe and should_cut(True, pts, segment.first_pts,
                                                                 self._cut_ticks, self._cut_pending)):
            segment = self._next_segment(bool(packet.is_keyframe), pts, arrival_ns)
            if segment is None:
                return
        packet.stream = segment.stream
        try:
            segment.container.mux(packet)
        except Exception as exc:
            self._mux_failed(segment, exc)
            return
        num, den = self._ns_per_tick  # ``_wall_ns(pts + duration)``
        end_ns = self._wall0_ns + (pts + duration - self._pts0) * num // den
        if end_ns > segment.end_ns:
            segment.end_ns = end_ns
        segment.frames += 1
        segment.sink.note(segment.end_ns, segment.frames)

    def push_audio(self, packet: Any) -> None:
        """Mux one packet of the audio track (``audio_template``) into the open segment, on the video's
        timeline. Audio never cuts a segment nor counts as a frame; outside a segment it is dropped."""
        if self._in_tb is None:
            if self._held and len(self._held_audio) < RUN_START_MAX_PACKETS:
                self._held_audio.append(packet)
            else:
                self._count(audio_dropped=1)
            return
        self._mux_audio(packet)

    def finish(self) -> SegmentSummary | None:
        """End the run (disconnect, stop): seal the open segment. The next push starts a new run."""
        if self._held:
            held, self._held = self._held, []
            self._release(held)
        summary = self._close_segment()
        self._reset_run()
        return summary

    def abort(self, error: BaseException) -> None:
        """Drop the open segment after a failure without finishing it; the run ends too."""
        segment, self._segment = self._segment, None
        if segment is not None:
            with contextlib.suppress(Exception):
                segment.container.close()
            if self._abort_sink is not None:
                self._abort_sink(segment.sink, error)
        self._reset_run()

    # -- internals --
    def _reset_run(self) -> None:
        self._in_tb = None
        self._time_base = None
        self._scale = None
        self._retag = True  # the packets' time base must be set to the muxer's
        self._cut_ticks = 0
        self._ns_per_tick = (0, 1)  # nanoseconds per muxer tick, as (numerator, denominator)
        self._wall0_ns = 0
        self._pts0 = 0
        self._offset = 0
        self._last_dts = None
        self._last_arrival_ns = None
        self._frame_ticks = 1
        self._plain_step_max_ticks = 0
        self._refused = False
        self._cut_pending = False  # a discontinuity was repaired: cut at the next keyframe
        self._held = []
        self._held_audio = []
        self._anchor_ns = None
        self._last_audio_dts = None

    # -- the start of a run --
    def _hold(self, packet: Any, arrival_ns: int) -> None:
        """Hold a run's first packets (from its first keyframe) until ``_hold_done``, then release them."""
        held = self._held
        if not held and not packet.is_keyframe:
            self._count(dropped_leading=1)
            return
        held.append((packet, arrival_ns))
        if self._hold_done(held):
            self._held = []
            self._release(held)

    def _hold_done(self, held: list[tuple[Any, int]]) -> bool:
        last, last_arrival_ns = held[-1]
        if len(held) >= RUN_START_MAX_PACKETS:
            return True
        if last.pts is None or last.dts is None:
            return False  # the timestamps of the packets before it are not known yet
        if not self.backlog_hold or last_arrival_ns - held[0][1] >= RUN_START_HOLD_S * NS_PER_S:
            return True
        # A burst that already spans this much stream time is released without waiting for more packets
        # (a camera program may send its buffer and then go quiet).
        first_pts = held[0][0].pts if held[0][0].pts is not None else held[0][0].dts
        if first_pts is None:
            first_pts = last.dts - (len(held) - 1) * frame_ticks_for(self.template, _fraction(last.time_base)
                                                                       or MUX_TIME_BASE)
        tb = _fraction(last.time_base) or MUX_TIME_BASE
        return bool((last.pts - first_pts) * tb >= RUN_START_BURST_S)

    def _release(self, held: list[tuple[Any, int]]) -> None:
        """Give the held packets the timestamps they lack, anchor the run and push them on."""
        first, first_arrival_ns = held[0]
        in_tb = _fraction(first.time_base) or _fraction(self.template.time_base) or MUX_TIME_BASE
        frame_ticks = frame_ticks_for(self.template, in_tb)
        stamps = infer_leading_timestamps([(p.pts, p.dts) for p, _ in held], frame_ticks)
        for (packet, _), (pts, dts) in zip(held, stamps, strict=True):
            if packet.pts is None or packet.dts is None:
                packet.pts, packet.dts = pts, dts
        audio, self._held_audio = self._held_audio, []
        if not is_segment_start(first.is_keyframe, first.pts, first.dts):
            self._count(dropped_leading=1, audio_dropped=len(audio))  # nothing to time it by
            for packet, arrival_ns in held[1:]:
                self.push(packet, arrival_ns)
            return
        if self.timeline == "arrival":
            timed = [(a, p.pts) for p, a in held if p.pts is not None]
            self._anchor_ns = backlog_anchor_ns([a for a, _ in timed], [pts for _, pts in timed],
                                                in_tb * NS_PER_S)
            if self._anchor_ns != first_arrival_ns:
                log.info("camera backlog at connect camera=%s first_keyframe_late_ms=%d", self.camera,
                         (first_arrival_ns - self._anchor_ns) // 1_000_000)
        self._start_run(first, first_arrival_ns)
        for packet, arrival_ns in held:
            self.push(packet, arrival_ns)  # the run has started: straight to the muxer
        for packet in audio:
            self._mux_audio(packet)

    def _start_run(self, packet: Any, arrival_ns: int) -> None:
        packet_tb = _fraction(packet.time_base)
        self._in_tb = packet_tb or _fraction(self.template.time_base) or MUX_TIME_BASE
        tb = self._time_base = MUX_TIME_BASE
        self._scale = rescale_factors(self._in_tb, tb)
        # Setting a packet's time base costs as much as the rest of its timestamp handling: skip it when
        # the packets already come in the muxer's (RTSP cameras: 90 kHz).
        self._retag = packet_tb != tb
        self._cut_ticks = cut_ticks_for(self.segment_seconds, tb)
        ns_per_tick = tb * NS_PER_S
        self._ns_per_tick = (ns_per_tick.numerator, ns_per_tick.denominator)
        self._frame_ticks = frame_ticks_for(self.template, tb)
        # Below this many ticks forward, ``repair_timestamps`` never re-bases (whatever time passed); one
        # tick of margin keeps the float comparison there out of the question.
        self._plain_step_max_ticks = math.floor(Fraction(MAX_TIMESTAMP_JUMP_S) / tb) - 1
        # The TS muxer shifts a negative first dts per file, which would break continuity between segments.
        # ``push`` starts a run only on a packet with both timestamps (``is_segment_start``).
        first_dts = rescale(int(packet.dts), self._in_tb, tb)
        offset = -first_dts if first_dts < 0 else 0
        self._offset = offset
        self._last_dts = None
        self._last_arrival_ns = None
        self._wall0_ns = arrival_ns
        self._pts0 = rescale(int(packet.pts), self._in_tb, tb) + offset

    def _wall_ns(self, pts: int) -> int:
        num, den = self._ns_per_tick
        return self._wall0_ns + (pts - self._pts0) * num // den

    def _next_segment(self, keyframe: bool, pts: int, arrival_ns: int) -> _OpenSegment | None:
        """The segment a packet goes into when none is open or a cut is due (``push`` asked
        ``should_cut``): the open one is closed, a keyframe opens the next; None drops the packet."""
        segment = self._segment
        if segment is not None:
            if self.timeline == "arrival":
                # Contiguous on the local clock: this segment ends where the next one starts.
                segment.end_ns = max(segment.start_ns, arrival_ns)
                segment.sink.note(segment.end_ns, segment.frames)
            self._close_segment()
        if not keyframe:
            if self._refused:
                self._count(dropped_no_sink=1)
            else:
                self._count(dropped_leading=1)
            return None
        segment = self._open_segment(pts, arrival_ns)
        if segment is None:
            self._count(dropped_no_sink=1)
        return segment

    def _open_segment(self, pts: int, arrival_ns: int) -> _OpenSegment | None:
        assert self._time_base is not None
        if self.timeline == "arrival":
            # The local clock at this keyframe anchors the segment; the stream times the inside. The run's
            # first keyframe may have come in a backlog: then it was sent at ``_anchor_ns``.
            anchor_ns, self._anchor_ns = self._anchor_ns, None
            self._wall0_ns, self._pts0 = (arrival_ns if anchor_ns is None else anchor_ns), pts
        start_ns = self._wall_ns(pts)
        sink = self._open_sink(start_ns)
        if sink is None:
            self._refused = True
            return None
        self._refused = False
        self._cut_pending = False
        try:
            self._segment = _OpenSegment(self.template, sink, start_ns, pts, self._time_base,
                                         self.audio_template)
        except (av.FFmpegError, ValueError) as exc:
            if self._abort_sink is not None:
                self._abort_sink(sink, exc)
            raise
        return self._segment

    def _mux_failed(self, segment: _OpenSegment, exc: Exception) -> None:
        """``mux`` raised. The sink failed: the segment is aborted and SinkFailed raised. Otherwise the
        muxer refused the packet (timestamps it still sees as wrong): it is dropped and counted."""
        error = segment.adapter.error
        if error is not None:
            self.abort(error)
            raise SinkFailed(str(error)) from error
        self._count(mux_errors=1)
        log.warning("packet dropped by the muxer camera=%s error=%s", self.camera, exc)

    def _mux_audio(self, packet: Any) -> None:
        """One audio packet on the video's timeline (same time base, same repair offset), into the open
        segment; dropped when it has no timestamp or would not move the audio forward."""
        segment = self._segment
        ts = packet.dts if packet.dts is not None else packet.pts
        tb = _fraction(packet.time_base)
        if segment is None or segment.audio is None or ts is None or tb is None:
            self._count(audio_dropped=1)
            return
        dts = rescale(ts, tb, MUX_TIME_BASE) + self._offset
        pts = rescale(packet.pts if packet.pts is not None else ts, tb, MUX_TIME_BASE) + self._offset
        if self._last_audio_dts is not None and dts <= self._last_audio_dts:
            self._count(audio_dropped=1)
            return
        duration = rescale(packet.duration, tb, MUX_TIME_BASE) if packet.duration else 0
        packet.time_base = MUX_TIME_BASE
        packet.pts, packet.dts = max(pts, dts), dts
        if duration:
            packet.duration = duration
        packet.stream = segment.audio
        try:
            segment.container.mux(packet)
        except Exception:
            if segment.adapter.error is not None:
                error = segment.adapter.error
                self.abort(error)
                raise SinkFailed(str(error)) from error
            self._count(audio_dropped=1)
            return
        self._last_audio_dts = dts

    def _close_segment(self) -> SegmentSummary | None:
        segment, self._segment = self._segment, None
        if segment is None:
            return None
        try:
            segment.container.close()  # writes the muxer's last bytes into the sink
        except Exception as exc:
            error = segment.adapter.error or exc
            if self._abort_sink is not None:
                self._abort_sink(segment.sink, error)
            self._reset_run()
            raise SinkFailed(str(error)) from error
        summary = segment.summary()
        self._count(segments=1)
        self._close_sink(segment.sink, summary)
        return summary

    def _count(self, **deltas: int) -> None:
        current = self.counters
        self.counters = replace(current, **{k: getattr(current, k) + v for k, v in deltas.items()})
