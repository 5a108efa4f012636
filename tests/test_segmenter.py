"""Keyframe-aligned cutting and TS muxing, on real H.264 packets, into in-memory sinks."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edgerec.config import CameraConfig
from edgerec.segmenter import (
    Segmenter,
    SegmentSummary,
    SinkFailed,
    TimestampState,
    backlog_anchor_ns,
    cut_ticks_for,
    infer_leading_timestamps,
    repair_timestamps,
    should_cut,
)
from edgerec.source import open_source
from tests.helpers.media import decoded_frame_hashes, make_h264_clip, video_packets

T0_NS = 1_800_000_000_000_000_000


class MemorySink:
    def __init__(self, start_ns: int):
        self.start_ns = start_ns
        self.data = bytearray()
        self.notes: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.data += data

    def note(self, end_ns: int, frames: int) -> None:
        self.notes.append((end_ns, frames))


class Collector:
    """open/close callbacks for a Segmenter, keeping every finished segment."""

    def __init__(self, refuse: int = 0):
        self.refuse = refuse
        self.closed: list[tuple[MemorySink, SegmentSummary]] = []
        self.aborted: list[tuple[MemorySink, BaseException]] = []

    def open(self, start_ns: int) -> MemorySink | None:
        if self.refuse > 0:
            self.refuse -= 1
            return None
        return MemorySink(start_ns)

    def close(self, sink: MemorySink, summary: SegmentSummary) -> None:
        self.closed.append((sink, summary))

    def abort(self, sink: MemorySink, error: BaseException) -> None:
        self.aborted.append((sink, error))

    def segmenter(self, template, segment_seconds: float) -> Segmenter:
        return Segmenter(template, segment_seconds=segment_seconds, open_sink=self.open,
                         close_sink=self.close, abort_sink=self.abort, camera="test")


def ts_packets(data: bytes) -> list[tuple[int, int, bool, bytes]]:
    with av.open(io.BytesIO(bytes(data)), format="mpegts") as c:
        return [(p.pts, p.dts, p.is_keyframe, bytes(p)) for p in c.demux(video=0) if p.size]


def segment_file(clip: Path, seconds: float, *, skip: int = 0, mangle=None) -> tuple[Collector, Segmenter]:
    """Run a clip (fast, not paced) through a segmenter; ``skip`` drops the first packets."""
    source = open_source(CameraConfig("test", str(clip), realtime=False, loop=False))
    collector = Collector()
    seg = collector.segmenter(source.stream, seconds)
    try:
        for i, packet in enumerate(source.packets()):
            if i < skip:
                continue
            if mangle is not None:
                mangle(i, packet)
            seg.push(packet, T0_NS)
        seg.finish()
    finally:
        source.close()
    return collector, seg


@pytest.mark.parametrize("bframes", [False, True], ids=["no-bframes", "bframes"])
def test_cuts_at_first_keyframe_at_or_after_segment_seconds(tmp_path: Path, bframes: bool) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 6, fps=25, gop=10, bframes=bframes)  # keyframes every 0.4 s
    collector, seg = segment_file(clip, 1.0)

    summaries = [s for _, s in collector.closed]
    # The first keyframe at or after 1.0 s is at 1.2 s: every segment but the last spans 1.2 s.
    durations = [(s.end_ns - s.start_ns) / 1e9 for s in summaries]
    assert durations[:-1] == pytest.approx([1.2] * (len(durations) - 1), abs=1e-6)
    starts = [(s.start_ns - T0_NS) / 1e9 for s in summaries]
    assert starts == pytest.approx([1.2 * i for i in range(len(starts))], abs=1e-6)
    for sink, summary in collector.closed:
        packets = ts_packets(sink.data)
        assert packets[0][2], "a segment must start with a keyframe"
        assert len(packets) == summary.frames
        assert summary.bytes == len(sink.data)
        assert sink.notes[-1] == (summary.end_ns, summary.frames)
    assert seg.counters.dropped_leading == 0


@pytest.mark.parametrize("bframes", [False, True], ids=["no-bframes", "bframes"])
def test_concatenated_segments_hold_every_input_packet_exactly_once(tmp_path: Path, bframes: bool) -> None:
    clip = tmp_path / "clip.ts"
    frames = make_h264_clip(clip, 5, fps=25, gop=25, bframes=bframes)
    collector, _ = segment_file(clip, 1.0)
    assert len(collector.closed) == 5

    out_packets = [p for sink, _ in collector.closed for p in ts_packets(sink.data)]
    in_packets = video_packets(clip)
    assert len(out_packets) == len(in_packets) == frames
    assert [p[3] for p in out_packets] == [p[3] for p in in_packets]
    # Timestamps run on across segment boundaries exactly as in the input.
    in_steps = [b[1] - a[1] for a, b in zip(in_packets, in_packets[1:], strict=False)]
    out_steps = [b[1] - a[1] for a, b in zip(out_packets, out_packets[1:], strict=False)]
    assert out_steps == in_steps

    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(bytes(sink.data) for sink, _ in collector.closed))
    assert decoded_frame_hashes(joined) == decoded_frame_hashes(clip)


def test_mp4_input_is_muxed_to_decodable_ts_segments(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"  # length-prefixed H.264: the TS muxer must convert it to Annex B
    make_h264_clip(clip, 3, fps=25, gop=25, bframes=True)
    collector, _ = segment_file(clip, 1.0)
    hashes = []
    for i, (sink, _) in enumerate(collector.closed):
        part = tmp_path / f"part{i}.ts"
        part.write_bytes(bytes(sink.data))
        hashes += decoded_frame_hashes(part)  # each segment decodes on its own
    assert hashes == decoded_frame_hashes(clip)


def test_fast_ingest_of_20_s_clip_keeps_real_timeline(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 20, fps=25, gop=25)
    collector, _ = segment_file(clip, 4)
    starts = [s.start_ns for _, s in collector.closed]
    assert len(starts) == 5
    assert [(b - a) / 1e9 for a, b in zip(starts, starts[1:], strict=False)] == pytest.approx([4.0] * 4)
    assert starts[0] == T0_NS
    assert collector.closed[-1][1].end_ns == T0_NS + 20 * 10**9


def test_stream_starting_mid_gop_drops_leading_non_keyframes(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 3, fps=25, gop=25)
    collector, seg = segment_file(clip, 1.0, skip=7)
    assert seg.counters.dropped_leading == 25 - 7
    first = ts_packets(collector.closed[0][0].data)
    assert first[0][2]
    assert sum(s.frames for _, s in collector.closed) == 75 - 25


def test_leading_packets_without_timestamps_are_timed_from_the_first_that_has_them(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 3, fps=25, gop=25)
    original = [(p[0], p[1]) for p in video_packets(clip)]

    def no_timestamps_at_first(i: int, packet) -> None:
        if i < 3:  # like the first packets of an RTSP session (the keyframe has none at all)
            packet.pts = packet.dts = None

    collector, seg = segment_file(clip, 1.0, mangle=no_timestamps_at_first)
    assert seg.counters.dropped_leading == 0 and seg.counters.discontinuities == 0
    assert sum(s.frames for _, s in collector.closed) == 75
    first = ts_packets(collector.closed[0][0].data)
    shift = first[3][1] - original[3][1]
    assert [(p[0] - shift, p[1] - shift) for p in first[:4]] == original[:4], "the camera's own timing"


def test_packets_without_any_timestamp_to_count_from_are_dropped(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 12, fps=25, gop=25)

    def no_timestamps(i: int, packet) -> None:
        if i < 260:  # more than are ever held after the first keyframe
            packet.pts = packet.dts = None

    collector, seg = segment_file(clip, 1.0, mangle=no_timestamps)
    # The first GOP is dropped once the hold is full; the next keyframe is timed from packet 260 back.
    assert seg.counters.dropped_leading == 25
    assert sum(s.frames for _, s in collector.closed) == 275


@pytest.mark.parametrize(("stamps", "expected"), [
    ([(None, None), (3600, 3600), (7200, 7200)], [(0, 0), (3600, 3600), (7200, 7200)]),
    # B-frames: the P-frame and a B-frame came without a dts as well.
    ([(None, None), (14400, None), (7200, None), (3600, 3600)],
     [(0, -7200), (14400, -3600), (7200, 0), (3600, 3600)]),
    ([(None, None), (None, None)], [(None, None), (None, None)]),
])
def test_infer_leading_timestamps_counts_frames_back(stamps, expected) -> None:
    assert infer_leading_timestamps(stamps, 3600) == expected


def test_backlog_anchor_moves_a_late_first_keyframe_back_but_ignores_jitter() -> None:
    ns_per_tick = Fraction(10**9, 90_000)
    # 22 frames read in one burst at t=1 s after probing, then paced at 25 fps.
    arrivals = [1_000_000_000] * 22 + [1_000_000_000 + k * 40_000_000 for k in range(1, 20)]
    pts = [k * 3600 for k in range(41)]
    assert backlog_anchor_ns(arrivals, pts, ns_per_tick) == 1_000_000_000 - 21 * 40_000_000
    paced = [5_000_000 + k * 40_000_000 + (k % 3) * 1_000_000 for k in range(20)]
    assert backlog_anchor_ns(paced, pts[:20], ns_per_tick) == 5_000_000


def test_backwards_dts_is_repaired_instead_of_raising(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 3, fps=25, gop=25)

    def step_back(i: int, packet) -> None:
        if i in (30, 31):
            packet.dts -= 3600 * 3
            packet.pts = packet.dts

    collector, seg = segment_file(clip, 1.0, mangle=step_back)
    assert seg.counters.repaired >= 1 and seg.counters.discontinuities == 1
    assert seg.counters.mux_errors == 0
    packets = [p for sink, _ in collector.closed for p in ts_packets(sink.data)]
    assert len(packets) == 75
    dts = [p[1] for p in packets]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))


def test_timestamps_closer_than_a_90khz_tick_do_not_upset_the_muxer(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 2, fps=25, gop=25)

    def burst(i: int, packet) -> None:
        # Raw H.264 read in one burst and stamped on arrival: 1/1200000 s apart, finer than TS can hold.
        packet.time_base = Fraction(1, 1_200_000)
        packet.pts = packet.dts = i

    collector, seg = segment_file(clip, 1.0, mangle=burst)
    assert seg.counters.mux_errors == 0
    packets = [p for sink, _ in collector.closed for p in ts_packets(sink.data)]
    assert len(packets) == 50
    dts = [p[1] for p in packets]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))


def test_refused_segment_drops_packets_until_a_later_keyframe(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 4, fps=25, gop=25)
    source = open_source(CameraConfig("test", str(clip), realtime=False, loop=False))
    collector = Collector(refuse=2)  # "disk full" for the first two keyframes
    seg = collector.segmenter(source.stream, 1.0)
    for packet in source.packets():
        seg.push(packet, T0_NS)
    seg.finish()
    source.close()
    assert seg.counters.dropped_no_sink == 50
    assert [(s.start_ns - T0_NS) / 1e9 for _, s in collector.closed] == pytest.approx([2.0, 3.0])


def test_failing_sink_aborts_the_segment_and_raises(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 2, fps=25, gop=25)

    class FullDisk(MemorySink):
        def write(self, data: bytes) -> None:
            if len(self.data) > 10_000:
                raise OSError(28, "No space left on device")
            super().write(data)

    source = open_source(CameraConfig("test", str(clip), realtime=False, loop=False))
    collector = Collector()
    seg = Segmenter(source.stream, segment_seconds=10, open_sink=FullDisk, close_sink=collector.close,
                    abort_sink=collector.abort)
    with pytest.raises(SinkFailed):
        for packet in source.packets():
            seg.push(packet, T0_NS)
    source.close()
    assert len(collector.aborted) == 1
    assert isinstance(collector.aborted[0][1], OSError)
    assert seg.open_segment is None


def test_finish_starts_a_new_run_with_a_new_wall_clock_anchor(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 2, fps=25, gop=25)
    collector = Collector()
    seg = None
    # The segmenter muxes with the first source's stream as its template, so every source stays open
    # until the end: a stream of a closed container must never be used (PyAV would read freed memory).
    sources = []
    for run, arrival in enumerate((T0_NS, T0_NS + 3600 * 10**9)):
        source = open_source(CameraConfig("test", str(clip), realtime=False, loop=False))
        sources.append(source)
        seg = seg or collector.segmenter(source.stream, 1.0)
        for packet in source.packets():
            seg.push(packet, arrival)
        seg.finish()
        assert collector.closed[-2][1].start_ns == arrival, f"run {run}"
    for source in sources:
        source.close()
    assert len(collector.closed) == 4


# ----- the pure rules ---------------------------------------------------------------------------------
TB = Fraction(1, 90_000)


def test_should_cut_only_on_keyframes_at_or_after_the_duration() -> None:
    ticks = cut_ticks_for(1.0, TB)
    assert ticks == 90_000 and cut_ticks_for(0.5, Fraction(1, 25)) == 13
    assert should_cut(True, 90_000, 0, ticks)
    assert not should_cut(True, 89_999, 0, ticks)
    assert not should_cut(False, 200_000, 0, ticks)


def test_repair_makes_dts_strictly_increasing_and_pts_not_before_dts() -> None:
    state = TimestampState(frame_ticks=3600, last_dts=36_000, last_arrival_ns=0)
    fixed = repair_timestamps(state, pts=30_000, dts=36_000, arrival_ns=0, time_base=TB)
    assert fixed is not None and fixed.changed
    assert fixed.dts == 36_001 and fixed.pts == 36_001


def test_repair_rebases_a_large_backward_jump_to_continue_one_frame_later() -> None:
    state = TimestampState(frame_ticks=3600, last_dts=9_000_000, last_arrival_ns=0)
    fixed = repair_timestamps(state, pts=7200, dts=3600, arrival_ns=40_000_000, time_base=TB)
    assert fixed is not None and fixed.rebased
    assert fixed.dts == 9_003_600 and fixed.pts == 9_007_200
    following = repair_timestamps(fixed.state, pts=10_800, dts=7200, arrival_ns=80_000_000, time_base=TB)
    assert following is not None and not following.changed
    assert following.dts == 9_007_200


def test_repair_rebases_a_reset_of_a_second_and_only_nudges_jitter() -> None:
    state = TimestampState(frame_ticks=3600, last_dts=900_000, last_arrival_ns=0)
    reset = repair_timestamps(state, pts=810_000, dts=810_000, arrival_ns=40_000_000, time_base=TB)
    assert reset is not None and reset.rebased and reset.dts == 903_600
    jitter = repair_timestamps(state, pts=898_000, dts=898_000, arrival_ns=40_000_000, time_base=TB)
    assert jitter is not None and not jitter.rebased and jitter.dts == 900_001


def test_repair_rebases_an_unwrapped_33_bit_wrap() -> None:
    wrap_ticks = 1 << 33
    state = TimestampState(frame_ticks=3600, last_dts=wrap_ticks - 1800, last_arrival_ns=0)
    fixed = repair_timestamps(state, pts=1800, dts=1800, arrival_ns=40_000_000, time_base=TB)
    assert fixed is not None and fixed.rebased and fixed.dts == wrap_ticks - 1800 + 3600
    following = repair_timestamps(fixed.state, pts=5400, dts=5400, arrival_ns=80_000_000, time_base=TB)
    assert following is not None and not following.changed and following.dts == fixed.dts + 3600


def test_discontinuity_cuts_at_the_next_keyframe(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 3, fps=25, gop=25)

    def reset_at_30(i: int, packet) -> None:
        if i >= 30:  # a P-frame: the cut waits for the keyframe at 50
            packet.dts -= 30 * 3600
            packet.pts -= 30 * 3600

    collector, seg = segment_file(clip, 10.0, mangle=reset_at_30)
    assert seg.counters.discontinuities == 1
    assert [s.frames for _, s in collector.closed] == [50, 25]
    packets = [p for sink, _ in collector.closed for p in ts_packets(sink.data)]
    dts = [p[1] for p in packets]
    assert all(b - a == 3600 for a, b in zip(dts, dts[1:], strict=False)), "continues one frame on"


def test_arrival_timeline_starts_each_segment_at_its_keyframe_arrival(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 3, fps=25, gop=25)
    source = open_source(CameraConfig("test", str(clip), realtime=False, loop=False))
    collector = Collector()
    seg = Segmenter(source.stream, segment_seconds=1.0, open_sink=collector.open, close_sink=collector.close,
                    timeline="arrival")
    # A camera whose clock runs 1 % fast: 40 ms of its time pass in 39.6 ms of ours.
    for i, packet in enumerate(source.packets()):
        seg.push(packet, T0_NS + i * 39_600_000)
    seg.finish()
    source.close()
    summaries = [s for _, s in collector.closed]
    assert [s.start_ns for s in summaries] == [T0_NS + k * 25 * 39_600_000 for k in range(3)]
    assert [a.end_ns for a in summaries[:-1]] == [b.start_ns for b in summaries[1:]], "contiguous"
    assert summaries[-1].end_ns == summaries[-1].start_ns + 25 * 40_000_000  # the stream's own timing


def test_repair_keeps_a_forward_step_that_matches_the_real_waiting_time() -> None:
    state = TimestampState(frame_ticks=3600, last_dts=0, last_arrival_ns=0)
    fixed = repair_timestamps(state, pts=30 * 90_000, dts=30 * 90_000, arrival_ns=30 * 10**9, time_base=TB)
    assert fixed is not None and not fixed.changed


def test_repair_closes_a_forward_jump_the_clock_did_not_see() -> None:
    state = TimestampState(frame_ticks=3600, last_dts=0, last_arrival_ns=0)
    fixed = repair_timestamps(state, pts=3600 * 90_000, dts=3600 * 90_000, arrival_ns=40_000_000,
                              time_base=TB)
    assert fixed is not None and fixed.rebased
    assert fixed.dts == 3600


def test_repair_gives_up_only_without_any_timestamp_before() -> None:
    assert repair_timestamps(TimestampState(), None, None, 0, TB) is None
    state = TimestampState(frame_ticks=3600, last_dts=100, last_arrival_ns=0)
    fixed = repair_timestamps(state, None, None, 0, TB)
    assert fixed is not None and fixed.dts == 3700
