"""systemd service notifications (sd_notify) without libsystemd: readiness, status text and the watchdog.

Every function is a no-op returning False when the process was not started by systemd with
``Type=notify`` (no ``$NOTIFY_SOCKET``), so the daemon runs the same way from a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# systemd expects a ping at least every WatchdogSec=; pinging at half of it leaves room for one late tick.
WATCHDOG_PING_FRACTION = 0.5

_send_failing = False  # log a failing socket once, not on every ping


def notify_address(env: Mapping[str, str]) -> str | None:
    """The socket address from ``$NOTIFY_SOCKET``: a path, or ``\\0name`` for the abstract namespace."""
    raw = env.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # unset, or a transport we do not speak (vsock:)


def sd_notify(state: str) -> bool:
    """Send one notification such as ``READY=1``; True when it was handed to systemd."""
    global _send_failing
    address = notify_address(os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8", "replace"), address)
    except OSError as exc:
        if not _send_failing:
            log.warning("sd_notify failed socket=%s error=%s", os.environ.get("NOTIFY_SOCKET"), exc)
        _send_failing = True
        return False
    if _send_failing:
        log.info("sd_notify works again")
    _send_failing = False
    return True


def one_line(text: str) -> str:
    """Notification values end at a newline: fold a multi-line text into one line."""
    return " ".join(text.split("\n")).strip()


def ready(status_text: str | None = None) -> bool:
    return sd_notify("READY=1" + (f"\nSTATUS={one_line(status_text)}" if status_text else ""))


def status(text: str) -> bool:
    """The one-line text `systemctl status edgerec` shows."""
    return sd_notify(f"STATUS={one_line(text)}")


def watchdog() -> bool:
    return sd_notify("WATCHDOG=1")


def reloading() -> bool:
    """Call before re-reading the configuration; call ``ready()`` when done.

    ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in microseconds) lets systemd >= 253 tell this reload from an
    older one; earlier versions ignore it.
    """
    return sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return sd_notify("STOPPING=1")


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """systemd's watchdog timeout (``WatchdogSec=``) for this process, or None when it is off.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that inherited
    the environment must not feed it.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    owner = env.get("WATCHDOG_PID")
    if owner and owner.strip() != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """Feeds systemd's watchdog from the supervisor's tick, but only while the daemon is healthy.

    A daemon that is alive but no longer recording must be restarted by systemd, so the caller
    passes its health verdict each tick and the ping is withheld while it is False.
    """

    def __init__(
        self,
        interval_s: float | None = None,
        *,
        send: Callable[[], bool] = watchdog,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval_s = watchdog_interval_s() if interval_s is None else interval_s
        self._send = send
        self._clock = clock
        self._last_ping_s: float | None = None
        self._healthy = True

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and self.interval_s > 0

    @property
    def ping_every_s(self) -> float | None:
        interval_s = self.interval_s
        return interval_s * WATCHDOG_PING_FRACTION if interval_s is not None and interval_s > 0 else None

    def tick(self, healthy: bool, reason: str | None = None) -> bool:
        """Call on every supervisor tick; returns True when a ping was sent. ``reason`` says why the daemon
        is unhealthy; it is logged when the verdict turns."""
        if healthy != self._healthy:
            if not self.enabled:
                pass
            elif healthy:
                log.info("watchdog health restored; pinging systemd again")
            else:
                log.warning('watchdog withheld: daemon unhealthy reason="%s"; systemd restarts it after '
                            "timeout_s=%s", reason or "unknown", self.interval_s)
            self._healthy = healthy
        every_s = self.ping_every_s  # None when the watchdog is off
        if not healthy or every_s is None:
            return False
        now = self._clock()
        if self._last_ping_s is not None and now - self._last_ping_s < every_s:
            return False
        sent = self._send()
        if sent:
            self._last_ping_s = now
        return sent
