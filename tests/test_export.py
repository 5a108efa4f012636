"""Export of recorded segments to MP4: frame-exact, continuous, atomic, with an honest manifest."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import keys, segfile
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.errors import EdgerecError, SegmentError
from edgerec.export import OUTSIDE_NOTE, RECOVERED_NOTE, ExportAccess, export_segments, manifest_path_for
from edgerec.recorder import ChainState, Recorder
from edgerec.timefmt import rfc3339
from tests.helpers.media import decoded_frame_hashes, make_h264_clip, video_packets
from tests.helpers.openfails import run_cli_with_open_failing

ACCESS = ExportAccess(by="tester", reason="export tests")


@dataclass(frozen=True)
class Recording:
    clip: Path
    frames: int
    segments: tuple[segfile.SealedSegment, ...]
    private_key: X25519PrivateKey


def record_clip(root: Path, *, bframes: bool, seconds: float = 6, segment_seconds: float = 2) -> Recording:
    """Record a real clip through the Recorder (fast ingest, file source ending the run)."""
    root.mkdir(parents=True, exist_ok=True)
    clip = root / "clip.mp4"
    frames = make_h264_clip(clip, seconds, fps=25, gop=25, bframes=bframes)
    private_key = X25519PrivateKey.generate()
    sealed: list[segfile.SealedSegment] = []
    recorder = Recorder(CameraConfig("gate", str(clip), realtime=False, loop=False), data_dir=root / "data",
                        device_id="pi-test", segment_seconds=segment_seconds, durability=DurabilityConfig(),
                        recipients=[private_key.public_key()], signing_key=Ed25519PrivateKey.generate(),
                        chain=ChainState(0, bytes(32)), on_sealed=sealed.append, exit_at_eof=True)
    recorder.start()
    recorder.join(60)
    recorder.stop(5)
    assert recorder.finished
    return Recording(clip, frames, tuple(sealed), private_key)


@pytest.fixture(scope="module", params=[False, True], ids=["no-bframes", "bframes"])
def recording(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record_clip(tmp_path_factory.mktemp("rec"), bframes=request.param)


def copy_segments(recording: Recording, into: Path) -> list[Path]:
    into.mkdir()
    return [Path(shutil.copy(s.path, into / s.path.name)) for s in recording.segments]


def ffprobe_errors(path: Path) -> str:
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_export_decodes_to_exactly_the_input_frames(tmp_path: Path, recording: Recording) -> None:
    out = tmp_path / "out.mp4"
    seen: list[tuple[int, int]] = []
    result = export_segments([s.path for s in recording.segments], recording.private_key, out,
                             access=ACCESS, progress=lambda done, total: seen.append((done, total)))

    assert result.problems == ()
    assert result.frames == recording.frames
    assert decoded_frame_hashes(out) == decoded_frame_hashes(recording.clip)
    assert ffprobe_errors(out) == ""
    assert seen == [(i, 3) for i in range(1, 4)]
    assert result.segments_ok == 3
    assert result.duration_s == pytest.approx(6.0, abs=0.1)
    assert set(tmp_path.iterdir()) == {out, manifest_path_for(out)}  # no temporary file left behind


def test_export_timestamps_are_continuous_and_increasing(tmp_path: Path, recording: Recording) -> None:
    out = tmp_path / "out.mp4"
    export_segments([s.path for s in recording.segments], recording.private_key, out, access=ACCESS)
    dts = [p[1] for p in video_packets(out)]
    steps = {b - a for a, b in zip(dts, dts[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() > 0, "one frame step everywhere, also across segment boundaries"


def test_manifest_lists_every_segment_with_its_verification(tmp_path: Path, recording: Recording) -> None:
    out = tmp_path / "evidence.mp4"
    export_segments([s.path for s in recording.segments], recording.private_key, out, access=ACCESS)
    manifest = json.loads(manifest_path_for(out).read_text())
    entries = manifest["segments"]
    assert [e["sequence"] for e in entries] == [0, 1, 2]
    assert [e["digest"] for e in entries] == [s.digest.hex() for s in recording.segments]
    assert all(e["verification"] == "ok" and e["included"] for e in entries)
    assert [e["chain"] for e in entries] == ["start", "ok", "ok"]  # sequence 0 starts the camera's chain
    assert all(e["state"] == "sealed" and e["note"] is None and e["frames_left_out"] == 0 for e in entries)
    assert sum(e["frames"] for e in entries) == recording.frames
    assert [e["output_start_s"] for e in entries] == pytest.approx([0.0, 2.0, 4.0], abs=0.05)
    assert manifest["output"]["frames"] == recording.frames
    assert manifest["problems"] == []


def test_export_and_manifest_are_private_and_say_who_and_why(tmp_path: Path, recording: Recording) -> None:
    out = tmp_path / "evidence.mp4"
    old_umask = os.umask(0o002)  # a permissive umask must not widen them
    try:
        export_segments([s.path for s in recording.segments], recording.private_key, out, access=ACCESS,
                        origin={"kind": "data_dir"})
    finally:
        os.umask(old_umask)
    for path in (out, manifest_path_for(out)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["access"] == {"by": "tester", "reason": "export tests"}
    assert manifest["origin"] == {"kind": "data_dir"}
    with pytest.raises(EdgerecError, match="needs a reason"):
        ExportAccess(by="x", reason=" ")


def test_a_segment_with_another_digest_than_expected_is_left_out(tmp_path: Path,
                                                                 recording: Recording) -> None:
    paths = [s.path for s in recording.segments]
    expected = [s.digest.hex() for s in recording.segments]
    expected[1] = "00" * 32
    result = export_segments(paths, recording.private_key, tmp_path / "o.mp4", access=ACCESS,
                             labels=["a", "b", "c"], expected_digests=expected)
    assert [s.included for s in result.segments] == [True, False, True]
    assert [s.path for s in result.segments] == ["a", "b", "c"]
    assert result.problems[0].startswith("b: digest ")


def test_tampered_segment_is_reported_and_the_export_goes_on(tmp_path: Path, recording: Recording) -> None:
    paths = copy_segments(recording, tmp_path / "segs")
    data = bytearray(paths[1].read_bytes())
    data[len(data) // 2] ^= 0x01
    paths[1].write_bytes(bytes(data))

    out = tmp_path / "out.mp4"
    result = export_segments(paths, recording.private_key, out, access=ACCESS)
    assert len(result.problems) >= 1 and str(paths[1]) in result.problems[0]
    assert result.segments_ok == 2
    [bad] = [s for s in result.segments if not s.included]
    assert bad.path == str(paths[1]) and bad.verification != "ok"
    # The bad segment's digest proves nothing, so the link after it is unconfirmed: not a second problem.
    assert result.segments[2].chain == "unconfirmed"
    assert len(result.problems) == 1
    expected = recording.frames - recording.segments[1].frames
    assert result.frames == expected
    assert len(decoded_frame_hashes(out)) == expected
    manifest = json.loads(manifest_path_for(out).read_text())
    assert [e["included"] for e in manifest["segments"]] == [True, False, True]


def test_wrong_key_exports_nothing_and_leaves_no_file(tmp_path: Path, recording: Recording) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(EdgerecError, match="nothing exported"):
        export_segments([s.path for s in recording.segments], X25519PrivateKey.generate(), out,
                        access=ACCESS)
    assert list(tmp_path.iterdir()) == []


def _frame_starts(payload: bytes) -> list[int]:
    """Where each video frame's bytes begin in a TS payload."""
    with av.open(io.BytesIO(payload), "r", format="mpegts") as ts:
        return [p.pos for p in ts.demux(ts.streams.video[0]) if p.size]


