"""Stream robustness and camera health, proved with real servers and real faults through the recorder.

RTSP (GStreamer) and TS-over-TCP (ffmpeg) servers are killed, hung with SIGSTOP and started again; a
camera's video dies while its audio goes on, a camera program hangs; clips with timestamp jumps, resets,
wraps and a start in the middle of a GOP are recorded and exported; a raw lavfi source is encoded,
recorded and exported; tamper detection runs wired into the recorder; and the daemon publishes, audits
and shows it all (camera_down/camera_up/tamper events over a private mosquitto, the audit log, the status
file, ``edgerec ls``). Every wait has a deadline; stall and timeout values are short so the faults are
seen quickly.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np
import pytest

from edgerec import segfile
from edgerec.catalog import Catalog
from edgerec.config import CameraConfig, DurabilityConfig, EncoderConfig
from edgerec.errors import EdgerecError
from edgerec.export import ExportAccess, export_segments
from edgerec.health import HealthChange
from edgerec.recorder import ChainState, ConnectionChange, stall_age_s, timeline_for
from edgerec.source import choose_encoder, is_live, read_timeout_s
from edgerec.statusfile import read_status
from tests.helpers.broker import Broker, Listener, needs_mosquitto
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config
from tests.helpers.media import (
    PacedTcpServer,
    ffmpeg_tcp_push,
    make_h264_clip,
    needs_rtsp,
    retime_clip,
    scan_tree_for_plaintext,
    start_rtsp_server,
    stop_process,
    video_packets,
)
from tests.helpers.recorder import Rig, assert_chain, decrypted_packets, make_rig
from tests.helpers.scenes import FAST, FROZEN_PICTURE, WORLD_B, black, encode_clip, normal, view

FIRST = ChainState(7, bytes(range(32)))  # the chain make_rig starts from
TIMEOUT_S = 1.0
STALL_S = 2.0


def live_rig(tmp_path: Path, name: str, url: str, **kwargs) -> tuple[Rig, list[ConnectionChange]]:
    changes: list[ConnectionChange] = []
    camera = CameraConfig(name, url, timeout_seconds=TIMEOUT_S, stall_seconds=STALL_S)
    return make_rig(tmp_path, camera, on_connection=changes.append, **kwargs), changes


def downs(changes: list[ConnectionChange]) -> list[ConnectionChange]:
    return [c for c in changes if not c.up]


def assert_all_verify(rig: Rig) -> None:
    """Every sealed segment passes the full check (chunks decrypted, signature, chain) and plays."""
    prev = FIRST.prev_digest
    for seg in rig.sealed:
        assert segfile.verify(seg.path, private_key=rig.private_key, prev_digest=prev) == []
        prev = seg.digest
        assert len(decrypted_packets(seg.path, rig.private_key)) == seg.frames > 0
    assert_chain(rig.sealed, FIRST)
    assert scan_tree_for_plaintext(rig.data_dir) == {}


def assert_one_gap_between_before_and_after(rig: Rig, before: int) -> tuple[int, int, str]:
    """The outage is one gap from the end of the last segment before it to the start of the first after."""
    [(camera, from_ns, to_ns, reason)] = rig.gaps
    assert camera == rig.recorder.camera.name
    assert from_ns == rig.sealed[before - 1].end_ns
    assert to_ns == rig.sealed[before].meta.start_ns
    assert to_ns > from_ns
    return from_ns, to_ns, reason


def export_and_decode(tmp_path: Path, rig: Rig) -> tuple[int, int]:
    """Export every sealed segment to one MP4; return (frames exported, frames decoded from the MP4)."""
    out = tmp_path / "export.mp4"
    result = export_segments([s.path for s in rig.sealed], rig.private_key, out,
                             access=ExportAccess(by="tester", reason="robustness test"))
    assert result.problems == ()
    with av.open(str(out)) as mp4:
        decoded = sum(1 for _ in mp4.decode(video=0))
    return result.frames, decoded


# ----- RTSP: server killed and started again; server hung ----------------------------------------------
@needs_rtsp
def test_rtsp_server_killed_mid_stream_and_restarted_resumes_with_one_gap(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 20, fps=25, gop=25)
    url, server = start_rtsp_server(clip)
    rig, changes = live_rig(tmp_path, "ipcam", url)
    rig.recorder.start()
    try:
        wait_for(lambda: len(rig.sealed) >= 2, 15, "segments before the fault")
        server.kill()
        killed = time.monotonic()
        wait_for(lambda: downs(changes), 5, "the camera reported down")
        assert time.monotonic() - killed < 2 * TIMEOUT_S + 1.0
        assert rig.gaps == [], "the gap is reported when it ends, the outage at once"
        before = wait_for(lambda: rig.recorder.stats().state in ("backoff", "connecting") and len(rig.sealed),
                          5, "the open segment sealed at the disconnect")
        stats = rig.recorder.stats()
        assert stats.down_since_ns is not None and not stats.connected
        server.wait(5)
        url, server = start_rtsp_server(clip, port=urlsplit(url).port)
        wait_for(lambda: len(rig.sealed) >= before + 1, 20, "a segment after the restart")
    finally:
        rig.recorder.stop(10)
        stop_process(server)

    assert_all_verify(rig)
    from_ns, to_ns, _ = assert_one_gap_between_before_and_after(rig, before)
    [down, up] = changes
    assert (down.up, up.up) == (False, True)
    # The gap ends where the footage after the outage begins: the camera's first keyframe is stamped with
    # when it was sent, so at or a little before the moment its packets arrived and it was reported up.
    assert down.since_ns <= from_ns + 10**9 and from_ns <= to_ns <= up.at_ns
    assert up.at_ns - to_ns < 2 * 10**9
    assert up.reason == down.reason
    stats = rig.recorder.stats()
    assert stats.down_since_ns is None and stats.last_gap == (from_ns, to_ns, rig.gaps[0][3])
    assert stats.reconnects >= 1


@needs_rtsp
@pytest.mark.timeout(120)
def test_camera_back_after_a_twelve_second_outage_records_again_within_five_seconds(
        tmp_path: Path, officer: OfficerKey) -> None:
    """The reported case: after a 12 s outage the next try came 15 s later. Measured from the daemon's
    status file (the camera delivers again: no longer down, recording) and its catalog (a new segment)."""
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 60, fps=25, gop=25)
    url, server = start_rtsp_server(clip)
    data_dir, status_path = tmp_path / "data", tmp_path / "status.json"
    camera = {"name": "gate", "url": url, "timeout_seconds": TIMEOUT_S, "stall_seconds": STALL_S,
              "health": False}
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[camera], status_file=str(status_path))

    def gate_status() -> dict:
        try:
            return read_status(status_path)["cameras"]["gate"]
        except (EdgerecError, KeyError):  # not written yet
            return {}

    def delivering() -> bool:
        gate = gate_status()
        return (gate.get("state") == "recording" and gate.get("connected") is True
                and not gate.get("down_since"))

    try:
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: segment_count(data_dir) >= 2, 30, "segments before the outage")
            server.kill()
            server.wait(5)
            wait_for(lambda: gate_status().get("down_since"), 10, "the camera reported down")
            time.sleep(12.0)  # the outage: the daemon keeps trying meanwhile
            before = segment_count(data_dir)
            url, server = start_rtsp_server(clip, port=urlsplit(url).port)
            restarted = time.monotonic()
            wait_for(delivering, 10, "the camera recording again")
            back_s = time.monotonic() - restarted
            wait_for(lambda: segment_count(data_dir) > before, 10, "a segment after the outage")
            gate = gate_status()
            assert daemon.terminate() == 0, daemon.log()
    finally:
        stop_process(server)
    assert back_s <= 5.0, f"recording again {back_s:.1f} s after the camera came back"
    # The outage's error is over: not current, kept as a past error with its times.
    assert gate["error"] is None
    assert any(e.get("until") for e in gate["past_errors"])


@needs_rtsp
def test_rtsp_server_hung_with_sigstop_times_out_and_recovers_after_sigcont(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 20, fps=25, gop=25)
    url, server = start_rtsp_server(clip)
    rig, changes = live_rig(tmp_path, "ipcam", url)
    rig.recorder.start()
    try:
        wait_for(lambda: rig.sealed, 15, "a segment before the hang")
        os.kill(server.pid, signal.SIGSTOP)
        hung = time.monotonic()
        [down] = wait_for(lambda: downs(changes), 10, "the hung camera reported down")
        detected_s = time.monotonic() - hung
        # Read timeout of 1 s: FFmpeg notices within about twice that (plus our 0.2 s poll of the list).
        assert detected_s <= 2 * TIMEOUT_S + 0.5, f"hang noticed after {detected_s:.2f} s"
        before = len(rig.sealed)
        wait_for(lambda: rig.recorder.stats().reconnects >= 2, 10, "a reconnect attempt while hung")
        os.kill(server.pid, signal.SIGCONT)
        wait_for(lambda: rig.recorder.stats().down_since_ns is None, 20, "the camera back after SIGCONT")
        wait_for(lambda: len(rig.sealed) >= before + 1, 10, "a segment after SIGCONT")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        rig.recorder.stop(10)
        stop_process(server)
    assert_all_verify(rig)
    assert [c.up for c in changes] == [False, True]
    assert len(rig.gaps) == 1


# ----- stalls: reads that do not block, camera programs that hang ---------------------------------------
def test_video_stopping_while_audio_goes_on_is_a_stall(tmp_path: Path) -> None:
    """The read never blocks (audio keeps coming) yet no video arrives: the stall watchdog reconnects."""
    clip = tmp_path / "av.ts"
    # 2 s of video, then 30 s of audio only: a camera whose video encoder died.
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                    "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=30",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "mp2", "-f", "mpegts",
                    str(clip)], check=True, timeout=60)
    server = PacedTcpServer(clip, bytes_per_s=clip.stat().st_size / 10)
    # Audio keeps every read short, so no read timeout fires: only the stall watchdog can notice.
    changes: list[ConnectionChange] = []
    camera = CameraConfig("av", server.url, timeout_seconds=3 * STALL_S, stall_seconds=STALL_S)
    rig = make_rig(tmp_path, camera, on_connection=changes.append)
    rig.recorder.start()
    try:
        [down] = wait_for(lambda: downs(changes), 15, "the stall noticed")
    finally:
        rig.recorder.stop(10)
        server.close()
    assert down.reason.startswith("stalled: no packet for")
    stats = rig.recorder.stats()
    assert stats.stalls == 1
    assert rig.sealed and rig.sealed[0].frames >= 25
    assert_all_verify(rig)


def test_exec_camera_that_goes_quiet_is_stalled_and_restarted(tmp_path: Path) -> None:
    ts_clip = tmp_path / "clip.ts"
    make_h264_clip(ts_clip, 1, fps=25, gop=25)
    raw = tmp_path / "clip.h264"
    raw.write_bytes(b"".join(p[3] for p in video_packets(ts_clip)))
    # A camera program that sends one second of video and then hangs without closing its output.
    rig, changes = live_rig(tmp_path, "pi", f"exec:sh -c 'cat {raw}; exec sleep 60'")
    rig.recorder.start()
    try:
        wait_for(lambda: len(downs(changes)) and rig.recorder.stats().reconnects >= 1, 10, "the stall")
        wait_for(lambda: len(rig.sealed) >= 2, 10, "a segment from the restarted program")
    finally:
        rig.recorder.stop(10)
    assert downs(changes)[0].reason.startswith("stalled")
    assert rig.recorder.stats().stalls >= 1
    assert_all_verify(rig)


# ----- timestamps ---------------------------------------------------------------------------------------
CLIP_FRAMES = 50
GOP_FRAMES = 10
JUMP_AT = 27  # a P-frame in the middle of the third GOP
TICKS_PER_FRAME = 3600  # 25 fps in MPEG-TS's 90 kHz
ONE_HOUR_TICKS = 3600 * 90_000


def shift_from(at: int, ticks: int):
    def retime(i: int, pts: int | None, dts: int | None) -> tuple[int | None, int | None]:
        add = ticks if i >= at else 0
        return (None if pts is None else pts + add), (None if dts is None else dts + add)
    return retime


CLIPS = {
    # camera clock stepped forward by an hour mid-stream
    "jump": {"retime": shift_from(JUMP_AT, ONE_HOUR_TICKS)},
    # server restarted its media: timestamps start again from zero
    "reset": {"retime": shift_from(JUMP_AT, -JUMP_AT * TICKS_PER_FRAME), "restart_at": JUMP_AT},
    # 33-bit MPEG-TS timestamps wrap around a second into the clip
    "wrap": {"retime": shift_from(0, (1 << 33) - 90_000)},
}


@pytest.mark.parametrize("fault", list(CLIPS))
def test_timestamp_faults_keep_recording_and_export_plays(tmp_path: Path, fault: str) -> None:
    made = tmp_path / "made.ts"
    frames = make_h264_clip(made, CLIP_FRAMES / 25, fps=25, gop=GOP_FRAMES)
    clip = tmp_path / f"{fault}.ts"
    retime_clip(made, clip, **CLIPS[fault])
    # Paced as a live camera would send it, so the arrival clock and the stream disagree as in real life.
    camera = CameraConfig("cam", str(clip), realtime=True, loop=False)
    rig = make_rig(tmp_path, camera, exit_at_eof=True)
    rig.recorder.start()
    rig.recorder.join(30)
    rig.recorder.stop(5)

    assert rig.recorder.finished
    assert sum(s.frames for s in rig.sealed) == frames, "no packet lost to the fault"
    stats = rig.recorder.stats()
    assert stats.dropped_packets == 0
    assert stats.discontinuities == (0 if fault == "wrap" else 1)
    starts = [s.meta.start_ns for s in rig.sealed]
    assert starts == sorted(starts)
    for a, b in zip(rig.sealed, rig.sealed[1:], strict=False):
        assert a.end_ns <= b.meta.start_ns + 50_000_000, "segments do not overlap on the clock"
    assert (rig.sealed[-1].end_ns - rig.sealed[0].meta.start_ns) / 1e9 == pytest.approx(2.0, abs=0.5)
    assert_all_verify(rig)
    exported, decoded = export_and_decode(tmp_path, rig)
    assert exported == decoded == frames


def test_stream_starting_with_non_keyframes_records_from_the_first_keyframe(tmp_path: Path) -> None:
    made = tmp_path / "made.ts"
    make_h264_clip(made, 3, fps=25, gop=25)
    clip = tmp_path / "midgop.ts"
    retime_clip(made, clip, lambda i, pts, dts: (pts, dts), skip=10)
    camera = CameraConfig("cam", str(clip), realtime=False, loop=False)
    rig = make_rig(tmp_path, camera, exit_at_eof=True)
    rig.recorder.start()
    rig.recorder.join(30)
    rig.recorder.stop(5)

    assert rig.recorder.stats().dropped_packets == 15  # the rest of the first GOP
    assert sum(s.frames for s in rig.sealed) == 50
    first = rig.sealed[0]
    with av.open(io.BytesIO(b"".join(segfile.decrypt(first.path, rig.private_key))),
                 format="mpegts") as ts:
        assert next(p for p in ts.demux(video=0) if p.size).is_keyframe
    assert_all_verify(rig)
    assert export_and_decode(tmp_path, rig) == (50, 50)


# ----- raw sources --------------------------------------------------------------------------------------
def test_raw_lavfi_source_is_encoded_recorded_and_exported(tmp_path: Path) -> None:
    camera = CameraConfig("raw", "lavfi:testsrc2=size=320x240:rate=25:duration=3", realtime=False,
                          encoder=EncoderConfig(codec="auto", bitrate_bps=500_000, gop_seconds=1.0))
    rig = make_rig(tmp_path, camera, exit_at_eof=True, health_thresholds=FAST)
    rig.recorder.start()
    rig.recorder.join(30)
    health = rig.recorder.stats().health
    rig.recorder.stop(5)

    assert rig.recorder.finished
    # The health worker decodes the encoder's own keyframes.
    assert health is not None and health["keyframes"] >= 1 and health["decode_errors"] == 0
    assert [s.meta.codec for s in rig.sealed] == ["h264"] * len(rig.sealed)
    assert sum(s.frames for s in rig.sealed) == 75
    assert len(rig.sealed) == 3  # GOP of 1 s, segments of 1 s
    assert_all_verify(rig)
    assert export_and_decode(tmp_path, rig) == (75, 75)


def test_encoder_choice_is_automatic_and_can_be_overridden() -> None:
    auto = choose_encoder("auto")
    assert auto in ("h264_v4l2m2m", "libx264")
    if not Path("/dev/video11").exists():  # the Pi's stateful H.264 encoder node
        assert auto == "libx264"
    assert choose_encoder("libx264") == "libx264"


V4L2_DEVICES = sorted(str(p) for p in Path("/dev").glob("video*"))


@pytest.mark.skipif(not V4L2_DEVICES, reason="no V4L2 capture device")
def test_v4l2_camera_is_recorded(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, CameraConfig("usb", V4L2_DEVICES[0]))
    rig.recorder.start()
    try:
        wait_for(lambda: rig.sealed, 20, "a segment from the V4L2 device")
    finally:
        rig.recorder.stop(10)
    assert_all_verify(rig)


# ----- tamper detection wired into the recorder ---------------------------------------------------------
SWITCH_FRAME = 40  # 1.6 s of the normal scene first
TAMPER_CLIP_S = 5.0


def switch_to(after: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    return lambda i: normal(i) if i < SWITCH_FRAME else after(i)


SCENES = {
    "black": switch_to(black),
    "frozen": switch_to(lambda i: FROZEN_PICTURE),
    "moved": switch_to(lambda i: view(WORLD_B, i)),
    "normal": normal,
}


def test_tamper_detection_through_the_recorder(tmp_path: Path) -> None:
    """Four cameras record at once, in real time: three clips go wrong after 1.6 s, one stays normal."""
    rigs: dict[str, Rig] = {}
    seen: dict[str, list[HealthChange]] = {name: [] for name in SCENES}
    for name, scene in SCENES.items():
        clip = tmp_path / f"{name}.ts"
        clip.write_bytes(encode_clip(scene, seconds=TAMPER_CLIP_S))
        camera = CameraConfig(name, str(clip), realtime=True, loop=False)
        rigs[name] = make_rig(tmp_path / name, camera, exit_at_eof=True, health_thresholds=FAST,
                              on_health=lambda cam, change: seen[cam].append(change),
                              durability=DurabilityConfig(flush_seconds=0.5, fsync_seconds=1.0))
    for rig in rigs.values():
        rig.recorder.start()
    for rig in rigs.values():
        rig.recorder.join(30)
        rig.recorder.stop(5)

    raised = {name: sorted({c.condition for c in changes if c.active}) for name, changes in seen.items()}
    assert raised == {"black": ["dark"], "frozen": ["frozen"], "moved": ["moved"], "normal": []}
    for name, rig in rigs.items():
        assert rig.recorder.finished
        health = rig.recorder.stats().health
        assert health is not None and health["dropped"] == 0 and health["decode_errors"] == 0
        assert_all_verify(rig)
        # Only encrypted segments were written: no decoded picture reaches the disk.
        assert {p.suffix for p in rig.data_dir.rglob("*") if p.is_file()} == {".seg"}, name


# ----- TS over TCP through the daemon (the encoder serves, the recorder connects): events, audit, status
@needs_mosquitto
def test_daemon_publishes_and_audits_camera_down_up_and_tamper_and_lists_the_gap(
        tmp_path: Path, officer: OfficerKey) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 20, fps=25, gop=25)
    dark = tmp_path / "dark.ts"
    dark.write_bytes(encode_clip(switch_to(black), seconds=TAMPER_CLIP_S))
    url, pusher = ffmpeg_tcp_push(clip)
    data_dir = tmp_path / "data"
    with Broker(tmp_path / "mosquitto") as broker:
        cfg = write_config(
            tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, device_id="robust",
            segment_seconds=1, mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port},
            health={"analysis_interval_s": 0, "dark_after_s": 1, "clear_after_s": 1},
            cameras=[{"name": "enc", "url": url, "timeout_seconds": TIMEOUT_S, "stall_seconds": STALL_S,
                      "health": False},
                     {"name": "lens", "url": str(dark), "loop": False}])
        events = "edgerec/robust/events"

        def event(kind: str, camera: str, at_most_s: float = 30) -> dict:
            return listener.wait_for(events, lambda m: (m.json()["event"], m.json().get("camera")) == (
                kind, camera), timeout_s=at_most_s).json()

        with Listener(broker, [events]) as listener, Daemon(cfg, tmp_path / "daemon.log") as daemon:
            tamper = event("tamper", "lens")
            assert (tamper["condition"], tamper["active"]) == ("dark", True)
            wait_for(lambda: segment_count(data_dir, "enc") >= 2, 30, "segments from the TCP camera")
            pusher.kill()
            down = event("camera_down", "enc", at_most_s=2 * TIMEOUT_S + 2)
            stop_process(pusher)
            url, pusher = ffmpeg_tcp_push(clip, port=urlsplit(url).port)
            up = event("camera_up", "enc")
            status_path = data_dir / "status.json"
            cam = wait_for(lambda: (st := read_status(status_path)["cameras"]["enc"])["gaps"] >= 1 and st, 20,
                           "the gap in the status")
            assert cam["down_since"] is None and cam["state"] == "recording"
            assert cam["last_gap"]["reason"] == down["reason"]
            assert daemon.terminate() == 0, daemon.log()
    stop_process(pusher)
    assert up["down_since"] == down["since"]
    audited = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    kinds = [(a["event"], a.get("camera")) for a in audited]
    assert ("tamper", "lens") in kinds
    assert kinds.index(("camera_down", "enc")) < kinds.index(("camera_up", "enc"))
    catalog = Catalog.open(data_dir)
    try:
        [gap] = catalog.gaps(camera="enc")
        segments = catalog.segments(camera="enc")
    finally:
        catalog.close()
    # One gap, from the end of the segment sealed at the disconnect to the start of the first one after.
    assert gap.from_ns in {s.end_ns for s in segments} and gap.to_ns in {s.start_ns for s in segments}
    assert not [s for s in segments if s.start_ns < gap.to_ns and s.end_ns > gap.from_ns]
    listed = run_cli("ls", "-c", str(cfg), check=True).stdout
    [gap_line] = [line for line in listed.splitlines() if line.strip().startswith("GAP")]
    assert down["reason"] in gap_line
    assert run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path)).returncode == 0


# ----- pure rules ---------------------------------------------------------------------------------------
def test_live_kinds_reconnect_and_files_end() -> None:
    assert [is_live(k) for k in ("rtsp", "http", "tcp", "exec", "v4l2")] == [True] * 5
    assert [is_live(k) for k in ("file", "lavfi", "testsrc")] == [False] * 3


def test_read_timeout_never_exceeds_the_stall_watchdog() -> None:
    assert read_timeout_s(CameraConfig("c", "rtsp://h/x", timeout_seconds=5, stall_seconds=10)) == 5
    assert read_timeout_s(CameraConfig("c", "rtsp://h/x", timeout_seconds=30, stall_seconds=10)) == 10


def test_segments_are_timed_by_the_local_clock_unless_a_file_is_read_fast() -> None:
    assert timeline_for(CameraConfig("c", "rtsp://h/x")) == "arrival"
    assert timeline_for(CameraConfig("c", "/clips/a.mp4", realtime=True)) == "arrival"
    assert timeline_for(CameraConfig("c", "/clips/a.mp4", realtime=False)) == "stream"


def test_stall_age_counts_from_the_attempt_or_its_last_packet() -> None:
    assert stall_age_s(100.0, 90.0, None) == 10.0
    assert stall_age_s(100.0, 90.0, 80.0) == 10.0  # a packet of the previous connection does not count
    assert stall_age_s(100.0, 90.0, 97.5) == 2.5
