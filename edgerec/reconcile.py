"""Start-up reconciliation: make the catalog agree with the segment files again after a crash or power cut.

Run once at start, before any recorder writes (a ``.partial`` seen here is never one being written):

1. finish interrupted deletions: rows marked ``deleting`` lose their file (if still there) and their row;
2. recover every ``*.seg.partial`` (complete chunks kept, signed ``recovered`` trailer) and catalogue it;
   a partial too short to hold even a header holds no footage and is removed; any other partial that
   cannot be recovered (damaged header, another device's key, final name taken) is moved to
   ``<data_dir>/quarantine/`` for an operator to look at (retention deletes it after the default
   retention period, like any footage);
3. adopt ``.seg`` files the catalog lacks (``read_info`` checks framing, hashes and signature first;
   files that fail are quarantined);
4. drop rows whose file has vanished.

Each step is logged, reported and (when an audit log is given) audited. The disk is walked one
directory at a time and the catalog is read in pages, so memory stays flat however much footage there is.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import segfile
from .catalog import Catalog
from .errors import CatalogError, SegmentError
from .fsutil import fsync_dir
from .inventory import SEGMENT_SUFFIX

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
PARTIAL_SUFFIX = SEGMENT_SUFFIX + segfile.PARTIAL_SUFFIX
_LISTING_CACHE_DIRS = 8


@dataclass
class ReconcileReport:
    recovered: list[str] = field(default_factory=list)  # partials turned into segments (final paths)
    adopted: list[str] = field(default_factory=list)  # segment files added to the catalog
    quarantined: list[str] = field(default_factory=list)  # files moved to quarantine/ (with why)
    removed: list[str] = field(default_factory=list)  # partials without footage, deleted
    dropped: list[str] = field(default_factory=list)  # rows whose file had vanished
    finished_deletions: list[str] = field(default_factory=list)  # interrupted deletions completed
    errors: list[str] = field(default_factory=list)

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


def reconcile(data_dir: Path | str, catalog: Catalog, signing_key: Any, device_key: Any = None, *,
              audit: Any = None) -> ReconcileReport:
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


def _finish_deletions(data_dir: Path, catalog: Catalog, report: ReconcileReport) -> None:
    pending = catalog.marked_deleting()
    done = []
    for row in pending:
        path = data_dir / row.path
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            report.errors.append(f"path={row.path} cannot delete: {exc.strerror}")
            continue
        done.append(row.id)
        report.finished_deletions.append(row.path)
        log.info("reconcile finished deletion path=%s", row.path)
    catalog.drop(done)


def _reconcile_dir(data_dir: Path, here: Path, names: list[str], catalog: Catalog, signing_key: Any,
                   device_key: Any, report: ReconcileReport) -> None:
    partials = [n for n in names if n.endswith(PARTIAL_SUFFIX)]
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


def _recover(data_dir: Path, partial: Path, catalog: Catalog, signing_key: Any,
             report: ReconcileReport) -> None:
    rel = _rel(data_dir, partial)
    try:
        sealed = segfile.recover_partial(partial, signing_key)
    except SegmentError as exc:
        try:
            size = partial.stat().st_size
        except OSError:
            return
        if size < segfile.HEADER_MIN_BYTES:
            # Not even a whole header: the crash came before any footage was written.
            partial.unlink(missing_ok=True)
            report.removed.append(rel)
            log.warning("reconcile removed partial without footage path=%s bytes=%d", rel, size)
            return
        _quarantine(data_dir, partial, f"cannot recover: {exc.what}", report)
        return
    except OSError as exc:
        report.errors.append(f"path={rel} cannot recover: {exc.strerror}")
        return
    try:
        row = catalog.add_segment(sealed)
    except CatalogError as exc:
        report.errors.append(f"path={rel} {exc}")
        return
    report.recovered.append(row.path)
    log.warning("reconcile recovered segment path=%s state=%s frames=%d bytes=%d", row.path, sealed.state,
                sealed.frames, sealed.size_bytes)


def _adopt(data_dir: Path, path: Path, catalog: Catalog, device_key: Any, report: ReconcileReport) -> None:
    rel = _rel(data_dir, path)
    try:
        info = segfile.read_info(path, device_key)
    except SegmentError as exc:
        _quarantine(data_dir, path, f"unreadable segment not in the catalog: {exc.what}", report)
        return
    except OSError as exc:
        report.errors.append(f"path={rel} cannot read: {exc.strerror}")
        return
    try:
        catalog.add_segment(info)
    except CatalogError as exc:
        report.errors.append(f"path={rel} {exc}")
        return
    report.adopted.append(rel)
    log.warning("reconcile adopted segment path=%s camera=%s sequence=%d", rel, info.meta.camera,
                info.meta.sequence)


def _quarantine(data_dir: Path, path: Path, why: str, report: ReconcileReport) -> None:
    rel = _rel(data_dir, path)
    target = data_dir / QUARANTINE_DIR / rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(path, target)
        for d in {path.parent, target.parent}:
            fsync_dir(d, strict=False)  # best effort: a move lost to a power cut is redone
    except OSError as exc:
        report.errors.append(f"path={rel} cannot quarantine: {exc.strerror}")
        return
    report.quarantined.append(f"path={rel} to={QUARANTINE_DIR}/{rel} why={why}")
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
    catalog.drop([i for i, _ in missing])
    for _, rel in missing:
        report.dropped.append(rel)
        log.error("reconcile dropped row of missing file path=%s", rel)


def _audit(audit: Any, report: ReconcileReport) -> None:
    if audit is None:
        return
    for event, items in (("segments_recovered", report.recovered), ("segments_adopted", report.adopted),
                         ("segments_quarantined", report.quarantined),
                         ("partials_removed", report.removed), ("segments_missing", report.dropped),
                         ("segments_deleted", report.finished_deletions)):
        if items:
            extra = {"reason": "interrupted_deletion"} if event == "segments_deleted" else {}
            audit.append(event, count=len(items), paths=items[:500], **extra)
