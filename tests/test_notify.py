"""sd_notify against a real datagram socket standing in for systemd, and the health-gated watchdog."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from edgerec import notify
from tests.helpers.events import from_records


@pytest.fixture
def systemd_socket(tmp_path, monkeypatch):
    """A bound AF_UNIX datagram socket and $NOTIFY_SOCKET pointing at it, as systemd sets them up."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_nothing_waiting(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    sock.settimeout(5)


def test_helpers_send_the_systemd_protocol_messages(systemd_socket):
    assert notify.ready()
    assert received(systemd_socket) == "READY=1"
    assert notify.status("2/2 cameras recording")
    assert received(systemd_socket) == "STATUS=2/2 cameras recording"
    assert notify.watchdog()
    assert received(systemd_socket) == "WATCHDOG=1"
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading()
    reload_message = received(systemd_socket)
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = reload_message.split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert before_us <= int(second.removeprefix("MONOTONIC_USEC=")) <= after_us
    assert notify.stopping()
    assert received(systemd_socket) == "STOPPING=1"


def test_ready_with_status_sends_both_in_one_datagram(systemd_socket):
    assert notify.ready("starting cameras")
    assert received(systemd_socket) == "READY=1\nSTATUS=starting cameras"


def test_status_text_with_newlines_cannot_inject_other_assignments(systemd_socket):
    notify.status("disk full\nREADY=1")
    assert received(systemd_socket) == "STATUS=disk full READY=1"


def test_abstract_namespace_socket_is_supported(monkeypatch):
    name = f"edgerec-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.sd_notify("READY=1")
        assert received(sock) == "READY=1"


def test_without_notify_socket_every_helper_returns_false(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.sd_notify("READY=1") is False
    assert notify.ready() is False
    assert notify.watchdog() is False


def test_socket_that_vanished_returns_false_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.sd_notify("WATCHDOG=1") is False


def test_watchdog_interval_comes_from_watchdog_usec_for_this_pid():
    pid = os.getpid()
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 30.0
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert notify.watchdog_interval_s({}) is None
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_watchdog_pings_at_half_the_interval_only_while_healthy(systemd_socket):
    clock = FakeClock()
    dog = notify.Watchdog(30.0, clock=clock)
    assert dog.ping_every_s == 15.0

    assert dog.tick(True)  # first healthy tick pings at once
    assert received(systemd_socket) == "WATCHDOG=1"
    clock.now_s += 10
    assert not dog.tick(True)  # too early
    assert_nothing_waiting(systemd_socket)
    clock.now_s += 5
    assert dog.tick(True)
    assert received(systemd_socket) == "WATCHDOG=1"

    clock.now_s += 20
    assert not dog.tick(False)  # unhealthy: withheld however late it is
    clock.now_s += 20
    assert not dog.tick(False)
    assert_nothing_waiting(systemd_socket)
    assert dog.tick(True)  # recovered
    assert received(systemd_socket) == "WATCHDOG=1"


def test_withheld_watchdog_logs_the_reason_once_and_its_recovery(systemd_socket, caplog):
    clock = FakeClock()
    dog = notify.Watchdog(30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="edgerec.notify"):
        assert dog.tick(True)
        for _ in range(3):
            clock.now_s += 20
            assert not dog.tick(False, reason="camera gate sent nothing for 21.0 s while recording")
        assert dog.tick(True)
    events = [(e.name, e.fields) for e in from_records(caplog.records)]
    assert events == [
        ("watchdog withheld: daemon unhealthy",
         {"reason": "camera gate sent nothing for 21.0 s while recording", "timeout_s": "30.0"}),
        ("watchdog health restored; pinging systemd again", {}),
    ]


def test_watchdog_reads_its_interval_from_the_environment(systemd_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = notify.Watchdog()
    assert dog.enabled and dog.ping_every_s == 10.0
    assert dog.tick(True)
    assert received(systemd_socket) == "WATCHDOG=1"


def test_watchdog_is_inert_when_systemd_does_not_ask_for_it(systemd_socket, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    dog = notify.Watchdog()
    assert not dog.enabled
    assert not dog.tick(True)
    assert_nothing_waiting(systemd_socket)


def test_failed_ping_is_retried_on_the_next_tick(tmp_path, monkeypatch):
    path = tmp_path / "late.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    clock = FakeClock()
    dog = notify.Watchdog(30.0, clock=clock)
    assert not dog.tick(True)  # nobody listening yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        clock.now_s += 1
        assert dog.tick(True)  # not held back by the interval: the last ping never arrived
        assert received(sock) == "WATCHDOG=1"
