"""Incident commands as they arrive (from MQTT or the CLI): validation into an ``IncidentCommand``, and
the limits a new incident must keep. Pure.

Limits (``incidents.max_window_days``, ``incidents.max_open``) bound what one command can hold, so that
a forged or mistyped command can keep footage longer, but not pin the whole disk: a new incident's
``from`` lies at most ``max_window_days`` before the time of the command, a closed window (``to`` given)
spans at most ``max_window_days`` (pre- and post-roll come on top), and at most ``max_open`` incidents are
open at once. Open-ended incidents stay open-ended. The service checks them when a *new* incident is
opened (a re-sent open of an existing incident is still a ``duplicate``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..errors import CommandError
from ..inputcheck import text_problem
from ..timefmt import DAY_NS, TimeRangeError, parse_rfc3339

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_REASON_CHARS = 1000
MAX_BY_CHARS = 200
ACTIONS = ("open", "close")
_OPEN_KEYS = frozenset({"action", "id", "camera", "from", "to", "reason", "by"})
_CLOSE_KEYS = frozenset({"action", "id", "by", "reason"})


@dataclass(frozen=True)
class IncidentCommand:
    """A validated incident command. For ``close`` only id, by (and reason) are set."""

    action: str
    id: str
    camera: str | None = None
    from_ns: int | None = None
    to_ns: int | None = None
    reason: str = ""
    by: str = ""
    from_defaulted: bool = False  # no 'from' given: it is the time of the command, not part of its identity


class IncidentLimitError(CommandError):
    """A well-formed open refused by the configured limits (audited as ``incident_refused``)."""


def json_type(value: object) -> str:
    """How a JSON value's type is named in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _text(obj: Mapping[str, object], key: str, limit: int, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise CommandError(f"field '{key}' must be a string, not {json_type(value)}")
    if len(value) > limit:
        raise CommandError(f"field '{key}' is too long ({len(value)} characters, limit {limit})")
    problem = text_problem(value)
    if problem is not None:  # the one text rule (inputcheck.py): no C0, DEL, C1 or bidi controls
        raise CommandError(f"field '{key}' {problem}")
    return value


def _time_field(obj: Mapping[str, object], key: str) -> int:
    value = obj[key]
    if not isinstance(value, str):
        raise CommandError(f"field '{key}' must be an RFC 3339 time string, not {json_type(value)}")
    try:
        return parse_rfc3339(value)
    except TimeRangeError as exc:
        raise CommandError(f"field '{key}': {exc}") from None
    except (ValueError, OverflowError):
        raise CommandError(f"field '{key}': {value[:64]!r} is not an RFC 3339 time "
                           "(like 2026-11-20T09:55:00Z)") from None


def parse_command(obj: object, *, cameras: Collection[str], now_ns: int) -> IncidentCommand:
    """Validate an incident command object; raises CommandError with a one-line message.

    ``open``: ``id``, ``camera`` (a configured camera or ``*``), ``from`` (RFC 3339; defaults to now, may
    lie in the past), ``to`` (RFC 3339 or null = open-ended; not before ``from``), ``reason``, ``by``.
    ``close``: ``id``, ``by`` (and an optional ``reason``). Unknown keys are refused. The rolls and the
    limits (``window_limit_problem``, ``max_open``) are applied by the service to new incidents only.
    """
    if not isinstance(obj, Mapping):
        raise CommandError(f"command must be an object, not {json_type(obj)}")
    action = obj.get("action")
    if action is None:
        raise CommandError("field 'action' is missing (open or close)")
    if not isinstance(action, str):
        raise CommandError(f"field 'action' must be a string, not {json_type(action)}")
    if action not in ACTIONS:
        raise CommandError(f"unknown action {action[:32]!r} (open or close)")
    allowed = _OPEN_KEYS if action == "open" else _CLOSE_KEYS
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise CommandError(f"unknown field(s) for {action}: {', '.join(repr(k[:32]) for k in unknown)}")
    incident_id = obj.get("id")
    if incident_id is None:
        raise CommandError("field 'id' is missing")
    if not isinstance(incident_id, str):
        raise CommandError(f"field 'id' must be a string, not {json_type(incident_id)}")
    if not ID_PATTERN.match(incident_id):
        raise CommandError(f"field 'id' {incident_id[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    by = _text(obj, "by", MAX_BY_CHARS)
    reason = _text(obj, "reason", MAX_REASON_CHARS)
    if action == "close":
        return IncidentCommand("close", incident_id, by=by, reason=reason)

    camera = obj.get("camera")
    if camera is None:
        raise CommandError("field 'camera' is missing (a camera name or '*')")
    if not isinstance(camera, str):
        raise CommandError(f"field 'camera' must be a string, not {json_type(camera)}")
    if text_problem(camera) is not None:
        raise CommandError(f"field 'camera' {text_problem(camera)}")
    if camera != "*" and camera not in cameras:
        known = ", ".join(sorted(cameras)) or "none configured"
        raise CommandError(f"field 'camera': unknown camera {camera[:64]!r} (known: {known}; or '*')")
    from_defaulted = obj.get("from") is None
    from_ns = now_ns if from_defaulted else _time_field(obj, "from")
    to_ns = _time_field(obj, "to") if obj.get("to") is not None else None
    if to_ns is not None and to_ns < from_ns:
        raise CommandError("field 'to' is before 'from'")
    return IncidentCommand("open", incident_id, camera, from_ns, to_ns, reason, by, from_defaulted)


def window_limit_problem(from_ns: int, to_ns: int | None, now_ns: int, max_window_days: float) -> str | None:
    """Why the window [from_ns, to_ns] (to None: open-ended) of a new incident opened at ``now_ns`` is
    over the limit, or None. Pure; the rolls are not counted (they are bounded by the configuration)."""
    max_ns = int(max_window_days * DAY_NS)
    if from_ns < now_ns - max_ns:
        return (f"field 'from' is {(now_ns - from_ns) / DAY_NS:.1f} days before now; "
                f"incidents.max_window_days allows {max_window_days:g}")
    if to_ns is not None and to_ns - from_ns > max_ns:
        return (f"window 'from'..'to' spans {(to_ns - from_ns) / DAY_NS:.1f} days; "
                f"incidents.max_window_days allows {max_window_days:g}")
    return None
