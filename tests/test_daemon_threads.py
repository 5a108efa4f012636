"""The daemon's threads: the main thread keeps feeding systemd's watchdog while the worker is busy with a
slow sweep, withholds it from a wedged worker, and a reloaded camera's recorder is replaced only after the
old one has sealed its last segment (one hash chain, never forked), recovering first a segment the old one
left unsealed on a full disk.

The daemon runs in this process (its main loop in a thread of the test) against real cameras (PyAV's
test source), a real catalog, real segment files and a real notification socket standing in for systemd.
The slow parts are made slow through the daemon's own seams: its sweeper, and the ``on_sealed`` hand-off
of the recorders its ``recorder_factory`` makes. A full disk is ``FullDisk``'s ENOSPC on the segment files
(tests/helpers/recorder.py says why a filled tmpfs does not do for an unsealed segment).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgerec import segfile
from edgerec.config import load_config
from edgerec.daemon import Daemon
from edgerec.daemon import supervisor as supervisor_module
from edgerec.recorder import Recorder
from edgerec.segfile import SealedSegment, SegmentMeta
from edgerec.source import Source, open_source
from tests.helpers.daemon import OfficerKey, open_daemon_state, segment_count, wait_for, write_config
from tests.helpers.recorder import FullDisk
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


def config(tmp_path: Path, officer: OfficerKey, camera: dict[str, Any] = GATE,
           segment_seconds: float = 1) -> Path:
    return write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                        segment_seconds=segment_seconds, status_file=str(tmp_path / "status.json"),
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


# ----- a segment left unsealed by a full disk, and the camera's next recorder -------------------------------
def reload_cameras(cfg: Path, d: Daemon, cameras: list[dict[str, Any]]) -> None:
    raw = yaml.safe_load(cfg.read_text())
    raw["cameras"] = cameras
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    d.signals.reload.set()


@dataclass(frozen=True)
class OpenSegment:
    partial: Path
    meta: SegmentMeta
    frames: int  # on disk


def open_segment_with_footage(data: Path) -> OpenSegment:
    """gate's open segment once it holds footage on disk."""
    partial = wait_for(lambda: next(data.glob("gate/*/*.partial"), None), 30, "an open segment")
    frames = wait_for(lambda: segfile.readable_prefix(partial).frames >= 10 and
                      segfile.readable_prefix(partial).frames, 20, "footage in the open segment")
    return OpenSegment(partial, segfile.read_header(partial).meta, frames)


def assert_unsealed_segment_kept_in_one_chain(cfg: Path, unsealed: OpenSegment) -> None:
    """After the daemon stopped and start-up reconciliation ran (it recovers whatever is still unsealed):
    the footage of the ``unsealed`` segment is kept as a recovered segment with its own sequence number,
    and the chain goes on from it: one segment per sequence number, each linked to the one before."""
    reopened = open_daemon_state(cfg)
    reopened.catalog.close()
    data = reopened.config.data_dir
    assert not list(data.rglob("*.partial"))
    segments = chain_of(data, "gate")
    assert_one_unforked_chain(segments)
    name = unsealed.partial.name.removesuffix(segfile.PARTIAL_SUFFIX)
    [kept] = [s for s in segments if s.path == unsealed.partial.with_name(name)]
    assert (kept.meta.sequence, kept.meta.prev_digest) == (unsealed.meta.sequence, unsealed.meta.prev_digest)
    assert kept.state == "recovered" and kept.frames >= unsealed.frames
    after = [s for s in segments if s.meta.sequence > kept.meta.sequence]
    assert after and after[0].meta.prev_digest == kept.digest  # the next recorder's footage links to it


@pytest.mark.parametrize("reload", ["restart", "remove_and_add"])
def test_a_reloaded_camera_recovers_the_segment_its_old_recorder_left_unsealed_before_its_next_one(
        tmp_path: Path, officer: OfficerKey, monkeypatch: pytest.MonkeyPatch, reload: str) -> None:
    disk = FullDisk(monkeypatch)
    made: list[Recorder] = []

    def factory(camera: Any, **kwargs: Any) -> Recorder:
        made.append(Recorder(camera, **kwargs))
        return made[-1]

    cfg = config(tmp_path, officer, segment_seconds=30)  # the segment is open when the disk fills up
    data = tmp_path / "data"
    run = Running(cfg, recorder_factory=factory).start()
    d = run.daemon
    try:
        unsealed = open_segment_with_footage(data)
        disk.full.set()
        wait_for(lambda: made[0].stats().state == "waiting_disk", 20,
                 "the segment neither sealed nor recovered, and no new one started")
        if reload == "restart":  # a setting of the camera changed: a new recorder at once
            reload_cameras(cfg, d, [{**GATE, "encoder": {**GATE["encoder"], "bitrate": "120k"}}])
        else:  # the camera is removed, and added again later
            reload_cameras(cfg, d, [{**GATE, "enabled": False}])
            wait_for(lambda: not made[0].is_alive() and "gate" not in d.retiring, 30, "the camera stopped")
            reload_cameras(cfg, d, [GATE])
        wait_for(lambda: len(made) == 2, 30, "the camera's next recorder")
        # The old recorder has ended; its stop could not recover the segment either.
        assert not made[0].is_alive() and unsealed.partial.exists()
        disk.full.clear()
        wait_for(lambda: set(data.glob("gate/*/*.partial")) - {unsealed.partial}, 30,
                 "the next recorder's segment")
    finally:
        disk.full.clear()
        run.stop()
    assert_unsealed_segment_kept_in_one_chain(cfg, unsealed)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it dies on purpose
def test_a_recorder_thread_that_died_is_restarted_recovering_the_segment_it_left_unsealed_first(
        tmp_path: Path, officer: OfficerKey, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch)
    broken = threading.Event()  # set: the first recorder's next connection attempt fails unexpectedly
    made: list[Recorder] = []

    def factory(camera: Any, **kwargs: Any) -> Recorder:
        generation = len(made)

        def open_camera(cam: Any, **options: Any) -> Source:
            if broken.is_set() and generation == 0:
                raise RuntimeError("a bug in the recorder")  # not a camera error: the thread dies of it
            return open_source(cam, **options)

        made.append(Recorder(camera, **kwargs, open_source_fn=open_camera))
        return made[-1]

    cfg = config(tmp_path, officer, segment_seconds=30)
    data = tmp_path / "data"
    run = Running(cfg, recorder_factory=factory).start()
    d = run.daemon
    try:
        unsealed = open_segment_with_footage(data)
        broken.set()  # the write failure ends the connection, and reconnecting kills the thread
        disk.full.set()
        wait_for(lambda: not made[0].is_alive(), 30, "the recorder thread dead")
        assert made[0].stats().state == "error" and unsealed.partial.exists()
        wait_for(lambda: len(made) == 2, 30, "the recorder restarted")
        assert d.slots["gate"].restarts == 1
        disk.full.clear()
        wait_for(lambda: set(data.glob("gate/*/*.partial")) - {unsealed.partial}, 30,
                 "the new recorder's segment")
    finally:
        disk.full.clear()
        run.stop()
    assert_unsealed_segment_kept_in_one_chain(cfg, unsealed)
