"""The status file: atomic replacement, clear errors when it is missing, staleness, and the summary text."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgerec.errors import EdgerecError
from edgerec.statusfile import (
    SERVICE_RUNTIME_DIR,
    STALE_AFTER_S,
    StatusLocation,
    daemon_status_path,
    format_status,
    human_bytes,
    human_duration,
    location_from_raw_config,
    read_daemon_status,
    read_status,
    remove_leftover,
    status_path_candidates,
    write_status,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sample_status(**overrides) -> dict:
    status = {
        "version": "0.1.0",
        "device_id": "pi-gate",
        "pid": 4321,
        "started_at": rfc3339(NOW - 3 * 86400 - 4 * 3600),
        "updated_at": rfc3339(NOW - 2),
        "uptime_s": 3 * 86400 + 4 * 3600,
        "state": "recording",
        "clock": {"synced": True, "boot_id": "0f3c"},
        "cameras": {
            "gate": {
                "state": "recording", "connected": True, "fps": 25.0, "bitrate_bps": 2_100_000,
                "last_packet_age_s": 0.04, "segments": 1234, "bytes": 12_300_000_000,
                "oldest": rfc3339(NOW - 27 * 86400 - 23 * 3600), "newest": rfc3339(NOW - 30),
                "health": {"frozen": False, "dark": False}, "error": None, "reconnects": 3, "gaps": 1,
                "past_errors": [{"message": "stalled: no packet for 10.0 s while recording",
                                 "since": rfc3339(NOW - 3600), "at": rfc3339(NOW - 3590),
                                 "until": rfc3339(NOW - 3580)}],
            },
            "yard": {
                "state": "backoff", "connected": False, "fps": 0.0, "bitrate_bps": 0,
                "last_packet_age_s": None, "segments": 0, "bytes": 0, "oldest": None, "newest": None,
                "health": {"covered": True}, "past_errors": [],
                "error": {"message": "rtsp://10.0.0.9/s1: connection refused", "since": rfc3339(NOW - 300),
                          "at": rfc3339(NOW - 2)},
                "reconnects": 7, "gaps": 2,
            },
        },
        "disk": {"free_bytes": 45_200_000_000, "free_pct": 62.07, "used_bytes": 12_800_000_000,
                 "total_bytes": 58_000_000_000},
        "oldest_footage_age_s": 27 * 86400 + 23 * 3600,
        "retention": {
            "days": 28, "last_sweep": rfc3339(NOW - 240), "deleted_last_sweep": 12, "disk_full": False,
        },
        "incidents_open": 2,
        "held_bytes": 1_200_000_000,
        "audit_head": {"lines": 57, "sha256": "ab" * 32},
        "mqtt": {"connected": True, "queued": 0},
        "last_errors": [{"at": rfc3339(NOW - 600), "message": "recorder for yard died"}],
    }
    status.update(overrides)
    return status


def test_written_status_reads_back_with_age_and_mode_0600_despite_the_umask(tmp_path):
    path = tmp_path / "status.json"
    old_umask = os.umask(0o022)  # a shell's umask: the file is private all the same
    try:
        write_status(path, sample_status())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = read_status(path, now=NOW)
    assert got["device_id"] == "pi-gate"
    assert got["cameras"]["gate"]["segments"] == 1234
    assert got["age_s"] == pytest.approx(2.0)
    assert got["stale"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left behind


def test_status_older_than_the_limit_is_marked_stale_not_refused(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample_status(updated_at=rfc3339(NOW - STALE_AFTER_S - 5)))
    got = read_status(path, now=NOW)
    assert got["stale"] is True
    assert got["age_s"] == pytest.approx(STALE_AFTER_S + 5)
    assert "WARNING: status is 35s old" in format_status(got, NOW)


def test_status_without_updated_at_falls_back_to_file_mtime(tmp_path):
    path = tmp_path / "status.json"
    status = sample_status()
    del status["updated_at"]
    write_status(path, status)
    os.utime(path, (NOW - 100, NOW - 100))
    got = read_status(path, now=NOW)
    assert got["stale"] is True and got["age_s"] == pytest.approx(100)


def test_missing_status_file_says_to_check_the_daemon(tmp_path):
    with pytest.raises(EdgerecError, match=r"no status file at .*status\.json: is the daemon running\?"):
        read_status(tmp_path / "status.json", now=NOW)


def test_damaged_status_file_is_a_clear_error(tmp_path):
    path = tmp_path / "status.json"
    path.write_text('{"version": ')
    with pytest.raises(EdgerecError, match="is damaged"):
        read_status(path)
    path.write_text("[1, 2]")
    with pytest.raises(EdgerecError, match="not a JSON object"):
        read_status(path)


def test_rewrite_replaces_the_whole_file_even_when_it_shrinks(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample_status(last_errors=[{"at": "x", "message": "e" * 5000}]))
    write_status(path, {"state": "stopped", "updated_at": rfc3339(NOW)})
    assert json.loads(path.read_text()) == {"state": "stopped", "updated_at": rfc3339(NOW)}


def test_concurrent_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample_status())
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                read_status(path, now=NOW)
            except EdgerecError as exc:
                problems.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            errors = [{"at": "x", "message": "m" * (i * 37)}]
            write_status(path, sample_status(incidents_open=i, last_errors=errors))
    finally:
        stop.set()
        t.join(timeout=10)
    assert problems == []
    assert read_status(path, now=NOW)["incidents_open"] == 299


def test_unserialisable_values_are_written_as_text_rather_than_crashing(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, {"data_dir": tmp_path, "updated_at": rfc3339(NOW)})
    assert read_status(path, now=NOW)["data_dir"] == str(tmp_path)


@pytest.fixture
def utc_local_time(monkeypatch):
    """Local time is UTC: the human output's local times are predictable."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_format_status_summarises_daemon_cameras_disk_incidents_and_errors(utc_local_time):
    text = format_status({**sample_status(), "age_s": 2.0, "stale": False}, NOW)
    lines = text.splitlines()
    assert lines[0] == "edgerec 0.1.0 device pi-gate: recording (pid 4321, up 3d 4h)"
    assert "clock: synced" in lines
    assert "  gate: recording, connected, last packet 0.0s ago, 25.0 fps, 2.10 Mbit/s" in lines
    assert "    segments 1234 (12.3 GB), oldest from 27d 23h ago, newest ends 30s ago" in lines
    assert "    health ok, reconnects 3, gaps 1" in lines
    assert "  yard: backoff, not connected, no packet yet, 0.0 fps, 0 kbit/s" in lines
    assert "    health covered, reconnects 7, gaps 2" in lines
    # The current error with its time; the camera that recovered shows its error as past, with both times.
    assert ("    ERROR now, since 2024-05-01 11:55:00 UTC (last seen 2.0s ago): rtsp://10.0.0.9/s1: "
            "connection refused") in lines
    assert "    past errors (ended; the camera recovered), last 1:" in lines
    assert ("      2024-05-01 11:00:00 UTC .. 2024-05-01 11:00:20 UTC: stalled: no packet for 10.0 s while "
            "recording") in lines
    assert not any(line.startswith("    ERROR") for line in text.split("  yard:")[0].splitlines())
    assert "disk: 45.2 GB free (62.1%) of 58.0 GB, 12.8 GB used" in lines
    assert "retention: 28 days, oldest footage 27d 23h, last sweep 4m 0s ago (deleted 12)" in lines
    assert "incidents: 2 open, 1.2 GB held" in lines
    assert f"audit log: 57 lines, head 57:{'ab' * 32}" in lines
    assert "mqtt: connected (queued=0)" in lines
    assert lines[-2:] == ["recent daemon errors (a record, not necessarily still so):",
                          "  2024-05-01 11:50:00 UTC (10m 0s ago): recorder for yard died"]
    assert "WARNING" not in text and "NOT SYNCED" not in text


