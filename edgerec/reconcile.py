"""Start-up reconciliation: make the catalog agree with the segment files again after a crash or power cut.

Run once at start, before any recorder writes (a ``.partial`` seen here is never one being written):

1. finish interrupted deletions: rows marked ``deleting`` lose their file (if still there) and their row;
2. recover every ``*.seg.partial`` (complete chunks kept, signed ``recovered`` trailer) and catalogue it;
   a partial too short to hold even a header holds no footage and is removed; any other partial that
   cannot be recovered (damaged header, another device's key, final name taken) is moved to
   ``<data_dir>/quarantine/`` for an operator to look at (retention deletes it after the default
   retention period, like any footage); the audit line names the sequence number each set-aside file
   claims, so that the camera's chain never uses it again (``chainstart``);
3. adopt ``.seg`` files the catalog lacks (``read_info`` checks framing, hashes and signature first;
   files that fail are quarantined);
4. drop rows whose file has vanished.

Only a SegmentError (the file is damaged, not a segment, or not a file at all) sets a file aside. An
OSError while recovering or adopting it (EIO, EMFILE, EACCES, ...: an error of the system or of the
moment, ``segfile._open_path``) says nothing about the file: it stays where it is, the error is reported
(``errors``, logged), and the next reconciliation tries it again. Each file kept so (a ``.partial``, or a
sealed segment the catalog lacks) is named in ``kept`` with the number its header claims (when that can
be read) and its name's time: the camera's chain goes on past it (``chainstart.past_kept``), as its
number is taken once a later start recovers or adopts it.

Each step is logged, reported and (when an audit log is given) audited. The disk is walked one
directory at a time and the catalog is read in pages, so memory stays flat however much footage there is.

Incidents exist nowhere but in the catalog and the audit log, so a lost catalog (a damaged file moved
away) cannot get them back from the segment files: ``restore_incidents`` gets them back from the audit log
instead. The daemon runs it before reconciling (and before any sweep); the CLI commands that open the
catalog to change it or to sweep (``incident``, ``retention``) run it too, so whichever process opens a
new catalog first restores its holds.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import chainstart, segfile
from .audit import AuditLog, AuditSink, AuditVerifyResult, verify_audit
from .catalog import Catalog, IncidentRow, SegmentRow
from .errors import CatalogError, SegmentError
from .fsutil import fsync_dir
from .incidents import incidents_from_audit
from .layout import (
    PARTIAL_SEGMENT_SUFFIX,
    PARTIAL_SUFFIX,
    QUARANTINE_DIR,
    SEGMENT_SUFFIX,
    DataDir,
    start_ns_from_name,
)
from .spacereserve import SpaceReserve
from .timefmt import rfc3339

log = logging.getLogger(__name__)

_LISTING_CACHE_DIRS = 8
_AUDITED_PATHS = 500  # paths named in one reconciliation audit line (its count is exact)


@dataclass
class ReconcileReport:
    recovered: list[str] = field(default_factory=list)  # partials turned into segments (final paths)
    adopted: list[str] = field(default_factory=list)  # segment files added to the catalog
    quarantined: list[str] = field(default_factory=list)  # files moved to quarantine/ (with why)
    # Each quarantined file's camera and the sequence number it claims (its header's; None: none).
    quarantined_claims: list[tuple[str, int | None]] = field(default_factory=list)
    # Files (.partial or sealed) kept in place for an error of the system: the chain goes on past them.
    kept: list[chainstart.KeptFile] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # partials without footage, deleted
    dropped: list[str] = field(default_factory=list)  # rows whose file had vanished
    finished_deletions: list[str] = field(default_factory=list)  # interrupted deletions completed
    errors: list[str] = field(default_factory=list)
    # Per camera, the newest segment of the finished deletions and of the dropped rows (sequence, digest):
    # their audit lines name it, so that the camera's chain goes on after it (chainstart.py).
    finished_newest: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped_newest: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any((self.recovered, self.adopted, self.quarantined, self.removed, self.dropped,
                    self.finished_deletions, self.errors))

    def lines(self) -> list[str]:
        """One line per item (empty when catalog and disk already agreed)."""
        return ([f"recovered path={p}" for p in self.recovered]
                + [f"adopted path={p}" for p in self.adopted]
                + [f"quarantined {p}" for p in self.quarantined]
                + [f"removed empty partial path={p}" for p in self.removed]
                + [f"dropped row of missing file path={p}" for p in self.dropped]
                + [f"finished interrupted deletion path={p}" for p in self.finished_deletions]
                + [f"error {e}" for e in self.errors])

    def to_json_dict(self) -> dict[str, Any]:
        return {"recovered": self.recovered, "adopted": self.adopted, "quarantined": self.quarantined,
                "removed": self.removed, "dropped": self.dropped,
                "finished_deletions": self.finished_deletions, "errors": self.errors}


def reconcile(data_dir: Path | str, catalog: Catalog, signing_key: Ed25519PrivateKey,
              device_key: Ed25519PublicKey | None = None, *,
              audit: AuditSink | None = None) -> ReconcileReport:
    """Bring catalog and disk into agreement (see the module docstring); returns what was done."""
    data_dir = Path(data_dir)
    report = ReconcileReport()
    _finish_deletions(data_dir, catalog, report)
    for dirpath, dirnames, filenames in os.walk(data_dir):
        here = Path(dirpath)
        if here == data_dir:
            dirnames[:] = [d for d in dirnames if d != QUARANTINE_DIR]
        dirnames.sort()
        _reconcile_dir(data_dir, here, sorted(filenames), catalog, signing_key, device_key, report)
    _drop_vanished(data_dir, catalog, report)
    _audit(audit, report)
    log.info("reconcile done recovered=%d adopted=%d quarantined=%d removed=%d dropped=%d "
             "finished_deletions=%d errors=%d", len(report.recovered), len(report.adopted),
             len(report.quarantined), len(report.removed), len(report.dropped),
             len(report.finished_deletions), len(report.errors))
    return report


def _rel(data_dir: Path, path: Path) -> str:
    return path.relative_to(data_dir).as_posix()


def _error(report: ReconcileReport, what: str) -> None:
    """A step that could not be done now: in the report, and each one in the log (the summary line only
    counts them)."""
    report.errors.append(what)
    log.error("reconcile error %s", what)


def _finish_deletions(data_dir: Path, catalog: Catalog, report: ReconcileReport) -> None:
    pending = catalog.marked_deleting()
    done: list[SegmentRow] = []
    for row in pending:
        path = data_dir / row.path
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            _error(report, f"path={row.path} cannot delete: {exc.strerror or exc}")
            continue
        done.append(row)
        report.finished_deletions.append(row.path)
        log.info("reconcile finished deletion path=%s", row.path)
    report.finished_newest = chainstart.newest_removed((r.camera, r.sequence, r.digest) for r in done)
    catalog.drop([r.id for r in done])


def _reconcile_dir(data_dir: Path, here: Path, names: list[str], catalog: Catalog,
                   signing_key: Ed25519PrivateKey, device_key: Ed25519PublicKey | None,
                   report: ReconcileReport) -> None:
    partials = [n for n in names if n.endswith(PARTIAL_SEGMENT_SUFFIX)]
    for name in partials:
        _recover(data_dir, here / name, catalog, signing_key, report)
    if partials:  # recovery renamed some: list again
        names = sorted(os.listdir(here))
    segments = [n for n in names if n.endswith(SEGMENT_SUFFIX)]
    if not segments:
        return
    known = catalog.paths_in_dir(_rel(data_dir, here))
    for name in segments:
        if name not in known:
            _adopt(data_dir, here / name, catalog, device_key, report)


def _recover(data_dir: Path, partial: Path, catalog: Catalog, signing_key: Ed25519PrivateKey,
             report: ReconcileReport) -> None:
    rel = _rel(data_dir, partial)
    try:
        sealed = segfile.recover_partial(partial, signing_key)
    except SegmentError as exc:
        try:
            size = partial.stat().st_size
        except FileNotFoundError:
            log.warning("reconcile found a partial gone before its recovery path=%s why=%s", rel, exc.what)
            return
        except OSError as stat_exc:  # kept: only a file known to be damaged is set aside
            _keep(data_dir, partial, report, f"cannot recover ({exc.what}), nor look at it: "
                                             f"{stat_exc.strerror or stat_exc}")
            return
        if size < segfile.HEADER_MIN_BYTES:
            # Not even a whole header: the crash came before any footage was written.
            partial.unlink(missing_ok=True)
            report.removed.append(rel)
            log.warning("reconcile removed partial without footage path=%s bytes=%d", rel, size)
            return
        _quarantine(data_dir, partial, f"cannot recover: {exc.what}", report)
        return
    except OSError as exc:  # not the file's fault: kept in place, tried again at the next start
        _keep(data_dir, partial, report, f"cannot recover: {exc.strerror or exc}")
        return
    try:
        row = catalog.add_segment(sealed)
    except CatalogError as exc:
        _error(report, f"path={rel} {exc}")
        return
    report.recovered.append(row.path)
    log.warning("reconcile recovered segment path=%s state=%s frames=%d bytes=%d", row.path, sealed.state,
                sealed.frames, sealed.size_bytes)


def _keep(data_dir: Path, path: Path, report: ReconcileReport, why: str) -> None:
    """``path`` (a ``.partial`` or a sealed segment the catalog lacks) stays where it is, reported, with
    what its camera's chain needs to go on past it: it may be the camera's newest segment, whose number
    a later start that recovers or adopts it gives it."""
    rel = _rel(data_dir, path)
    camera = rel.split("/", 1)[0]
    _error(report, f"path={rel} {why}; kept in place")
    report.kept.append(chainstart.KeptFile(
        camera, rel, _claimed_number(path, camera),
        start_ns_from_name(path.with_name(path.name.removesuffix(PARTIAL_SUFFIX)))))


def _adopt(data_dir: Path, path: Path, catalog: Catalog, device_key: Ed25519PublicKey | None,
           report: ReconcileReport) -> None:
    rel = _rel(data_dir, path)
    try:
        info = segfile.read_info(path, device_key)
    except SegmentError as exc:
        _quarantine(data_dir, path, f"unreadable segment not in the catalog: {exc.what}", report)
        return
    except OSError as exc:  # not the file's fault: kept in place, tried again at the next start
        _keep(data_dir, path, report, f"cannot read: {exc.strerror or exc}")
        return
    try:
        catalog.add_segment(info)
    except CatalogError as exc:
        _error(report, f"path={rel} {exc}")
        return
    report.adopted.append(rel)
    log.warning("reconcile adopted segment path=%s camera=%s sequence=%d", rel, info.meta.camera,
                info.meta.sequence)


def _claimed_number(path: Path, camera: str) -> int | None:
    """The sequence number a file about to be set aside claims in ``camera``'s chain: its header's, when
    the header can be read and names that camera (one whose number the catalog could hold). Read before
    it goes, or as it is kept in place: if it was the camera's newest, the chain goes on past it
    (``chainstart``)."""
    try:
        meta = segfile.read_header(path).meta
    except (SegmentError, OSError):
        return None
    if meta.camera != camera or meta.sequence >= chainstart.SEQUENCE_LIMIT:
        return None
    return meta.sequence


def _quarantine(data_dir: Path, path: Path, why: str, report: ReconcileReport) -> None:
    rel = _rel(data_dir, path)
    camera = rel.split("/", 1)[0]
    number = _claimed_number(path, camera)
    target = DataDir(data_dir).quarantine_path(rel)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(path, target)
        for d in {path.parent, target.parent}:
            fsync_dir(d, strict=False)  # best effort: a move lost to a power cut is redone
    except OSError as exc:
        _error(report, f"path={rel} cannot quarantine: {exc.strerror or exc}")
        return
    report.quarantined.append(f"path={rel} to={QUARANTINE_DIR}/{rel} why={why}")
    report.quarantined_claims.append((camera, number))
    log.error("reconcile quarantined path=%s why=%s", rel, why)


def _drop_vanished(data_dir: Path, catalog: Catalog, report: ReconcileReport) -> None:
    listings: OrderedDict[str, set[str]] = OrderedDict()  # a few directory listings, most recent last
    missing: list[tuple[int, str]] = []
    for seg_id, rel in catalog.iter_paths():
        parent, _, name = rel.rpartition("/")
        names = listings.get(parent)
        if names is None:
            try:
                names = set(os.listdir(data_dir / parent))
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            listings[parent] = names
            if len(listings) > _LISTING_CACHE_DIRS:
                listings.popitem(last=False)
        if name not in names:
            missing.append((seg_id, rel))
    ids = [i for i, _ in missing]
    report.dropped_newest = chainstart.newest_removed(
        (r.camera, r.sequence, r.digest) for r in catalog.newest_of(ids))
    catalog.drop(ids)
    for _, rel in missing:
        report.dropped.append(rel)
        log.error("reconcile dropped row of missing file path=%s", rel)


def _audit(audit: AuditSink | None, report: ReconcileReport) -> None:
    if audit is None:
        return
    extras: dict[str, dict[str, Any]] = {
        "segments_missing": {chainstart.NEWEST_REMOVED: report.dropped_newest},
        "segments_deleted": {"reason": "interrupted_deletion",
                             chainstart.NEWEST_REMOVED: report.finished_newest},
        # The numbers the set-aside files claim: the chain goes on past the highest (chainstart), and
        # verify finds each one's hole in the chain explained (deletions).
        "segments_quarantined": {
            "sequences": [number for _, number in report.quarantined_claims[:_AUDITED_PATHS]],
            chainstart.NEWEST_QUARANTINED: chainstart.newest_quarantined(report.quarantined_claims)}}
    for event, items in (("segments_recovered", report.recovered), ("segments_adopted", report.adopted),
                         ("segments_quarantined", report.quarantined),
                         ("partials_removed", report.removed), ("segments_missing", report.dropped),
                         ("segments_deleted", report.finished_deletions)):
        if items:
            audit.append(event, count=len(items), paths=items[:_AUDITED_PATHS], **extras.get(event, {}))


# ----- incidents from the audit log -------------------------------------------------------------------------
_AUDITED_IDS = 500  # ids and problems named in the incidents_restored line (the count is exact)
_INCIDENT_MARK = b'"incident_'  # in every incident line: other lines are not parsed


@dataclass(frozen=True)
class IncidentRestore:
    """What ``restore_incidents`` did: the incidents it inserted, the log lines it could not use, the
    audit log's chain check, and whether the catalog had just been created."""

    restored: tuple[IncidentRow, ...]
    problems: tuple[str, ...]
    chain: AuditVerifyResult
    catalog_created: bool

    @property
    def open_count(self) -> int:
        return sum(1 for row in self.restored if row.is_open)

    def audit_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "count": len(self.restored), "open": self.open_count, "source": "audit log",
            "chain_ok": self.chain.ok, "catalog": "created" if self.catalog_created else "existing",
            "ids": [row.id for row in self.restored[:_AUDITED_IDS]]}
        if not self.chain.ok:
            fields["chain_problem"] = self.chain.message
        if self.problems:
            fields["problems"] = list(self.problems[:_AUDITED_IDS])
        return fields


