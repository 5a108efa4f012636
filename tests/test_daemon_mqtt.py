"""MQTT through the real daemon: ``edgerec run`` as a subprocess recording the built-in test camera,
talking to a private mosquitto on a loopback port.

Proves what an operator relies on: retained availability, status and Home Assistant discovery; incident
commands acknowledged within a second and holding the right footage (checked with the real ``edgerec
incident ls`` and ``edgerec retention --dry-run``); refused commands changing nothing; ``offline`` from
the Last Will on kill -9 and from the daemon on a clean stop; recording carrying on, gap-free, through a
broker outage and with no broker at all; commands sent while the daemon was down applied when it returns;
TLS with username/password and the ACL docs/mqtt.md recommends, and TLS checked against the system's CA
store; reload (Home Assistant entities of removed cameras cleared, also when the MQTT settings change) and
disk events.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerec.catalog import Catalog
from edgerec.timefmt import rfc3339
from tests.helpers.broker import (
    LOOPBACK,
    Broker,
    Listener,
    Received,
    make_test_ca,
    needs_mosquitto,
    retained_on,
)
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for
from tests.helpers.events import Event
from tests.helpers.media import free_port
from tests.helpers.mqtt_daemon import (
    CAMERA,
    REPLY_DEADLINE_S,
    START_TIMEOUT_S,
    Running,
    camera_entities,
    command,
    incidents_cli,
    is_offline,
    is_online,
    make_setup,
    reply_to,
    running_daemon,
    sealed_segments,
    wait_for_segments,
    wait_online,
)

pytestmark = [needs_mosquitto,
              pytest.mark.timeout(90)]

DAY_NS = 86_400 * 10**9


# ----- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, broker: Broker,
            officer: OfficerKey) -> Iterator[Running]:
    """One daemon recording the test camera, shared by the tests that do not stop it."""
    with running_daemon(tmp_path_factory.mktemp("running"), officer, broker) as r:
        yield r


# ----- with the shared daemon ---------------------------------------------------------------------------
def test_availability_status_and_discovery_arrive_retained(running: Running, broker: Broker) -> None:
    setup = running.setup
    # The status says the camera records and the link is subscribed (published on those changes, not
    # after status_interval_s, which is 30 s).
    try:
        running.listener.wait_for(f"{setup.base}/status",
                                  lambda m: m.json()["cameras"].get("gate", {}).get("state") == "recording"
                                  and (m.json().get("mqtt") or {}).get("subscribed"), timeout_s=15)
    except AssertionError as exc:  # seen once under heavy load: keep what the daemon said for the next time
        lines = [line for line in running.daemon.log().splitlines() if "edgerec.segfile" not in line]
        raise AssertionError(f"{exc}\n--- daemon log (no segment lines) ---\n" + "\n".join(lines)) from None
    # A client subscribing now gets the retained messages.
    with Listener(broker, [f"{setup.base}/#", setup.discovery_node]) as late:
        online = late.wait_for(setup.availability)
        status = late.wait_for(f"{setup.base}/status").json()
        incidents = late.wait_for(f"{setup.base}/incidents")
        discovery = late.wait_for(f"homeassistant/binary_sensor/edgerec_{setup.device_id}/cam_gate_recording"
                                  "/config")
    assert online.retain and online.payload == b"online"
    assert late.on(f"{setup.base}/status")[0].retain and discovery.retain
    # (The list may also be republished live right then, so its retained copy is read from the broker.)
    assert f"{setup.base}/incidents" in retained_on(broker, f"{setup.base}/+")
    assert status["device_id"] == setup.device_id
    assert status["mqtt"]["connected"] is True and status["mqtt"]["subscribed"] is True
    assert set(status["cameras"]) == {"gate"}
    assert isinstance(incidents.json(), list)
    config = discovery.json()
    assert config["state_topic"] == f"{setup.base}/status"
    assert config["availability_topic"] == setup.availability


# Health at fast settings: every keyframe analysed, alarms after a second or three.
FAST_HEALTH = {"analysis_interval_s": 0, "dark_after_s": 1, "frozen_after_s": 3, "blurred_after_s": 3,
               "moved_after_s": 3, "clear_after_s": 1}


def test_tamper_sensor_reports_a_covered_lens_and_not_the_test_camera(
        tmp_path: Path, officer: OfficerKey, broker: Broker) -> None:
    cameras = [{**CAMERA, "health": True},  # the built-in test camera: must stay "ok"
               {"name": "lens", "url": "lavfi:color=c=black:size=160x120:rate=10", "health": True}]
    setup = make_setup(tmp_path, officer, broker.port, cameras=cameras, health=FAST_HEALTH,
                       mqtt={"discovery": True})
    node = f"edgerec_{setup.device_id}"

    def health_of(m: Received, camera: str) -> dict[str, Any]:
        return m.json()["cameras"].get(camera, {}).get("health") or {}

    with Listener(broker, [f"{setup.base}/#", setup.discovery_node]) as listener, \
            Daemon(setup.config, tmp_path / "d.log") as daemon:
        wait_online(listener, setup, daemon)
        config = listener.wait_for(f"homeassistant/binary_sensor/{node}/cam_lens_tamper/config", timeout_s=15)
        tampered = listener.wait_for(f"{setup.base}/status",
                                     lambda m: health_of(m, "lens").get("state") == "dark", timeout_s=30)
        event = listener.wait_for(f"{setup.base}/events", lambda m: m.json().get("event") == "tamper")
        # The test camera has been analysed for a while by now, on every keyframe.
        wait_for(lambda: any(health_of(m, "gate").get("keyframes", 0) >= 8
                             for m in listener.on(f"{setup.base}/status")),
                 30, "eight keyframes of the test camera analysed")
        statuses = listener.on(f"{setup.base}/status")
        retained = retained_on(broker, setup.discovery_node)
        events = [m.json() for m in listener.on(f"{setup.base}/events") if m.json().get("event") == "tamper"]
        assert daemon.terminate() == 0, daemon.log()
    # The discovery config is retained, with the current keys and no deprecated object_id.
    cfg = config.json()
    assert json.loads(retained[config.topic]) == cfg and "object_id" not in cfg
    assert cfg["default_entity_id"] == f"binary_sensor.{node}_cam_lens_tamper"
    assert cfg["unique_id"] == f"{node}_cam_lens_tamper"
    assert cfg["device_class"] == "tamper"
    assert cfg["state_topic"] == cfg["json_attributes_topic"] == f"{setup.base}/status"
    assert "health" in cfg["value_template"] and "condition" in cfg["json_attributes_template"]
    # What its templates read: the camera's health state and active conditions in the status.
    assert health_of(tampered, "lens")["active"] == ["dark"]
    assert event.json()["camera"] == "lens" and event.json()["condition"] == "dark" and event.json()["active"]
    assert [e["camera"] for e in events] == ["lens"]
    assert all(health_of(m, "gate").get("state", "ok") == "ok" for m in statuses)


def test_incident_command_is_acknowledged_within_a_second_and_holds_its_segments(running: Running) -> None:
    setup, listener = running.setup, running.listener
    segs = wait_for_segments(setup.data_dir, 4, "four sealed segments", running.daemon)
    first, second = segs[0], segs[1]
    # A window strictly inside the first two segments (pre/post roll are 0): exactly those two are held.
    incident_id = f"INC-{uuid.uuid4().hex[:8]}"
    reply = command(listener, setup, {"action": "open", "id": incident_id, "camera": "gate",
                                      "from": rfc3339(first.start_ns + 1_000_000),
                                      "to": rfc3339(second.end_ns - 1_000_000),
                                      "reason": "test", "by": "pytest"}, "t-open")
    assert reply == {"id": incident_id, "action": "open", "ok": True, "error": None, "duplicate": False,
                     "held_segments": 2, "held_bytes": first.size_bytes + second.size_bytes,
                     "device_id": setup.device_id, "transaction": "t-open"}

    opened = listener.wait_for(f"{setup.base}/events", lambda m: m.json().get("id") == incident_id)
    assert opened.json()["event"] == "incident_opened"
    published = listener.wait_for(f"{setup.base}/incidents",
                                  lambda m: any(i["id"] == incident_id for i in m.json()), timeout_s=5)
    assert [i["held_segments"] for i in published.json() if i["id"] == incident_id] == [2]
    assert [i["id"] for i in incidents_cli(setup) if i["id"] == incident_id] == [incident_id]

    # 29 days on, retention would delete every segment except the two held ones.
    later = rfc3339(time.time_ns() + 29 * DAY_NS)
    dry = json.loads(run_cli("retention", "-c", str(setup.config), "--dry-run", "--now", later, "--json",
                             check=True).stdout)
    doomed = {d["path"] for d in dry["deleted"]}
    assert first.path not in doomed and second.path not in doomed
    assert {s.path for s in segs[2:]} <= doomed

    again = command(listener, setup, {"action": "close", "id": incident_id, "by": "pytest"}, "t-close")
    assert again["ok"] is True and again["duplicate"] is False
    closed = [i for i in incidents_cli(setup, "--all") if i["id"] == incident_id]
    assert len(closed) == 1 and closed[0]["closed"] is not None
    listener.wait_for(f"{setup.base}/incidents", lambda m: all(i["id"] != incident_id for i in m.json())
                      and m.at_monotonic > opened.at_monotonic, timeout_s=5)


@pytest.mark.parametrize(("payload", "fragment"), [
    (b"{not json", "not valid JSON"),
    (json.dumps({"action": "open", "id": "BIG", "camera": "*", "reason": "x" * 20_000}).encode(),
     "too large"),
    ({"action": "open", "id": "INC-NOPE", "camera": "nosuchcam", "from": "2026-01-01T00:00:00Z"},
     "unknown camera"),
    ({"action": "close", "id": "INC-NEVER-OPENED"}, "unknown incident"),
], ids=["not-json", "oversized", "unknown-camera", "close-unknown-id"])
def test_bad_command_gets_an_error_reply_and_changes_nothing(running: Running, payload: Any,
                                                            fragment: str) -> None:
    setup = running.setup
    before = incidents_cli(setup, "--all")
    transaction = f"t-{uuid.uuid4().hex[:8]}"
    if isinstance(payload, bytes):  # no transaction in a payload that is not an object: match the error
        running.listener.clear()
        running.listener.publish(setup.command, payload)
        reply = running.listener.wait_for(setup.result, lambda m: fragment in (m.json().get("error") or ""),
                                          timeout_s=REPLY_DEADLINE_S + 5).json()
    else:
        reply = command(running.listener, setup, payload, transaction)
        assert reply["transaction"] == transaction
    assert reply["ok"] is False and fragment in reply["error"]
    assert reply["held_segments"] == 0 and reply["device_id"] == setup.device_id
    assert incidents_cli(setup, "--all") == before
    assert running.daemon.proc.poll() is None


def test_status_is_not_published_per_segment_but_a_change_goes_out_within_a_second_or_two(
        running: Running, broker: Broker) -> None:
    """1 s segments, status_interval_s 30: a sealed segment is not news, so a window of several seals sees
    at most one status (a change such as the link's subscription may fall in it), not one per seal. A
    change that is news (an incident opened) is published at once."""
    setup, listener = running.setup, running.listener
    status_topic = f"{setup.base}/status"

    def recording_and_subscribed() -> bool:
        # The retained copy: the daemon may have got there while an earlier test had the listener, and
        # nothing new is published until news or the next periodic status.
        status = json.loads(retained_on(broker, status_topic).get(status_topic, b"{}"))
        return (status.get("cameras", {}).get("gate", {}).get("state") == "recording"
                and bool(status.get("mqtt", {}).get("subscribed")))

    wait_for(recording_and_subscribed, 15, "a retained status: gate recording, commands subscribed")
    window_s = 6.0
    time.sleep(1.5)  # let start-up's changes (camera up, subscription) go out before the window
    before = len(sealed_segments(setup.data_dir))
    listener.clear()
    time.sleep(window_s)
    sealed = len(sealed_segments(setup.data_dir)) - before
    statuses = listener.on(status_topic)
    assert sealed >= 4, f"only {sealed} segments sealed in {window_s} s"
    assert len(statuses) <= 1, f"{len(statuses)} statuses while {sealed} segments were sealed"

    incident_id = f"NEWS-{uuid.uuid4().hex[:8]}"
    sent = time.monotonic()
    reply = command(listener, setup, {"action": "open_now", "id": incident_id, "by": "pytest"}, "t-news")
    assert reply["ok"] is True
    news = listener.wait_for(status_topic, lambda m: m.json()["incidents_open"] >= 1, timeout_s=5)
    assert news.at_monotonic - sent <= 2.5
    assert command(listener, setup, {"action": "close", "id": incident_id, "by": "pytest"}, "t-news2")["ok"]


def test_replies_name_the_action_as_the_command_did(running: Running) -> None:
    setup, listener = running.setup, running.listener
    incident_id = f"NOW-{uuid.uuid4().hex[:8]}"
    opened = command(listener, setup, {"action": "open_now", "id": incident_id, "by": "pytest"}, "t-now")
    assert opened["action"] == "open_now" and opened["ok"] is True and opened["id"] == incident_id
    closed = command(listener, setup, {"action": "close", "id": incident_id, "by": "pytest"}, "t-close-now")
    assert closed["action"] == "close" and closed["ok"] is True
    refused = command(listener, setup, {"action": "explode", "id": "X"}, "t-explode")
    assert refused["ok"] is False and refused["action"] is None
    assert refused["error"] == "unknown action 'explode' (open, close or open_now)"


def test_incident_opened_with_the_cli_is_published(running: Running) -> None:
    setup = running.setup
    wait_for_segments(setup.data_dir, 1, "a sealed segment", running.daemon)
    incident_id = f"CLI-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run_cli("incident", "open", "-c", str(setup.config), "--id", incident_id, "--camera", "gate",
            "--from", rfc3339(time.time_ns() - 60 * 10**9) or "", "--by", "pytest", check=True)
    # The daemon notices the catalog change on its next status snapshot (every 2 s).
    running.listener.wait_for(f"{setup.base}/incidents",
                              lambda m: any(i["id"] == incident_id for i in m.json()), timeout_s=6)
    status = running.listener.wait_for(
        f"{setup.base}/status", lambda m: m.at_monotonic > started and m.json()["incidents_open"] >= 1,
        timeout_s=6).json()
    assert status["held_bytes"] > 0
    run_cli("incident", "close", "-c", str(setup.config), "--id", incident_id, "--by", "pytest", check=True)


# ----- daemons of their own -----------------------------------------------------------------------------
def test_kill_9_makes_the_broker_publish_offline(tmp_path: Path, broker: Broker, officer: OfficerKey) -> None:
    setup = make_setup(tmp_path, officer, broker.port)
    with Listener(broker, [setup.availability]) as listener, Daemon(setup.config, tmp_path / "d.log") as d:
        wait_online(listener, setup, d)
        d.kill()
        listener.wait_for(setup.availability, is_offline, timeout_s=5)
    with Listener(broker, [setup.availability]) as late:
        assert late.wait_for(setup.availability).payload == b"offline"  # the will is retained


def test_reload_with_a_camera_removed_drops_its_entities_and_clean_stop_publishes_offline(
        tmp_path: Path, broker: Broker, officer: OfficerKey) -> None:
    yard = {**CAMERA, "name": "yard"}
    setup = make_setup(tmp_path, officer, broker.port, cameras=[CAMERA, yard])
    yard_recording = f"homeassistant/binary_sensor/edgerec_{setup.device_id}/cam_yard_recording/config"
    with Listener(broker, [f"{setup.base}/#", setup.discovery_node]) as listener, \
            Daemon(setup.config, tmp_path / "d.log") as daemon:
        listener.wait_for(yard_recording, lambda m: m.payload != b"", timeout_s=START_TIMEOUT_S)
        setup.reload(daemon, cameras=[CAMERA])
        listener.wait_for(yard_recording, lambda m: m.payload == b"", timeout_s=10)
        listener.wait_for(f"{setup.base}/status", lambda m: set(m.json()["cameras"]) == {"gate"}, timeout_s=5)
        # Only the cameras changed: the same connection carries on.
        assert not [m for m in listener.on(setup.availability) if is_offline(m)]

        assert daemon.terminate() == 0, daemon.log()
        listener.wait_for(setup.availability, is_offline, timeout_s=5)
    assert daemon.events("mqtt stopped")


def test_reload_changing_mqtt_settings_clears_the_entities_of_a_removed_camera(
        tmp_path: Path, broker: Broker, officer: OfficerKey) -> None:
    yard = {**CAMERA, "name": "yard"}
    setup = make_setup(tmp_path, officer, broker.port, cameras=[CAMERA, yard])
    gate_entities, yard_entities = camera_entities(setup, "gate"), camera_entities(setup, "yard")
    with Listener(broker, [setup.availability]) as listener, \
            Daemon(setup.config, tmp_path / "d.log") as daemon:
        wait_online(listener, setup, daemon)
        wait_for(lambda: gate_entities | yard_entities <= set(retained_on(broker, setup.discovery_node)), 15,
                 "both cameras' entities retained")
        listener.clear()
        # yard goes, and the MQTT settings change too: the link is replaced, not reconfigured.
        setup.reload(daemon, cameras=[CAMERA],
                     mqtt={"enabled": True, "host": LOOPBACK, "port": broker.port, "status_interval_s": 20,
                           "client_id": f"edgerec-{setup.device_id}-2"})
        listener.wait_for(setup.availability, is_offline, timeout_s=10)  # the old link's goodbye
        listener.wait_for(setup.availability, is_online, timeout_s=15)  # the new link
        left = retained_on(broker, setup.discovery_node)
        assert not yard_entities & set(left), daemon.log()
        assert gate_entities <= set(left)
        assert daemon.events("mqtt discovery entities removed", count=5)
        assert daemon.terminate() == 0, daemon.log()


def test_reload_turning_mqtt_off_says_offline_and_records_on(tmp_path: Path, broker: Broker,
                                                            officer: OfficerKey) -> None:
    setup = make_setup(tmp_path, officer, broker.port)
    with Listener(broker, [setup.availability]) as listener, \
            Daemon(setup.config, tmp_path / "d.log") as daemon:
        wait_online(listener, setup, daemon)
        listener.clear()
        setup.reload(daemon, mqtt={"enabled": False})
        listener.wait_for(setup.availability, is_offline, timeout_s=10)  # the old link's goodbye
        wait_for(lambda: daemon.events("mqtt stopped"), 10, "the old link stopped")
        before = len(sealed_segments(setup.data_dir))
        wait_for_segments(setup.data_dir, before + 2, "segments sealed after MQTT was turned off", daemon)
        assert not [m for m in listener.on(setup.availability) if is_online(m)]
        assert daemon.terminate() == 0, daemon.log()


def test_broker_outage_brings_the_daemon_back_online_with_no_gap_in_recording(
        tmp_path: Path, officer: OfficerKey) -> None:
    with Broker(tmp_path / "mosquitto", persistence=True) as own:
        setup = make_setup(tmp_path, officer, own.port)
        with Listener(own, [f"{setup.base}/#"]) as listener, \
                Daemon(setup.config, tmp_path / "d.log") as daemon:
            wait_online(listener, setup, daemon)
            before = len(wait_for_segments(setup.data_dir, 1, "a first segment", daemon))
            own.stop()
            # Several seconds without a broker, while the camera keeps being recorded.
            wait_for_segments(setup.data_dir, before + 4, "segments sealed while the broker is down", daemon)
            listener.clear()
            own.start()
            listener.wait_for(setup.availability, is_online, timeout_s=15)
            # (The broker restored the old retained status from its persistence file: skip that one.)
            status = listener.wait_for(f"{setup.base}/status", lambda m: m.json()["mqtt"]["connects"] >= 2,
                                       timeout_s=5).json()
            assert status["mqtt"]["connected"] is True
            assert daemon.terminate() == 0, daemon.log()
    segs = sealed_segments(setup.data_dir)
    assert [s.sequence for s in segs] == list(range(segs[0].sequence, segs[0].sequence + len(segs)))
    holes = [(a.end_ns, b.start_ns) for a, b in zip(segs, segs[1:], strict=False)
             if b.start_ns - a.end_ns > 200_000_000]
    assert not holes, f"footage missing between segments: {holes}"
    catalog = Catalog.open(setup.data_dir)
    try:
        assert catalog.count_gaps("gate") == 0
    finally:
        catalog.close()


def test_command_sent_while_the_daemon_is_stopped_is_applied_after_it_restarts(
        tmp_path: Path, officer: OfficerKey) -> None:
    with Broker(tmp_path / "mosquitto", persistence=True) as own:
        setup = make_setup(tmp_path, officer, own.port)
        with Listener(own, [setup.availability]) as listener, Daemon(setup.config, tmp_path / "d1.log") as d:
            wait_online(listener, setup, d)
            assert d.terminate() == 0, d.log()
            listener.wait_for(setup.availability, is_offline, timeout_s=5)
            listener.publish(setup.command, {"action": "open", "id": "INC-WHILE-DOWN", "camera": "*",
                                             "from": rfc3339(time.time_ns() - 10**9), "by": "pytest",
                                             "transaction": "queued"})
        own.restart()  # persistence: the daemon's session and the queued command survive this too
        events = f"{setup.base}/events"
        with Listener(own, [setup.result, events]) as listener, \
                Daemon(setup.config, tmp_path / "d2.log") as d:
            reply = listener.wait_for(setup.result, reply_to("queued"), timeout_s=START_TIMEOUT_S).json()
            assert reply["ok"] is True and reply["id"] == "INC-WHILE-DOWN"
            # Delivered the moment the daemon connects: its event is published like any other's.
            event = listener.wait_for(events, lambda m: m.json().get("event") == "incident_opened").json()
            assert event["id"] == "INC-WHILE-DOWN"
            assert [i["id"] for i in incidents_cli(setup)] == ["INC-WHILE-DOWN"]
            assert d.terminate() == 0, d.log()


def test_tls_username_password_and_the_documented_acl(tmp_path: Path, officer: OfficerKey) -> None:
    ca = make_test_ca(tmp_path / "ca")
    device_id = f"dev{uuid.uuid4().hex[:10]}"
    # The ACL docs/mqtt.md gives for a recorder, with its device id.
    acl = (f"user {device_id}\n"
           f"topic readwrite edgerec/{device_id}/#\n"
           "topic read edgerec/all/incident/set\n"
           "topic read homeassistant/status\n"
           f"topic write homeassistant/+/edgerec_{device_id}/+/config\n"
           "\nuser operator\ntopic readwrite #\n")
    password_file = tmp_path / "mqtt.password"
    password_file.write_text("s3cret-device\n")
    password_file.chmod(0o600)
    with Broker(tmp_path / "mosquitto", tls=ca, users={device_id: "s3cret-device", "operator": "op"},
                acl=acl) as own:
        setup = make_setup(tmp_path, officer, own.port, device_id=device_id,
                           mqtt={"username": device_id, "password_file": str(password_file),
                                 "tls": {"ca_file": str(ca.ca_cert)}})
        with Listener(own, [f"{setup.base}/#", setup.discovery_node], username="operator", password="op",
                      tls=ca) as listener, Daemon(setup.config, tmp_path / "d.log") as daemon:
            wait_online(listener, setup, daemon)
            listener.wait_for(f"{setup.base}/status")
            listener.wait_for(f"homeassistant/button/edgerec_{device_id}/open_incident_now/config")
            reply = command(listener, setup, {"action": "open_now", "by": "pytest"}, "tls")
            assert reply["ok"] is True and reply["id"].startswith("NOW-")
            # A site-wide command reaches it too (the ACL lets it read the site topic).
            listener.publish("edgerec/all/incident/set", {"action": "close", "id": reply["id"],
                                                          "transaction": "site"})
            assert listener.wait_for(setup.result, reply_to("site")).json()["ok"] is True
            assert daemon.terminate() == 0, daemon.log()
            listener.wait_for(setup.availability, is_offline, timeout_s=5)


def test_tls_without_ca_file_checks_the_broker_against_the_system_ca_store(
        tmp_path: Path, officer: OfficerKey, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_test_ca(tmp_path / "ca")
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):  # the daemons below get this environment
        monkeypatch.delenv(var, raising=False)
    with Broker(tmp_path / "mosquitto", tls=ca) as own:
        setup = make_setup(tmp_path, officer, own.port, mqtt={"tls": True})
        # The system's store does not know the test CA: a clear error, retries, and recording goes on.
        def refused() -> list[Event]:
            return [e for e in daemon.events() if e.logger == "edgerec.mqtt"
                    and e.name.startswith("mqtt connect failed") and f"127.0.0.1:{own.port}" in e.name]

        with Daemon(setup.config, tmp_path / "untrusting.log") as daemon:
            wait_for(lambda: len(refused()) >= 2, START_TIMEOUT_S, "two refused handshakes")
            wait_for_segments(setup.data_dir, 1, "a segment recorded all the same", daemon)
            status = json.loads(run_cli("status", "-c", str(setup.config), "--json", check=True).stdout)
            assert status["mqtt"]["connected"] is False
            assert "checked against the system's CA store" in status["mqtt"]["last_error"]
            assert daemon.terminate() == 0, daemon.log()
        assert {e.level for e in refused()} == {"error"}  # a set-up problem, not a warning
        assert "Traceback" not in daemon.log()
        # OpenSSL's default verify paths include $SSL_CERT_FILE: with the test CA there, it connects.
        trusting = {"SSL_CERT_FILE": str(ca.ca_cert)}
        with Listener(own, [f"{setup.base}/#"], tls=ca) as listener, \
                Daemon(setup.config, tmp_path / "trusting.log", env=trusting) as daemon:
            wait_online(listener, setup, daemon)
            listener.wait_for(f"{setup.base}/status", lambda m: m.json()["mqtt"]["connected"] is True)
            assert daemon.terminate() == 0, daemon.log()
            listener.wait_for(setup.availability, is_offline, timeout_s=5)


def test_daemon_records_with_the_broker_unreachable(tmp_path: Path, officer: OfficerKey) -> None:
    setup = make_setup(tmp_path, officer, free_port())  # nothing listens there
    with Daemon(setup.config, tmp_path / "d.log") as daemon:
        wait_for_segments(setup.data_dir, 2, "segments recorded without a broker", daemon)
        status = json.loads(run_cli("status", "-c", str(setup.config), "--json", check=True).stdout)
        assert status["mqtt"]["enabled"] is True and status["mqtt"]["connected"] is False
        assert status["cameras"]["gate"]["state"] == "recording"
        started = time.monotonic()
        assert daemon.terminate() == 0, daemon.log()
        assert time.monotonic() - started < 15


def test_disk_pressure_publishes_disk_events_and_the_status_at_once(tmp_path: Path, broker: Broker,
                                                                    officer: OfficerKey) -> None:
    setup = make_setup(tmp_path, officer, broker.port, retention={"sweep_interval_s": 3600})
    with Listener(broker, [f"{setup.base}/#"]) as listener, \
            Daemon(setup.config, tmp_path / "d.log") as daemon:
        wait_online(listener, setup, daemon)
        wait_for_segments(setup.data_dir, 2, "two segments", daemon)
        # A free-space mark no disk reaches: every segment goes, then recording pauses.
        setup.reload(daemon, retention={"sweep_interval_s": 3600, "min_free": "1000000T"})
        events = f"{setup.base}/events"
        low = listener.wait_for(events, lambda m: m.json()["event"] == "disk_low", timeout_s=10).json()
        assert low["deleted"] >= 2 and low["free_bytes"] < low["min_free_bytes"]
        listener.wait_for(events, lambda m: m.json()["event"] == "retention_swept")
        listener.wait_for(events, lambda m: m.json()["event"] == "disk_full")
        full = listener.wait_for(f"{setup.base}/status", lambda m: m.json()["state"] == "disk_full",
                                 timeout_s=3)
        assert full.json()["retention"]["disk_full"] is True

        setup.reload(daemon, retention={"sweep_interval_s": 3600})
        listener.wait_for(events, lambda m: m.json()["event"] == "disk_ok", timeout_s=10)
        listener.wait_for(f"{setup.base}/status", lambda m: m.json()["state"] == "recording", timeout_s=3)
        assert daemon.terminate() == 0, daemon.log()


def test_a_start_on_an_older_copy_of_the_data_directory_raises_rollback_suspected_from_the_broker(
        tmp_path: Path, officer: OfficerKey, broker: Broker) -> None:
    """The whole data directory (its heads file too) put back to an older copy: the daemon's own retained
    status on the broker still carries the newer audit head, and the start compares the log with it."""
    import shutil

    setup = make_setup(tmp_path, officer, broker.port)
    with Daemon(setup.config, tmp_path / "first.log") as daemon:
        wait_for_segments(setup.data_dir, 1, "first segment", daemon)
        assert daemon.terminate() == 0, daemon.log()
    old = tmp_path / "old-copy"
    shutil.copytree(setup.data_dir, old)
    with Daemon(setup.config, tmp_path / "second.log") as daemon, \
            Listener(broker, [f"{setup.base}/status"]) as listener:
        wait_for_segments(setup.data_dir, 1, "segments", daemon)
        run_cli("incident", "open", "-c", str(setup.config), "--id", "INC-R", "--from",
                rfc3339(time.time_ns()), check=True)
        published = listener.wait_for(f"{setup.base}/status",
                                      lambda m: m.json()["audit_head"]["lines"] >= 2).json()["audit_head"]
        assert daemon.terminate() == 0, daemon.log()
    shutil.rmtree(setup.data_dir)
    shutil.copytree(old, setup.data_dir)
    with Daemon(setup.config, tmp_path / "third.log") as daemon, \
            Listener(broker, [f"{setup.base}/events"]) as listener:
        event = listener.wait_for(f"{setup.base}/events",
                                  lambda m: m.json()["event"] == "rollback_suspected").json()
        assert event["source"] == "mqtt"
        assert event["remembered"].startswith(f"{published['lines']}:")
        wait_for_segments(setup.data_dir, 1, "recording goes on", daemon)
        status = json.loads(run_cli("status", "-c", str(setup.config), "--json", check=True).stdout)
        assert status["rollback_suspected"]["source"] == "mqtt"
        assert daemon.terminate() == 0, daemon.log()
