"""Camera sources on real inputs: files, the built-in test camera, lavfi, a child process, RTSP."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from edgerec.config import CameraConfig, EncoderConfig
from edgerec.errors import SourceError
from edgerec.source import CHILD_EXIT_TIMEOUT_S, input_options, open_source
from edgerec.source import testsrc_graph as lavfi_graph_of_testsrc
from tests.helpers.media import (
    make_h264_clip,
    needs_rtsp,
    start_rtsp_server,
    stop_process,
    video_packets,
)


def read_all(camera: CameraConfig, limit: int | None = None) -> tuple[list, object]:
    source = open_source(camera)
    packets = []
    try:
        for packet in source.packets():
            packets.append((packet.pts, packet.dts, packet.is_keyframe, bytes(packet)))
            if limit is not None and len(packets) >= limit:
                break
    finally:
        source.close()
    return packets, source


def test_file_source_passes_packets_through_without_change(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    frames = make_h264_clip(clip, 2, bframes=True)
    packets, source = read_all(CameraConfig("f", str(clip), realtime=False, loop=False))
    assert len(packets) == frames
    assert packets == video_packets(clip)
    assert source.ended
    assert source.info.encoded_by is None and source.info.codec == "h264"


def test_looped_file_keeps_timestamps_increasing_across_passes(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 1, fps=25, bframes=True)
    packets, source = read_all(CameraConfig("f", str(clip), realtime=False, loop=True), limit=80)
    assert len(packets) == 80
    dts = [p[1] for p in packets]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))
    steps = {b - a for a, b in zip(dts, dts[1:], strict=False)}
    assert steps == {3600}, "the next pass continues one frame after the last"
    assert [p[3] for p in packets[25:50]] == [p[3] for p in packets[:25]]
    assert not source.ended


def test_realtime_file_is_paced_by_its_timestamps(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 1, fps=25)
    started = time.monotonic()
    packets, _ = read_all(CameraConfig("f", str(clip), realtime=True, loop=False))
    elapsed = time.monotonic() - started
    assert len(packets) == 25
    assert 0.9 <= elapsed < 3.0  # 24 frame intervals of 40 ms, plus opening


def test_interrupt_ends_a_paced_reader_promptly(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25)
    source = open_source(CameraConfig("f", str(clip), realtime=True, loop=True))
    timer = threading.Timer(0.3, source.interrupt)
    started = time.monotonic()
    timer.start()
    count = sum(1 for _ in source.packets())
    source.close()
    assert time.monotonic() - started < 1.5
    assert 0 < count < 30
    assert not source.ended


def test_testsrc_is_encoded_to_h264_with_the_configured_gop(tmp_path: Path) -> None:
    camera = CameraConfig("t", "testsrc:size=320x240:rate=25", realtime=False,
                          encoder=EncoderConfig(codec="libx264", gop_seconds=1.0, bitrate_bps=500_000))
    packets, source = read_all(camera, limit=100)
    assert source.info.encoded_by == "libx264" and source.info.codec == "h264"
    assert (source.info.width, source.info.height) == (320, 240)
    keyframes = [i for i, p in enumerate(packets) if p[2]]
    # Not every frame a keyframe (the lavfi picture type is reset), and no GOP longer than 1 s.
    assert 2 <= len(keyframes) <= 10
    assert keyframes[0] == 0
    assert max(b - a for a, b in zip(keyframes, keyframes[1:], strict=False)) <= 25


def test_lavfi_graph_source_is_encoded(tmp_path: Path) -> None:
    packets, source = read_all(CameraConfig("l", "lavfi:smptebars=size=160x120:rate=10", realtime=False),
                               limit=20)
    assert len(packets) == 20 and packets[0][2]
    assert source.info.codec == "h264" and source.info.width == 160


def test_exec_source_reads_raw_h264_and_stamps_time(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    frames = make_h264_clip(clip, 1, fps=25)
    url = f"exec:ffmpeg -nostdin -loglevel error -i {clip} -c copy -f h264 -"
    packets, source = read_all(CameraConfig("x", url))
    assert len(packets) == frames
    assert all(p[0] is not None and p[1] is not None for p in packets)
    dts = [p[1] for p in packets]
    assert all(b > a for a, b in zip(dts, dts[1:], strict=False))
    assert source.ended
    assert source.child_exit_code is not None


def test_interrupt_kills_a_stalled_exec_child_and_its_children(tmp_path: Path) -> None:
    clip = tmp_path / "clip.h264"
    make_h264_clip(tmp_path / "clip.ts", 1, fps=25)
    stream = b"".join(p[3] for p in video_packets(tmp_path / "clip.ts"))
    clip.write_bytes(stream)
    # A camera that sends one second and then hangs, behind a shell (the pipe stays open in `sleep`).
    source = open_source(CameraConfig("x", f"exec:sh -c 'cat {clip}; exec sleep 60'"))
    threading.Timer(1.0, source.interrupt).start()
    started = time.monotonic()
    count = sum(1 for _ in source.packets())
    source.close()
    assert time.monotonic() - started < 5
    assert count >= 20
    assert source.child_exit_code is not None


def test_interrupt_kills_an_exec_child_that_ignores_sigterm(tmp_path: Path) -> None:
    clip = tmp_path / "clip.h264"
    make_h264_clip(tmp_path / "clip.ts", 1, fps=25)
    clip.write_bytes(b"".join(p[3] for p in video_packets(tmp_path / "clip.ts")))
    # Sends one second, then hangs with SIGTERM ignored: only the SIGKILL that follows can end its read.
    source = open_source(CameraConfig("x", f"exec:sh -c 'trap \"\" TERM; cat {clip}; sleep 60'"))
    threading.Timer(1.0, source.interrupt).start()
    started = time.monotonic()
    count = sum(1 for _ in source.packets())
    ended_after = time.monotonic() - started
    source.close()
    assert count >= 20
    assert source.child_exit_code == -signal.SIGKILL
    assert 1.0 + CHILD_EXIT_TIMEOUT_S - 0.5 < ended_after < 1.0 + CHILD_EXIT_TIMEOUT_S + 3


def test_exec_that_cannot_start_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="cannot start no-such-camera-program"):
        open_source(CameraConfig("x", "exec:no-such-camera-program --now"))


def test_exec_child_that_sends_nothing_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="sent no H.264 video.*camera not found"):
        open_source(CameraConfig("x", "exec:sh -c 'echo camera not found >&2; exit 1'"))


def test_missing_file_is_a_one_line_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        open_source(CameraConfig("f", str(tmp_path / "missing.mp4")))
    assert "missing.mp4" in str(info.value) and "\n" not in str(info.value)


def test_input_without_video_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="no video stream"):
        open_source(CameraConfig("a", "lavfi:anullsrc=r=8000"))


def test_unreachable_rtsp_camera_fails_fast_without_showing_the_password() -> None:
    from tests.helpers.media import free_port

    url = f"rtsp://admin:secret@127.0.0.1:{free_port()}/stream"
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        open_source(CameraConfig("ip", url, timeout_seconds=1.0))
    assert time.monotonic() - started < 5
    assert "secret" not in str(info.value)
    assert "admin:***@127.0.0.1" in str(info.value)


@needs_rtsp
def test_rtsp_source_reads_the_gstreamer_server(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    url, server = start_rtsp_server(clip)
    try:
        packets, source = read_all(CameraConfig("ip", url, timeout_seconds=3.0))
    finally:
        stop_process(server)
    with_ts = [p for p in packets if p[1] is not None]
    assert len(with_ts) >= 45
    assert sum(1 for p in with_ts if p[2]) >= 2
    assert source.info.codec == "h264" and source.live


# ----- pure helpers ---------------------------------------------------------------------------------
def test_testsrc_graph_defaults_and_overrides() -> None:
    assert lavfi_graph_of_testsrc("testsrc") == "testsrc2=size=1280x720:rate=25"
    assert lavfi_graph_of_testsrc("testsrc:size=640x360:rate=10") == "testsrc2=size=640x360:rate=10"
    with pytest.raises(SourceError):
        lavfi_graph_of_testsrc("testsrc:fast")


def test_input_options_by_kind() -> None:
    rtsp = CameraConfig("c", "rtsp://h/x", timeout_seconds=2.5, input_options={"max_delay": "0"})
    assert input_options(rtsp) == {"rtsp_transport": "tcp", "timeout": "2500000", "max_delay": "0"}
    assert input_options(CameraConfig("c", "http://h/x.ts", timeout_seconds=1)) == {"rw_timeout": "1000000"}
    assert input_options(CameraConfig("c", "/x.mp4")) == {}


def test_redact_hides_only_the_password_of_a_camera_url() -> None:
    from edgerec.redact import redact as redact_url

    assert redact_url("rtsp://u:p@10.0.0.2:554/s") == "rtsp://u:***@10.0.0.2:554/s"
    assert redact_url("rtsp://10.0.0.2/s") == "rtsp://10.0.0.2/s"
