"""How edgerec writes and reads times: RFC 3339 UTC with milliseconds (``2026-11-20T09:55:00.000Z``) out,
RFC 3339 (and an operator's local time) in; and the units times are counted in.

Stored times are UTC nanoseconds; this is the one place they become text (status, MQTT, audit, listings)
and text becomes them again (commands, audit replay, CLI arguments).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import overload

from .errors import CommandError

NS_PER_S = 1_000_000_000
DAY_NS = 86_400 * NS_PER_S

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
_LOCAL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2}))?$")


@overload
def rfc3339(ns: int | float) -> str: ...
@overload
def rfc3339(ns: None) -> None: ...
def rfc3339(ns: int | float | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time (offset required, up to ns precision) as UTC ns; raises ValueError."""
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError("not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, offset = m.group(7), m.group(8)
    tz = UTC if offset in ("Z", "z") else datetime.strptime(offset.replace(":", ""), "%z").tzinfo
    if second == 60:  # leap second: RFC 3339 allows it; count it as the last instant of the minute
        second = 59
        frac = "999999999"
    dt = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    return int(dt.timestamp()) * NS_PER_S + int((frac or "0").ljust(9, "0"))


def parse_time(text: str) -> int:
    """A time as typed by an operator: RFC 3339 (``2026-11-20T09:55:00Z``) or local time
    ``YYYY-MM-DD HH:MM[:SS]``. Returns UTC ns; raises CommandError with a hint."""
    stripped = text.strip()
    try:
        return parse_rfc3339(stripped)
    except ValueError:
        pass
    m = _LOCAL.match(stripped)
    if m is not None:
        try:
            year, month, day, hour, minute, second = (int(g or 0) for g in m.groups())
            dt = datetime(year, month, day, hour, minute, second)
            return int(dt.timestamp()) * NS_PER_S  # naive: local time of this machine
        except ValueError:
            pass
    raise CommandError(f"{text!r} is not a time; use RFC 3339 (2026-11-20T09:55:00Z) "
                       "or local 'YYYY-MM-DD HH:MM[:SS]'")
