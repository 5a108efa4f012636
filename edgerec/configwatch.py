"""Watch the config file with the `watchdog` package and call back when it changes.

Editors replace files in many ways (write in place, write a temp file and rename over, delete and
recreate), so the directory is watched and any event naming the file counts. The callback only sets a
flag; the supervisor reloads on its own thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[], None]):
        self._path = path
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(p).resolve() == self._path for p in paths):
            self._on_change()


class ConfigFileWatcher:
    def __init__(self, path: Path, on_change: Callable[[], None]):
        self._path = path.resolve()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_Handler(self._path, on_change), str(self._path.parent), recursive=False)

    def start(self) -> None:
        self._observer.start()
        log.info("watching config path=%s", self._path)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
