"""The real daemon talking to a private broker: a ``Setup`` (config, data directory, MQTT topics), waiting
for it to come online, and sending it incident commands with a deadline for the reply."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgerec.catalog import Catalog, SegmentRow
from tests.helpers.broker import LOOPBACK, Broker, Listener, Received
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config

REPLY_DEADLINE_S = 1.0
START_TIMEOUT_S = 30.0  # daemon start to first message (the interpreter and PyAV load first)
SEGMENT_TIMEOUT_S = 30.0
# Small, cheap test pictures; a keyframe every second so 1 s segments are exact.
CAMERA = {"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
          "encoder": {"codec": "libx264", "gop_seconds": 1, "bitrate": 100_000}}


# ----- helpers ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """A daemon's config file, data directory and MQTT base topic."""

    config: Path
    data_dir: Path
    device_id: str

    @property
    def base(self) -> str:
        return f"edgerec/{self.device_id}"

    @property
    def command(self) -> str:
        return f"{self.base}/incident/set"

    @property
    def result(self) -> str:
        return f"{self.base}/incident/result"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def discovery_node(self) -> str:
        return f"homeassistant/+/edgerec_{self.device_id}/+/config"

    def reload(self, daemon: Daemon, **changes: Any) -> None:
        """Change top-level keys of the config file and make the daemon reload it (SIGHUP)."""
        cfg = yaml.safe_load(self.config.read_text())
        cfg.update(changes)
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        daemon.proc.send_signal(signal.SIGHUP)


def make_setup(tmp_path: Path, officer: OfficerKey, port: int, *, cameras: list[dict[str, Any]] | None = None,
               mqtt: dict[str, Any] | None = None, device_id: str | None = None, **extra: Any) -> Setup:
    # A device id per test: the module's broker keeps retained messages between tests.
    device_id = device_id or f"dev{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path / "data"
    settings = {"enabled": True, "host": LOOPBACK, "port": port, **(mqtt or {})}
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, device_id=device_id,
                       segment_seconds=1, cameras=cameras or [CAMERA],
                       incidents={"pre_roll_s": 0, "post_roll_s": 0}, mqtt=settings, **extra)
    return Setup(cfg, data_dir, device_id)


def sealed_segments(data_dir: Path, camera: str = "gate") -> list[SegmentRow]:
    if not (data_dir / "catalog.sqlite3").exists():
        return []
    catalog = Catalog.open(data_dir)
    try:
        return catalog.segments(camera=camera)
    finally:
        catalog.close()


def wait_for_segments(data_dir: Path, count: int, what: str, daemon: Daemon) -> list[SegmentRow]:
    def enough() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {daemon.proc.returncode}")
        return segment_count(data_dir) >= count

    try:
        wait_for(enough, SEGMENT_TIMEOUT_S, what, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {segment_count(data_dir)} sealed; the daemon's log:\n{daemon.log()}") \
            from None
    return sealed_segments(data_dir)


def incidents_cli(setup: Setup, *extra: str) -> list[dict[str, Any]]:
    return json.loads(run_cli("incident", "ls", "-c", str(setup.config), "--json", *extra, check=True).stdout)


def is_online(m: Received) -> bool:
    return m.payload == b"online"


def is_offline(m: Received) -> bool:
    return m.payload == b"offline"


def reply_to(transaction: str) -> Callable[[Received], bool]:
    return lambda m: m.json().get("transaction") == transaction


def wait_online(listener: Listener, setup: Setup, daemon: Daemon) -> Received:
    """Wait for ``online``, failing at once with the daemon's log if the daemon exits instead."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return listener.wait_for(setup.availability, is_online, timeout_s=0.5)
        except AssertionError:
            if daemon.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon not online; its log:\n{daemon.log()}") from None


def camera_entities(setup: Setup, camera: str) -> set[str]:
    node = f"edgerec_{setup.device_id}"
    return {f"homeassistant/{component}/{node}/cam_{camera}_{what}/config" for component, what in
            (("binary_sensor", "recording"), ("binary_sensor", "tamper"), ("sensor", "last_packet_age"),
             ("sensor", "fps"), ("sensor", "bitrate"))}


def command(listener: Listener, setup: Setup, obj: dict[str, Any], transaction: str,
            deadline_s: float = REPLY_DEADLINE_S) -> dict[str, Any]:
    """Publish a command and return its reply, failing if it takes longer than ``deadline_s``."""
    sent = time.monotonic()
    listener.publish(setup.command, {**obj, "transaction": transaction})
    reply = listener.wait_for(setup.result, reply_to(transaction), timeout_s=deadline_s + 5)
    assert reply.at_monotonic - sent <= deadline_s, f"reply after {reply.at_monotonic - sent:.2f} s"
    return reply.json()


@dataclass
class Running:
    """A daemon recording the test camera, its setup and a listener on all its topics."""

    setup: Setup
    daemon: Daemon
    listener: Listener


@contextmanager
def running_daemon(tmp: Path, officer: OfficerKey, broker: Broker) -> Iterator[Running]:
    """One daemon recording the test camera with MQTT on ``broker``, online before it is handed over, and
    stopped cleanly afterwards (a module's tests share it)."""
    setup = make_setup(tmp, officer, broker.port)
    with Listener(broker, [f"{setup.base}/#"]) as listener, \
            Daemon(setup.config, tmp / "daemon.log") as daemon:
        wait_online(listener, setup, daemon)
        yield Running(setup, daemon, listener)
        assert daemon.terminate() == 0, daemon.log()
