"""The notification socket systemd holds for a service (``$NOTIFY_SOCKET``), for tests of the daemon's
readiness, status text and watchdog: every datagram with its arrival time."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable

from tests.helpers.daemon import wait_for

WATCHDOG_USEC = 2_000_000  # what the tests give as WatchdogSec: a ping at least every second


class FakeSystemd:
    """The notification socket systemd would hold: collects every datagram with its arrival time."""

    def __init__(self) -> None:
        self.name = f"edgerec-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.name)  # abstract namespace: no path length limit, nothing to clean up
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int | None = WATCHDOG_USEC) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": "@" + self.name}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self._messages.append((time.monotonic(), data.decode()))

    def messages(self, since: float = 0.0) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, m) for t, m in self._messages if t >= since]

    def texts(self, since: float = 0.0) -> list[str]:
        return [m for _, m in self.messages(since)]

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages(since) if m == "WATCHDOG=1"]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str,
                 since: float = 0.0) -> float:
        """Wait for a message matching ``predicate``; returns its arrival time."""
        def found() -> float | None:
            return next((t for t, m in self.messages(since) if predicate(m)), None)
        return wait_for(found, timeout, what)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
