"""Camera health and tamper detection, proved on real H.264 clips made with PyAV.

Each clip starts with a normal scene (a textured background, a moving object, sensor noise) and then
turns black, freezes, gets blurred or shows another scene. Times come from the stream timestamps, so
nothing here sleeps.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import replace

import av
import numpy as np
import pytest

from edgerec.health import (
    ANALYSIS_HEIGHT_PX,
    ANALYSIS_WIDTH_PX,
    HealthChange,
    HealthMonitor,
    HealthThresholds,
    HealthWorker,
    KeyframeDecoder,
    analysis_due,
    analyze,
    packet_time_s,
)
from tests.helpers.scenes import (
    CLIP_S,
    FAST,
    FPS,
    FROZEN_PICTURE,
    GOP_FRAMES,
    SWITCH_S,
    WORLD_A,
    WORLD_A_BLURRED,
    WORLD_B,
    black,
    encode_clip,
    normal,
    then,
    view,
)


def demux(clip: bytes) -> Iterator[tuple[av.Packet, av.video.stream.VideoStream]]:
    with av.open(io.BytesIO(clip)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size:
                yield packet, stream


def run_monitor(clip: bytes, thresholds: HealthThresholds = FAST) -> tuple[list[HealthChange], float, int]:
    """Feed the decoded keyframes of ``clip`` to a monitor; returns (changes, first time, keyframes)."""
    decoder = monitor = None
    changes: list[HealthChange] = []
    first_t_s = None
    keyframes = 0
    for packet, stream in demux(clip):
        if decoder is None:
            decoder = KeyframeDecoder(stream.codec_context)
            monitor = HealthMonitor(thresholds, camera="gate")
        gray = decoder.feed(packet)
        if gray is None:
            continue
        keyframes += 1
        t_s = packet_time_s(packet)
        first_t_s = t_s if first_t_s is None else first_t_s
        changes += monitor.observe(analyze(gray), t_s)
    assert decoder is not None and decoder.errors == 0
    return changes, first_t_s, keyframes


def raised(changes: list[HealthChange]) -> list[str]:
    return [c.condition for c in changes if c.active]


@pytest.fixture(params=[0, 2], ids=["no-bframes", "bframes"])
def b_frames(request: pytest.FixtureRequest) -> int:
    return request.param


def test_every_keyframe_decodes_at_once_to_a_small_gray_picture(b_frames: int) -> None:
    clip = encode_clip(normal, seconds=2.0, b_frames=b_frames)
    pictures = []
    keyframe_packets = 0
    decoder = None
    for packet, stream in demux(clip):
        if packet.is_keyframe:
            keyframe_packets += 1
        decoder = decoder or KeyframeDecoder(stream.codec_context)
        gray = decoder.feed(packet)
        if packet.is_keyframe:
            # The drain after each keyframe: its picture comes out now, not a GOP or two later.
            assert gray is not None
            pictures.append(gray)
        else:
            assert gray is None
    assert keyframe_packets == round(2.0 * FPS / GOP_FRAMES)
    assert len(pictures) == keyframe_packets == decoder.decoded
    assert all(p.shape == (ANALYSIS_HEIGHT_PX, ANALYSIS_WIDTH_PX) and p.dtype == np.uint8 for p in pictures)
    # The moving square makes each keyframe a different picture (no stale picture handed back).
    assert len({p.tobytes() for p in pictures}) == len(pictures)


def test_normal_scene_with_motion_and_fading_light_raises_nothing(b_frames: int) -> None:
    n = round(CLIP_S * FPS)
    fading = lambda i: view(WORLD_A, i, gain=1.0 - 0.5 * i / n)  # noqa: E731
    changes, _, keyframes = run_monitor(encode_clip(fading, b_frames=b_frames))
    assert keyframes == n // GOP_FRAMES
    assert changes == []


def test_black_picture_raises_dark_after_its_duration(b_frames: int) -> None:
    changes, first_t_s, _ = run_monitor(encode_clip(then(black), b_frames=b_frames))
    assert raised(changes) == ["dark"]
    elapsed_s = changes[0].t_s - first_t_s
    assert SWITCH_S + FAST.dark_after_s <= elapsed_s <= SWITCH_S + FAST.dark_after_s + 1.0
    assert changes[0].camera == "gate" and "mean=" in changes[0].detail


def test_frozen_picture_raises_frozen_after_its_duration(b_frames: int) -> None:
    changes, first_t_s, _ = run_monitor(encode_clip(then(lambda i: FROZEN_PICTURE), b_frames=b_frames))
    assert raised(changes) == ["frozen"]
    elapsed_s = changes[0].t_s - first_t_s
    assert SWITCH_S + FAST.frozen_after_s <= elapsed_s <= SWITCH_S + FAST.frozen_after_s + 1.0


def test_camera_turned_to_another_scene_raises_moved(b_frames: int) -> None:
    changes, first_t_s, _ = run_monitor(encode_clip(then(lambda i: view(WORLD_B, i)), b_frames=b_frames))
    assert raised(changes) == ["moved"]
    assert changes[0].t_s - first_t_s >= SWITCH_S + FAST.moved_after_s
    assert "dissimilarity=" in changes[0].detail


def test_strongly_blurred_lens_raises_blurred(b_frames: int) -> None:
    blurred = lambda i: view(WORLD_A_BLURRED, i, obj=False, noise_levels=1.0)  # noqa: E731
    changes, first_t_s, _ = run_monitor(encode_clip(then(blurred), b_frames=b_frames))
    assert raised(changes) == ["blurred"]
    assert changes[0].t_s - first_t_s >= SWITCH_S + FAST.blurred_after_s


def test_dark_is_reported_once_entering_and_once_leaving() -> None:
    switch_back = round((SWITCH_S + 2.5) * FPS)
    scene = then(lambda i: black(i) if i < switch_back else normal(i))
    changes, _, _ = run_monitor(encode_clip(scene, seconds=CLIP_S + 2))
    assert [(c.condition, c.active) for c in changes] == [("dark", True), ("dark", False)]
    assert changes[1].t_s - changes[0].t_s >= FAST.clear_after_s


def features_of(picture: np.ndarray):
    return analyze(picture)


def test_short_dark_blips_do_not_raise_an_alarm() -> None:
    monitor = HealthMonitor(FAST)
    changes = []
    for k in range(40):  # a keyframe every 0.4 s; every third one black (a flickering light, a bird)
        picture = black(k) if k % 3 == 0 else normal(k * GOP_FRAMES)
        changes += monitor.observe(features_of(picture), k * 0.4)
    assert changes == []
    assert monitor.snapshot()["state"] == "ok"


def test_timestamp_jumps_do_not_shorten_the_alarm_delay() -> None:
    monitor = HealthMonitor(replace(FAST, dark_after_s=5.0, max_gap_s=1.0))
    dark = features_of(black(0))
    # A reconnect makes the stream time jump forwards by an hour and then back to zero.
    assert monitor.observe(dark, 0.0) == []
    assert monitor.observe(dark, 3600.0) == []
    assert monitor.observe(dark, 0.5) == []
    changes = []
    t_s = 0.5
    while not changes:
        t_s += 0.5
        changes = monitor.observe(dark, t_s)
    # 1 s counted for the jump, nothing for going back: the alarm needs 4 more seconds of dark.
    assert t_s == pytest.approx(4.5)
    assert monitor.snapshot()["state"] == "dark"


def test_snapshot_shows_state_and_last_figures() -> None:
    monitor = HealthMonitor(replace(FAST, dark_after_s=0.0))
    monitor.observe(features_of(black(0)), 0.0)
    snap = monitor.snapshot()
    assert snap["state"] == "dark" and snap["active"] == ["dark"]
    assert snap["keyframes"] == 1 and snap["mean"] < FAST.dark_mean_max_levels


def test_damaged_keyframe_is_counted_and_decoding_goes_on(b_frames: int) -> None:
    clip = encode_clip(normal, seconds=2.0, b_frames=b_frames)
    keyframes = [(bytes(p), s) for p, s in demux(clip) if p.is_keyframe]
    decoder = KeyframeDecoder(keyframes[0][1].codec_context)
    damaged = av.Packet(b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 4)
    damaged.is_keyframe = True
    truncated = av.Packet(keyframes[1][0][: len(keyframes[1][0]) // 4])
    truncated.is_keyframe = True
    assert decoder.feed(damaged) is None
    decoder.feed(truncated)  # may give a partial picture; must not raise
    assert decoder.errors >= 1
    good = av.Packet(keyframes[2][0])
    good.is_keyframe = True
    assert decoder.feed(good) is not None


def test_worker_reports_changes_from_its_thread_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    clip = encode_clip(then(black), b_frames=2)
    seen: list[HealthChange] = []
    worker = HealthWorker("gate", FAST, seen.append, queue_size=64)
    try:
        for packet, _ in demux(clip):
            worker.offer(packet)
        assert worker.wait_idle(timeout_s=30.0)
        snap = worker.snapshot()
    finally:
        worker.stop()
    assert [(c.condition, c.active) for c in seen] == [("dark", True)]
    assert seen[0].to_event() == {"event": "tamper", "camera": "gate", "condition": "dark", "active": True,
                                  "detail": seen[0].detail}
    assert snap["state"] == "dark"
    assert snap["offered"] == snap["keyframes"] == round(CLIP_S * FPS / GOP_FRAMES)
    assert snap["dropped"] == 0 and snap["decode_errors"] == 0
    assert not worker.alive
    assert list(tmp_path.iterdir()) == []  # no picture reached the disk


def test_worker_drops_keyframes_while_busy_and_survives_a_failing_handler() -> None:
    clip = encode_clip(then(black), b_frames=0)
    release = threading.Event()
    entered = threading.Event()

    def slow_failing_handler(change: HealthChange) -> None:
        entered.set()
        assert release.wait(30.0)
        raise RuntimeError("handler broke")

    worker = HealthWorker("gate", replace(FAST, dark_after_s=0.0), slow_failing_handler, queue_size=1)
    try:
        packets = [p for p, _ in demux(clip)]
        for packet in packets:
            worker.offer(packet)
            # One keyframe at a time until the first change reaches the handler.
            while not (entered.is_set() or worker.wait_idle(timeout_s=0.05)):
                pass
            if entered.is_set():
                break
        assert entered.is_set()  # the worker is now stuck in the handler
        dropped_before = worker.snapshot()["dropped"]
        accepted = [worker.offer(p) for p in packets if p.is_keyframe]
        assert accepted.count(True) <= 1  # room for one in the queue, the rest dropped at once
        assert worker.snapshot()["dropped"] == dropped_before + accepted.count(False)
        release.set()
        assert worker.wait_idle(timeout_s=30.0)
        assert worker.alive  # the handler's exception did not kill the thread
        assert worker.snapshot()["failures"] == 0  # handler errors are logged, not analysis failures
    finally:
        release.set()
        worker.stop()


def test_analysis_is_due_once_per_interval_unless_a_condition_is_pending() -> None:
    assert analysis_due(100.0, None, 60.0, pending=False)
    assert not analysis_due(159.0, 100.0, 60.0, pending=False)
    assert analysis_due(160.0, 100.0, 60.0, pending=False)
    assert analysis_due(101.0, 100.0, 60.0, pending=True)
    assert analysis_due(5.0, 100.0, 60.0, pending=False)  # time went back: a new stream


def test_worker_samples_keyframes_until_something_looks_wrong() -> None:
    interval_s = 2.0
    thresholds = replace(FAST, analysis_interval_s=interval_s)
    seen: list[HealthChange] = []
    worker = HealthWorker("gate", thresholds, seen.append, queue_size=64)
    clip = encode_clip(then(black), b_frames=0)
    first_t_s = None
    try:
        for packet, _ in demux(clip):
            first_t_s = packet_time_s(packet) if first_t_s is None else first_t_s
            worker.offer(packet)
            assert worker.wait_idle(timeout_s=30.0)  # one at a time, as a slow camera would deliver them
        snap = worker.snapshot()
    finally:
        worker.stop()
    keyframes = round(CLIP_S * FPS / GOP_FRAMES)
    # Normal scene: one keyframe per interval. Once the first dark one is seen: every keyframe.
    normal_sampled = int(SWITCH_S // interval_s) + 1
    assert snap["offered"] + snap["skipped"] == keyframes
    assert normal_sampled < snap["keyframes"] < keyframes
    assert [(c.condition, c.active) for c in seen] == [("dark", True)]
    latest_s = SWITCH_S + interval_s + FAST.dark_after_s + GOP_FRAMES / FPS
    assert seen[0].t_s - first_t_s <= latest_s


def test_worker_offer_never_raises_on_a_packet_it_cannot_use() -> None:
    worker = HealthWorker("gate", FAST)
    try:
        bare = av.Packet(b"\x00\x00\x00\x01\x65" + bytes(64))  # no stream, no timestamps
        bare.is_keyframe = True
        assert worker.offer(bare) is False  # no time: skipped
        assert worker.offer(bare, t_s=1.0) is False  # no stream to take the codec from
        snap = worker.snapshot()
    finally:
        worker.stop()
    assert snap["skipped"] == 1 and snap["failures"] == 1 and snap["offered"] == 0
