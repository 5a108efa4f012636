"""Sealed segments (and footage gaps) on their way into the catalog.

Recorder threads never wait on SQLite: a recorder hands each sealed segment and each ended gap to
``CatalogQueue.put`` and goes back to its camera, and the daemon's worker thread inserts the queue in
order (``drain``, every tick). A
catalog that cannot take a segment for now (a full disk, a database another process holds locked past the
busy timeout, an I/O error) keeps the queue where it is: the worker tries again every
``CATALOG_RETRY_S`` and before each retention sweep, and the status shows how many segments wait
(``behind``). Until a segment is in, retention does not see it (it is never deleted, not even for space)
and incident holds do not count it; whatever is left at exit is adopted by start-up reconciliation, as is a
segment the catalog can never take (logged and dropped, so that it does not hold up the rest).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CatalogError
from .segfile import SealedSegment

log = logging.getLogger(__name__)

CATALOG_RETRY_S = 5.0  # between tries while the catalog refuses segments


def may_recover(exc: Exception) -> bool:
    """A catalog write that failed for now (disk full, database locked or busy, I/O error) may succeed
    later; anything else (a damaged database, a path outside the data directory) fails the same way each
    time, and is left to start-up reconciliation."""
    return isinstance(exc, CatalogError) and isinstance(exc.__cause__, sqlite3.OperationalError)


@dataclass(frozen=True)
class Gap:
    """A stretch of time a camera recorded nothing, reported when it ended."""

    camera: str
    from_ns: int
    to_ns: int
    reason: str


class CatalogQueue:
    """Sealed segments and gaps not yet in the catalog, oldest first. Any thread may ``put``; only one
    thread at a time (the daemon's worker; at shutdown, once it has ended, the main thread) calls
    ``drain``, so the head of the queue stays put while it is inserted without the lock held."""

    def __init__(self, add_segment: Callable[[SealedSegment], object], add_gap: Callable[[Gap], object],
                 clock: Callable[[], float] = time.monotonic):
        self._add_segment = add_segment
        self._add_gap = add_gap
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[SealedSegment | Gap] = deque()
        self._next_try = 0.0
        self._failing = False  # the last insert failed and the queue has not been empty since

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def behind(self) -> int:
        """Segments waiting because the catalog refuses them (0 while it takes them as they come)."""
        with self._lock:
            return sum(isinstance(item, SealedSegment) for item in self._queue) if self._failing else 0

    def last_for(self, camera: str) -> SealedSegment | None:
        """The camera's newest queued segment: the head of its chain while the catalog lags behind."""
        with self._lock:
            return next((s for s in reversed(self._queue)
                         if isinstance(s, SealedSegment) and s.meta.camera == camera), None)

    def put(self, item: SealedSegment | Gap) -> None:
        with self._lock:
            self._queue.append(item)

    def drain(self, *, force: bool = False) -> int:
        """Insert the queued segments in order until one fails for now; after a failure, wait
        ``CATALOG_RETRY_S`` before the next try unless ``force`` (before a sweep, at stop). Returns how
        many left the queue."""
        if not force and self._clock() < self._next_try:
            return 0
        done = 0
        while True:
            with self._lock:
                if not self._queue:
                    self._failing = False
                    return done
                item = self._queue[0]
            try:
                self._insert(item)
            except Exception as exc:
                if may_recover(exc):
                    self._refused(item, exc)
                    return done
                log.error("%s not catalogued; left for start-up reconciliation %s error=%s", _kind(item),
                          _describe(item), exc)
            else:
                if self._failing:
                    log.info("%s catalogued after retry %s", _kind(item), _describe(item))
            with self._lock:
                self._queue.popleft()
            done += 1

    def _insert(self, item: SealedSegment | Gap) -> None:
        if isinstance(item, Gap):
            self._add_gap(item)
        else:
            self._add_segment(item)  # a segment someone else catalogued meanwhile counts as done

    def _refused(self, item: SealedSegment | Gap, exc: Exception) -> None:
        with self._lock:
            first = not self._failing
            self._failing = True
            self._next_try = self._clock() + CATALOG_RETRY_S
            waiting = len(self._queue)
        if first:
            log.error("%s not catalogued; retrying %s every_s=%.0f queued=%d error=%s", _kind(item),
                      _describe(item), CATALOG_RETRY_S, waiting, exc)
        else:
            log.warning("%s still not catalogued %s queued=%d error=%s", _kind(item), _describe(item),
                        waiting, exc)


def _kind(item: SealedSegment | Gap) -> str:
    return "gap" if isinstance(item, Gap) else "segment"


def _describe(item: SealedSegment | Gap) -> str:
    if isinstance(item, Gap):
        return f"camera={item.camera} from_ns={item.from_ns} to_ns={item.to_ns}"
    return f"camera={item.meta.camera} path={item.path}"
