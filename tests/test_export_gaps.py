"""Exports that tell the whole truth: a camera outage recorded by the real recorder from a real RTSP
server is a gap the export lists (with the catalog's reason) and the MP4 keeps (its clock jumps); the
export is trimmed to the requested range; progress and a closed output pipe are handled quietly."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec import keys, segfile
from edgerec.catalog import Catalog
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.exporttimeline import ExportGap, KnownGap, LeftOut, find_gaps, keep_range
from edgerec.progress import Progress
from edgerec.recorder import ChainState, Recorder, RecorderClock
from edgerec.source import open_source
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import OfficerKey, edgerec_cmd, make_officer_key, run_cli, wait_for
from tests.helpers.media import make_h264_clip, needs_rtsp, start_rtsp_server, stop_process

S = 1_000_000_000
FRAME_S = 0.04  # 25 fps
OUTAGE_CLOCK_JUMP_S = 20.0  # wall clock time that passes (for the recorder) while the camera is away


# ----- pure: what a trimmed export keeps, which gaps it lists --------------------------------------------
def test_keep_range_starts_at_the_keyframe_before_from_and_stops_at_to() -> None:
    walls = [0, 40, 80, 120, 160, 200]
    keys_ = [True, False, False, True, False, False]
    assert keep_range(walls, keys_, None, None) == (0, 6)
    assert keep_range(walls, keys_, 130, None) == (3, 6)  # decodes from the keyframe at 120
    assert keep_range(walls, keys_, 50, 130) == (0, 4)
    assert keep_range(walls, keys_, 120, 120) is None
    assert keep_range(walls, keys_, 201, None) is None  # every frame is before --from
    assert keep_range(walls, keys_, None, 0) is None


def test_keep_range_with_b_frames_never_keeps_a_frame_at_or_after_to() -> None:
    # Decode order I P B B: the P (presented at 120) comes before the B-frames that refer to it.
    walls = [0, 120, 40, 80]
    assert keep_range(walls, [True, False, False, False], None, 100) == (0, 1)


def test_find_gaps_lists_holes_with_the_recorded_reason_else_a_left_out_segment_else_unknown() -> None:
    footage = [(0, 10 * S), (10 * S, 20 * S), (44 * S, 50 * S), (60 * S, 70 * S), (80 * S, 90 * S)]
    known = [KnownGap(20 * S, 44 * S, "camera disconnected: end of stream"),
             KnownGap(95 * S, 99 * S, "disk full")]
    left_out = [LeftOut(50 * S, 60 * S, "segment x left out: tampered")]
    gaps = find_gaps(footage, known, left_out, from_ns=0, to_ns=120 * S)
    assert gaps == [
        ExportGap(20 * S, 44 * S, "camera disconnected: end of stream", "catalog"),
        ExportGap(50 * S, 60 * S, "segment x left out: tampered", "segments"),
        ExportGap(70 * S, 80 * S, "unknown", "segments"),
        ExportGap(95 * S, 99 * S, "disk full", "catalog"),  # after the footage: says why it ends early
    ]
    assert gaps[0].to_json_dict()["seconds"] == 24.0
    assert gaps[0].line() == ("gap 1970-01-01T00:00:20.000Z .. 1970-01-01T00:00:44.000Z (24.0 s): "
                              "camera disconnected: end of stream")


def test_a_gap_line_never_sends_control_characters_to_the_terminal() -> None:
    gap = ExportGap(0, S, "camera disconnected: \x1b]0;owned\x07\nfake line", "catalog")
    assert gap.line().endswith("camera disconnected: ?]0;owned??fake line")
    assert gap.to_json_dict()["reason"] == gap.reason  # JSON escapes it; the manifest keeps it whole


def test_find_gaps_ignores_jitter_and_a_range_that_reaches_beyond_the_footage() -> None:
    footage = [(10 * S, 20 * S), (20 * S + 300_000_000, 30 * S)]
    assert find_gaps(footage, [], [], from_ns=0, to_ns=100 * S) == []
    assert find_gaps([], [KnownGap(0, S, "x")], []) == []


# ----- pure: progress --------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place_after_the_first_seconds() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress("export", "segments", out, tty=True, clock=clock)
    progress(1, 10)
    assert out.getvalue() == ""  # quick work stays quiet
    clock.now += 3
    progress(4, 10)
    clock.now += 1
    progress(10, 10)
    progress.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "\rexport: [############------------------] 4/10 segments  40% 3 s" in text
    assert "10/10 segments 100% 4 s" in text


def test_progress_elsewhere_is_a_line_every_five_seconds() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = Progress("export", "segments", out, tty=False, clock=clock)
    for done in range(1, 41):
        clock.now += 0.5
        progress(done, 40)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines == ["export: 10/40 segments (25%, 5 s)", "export: 20/40 segments (50%, 10 s)",
                     "export: 30/40 segments (75%, 15 s)", "export: 40/40 segments (100%, 20 s)"]


# ----- a real outage ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outage:
    data_dir: Path
    officer: OfficerKey
    sealed: tuple[segfile.SealedSegment, ...]
    gap: tuple[int, int, str]  # as the recorder reported it (and the catalog holds it)


def record_an_outage(root: Path) -> Outage:
    """Record an RTSP camera that plays a 3 s clip per session, goes away and comes back. While it is
    away the recorder's wall clock moves on by OUTAGE_CLOCK_JUMP_S (the outage lasts that long for the
    recording, without the test waiting for it); the recorder reports the gap, the catalog stores it."""
    clip = root / "clip.mp4"
    make_h264_clip(clip, 3, fps=25, gop=25)
    officer = make_officer_key(root / "officer.key")
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    shift = [0]
    opens = [0]

    def opener(camera: CameraConfig, **kwargs: object) -> object:
        opens[0] += 1
        if opens[0] == 2:
            shift[0] += int(OUTAGE_CLOCK_JUMP_S * S)
        return open_source(camera, **kwargs)  # type: ignore[arg-type]

    sealed: list[segfile.SealedSegment] = []
    gaps: list[tuple[str, int, int, str]] = []
    url, server = start_rtsp_server(clip)
    recorder = Recorder(
        CameraConfig("gate", url, timeout_seconds=2.0), data_dir=data_dir, device_id="pi-test",
        segment_seconds=1.0, durability=DurabilityConfig(flush_seconds=0.5, fsync_seconds=1.0),
        recipients=[keys.parse_public_key(officer.public)], signing_key=Ed25519PrivateKey.generate(),
        chain=ChainState(0, bytes(32)), on_sealed=sealed.append, on_gap=lambda *gap: gaps.append(gap),
        clock=RecorderClock(wall_ns=lambda: time.time_ns() + shift[0]), open_source_fn=opener,
        rand=lambda: 0.0)
    recorder.start()
    try:
        wait_for(lambda: gaps and sum(1 for s in sealed if s.meta.start_ns >= gaps[0][2]) >= 3, 60,
                 "three segments after the camera came back")
    finally:
        recorder.stop(10)
        stop_process(server)
    camera, from_ns, to_ns, reason = gaps[0]
    catalog = Catalog.open(data_dir)
    try:
        for seg in sealed:
            catalog.add_segment(seg)
        catalog.add_gap(camera, from_ns, to_ns, reason)
    finally:
        catalog.close()
    return Outage(data_dir, officer, tuple(sorted(sealed, key=lambda s: s.meta.sequence)),
                  (from_ns, to_ns, reason))


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Outage:
    return record_an_outage(tmp_path_factory.mktemp("outage"))


def ffprobe_frames(path: Path) -> list[float]:
    proc = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                           "frame=pts_time", "-of", "csv=p=0", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [float(line.split(",")[0]) for line in proc.stdout.split()]


def ffprobe_format(path: Path) -> dict[str, str]:
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=start_time,duration",
                           "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # a valid MP4, per ffprobe
    return json.loads(proc.stdout)["format"]


@needs_rtsp
def test_an_outage_is_a_gap_the_export_lists_and_the_mp4_keeps(outage: Outage, tmp_path: Path) -> None:
    gap_from, gap_to, reason = outage.gap
    assert (gap_to - gap_from) / S >= OUTAGE_CLOCK_JUMP_S
    before = [s for s in outage.sealed if s.meta.start_ns < gap_from]
    after = [s for s in outage.sealed if s.meta.start_ns >= gap_to]
    # From mid-GOP in the first session to mid-GOP in the second one.
    from_ns = before[0].meta.start_ns + 500_000_000
    to_ns = after[1].meta.start_ns + 500_000_000
    out = tmp_path / "gate.mp4"
    proc = run_cli("export", "--data-dir", str(outage.data_dir), "--key", str(outage.officer.private_path),
                   "--camera", "gate", "--from", rfc3339(from_ns), "--to", rfc3339(to_ns), "-o", str(out),
                   "--reason", "outage check", "--by", "tester")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())

    # The manifest and the summary list the gap, with the reason the catalog holds.
    [gap] = manifest["gaps"]
    assert gap["reason"] == reason and gap["source"] == "catalog"
    assert (gap["from_ns"], gap["to_ns"]) == (gap_from, gap_to)
    assert "1 gap" in proc.stdout.splitlines()[0]
    assert f"({(gap_to - gap_from) / S:.1f} s): {reason}" in proc.stdout
    assert rfc3339(gap["from_ns"]) in proc.stdout and rfc3339(gap["to_ns"]) in proc.stdout

    # Trimmed: the first frame shown is the first at or after --from, the last one is before --to.
    rng = manifest["range"]
    assert 0 <= rng["first_frame_ns"] - from_ns < FRAME_S * S
    assert 0 < to_ns - rng["last_frame_ns"] <= FRAME_S * S + 1
    assert rng["first_frame"] == rfc3339(rng["first_frame_ns"])
    assert rng["preroll_frames"] >= 10  # the GOP from the keyframe before --from, decoded, not shown

    # The MP4 keeps real time: a player shows each frame at its recording time after the first one.
    times = ffprobe_frames(out)
    assert len(times) == manifest["output"]["frames_shown"]
    assert times[0] == pytest.approx(0.0, abs=0.001)
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    jump = max(steps)
    at = steps.index(jump)
    assert jump >= OUTAGE_CLOCK_JUMP_S  # the frame after the gap: 20+ s after the one before it
    # ... placed at its own recording time; within a session the MP4 follows the camera's timestamps frame
    # by frame, which may run a little apart from the local clock that anchors each segment.
    assert times[at + 1] == pytest.approx((gap["to_ns"] - rng["first_frame_ns"]) / S, abs=0.002)
    assert jump == pytest.approx(gap["seconds"] + FRAME_S, abs=0.25)
    assert all(0 <= step < 0.1 for i, step in enumerate(steps) if i != at)  # no other jump
    # Within a session the output follows the stream's timestamps; the local clock that stamps each segment
    # may be off from them by up to a GOP (an RTSP server sends its first GOP in a burst).
    assert times[-1] == pytest.approx((rng["last_frame_ns"] - rng["first_frame_ns"]) / S, abs=1.0)
    fmt = ffprobe_format(out)
    assert float(fmt["start_time"]) == pytest.approx(0.0, abs=0.001)
    assert float(fmt["duration"]) == pytest.approx(manifest["output"]["duration_s"], abs=0.01)
    assert float(fmt["duration"]) == pytest.approx(times[-1] + FRAME_S, abs=0.01)
    assert manifest["policy"]["gaps"].startswith("kept: the output keeps real time")
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.stat(f"{out}.manifest.json").st_mode & 0o777 == 0o600


def test_a_closed_output_pipe_ends_a_command_quietly(night: Night, tmp_path: Path) -> None:
    outage = night
    """``edgerec ls | head -1``: the reader goes away; no BrokenPipe traceback, whatever the command."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        for args in (("ls", "--data-dir", str(outage.data_dir)),
                     ("ls", "--data-dir", str(outage.data_dir), "--json"),
                     ("export", "--data-dir", str(outage.data_dir), "--key", str(outage.officer.private_path),
                      "--camera", "gate", "--from", rfc3339(outage.sealed[0].meta.start_ns),
                      "--to", rfc3339(outage.sealed[-1].meta.start_ns), "-o", str(tmp_path / "x.mp4"),
                      "--reason", "pipe check")):
            proc = subprocess.run(edgerec_cmd(*args), stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  timeout=120, cwd=Path(__file__).resolve().parent.parent)
            assert proc.returncode == 141, (args, proc.stderr)
            assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    finally:
        os.close(write_end)
    # And through a real `| head -1`, the output's first line arrives intact.
    shell = subprocess.run(f"{' '.join(edgerec_cmd('ls', '--data-dir', str(outage.data_dir)))} | head -1",
                           shell=True, capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parent.parent)
    assert shell.returncode == 0 and shell.stdout.startswith("gate:"), shell.stdout
    assert "Traceback" not in shell.stderr, shell.stderr


