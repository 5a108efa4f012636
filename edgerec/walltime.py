"""Which wall times can be believed: the rule, as a value passed to whoever judges footage. Pure.

A Raspberry Pi has no battery-backed clock: it boots with the last saved time (or 1970) and jumps when
NTP syncs. No wall time before this software's release date is plausible, and none much earlier than
the newest footage already recorded. The clock module applies the rule to readings; the catalog applies
it to each segment it records (``Catalog.open(..., time_rules=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# No wall time before this software's release date is plausible (a Pi booting at 1970, or a stale
# fake-hwclock image, is caught by this floor).
RELEASE_FLOOR_NS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1_000_000_000

# Segment boundaries and thread scheduling make consecutive timestamps disagree by milliseconds; a wall
# time this much earlier than the newest footage is still taken as a normal, plausible reading.
PLAUSIBLE_SLACK_NS = 5 * 1_000_000_000


@dataclass(frozen=True)
class WallTimeRules:
    """``floor_ns``: no wall time before it is believed; ``slack_ns``: how much earlier than the newest
    footage a wall time may be and still be believed."""

    floor_ns: int = RELEASE_FLOOR_NS
    slack_ns: int = PLAUSIBLE_SLACK_NS

    def plausible(self, wall_ns: int, newest_ns: int | None) -> bool:
        """Can ``wall_ns`` be believed, given the end of the newest footage believed so far?"""
        if wall_ns < self.floor_ns:
            return False
        return newest_ns is None or wall_ns >= newest_ns - self.slack_ns


WALL_TIME_RULES = WallTimeRules()
