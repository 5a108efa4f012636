"""End to end through the real command: record real H.264, list, verify, export, crash and recover."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgerec import segfile
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for, write_config
from tests.helpers.media import (
    decoded_frame_hashes,
    make_h264_clip,
    scan_tree_for_plaintext,
    start_rtsp_server,
)


def assert_no_plaintext(root: Path) -> None:
    found = scan_tree_for_plaintext(root)
    assert not found, found


def segment_paths(data_dir: Path, camera: str) -> list[Path]:
    return sorted((data_dir / camera).glob("*/*.seg"), key=lambda p: p.name)


@pytest.mark.parametrize("bframes", [False, True], ids=["no-bframes", "bframes"])
def test_file_recording_exports_every_input_frame_unchanged(tmp_path: Path, officer: OfficerKey,
                                                            bframes: bool) -> None:
    clip = tmp_path / "clip.mp4"
    frames = make_h264_clip(clip, seconds=10, fps=25, bframes=bframes, gop=25)
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=2,
                       cameras=[{"name": "gate", "url": str(clip), "realtime": False, "loop": False}])

    started = time.time_ns()
    run = run_cli("run", "-c", str(cfg), "--exit-at-eof", timeout=120)
    assert run.returncode == 0, run.stderr

    segs = segment_paths(data_dir, "gate")
    assert len(segs) >= 4
    infos = [segfile.read_info(p) for p in segs]
    assert all(i.state == "sealed" for i in infos)
    # Fast ingest keeps the stream's timeline: starts ~2 s apart from the first packet's wall time.
    assert abs(infos[0].meta.start_ns - started) < 30e9
    gaps = [(b.meta.start_ns - a.meta.start_ns) / 1e9 for a, b in zip(infos, infos[1:], strict=False)]
    assert all(1.9 <= g <= 2.2 for g in gaps), gaps
    assert sum(i.frames for i in infos) == frames
    assert_no_plaintext(data_dir)

    ls = run_cli("ls", "-c", str(cfg), "--json", check=True)
    listed = json.loads(ls.stdout)["cameras"]["gate"]["segments"]
    assert len(listed) == len(segs)

    verify = run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path), check=True)
    assert "OK" in verify.stdout

    out = tmp_path / "out.mp4"
    export = run_cli("export", "-c", str(cfg), "--key", str(officer.private_path), "--camera", "gate",
                     "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z", "-o", str(out),
                     "--reason", "end-to-end test",
                     check=True)
    assert out.exists(), export.stderr
    assert decoded_frame_hashes(out) == decoded_frame_hashes(clip)
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert len(manifest["segments"]) == len(segs)


def test_export_without_the_private_key_is_refused(tmp_path: Path, officer: OfficerKey) -> None:
    proc = run_cli("export", "--data-dir", str(tmp_path), "--key", str(tmp_path / "missing.key"),
                   "--camera", "gate", "--from", "2026-01-01 10:00", "--to", "2026-01-01 11:00",
                   "-o", str(tmp_path / "x.mp4"), "--reason", "test")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "missing.key" in proc.stderr


def test_bad_config_exits_2_naming_each_key(tmp_path: Path, officer: OfficerKey) -> None:
    cfg = write_config(tmp_path / "bad.yaml", officer=officer, data_dir=tmp_path / "d",
                       cameras=[{"name": "a", "url": "testsrc"}, {"name": "a", "url": "rtsp://"}],
                       segment_seconds="often")
    proc = run_cli("run", "-c", str(cfg))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "segment_seconds" in proc.stderr
    assert "cameras[1]" in proc.stderr


def test_catalog_commands_before_the_first_recording_say_so_without_a_traceback(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "not-yet"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "cam", "url": "testsrc"}])
    for command in (["ls"], ["verify"]):
        proc = run_cli(*command, "-c", str(cfg))
        assert proc.returncode == 2, proc.stderr
        assert f"data_dir {data_dir}" in proc.stderr and "nothing has been recorded" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not data_dir.exists()


def test_kill_9_loses_at_most_flush_seconds_and_everything_verifies(tmp_path: Path,
                                                                    officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=3,
                       durability={"flush_seconds": 1, "fsync_seconds": 2},
                       cameras=[{"name": "cam", "url": "testsrc:size=320x240:rate=25"}])
    with Daemon(cfg, tmp_path / "run1.log") as d:
        wait_for(lambda: len(segment_paths(data_dir, "cam")) >= 2, 60, "two sealed segments")
        wait_for(lambda: list((data_dir / "cam").glob("*/*.partial")), 20, "an open segment")
        time.sleep(1.6)  # let the open segment reach the middle of a chunk period before the kill
        killed_ns = time.time_ns()
        d.kill()
    partials = list((data_dir / "cam").glob("*/*.partial"))
    assert len(partials) == 1

    # Restart: start-up recovers the partial; then stop cleanly.
    with Daemon(cfg, tmp_path / "run2.log") as d:
        recovered_path = partials[0].with_name(partials[0].name.removesuffix(".partial"))
        wait_for(recovered_path.exists, 30, "the recovered segment")
        assert d.terminate() == 0

    recovered = segfile.read_info(recovered_path)
    assert recovered.state == "recovered"
    lost_s = (killed_ns - recovered.end_ns) / 1e9
    assert lost_s <= 1.0 + 0.5, f"lost {lost_s:.2f} s of footage (flush_seconds is 1)"
    verify = run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert all(segfile.read_info(p).state == "sealed" for p in segment_paths(data_dir, "cam")
               if p != recovered_path)
    assert_no_plaintext(data_dir)


def test_rtsp_camera_is_recorded(tmp_path: Path, officer: OfficerKey) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, seconds=6, fps=25, gop=25)
    url, server = start_rtsp_server(clip)
    try:
        data_dir = tmp_path / "data"
        cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                           cameras=[{"name": "ipcam", "url": url}])
        with Daemon(cfg, tmp_path / "rtsp.log") as d:
            wait_for(lambda: len(segment_paths(data_dir, "ipcam")) >= 2, 60, "segments from the RTSP camera")
            assert d.terminate() == 0
    finally:
        server.kill()
        server.wait(10)
    assert run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path)).returncode == 0
    assert_no_plaintext(data_dir)