def restore_incidents(catalog: Catalog, audit: AuditLog, *,
                      reserve: SpaceReserve | None = None) -> IncidentRestore | None:
    """Insert every incident the audit log records that ``catalog`` lacks, once per catalog.

    Trigger: the catalog's own mark (``Catalog.incidents_checked``), not whether its file existed before
    this open. A catalog file that exists can still be one whose incidents are missing: one made by an
    earlier edgerec that did not restore, or one whose creator was cut off by a power cut before it
    restored. Its incidents table being empty says nothing (most devices have no incident); the mark, set
    in the transaction that inserts the restored rows, does. So every catalog is checked once: a new one
    at once, one from before this check at its first open by this version (then the log is read once).

    The whole log is read (only incident lines are parsed) and its chain verified; a broken chain is
    logged as an error and noted in the ``incidents_restored`` audit line, but the incidents are restored
    anyway: keeping footage a forged line names is the lesser harm. Returns None when there was nothing
    to check (marked before, or no audit log yet); raises CatalogError when the log cannot be read or the
    catalog not written (the caller must not sweep: footage an incident holds would go)."""
    if catalog.incidents_checked():
        return None
    write = reserve.with_room if reserve is not None else (lambda fn: fn())
    if not audit.path.exists():  # a new device: no incident was ever recorded
        write(lambda: catalog.restore_incidents([]))
        return None
    try:
        audit.repair_tail()  # a line torn by a power cut is not a broken chain
    except OSError as exc:
        log.warning("audit log tail not repaired path=%s error=%s", audit.path, exc)
    try:
        chain = verify_audit(audit.path)
        entries, unreadable = _incident_entries(audit.path)
    except OSError as exc:
        raise CatalogError(f"incidents not restored: the audit log {audit.path} cannot be read "
                           f"({exc.strerror or exc}); retention must not run without them: it could delete "
                           "footage they hold") from exc
    logged = incidents_from_audit(entries)
    restored = write(lambda: catalog.restore_incidents(logged.incidents))
    result = IncidentRestore(tuple(restored), (*unreadable, *logged.problems), chain, catalog.created)
    _report_restore(result)
    if result.restored or result.problems:
        try:
            write(lambda: audit.append("incidents_restored", **result.audit_fields()))
        except OSError as exc:  # the incidents are back (that matters most); the line is lost
            log.error("incidents restored but not audited path=%s error=%s", audit.path, exc)
    return result


