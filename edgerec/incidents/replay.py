"""Incidents as the audit log tells them (pure): which ``incident_opened``/``incident_closed`` lines count,
and the incidents they describe. Used to restore a lost catalog's incidents and, at start-up, to find
lines a power cut kept from the catalog.

An ``incident_not_recorded`` line voids the latest line of its id and action that is not yet voided, so
a voided line followed by its retry's line counts once. An ``incidents_confirmed`` line (``through``: a
line number) says that the catalog was found to agree with every incident line up to that one: those
lines were committed, and a catalog that lacks them later was changed, not cut off by a power cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..catalog import IncidentRow
from ..timefmt import parse_rfc3339
from .commands import ID_PATTERN, json_type

_CLAIM_ACTIONS = {"incident_opened": "open", "incident_closed": "close"}
CONFIRMED_EVENT = "incidents_confirmed"
_Claim = tuple[int, Mapping[str, Any]]  # (position in the entries, the line)


def _counted_claims(entries: Iterable[_Claim]) -> dict[tuple[str, str], list[_Claim]]:
    """Per (id, action), the ``incident_opened``/``incident_closed`` lines that count, oldest first. An
    ``incident_not_recorded`` line voids the latest line of its id and action not voided yet, so a voided
    line followed by its retry's line counts once. Lines whose id is not text are passed over."""
    stacks: dict[tuple[str, str], list[_Claim]] = {}
    for index, entry in entries:
        event, inc_id = entry.get("event"), entry.get("id")
        if not isinstance(inc_id, str):
            continue
        if event in _CLAIM_ACTIONS:
            stacks.setdefault((inc_id, _CLAIM_ACTIONS[event]), []).append((index, entry))
        elif event == "incident_not_recorded" and (action := entry.get("action")) in ("open", "close"):
            stack = stacks.get((inc_id, action))
            if stack:
                stack.pop()  # the voided line (an action of another type voids nothing)
    return stacks


def confirmed_through(entries: Iterable[Mapping[str, Any]]) -> int:
    """The highest line number an ``incidents_confirmed`` line among ``entries`` vouches for (0: none)."""
    through = 0
    for entry in entries:
        value = entry.get("through")
        if entry.get("event") == CONFIRMED_EVENT and isinstance(value, int) and not isinstance(value, bool):
            through = max(through, value)
    return through


