"""The daemon as systemd runs it: notifications, watchdog, signals, config reload, status and logging.

Each test starts the real ``edgerec run`` as a subprocess with ``$NOTIFY_SOCKET`` pointing at a datagram
socket the test binds (standing in for systemd) and ``$WATCHDOG_USEC`` set small. Cameras are real: an
H.264 clip played as a live camera, a camera program (``exec:``) the test can pause, and a camera at a
closed loopback port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerec.cli import refuse_root_on_foreign_data_dir
from edgerec.configwatch import ConfigFileWatcher
from edgerec.errors import UsageError
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for, write_config
from tests.helpers.events import named
from tests.helpers.media import free_port, make_h264_clip
from tests.helpers.systemd import WATCHDOG_USEC, FakeSystemd

WATCHDOG_S = WATCHDOG_USEC / 1e6
# The daemon pings at half of WatchdogSec= from a 0.25 s tick.
PING_EVERY_S = WATCHDOG_S / 2
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]{8}\.\d{3}Z (debug|info|warning|error|critical) [\w.]+: \S")

# A camera program: writes an H.264 file in frame-sized chunks at 25 per second, round and round. While
# the pause file exists it writes nothing and ignores SIGTERM, and a process outside its process group holds
# its output pipe open: like a camera program stuck in its driver, which not even the SIGKILL that follows
# the recorder's stall handling ends, so the recorder's read stays blocked until the pause file is gone.
FEEDER = """\
import os, signal, subprocess, sys, time
clip, pause, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
HOLD = "import os, sys, time\\nwhile os.path.exists(sys.argv[1]): time.sleep(0.02)"
data = open(clip, "rb").read()
chunk = max(1, len(data) // frames)
out = sys.stdout.buffer
due = time.monotonic()
while True:
    for i in range(0, len(data), chunk):
        holder = None
        while os.path.exists(pause):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if holder is None:
                holder = subprocess.Popen([sys.executable, "-c", HOLD, pause], start_new_session=True)
            time.sleep(0.02)
            due = time.monotonic()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out.write(data[i:i + chunk])
        out.flush()
        due += 0.04
        time.sleep(max(0.0, due - time.monotonic()))
"""
REJECTED = "config reload rejected; the running configuration stays"
STALL_S = 1.5  # above the ~0.6 s the demuxer needs to probe the program's output


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of real H.264, 25 fps, a keyframe every second."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_h264_clip(path, seconds=2, fps=25, gop=25)
    return path


def live_clip_camera(name: str, clip: Path) -> dict[str, Any]:
    return {"name": name, "url": str(clip), "realtime": True, "loop": True, "health": False}


def unreachable_camera(name: str) -> dict[str, Any]:
    """A camera at a loopback port nobody listens on: every connection attempt is refused."""
    return {"name": name, "url": f"tcp://127.0.0.1:{free_port()}", "timeout_seconds": 1, "health": False}


def sealed(data_dir: Path, camera: str) -> list[Path]:
    return sorted((data_dir / camera).glob("*/*.seg"))


def partials(data_dir: Path, camera: str = "*") -> list[Path]:
    return sorted(data_dir.glob(f"{camera}/*/*.partial"))


def assert_no_traceback(log_text: str) -> None:
    assert "Traceback" not in log_text, log_text[-4000:]


def status_json(config: Path) -> dict[str, Any]:
    result = run_cli("status", "-c", str(config), "--json", timeout=30, check=True)
    return json.loads(result.stdout)


# ----- notifications, watchdog, stop -------------------------------------------------------------------
def test_ready_status_watchdog_and_stopping_reach_systemd_and_sigterm_leaves_only_sealed_segments(
        tmp_path: Path, officer: OfficerKey, clip: Path, systemd: FakeSystemd) -> None:
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[live_clip_camera("gate", clip), unreachable_camera("door")])
    # Not under systemd's RuntimeDirectory=: the status file stays in the data dir.
    with Daemon(cfg, tmp_path / "daemon.log", env={**systemd.env(), "RUNTIME_DIRECTORY": ""}) as daemon:
        ready_at = systemd.wait_for(lambda m: m.startswith("READY=1"), 20, "READY=1")
        # READY only once every camera is open or has failed its first attempt and is retrying.
        events_at_ready = daemon.events()
        assert named(events_at_ready, "source opened", camera="gate")
        assert named(events_at_ready, "camera disconnected", camera="door")
        assert not any(t < ready_at for t in systemd.pings()), "watchdog pinged before READY"

        systemd.wait_for(lambda m: m.startswith("STATUS=") and "1/2 cameras recording" in m, 10,
                         "a STATUS line counting the recording camera")
        wait_for(lambda: len(systemd.pings(ready_at)) >= 5, 10, "five watchdog pings")
        pings = systemd.pings(ready_at)
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        # Every half WatchdogSec (no more often), and never so late that systemd would kill the service.
        assert all(PING_EVERY_S - 0.1 <= g < WATCHDOG_S for g in gaps), gaps

        wait_for(lambda: len(sealed(data_dir, "gate")) >= 2, 15, "two sealed segments")
        wait_for(lambda: partials(data_dir, "gate"), 5, "an open segment (a .partial file)")
        stop_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        stopped_in_s = time.monotonic() - stop_at

    # Far inside TimeoutStopSec=30 even on a slow Pi.
    assert stopped_in_s < 10, stopped_in_s
    systemd.wait_for(lambda m: m == "STOPPING=1", 2, "STOPPING=1", since=stop_at)
    assert partials(data_dir) == []
    verify = run_cli("verify", "-c", str(cfg), "--camera", "gate", timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    final = json.loads((data_dir / "status.json").read_text())
    assert final["state"] == "stopped"
    assert_no_traceback(daemon.log())


def test_watchdog_pings_stop_while_a_camera_hangs_and_resume_when_it_recovers(
        tmp_path: Path, officer: OfficerKey, systemd: FakeSystemd) -> None:
    raw = tmp_path / "cam.h264"
    frames = make_h264_clip(raw, seconds=2, fps=25, gop=25)
    feeder = tmp_path / "feeder.py"
    feeder.write_text(FEEDER)
    pause = tmp_path / "pause"
    command = " ".join(shlex.quote(str(a)) for a in (sys.executable, feeder, raw, pause, frames))
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[{"name": "picam", "url": f"exec:{command}", "stall_seconds": STALL_S,
                                 "health": False}])
    with Daemon(cfg, tmp_path / "daemon.log", env=systemd.env()) as daemon:
        systemd.wait_for(lambda m: m.startswith("READY=1"), 20, "READY=1")
        wait_for(lambda: sealed(data_dir, "picam"), 15, "a sealed segment from the camera program")
        healthy_since = time.monotonic()
        wait_for(lambda: len(systemd.pings(healthy_since)) >= 2, 5, "pings while the camera sends")

        pause.touch()  # the recorder now hangs on its read of the camera program's output
        hung_at = time.monotonic()
        withheld = wait_for(lambda: daemon.events("watchdog withheld: daemon unhealthy"), 4 * STALL_S,
                            "the watchdog to be withheld")
        assert "picam" in withheld[0].fields["reason"]
        # Longer than WatchdogSec= without a ping: systemd would now restart the service.
        deadline = time.monotonic() + WATCHDOG_S + 0.5
        wait_for(lambda: time.monotonic() > deadline, WATCHDOG_S + 2, "one watchdog period to pass")
        last_ping = max(systemd.pings(healthy_since))
        assert time.monotonic() - last_ping > WATCHDOG_S
        # Unhealthy from 2 x stall_seconds without a packet; one ping may still fall in the last tick.
        assert last_ping < hung_at + 2 * STALL_S + 1.0, "kept pinging although the recorder was stuck"
        # The recorder ended the program (SIGTERM ignored, then SIGKILL), but the pipe's other holder
        # keeps its read blocked: only systemd's watchdog can help now.
        wait_for(lambda: daemon.events("camera process ignored SIGTERM; killing it", camera="picam"), 10,
                 "the SIGKILL")
        assert not systemd.pings(last_ping + 0.01)

        pause.unlink()
        resumed_at = time.monotonic()
        systemd.wait_for(lambda m: m == "WATCHDOG=1", 10, "pings after the camera recovers", since=resumed_at)
        assert daemon.events("watchdog health restored; pinging systemd again")
        assert daemon.terminate(15) == 0
    assert partials(data_dir) == []
    assert_no_traceback(daemon.log())


# ----- reload ------------------------------------------------------------------------------------------
def test_config_watcher_calls_back_once_per_save_and_ignores_other_files(tmp_path: Path) -> None:
    cfg = tmp_path / "edgerec.yaml"
    cfg.write_text("a: 0\n")
    calls: list[float] = []
    watcher = ConfigFileWatcher(cfg, lambda: calls.append(time.monotonic()), settle_s=0.2)
    watcher.start()
    try:
        for i in range(5):  # one save in several writes, as an editor writing in place does
            with cfg.open("a") as f:
                f.write(f"b{i}: {i}\n")
        wait_for(lambda: calls, 5, "the callback after an in-place save")
        (tmp_path / "daemon.log").write_text("other files in the directory do not count\n")
        new = tmp_path / ".edgerec.yaml.swp"
        new.write_text("a: 1\n")
        os.replace(new, cfg)  # saved by renaming a new file over it
        wait_for(lambda: len(calls) >= 2, 5, "the callback after a save by rename")
        settled = time.monotonic() + 1.0
        wait_for(lambda: time.monotonic() > settled, 2, "time for any further callback")
        assert len(calls) == 2, calls
    finally:
        watcher.stop()


def test_config_edits_start_and_stop_cameras_and_a_broken_edit_keeps_the_old_config_recording(
        tmp_path: Path, officer: OfficerKey, clip: Path, systemd: FakeSystemd) -> None:
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "edgerec.yaml"

    def configure(*cameras: dict[str, Any], atomic: bool = False) -> None:
        """Write the config in place, or (``atomic``) as many editors save: a new file renamed over it."""
        target = cfg_path.with_name("edgerec.yaml.new") if atomic else cfg_path
        write_config(target, officer=officer, data_dir=data_dir, segment_seconds=1, cameras=list(cameras))
        if atomic:
            os.replace(target, cfg_path)

    configure(live_clip_camera("a", clip))
    with Daemon(cfg_path, tmp_path / "daemon.log", env=systemd.env()) as daemon:
        systemd.wait_for(lambda m: m.startswith("READY=1"), 20, "READY=1")
        wait_for(lambda: sealed(data_dir, "a"), 15, "camera a recording")

        # A camera added by editing the file in place starts; RELOADING=1 then READY=1 frame the reload.
        edit_at = time.monotonic()
        configure(live_clip_camera("a", clip), live_clip_camera("b", clip))
        wait_for(lambda: sealed(data_dir, "b"), 15, "the added camera b recording")
        texts = systemd.texts(edit_at)
        reloading = next(i for i, m in enumerate(texts) if m.startswith("RELOADING=1\nMONOTONIC_USEC="))
        assert "READY=1" in texts[reloading + 1:]
        assert not daemon.events("camera stopped", camera="a")  # an unchanged camera keeps recording

        # A camera removed (file replaced by rename) stops, its open segment sealed.
        configure(live_clip_camera("b", clip), atomic=True)
        wait_for(lambda: daemon.events("camera stopped", camera="a"), 15, "camera a to stop")
        assert partials(data_dir, "a") == []
        a_segments = sealed(data_dir, "a")

        # A broken edit is rejected key by key; the running config goes on recording.
        rejected_before = len(daemon.events(REJECTED))
        cfg_path.write_text(cfg_path.read_text().replace("segment_seconds: 1", "segment_seconds: -5")
                            + "no_such_key: 1\n")
        rejected = wait_for(lambda: daemon.events(REJECTED)[rejected_before:], 10,
                            "the broken config to be rejected")
        assert rejected[0].has(problems=2)
        b_count = len(sealed(data_dir, "b"))
        wait_for(lambda: len(sealed(data_dir, "b")) >= b_count + 2, 15, "camera b recording on")
        assert daemon.proc.poll() is None
        errors = [e["message"] for e in status_json(cfg_path)["last_errors"]]
        assert any("config reload rejected" in e and "segment_seconds" in e for e in errors), errors
        assert any("config reload rejected" in e and "no_such_key" in e for e in errors), errors

        # SIGHUP reloads too (here: the same broken file, rejected again), framed by RELOADING/READY.
        hup_at = time.monotonic()
        rejected_before = len(daemon.events(REJECTED))
        daemon.proc.send_signal(signal.SIGHUP)
        systemd.wait_for(lambda m: m == "READY=1", 10, "READY=1 after SIGHUP", since=hup_at)
        assert any(m.startswith("RELOADING=1") for m in systemd.texts(hup_at))
        assert len(daemon.events(REJECTED)) > rejected_before

        assert daemon.terminate(15) == 0
    assert sealed(data_dir, "a") == a_segments  # nothing more was recorded after a was removed
    assert partials(data_dir) == []
    assert_no_traceback(daemon.log())


def test_start_up_voids_an_incident_line_a_power_cut_kept_from_the_catalog(
        tmp_path: Path, officer: OfficerKey, clip: Path) -> None:
    from edgerec.audit import AuditLog, verify_audit

    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[live_clip_camera("a", clip)])
    opened = run_cli("incident", "open", "-c", str(cfg), "--id", "KEPT", "--camera", "a", "--from",
                     "2026-11-20T09:55:00Z", "--by", "officer")
    assert opened.returncode == 0, opened.stderr
    # The audit line of an open whose catalog commit a power cut prevented (fsynced; the commit is not).
    AuditLog(data_dir / "audit.log").append("incident_opened", id="LOST", camera="a", by="officer")
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: daemon.events("incident audit line voided at start-up", id="LOST", action="open"),
                 30, "the start-up check")
        assert daemon.terminate(15) == 0
    events = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    voids = [e for e in events if e["event"] == "incident_not_recorded"]
    assert [(e["id"], e["action"]) for e in voids] == [("LOST", "open")]
    assert verify_audit(data_dir / "audit.log").ok
    listed = run_cli("incident", "ls", "-c", str(cfg), "--json")
    assert [i["id"] for i in json.loads(listed.stdout)] == ["KEPT"]
    assert_no_traceback(daemon.log())


# ----- status ------------------------------------------------------------------------------------------
def test_status_command_reports_the_running_daemon_from_the_runtime_directory_without_mqtt(
        tmp_path: Path, officer: OfficerKey, clip: Path, systemd: FakeSystemd,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    # systemd sets $RUNTIME_DIRECTORY for RuntimeDirectory=; the CLI, run from a shell, looks there too.
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime_dir))
    (data_dir).mkdir()
    (data_dir / "status.json").write_text('{"device_id": "testdev", "state": "recording"}')  # an old one
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[live_clip_camera("gate", clip), unreachable_camera("door")])
    status_path = runtime_dir / "status.json"

    def gate_has_footage() -> bool:
        try:
            st = json.loads(status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return st["cameras"]["gate"]["segments"] >= 1 and st["cameras"]["gate"]["fps"] > 0

    with Daemon(cfg, tmp_path / "daemon.log", env=systemd.env()) as daemon:
        wait_for(gate_has_footage, 20, "a status file with recorded footage in the runtime directory")
        assert not (data_dir / "status.json").exists()  # the SD card is not rewritten every 2 s
        opened = run_cli("incident", "open", "-c", str(cfg), "--id", "INC-7",
                         "--from", rfc3339(time.time_ns() - 600 * 10**9), "--reason", "test", timeout=30)
        assert opened.returncode == 0, opened.stderr
        wait_for(lambda: json.loads(status_path.read_text())["incidents_open"] == 1, 10,
                 "the open incident in the status")

        st = status_json(cfg)
        assert st["status_file"] == str(status_path) and st["stale"] is False
        gate, door = st["cameras"]["gate"], st["cameras"]["door"]
        assert gate["state"] == "recording" and gate["connected"] is True
        assert 0 <= gate["last_packet_age_s"] < 2
        assert 10 <= gate["fps"] <= 30  # 25 fps, averaged over a window that may hold the start-up second
        assert gate["bitrate_bps"] > 0
        assert door["state"] in ("backoff", "connecting") and door["connected"] is False
        assert "Connection refused" in door["error"]["message"]
        assert st["disk"]["free_bytes"] > 0 and st["disk"]["total_bytes"] >= st["disk"]["free_bytes"]
        assert st["oldest_footage_age_s"] is not None
        assert st["incidents_open"] == 1
        assert st["mqtt"] == {"enabled": False}
        assert isinstance(st["last_errors"], list)

        text = run_cli("status", "-c", str(cfg), timeout=30, check=True).stdout
        assert re.search(r"gate: recording, connected, last packet [\d.]+s ago, \d+\.\d fps, [\d.]+ \w+bit/s",
                         text), text
        assert "door: " in text and "Connection refused" in text
        assert "disk: " in text and "oldest footage" in text
        assert "incidents: 1 open" in text
        assert "mqtt: disabled" in text
        assert daemon.terminate(15) == 0

    stopped = run_cli("status", "-c", str(cfg), timeout=30, check=True).stdout
    assert stopped.startswith("DAEMON STOPPED"), stopped


def test_status_without_a_daemon_says_to_check_the_service(tmp_path: Path, officer: OfficerKey,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                       cameras=[{"name": "gate", "url": "testsrc"}])
    result = run_cli("status", "-c", str(cfg), timeout=30)
    assert result.returncode == 1
    assert "is the daemon running?" in result.stderr
    assert "Traceback" not in result.stderr


# ----- logging -----------------------------------------------------------------------------------------
def test_expected_failures_log_one_key_value_line_each_without_tracebacks_at_the_chosen_level(
        tmp_path: Path, officer: OfficerKey) -> None:
    broker_port = free_port()  # nothing listens there: the broker is down
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                       cameras=[unreachable_camera("door")],
                       mqtt={"enabled": True, "host": "127.0.0.1", "port": broker_port})
    with Daemon(cfg, tmp_path / "daemon.log", "--log-level", "warning") as daemon:
        wait_for(lambda: len(daemon.events("camera disconnected", camera="door")) >= 2, 15,
                 "two refused connection attempts")
        assert daemon.terminate(15) == 0
    lines = daemon.log().splitlines()
    assert lines
    for line in lines:
        assert LOG_LINE.match(line), f"not one formatted line per event: {line!r}"
        assert " info " not in line and " debug " not in line, f"below --log-level warning: {line!r}"
    assert_no_traceback(daemon.log())
    refused = daemon.events("camera disconnected", camera="door")
    assert refused and all(e.level == "warning" and "retry_in_s" in e.fields
                           and "Connection refused" in e.fields.get("reason", "") for e in refused), refused


# ----- tools run as root -------------------------------------------------------------------------------
def test_catalog_commands_refuse_root_on_a_data_dir_owned_by_the_service_user(tmp_path: Path,
                                                                             officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(data_dir, 65534, 65534)  # as if owned by the service user
    with pytest.raises(UsageError, match=r"sudo -u \S+ edgerec incident"):
        refuse_root_on_foreign_data_dir(data_dir, "incident", euid=0)
    refuse_root_on_foreign_data_dir(data_dir, "incident", euid=data_dir.stat().st_uid)  # the owner may
    if os.geteuid() != 0:
        return
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "gate", "url": "testsrc"}])
    for args in (("incident", "ls"), ("retention", "--dry-run")):
        result = run_cli(*args, "-c", str(cfg), timeout=30)
        assert result.returncode == 2, result.stderr
        assert f"sudo -u nobody edgerec {args[0]}" in result.stderr
    assert list(data_dir.iterdir()) == []  # no root-owned catalog, -wal or -shm file was created
