"""The incident service: applies commands, so that the catalog row and the audit line of an open or a
close are committed together before the reply.

Commands are idempotent by id: the same open again is ok (``duplicate``), a conflicting open is an
error, closing a closed incident is ok (``duplicate``), closing an unknown one is an error. What an
incident holds is decided by ``holds``.

Every refused command (malformed, over a limit, conflicting, unknown; and the payloads the MQTT link
refuses before they are a command, through ``audit_refusal``) is audited as ``incident_refused``, like an
accepted one is audited as ``incident_opened``/``incident_closed``. So that a flood of junk cannot grow the
log without bound, refusal lines are rate-limited (``RefusalBudget``: a burst of
``REFUSAL_AUDIT_BURST``, then one per ``REFUSAL_AUDIT_REFILL_S``); the refusals not written are counted,
and the next ``incident_refused`` line carries that count as ``suppressed``.

A full disk: the service writes through the daemon's space reserve (``spacereserve.SpaceReserve``), so an
open or close on a completely full disk gives up the reserve and is tried once more. The audit line is
appended inside the catalog transaction; if the commit then fails, the log holds a line for a change the
catalog does not have, and the service appends ``incident_not_recorded`` (``id``, ``action``, ``error``)
after it: with the retry's own line when there is a retry, else at once, else with its next audit line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import holds
from ..audit import AuditEntry, AuditSink
from ..catalog import Catalog, IncidentRow
from ..errors import CommandError, EdgerecError
from ..spacereserve import SpaceReserve
from ..timefmt import DAY_NS, rfc3339
from .commands import IncidentCommand, IncidentLimitError, parse_command, window_limit_problem
from .replay import unconfirmed_claims
from .replies import CommandResult, command_result_for_error, refused

log = logging.getLogger(__name__)

REFUSAL_AUDIT_BURST = 20  # refusal lines written at once before the rate limit applies
REFUSAL_AUDIT_REFILL_S = 60.0  # then one more line per this many seconds
MAX_ECHO_CHARS = 64  # how much of an unparsed command's id or action a refusal line repeats


class RefusalBudget:
    """A token bucket deciding which refusals get an audit line. ``take`` returns the number of
    refusals suppressed since the last line when this one may be written, None when it is suppressed."""

    def __init__(self, burst: int = REFUSAL_AUDIT_BURST, refill_s: float = REFUSAL_AUDIT_REFILL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.burst, self.refill_s, self._clock = burst, refill_s, clock
        self._tokens = float(burst)
        self._at = clock()
        self.suppressed = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.refill_s)
            self._at = now
            if self._tokens < 1.0:
                self.suppressed += 1
                return None
            self._tokens -= 1.0
            suppressed, self.suppressed = self.suppressed, 0
            return suppressed

    def give_back(self, suppressed: int) -> None:
        """A line that could not be written: its refusal (and those it carried) count as suppressed."""
        with self._lock:
            self.suppressed += suppressed + 1


def _echo(obj: object, key: str) -> str | None:
    """A string field of a command that could not be parsed, cut short (the audit line escapes it)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value[:MAX_ECHO_CHARS] if isinstance(value, str) else None


class IncidentSettings(Protocol):
    """The ``incidents`` section of the configuration (``config.IncidentsConfig``)."""

    @property
    def pre_roll_s(self) -> float: ...
    @property
    def post_roll_s(self) -> float: ...
    @property
    def release_grace_days(self) -> float: ...
    @property
    def max_window_days(self) -> float: ...
    @property
    def max_open(self) -> int: ...


class NamedCamera(Protocol):
    @property
    def name(self) -> str: ...


class ServiceConfig(Protocol):
    """The slice of the configuration the service needs (``config.Config`` has it)."""

    @property
    def incidents(self) -> IncidentSettings: ...
    @property
    def cameras(self) -> Sequence[NamedCamera]: ...