def test_progress_lines_come_every_few_seconds_when_not_on_a_terminal(night: Night, tmp_path: Path) -> None:
    outage = night
    """stderr is a pipe here: no bar, and no line at all for an export done within seconds."""
    out = tmp_path / "quick.mp4"
    proc = run_cli("export", "--data-dir", str(outage.data_dir), "--key", str(outage.officer.private_path),
                   "--camera", "gate", "--from", rfc3339(outage.sealed[0].meta.start_ns),
                   "--to", rfc3339(outage.sealed[-1].meta.start_ns), "-o", str(out), "--reason", "r")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("export: ")]


class GoneStream(io.StringIO):
    """stderr whose reader went away: every write fails as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_progress_survives_a_stream_that_goes_away() -> None:
    clock = FakeClock()
    progress = Progress("export", "segments", GoneStream(), tty=True, clock=clock)
    clock.now += 10
    progress(1, 2)  # progress is not worth failing an export for
    progress.finish()


# ----- a gap longer than a 90 kHz MP4 sample can last -------------------------------------------------------
def record_file(root: Path, clip: Path, officer: OfficerKey, chain: ChainState, clock_offset_ns: int,
                signing_key: Ed25519PrivateKey) -> list[segfile.SealedSegment]:
    sealed: list[segfile.SealedSegment] = []
    recorder = Recorder(
        CameraConfig("gate", str(clip), realtime=False, loop=False), data_dir=root / "data",
        device_id="pi-test", segment_seconds=1.0, durability=DurabilityConfig(),
        recipients=[keys.parse_public_key(officer.public)], signing_key=signing_key, chain=chain,
        on_sealed=sealed.append, exit_at_eof=True,
        clock=RecorderClock(wall_ns=lambda: time.time_ns() + clock_offset_ns))
    recorder.start()
    recorder.join(60)
    recorder.stop(5)
    assert recorder.finished
    return sealed


@dataclass(frozen=True)
class Night:
    data_dir: Path
    officer: OfficerKey
    evening: tuple[segfile.SealedSegment, ...]
    morning: tuple[segfile.SealedSegment, ...]

    @property
    def sealed(self) -> tuple[segfile.SealedSegment, ...]:
        return self.evening + self.morning


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Night:
    """2 s of footage, 20 h without any (a camera switched off overnight), 2 s more: one device, one
    hash chain, no catalog."""
    root = tmp_path_factory.mktemp("night")
    clip = root / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    officer = make_officer_key(root / "officer.key")
    device = Ed25519PrivateKey.generate()
    evening = record_file(root, clip, officer, ChainState(0, bytes(32)), 0, device)
    morning = record_file(root, clip, officer, ChainState(len(evening), evening[-1].digest), 20 * 3600 * S,
                          device)
    return Night(root / "data", officer, tuple(evening), tuple(morning))


def test_an_overnight_gap_keeps_real_time_in_the_mp4(night: Night, tmp_path: Path) -> None:
    """The frame after 20 h without footage is shown 20 h after the one before it."""
    evening, morning = night.evening, night.morning
    out = tmp_path / "night.mp4"
    proc = run_cli("export", "--data-dir", str(night.data_dir), "--key", str(night.officer.private_path),
                   "--camera", "gate", "--from", rfc3339(evening[0].meta.start_ns),
                   "--to", rfc3339(morning[-1].end_ns + S), "-o", str(out), "--reason", "night")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    [gap] = manifest["gaps"]
    assert (gap["from_ns"], gap["to_ns"]) == (evening[-1].end_ns, morning[0].meta.start_ns)
    assert gap["reason"] == "unknown" and gap["source"] == "segments"  # no catalog here
    assert [s["chain"] for s in manifest["segments"]] == ["start"] + ["ok"] * (len(manifest["segments"]) - 1)
    times = ffprobe_frames(out)
    assert len(times) == 100
    assert times[50] - times[49] == pytest.approx(gap["seconds"] + FRAME_S, abs=0.002)
    assert times[50] > 20 * 3600
    assert float(ffprobe_format(out)["duration"]) == pytest.approx(times[-1] + FRAME_S, abs=0.002)
