"""Incidents: the command parser shared by the CLI and MQTT, hold windows, and the service that records
opens and closes in the catalog and the audit log.

An incident holds footage of its camera (or of every camera, ``*``) overlapping [from − pre-roll,
(to or open-ended) + post-roll] while it is open, and for ``release_grace_days`` after it is closed, so a
mistaken close cannot destroy evidence at once. Holds are computed from incidents, never copied onto
segments, so closing one releases exactly what it held and nothing else.

Commands are idempotent by id: the same open again is ok (``duplicate``), a conflicting open is an
error, closing a closed incident is ok (``duplicate``), closing an unknown one is an error.

Limits (``incidents.max_window_days``, ``incidents.max_open``) bound what one command can hold, so that
a forged or mistyped command can keep footage longer, but not pin the whole disk: a new incident's
``from`` lies at most ``max_window_days`` before the time of the command, a closed window (``to`` given)
spans at most ``max_window_days`` (pre- and post-roll come on top), and at most ``max_open`` incidents are
open at once. Open-ended incidents stay open-ended. The limits are checked by the service when a *new*
incident is opened (a re-sent open of an existing incident is still a ``duplicate``), and a refusal is
audited as ``incident_refused``.

A full disk: the service writes through the daemon's space reserve (``spacereserve.SpaceReserve``), so an
open or close on a completely full disk gives up the reserve and is tried once more. The audit line is
appended inside the catalog transaction; if the commit then fails, the log holds a line for a change the
catalog does not have, and the service appends ``incident_not_recorded`` (``id``, ``action``, ``error``)
after it: with the retry's own line when there is a retry, else at once, else with its next audit line.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .catalog import Catalog, IncidentRow
from .errors import CommandError, EdgerecError
from .spacereserve import SpaceReserve
from .timefmt import rfc3339

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_REASON_CHARS = 1000
MAX_BY_CHARS = 200
ACTIONS = ("open", "close")
_OPEN_KEYS = frozenset({"action", "id", "camera", "from", "to", "reason", "by"})
_CLOSE_KEYS = frozenset({"action", "id", "by", "reason"})
DAY_NS = 86_400 * 1_000_000_000

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
_LOCAL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2}))?$")


# ----- times ------------------------------------------------------------------------------------------
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
    return int(dt.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


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
            dt = datetime(*(int(g or 0) for g in m.groups()))
            return int(dt.timestamp()) * 1_000_000_000  # naive: local time of this machine
        except ValueError:
            pass
    raise CommandError(f"{text!r} is not a time; use RFC 3339 (2026-11-20T09:55:00Z) "
                       "or local 'YYYY-MM-DD HH:MM[:SS]'")


# ----- commands ---------------------------------------------------------------------------------------
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


def _text(obj: Mapping[str, Any], key: str, limit: int, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise CommandError(f"field '{key}' must be a string, not {_json_type(value)}")
    if len(value) > limit:
        raise CommandError(f"field '{key}' is too long ({len(value)} characters, limit {limit})")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise CommandError(f"field '{key}' contains control characters")
    return value


def _json_type(value: Any) -> str:
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


def _time_field(obj: Mapping[str, Any], key: str) -> int:
    value = obj[key]
    if not isinstance(value, str):
        raise CommandError(f"field '{key}' must be an RFC 3339 time string, not {_json_type(value)}")
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise CommandError(f"field '{key}': {value[:64]!r} is not an RFC 3339 time "
                           "(like 2026-11-20T09:55:00Z)") from None


def parse_command(obj: Mapping[str, Any], *, cameras: Collection[str], now_ns: int,
                  incidents: Any = None) -> IncidentCommand:
    """Validate an incident command object; raises CommandError with a one-line message.

    ``open``: ``id``, ``camera`` (a configured camera or ``*``), ``from`` (RFC 3339; defaults to now, may
    lie in the past), ``to`` (RFC 3339 or null = open-ended; not before ``from``), ``reason``, ``by``.
    ``close``: ``id``, ``by`` (and an optional ``reason``). Unknown keys are refused. ``incidents`` (the
    IncidentsConfig) is accepted for symmetry with the service: the rolls and the limits
    (``window_limit_problem``, ``max_open``) are applied by ``IncidentService.apply`` to new incidents only.
    """
    del incidents  # pre/post roll are taken from the service's config when the incident is opened
    if not isinstance(obj, Mapping):
        raise CommandError(f"command must be an object, not {_json_type(obj)}")
    action = obj.get("action")
    if action is None:
        raise CommandError("field 'action' is missing (open or close)")
    if not isinstance(action, str):
        raise CommandError(f"field 'action' must be a string, not {_json_type(action)}")
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
        raise CommandError(f"field 'id' must be a string, not {_json_type(incident_id)}")
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
        raise CommandError(f"field 'camera' must be a string, not {_json_type(camera)}")
    if camera != "*" and camera not in cameras:
        known = ", ".join(sorted(cameras)) or "none configured"
        raise CommandError(f"field 'camera': unknown camera {camera[:64]!r} (known: {known}; or '*')")
    from_defaulted = obj.get("from") is None
    from_ns = now_ns if from_defaulted else _time_field(obj, "from")
    to_ns = _time_field(obj, "to") if obj.get("to") is not None else None
    if to_ns is not None and to_ns < from_ns:
        raise CommandError("field 'to' is before 'from'")
    return IncidentCommand("open", incident_id, camera, from_ns, to_ns, reason, by, from_defaulted)


class IncidentLimitError(CommandError):
    """A well-formed open refused by the configured limits (audited as ``incident_refused``)."""


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


# ----- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    id: str | None
    action: str | None
    ok: bool
    error: str | None = None
    duplicate: bool = False
    held_segments: int = 0
    held_bytes: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "ok": self.ok, "error": self.error,
                "duplicate": self.duplicate, "held_segments": self.held_segments,
                "held_bytes": self.held_bytes}


def command_result_for_error(obj: Any, error: str | BaseException) -> CommandResult:
    """The reply to a command that could not be parsed (id and action echoed when they are strings)."""
    def text(key: str) -> str | None:
        value = obj.get(key) if isinstance(obj, Mapping) else None
        return value if isinstance(value, str) else None

    return CommandResult(text("id"), text("action"), False, str(error))


# ----- hold windows (pure) ----------------------------------------------------------------------------
def overlaps(start_ns: int, end_ns: int, lo_ns: int, hi_ns: int | None) -> bool:
    return end_ns >= lo_ns and (hi_ns is None or start_ns <= hi_ns)


def holds(incident: IncidentRow, camera: str, start_ns: int, end_ns: int, now_ns: int, grace_ns: int) -> bool:
    """Does ``incident`` hold footage [start_ns, end_ns] of ``camera`` at ``now_ns``?"""
    return (incident.covers(camera) and incident.holds_at(now_ns, grace_ns)
            and overlaps(start_ns, end_ns, incident.hold_start_ns, incident.hold_end_ns))


class WindowIndex:
    """Windows per camera (with '*' windows applied to every camera), queried by overlap in O(log n).

    Built once per sweep from the incidents; windows are merged into disjoint blocks, and each block keeps
    its member windows for the queries that need them (which incident released a segment, and when).
    """

    def __init__(self, windows: Iterable[tuple[str, int, int | None, Any]]):
        self._by_camera: dict[str, list[tuple[int, int | None, Any]]] = {}
        self._star: list[tuple[int, int | None, Any]] = []
        for camera, lo, hi, payload in windows:
            target = self._star if camera == "*" else self._by_camera.setdefault(camera, [])
            target.append((lo, hi, payload))
        self._blocks: dict[str, tuple[list[int], list[int | None], list[list[Any]]]] = {}

    def _camera_blocks(self, camera: str) -> tuple[list[int], list[int | None], list[list[Any]]]:
        blocks = self._blocks.get(camera)
        if blocks is None:
            starts: list[int] = []
            ends: list[int | None] = []
            members: list[list[Any]] = []
            for lo, hi, payload in sorted(self._by_camera.get(camera, []) + self._star, key=lambda w: w[0]):
                if starts and (ends[-1] is None or lo <= ends[-1]):  # type: ignore[operator]
                    ends[-1] = None if ends[-1] is None or hi is None else max(ends[-1], hi)
                    members[-1].append((lo, hi, payload))
                else:
                    starts.append(lo)
                    ends.append(hi)
                    members.append([(lo, hi, payload)])
            blocks = (starts, ends, members)
            self._blocks[camera] = blocks
        return blocks

    def _overlapping_blocks(self, camera: str, start_ns: int, end_ns: int) -> Iterable[int]:
        starts, ends, _ = self._camera_blocks(camera)
        # Blocks are disjoint and sorted: the candidates start at or before end_ns; walk back while they
        # still reach start_ns.
        i = bisect.bisect_right(starts, end_ns) - 1
        while i >= 0:
            hi = ends[i]
            if hi is not None and hi < start_ns:
                break
            yield i
            i -= 1

    def __bool__(self) -> bool:
        return bool(self._star or self._by_camera)

    def any_overlap(self, camera: str, start_ns: int, end_ns: int) -> bool:
        # Called once per retention candidate: the cached blocks are looked up directly.
        starts, ends, _ = self._blocks.get(camera) or self._camera_blocks(camera)
        if not starts:
            return False
        # Only the last block starting at or before end_ns can reach start_ns: the ones before it end
        # before it begins.
        i = bisect.bisect_right(starts, end_ns) - 1
        if i < 0:
            return False
        hi = ends[i]
        return hi is None or hi >= start_ns

    def overlapping(self, camera: str, start_ns: int, end_ns: int) -> list[Any]:
        _, _, members = self._camera_blocks(camera)
        out = []
        for i in self._overlapping_blocks(camera, start_ns, end_ns):
            out += [p for lo, hi, p in members[i] if overlaps(start_ns, end_ns, lo, hi)]
        return out


# ----- the service ------------------------------------------------------------------------------------
AuditEntry = tuple[str, dict[str, Any]]


def not_recorded_entry(cmd: IncidentCommand, error: BaseException | str) -> AuditEntry:
    """The audit line that voids an ``incident_opened``/``incident_closed`` line written for ``cmd`` whose
    catalog transaction then failed: the command was not recorded (a later line for the id may record it)."""
    return "incident_not_recorded", {"id": cmd.id, "action": cmd.action, "error": str(error)}


# ----- incidents as the audit log tells them (pure) -------------------------------------------------------
_CLAIM_ACTIONS = {"incident_opened": "open", "incident_closed": "close"}
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


def unconfirmed_claims(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(id, action) of the ``incident_opened``/``incident_closed`` lines among ``entries`` (audit lines,
    oldest first) that no later ``incident_not_recorded`` voids: what the catalog must show, in the order
    of each one's latest counted line."""
    stacks = _counted_claims(enumerate(entries))
    latest = sorted((stack[-1][0], key) for key, stack in stacks.items() if stack)
    return [key for _, key in latest]


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
        raise _BadLine(f"field '{key}' is {_json_type(value)}, not an RFC 3339 time")
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise _BadLine(f"field '{key}' {value[:64]!r} is not an RFC 3339 time") from None


