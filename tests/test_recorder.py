"""The recorder end to end with real sources, real encrypted segment files and a real RTSP server."""

from __future__ import annotations

import errno
import hashlib
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgerec import bundle as bundle_mod
from edgerec import keys, segfile
from edgerec import recorder as recorder_mod
from edgerec.audit import AuditLog
from edgerec.bundlereader import verify_bundle
from edgerec.catalog import Catalog, IncidentRow
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.export import ExportAccess, export_segments, manifest_path_for
from edgerec.layout import segment_path, start_ns_from_name
from edgerec.reconcile import reconcile
from edgerec.recorder import ChainState, RecorderClock, backoff_delay
from tests.helpers.daemon import OfficerKey, run_cli, wait_for
from tests.helpers.media import (
    make_h264_clip,
    needs_rtsp,
    scan_tree_for_plaintext,
    start_rtsp_server,
    stop_process,
    video_packets,
)
from tests.helpers.recorder import FullDisk, Rig, assert_chain, decrypted_packets, make_rig
from tests.helpers.segments import DirSyncFailsAtSeal, OpenFails


def test_file_source_with_exit_at_eof_records_encrypted_segments(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    frames = make_h264_clip(clip, 4, fps=25, gop=25)
    camera = CameraConfig("gate", str(clip), realtime=False, loop=False)
    rig = make_rig(tmp_path, camera, exit_at_eof=True)
    rig.recorder.start()
    rig.recorder.join(30)
    rig.recorder.stop(5)

    assert rig.recorder.finished and not rig.recorder.is_alive()
    assert len(rig.sealed) == 4
    assert_chain(rig.sealed, ChainState(7, bytes(range(32))))
    packets = []
    for seg in rig.sealed:
        assert seg.path == segment_path(rig.data_dir, "gate", seg.meta.start_ns)
        assert seg.state == "sealed" and seg.path.exists()
        assert (seg.meta.codec, seg.meta.container, seg.meta.device_id) == ("h264", "mpegts", "pi-test")
        seg_packets = decrypted_packets(seg.path, rig.private_key)
        assert len(seg_packets) == seg.frames
        packets += seg_packets
    assert packets == [p[3] for p in video_packets(clip)]
    assert sum(s.frames for s in rig.sealed) == frames
    assert not list(rig.data_dir.rglob("*.partial"))
    assert scan_tree_for_plaintext(rig.data_dir) == {}
    stats = rig.recorder.stats()
    assert (stats.state, stats.segments, stats.reconnects) == ("stopped", 4, 0)
    assert stats.bytes == sum(s.size_bytes for s in rig.sealed)
    assert rig.gaps == []


def test_stop_seals_the_open_segment(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    camera = CameraConfig("door", str(clip), realtime=True, loop=True)
    rig = make_rig(tmp_path, camera, segment_seconds=60)
    rig.recorder.start()
    # fps counts whole seconds only: 20 or more means a second with at least 20 frames was recorded.
    wait_for(lambda: rig.recorder.stats().fps >= 20, 10, "a second of packets")
    assert rig.recorder.stats().connected
    rig.recorder.stop(5)
    assert len(rig.sealed) == 1
    seg = rig.sealed[0]
    assert seg.frames >= 20
    assert len(decrypted_packets(seg.path, rig.private_key)) == seg.frames
    assert rig.recorder.stats().state == "stopped"
    assert not rig.recorder.finished


def test_quiet_camera_footage_reaches_the_disk_within_flush_seconds(tmp_path: Path) -> None:
    ts_clip = tmp_path / "clip.ts"
    frames = make_h264_clip(ts_clip, 2, fps=25, gop=25)
    raw = tmp_path / "clip.h264"
    raw.write_bytes(b"".join(p[3] for p in video_packets(ts_clip)))
    # A camera program that sends two seconds of video and then goes quiet without closing its output.
    camera = CameraConfig("pi", f"exec:sh -c 'cat {raw}; exec sleep 60'")
    rig = make_rig(tmp_path, camera, segment_seconds=60,
                   durability=DurabilityConfig(flush_seconds=0.5, fsync_seconds=0.5))
    rig.recorder.start()
    try:
        wait_for(lambda: list(rig.data_dir.rglob("*.partial")), 10, "an open segment")
        wait_for(lambda: (rig.recorder.stats().last_packet_age_s or 0) > 0.2, 10, "the camera going quiet")
        quiet_since = time.monotonic()
        partial = next(rig.data_dir.rglob("*.partial"))
        # The H.264 parser keeps the last frame until the next one starts: all but that one must be on disk.
        wait_for(lambda: len(decrypted_packets(partial, rig.private_key, recover=True)) >= frames - 1, 5,
                 "the buffered footage in the file")
        assert time.monotonic() - quiet_since < 0.5 + 1.0
    finally:
        rig.recorder.stop(10)
    assert not rig.recorder.is_alive()
    assert len(rig.sealed) == 1 and rig.sealed[0].frames >= frames - 1


def test_disk_full_gate_defers_segments_and_reports_the_gap(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    disk_ok = threading.Event()
    camera = CameraConfig("yard", str(clip), realtime=True, loop=True)
    rig = make_rig(tmp_path, camera, may_start_segment=disk_ok.is_set)
    rig.recorder.start()
    try:
        wait_for(lambda: rig.recorder.stats().state == "waiting_disk", 10, "the disk-full state")
        time.sleep(0.5)  # stay refused for a while so the gap has a length worth checking
        assert not list(rig.data_dir.rglob("*.partial"))
        disk_ok.set()
        wait_for(lambda: rig.sealed, 10, "a segment after the disk has room again")
    finally:
        rig.recorder.stop(5)
    assert rig.recorder.stats().dropped_packets >= 25
    [(camera_name, from_ns, to_ns, reason)] = rig.gaps
    assert camera_name == "yard" and reason == "disk full"
    assert to_ns - from_ns >= 500_000_000
    assert rig.sealed[0].meta.start_ns == to_ns


def test_unreachable_camera_backs_off_and_reports_the_gap_at_stop(tmp_path: Path) -> None:
    from tests.helpers.media import free_port

    camera = CameraConfig("ip", f"rtsp://127.0.0.1:{free_port()}/x", timeout_seconds=1.0)
    rig = make_rig(tmp_path, camera)
    rig.recorder.start()
    wait_for(lambda: rig.recorder.stats().reconnects >= 2, 10, "two reconnect attempts")
    stats = rig.recorder.stats()
    assert stats.state in ("backoff", "connecting") and not stats.connected
    assert "Connection refused" in (stats.last_error or "")
    rig.recorder.stop(5)
    assert rig.sealed == []
    [(_, from_ns, to_ns, reason)] = rig.gaps
    assert to_ns > from_ns and "Connection refused" in reason


def test_segment_meta_carries_the_injected_clocks(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 1, fps=25, gop=25)
    wall_ns = 1_795_000_000_123_456_789  # 2026-11-19T...
    clock = RecorderClock(wall_ns=lambda: wall_ns, monotonic_ns=lambda: 42_000_000_000,
                          clock_synced=lambda: True, boot_id=lambda: "boot-1")
    camera = CameraConfig("c", str(clip), realtime=False, loop=False)
    rig = make_rig(tmp_path, camera, exit_at_eof=True, clock=clock, segment_seconds=5)
    rig.recorder.start()
    rig.recorder.join(20)
    [seg] = rig.sealed
    assert seg.meta.start_ns == wall_ns
    assert seg.meta.clock_synced and seg.meta.boot_id == "boot-1"
    assert seg.meta.monotonic_ns == 42_000_000_000
    assert seg.end_ns == wall_ns + 1_000_000_000
    assert seg.path == segment_path(rig.data_dir, "c", wall_ns)


@needs_rtsp
def test_rtsp_camera_is_recorded_live_and_reconnected(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    url, server = start_rtsp_server(clip)  # plays the clip once per connection, then ends the session
    camera = CameraConfig("ipcam", url, timeout_seconds=2.0)
    rig = make_rig(tmp_path, camera)
    rig.recorder.start()
    try:
        wait_for(lambda: rig.recorder.stats().reconnects >= 1 and len(rig.sealed) >= 3, 30,
                 "segments from two RTSP sessions")
    finally:
        rig.recorder.stop(10)
        stop_process(server)
    assert_chain(rig.sealed, ChainState(7, bytes(range(32))))
    for seg in rig.sealed:
        packets = decrypted_packets(seg.path, rig.private_key)
        assert len(packets) == seg.frames > 0
    assert rig.gaps and all(to > frm for _, frm, to, _ in rig.gaps)
    assert scan_tree_for_plaintext(rig.data_dir) == {}


# ----- pure helpers ---------------------------------------------------------------------------------------
def test_segment_path_is_utc_sortable_and_filesystem_safe() -> None:
    path = segment_path(Path("/d"), "gate", 1_795_536_720_123_999_999)
    assert path == Path("/d/gate/2026-11-24/20261124T161200.123Z.seg")
    later = segment_path(Path("/d"), "gate", 1_795_536_720_124_000_000)
    assert path.name < later.name
    # The listing reads the start back from the name, to the millisecond.
    assert start_ns_from_name(path) == 1_795_536_720_123_000_000
    assert start_ns_from_name(Path("/d/gate/2026-11-24/notes.txt")) is None


def test_backoff_retries_within_three_seconds_for_the_first_minute_then_grows_to_thirty_with_jitter() -> None:
    # The first minute of an outage: doubling from 1 s, never more than 3 s between tries.
    assert [backoff_delay(n, lambda: 1.0, down_for_s=n) for n in range(6)] == [1, 2, 3, 3, 3, 3]
    assert [backoff_delay(n, lambda: 0.0) for n in range(4)] == [0.5, 1, 1.5, 1.5]
    assert max(backoff_delay(n, lambda: 1.0, down_for_s=59.9) for n in range(100)) == 3
    # Later the cap doubles each further minute, to 30 s; a camera that stays away is tried twice a minute.
    assert [backoff_delay(100, lambda: 1.0, down_for_s=60 + 60 * m) for m in range(6)] == [3, 6, 12, 24, 30,
                                                                                          30]
    assert backoff_delay(1000, lambda: 0.5, down_for_s=3600) == 22.5
    # Jitter: between half and all of the wait, so that cameras behind one switch do not retry in step.
    assert backoff_delay(100, lambda: 0.0, down_for_s=3600) == 15


def test_outage_of_twelve_seconds_is_tried_again_within_three_seconds_of_the_camera_returning() -> None:
    """The reported case: down for 12 s, the next try came 15.2 s later. Every wait of an outage's first
    minute is at most 3 s, whatever the jitter, so the try after the camera's return is at most 3 s away."""
    import random

    rng = random.Random(15)
    for _ in range(200):
        elapsed_s, attempt = 0.0, 0
        while elapsed_s < 12.0:
            delay = backoff_delay(attempt, rng.random, down_for_s=elapsed_s)
            elapsed_s += delay
            attempt += 1
        assert delay <= 3.0 and elapsed_s - 12.0 <= 3.0


def test_plaintext_scan_finds_ts_and_h264_but_not_random_bytes(tmp_path: Path) -> None:
    import os

    from tests.helpers.media import plaintext_video_findings

    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 1, fps=25, gop=5)
    assert plaintext_video_findings(clip.read_bytes())
    elementary = b"".join(p[3] for p in video_packets(clip))
    assert any("H.264" in f for f in plaintext_video_findings(elementary))
    assert plaintext_video_findings(os.urandom(1 << 20)) == []


def test_plaintext_scan_of_a_segment_skips_its_plaintext_fields_but_not_its_chunks(tmp_path: Path) -> None:
    from edgerec.layout import segment_path
    from tests.helpers.media import scan_tree_for_plaintext
    from tests.helpers.segments import make_keys, make_meta, split_records, write_segment

    # A monotonic clock of ~1534 s in the header spells 00 00 01 65 (a start code and an IDR header).
    meta = make_meta(monotonic_ns=0x0000016512345678)
    seg = write_segment(segment_path(tmp_path, "cam", meta.start_ns), b"x" * 1000, make_keys(), meta=meta)
    assert scan_tree_for_plaintext(tmp_path) == {}
    # Plaintext video where the ciphertext belongs is still found.
    clip = tmp_path / "clip.ts"
    make_h264_clip(clip, 1, fps=25, gop=5)
    header, records = split_records(seg.path.read_bytes())
    chunk = records[0].raw
    seg.path.write_bytes(header + chunk[:17] + clip.read_bytes() + chunk[-16:] + records[-1].raw)
    clip.unlink()
    assert list(scan_tree_for_plaintext(tmp_path)) == [str(seg.path)]


def start_yard_with_a_full_disk_switch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, flush_seconds: float, fsync_seconds: float,
) -> tuple[Rig, FullDisk, Path]:
    """A looping 2 s clip recorded into one long segment, with an ENOSPC switch for the segment files;
    returns once the segment's ``.partial`` exists: (rig, disk switch, the .partial)."""
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    disk = FullDisk(monkeypatch)
    camera = CameraConfig("yard", str(clip), realtime=True, loop=True)
    rig = make_rig(tmp_path, camera, segment_seconds=60,
                   durability=DurabilityConfig(flush_seconds=flush_seconds, fsync_seconds=fsync_seconds))
    rig.recorder.start()
    partial = wait_for(lambda: next(rig.data_dir.rglob("*.partial"), None), 10, "an open segment")
    return rig, disk, partial


def fill_disk_mid_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Rig, FullDisk, Path, int]:
    """A recorder whose open segment has footage on disk when the disk fills up; returns once the segment
    could not be sealed and recording waits: (rig, disk, the unsealed .partial, frames on disk before)."""
    rig, disk, partial = start_yard_with_a_full_disk_switch(tmp_path, monkeypatch, flush_seconds=0.2,
                                                             fsync_seconds=0.5)
    on_disk = wait_for(lambda: len(decrypted_packets(partial, rig.private_key, recover=True)) >= 10, 10,
                       "footage in the open segment")
    disk.full.set()
    wait_for(lambda: "cannot recover unsealed segment" in (rig.recorder.stats().last_error or ""), 15,
             "the segment failing to seal and to recover")
    assert rig.recorder.stats().state == "waiting_disk"
    return rig, disk, partial, on_disk


def test_segment_unsealed_on_a_full_disk_is_recovered_into_the_chain_when_space_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig, disk, partial, frames_before = fill_disk_mid_segment(tmp_path, monkeypatch)
    try:
        # Keyframes keep coming: each may retry the recovery, but no new segment starts meanwhile.
        wait_for(lambda: rig.recorder.stats().reconnects >= 1, 10, "the write failure ending the connection")
        wait_for(lambda: rig.recorder.stats().state == "waiting_disk", 10,
                 "a keyframe refused for want of space")
        assert list(rig.data_dir.rglob("*.partial")) == [partial] and rig.sealed == []
        disk.full.clear()
        wait_for(lambda: len(rig.sealed) >= 1 and list(rig.data_dir.rglob("*.partial")), 10,
                 "the recovered segment and a new one")
    finally:
        rig.recorder.stop(5)
    first = ChainState(7, bytes(range(32)))
    assert len(rig.sealed) == 2
    assert_chain(rig.sealed, first)  # 7 (recovered) -> 8: one sequence each, every link in place
    recovered, after = rig.sealed
    assert (recovered.state, after.state) == ("recovered", "sealed")
    assert recovered.path == partial.with_name(partial.name.removesuffix(segfile.PARTIAL_SUFFIX))
    # Nothing that had reached the disk before it filled up is lost.
    assert recovered.frames > 0
    assert len(decrypted_packets(recovered.path, rig.private_key, recover=True)) >= frames_before
    assert len(decrypted_packets(after.path, rig.private_key)) == after.frames > 0
    prev = first.prev_digest
    for seg in rig.sealed:
        assert segfile.verify(seg.path, private_key=rig.private_key, prev_digest=prev) == []
        prev = seg.digest
    assert not list(rig.data_dir.rglob("*.partial"))
    [(_, from_ns, to_ns, _reason)] = rig.gaps
    assert from_ns == recovered.end_ns and to_ns == after.meta.start_ns


def test_unsealed_segment_damaged_beyond_recovery_is_left_and_the_chain_goes_on_from_the_last_sealed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig, disk, partial, _ = fill_disk_mid_segment(tmp_path, monkeypatch)
    try:
        with partial.open("r+b") as f:  # the header torn: as start-up reconciliation would, give up on it
            f.truncate(20)
        disk.full.clear()
        wait_for(lambda: list(set(rig.data_dir.rglob("*.partial")) - {partial}), 10, "a new segment")
    finally:
        rig.recorder.stop(5)
    [after] = rig.sealed
    # The lost segment's sequence number is not reused, and the chain links to the last sealed segment,
    # as the catalog sees it once reconciliation has removed or quarantined the damaged file.
    assert after.meta.sequence == 8 and after.meta.prev_digest == bytes(range(32))
    assert partial.exists()
    [(_, from_ns, to_ns, reason)] = rig.gaps
    assert reason.startswith("unsealed segment lost") and to_ns == after.meta.start_ns
    # The error was shown while it lasted; the next sealed segment ended it (a past error, with its times).
    stats = rig.recorder.stats()
    assert stats.error is None
    [lost] = [e for e in stats.past_errors
              if e.message.startswith("unsealed segment") and "lost" in e.message]
    assert lost.since_ns <= lost.at_ns <= (lost.until_ns or 0)


def test_stop_while_the_disk_is_still_full_leaves_the_unsealed_segment_as_the_head_of_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig, disk, partial, frames_before = fill_disk_mid_segment(tmp_path, monkeypatch)
    rig.recorder.stop(5)
    assert rig.sealed == [] and list(rig.data_dir.rglob("*.partial")) == [partial]
    assert rig.recorder.chain == ChainState(7, bytes(range(32)))  # nothing started after it
    # Start-up reconciliation recovers it; the next run's chain goes on from it (the catalog's head).
    disk.full.clear()
    recovered = segfile.recover_partial(partial, rig.recorder.signing_key)
    assert (recovered.meta.sequence, recovered.meta.prev_digest) == (7, bytes(range(32)))
    assert len(decrypted_packets(recovered.path, rig.private_key, recover=True)) >= frames_before


def next_recorder_recovers_the_handed_over_segment(tmp_path: Path, old: Rig, disk: FullDisk,
                                                   partial: Path) -> Rig:
    """The camera's next recorder, made from what ``old`` (ended, with ``partial`` unsealed on a full
    disk) handed over; returns it stopped once space came back and it recorded past that segment."""
    handed = old.recorder.handover()
    assert handed.chain == ChainState(7, bytes(range(32)))  # the unsealed segment is not counted in it
    assert handed.unsealed is not None and handed.unsealed.partial == partial
    assert handed.unsealed.meta.sequence == 7
    with pytest.raises(ValueError, match="not the next link"):  # a hand-over that would fork is refused
        make_rig(tmp_path, old.recorder.camera, chain=ChainState(8, bytes(range(32))),
                 unsealed=handed.unsealed)
    new = make_rig(tmp_path, old.recorder.camera, private_key=old.private_key, chain=handed.chain,
                   unsealed=handed.unsealed, signing_key=old.recorder.signing_key,
                   segment_seconds=old.recorder.segment_seconds, durability=old.recorder.durability)
    new.recorder.start()
    try:
        wait_for(lambda: new.recorder.stats().state == "waiting_disk", 10, "the disk still full")
        assert new.sealed == [] and list(new.data_dir.rglob("*.partial")) == [partial]
        disk.full.clear()
        wait_for(lambda: new.sealed and set(new.data_dir.rglob("*.partial")) - {partial}, 10,
                 "the handed-over segment recovered and a new one")
    finally:
        new.recorder.stop(5)
    return new


def assert_recovered_first_in_one_chain(rig: Rig, partial: Path) -> None:
    """``rig`` recovered ``partial`` as sequence 7, and its own segments go on from it."""
    assert len(rig.sealed) == 2
    assert_chain(rig.sealed, ChainState(7, bytes(range(32))))  # 7 (recovered) -> 8, every link in place
    recovered, after = rig.sealed
    assert recovered.state == "recovered" and after.state == "sealed"
    assert recovered.path == partial.with_name(partial.name.removesuffix(segfile.PARTIAL_SUFFIX))
    assert not list(rig.data_dir.rglob("*.partial"))


def test_a_recorder_stopped_with_a_segment_unsealed_hands_it_over_and_the_next_recovers_it_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, disk, partial, frames_before = fill_disk_mid_segment(tmp_path, monkeypatch)
    old.recorder.stop(5)  # the last try at stop fails too: the disk is still full
    new = next_recorder_recovers_the_handed_over_segment(tmp_path, old, disk, partial)
    assert_recovered_first_in_one_chain(new, partial)
    assert len(decrypted_packets(new.sealed[0].path, old.private_key, recover=True)) >= frames_before


def test_a_segment_whose_seal_at_stop_finds_the_disk_full_is_handed_over_and_recovered_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is flushed before the seal: it is the seal's own writes (last chunk, trailer) that fail.
    old, disk, partial = start_yard_with_a_full_disk_switch(tmp_path, monkeypatch, flush_seconds=60,
                                                             fsync_seconds=60)
    wait_for(lambda: old.recorder.stats().fps >= 20, 10, "a second of packets")
    disk.full.set()
    old.recorder.stop(5)
    assert old.sealed == [] and list(old.data_dir.rglob("*.partial")) == [partial]
    new = next_recorder_recovers_the_handed_over_segment(tmp_path, old, disk, partial)
    assert_recovered_first_in_one_chain(new, partial)


def test_an_unsealed_segment_whose_recovery_cannot_open_it_once_is_recovered_on_the_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Space returns, but the recovery's open of the .partial fails once with EIO: an error of the moment,
    not a damaged file. The segment is not given up: the retry recovers it and the chain goes on from it."""
    rig, disk, partial, frames_before = fill_disk_mid_segment(tmp_path, monkeypatch)
    opens = OpenFails(monkeypatch, partial, err=errno.EIO, times=1)
    try:
        disk.full.clear()
        wait_for(lambda: rig.sealed and set(rig.data_dir.rglob("*.partial")) - {partial}, 15,
                 "the segment recovered on the retry, and a new one")
    finally:
        rig.recorder.stop(5)
    assert opens.failed == 1
    assert_recovered_first_in_one_chain(rig, partial)  # 7 (recovered) -> 8: nothing skipped
    assert len(decrypted_packets(rig.sealed[0].path, rig.private_key, recover=True)) >= frames_before
    stats = rig.recorder.stats()
    assert stats.error is None
    messages = [e.message for e in stats.past_errors]
    # Shown while it lasted, and never taken for a lost segment.
    assert f"cannot recover unsealed segment {partial}: Input/output error" in messages
    assert not [m for m in messages if "lost" in m]


def test_a_recorder_stopped_while_its_unsealed_segment_cannot_be_opened_hands_it_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open keeps failing with EIO, also at the stop's last try: the segment goes to the camera's next
    recorder (the hand-over), which recovers it first once the error is gone."""
    old, disk, partial, frames_before = fill_disk_mid_segment(tmp_path, monkeypatch)
    opens = OpenFails(monkeypatch, partial, err=errno.EIO)
    disk.full.clear()
    wait_for(lambda: opens.failed >= 1, 10, "a recovery failing with EIO")
    failed_before_stop = opens.failed
    old.recorder.stop(5)
    assert opens.failed > failed_before_stop  # the stop tried once more
    assert old.sealed == [] and list(old.data_dir.rglob("*.partial")) == [partial]
    assert old.recorder.stats().last_error == f"cannot recover unsealed segment {partial}: Input/output error"
    opens.stop()
    disk.full.set()  # the next recorder starts on a full disk, as the hand-over helper expects
    new = next_recorder_recovers_the_handed_over_segment(tmp_path, old, disk, partial)
    assert_recovered_first_in_one_chain(new, partial)
    assert len(decrypted_packets(new.sealed[0].path, old.private_key, recover=True)) >= frames_before


def test_an_unsealed_segment_that_stays_unreadable_is_given_up_and_the_camera_records_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Space returns, but every open of the .partial fails with EIO (a bad sector, say). Waiting for it
    for good would stop the camera until a restart: after UNSEALED_GIVE_UP_S the segment is given up, left
    in place for start-up, and recording goes on with the next number, linked to the last sealed segment."""
    monkeypatch.setattr(recorder_mod, "UNSEALED_GIVE_UP_S", 1.0)
    rig, disk, partial, _ = fill_disk_mid_segment(tmp_path, monkeypatch)
    opens = OpenFails(monkeypatch, partial, err=errno.EIO)
    try:
        disk.full.clear()
        wait_for(lambda: opens.failed >= 1, 10, "a recovery failing with EIO")
        # Not for want of space any more: the state says so, and nothing is given up at once.
        wait_for(lambda: rig.recorder.stats().state == "waiting_disk", 10, "waiting for the unsealed segment")
        assert rig.sealed == []
        wait_for(lambda: set(rig.data_dir.rglob("*.partial")) - {partial}, 15,
                 "a new segment once the unsealed one is given up")
    finally:
        rig.recorder.stop(5)
    assert opens.failed >= 2  # retried before giving up
    after = rig.sealed[0]
    assert after.meta.sequence == 8 and after.meta.prev_digest == bytes(range(32))
    assert partial.exists()  # left for start-up reconciliation, never deleted
    [(_, _, to_ns, reason)] = rig.gaps
    assert reason.startswith("unsealed segment lost: cannot recover it for 1 s: Input/output error")
    assert to_ns == after.meta.start_ns
    messages = [e.message for e in rig.recorder.stats().past_errors]
    assert any(m.startswith(f"unsealed segment {partial} lost") for m in messages)


def give_up_a_segment_after_a_sealed_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, officer: OfficerKey,
) -> tuple[Rig, Path, list[segfile.SealedSegment]]:
    """A camera's chain from its first segment, sealed by one recorder; the next recorder gives up on its
    first segment (the disk fills, then the .partial stays unreadable: EIO) and records the one after it.
    Returns once it has stopped and the file reads again: (its rig, the given-up .partial, the segments
    sealed before)."""
    camera = CameraConfig("yard", str(tmp_path / "clip.mp4"), realtime=True, loop=True)
    make_h264_clip(Path(camera.url), 2, fps=25, gop=25)
    officer_key = keys.load_private_key(officer.private_path)
    device = keys.load_or_create_device_key(tmp_path / "data")
    first = make_rig(tmp_path, camera, private_key=officer_key, signing_key=device,
                     chain=ChainState(0, segfile.GENESIS_DIGEST))
    first.recorder.start()
    try:
        wait_for(lambda: len(first.sealed) >= 2, 30, "two sealed segments")
    finally:
        first.recorder.stop(5)
    assert not list(first.data_dir.rglob("*.partial"))
    last = first.sealed[-1]
    monkeypatch.setattr(recorder_mod, "UNSEALED_GIVE_UP_S", 1.0)
    disk = FullDisk(monkeypatch)
    rig = make_rig(tmp_path, camera, private_key=officer_key, signing_key=device,
                   chain=ChainState(last.meta.sequence + 1, last.digest), segment_seconds=60,
                   durability=DurabilityConfig(flush_seconds=0.2, fsync_seconds=0.5))
    rig.recorder.start()
    opens = None
    try:
        partial = wait_for(lambda: next(rig.data_dir.rglob("*.partial"), None), 10, "an open segment")
        wait_for(lambda: len(decrypted_packets(partial, officer_key, recover=True)) >= 10, 10,
                 "footage in the open segment")
        disk.full.set()
        wait_for(lambda: "cannot recover unsealed segment" in (rig.recorder.stats().last_error or ""), 15,
                 "the segment failing to seal and to recover")
        opens = OpenFails(monkeypatch, partial, err=errno.EIO)
        disk.full.clear()
        wait_for(lambda: set(rig.data_dir.rglob("*.partial")) - {partial}, 15,
                 "a new segment once the unsealed one is given up")
    finally:
        rig.recorder.stop(5)
        if opens is not None:
            opens.stop()  # the bad sector is gone by the next start
    return rig, partial, first.sealed


def test_a_given_up_segment_recovered_at_start_up_is_explained_not_a_broken_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, officer: OfficerKey) -> None:
    """The recorder gives up on segment N (unreadable) and records N+1 linked to N-1; start-up recovers
    N. Every chain walk (verify of the data directory, an export, verify of a bundle) explains N+1 going
    on past N instead of reporting a broken chain."""
    rig, partial, before = give_up_a_segment_after_a_sealed_chain(tmp_path, monkeypatch, officer)
    [after] = rig.sealed
    given_up = segfile.read_header(partial).meta.sequence
    assert after.meta.sequence == given_up + 1 and after.meta.prev_digest == before[-1].digest
    device = keys.load_device_key(rig.data_dir / "device.key")
    catalog = Catalog.open(rig.data_dir)
    try:
        report = reconcile(rig.data_dir, catalog, device, device.public_key(),
                           audit=AuditLog(rig.data_dir / "audit.log"))
    finally:
        catalog.close()
    recovered = partial.with_name(partial.name.removesuffix(segfile.PARTIAL_SUFFIX))
    assert report.recovered == [recovered.relative_to(rig.data_dir).as_posix()] and report.errors == []
    assert segfile.read_info(recovered, device.public_key()).state == "recovered"

    proc = run_cli("verify", "--data-dir", str(rig.data_dir), "--key", str(officer.private_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    explained = (f"goes on from sequence {given_up - 1}, not from sequence {given_up}: sequence {given_up} "
                 "could not be read when this one began (the recorder gave it up, or start-up kept it in "
                 "place), so the chain went on from the last segment sealed before it; start-up recovered "
                 "it later")
    assert f"note: {after.path} (sequence {given_up + 1}): {explained}" in lines, lines
    assert not [line for line in lines if line.startswith("problem:")]

    paths = [s.path for s in before] + [recovered, after.path]
    result = export_segments(paths, rig.private_key, tmp_path / "out.mp4",
                             access=ExportAccess(by="tester", reason="a given-up segment"))
    assert result.problems == ()
    manifest = json.loads(manifest_path_for(tmp_path / "out.mp4").read_text())
    assert [s["chain"] for s in manifest["segments"]] == (
        [segfile.LINK_START] + [segfile.LINK_OK] * len(before) + [segfile.LINK_PAST])
    # The same walk with N+1 linking to N-2, a third segment (only the device's key could sign that): broken.
    links = [segfile.ChainLink.of(segfile.check_segment(path)) for path in paths]
    two_before, last_sealed, given, going_on = links[-4:]
    assert two_before is not None and given is not None and going_on is not None and given.recovered
    assert segfile.link_status(given, going_on, before=last_sealed) == segfile.LINK_PAST
    assert segfile.link_status(given, replace(going_on, prev_digest=two_before.digest),
                               before=last_sealed) == segfile.LINK_BROKEN

    catalog = Catalog.open(rig.data_dir)
    try:
        catalog.insert_incident(IncidentRow("INC-1", "yard", before[0].meta.start_ns, after.end_ns, "r", "b",
                                            after.end_ns))
        snapshot = bundle_mod.read_snapshot(catalog, "INC-1", after.end_ns)
    finally:
        catalog.close()
    assert len(snapshot.segments) == len(paths)
    bundle_mod.write_bundle(rig.data_dir, snapshot, device, "pi-test", tmp_path / "b",
                            now_ns=after.end_ns, grace_ns=0)
    bundled = verify_bundle(tmp_path / "b", private_key=rig.private_key)
    assert bundled.ok, bundled.problems
    member = bundle_mod.segment_member(after.path.relative_to(rig.data_dir).as_posix())
    assert [n for n in bundled.notes if "gave it up" in n] == [f"{member}: {explained}"]


def chain_walk(data_dir: Path, camera: str, rig: Rig) -> list[tuple[int, str]]:
    """How each segment file of ``camera`` on disk follows the one before it (sequence, link status), as
    ``edgerec verify`` walks the chain; every file must pass every check."""
    links = []
    for path in (data_dir / camera).glob("*/*.seg"):
        check = segfile.check_segment(path, private_key=rig.private_key,
                                      device_key=rig.recorder.signing_key.public_key())
        assert check.ok, check.problems
        link = segfile.ChainLink.of(check)
        assert link is not None
        links.append((link, path))
    walked, previous = [], None
    for link, _ in segfile.chain_order(links):
        walked.append((link.sequence, segfile.link_status(previous, link)))
        previous = link
    return walked


def test_a_seal_whose_directory_fsync_fails_after_the_rename_stays_in_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second segment's close renames it and then the directory fsync fails (EIO): the sealed file is
    under its final name, the .partial gone. The recorder's recovery takes that file as it is, so the chain
    goes on from its digest: no segment lost, no broken link."""
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    dir_sync = DirSyncFailsAtSeal(monkeypatch, nth=2)
    rig = make_rig(tmp_path, CameraConfig("yard", str(clip), realtime=True, loop=True))
    rig.recorder.start()
    try:
        wait_for(lambda: len(rig.sealed) >= 4, 30, "four segments, one of them past the failed seal")
    finally:
        rig.recorder.stop(5)
    assert dir_sync.failed is not None and dir_sync.seals >= 4
    first = ChainState(7, bytes(range(32)))
    assert_chain(rig.sealed, first)  # 7, 8 (its seal failed), 9, ...: one sequence each, every link in place
    failed = rig.sealed[1]
    assert failed.meta.sequence == 8 and failed.state == "sealed" and failed.path.parent == dir_sync.failed
    assert failed.digest == hashlib.sha256(failed.path.read_bytes()).digest()
    assert len(decrypted_packets(failed.path, rig.private_key)) == failed.frames > 0
    assert not list(rig.data_dir.rglob("*.partial"))
    # The files on disk, walked as a verifier does: the same segments, and each one links to the last.
    walked = chain_walk(rig.data_dir, "yard", rig)
    assert [seq for seq, _ in walked] == [s.meta.sequence for s in rig.sealed]
    assert [status for _, status in walked] == [segfile.LINK_FIRST] + [segfile.LINK_OK] * (len(walked) - 1)
    # The failed seal was an error while it lasted (the connection ended on it); the recovery ended it.
    stats = rig.recorder.stats()
    assert stats.error is None and stats.reconnects >= 1
    assert any("cannot seal" in e.message for e in stats.past_errors)


def test_a_segment_put_under_a_failed_seals_name_is_not_taken_into_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second segment's seal renames it, then its directory fsync fails; before the recovery looks, its
    file is replaced by a copy of the first segment, signed by this device too. The recovery must not take
    that file for the segment it lost: sequence 7 would be catalogued twice and the next segment would
    reuse sequence 8. It is lost instead (a gap, the number skipped) and left for start-up reconciliation."""
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25)
    rig = make_rig(tmp_path, CameraConfig("yard", str(clip), realtime=True, loop=True))
    replaced: list[Path] = []

    def copy_the_first_segment_over_it(directory: Path) -> None:
        """Someone who can write in the data directory replaces the file the failed seal left under its
        final name with a copy of the camera's first segment: whole and signed by this device."""
        [target] = [p for p in directory.glob("*.seg") if p not in {s.path for s in rig.sealed}]
        copy = target.with_name("swap.tmp")
        copy.write_bytes(rig.sealed[0].path.read_bytes())
        copy.replace(target)
        replaced.append(target)

    DirSyncFailsAtSeal(monkeypatch, nth=2, then=copy_the_first_segment_over_it)
    rig.recorder.start()
    try:
        wait_for(lambda: len(rig.sealed) >= 3, 30, "segments past the failed seal")
    finally:
        rig.recorder.stop(5)
    [swapped] = replaced
    sequences = [s.meta.sequence for s in rig.sealed]
    assert sequences == [7, *range(9, 9 + len(sequences) - 1)], sequences  # 8 lost, none twice
    first, after = rig.sealed[0], rig.sealed[1]
    assert after.meta.prev_digest == first.digest  # the chain skips the lost number, linked to the last
    assert swapped.read_bytes() == first.path.read_bytes()  # left as found, for reconciliation
    assert swapped not in {s.path for s in rig.sealed}
    [(_, _, to_ns, reason)] = rig.gaps
    assert reason.startswith("unsealed segment lost") and "not the segment to recover" in reason
    assert to_ns == after.meta.start_ns
