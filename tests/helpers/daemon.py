"""Helpers for tests that run the real ``edgerec`` command and daemon as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.events import Event, named, parse_log

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/daemon.py → the repository


@dataclass(frozen=True)
class OfficerKey:
    private_path: Path
    public: str


def make_officer_key(path: Path) -> OfficerKey:
    from edgerec import keys

    public = keys.generate_recipient(path)
    return OfficerKey(path, public)


def write_config(path: Path, *, officer: OfficerKey, data_dir: Path, cameras: list[dict[str, Any]],
                 **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "device_id": "testdev",
        "data_dir": str(data_dir),
        "recipients": [officer.public],
        "cameras": cameras,
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def segment_count(data_dir: Path, camera: str = "gate") -> int:
    """Sealed segments of ``camera`` in the catalog, read-only: while the daemon is still creating the
    catalog, 0."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'catalog.sqlite3'}?mode=ro", uri=True,
                                                timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM segments WHERE camera = ?", (camera,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def open_daemon_state(config_path: Path) -> Any:
    """Run the daemon's start-up (device key, catalog, audit log, reconciliation, sweeper) in this process,
    without starting recorders, and return the daemon (``edgerec.daemon.Daemon``). The umask it sets
    for its files is undone for the rest of the tests. The caller closes its ``catalog``."""
    from edgerec.config import load_config
    from edgerec.daemon import Daemon as Supervisor

    supervisor = Supervisor(load_config(config_path))
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        supervisor.open_state()
    finally:
        os.umask(umask)
    return supervisor


def edgerec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgerec", *args]


def shifted_cmd(clock: int | str, *args: str) -> list[str]:
    """The edgerec command with its clocks moved (``tests.helpers.shifted``: a shift in ns for both clocks,
    or ``MONO:WALL[:BOOT_ID]``)."""
    return [sys.executable, "-m", "tests.helpers.shifted", str(clock), *args]


def run_cli(*args: str, timeout: float = 120, check: bool = False,
            clock_shift_ns: int | str = 0) -> subprocess.CompletedProcess[str]:
    """Run the edgerec command; ``clock_shift_ns`` runs it with its wall and monotonic clocks that much
    ahead (time has passed), or moved as a ``tests.helpers.shifted`` spec says."""
    cmd = shifted_cmd(clock_shift_ns, *args) if clock_shift_ns else edgerec_cmd(*args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgerec {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """``edgerec run`` as a subprocess, its log in a file the test can read."""

    def __init__(self, config: Path, log_path: Path, *extra_args: str, env: dict[str, str] | None = None,
                 clock_shift_ns: int | str = 0):
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {**os.environ, **(env or {})}
        args = ("--log-level", "debug", "run", "-c", str(config), *extra_args)
        cmd = shifted_cmd(clock_shift_ns, *args) if clock_shift_ns else edgerec_cmd(*args)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None, **fields: object) -> list[Event]:
        """The events the daemon has logged so far; with ``name``, only those (and with those fields)."""
        events = parse_log(self.log())
        return events if name is None else named(events, name, **fields)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