def test_format_status_flags_unsynced_clock_disk_full_and_stopped_daemon():
    status = sample_status(
        state="stopped", clock={"synced": False},
        retention={"days": 28, "last_sweep": None, "deleted_last_sweep": None, "disk_full": True},
        mqtt={"enabled": False}, uncatalogued_segments=3,
    )
    text = format_status({**status, "stale": True, "age_s": 500.0}, NOW)
    assert text.startswith("DAEMON STOPPED at ")
    assert "clock: NOT SYNCED" in text
    assert "DISK FULL" in text
    assert "CATALOG BEHIND: 3 sealed segments" in text
    assert "CATALOG BEHIND" not in format_status(sample_status(uncatalogued_segments=0), NOW)
    assert "last sweep never" in text
    assert "mqtt: disabled" in text


def test_format_status_shows_a_camera_that_is_down_and_its_last_gap():
    status = sample_status()
    cam = next(iter(status["cameras"].values()))
    cam.update(down_since=rfc3339(NOW - 90), down_reason="read timeout",
               last_gap={"from": rfc3339(NOW - 400), "to": rfc3339(NOW - 390), "reason": "stalled"})
    text = format_status(status, NOW)
    assert "DOWN since " in text and "(1m 30s ago): read timeout" in text
    assert "last gap " in text and ": stalled" in text


