"""The offloader's backlog and last error in the daemon's status and on MQTT: the pure parts
(``offloadstatus``, the pass's backlog, what is news), then the real daemon, the real `edgerec offload`,
a private mosquitto and a real S3 API server (moto) on loopback ports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edgerec import offloadstatus, statusfile
from edgerec.daemon.status import read_offload, status_news
from edgerec.offload import PassResult
from tests.helpers.broker import Broker, Listener, needs_mosquitto
from tests.helpers.daemon import Daemon, OfficerKey, run_cli
from tests.helpers.mqtt_daemon import make_setup, wait_for_segments, wait_online
from tests.helpers.s3_server import ACCESS_KEY, SECRET_KEY, Outage, S3Server, needs_moto, s3  # noqa: F401

BUCKET = "evidence"
NOW = 1_800_000_000.0


def _write(path: Path, device_id: str = "pi1", age_s: float = 0.0, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - age_s))
    doc = {"device_id": device_id, "updated_at": updated, "state": "uploading", "backlog_segments": 3,
           "backlog_bytes": 3000, "oldest_waiting": "2027-01-15T08:00:00Z", "last_upload": None,
           "last_error": None, "last_error_at": None, **fields}
    statusfile.write_status(path, doc)
    return path


# ----- pure parts ------------------------------------------------------------------------------------------
def test_readers_look_in_the_offload_units_runtime_directory_first() -> None:
    data = Path("/var/lib/edgerec")
    # The recorder's unit has RUNTIME_DIRECTORY=/run/edgerec; the offloader's file is in its own.
    assert offloadstatus.candidates(data, {"RUNTIME_DIRECTORY": "/run/edgerec"}) == [
        Path("/run/edgerec-offload/offload.json"), Path("/run/edgerec/offload.json"), data / "offload.json"]
    assert offloadstatus.status_path(data, {"RUNTIME_DIRECTORY": "/run/edgerec-offload"}) \
        == Path("/run/edgerec-offload/offload.json")
    assert offloadstatus.status_path(data, {}) == data / "offload.json"


def test_the_freshest_file_of_this_device_wins_and_an_old_one_is_stale(tmp_path: Path) -> None:
    old = _write(tmp_path / "a" / "offload.json", age_s=100, backlog_segments=9)
    fresh = _write(tmp_path / "b" / "offload.json", age_s=1, backlog_segments=2)
    other = _write(tmp_path / "c" / "offload.json", device_id="pi2", age_s=0, backlog_segments=7)
    damaged = tmp_path / "d" / "offload.json"
    damaged.parent.mkdir()
    damaged.write_text("{half")
    status = offloadstatus.read([damaged, old, other, fresh], "pi1", now=NOW)
    assert status is not None and status["backlog_segments"] == 2 and status["stale"] is False
    status = offloadstatus.read([old], "pi1", now=NOW)
    assert status is not None and status["stale"] is True and status["age_s"] == pytest.approx(100)
    assert offloadstatus.read([tmp_path / "none.json"], "pi1", now=NOW) is None


def test_the_daemons_offload_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "offload.json", age_s=45, state="error", last_error="store unreachable ...")
    assert read_offload(False, [path], "pi1") == {"enabled": False}
    section = offloadstatus.section(offloadstatus.read([path], "pi1", now=NOW), enabled=True)
    # A stale file keeps the last known backlog and says it is stale.
    assert section["stale"] is True and section["backlog_segments"] == 3 and section["state"] == "error"
    assert section["last_error"] == "store unreachable ..." and "pid" not in section
    missing = read_offload(True, [tmp_path / "none.json"], "pi1")
    assert missing["state"] == "not_running" and missing["stale"] is True
    assert missing["backlog_segments"] is None
    line = offloadstatus.format_line(section)
    assert "STALE" in line and "waiting 3 segments" in line and "store unreachable" in line


def test_a_new_last_error_or_a_stopped_offloader_is_news_and_the_backlog_is_not() -> None:
    def status(**offload: Any) -> dict[str, Any]:
        base = {"enabled": True, "state": "uploading", "backlog_segments": 3, "backlog_bytes": 3000,
                "last_error": None, "stale": False}
        return {"state": "recording", "cameras": {}, "offload": {**base, **offload}}

    before = status_news(status())
    assert status_news(status(backlog_segments=0, backlog_bytes=0, state="idle")) == before
    assert status_news(status(last_error="store unreachable", state="error")) != before
    assert status_news(status(stale=True)) != before
    assert status_news({"state": "recording", "cameras": {}, "offload": {"enabled": False}}) \
        == status_news({"state": "recording", "cameras": {}, "offload": None})


def test_the_backlog_is_what_the_pass_has_not_uploaded_yet() -> None:
    result = PassResult()
    result.wait("a", 300, 10)
    result.wait("b", 100, 20)
    result.wait("c", 200, 30)
    assert (result.backlog_segments, result.backlog_bytes, result.oldest_waiting_ns) == (3, 60, 100)
    result.done("b")
    assert (result.backlog_segments, result.backlog_bytes, result.oldest_waiting_ns) == (2, 40, 200)
    result.done("a")
    result.done("c")
    assert result.empty and result.oldest_waiting_ns is None


# ----- through the daemon, the broker and a store ----------------------------------------------------------
def _offload_settings(tmp_path: Path, endpoint: str) -> dict[str, Any]:
    secret = tmp_path / "s3.secret"
    secret.write_text(SECRET_KEY + "\n")
    secret.chmod(0o600)
    return {"enabled": True, "endpoint": endpoint, "bucket": BUCKET, "access_key_id": ACCESS_KEY,
            "secret_access_key_file": str(secret)}


def _offload(message: Any) -> dict[str, Any]:
    return message.json().get("offload") or {}


@needs_mosquitto
@needs_moto
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_retained_status_carries_the_backlog_and_it_drops_to_zero_after_an_offload_pass(
        tmp_path: Path, officer: OfficerKey, s3: S3Server) -> None:  # noqa: F811
    s3.make_bucket(BUCKET)
    relay = Outage(s3.port)  # not up yet: the store is unreachable for the first pass
    (tmp_path / "mosquitto").mkdir()
    with Broker(tmp_path / "mosquitto") as broker:
        offload = _offload_settings(tmp_path, relay.endpoint)
        setup = make_setup(tmp_path, officer, broker.port, offload=offload)
        status_topic = f"{setup.base}/status"
        with Listener(broker, [f"{setup.base}/#"]) as listener, \
                Daemon(setup.config, tmp_path / "daemon.log") as daemon:
            wait_online(listener, setup, daemon)
            listener.wait_for(status_topic, lambda m: _offload(m).get("state") == "not_running", timeout_s=15)
            wait_for_segments(setup.data_dir, 3, "three sealed segments", daemon)
            opened = run_cli("incident", "open", "-c", str(setup.config), "--id", "vandal", "--from",
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600)))
            assert opened.returncode == 0, opened.stderr

            failed = run_cli("offload", "-c", str(setup.config), "--once")
            assert failed.returncode == 1 and "store unreachable" in failed.stderr, failed.stderr
            # A new last error is news: published at once, not after status_interval_s (30 s).
            down = _offload(listener.wait_for(status_topic, lambda m: bool(_offload(m).get("last_error")),
                                              timeout_s=15))
            assert down["state"] == "error" and "store unreachable" in down["last_error"]
            assert down["backlog_segments"] >= 3 and down["backlog_bytes"] > 0 and down["oldest_waiting"]
            assert down["stale"] is False

            relay.up()
            try:
                done = run_cli("offload", "-c", str(setup.config), "--once")
                assert done.returncode == 0, done.stderr
                up = _offload(listener.wait_for(
                    status_topic, lambda m: _offload(m).get("state") == "idle"
                    and _offload(m).get("last_error") is None, timeout_s=15))
            finally:
                relay.down()
            assert up["backlog_segments"] == 0 and up["backlog_bytes"] == 0 and up["oldest_waiting"] is None
            assert up["last_upload"] is not None
            # Retained: a client subscribing now gets the empty backlog.
            with Listener(broker, [status_topic]) as late:
                retained = late.wait_for(status_topic, lambda m: m.retain)
            assert _offload(retained)["backlog_segments"] == 0
            # `edgerec status` shows the same.
            shown = json.loads(run_cli("status", "-c", str(setup.config), "--json").stdout)["offload"]
            assert shown["backlog_segments"] == 0 and shown["enabled"] is True
            assert daemon.terminate() == 0, daemon.log()
