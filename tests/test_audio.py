"""The audio policy through the real RTSP server: ``drop`` says once per connection that a track was
dropped (log and status); ``keep`` stores AAC, G.711 and Opus in the segments, declared in the header,
through crash recovery, and into exports in sync with the video (checked with ffprobe)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import segfile
from edgerec.config import CameraConfig
from edgerec.daemon.status import CameraStatus, CatalogFacts, camera_status, status_news
from edgerec.export import ExportAccess, export_segments
from edgerec.payloadstreams import AudioSpec, PayloadStreams, parse_declaration
from edgerec.recorder import CameraAudio
from tests.helpers.daemon import wait_for
from tests.helpers.media import make_h264_clip, needs_rtsp, start_rtsp_server, stop_process
from tests.helpers.recorder import Rig, decrypted_packets, make_rig, recorder_stats

FPS = 25
GOP = 25
CLIP_S = 5
# Shorter than a GOP by a tenth: every keyframe cuts, whatever jitter the live server's timestamps have
# (at exactly one GOP a keyframe stamped a tick early would not cut, and a segment would hold two GOPs).
SEGMENT_SECONDS = 0.9
ACCESS = ExportAccess("tester", "audio policy check")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.mkv"
    make_h264_clip(path, CLIP_S, fps=FPS, gop=GOP)
    return path


def ffprobe(path: Path) -> dict:
    out = subprocess.run([shutil.which("ffprobe") or "ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,start_time,duration,sample_rate", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True, timeout=30)
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


def payload_streams(path: Path, key: X25519PrivateKey) -> dict[str, int]:
    """Packets per stream kind in a segment's decrypted payload."""
    payload = b"".join(segfile.decrypt(path, key, allow_recovered=True))
    counts: dict[str, int] = {}
    with av.open(io.BytesIO(payload), format="mpegts") as ts:
        for packet in ts.demux():
            if packet.size:
                counts[packet.stream.type] = counts.get(packet.stream.type, 0) + 1
    return counts


def record(tmp_path: Path, clip: Path, audio: str | None, policy: str, segments: int) -> Rig:
    url, server = start_rtsp_server(clip, audio=audio)
    rig = make_rig(tmp_path, CameraConfig("room", url, timeout_seconds=3.0, audio=policy),
                   segment_seconds=SEGMENT_SECONDS)
    rig.recorder.start()
    try:
        wait_for(lambda: len(rig.sealed) >= segments, 30, f"{segments} segments")
    finally:
        rig.recorder.stop(10)
        stop_process(server)
    return rig


# ----- the declaration (pure) ---------------------------------------------------------------------
def test_declaration_round_trip_and_old_segments() -> None:
    assert parse_declaration("h264") == PayloadStreams("h264")  # every segment written before audio
    streams = PayloadStreams("hevc", AudioSpec("pcm_alaw", 8000, 1))
    assert streams.declaration() == "hevc,pcm_alaw/8000/1"
    assert parse_declaration(streams.declaration()) == streams
    for bad in ("", "h264,", "h264,mp3/44100/2", "h264,aac/16000", "h264,aac/016000/1", "h264,aac/1/1,x",
                "aac/16000/1"):
        with pytest.raises(ValueError):
            parse_declaration(bad)


def test_status_shows_the_audio_policy_and_it_is_news() -> None:
    base = recorder_stats("gate")
    facts = CatalogFacts(summaries={}, gaps={}, held_bytes=0, open_incident_ids=frozenset())
    dropped = camera_status(CameraStatus(replace(base, audio=CameraAudio("aac", False)), 0), facts)
    assert dropped["audio"] == {"codec": "aac", "policy": "dropped", "dropped_packets": 0}
    kept = camera_status(CameraStatus(replace(base, audio=CameraAudio("aac", True)), 0), facts)
    none = camera_status(CameraStatus(base, 0), facts)
    assert none["audio"] is None
    news = [status_news({"cameras": {"gate": c}}) for c in (dropped, kept, none)]
    assert len(set(news)) == 3


