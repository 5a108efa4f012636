"""The worker thread: the daemon's slow jobs (catalog inserts, retention sweeps, the catalog side of the
status, config reloads), one at a time, off the main thread that feeds systemd's watchdog.

The worker says what it is doing and since when (``busy``), so the main thread can tell a worker making
progress (or idle) from a wedged one, and withhold the watchdog from the latter.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Busy:
    job: str
    since_s: float  # monotonic


class Worker:
    """Runs submitted jobs in order, and ``idle`` (the periodic duties) every ``tick_s`` in between.

    A job that raises is logged and the worker goes on: one failed sweep must not stop the others."""

    def __init__(self, idle: Callable[[], None], *, tick_s: float, name: str = "worker",
                 clock: Callable[[], float] = time.monotonic):
        self._idle = idle
        self._tick_s = tick_s
        self._clock = clock
        self._jobs: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._busy: Busy | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask the worker to end after its current job; False if it has not ended within ``timeout_s``."""
        self._stop.set()
        self._jobs.put(("stop", lambda: None))  # wakes a worker waiting for a job
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def submit(self, name: str, job: Callable[[], None]) -> bool:
        """Queue ``job`` unless one of the same name is still waiting (a second SIGHUP while a reload is
        queued adds nothing). True if queued."""
        with self._lock:
            if name in self._pending:
                return False
            self._pending.add(name)
        self._jobs.put((name, job))
        return True

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def busy(self) -> Busy | None:
        """The job running now, or None while the worker waits for one."""
        return self._busy

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name, job = self._jobs.get(timeout=self._tick_s)
            except queue.Empty:
                self._do("idle", self._idle)
                continue
            with self._lock:
                self._pending.discard(name)
            if self._stop.is_set():
                break
            self._do(name, job)

    def _do(self, name: str, job: Callable[[], None]) -> None:
        self._busy = Busy(name, self._clock())
        try:
            job()
        except Exception:
            log.exception("worker job failed job=%s", name)
        finally:
            self._busy = None
