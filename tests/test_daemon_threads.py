"""The daemon's threads: the main thread keeps feeding systemd's watchdog while the worker is busy with a
slow sweep, withholds it from a wedged worker, and a reloaded camera's recorder is replaced only after the
old one has sealed its last segment (one hash chain, never forked).

The daemon runs in this process (its main loop in a thread of the test) against real cameras (PyAV's
test source), a real catalog, real segment files and a real notification socket standing in for systemd.
The slow parts are made slow through the daemon's own seams: its sweeper, and the ``on_sealed`` hand-off
of the recorders its ``recorder_factory`` makes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgerec import segfile
from edgerec.config import load_config
from edgerec.daemon import Daemon
from edgerec.daemon import supervisor as supervisor_module
from edgerec.recorder import Recorder
from edgerec.segfile import SealedSegment
from tests.helpers.daemon import OfficerKey, segment_count, wait_for, write_config
from tests.helpers.systemd import WATCHDOG_USEC, FakeSystemd

WATCHDOG_S = WATCHDOG_USEC / 1e6
GATE = {"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
        "encoder": {"codec": "libx264", "bitrate": "100k", "gop_seconds": 1}}


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    sock = FakeSystemd()
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + sock.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", "")
    yield sock
    sock.close()


class Running:
    """A daemon opened in this process, its main loop in a thread; stopped as SIGTERM would."""

    def __init__(self, config_path: Path, **kwargs: Any):
        self.daemon = Daemon(load_config(config_path), **kwargs)
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            self.daemon.open_state()
        finally:
            os.umask(umask)  # open_state tightens it for the daemon's files; not for the rest of the tests
        self._thread = threading.Thread(target=self.daemon.serve, name="test-daemon-main", daemon=True)

    def start(self) -> Running:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.daemon.signals.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the daemon did not stop"


def blocking_sweep(daemon: Daemon) -> tuple[threading.Event, threading.Event]:
    """Make the daemon's sweeps wait (a sweep of a huge catalog): returns (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = daemon.sweeper.sweep

    def sweep(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    daemon.sweeper.sweep = sweep  # type: ignore[method-assign]
    return entered, release


def config(tmp_path: Path, officer: OfficerKey, camera: dict[str, Any] = GATE) -> Path:
    return write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                        segment_seconds=1, status_file=str(tmp_path / "status.json"),
                        durability={"flush_seconds": 0.2, "fsync_seconds": 0.5}, cameras=[camera])


def test_a_slow_sweep_on_the_worker_does_not_delay_the_watchdog_pings(
        tmp_path: Path, officer: OfficerKey, systemd: FakeSystemd) -> None:
    run = Running(config(tmp_path, officer))
    entered, release = blocking_sweep(run.daemon)
    run.start()
    try:
        assert entered.wait(20), "the first sweep did not start"
        blocked_at = time.monotonic()
        wait_for(lambda: len(systemd.pings(blocked_at)) >= 4, 4 * WATCHDOG_S + 5, "pings during the sweep")
        assert run.daemon.worker.busy() is not None and run.daemon.worker.busy().job == "idle"
        pings = [blocked_at, *systemd.pings(blocked_at)]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < WATCHDOG_S, gaps
        assert run.daemon.health_problem() is None
    finally:
        release.set()
        run.stop()


def test_a_wedged_worker_stops_the_watchdog_pings_and_they_resume_when_it_moves_again(
        tmp_path: Path, officer: OfficerKey, systemd: FakeSystemd) -> None:
    stall_s = 1.0
    run = Running(config(tmp_path, officer), worker_stall_s=stall_s)
    entered, release = blocking_sweep(run.daemon)
    run.start()
    try:
        assert entered.wait(20), "the first sweep did not start"
        wedged_at = time.monotonic()
        wait_for(lambda: run.daemon.health_problem() is not None, stall_s + 5, "the worker seen as stuck")
        assert "worker stuck" in run.daemon.health_problem()
        quiet_from = time.monotonic() + 0.5  # a tick in flight may still ping
        wait_for(lambda: time.monotonic() > quiet_from + WATCHDOG_S + 0.5, 2 * WATCHDOG_S + 5,
                 "one watchdog period to pass")
        assert systemd.pings(quiet_from) == [], "pinged while the worker was wedged"
        assert time.monotonic() - wedged_at > stall_s
        release.set()
        resumed = time.monotonic()
        wait_for(lambda: systemd.pings(resumed), 10, "pings once the worker moves again")
    finally:
        release.set()
        run.stop()


def chain_of(data_dir: Path, camera: str) -> list[SealedSegment]:
    return sorted((segfile.read_info(p) for p in data_dir.glob(f"{camera}/*/*.seg")),
                  key=lambda s: s.meta.sequence)


def assert_one_unforked_chain(segments: list[SealedSegment]) -> None:
    sequences = [s.meta.sequence for s in segments]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences
    for prev, seg in zip(segments, segments[1:], strict=False):
        assert seg.meta.prev_digest == prev.digest, f"chain broken before sequence {seg.meta.sequence}"


def test_a_reload_replaces_a_recorder_only_after_the_old_one_has_sealed_and_handed_over_its_chain(
        tmp_path: Path, officer: OfficerKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "RECORDER_STOP_REPORT_S", 0.5)
    slow_s = 4.0
    slow = threading.Event()  # set: the recorders made so far hand over their next segment slowly
    made: list[Recorder] = []

    def factory(camera: Any, **kwargs: Any) -> Recorder:
        on_sealed: Callable[[SealedSegment], None] = kwargs["on_sealed"]
        generation = len(made)

        def slow_on_sealed(segment: SealedSegment) -> None:
            if slow.is_set() and generation == 0:
                time.sleep(slow_s)  # the old recorder's thread is still busy with its last segment
            on_sealed(segment)

        recorder = Recorder(camera, **{**kwargs, "on_sealed": slow_on_sealed})
        made.append(recorder)
        return recorder

    cfg = config(tmp_path, officer)
    data = tmp_path / "data"
    run = Running(cfg, recorder_factory=factory)
    run.start()
    d = run.daemon
    try:
        wait_for(lambda: segment_count(data) >= 2, 60, "two catalogued segments")
        slow.set()
        changed = {**GATE, "encoder": {**GATE["encoder"], "bitrate": "120k"}}
        raw = yaml.safe_load(cfg.read_text())
        raw["cameras"] = [changed]
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        d.signals.reload.set()
        wait_for(lambda: "gate" in d.retiring, 20, "the old recorder asked to stop")
        # While the old recorder is still busy, the camera has no second recorder, and the status says so.
        wait_for(lambda: "gate" in (d.status_snapshot or {}).get("recorders_not_stopped", {}), 10,
                 "the stuck recorder reported in the status")
        assert made[0].is_alive() and len(made) == 1 and "gate" not in d.slots
        assert any("has not stopped" in e["message"] for e in d.status_snapshot["last_errors"])
        wait_for(lambda: len(made) == 2, slow_s + 10, "the replacement recorder")
        assert not made[0].is_alive()
        after = segment_count(data)
        wait_for(lambda: segment_count(data) >= after + 2, 60, "segments from the replacement")
    finally:
        slow.clear()
        run.stop()
    segments = chain_of(data, "gate")
    assert len(segments) >= 4
    assert_one_unforked_chain(segments)
