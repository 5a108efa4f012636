"""How edgerec writes and reads times: RFC 3339 UTC with milliseconds (``2026-11-20T09:55:00.000Z``) out,
RFC 3339 (and an operator's local time) in; and the units times are counted in.

Stored times are UTC nanoseconds; this is the one place they become text (status, MQTT, audit, listings)
and text becomes them again (commands, audit replay, CLI arguments).

One range rule for every time read from text: from ``1970-01-01T00:00:00Z`` up to (not including)
``2200-01-01T00:00:00Z``, whatever the form (with an offset, ``Z``, or a naive local time). Outside it a
time cannot be stored (negative or overflowing nanoseconds, dates Python cannot represent), so it is
refused with a message that says so, never with a traceback.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import overload

from .errors import CommandError

NS_PER_S = 1_000_000_000
DAY_NS = 86_400 * NS_PER_S
MIN_YEAR = 1970
MAX_YEAR = 2199  # times up to the end of this year are accepted
MIN_TIME_NS = 0  # 1970-01-01T00:00:00Z
MAX_TIME_NS = int(datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()) * NS_PER_S  # exclusive
RANGE_TEXT = f"{MIN_YEAR}-01-01T00:00:00Z .. {MAX_YEAR}-12-31T23:59:59Z"

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


class TimeRangeError(ValueError):
    """A well-formed time outside the range edgerec can represent (``RANGE_TEXT``)."""


def range_problem(ns: int) -> str | None:
    """Why the time ``ns`` (UTC ns) is outside the one range every parser keeps, or None."""
    if MIN_TIME_NS <= ns < MAX_TIME_NS:
        return None
    return f"the time is outside what edgerec can represent ({RANGE_TEXT})"


def _check_year(year: int) -> None:
    # Before building a datetime: years like 0000 or 9999 with an offset cannot even be converted.
    if not MIN_YEAR - 1 <= year <= MAX_YEAR + 1:
        raise TimeRangeError(f"year {year} is outside what edgerec can represent ({RANGE_TEXT})")


def _in_range(ns: int) -> int:
    problem = range_problem(ns)
    if problem is not None:
        raise TimeRangeError(problem)
    return ns


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time (offset required, up to ns precision) as UTC ns; raises ValueError (TimeRangeError
    for a well-formed time outside ``RANGE_TEXT``)."""
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError("not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    _check_year(year)
    frac, offset = m.group(7), m.group(8)
    try:
        tz = UTC if offset in ("Z", "z") else datetime.strptime(offset.replace(":", ""), "%z").tzinfo
    except ValueError:
        raise ValueError(f"offset {offset} is not an RFC 3339 offset") from None
    if second == 60:  # leap second: RFC 3339 allows it; count it as the last instant of the minute
        second = 59
        frac = "999999999"
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=tz)
        seconds = int(dt.timestamp())
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid date and time ({exc})") from None
    return _in_range(seconds * NS_PER_S + int((frac or "0").ljust(9, "0")))


def parse_time(text: str) -> int:
    """A time as typed by an operator: RFC 3339 (``2026-11-20T09:55:00Z``) or local time
    ``YYYY-MM-DD HH:MM[:SS]``. Returns UTC ns; raises CommandError with a hint."""
    stripped = text.strip()
    try:
        return parse_rfc3339(stripped)
    except TimeRangeError as exc:
        raise CommandError(str(exc)) from None
    except ValueError:
        pass
    m = _LOCAL.match(stripped)
    if m is not None:
        year, month, day, hour, minute, second = (int(g or 0) for g in m.groups())
        try:
            _check_year(year)
            dt = datetime(year, month, day, hour, minute, second)
            return _in_range(int(dt.timestamp()) * NS_PER_S)  # naive: local time of this machine
        except TimeRangeError as exc:
            raise CommandError(str(exc)) from None
        except (ValueError, OverflowError, OSError):
            pass
    raise CommandError(f"{text!r} is not a time; use RFC 3339 (2026-11-20T09:55:00Z) "
                       "or local 'YYYY-MM-DD HH:MM[:SS]'")