def test_recovered_segment_is_exported_with_exactly_the_frames_it_counts(tmp_path: Path) -> None:
    """A crash in the middle of a frame: the last kept chunk holds part of a frame the writer had not
    noted yet (the segmenter notes a frame after all of its bytes). The segment counts ``kept`` frames,
    its payload demuxes to one more; export takes exactly ``kept`` and says what it left out."""
    rec = record_clip(tmp_path / "r", bframes=False, seconds=2, segment_seconds=10)
    [seg] = rec.segments
    payload = b"".join(segfile.decrypt(seg.path, rec.private_key))
    starts = _frame_starts(payload)
    kept = 20
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "20261124T000000.000Z.seg"
    writer = segfile.SegmentWriter(path, seg.meta, [rec.private_key.public_key()], key, chunk_bytes=4096,
                                   flush_seconds=0)  # every write is sealed at once: a crash loses nothing
    writer.write(payload[: starts[kept]])
    writer.note(seg.meta.start_ns + kept * 40_000_000, kept)
    half = (starts[kept + 1] - starts[kept]) // 2
    writer.write(payload[starts[kept] : starts[kept] + half])  # then the power goes
    recovered = segfile.recover_partial(writer.partial_path, key)
    writer.abort()  # releases the descriptor; the file itself was renamed by the recovery
    assert (recovered.state, recovered.frames) == ("recovered", kept)
    with pytest.raises(SegmentError, match="recovered segment"):
        b"".join(segfile.decrypt(recovered.path, rec.private_key))
    cut_payload = b"".join(segfile.decrypt(recovered.path, rec.private_key, allow_recovered=True))
    assert len(_frame_starts(cut_payload)) == kept + 1  # "61 noted, 62 decoded"

    out = tmp_path / "out.mp4"
    result = export_segments([recovered.path], rec.private_key, out, access=ACCESS)
    assert result.problems == ()
    [entry] = result.segments
    assert (entry.state, entry.included, entry.frames, entry.frames_left_out) == ("recovered", True, kept, 1)
    assert entry.note == RECOVERED_NOTE
    assert result.frames == kept
    assert decoded_frame_hashes(out) == decoded_frame_hashes(rec.clip)[:kept]
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["segments"][0]["state"] == "recovered" and "recovered_segments" in manifest["policy"]


