"""Trusted time: plausibility, jump detection and re-dating, fed with injected readings."""

from __future__ import annotations

import time

from edgerec import clock
from edgerec.clock import (
    PLAUSIBLE_SLACK_NS,
    RELEASE_FLOOR_NS,
    ClockReading,
    ClockWatch,
    plausible,
    redate,
)

S = 1_000_000_000
DAY = 86_400 * S
T0 = RELEASE_FLOOR_NS + 30 * DAY  # a plausible wall time
BOOT = "boot-a"


def reading(wall_ns: int, mono_ns: int, *, synced: bool = False, boot: str = BOOT) -> ClockReading:
    return ClockReading(wall_ns, mono_ns, boot, synced)


def test_kernel_readings_have_the_right_shape():
    assert isinstance(clock.clock_synced(), bool)
    bid = clock.boot_id()
    assert bid and bid == clock.boot_id()
    a = clock.monotonic_ns()
    b = clock.monotonic_ns()
    assert b >= a > 0
    r = clock.read_clock()
    assert abs(r.wall_ns - time.time_ns()) < 5 * S


def test_wall_time_before_release_date_is_implausible():
    assert not plausible(RELEASE_FLOOR_NS - 1, None)
    assert plausible(RELEASE_FLOOR_NS, None)
    assert not plausible(0, None)  # a Pi that booted at 1970


def test_wall_time_before_newest_footage_is_implausible_beyond_slack():
    newest = T0
    assert plausible(newest - PLAUSIBLE_SLACK_NS, newest)
    assert not plausible(newest - PLAUSIBLE_SLACK_NS - 1, newest)
    assert plausible(newest + DAY, newest)


def test_clock_watch_reports_forward_and_backward_jumps_only_beyond_threshold():
    watch = ClockWatch(threshold_s=600)
    assert watch.observe(T0, 0) is None  # first reading: nothing to compare with
    assert watch.observe(T0 + 60 * S, 60 * S) is None  # moves with the monotonic clock
    assert watch.observe(T0 + 120 * S + 500 * S, 120 * S) is None  # 500 s drift: under threshold
    jump = watch.observe(T0 + 2 * DAY, 180 * S)
    assert jump is not None and jump > 0
    back = watch.observe(T0 + 2 * DAY - 3600 * S, 240 * S)
    assert back is not None and back == -3600 * S - 60 * S


def test_redate_uses_boot_id_and_monotonic_offset():
    anchor = reading(T0 + 10_000 * S, 20_000 * S, synced=True)
    segments = [
        (1, BOOT, 5_000 * S, 100 * S, 160 * S),  # recorded at 1970 + 100 s, 15000 s before the anchor
        (2, "other-boot", 6_000 * S, 200 * S, 260 * S),
        (3, BOOT, 25_000 * S, 300 * S, 360 * S),  # monotonic after the anchor: not from this timeline
    ]
    out = redate(segments, anchor)
    assert len(out) == 1
    assert out[0].segment_id == 1
    assert out[0].start_ns == T0 + 10_000 * S - 15_000 * S
    assert out[0].end_ns - out[0].start_ns == 60 * S
