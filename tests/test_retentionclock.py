"""The retention clock (pure): it never runs faster than the monotonic clock, and a restart is credited
only as far as its evidence allows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgerec import retentionclock as rc
from edgerec.clock import RELEASE_FLOOR_NS, ClockReading

S = 1_000_000_000
DAY = 86_400 * S
T0 = RELEASE_FLOOR_NS + 30 * DAY


def reading(wall_ns: int, mono_ns: int, boot: str = "boot-a", synced: bool = True) -> ClockReading:
    return ClockReading(wall_ns, mono_ns, boot, synced)


def test_first_start_takes_the_wall_clock_but_never_before_the_release_floor():
    anchor, credit = rc.start(None, reading(T0, 5 * S), max_credit_ns=DAY)
    assert anchor.rclock_ns == T0 and credit.evidence == rc.FIRST_START
    anchor, _ = rc.start(None, reading(0, 5 * S), max_credit_ns=DAY)
    assert anchor.rclock_ns == RELEASE_FLOOR_NS


def test_running_clock_ignores_a_wall_clock_jump_forward():
    anchor, _ = rc.start(None, reading(T0, 100 * S), max_credit_ns=DAY)
    jumped = reading(T0 + 40 * DAY + 10 * S, 110 * S)
    assert rc.now(anchor, jumped) == T0 + 10 * S


def test_restart_in_the_same_boot_credits_exactly_the_monotonic_downtime():
    anchor, _ = rc.start(None, reading(T0, 100 * S), max_credit_ns=DAY)
    again, credit = rc.start(anchor, reading(T0 + 40 * DAY, 160 * S), max_credit_ns=DAY)
    assert again.rclock_ns == T0 + 60 * S
    assert credit.evidence == rc.SAME_BOOT and credit.credited_ns == 60 * S


def test_new_boot_credits_uptime_plus_the_wall_claim_up_to_the_cap():
    anchor, _ = rc.start(None, reading(T0, 100 * S), max_credit_ns=DAY)
    # Really off for 40 days; booted 30 s ago.
    after, credit = rc.start(anchor, reading(T0 + 40 * DAY, 30 * S, boot="boot-b"), max_credit_ns=DAY)
    assert after.rclock_ns == T0 + 30 * S + DAY
    assert credit.evidence == rc.WALL_CAPPED
    assert credit.uncredited_ns == 40 * DAY - DAY - 30 * S
    # A short real outage is credited in full.
    short, credit = rc.start(anchor, reading(T0 + 600 * S, 30 * S, boot="boot-b"), max_credit_ns=DAY)
    assert short.rclock_ns == T0 + 600 * S and credit.uncredited_ns == 0


def test_new_boot_with_the_wall_clock_behind_still_credits_the_uptime():
    anchor, _ = rc.start(None, reading(T0, 100 * S), max_credit_ns=DAY)
    after, _ = rc.start(anchor, reading(RELEASE_FLOOR_NS - DAY, 45 * S, boot="boot-b"), max_credit_ns=DAY)
    assert after.rclock_ns == T0 + 45 * S


def test_a_trusted_reading_credits_the_whole_downtime():
    anchor, _ = rc.start(None, reading(T0, 100 * S), max_credit_ns=DAY)
    after, credit = rc.start(anchor, reading(T0 + 40 * DAY, 30 * S, boot="boot-b"), max_credit_ns=DAY,
                             trusted_wall_ns=T0 + 40 * DAY)
    assert after.rclock_ns == T0 + 40 * DAY and credit.evidence == rc.TRUSTED


def test_segment_stamps_come_from_their_boots_anchor_and_never_from_the_future():
    a = rc.Anchor("boot-a", 100 * S, T0, T0)
    epochs = rc.Epochs([a])
    assert rc.stamp_segment("boot-a", 150 * S, 10 * S, T0 + DAY, epochs) == T0 + 60 * S
    assert rc.stamp_segment("boot-a", 150 * S, 10 * S, T0 + 20 * S, epochs) == T0 + 20 * S
    # Unknown boot (catalog lost, no anchor of it): aged from now.
    assert rc.stamp_segment("boot-x", 150 * S, 10 * S, T0 + DAY, epochs) == T0 + DAY


def test_anchor_round_trips_through_audit_fields_and_rejects_junk():
    a = rc.Anchor("boot-a", 1, 2, 3)
    assert rc.anchor_from_fields(a.to_fields()) == a
    assert rc.anchor_from_fields({"boot_id": "b", "mono_ns": 1.5, "wall_ns": 2, "rclock_ns": 3}) is None
    assert rc.anchor_from_fields({"boot_id": "b"}) is None
    assert rc.anchor_from_fields({"boot_id": "b", "mono_ns": True, "wall_ns": 2, "rclock_ns": 3}) is None


def test_a_cached_anchor_ahead_of_the_monotonic_clock_is_not_believed():
    recorded = rc.Anchor("boot-a", 100 * S, T0, T0)
    assert rc.check_cache(rc.Anchor("boot-a", 200 * S, T0 + 100 * S, T0 + 100 * S), recorded) is None
    assert rc.check_cache(rc.Anchor("boot-a", 200 * S, T0 + 40 * DAY, T0 + 40 * DAY), recorded)
    assert rc.check_cache(rc.Anchor("boot-b", 200 * S, T0, T0), recorded)
    assert rc.check_cache(rc.Anchor("boot-a", 50 * S, T0, T0), recorded)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100 * DAY),
                          st.integers(-100 * DAY, 100 * DAY)), min_size=1, max_size=30))
def test_retention_time_never_advances_faster_than_real_time(steps):
    """Whatever the wall clock says, over a run of restarts the retention clock gains at most the real
    time (monotonic increments within a boot, uptime + the cap per new boot)."""
    cap = DAY
    wall = T0
    anchor, _ = rc.start(None, reading(wall, 0, boot="a"), max_credit_ns=cap)
    boot, mono, real_elapsed, new_boots = "a", 0, 0, 0
    for next_boot, dt, wall_shift in steps:
        if next_boot == boot:
            mono += dt
        else:
            boot, mono, new_boots = next_boot, dt, new_boots + 1
        real_elapsed += dt
        wall = wall + dt + wall_shift
        anchor, _ = rc.start(anchor, reading(wall, mono, boot=boot), max_credit_ns=cap)
        assert anchor.rclock_ns - T0 <= real_elapsed + new_boots * cap


def test_an_anchor_ahead_of_this_boots_monotonic_clock_earns_no_credit():
    forged = rc.Anchor("boot-a", 10 * DAY, T0, T0)
    after, credit = rc.start(forged, reading(T0 + 40 * DAY, 100 * S), max_credit_ns=DAY)
    assert after.rclock_ns == T0 and credit.evidence == rc.INCONSISTENT