def test_segments_are_exported_in_sequence_order_whatever_order_they_are_given(
    tmp_path: Path, recording: Recording
) -> None:
    out = tmp_path / "out.mp4"
    result = export_segments([s.path for s in reversed(recording.segments)], recording.private_key, out,
                             access=ACCESS)
    assert result.problems == ()
    assert [s.sequence for s in result.segments] == [0, 1, 2]
    assert [s.chain for s in result.segments] == ["start", "ok", "ok"]
    assert decoded_frame_hashes(out) == decoded_frame_hashes(recording.clip)


def test_a_hole_in_the_export_is_a_gap_not_a_problem(tmp_path: Path, recording: Recording) -> None:
    """Retention keeps held footage and deletes around it, so a range may hold a hole."""
    first, _, last = recording.segments
    result = export_segments([first.path, last.path], recording.private_key, tmp_path / "out.mp4",
                             access=ACCESS)
    assert result.problems == ()
    assert [s.chain for s in result.segments] == ["start", "gap"]


# ----- trimmed to the requested range ---------------------------------------------------------------------
def ffprobe_frame_times(path: Path) -> list[float]:
    """Presentation times of the frames a player shows (ffprobe decodes, honouring the edit list)."""
    proc = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                           "frame=pts_time", "-of", "csv=p=0", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [float(line.split(",")[0]) for line in proc.stdout.split()]


def bframes(recording: Recording) -> bool:
    return any(pts != dts for pts, dts, _, _ in video_packets(recording.clip))


def test_a_trimmed_export_starts_at_from_and_ends_before_to_without_reencoding(
    tmp_path: Path, recording: Recording
) -> None:
    start_ns = recording.segments[0].meta.start_ns
    frame_ns = 40_000_000
    from_ns, to_ns = start_ns + 2_500_000_000 + 1, start_ns + 4_300_000_000  # mid-GOP, in the second segment
    out = tmp_path / "out.mp4"
    result = export_segments([s.path for s in recording.segments], recording.private_key, out, access=ACCESS,
                             from_ns=from_ns, to_ns=to_ns)
    assert result.problems == ()
    # Shown: the frames from 2.52 s (the first at or after --from) up to 4.28 s, the last before --to (with
    # B-frames the last one or two go too: they refer to the frame at 4.32 s); decoded before them: the
    # GOP from the keyframe at 2.0 s.
    first, last = 63, (result.last_frame_ns - start_ns) // frame_ns
    assert result.first_frame_ns == start_ns + first * frame_ns
    assert result.last_frame_ns == start_ns + last * frame_ns
    assert (105 if bframes(recording) else 107) <= last <= 107
    assert result.preroll_frames == 13
    assert result.preroll_from_ns == start_ns + 2_000_000_000
    shown = last - first + 1
    assert result.frames == 13 + shown
    times = ffprobe_frame_times(out)
    assert len(times) == shown
    assert times[0] == pytest.approx(0.0, abs=0.001)
    assert times[-1] == pytest.approx((result.last_frame_ns - result.first_frame_ns) / 1e9, abs=0.001)
    assert result.duration_s == pytest.approx(shown * frame_ns / 1e9, abs=0.001)
    # The very pictures of the clip, not re-encoded ones.
    assert decoded_frame_hashes(out)[-shown:] == decoded_frame_hashes(recording.clip)[first:last + 1]
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["manifest_version"] == 2
    assert manifest["range"]["first_frame"] == rfc3339(result.first_frame_ns)
    assert manifest["range"]["last_frame"] == rfc3339(result.last_frame_ns)
    assert manifest["range"]["preroll_frames"] == 13
    assert manifest["output"]["frames_shown"] == shown
    assert manifest["gaps"] == []
    assert [s["included"] for s in manifest["segments"]] == [False, True, True]
    assert manifest["segments"][0]["note"] == OUTSIDE_NOTE and manifest["segments"][0]["verification"] == "ok"