# ----- drop -----------------------------------------------------------------------------------------
@needs_rtsp
def test_drop_logs_once_per_connection_and_stores_video_only(tmp_path: Path, clip: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgerec")
    rig = record(tmp_path, clip, "aac", "drop", 2)
    events = [r for r in caplog.records if r.getMessage().startswith("audio track dropped")]
    connections = [r for r in caplog.records if r.getMessage().startswith("source opened")]
    assert len(events) == len(connections) == 1
    assert "codec=aac" in events[0].getMessage() and "reason=policy_drop" in events[0].getMessage()
    assert rig.recorder.stats().audio == CameraAudio("aac", False)
    for seg in rig.sealed:
        assert seg.meta.codec == "h264"
        assert set(payload_streams(seg.path, rig.private_key)) == {"video"}


# ----- keep -----------------------------------------------------------------------------------------
KEPT = {"aac": ("aac", "aac", "audio"), "pcma": ("pcm_alaw", "aac", "data"),
        "pcmu": ("pcm_mulaw", "aac", "data"), "opus": ("opus", "opus", "audio")}


@needs_rtsp
@pytest.mark.parametrize("audio", list(KEPT))
def test_keep_stores_audio_and_exports_it_in_sync(tmp_path: Path, clip: Path, audio: str) -> None:
    stored, exported, kind = KEPT[audio]
    rig = record(tmp_path, clip, audio, "keep", 3)
    stats = rig.recorder.stats()
    assert stats.audio is not None and stats.audio.codec == stored and stats.audio.kept
    segments = rig.sealed[:3]
    for seg in segments:
        declared = parse_declaration(seg.meta.codec)
        assert declared.video == "h264" and declared.audio is not None and declared.audio.codec == stored
        counts = payload_streams(seg.path, rig.private_key)
        assert counts.get(kind, 0) > 0, f"{seg.path.name} carries no {stored}: {counts}"
        # Segment cutting works on the video alone: one whole GOP each (as without audio: the server's
        # encoder makes 26-frame GOPs), every frame counted.
        assert seg.frames == segments[0].frames >= GOP
        assert len(decrypted_packets(seg.path, rig.private_key)) == seg.frames
    assert stats.dropped_packets == 0 and stats.discontinuities == 0

    out = tmp_path / "export.mp4"
    result = export_segments([s.path for s in segments], rig.private_key, out, access=ACCESS)
    assert result.frames == sum(s.frames for s in segments) and not result.problems
    probe = ffprobe(out)
    assert probe["video"]["codec_name"] == "h264"
    assert probe["audio"]["codec_name"] == exported
    # Within 100 ms, plus one AAC frame of encoder priming that ffprobe counts for copied AAC.
    priming_s = 1024 / int(probe["audio"]["sample_rate"]) if exported == "aac" else 0.0
    assert abs(float(probe["audio"]["start_time"]) - float(probe["video"]["start_time"])) < 0.1 + priming_s
    assert abs(float(probe["audio"]["duration"]) - float(probe["video"]["duration"])) < 2.5 / FPS


@needs_rtsp
def test_kept_audio_survives_crash_recovery(tmp_path: Path, clip: Path) -> None:
    url, server = start_rtsp_server(clip, audio="pcma")
    rig = make_rig(tmp_path, CameraConfig("room", url, timeout_seconds=3.0, audio="keep"),
                   segment_seconds=4.0)
    rig.recorder.start()
    copy = tmp_path / "cut.seg.partial"
    try:
        # The power goes while the first segment is being written: what its file holds then.
        def partial_with_chunks() -> bool:
            partials = list(rig.data_dir.rglob("*.partial"))
            if not partials or partials[0].stat().st_size < 20_000:
                return False
            shutil.copyfile(partials[0], copy)
            return True
        wait_for(partial_with_chunks, 30, "a partial segment with some chunks")
    finally:
        rig.recorder.stop(10)
        stop_process(server)
    recovered = segfile.recover_partial(copy, rig.recorder.signing_key)
    assert recovered.state == "recovered" and recovered.frames > 0
    counts = payload_streams(recovered.path, rig.private_key)
    assert counts.get("data", 0) > 0 and counts.get("video", 0) > 0
    out = tmp_path / "recovered.mp4"
    result = export_segments([recovered.path], rig.private_key, out, access=ACCESS)
    assert result.frames == recovered.frames and not result.problems
    probe = ffprobe(out)
    assert probe["audio"]["codec_name"] == "aac"
    assert abs(float(probe["audio"]["duration"]) - float(probe["video"]["duration"])) < 0.15