def _incident_entries(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The parsed incident lines of the whole log, oldest first, and the lines that look like incident
    lines but are not JSON objects. Read a line at a time: a log of years is never held parsed."""
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if _INCIDENT_MARK not in raw or not raw.endswith(b"\n"):
                continue  # not an incident line, or torn by a power cut (never acknowledged)
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                entries.append(obj)
            else:
                problems.append(f"audit line {number}: not a JSON object (an incident line may be lost)")
    return entries, problems


def _report_restore(result: IncidentRestore) -> None:
    if not result.chain.ok:
        log.error("audit log hash chain broken (%s); incidents restored from it anyway: check them",
                  result.chain.message)
    for problem in result.problems:
        log.error("incident line not restored: %s", problem)
    for row in result.restored:
        if row.is_open:
            log.warning("open incident restored from the audit log id=%s camera=%s from=%s to=%s by=%s: "
                        "its footage is held again", row.id, row.camera, rfc3339(row.from_ns),
                        rfc3339(row.to_ns), row.by)
        else:
            log.info("closed incident restored from the audit log id=%s closed=%s", row.id,
                     rfc3339(row.closed_ns))
    if result.restored or result.catalog_created:
        log.warning("incidents restored from the audit log count=%d open=%d catalog=%s chain_ok=%s",
                    len(result.restored), result.open_count,
                    "created" if result.catalog_created else "existing", result.chain.ok)