def _line_text(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise _BadLine(f"field '{key}' is {_json_type(value)}, not a string")
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


@dataclass
class _Run:
    """One run of a command's transaction: whether its audit line was appended (then the commit decides
    whether the line counts)."""

    appended: bool = False


class IncidentService:
    """Applies incident commands: catalog row and audit line are committed before ``apply`` returns.

    Shared by the CLI and the MQTT thread (the catalog serialises them). ``reserve``: the space reserve
    a command may give up on a full disk (the daemon's, or for the CLI the same file in the data directory);
    None: none.
    """

    def __init__(self, catalog: Catalog, audit: Any, config: Any, reserve: SpaceReserve | None = None):
        self.catalog = catalog
        self.audit = audit
        self.reserve = reserve
        self.reconfigure(config)
        # ``incident_not_recorded`` lines not yet written (the disk refused them too): they go first into
        # the next audit write of this service.
        self._owed: list[AuditEntry] = []
        self._owed_lock = threading.Lock()

    def reconfigure(self, config: Any) -> None:
        """Take new limits, rolls and cameras (a config reload); owed audit lines are kept."""
        inc = config.incidents
        self.pre_roll_ns = int(inc.pre_roll_s * 1e9)
        self.post_roll_ns = int(inc.post_roll_s * 1e9)
        self.grace_ns = int(inc.release_grace_days * DAY_NS)
        self.max_window_days = float(inc.max_window_days)
        self.max_open = int(inc.max_open)
        self.cameras = tuple(c.name for c in config.cameras)

    def void_unrecorded(self, entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """At start-up: an ``incident_opened``/``incident_closed`` line among ``entries`` (the audit log's
        last lines) whose change the catalog does not have was written just before a power cut or crash
        ended its transaction; append ``incident_not_recorded`` for it, so that the log and the catalog
        say the same. Inside a catalog write transaction, so that a command another process is
        committing right now is waited for, not taken for lost. Returns the voided (id, action)s."""
        voided = []
        with self.catalog.transaction():
            for inc_id, action in unconfirmed_claims(entries):
                row = self.catalog.get_incident(inc_id)
                recorded = row is not None and (action == "open" or not row.is_open)
                if not recorded:
                    voided.append((inc_id, action))
            if voided:
                self.audit.append_many([
                    ("incident_not_recorded", {"id": inc_id, "action": action,
                                               "error": "not in the catalog at start-up (interrupted)"})
                    for inc_id, action in voided])
        for inc_id, action in voided:
            log.warning("incident audit line voided at start-up id=%s action=%s: not in the catalog",
                        inc_id, action)
        return voided

    def handle(self, obj: Any, now_ns: int) -> CommandResult:
        """Parse and apply a command object; every failure becomes a CommandResult (never raises
        CommandError)."""
        try:
            cmd = parse_command(obj, cameras=self.cameras, now_ns=now_ns)
        except CommandError as exc:
            return command_result_for_error(obj, exc)
        return self.apply(cmd, now_ns)

    def apply(self, cmd: IncidentCommand, now_ns: int) -> CommandResult:
        try:
            if cmd.action == "open":
                return self._open(cmd, now_ns)
            return self._close(cmd, now_ns)
        except CommandError as exc:
            log.warning("incident command refused id=%s action=%s error=%s", cmd.id, cmd.action, exc)
            if isinstance(exc, IncidentLimitError):
                self._audit_refusal(cmd, str(exc))
            return CommandResult(cmd.id, cmd.action, False, str(exc))
        except (EdgerecError, OSError) as exc:
            # Nothing was committed (catalog and audit line go together; a line the log took for a commit
            # that then failed is voided, see _record): say so, so the sender retries.
            log.error("incident command not recorded id=%s action=%s error=%s", cmd.id, cmd.action, exc)
            return CommandResult(cmd.id, cmd.action, False, f"not recorded: {exc}")
        finally:
            self._write_owed()

    def _audit_refusal(self, cmd: IncidentCommand, error: str) -> None:
        """Audit a well-formed open refused by a limit (who tried to hold what); malformed commands are
        only logged. Best effort: the refusal stands even if the line cannot be written."""
        try:
            self._append([("incident_refused", {
                "id": cmd.id, "camera": cmd.camera, "from": rfc3339(cmd.from_ns), "to": rfc3339(cmd.to_ns),
                "reason": cmd.reason, "by": cmd.by, "error": error})])
        except OSError as exc:
            log.error("incident refusal not audited id=%s error=%s", cmd.id, exc)

    # ----- audit lines ------------------------------------------------------------------------------
    def _append(self, entries: Sequence[AuditEntry]) -> None:
        """Append ``entries`` after any owed ``incident_not_recorded`` lines, with one fsync."""
        with self._owed_lock:
            owed, self._owed = self._owed, []
        try:
            if owed:
                self.audit.append_many([*owed, *entries])
            else:
                for event, fields in entries:
                    self.audit.append(event, **fields)
        except BaseException:
            with self._owed_lock:  # none of them was written (append_many cuts a failed write)
                self._owed[:0] = owed
            raise

    def _write_owed(self) -> None:
        """Best effort: write owed lines now (on a disk still full, they wait for the next audit write)."""
        if not self._owed:
            return
        try:
            self._append([])
        except OSError as exc:
            log.error("incident_not_recorded audit line not written yet error=%s", exc)

    # ----- one command's transaction, on a full disk too ---------------------------------------------
    def _record(self, cmd: IncidentCommand, transaction: Callable[[_Run], CommandResult],
                committed: Callable[[], bool]) -> CommandResult:
        """Run ``transaction`` (catalog writes and one audit line, appended through ``_Run``) through the
        space reserve: on a full disk the reserve is given up and the transaction runs once more.

        A run can fail after its audit line was appended (the commit hit the full disk): the line then
        names a change the catalog does not have. ``committed`` says whether the catalog has it as this
        command wrote it; if not, an ``incident_not_recorded`` line is owed, and goes first into the next
        append (the retry's own line). A full-disk failure (an SQLite statement, the commit, the audit
        append) rolls the transaction back, so a retry starts from the catalog as it was and cannot take
        its own first run's row for a duplicate; a failure after the commit (syncing the WAL) is not a
        full disk, is not retried, and its line stands (the catalog has the change)."""
        def run() -> CommandResult:
            state = _Run()
            try:
                return transaction(state)
            except BaseException as exc:
                if state.appended and not self._committed(committed):
                    log.warning("incident audit line voided id=%s action=%s error=%s", cmd.id, cmd.action,
                                exc)
                    with self._owed_lock:
                        self._owed.append(not_recorded_entry(cmd, exc))
                raise

        return run() if self.reserve is None else self.reserve.with_room(run)

    @staticmethod
    def _committed(committed: Callable[[], bool]) -> bool:
        # If even reading fails, the reply says "not recorded": the audit log must say the same.
        try:
            return committed()
        except EdgerecError:
            return False

    def _append_in(self, run: _Run, event: str, **fields: Any) -> None:
        """The command's audit line, inside its transaction: if it cannot be written, nothing is recorded."""
        self._append([(event, fields)])
        run.appended = True

    def _check_limits(self, cmd: IncidentCommand, now_ns: int) -> None:
        """Raise IncidentLimitError if a new incident is over a limit (call inside the transaction)."""
        assert cmd.from_ns is not None
        problem = window_limit_problem(cmd.from_ns, cmd.to_ns, now_ns, self.max_window_days)
        if problem is not None:
            raise IncidentLimitError(f"incident {cmd.id} refused: {problem}")
        n_open = self.catalog.count_open_incidents()
        if n_open >= self.max_open:
            raise IncidentLimitError(f"incident {cmd.id} refused: {n_open} incidents are open, "
                                     f"incidents.max_open allows {self.max_open}; close one first")

    def _held(self, inc: IncidentRow) -> tuple[int, int]:
        return self.catalog.window_totals(inc.camera, inc.hold_start_ns, inc.hold_end_ns)

    def _open(self, cmd: IncidentCommand, now_ns: int) -> CommandResult:
        assert cmd.camera is not None and cmd.from_ns is not None
        inc = IncidentRow(cmd.id, cmd.camera, cmd.from_ns, cmd.to_ns, cmd.reason, cmd.by, now_ns,
                          pre_roll_ns=self.pre_roll_ns, post_roll_ns=self.post_roll_ns)
        result = self._record(cmd, lambda run: self._open_transaction(cmd, inc, now_ns, run),
                              committed=lambda: self.catalog.get_incident(inc.id) == inc)
        if not result.duplicate:
            log.info("incident opened id=%s camera=%s from=%s to=%s by=%s held_segments=%d", inc.id,
                     inc.camera, rfc3339(inc.from_ns), rfc3339(inc.to_ns), inc.by, result.held_segments)
        return result

    def _open_transaction(self, cmd: IncidentCommand, inc: IncidentRow, now_ns: int,
                          run: _Run) -> CommandResult:
        with self.catalog.transaction():
            existing = self.catalog.get_incident(cmd.id)
            if existing is not None:
                same_from = cmd.from_defaulted or existing.from_ns == cmd.from_ns
                if not same_from or (existing.camera, existing.to_ns) != (cmd.camera, cmd.to_ns):
                    window = f"{rfc3339(existing.from_ns)} .. {rfc3339(existing.to_ns) or 'open'}"
                    raise CommandError(f"incident {cmd.id} already exists with a different window or camera "
                                       f"({existing.camera} {window}); use a new id")
                n, size = self._held(existing)
                return CommandResult(cmd.id, "open", True, duplicate=True, held_segments=n, held_bytes=size)
            self._check_limits(cmd, now_ns)
            self.catalog.insert_incident(inc)
            n, size = self._held(inc)
            # Inside the transaction: if the audit line cannot be written, the incident is not recorded.
            self._append_in(run, "incident_opened", id=inc.id, camera=inc.camera,
                            **{"from": rfc3339(inc.from_ns)}, to=rfc3339(inc.to_ns), reason=inc.reason,
                            by=inc.by, pre_roll_s=inc.pre_roll_ns / 1e9, post_roll_s=inc.post_roll_ns / 1e9,
                            held_segments=n, held_bytes=size)
        return CommandResult(cmd.id, "open", True, held_segments=n, held_bytes=size)

    def _close(self, cmd: IncidentCommand, now_ns: int) -> CommandResult:
        def committed() -> bool:
            row = self.catalog.get_incident(cmd.id)
            return row is not None and (row.closed_ns, row.closed_by) == (now_ns, cmd.by)

        result = self._record(cmd, lambda run: self._close_transaction(cmd, now_ns, run), committed)
        if not result.duplicate:
            log.info("incident closed id=%s by=%s released=%s", cmd.id, cmd.by,
                     rfc3339(now_ns + self.grace_ns))
        return result

    def _close_transaction(self, cmd: IncidentCommand, now_ns: int, run: _Run) -> CommandResult:
        with self.catalog.transaction():
            existing = self.catalog.get_incident(cmd.id)
            if existing is None:
                raise CommandError(f"unknown incident id {cmd.id}")
            if not existing.is_open:
                n, size = self._held(existing)
                return CommandResult(cmd.id, "close", True, duplicate=True, held_segments=n, held_bytes=size)
            self.catalog.close_incident(cmd.id, now_ns, cmd.by)
            closed = self.catalog.get_incident(cmd.id)
            assert closed is not None
            n, size = self._held(closed)
            self._append_in(run, "incident_closed", id=cmd.id, by=cmd.by, reason=cmd.reason,
                            released=rfc3339(closed.released_ns(self.grace_ns)), held_segments=n,
                            held_bytes=size)
        return CommandResult(cmd.id, "close", True, held_segments=n, held_bytes=size)

    def list_open(self) -> list[IncidentRow]:
        return self.catalog.incidents(open_only=True)

    def list_all(self) -> list[IncidentRow]:
        return self.catalog.incidents()

    def incidents_payload(self) -> list[dict[str, Any]]:
        """Open incidents with their windows and held segment counts (for the retained MQTT topic)."""
        out = []
        for inc in self.list_open():
            n, size = self._held(inc)
            out.append({**inc.to_json_dict(), "held_segments": n, "held_bytes": size})
        return out