def _not_recorded_entry(cmd: IncidentCommand, error: BaseException | str) -> AuditEntry:
    """The audit line that voids an ``incident_opened``/``incident_closed`` line written for ``cmd`` whose
    catalog transaction then failed: the command was not recorded (a later line for the id may record it)."""
    return "incident_not_recorded", {"id": cmd.id, "action": cmd.action, "error": str(error)}


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

    def __init__(self, catalog: Catalog, audit: AuditSink, config: ServiceConfig,
                 reserve: SpaceReserve | None = None):
        self.catalog = catalog
        self.audit = audit
        self.reserve = reserve
        self.reconfigure(config)
        # ``incident_not_recorded`` lines not yet written (the disk refused them too): they go first into
        # the next audit write of this service.
        self._owed: list[AuditEntry] = []
        self._owed_lock = threading.Lock()
        self.refusals = RefusalBudget()
        # The retention clock's "now" (set by the daemon, or by the CLI from the catalog's cached anchor):
        # a close is dated no earlier than it, so a wall clock set back cannot shorten a grace period.
        self.rclock_now: Callable[[], int] | None = None

    def close_time_ns(self, now_ns: int) -> int:
        """When a close takes effect: the later of the wall clock and the retention clock
        (docs/design/time.md), so the grace period is never shorter than real time allows."""
        return max(now_ns, self.rclock_now()) if self.rclock_now is not None else now_ns

    def reconfigure(self, config: ServiceConfig) -> None:
        """Take new limits, rolls and cameras (a config reload); owed audit lines are kept."""
        inc = config.incidents
        self.pre_roll_ns = int(inc.pre_roll_s * 1e9)
        self.post_roll_ns = int(inc.post_roll_s * 1e9)
        self.grace_ns = int(inc.release_grace_days * DAY_NS)
        self.max_window_days = float(inc.max_window_days)
        self.max_open = int(inc.max_open)
        self.cameras = tuple(c.name for c in config.cameras)

    def owed_entries(self) -> list[AuditEntry]:
        """The ``incident_not_recorded`` lines owed but not written yet (the hold check counts them)."""
        with self._owed_lock:
            return list(self._owed)

    def void_unrecorded(self, entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """At start-up: an ``incident_opened``/``incident_closed`` line among ``entries`` (the audit log's
        last lines) whose change the catalog does not have, and that no ``incidents_confirmed`` line vouches
        for (``unconfirmed_claims``), was written just before a power cut or crash ended its transaction;
        append ``incident_not_recorded`` for it, so that the log and the catalog say the same. Inside a
        catalog write transaction, so that a command another process is committing right now is waited
        for, not taken for lost. Returns the voided (id, action)s."""
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

    def handle(self, obj: object, now_ns: int, *, source: str = "cli") -> CommandResult:
        """The one entry point for commands (MQTT and the CLI): parse and apply a command object. Every
        error a command can meet (malformed, refused, conflicting, not recorded) becomes a CommandResult
        with ``ok`` False; nothing an operator or a sender can cause is raised. ``source`` (``mqtt``,
        ``cli``) goes into the audit line of a refusal."""
        try:
            cmd = parse_command(obj, cameras=self.cameras, now_ns=now_ns)
        except EdgerecError as exc:
            result = command_result_for_error(obj, exc)
            log.warning("incident command refused id=%r action=%r error=%s", result.id, result.action, exc)
            self.audit_refusal({"id": _echo(obj, "id"), "action": _echo(obj, "action"), "error": str(exc)},
                               source)
            return result
        return self.apply(cmd, now_ns, source=source)

    def apply(self, cmd: IncidentCommand, now_ns: int, *, source: str = "cli") -> CommandResult:
        """Apply a parsed command (``handle`` without the parsing); failures become a CommandResult."""
        try:
            if cmd.action == "open":
                return self._open(cmd, now_ns)
            return self._close(cmd, self.close_time_ns(now_ns))
        except CommandError as exc:
            log.warning("incident command refused id=%s action=%s error=%s", cmd.id, cmd.action, exc)
            self.audit_refusal({
                "id": cmd.id, "action": cmd.action, "camera": cmd.camera, "from": rfc3339(cmd.from_ns),
                "to": rfc3339(cmd.to_ns), "reason": cmd.reason, "by": cmd.by, "error": str(exc)}, source)
            return refused(cmd.id, cmd.action, exc)
        except (EdgerecError, OSError) as exc:
            # Nothing was committed (catalog and audit line go together; a line the log took for a commit
            # that then failed is voided, see _record): say so, so the sender retries.
            log.error("incident command not recorded id=%s action=%s error=%s", cmd.id, cmd.action, exc)
            return refused(cmd.id, cmd.action, f"not recorded: {exc}")
        finally:
            self._write_owed()

    def audit_refusal(self, fields: Mapping[str, Any], source: str) -> bool:
        """The ``incident_refused`` line of a refused command (``fields``: what it asked for, as far as it
        could be read, and ``error``), within the refusal budget; returns whether a line was written.
        Best effort: the refusal stands even if the line cannot be written (it counts as suppressed)."""
        suppressed = self.refusals.take()
        if suppressed is None:
            return False
        line = {**{k: v for k, v in fields.items() if v is not None or k in ("id", "action")},
                "source": source}
        if suppressed:
            line["suppressed"] = suppressed
        try:
            self._append([("incident_refused", line)])
        except OSError as exc:
            self.refusals.give_back(suppressed)
            log.error("incident refusal not audited id=%s error=%s", fields.get("id"), exc)
            return False
        return True

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
                        self._owed.append(_not_recorded_entry(cmd, exc))
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
        return self.catalog.window_totals(inc.camera, *holds.window(inc))

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
