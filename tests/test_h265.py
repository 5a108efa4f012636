"""H.265 cameras through the real RTSP server: the first segment has the camera's own timing, no
timestamp discontinuity is reported on connect, and exports are tagged ``hvc1`` for Apple players."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from edgerec.config import CameraConfig
from edgerec.export import ExportAccess, export_segments
from tests.helpers.daemon import wait_for
from tests.helpers.media import make_hevc_clip, needs_rtsp, start_rtsp_server, stop_process
from tests.helpers.recorder import decrypted_packets, make_rig

FPS = 25
GOP_FRAMES = 50  # a keyframe every 2 s, as cameras are usually set
SEGMENT_SECONDS = 2.0


def ffprobe_video(path: Path) -> dict:
    out = subprocess.run([shutil.which("ffprobe") or "ffprobe", "-v", "error", "-select_streams", "v:0",
                          "-show_entries", "stream=codec_name,codec_tag_string,nb_frames:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


@needs_rtsp
@pytest.mark.parametrize("audio", [None, "aac"], ids=["video-only", "with-audio"])
def test_h265_camera_first_segment_has_the_camera_timing(tmp_path: Path, audio: str | None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    clip = tmp_path / "clip.mkv"
    make_hevc_clip(clip, 12, fps=FPS, gop=GOP_FRAMES)
    url, server = start_rtsp_server(clip, audio=audio)
    rig = make_rig(tmp_path, CameraConfig("hevc", url, timeout_seconds=3.0), segment_seconds=SEGMENT_SECONDS)
    caplog.set_level(logging.INFO, logger="edgerec")
    rig.recorder.start()
    try:
        wait_for(lambda: len(rig.sealed) >= 3, 40, "three segments from the H.265 camera")
    finally:
        rig.recorder.stop(10)
        stop_process(server)
    assert not [r for r in caplog.records if "timestamp discontinuity" in r.getMessage()]
    stats = rig.recorder.stats()
    assert stats.discontinuities == 0 and stats.dropped_packets == 0, "the first GOP is kept"
    first, second = rig.sealed[0], rig.sealed[1]
    assert first.frames == second.frames == GOP_FRAMES
    assert len(decrypted_packets(first.path, rig.private_key)) == GOP_FRAMES
    for seg in (first, second):
        # Anchored at the local clock, so the time between keyframe arrivals; the stream says 2.0 s.
        assert abs((seg.end_ns - seg.meta.start_ns) / 1e9 - SEGMENT_SECONDS) < 0.1
    assert first.meta.codec == "hevc"

    out = tmp_path / "export.mp4"
    result = export_segments([s.path for s in rig.sealed[:3]], rig.private_key, out,
                             access=ExportAccess("tester", "H.265 export check"))
    assert result.frames == 3 * GOP_FRAMES
    probe = ffprobe_video(out)
    assert probe["streams"][0]["codec_name"] == "hevc"
    assert probe["streams"][0]["codec_tag_string"] == "hvc1", "Apple players open hvc1, not hev1"
    assert abs(float(probe["format"]["duration"]) - 3 * SEGMENT_SECONDS) < 0.05