def unconfirmed_claims(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(id, action) of the ``incident_opened``/``incident_closed`` lines among ``entries`` (audit lines,
    oldest first) that no later ``incident_not_recorded`` voids and no ``incidents_confirmed`` line
    vouches for: the only lines a power cut can have kept from the catalog, in the order of each one's
    latest counted line. A line at or before a confirmation was in the catalog when it was confirmed: if
    the catalog lacks it now, someone changed the catalog, and that is for the hold check to report,
    never to be voided here."""
    entries = list(entries)
    through = confirmed_through(entries)
    stacks = _counted_claims(enumerate(entries))
    latest = sorted((stack[-1][0], key) for key, stack in stacks.items()
                    if stack and (through == 0 or _line_number(stack[-1][1]) > through))
    return [key for _, key in latest]


def _line_number(entry: Mapping[str, Any]) -> int:
    n = entry.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


@dataclass(frozen=True)
class LoggedIncidents:
    """The incidents an audit log records (``incidents``, in the order first logged) and why some lines
    could not be used (``problems``, one line each naming the audit line)."""

    incidents: tuple[IncidentRow, ...]
    problems: tuple[str, ...]


class _BadLine(ValueError):
    """A field of an incident line that cannot be used (the message names it)."""


def _where(entry: Mapping[str, Any]) -> str:
    n = entry.get("n")
    return f"audit line {n if isinstance(n, int) else '?'} ({entry.get('event')})"


def _line_time(entry: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _BadLine(f"field '{key}' is {json_type(value)}, not an RFC 3339 time")
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise _BadLine(f"field '{key}' {value[:64]!r} is not an RFC 3339 time") from None


def _line_text(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise _BadLine(f"field '{key}' is {json_type(value)}, not a string")
    return value


def _line_seconds_ns(entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise _BadLine(f"field '{key}' is {value!r:.40}, not a number of seconds")
    return round(value * 1e9)  # written as ns / 1e9: rounding gives the ns back


def _opened_row(inc_id: str, entry: Mapping[str, Any]) -> IncidentRow:
    camera = entry.get("camera")
    if not isinstance(camera, str) or not camera:
        raise _BadLine(f"field 'camera' is {camera!r:.40}, not a camera name or '*'")
    from_ns = _line_time(entry, "from")
    to_ns = _line_time(entry, "to", optional=True)
    assert from_ns is not None
    if to_ns is not None and to_ns < from_ns:
        raise _BadLine("field 'to' is before 'from'")
    opened_ns = _line_time(entry, "ts")
    assert opened_ns is not None
    return IncidentRow(inc_id, camera, from_ns, to_ns, _line_text(entry, "reason"), _line_text(entry, "by"),
                       opened_ns, pre_roll_ns=_line_seconds_ns(entry, "pre_roll_s"),
                       post_roll_ns=_line_seconds_ns(entry, "post_roll_s"))


def incidents_from_audit(entries: Iterable[Mapping[str, Any]]) -> LoggedIncidents:
    """The incidents as the audit log says they are, from its entries (parsed lines, oldest first).

    Per id, the last ``incident_opened`` line that no ``incident_not_recorded`` voids gives the incident:
    its window, reason, by and rolls, opened at the line's ``ts``. The last unvoided ``incident_closed``
    line after it closes it (at its ``ts``, by its ``by``); a close line from before that open belongs to
    an earlier incident of the same id. A void cancels the latest line of its id and action that is not
    yet voided (``_counted_claims``, as for ``unconfirmed_claims``), so a voided line followed by its retry
    counts once.

    Times come from the lines (millisecond precision): ``ts`` is written just after the command's time
    (at most milliseconds later), so a restored close releases its hold that much later, never earlier.

    Lines that cannot be used are reported in ``problems``, never raised: an open line with a malformed
    field leaves that incident out; a malformed close line leaves it open (it keeps holding).
    """
    problems: list[str] = []
    usable: list[_Claim] = []
    for index, entry in enumerate(entries):
        event = entry.get("event")
        if event not in _CLAIM_ACTIONS and event != "incident_not_recorded":
            continue
        inc_id = entry.get("id")
        if not isinstance(inc_id, str) or not ID_PATTERN.match(inc_id):
            problems.append(f"{_where(entry)}: field 'id' {inc_id!r:.80} is not an incident id")
            continue
        usable.append((index, entry))
    stacks = _counted_claims(usable)
    incidents = []
    for inc_id in dict.fromkeys(inc_id for inc_id, _ in stacks):  # in the order of their first lines
        by_action = {action: stacks.get((inc_id, action), []) for action in ("open", "close")}
        row = _incident_from_claims(inc_id, by_action, problems)
        if row is not None:
            incidents.append(row)
    return LoggedIncidents(tuple(incidents), tuple(problems))


def _incident_from_claims(inc_id: str, by_action: Mapping[str, list[_Claim]],
                          problems: list[str]) -> IncidentRow | None:
    if not by_action["open"]:
        if by_action["close"]:
            problems.append(f"{_where(by_action['close'][-1][1])}: incident {inc_id} closed, but no line "
                            "that opened it counts")
        return None
    open_index, open_entry = by_action["open"][-1]
    try:
        row = _opened_row(inc_id, open_entry)
    except _BadLine as exc:
        problems.append(f"{_where(open_entry)}: incident {inc_id} not restored: {exc}")
        return None
    closes = [entry for index, entry in by_action["close"] if index > open_index]
    if not closes:
        return row
    try:
        closed_ns = _line_time(closes[-1], "ts")
        closed_by = _line_text(closes[-1], "by")
    except _BadLine as exc:
        problems.append(f"{_where(closes[-1])}: incident {inc_id} left open (it keeps holding): {exc}")
        return row
    return replace(row, closed_ns=closed_ns, closed_by=closed_by)