def test_a_segment_left_out_is_a_gap_in_the_output_with_its_reason(tmp_path: Path,
                                                                  recording: Recording) -> None:
    """The output keeps real time over a segment that could not be exported, and the gap names it."""
    paths = copy_segments(recording, tmp_path / "segs")
    data = bytearray(paths[1].read_bytes())
    data[len(data) // 2] ^= 0x01
    paths[1].write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    result = export_segments(paths, recording.private_key, out, access=ACCESS)
    assert [s.included for s in result.segments] == [True, False, True]
    [gap] = result.gaps
    start_ns = recording.segments[0].meta.start_ns
    assert (gap.from_ns, gap.to_ns) == (start_ns + 2_000_000_000, start_ns + 4_000_000_000)
    assert gap.source == "segments" and gap.reason.startswith(f"segment {paths[1]} left out: ")
    times = ffprobe_frame_times(out)
    assert len(times) == 100
    assert times[50] - times[49] == pytest.approx(2.04, abs=0.001)  # the clock jumps by the gap
    assert result.duration_s == pytest.approx(6.0, abs=0.001)
    assert ffprobe_errors(out) == ""
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["gaps"] == [gap.to_json_dict()]
    assert manifest["gaps"][0]["seconds"] == 2.0


def test_a_range_without_a_frame_exports_nothing_and_says_so(tmp_path: Path, recording: Recording) -> None:
    end_ns = recording.segments[-1].end_ns
    out = tmp_path / "out.mp4"
    with pytest.raises(EdgerecError, match="none of the 3 segments has a frame in the requested range"):
        export_segments([s.path for s in recording.segments], recording.private_key, out, access=ACCESS,
                        from_ns=end_ns, to_ns=end_ns + 10 * 1_000_000_000)
    assert not out.exists()


def _officer_key_file(recording: Recording, path: Path) -> Path:
    path.write_text(keys.format_private_key(recording.private_key) + "\n")
    path.chmod(0o600)
    return path


def test_a_segment_that_cannot_be_opened_is_named_and_the_rest_exported(tmp_path: Path,
                                                                         recording: Recording) -> None:
    """``edgerec export`` of a data directory whose middle segment cannot be opened (EACCES: the tests may
    run as root, so the open itself is made to fail): the others are exported, the unreadable one is left
    out and named with the reason, in the manifest and on stderr, and the exit code says so; no traceback.
    An unreadable last segment is still chosen for a range it may reach into: named, never left out unsaid."""
    first, middle, last = recording.segments
    data_dir = first.path.parents[2]
    key = _officer_key_file(recording, tmp_path / "officer.key")
    out = tmp_path / "out.mp4"

    def export(unreadable: Path, from_ns: int, to_ns: int) -> subprocess.CompletedProcess[str]:
        return run_cli_with_open_failing(
            errno.EACCES, [unreadable], "export", "--data-dir", str(data_dir), "--camera", "gate",
            "--from", rfc3339(from_ns), "--to", rfc3339(to_ns), "--key", str(key), "-o", str(out),
            "--reason", "open errors")

    proc = export(middle.path, first.meta.start_ns - 1_000_000, last.end_ns + 1_000_000)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"problem: {middle.path}: cannot read: Permission denied" in proc.stderr.splitlines()
    manifest = json.loads(manifest_path_for(out).read_text())
    by_path = {s["path"]: s for s in manifest["segments"]}
    assert by_path[str(middle.path)]["included"] is False
    assert by_path[str(middle.path)]["verification"] == "cannot read: Permission denied"
    assert [s["path"] for s in manifest["segments"] if s["included"]] == [str(first.path), str(last.path)]
    assert len(video_packets(out)) == first.frames + last.frames
    assert manifest["problems"] == [f"{middle.path}: cannot read: Permission denied"]

    # The range lies in the last segment, which cannot be opened: its end is unknown, so it is chosen, and
    # the export says why nothing came out (before, it was passed over as if it ended where it starts).
    out.unlink()
    proc = export(last.path, last.meta.start_ns + 500_000_000, last.end_ns)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgerec: ")]
    assert errors == [f"edgerec: nothing exported: no segment could be read ({last.path}: cannot read: "
                      "Permission denied)"]
    assert not out.exists()
