"""The daemon's pure rooms, tested directly: the reload plan, the sweep schedule and the disk-full gate,
the status document; and the worker thread's contract (jobs in order, a failing job does not stop it,
what it is busy with)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from edgerec.catalog import CameraSummary
from edgerec.config import CameraConfig, Config, MqttConfig
from edgerec.daemon.reload import plan_reload
from edgerec.daemon.scheduler import (
    DISK_FULL_RESWEEP_S,
    PRESSURE_SWEEP_MIN_INTERVAL_S,
    DiskFullGate,
    SweepScheduler,
)
from edgerec.daemon.status import (
    CameraStatus,
    CatalogFacts,
    DiskUsage,
    StatusInputs,
    build_status,
    status_line,
    status_news,
)
from edgerec.daemon.worker import Worker
from edgerec.recorder import CameraError
from tests.helpers.daemon import wait_for
from tests.helpers.recorder import recorder_stats as stats

GATE = CameraConfig("gate", "rtsp://127.0.0.1:8554/gate")
YARD = CameraConfig("yard", "rtsp://127.0.0.1:8554/yard")
BASE = Config(device_id="dev", data_dir=Path("/srv/edgerec"), recipients=("age1x",), cameras=(GATE, YARD))


# ----- reload ---------------------------------------------------------------------------------------------
def test_an_identical_config_changes_nothing() -> None:
    assert plan_reload(BASE, replace(BASE)).unchanged


def test_device_id_and_data_dir_cannot_change_while_running() -> None:
    plan = plan_reload(BASE, replace(BASE, device_id="other", data_dir=Path("/elsewhere")))
    assert plan.rejected == "device_id, data_dir cannot change while running"
    assert not plan.applies and plan.start == plan.restart == () and plan.stop == ()


def test_added_removed_and_changed_cameras_start_stop_and_restart_and_the_rest_keep_recording() -> None:
    door = CameraConfig("door", "rtsp://127.0.0.1:8554/door")
    new = replace(BASE, cameras=(replace(GATE, stall_seconds=20.0), door))
    plan = plan_reload(BASE, new)
    assert [c.name for c in plan.start] == ["door"]
    assert plan.stop == ("yard",)
    assert [c.name for c in plan.restart] == ["gate"] and plan.restart[0].stall_seconds == 20.0
    assert not plan.mqtt_changed


def test_a_disabled_camera_stops_and_a_re_enabled_one_starts() -> None:
    disabled = replace(BASE, cameras=(GATE, replace(YARD, enabled=False)))
    assert plan_reload(BASE, disabled).stop == ("yard",)
    assert [c.name for c in plan_reload(disabled, BASE).start] == ["yard"]


def test_shared_recording_settings_restart_every_camera_and_mqtt_settings_restart_none() -> None:
    plan = plan_reload(BASE, replace(BASE, segment_seconds=30.0))
    assert [c.name for c in plan.restart] == ["gate", "yard"]
    plan = plan_reload(BASE, replace(BASE, segment_cipher="chacha20-poly1305"))
    assert [c.name for c in plan.restart] == ["gate", "yard"]
    plan = plan_reload(BASE, replace(BASE, mqtt=MqttConfig(enabled=True, host="127.0.0.1")))
    assert plan.mqtt_changed and plan.restart == () and plan.start == ()


# ----- sweep schedule and disk-full gate ------------------------------------------------------------------
def test_sweeps_are_due_at_once_then_every_interval() -> None:
    s = SweepScheduler(sweep_interval_s=300.0)
    assert s.due(10.0, pressure=False, disk_full=False, clock_jumped=False) == "interval"
    assert s.due(11.0, pressure=False, disk_full=False, clock_jumped=False) is None
    assert s.due(310.0, pressure=False, disk_full=False, clock_jumped=False) == "interval"


def test_a_clock_jump_makes_a_sweep_due_at_once() -> None:
    s = SweepScheduler(sweep_interval_s=300.0)
    s.due(0.0, pressure=False, disk_full=False, clock_jumped=False)
    assert s.due(5.0, pressure=False, disk_full=False, clock_jumped=True) == "interval"


def test_under_pressure_sweeps_repeat_quickly_but_slowly_while_the_disk_is_full() -> None:
    s = SweepScheduler(sweep_interval_s=300.0)
    quick, full = PRESSURE_SWEEP_MIN_INTERVAL_S, DISK_FULL_RESWEEP_S
    assert s.due(0.0, pressure=True, disk_full=False, clock_jumped=False) == "disk_pressure"
    assert s.due(quick / 2, pressure=True, disk_full=False, clock_jumped=False) is None
    assert s.due(quick, pressure=True, disk_full=False, clock_jumped=False) == "disk_pressure"
    assert s.due(quick + 2 * quick, pressure=True, disk_full=True, clock_jumped=False) is None
    assert s.due(quick + full, pressure=True, disk_full=True, clock_jumped=False) == "disk_pressure"


def test_space_back_while_the_disk_is_full_sweeps_at_once() -> None:
    s = SweepScheduler(sweep_interval_s=300.0)
    s.due(0.0, pressure=True, disk_full=True, clock_jumped=False)
    assert s.due(0.5, pressure=False, disk_full=True, clock_jumped=False) == "interval"


def test_the_disk_full_gate_reports_each_change_once() -> None:
    gate = DiskFullGate()
    assert gate.set(False) is None
    assert gate.set(True) == "disk_full" and gate.full
    assert gate.set(True) is None
    assert gate.set(False) == "disk_ok" and not gate.full


# ----- status ----------------------------------------------------------------------------------------------
def inputs(**changes: object) -> StatusInputs:
    base = StatusInputs(
        version="1", device_id="dev", pid=42, started_wall_ns=0, uptime_s=12.34, now_ns=86_400 * 10**9,
        disk_full=False, clock={"synced": True, "boot_id": "b"}, audit_head={"seq": 1},
        cameras={"gate": CameraStatus(stats("gate"), 2), "yard": CameraStatus(stats("yard", "backoff"), 0)},
        facts=CatalogFacts(summaries={"gate": CameraSummary("gate", 5, 500, 3600 * 10**9, 7200 * 10**9)},
                           gaps={"gate": 1}, held_bytes=100, open_incident_ids=frozenset({"A", "B"})),
        disk=DiskUsage(total=1000, used=750, free=250), retention_days=30.0,
        last_sweep={"at": "t", "deleted": 4, "reason": "interval"}, uncatalogued_segments=0,
        mqtt={"enabled": False}, last_errors=[])
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_status_is_built_from_recorder_counters_and_the_cached_catalog_facts() -> None:
    st = build_status(inputs())
    assert st["state"] == "recording" and st["incidents_open"] == 2 and st["held_bytes"] == 100
    gate = st["cameras"]["gate"]
    assert (gate["segments"], gate["bytes"], gate["gaps"], gate["thread_restarts"]) == (5, 500, 1, 2)
    assert gate["fps"] == 10.0 and gate["last_packet_age_s"] == 0.12
    assert st["cameras"]["yard"]["segments"] == 0 and st["cameras"]["yard"]["oldest"] is None
    assert st["disk"]["free_pct"] == 25.0
    assert st["oldest_footage_age_s"] == 86_400 - 3600
    assert st["retention"]["deleted_last_sweep"] == 4
    assert st["recorders_not_stopped"] == {}
    assert status_line(st) == "1/2 cameras recording, 2 open incidents, disk 25.0% free"


def test_the_status_says_disk_full_and_names_a_recorder_that_would_not_stop() -> None:
    st = build_status(inputs(disk_full=True, recorders_not_stopped={"gate": 12.345}))
    assert st["state"] == "disk_full" and st["retention"]["disk_full"] is True
    assert st["recorders_not_stopped"] == {"gate": 12.3}


def test_a_cameras_current_error_and_past_errors_are_shown_with_their_times() -> None:
    now_error = CameraError("connection refused", since_ns=10 * 10**9, at_ns=20 * 10**9)
    ended = CameraError("stalled: no packet for 10.0 s while recording", 1 * 10**9, 2 * 10**9, 3 * 10**9)
    yard = replace(stats("yard", "backoff"), error=now_error, past_errors=(ended,))
    st = build_status(inputs(cameras={"gate": CameraStatus(stats("gate"), 0), "yard": CameraStatus(yard, 0)}))
    assert st["cameras"]["gate"]["error"] is None and st["cameras"]["gate"]["past_errors"] == []
    assert st["cameras"]["yard"]["error"] == {
        "message": "connection refused", "since": "1970-01-01T00:00:10.000Z",
        "at": "1970-01-01T00:00:20.000Z"}
    assert st["cameras"]["yard"]["past_errors"] == [{
        "message": ended.message, "since": "1970-01-01T00:00:01.000Z", "at": "1970-01-01T00:00:02.000Z",
        "until": "1970-01-01T00:00:03.000Z"}]


def test_status_news_ignores_what_every_sealed_segment_changes_and_sees_what_matters() -> None:
    base = build_status(inputs())
    sealed = build_status(inputs(
        now_ns=86_401 * 10**9, uptime_s=13.0, disk=DiskUsage(total=1000, used=760, free=240),
        facts=replace(inputs().facts, summaries={"gate": CameraSummary("gate", 6, 600, 3600 * 10**9,
                                                                      7201 * 10**9)}, held_bytes=120)))
    assert status_news(sealed) == status_news(base)
    assert status_news({**sealed, "mqtt": {"enabled": True, "published": 99}}) == status_news(base)
    yard_down = replace(stats("yard", "backoff"), error=CameraError("connection refused", 1, 1))
    changes = [
        inputs(cameras={"gate": CameraStatus(stats("gate", "backoff"), 0),
                        "yard": CameraStatus(stats("yard", "backoff"), 0)}),
        inputs(cameras={"gate": CameraStatus(stats("gate"), 2), "yard": CameraStatus(yard_down, 0)}),
        inputs(disk_full=True),
        inputs(facts=replace(inputs().facts, open_incident_ids=frozenset({"A"}))),
        inputs(last_errors=[{"at": "t", "message": "config reload rejected"}]),
    ]
    for changed in changes:
        assert status_news(build_status(changed)) != status_news(base)


# ----- worker ----------------------------------------------------------------------------------------------
def test_the_worker_runs_jobs_in_order_survives_a_failing_one_and_says_what_it_is_busy_with() -> None:
    done: list[str] = []
    release = threading.Event()
    idle_runs = threading.Event()
    worker = Worker(idle_runs.set, tick_s=0.01)
    worker.start()
    try:
        def fail() -> None:
            raise RuntimeError("boom")

        assert worker.submit("slow", lambda: (release.wait(10), done.append("slow")))
        wait_for(lambda: getattr(worker.busy(), "job", None) == "slow", 5, "the slow job running")
        assert worker.submit("fail", fail)
        assert worker.submit("reload", lambda: done.append("reload"))
        assert not worker.submit("reload", lambda: done.append("again")), "a waiting job is queued once"
        release.set()
        wait_for(lambda: "reload" in done, 5, "the jobs after the failing one")
        assert done == ["slow", "reload"]
        assert worker.is_alive()
        assert idle_runs.wait(5)
    finally:
        release.set()
        assert worker.stop(5)
    assert not worker.is_alive()
