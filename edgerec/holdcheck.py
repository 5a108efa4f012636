"""Holds checked against the audit log before any deletion: the catalog is a cache, the log the record.

``AuditLedger`` keeps the incident lines of the audit log in memory and reads only what was appended
since it last looked (keyed by the head it read up to: the byte offset, the line count and the hash of
the last line it read; a log that no longer has that line there is read again from the start).
``HoldChecker.check`` compares the catalog's incidents with the ones the log records
(``incidents.agreement``), inside a catalog write transaction, so that no incident command is half
committed meanwhile (its audit line is appended inside its own transaction). It returns the incidents a
sweep must hold by (both sides' rows: the stricter of the two) and the disagreements, and writes:

- ``catalog_mismatch`` (once per distinct mismatch: the digest of its disagreements; again only after
  the catalog agreed in between), with how to repair it;
- ``incidents_confirmed`` (``through``: the last incident line the catalog was found to agree with),
  when the catalog agrees and incident lines were added since the last one. Start-up never voids a line
  a confirmation vouches for as "not recorded" (``incidents.replay.unconfirmed_claims``).

Cost: the first check reads the whole log once, a line at a time, parsing only incident lines; later
checks read only the lines appended since, plus the last line read (to see that the log was not
replaced under it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import AppendedLines, AuditEntry, AuditSink, _parse
from .catalog import Catalog, IncidentRow
from .incidents.agreement import (
    Disagreement,
    compare,
    mismatch_digest,
    mismatch_fields,
    mismatch_message,
    relevant,
    stricter,
)
from .incidents.replay import CONFIRMED_EVENT, incidents_from_audit

log = logging.getLogger(__name__)

MISMATCH_EVENT = "catalog_mismatch"
_CLAIMS = (b'"event":"incident_opened"', b'"event":"incident_closed"', b'"event":"incident_not_recorded"')
_MARKS = (b'"event":"' + CONFIRMED_EVENT.encode() + b'"', b'"event":"' + MISMATCH_EVENT.encode() + b'"')


@dataclass
class AuditLedger(AppendedLines):
    """The incident lines of one audit log, read incrementally (``refresh``)."""

    claims: list[dict[str, Any]] = field(default_factory=list)  # opened/closed/not_recorded, oldest first
    last_claim_line: int = 0  # n of the last incident claim line
    confirmed_through: int = 0
    mismatch_digest: str | None = None  # of the last catalog_mismatch line since the last confirmation

    def _reset(self) -> None:
        self.claims = []
        self.last_claim_line = self.confirmed_through = 0
        self.mismatch_digest = None

    def _take_line(self, raw: bytes) -> None:
        claim = any(mark in raw for mark in _CLAIMS)
        if not claim and not any(mark in raw for mark in _MARKS):
            return
        obj = _parse(raw)
        if obj is None:
            return
        if claim:
            self.claims.append(obj)
            self.last_claim_line = max(self.last_claim_line, obj["n"])
        elif obj.get("event") == CONFIRMED_EVENT:
            through = obj.get("through")
            if isinstance(through, int) and not isinstance(through, bool):
                self.confirmed_through = max(self.confirmed_through, through)
                self.mismatch_digest = None
        else:
            digest = obj.get("digest")
            self.mismatch_digest = digest if isinstance(digest, str) else None


@dataclass(frozen=True)
class CheckedHolds:
    """The outcome of one check: the incidents to hold by (``incidents``), what disagrees, and whether
    this check raised the alarm for it (``new_alarm``: a mismatch not reported before)."""

    incidents: list[IncidentRow]
    disagreements: tuple[Disagreement, ...] = ()
    new_alarm: bool = False
    problems: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool:
        return not self.disagreements

    def fields(self) -> dict[str, Any]:
        """For the status (``catalog_disagrees``), the MQTT event and the audit line."""
        return mismatch_fields(self.disagreements)

    @property
    def message(self) -> str:
        return mismatch_message(self.disagreements)


class HoldChecker:
    """Checks a catalog's incidents against its data directory's audit log (see the module's text).

    ``pending_voids``: ``incident_not_recorded`` lines owed but not written yet (the daemon's incident
    service on a full disk), counted as if they were in the log."""

    def __init__(self, catalog: Catalog, audit: AuditSink, audit_path: Path | str, *,
                 pending_voids: Callable[[], Sequence[AuditEntry]] | None = None):
        self.catalog = catalog
        self.audit = audit
        self.ledger = AuditLedger(Path(audit_path))
        self.pending_voids = pending_voids or (lambda: ())

    def check(self, relevant_since_ns: int | None = None, *, write: bool = True) -> CheckedHolds:
        """Compare the catalog with the log; ``relevant_since_ns``: incidents closed before it hold
        nothing any more and are left out. ``write``: append the confirmation or alarm lines (not on a
        dry run). Raises OSError when the log cannot be read (the caller must not delete then)."""
        with self.catalog.transaction():
            self.ledger.refresh()
            owed = [{"event": event, **fields} for event, fields in self.pending_voids()]
            logged = incidents_from_audit([*self.ledger.claims, *owed])
            mine = relevant(logged.incidents, relevant_since_ns)
            disagreements = tuple(compare(mine, self.catalog.get_incident))
            cat_rows = self.catalog.incidents(relevant_since_ns=relevant_since_ns)
            checked = CheckedHolds(stricter(cat_rows, mine), disagreements, problems=logged.problems)
            if checked.agrees:
                if write and self.ledger.last_claim_line > self.ledger.confirmed_through:
                    self._append(CONFIRMED_EVENT, through=self.ledger.last_claim_line)
                return checked
            digest = mismatch_digest(disagreements)
            if digest == self.ledger.mismatch_digest:
                return checked
            if write:
                log.error("%s", checked.message)
                self._append(MISMATCH_EVENT, **checked.fields())
                self.ledger.mismatch_digest = digest  # if the line could not be written: once per process
            return CheckedHolds(checked.incidents, disagreements, new_alarm=True, problems=logged.problems)

    def _append(self, event: str, **fields: Any) -> None:
        try:
            self.audit.append(event, **fields)
        except OSError as exc:  # the check still stands; the line is tried again at the next check
            log.error("audit line not written event=%s error=%s", event, exc)


REPAIRED_EVENT = "incidents_repaired"


def repair_catalog(catalog: Catalog, audit: AuditSink, audit_path: Path | str, *,
                   dry_run: bool = False) -> list[IncidentRow]:
    """Rewrite the catalog's incidents that keep less than the audit log says with the log's rows (every
    incident the log records, also ones that hold nothing any more), audited as ``incidents_repaired``;
    returns the rows written (on a dry run: that would be written). Rows only the catalog has are left:
    they release nothing. Raises OSError when the log cannot be read."""
    ledger = AuditLedger(Path(audit_path))
    with catalog.transaction():
        ledger.refresh()
        logged = {row.id: row for row in incidents_from_audit(ledger.claims).incidents}
        wrong = [logged[d.id] for d in compare(logged.values(), catalog.get_incident)]
        if dry_run or not wrong:
            return wrong
        for row in wrong:
            catalog.replace_incident(row)
        audit.append(REPAIRED_EVENT, count=len(wrong), source="audit log",
                     ids=[row.id for row in wrong][:500])
    log.warning("catalog incidents rewritten from the audit log count=%d ids=%s", len(wrong),
                ",".join(row.id for row in wrong[:20]))
    return wrong
