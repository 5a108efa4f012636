"""Watch the config file with the `watchdog` package and call back when it changes.

Editors replace files in many ways (write in place, write a temp file and rename over, delete and
recreate), so the directory is watched and any event naming the file counts. One save is often
several events (truncate, write, close; or create, rename), and the first of them can show a
half-written file, so the callback runs only once the file has been quiet for ``settle_s``. The
callback only sets a flag; the supervisor reloads on its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

# Long enough to cover the events of one save, short enough that a reload feels immediate.
SETTLE_S = 0.3


class _Debouncer:
    """Calls ``action`` once, ``settle_s`` after the last of a burst of ``poke()`` calls."""

    def __init__(self, action: Callable[[], None], settle_s: float):
        self._action = action
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def poke(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._settle_s, self._action)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[], None]):
        self._path = path
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(_text(p)).resolve() == self._path for p in paths):
            self._on_change()


def _text(path: str | bytes) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


class ConfigFileWatcher:
    def __init__(self, path: Path, on_change: Callable[[], None], settle_s: float = SETTLE_S):
        self._path = path.resolve()
        self._debouncer = _Debouncer(self._changed, settle_s)
        self._on_change = on_change
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_Handler(self._path, self._debouncer.poke), str(self._path.parent),
                                recursive=False)

    def _changed(self) -> None:
        log.info("config file changed path=%s", self._path)
        self._on_change()

    def start(self) -> None:
        self._observer.start()
        log.info("watching config path=%s", self._path)

    def stop(self) -> None:
        self._debouncer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)
