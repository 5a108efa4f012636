"""How edgerec writes times: RFC 3339 UTC with milliseconds (``2026-11-20T09:55:00.000Z``).

Stored times are UTC nanoseconds; this is the one place they become text (status, MQTT, audit, listings).
Parsing the other way is in ``incidents.parse_time``, next to the commands that take times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def rfc3339(ns: int | float) -> str: ...
@overload
def rfc3339(ns: None) -> None: ...
def rfc3339(ns: int | float | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
