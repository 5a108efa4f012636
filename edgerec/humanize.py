"""Plain words for the CLI's human output: local times, counts with the right plural, lengths of time.

``--json`` output keeps the machine fields (RFC 3339 UTC, numbers); these are for people reading a
terminal on the device or the officer's workstation.
"""

from __future__ import annotations

from datetime import datetime

from .timefmt import NS_PER_S, parse_rfc3339


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 gap``, ``2 gaps``, ``0 gaps``; ``nouns`` for an irregular plural."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def local_time(ns: int | None) -> str:
    """A UTC ns time as this machine's local time, ``2026-11-20 10:55:00 CET``; ``-`` when None."""
    if ns is None:
        return "-"
    dt = datetime.fromtimestamp(ns / NS_PER_S).astimezone()
    return f"{dt:%Y-%m-%d %H:%M:%S} {dt.tzname() or dt.strftime('%z')}".rstrip()


def local_time_text(text: str | None, absent: str = "-") -> str:
    """An RFC 3339 time from a status or a listing as local time; ``absent`` when None, the text itself
    when it is not a time."""
    if not text:
        return absent
    try:
        return local_time(parse_rfc3339(text))
    except ValueError:
        return text


def duration_parts(seconds: float) -> tuple[int, int, int, int]:
    """Whole (days, hours, minutes, seconds) of a length of time (negative counts as 0)."""
    days, rem = divmod(int(max(0.0, float(seconds))), 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    return days, hours, minutes, secs


def seconds_text(seconds: float) -> str:
    """A length of time in plain words: ``0.4 s``, ``23.7 s``, ``5 min 3 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s"
    days, hours, minutes, secs = duration_parts(s)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"