def test_format_status_survives_a_nearly_empty_status():
    text = format_status({"updated_at": rfc3339(NOW)}, datetime.fromtimestamp(NOW, UTC))
    assert "edgerec ? device ?: ? (pid ?, up ?)" in text
    assert "cameras: 0" in text
    assert "audit log" not in text  # a daemon from before the head was published


def test_human_units():
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(None) == "?"
    assert human_duration(0.25) == "0.2s"
    assert human_duration(42) == "42s"
    assert human_duration(303) == "5m 3s"
    assert human_duration(7800) == "2h 10m"
    assert human_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h"


# ----- where the file is -------------------------------------------------------------------------------
def test_daemon_writes_to_status_file_else_the_runtime_directory_else_the_data_dir(tmp_path):
    data = tmp_path / "data"
    run = {"RUNTIME_DIRECTORY": "/run/edgerec:/run/other"}
    assert daemon_status_path(tmp_path / "s.json", data, run) == tmp_path / "s.json"
    assert daemon_status_path(None, data, run) == Path("/run/edgerec/status.json")
    assert daemon_status_path(None, data, {}) == data / "status.json"
    assert daemon_status_path(None, data, {"RUNTIME_DIRECTORY": "relative"}) == data / "status.json"


def test_status_command_looks_only_at_a_configured_file_else_everywhere_the_daemon_may_write(tmp_path):
    data = tmp_path / "data"
    assert status_path_candidates(tmp_path / "s.json", data, {}) == [tmp_path / "s.json"]
    assert status_path_candidates(None, data, {"RUNTIME_DIRECTORY": str(tmp_path / "rt")}) == [
        tmp_path / "rt" / "status.json", SERVICE_RUNTIME_DIR / "status.json", data / "status.json"]
    assert status_path_candidates(None, data, {"RUNTIME_DIRECTORY": str(SERVICE_RUNTIME_DIR)}) == [
        SERVICE_RUNTIME_DIR / "status.json", data / "status.json"]


def test_read_daemon_status_takes_the_freshest_file_of_this_device(tmp_path):
    old, fresh, other = tmp_path / "old.json", tmp_path / "fresh.json", tmp_path / "other.json"
    write_status(old, sample_status(updated_at=rfc3339(NOW - 3600)))
    write_status(fresh, sample_status(updated_at=rfc3339(NOW - 1)))
    write_status(other, sample_status(device_id="pi-yard", updated_at=rfc3339(NOW)))
    status = read_daemon_status([tmp_path / "missing.json", old, other, fresh], device_id="pi-gate", now=NOW)
    assert status["status_file"] == str(fresh)
    assert status["stale"] is False
    with pytest.raises(EdgerecError, match=r"no status file at .*missing\.json or .*other\.json: is the"):
        read_daemon_status([tmp_path / "missing.json", other], device_id="pi-gate", now=NOW)


def test_status_location_is_read_from_a_config_that_fails_validation(tmp_path):
    cfg = tmp_path / "edgerec.yaml"
    cfg.write_text("device_id: pi-gate\ndata_dir: data\nsegment_seconds: -5\nstatus_file: /run/x/s.json\n")
    expected = StatusLocation(Path("/run/x/s.json"), tmp_path / "data", "pi-gate")
    assert location_from_raw_config(cfg) == expected
    cfg.write_text("data_dir: [unclosed\n")
    assert location_from_raw_config(cfg) is None
    cfg.write_text("device_id: pi-gate\n")
    assert location_from_raw_config(cfg) is None
    assert location_from_raw_config(tmp_path / "missing.yaml") is None


def test_leftover_status_file_is_removed_once(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample_status())
    assert remove_leftover(path)
    assert not path.exists()
    assert not remove_leftover(path)


def test_format_status_prints_chain_heads_as_verify_head_takes_them():
    from edgerec.chainheads import parse_chain_head

    heads = {"gate": {"sequence": 8123, "digest": "5b" * 32, "start": rfc3339(NOW - 10)}}
    text = format_status(sample_status(chain_heads=heads), NOW)
    lines = text.splitlines()
    at = lines.index("chain heads (for edgerec verify --head):")
    printed = lines[at + 1].split()[0]
    assert printed == f"gate=8123:{'5b' * 32}" and parse_chain_head(printed).sequence == 8123
    assert "chain heads" not in format_status(sample_status(), NOW)  # a daemon from before: no lines
