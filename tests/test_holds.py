"""What "held" means (edgerec.holds), tested directly: windows, release, merging and the overlap index."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.holds import (
    Holds,
    WindowIndex,
    covers,
    held_index,
    held_windows,
    holds,
    holds_at,
    merge_windows,
    overlaps,
    released_ns,
    window,
)

MIN = 60 * 10**9
DAY = 1440 * MIN


@dataclass(frozen=True)
class Inc:
    camera: str
    from_ns: int
    to_ns: int | None
    closed_ns: int | None = None
    pre_roll_ns: int = MIN
    post_roll_ns: int = MIN


def test_window_takes_rolls_and_an_open_end_until_closed():
    assert window(Inc("gate", 10 * MIN, 20 * MIN)) == (9 * MIN, 21 * MIN)
    assert window(Inc("gate", 10 * MIN, None)) == (9 * MIN, None)  # open-ended and open: no end
    assert window(Inc("gate", 10 * MIN, None, closed_ns=30 * MIN)) == (9 * MIN, 31 * MIN)
    # A given 'to' wins over the close time: closing later does not widen the window.
    assert window(Inc("gate", 10 * MIN, 20 * MIN, closed_ns=DAY)) == (9 * MIN, 21 * MIN)


def test_a_closed_incident_holds_for_the_grace_period_only():
    inc = Inc("gate", 0, MIN, closed_ns=DAY)
    assert released_ns(inc, 7 * DAY) == 8 * DAY
    assert holds_at(inc, 8 * DAY - 1, 7 * DAY) and not holds_at(inc, 8 * DAY, 7 * DAY)
    assert released_ns(Inc("gate", 0, MIN), 7 * DAY) is None and holds_at(Inc("gate", 0, MIN), 10**20, 0)


def test_star_covers_every_camera_and_a_name_only_itself():
    assert covers(Inc("*", 0, 1), "yard") and covers(Inc("gate", 0, 1), "gate")
    assert not covers(Inc("gate", 0, 1), "yard")


def test_overlap_is_of_closed_intervals():
    assert overlaps(0, 10, 10, 20) and overlaps(20, 30, 10, 20)  # touching ends overlap
    assert not overlaps(0, 9, 10, 20) and not overlaps(21, 30, 10, 20)
    assert overlaps(10**18, 10**18 + 1, 10, None)  # no end: everything after the start


def test_holds_combines_camera_time_and_release():
    inc = Inc("gate", 10 * MIN, 20 * MIN, closed_ns=DAY)
    assert holds(inc, "gate", 8 * MIN, 9 * MIN, DAY, 7 * DAY)  # pre-roll reaches back
    assert not holds(inc, "yard", 10 * MIN, 11 * MIN, DAY, 7 * DAY)
    assert not holds(inc, "gate", 10 * MIN, 11 * MIN, 8 * DAY, 7 * DAY)  # released


def test_held_windows_merge_per_camera_and_leave_out_released_incidents():
    incidents = [Inc("gate", 10 * MIN, 20 * MIN), Inc("*", 15 * MIN, 30 * MIN),
                 Inc("yard", 100 * MIN, 110 * MIN, closed_ns=0)]  # released at NOW below
    got = held_windows(incidents, ["gate", "yard", "door"], now_ns=DAY, grace_ns=MIN)
    assert got == {"gate": [(9 * MIN, 31 * MIN)], "yard": [(14 * MIN, 31 * MIN)],
                   "door": [(14 * MIN, 31 * MIN)]}
    # Windows closer than the join gap (the longest segment) become one.
    apart = [Inc("gate", 10 * MIN, 20 * MIN), Inc("gate", 25 * MIN, 30 * MIN)]
    assert held_windows(apart, ["gate"], DAY, 0) == {"gate": [(9 * MIN, 21 * MIN), (24 * MIN, 31 * MIN)]}
    assert held_windows(apart, ["gate"], DAY, 0, join_gap_ns=3 * MIN) == {"gate": [(9 * MIN, 31 * MIN)]}


def test_holds_at_splits_holding_from_released_and_knows_what_kept_footage_past_its_age():
    incidents = [Inc("gate", 10 * MIN, 20 * MIN), Inc("yard", 0, MIN, closed_ns=DAY)]
    split = Holds.at(incidents, now_ns=10 * DAY, grace_ns=7 * DAY)
    assert split.held.any_overlap("gate", 15 * MIN, 16 * MIN)
    assert not split.held.any_overlap("yard", 0, MIN)
    assert split.released.overlapping("yard", 0, MIN) == [8 * DAY]
    assert split.kept_past("yard", 0, MIN, expiry_ns=5 * DAY)  # released on day 8, due on day 5
    assert not split.kept_past("yard", 0, MIN, expiry_ns=9 * DAY)
    assert not split.kept_past("gate", 0, MIN, expiry_ns=0)  # no released window there


def test_held_index_keeps_only_holding_incidents():
    idx = held_index([Inc("gate", 0, MIN, closed_ns=MIN), Inc("yard", 0, MIN)], now_ns=DAY, grace_ns=MIN)
    assert not idx.any_overlap("gate", 0, MIN) and idx.any_overlap("yard", 0, MIN)
    assert not held_index([], 0, 0)  # an empty index is falsy: nothing to check


# ----- properties -------------------------------------------------------------------------------------
windows_st = st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 200))).map(
    lambda w: (w[0], None if w[1] is None else w[0] + w[1])), max_size=12)


def _covered(windows: list[tuple[int, int | None]], t: int) -> bool:
    return any(lo <= t and (hi is None or t <= hi) for lo, hi in windows)


@settings(max_examples=300, deadline=None)
@given(windows_st, st.integers(0, 5))
def test_merged_windows_cover_the_same_points_and_are_sorted_and_disjoint(windows, gap):
    merged = merge_windows(windows, join_gap_ns=gap)
    for t in range(0, 1300, 7):
        if _covered(windows, t):
            assert _covered(merged, t)
    if gap == 0:  # without a join gap nothing is added either
        assert all(_covered(windows, t) == _covered(merged, t) for t in range(0, 1300))
    for (lo1, hi1), (lo2, _) in zip(merged, merged[1:], strict=False):
        assert hi1 is not None and hi1 + gap < lo2 and lo1 <= lo2


incidents_st = st.lists(st.builds(
    Inc, camera=st.sampled_from(["gate", "yard", "*"]), from_ns=st.integers(0, 1000),
    to_ns=st.one_of(st.none(), st.integers(0, 1000)), closed_ns=st.one_of(st.none(), st.integers(0, 2000)),
    pre_roll_ns=st.integers(0, 50), post_roll_ns=st.integers(0, 50)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(incidents_st, st.sampled_from(["gate", "yard"]), st.integers(0, 1200), st.integers(0, 100),
       st.integers(0, 2500), st.integers(0, 500))
def test_the_index_agrees_with_holds_one_incident_at_a_time(incidents, camera, start, length, now, grace):
    incidents = [i for i in incidents if i.to_ns is None or i.to_ns >= i.from_ns]
    end = start + length
    expected = any(holds(i, camera, start, end, now, grace) for i in incidents)
    assert held_index(incidents, now, grace).any_overlap(camera, start, end) == expected
    assert Holds.at(incidents, now, grace).held.any_overlap(camera, start, end) == expected
    by_camera = held_windows(incidents, [camera], now, grace)
    assert any(overlaps(start, end, lo, hi) for lo, hi in by_camera.get(camera, [])) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["gate", "*"]), st.integers(0, 100), st.integers(0, 100),
                          st.integers()), max_size=10), st.integers(0, 120), st.integers(0, 20))
def test_overlapping_returns_exactly_the_payloads_of_overlapping_windows(raw, start, length):
    entries = [(cam, lo, lo + span, payload) for cam, lo, span, payload in raw]
    end = start + length
    got = WindowIndex(entries).overlapping("gate", start, end)
    want = [p for _, lo, hi, p in entries if overlaps(start, end, lo, hi)]
    assert sorted(got) == sorted(want)
