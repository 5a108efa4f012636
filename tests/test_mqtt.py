"""The MQTT link against a real mosquitto: availability and Last Will, retained status, commands and
replies (including MQTT v5 request/response), malformed input, broker restarts, persistent sessions,
TLS with passwords and ACLs, and Home Assistant discovery."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from edgerec.config import CameraConfig, Config, MqttConfig, TlsConfig
from edgerec.errors import CommandError, ConfigError
from edgerec.mqtt import (
    INTERNAL_ERROR,
    MAX_COMMAND_BYTES,
    OPEN_NOW_BUTTON_PAYLOAD,
    MqttLink,
    MqttLinkSettings,
    Topics,
    decode_command,
    describe_connect_failure,
    discovery_messages,
    discovery_removals,
    expand_open_now,
    finish_reply,
    open_now_id,
    read_password_file,
    stale_discovery_topics,
    status_due,
    unknown_action,
)
from edgerec.timefmt import rfc3339
from tests.helpers.broker import (
    LOOPBACK,
    Broker,
    Listener,
    make_test_ca,
    needs_mosquitto,
    retained_on,
    wait_until,
)
from tests.helpers.media import free_port

pytestmark = [needs_mosquitto,
              pytest.mark.timeout(60)]

REPLY_DEADLINE_S = 1.0
NOW_NS = 1_795_600_000 * 10**9  # 2026-11-25T09:46:40Z, a fixed clock for open_now


# ----- fixtures and helpers --------------------------------------------------------------------------------
def make_config(broker: Broker, device_id: str, data_dir: Path, **mqtt: Any) -> Config:
    settings: dict[str, Any] = {"enabled": True, "host": LOOPBACK, "port": broker.port,
                                "client_id": f"edgerec-{device_id}", **mqtt}
    return Config(device_id=device_id, data_dir=data_dir, recipients=(),
                  cameras=(CameraConfig("gate", "testsrc"), CameraConfig("yard", "testsrc"),
                           CameraConfig("spare", "testsrc", enabled=False)),
                  mqtt=MqttConfig(**settings))


def new_device_id() -> str:
    return f"dev{uuid.uuid4().hex[:10]}"


def ok_reply(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": obj.get("id"), "action": obj.get("action"), "ok": True, "error": None, "duplicate": False,
            "held_segments": 0, "held_bytes": 0}


@dataclass
class Harness:
    """A link under test with a scripted status and command handler that records its calls."""

    config: Config
    handler: Callable[[Mapping[str, Any]], Mapping[str, Any]] = ok_reply
    status_counter: int = 0
    incidents_list: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    link: MqttLink | None = None

    @property
    def topics(self) -> Topics:
        return Topics.from_config(self.config)

    def status(self) -> dict[str, Any]:
        self.status_counter += 1
        return {"n": self.status_counter, "device_id": self.config.device_id, "incidents_open": 0,
                "cameras": {"gate": {"state": "recording", "fps": 25.0}}}

    def on_command(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(dict(obj))
        return self.handler(obj)

    def start(self) -> MqttLink:
        self.link = MqttLink(MqttLinkSettings.from_config(self.config), status=self.status,
                             incidents=lambda: self.incidents_list,
                             on_command=self.on_command, clock_ns=lambda: NOW_NS)
        self.link.start()
        return self.link

    def stop(self) -> None:
        if self.link is not None:
            self.link.stop()


@pytest.fixture
def harness(broker: Broker, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False))
    yield h
    h.stop()


@pytest.fixture
def running(harness: Harness, broker: Broker) -> Iterator[tuple[Harness, Listener]]:
    """A started link and a listener on its topics, after the link announced itself online."""
    t = harness.topics
    with Listener(broker, [f"{t.base}/#"]) as listener:
        harness.start()
        listener.wait_for(t.availability, lambda m: m.payload == b"online")
        wait_until(lambda: harness.link.stats()["subscribed"], what="link subscribed")
        yield harness, listener


def command(listener: Listener, topics: Topics, payload: bytes | str | dict[str, Any], **kw: Any) -> dict:
    """Publish a command and return its reply (the first on incident/result after publishing)."""
    listener.clear()
    sent = time.monotonic()
    listener.publish(topics.command, payload, **kw)
    reply = listener.wait_for(topics.result, timeout_s=5)
    assert reply.at_monotonic - sent < REPLY_DEADLINE_S, "reply took longer than a second"
    return reply.json()


# ----- pure parts ----------------------------------------------------------------------------------------
def test_decode_command_strips_transaction_and_keeps_the_rest() -> None:
    env = decode_command(b'{"action": "close", "id": "A-1", "transaction": {"n": 7}}')
    assert env.error is None
    assert env.command == {"action": "close", "id": "A-1"}
    assert env.has_transaction and env.transaction == {"n": 7}


@pytest.mark.parametrize(("payload", "fragment"), [
    (b"", "not valid JSON"),
    (b"open gate now", "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"action": "open"', "not valid JSON"),
    (b'{"x": NaN}', "payload refused: NaN is not a JSON number"),
    # Python 3.11 gives up on this nesting (RecursionError), 3.13 parses it: refused either way.
    (b"[" * 8000 + b"]" * 8000, "not valid JSON|JSON object, not list"),
    (b"[1, 2]", "JSON object"),
    (b'"open"', "JSON object"),
    (b"null", "JSON object"),
    (b"42", "JSON object"),
    (b'{"pad": "' + b"x" * MAX_COMMAND_BYTES + b'"}', "too large"),
])
def test_decode_command_refuses_malformed_payloads(payload: bytes, fragment: str) -> None:
    env = decode_command(payload)
    assert env.command is None
    assert any(f in (env.error or "") for f in fragment.split("|"))


def test_finish_reply_echoes_a_null_transaction_only_when_sent() -> None:
    with_null = decode_command(b'{"action": "x", "transaction": null}')
    without = decode_command(b'{"action": "x"}')
    assert json.loads(finish_reply({"ok": True}, with_null, "d1")) == {"ok": True, "device_id": "d1",
                                                                      "transaction": None}
    assert "transaction" not in json.loads(finish_reply({"ok": True}, without, "d1"))


def test_unknown_action_lists_every_action_the_command_topic_takes() -> None:
    assert unknown_action({"action": "explode"}) == "unknown action 'explode' (open, close or open_now)"
    for action in ("open", "close", "open_now"):
        assert unknown_action({"action": action}) is None
    # A missing or non-string action is the incident parser's to explain.
    assert unknown_action({}) is None and unknown_action({"action": 5}) is None


def test_status_goes_out_every_interval_and_on_a_change_at_most_once_a_second() -> None:
    # No change: the interval after the last one.
    assert status_due(100.0, interval_s=30.0) == 130.0
    # A change right after a publication waits for the second to pass; a change later goes out at once.
    assert status_due(100.0, interval_s=30.0, changed_at_s=100.2) == 101.0
    assert status_due(100.0, interval_s=30.0, changed_at_s=105.0) == 105.0
    # Never later than the periodic one (an interval shorter than a second).
    assert status_due(100.0, interval_s=0.5, changed_at_s=100.1) == 100.5
    # Changes every 0.1 s for 10 s (a segment sealed each time) make at most one status a second.
    published, last = [], float("-inf")
    for tick in range(100):
        now = tick / 10
        if now >= status_due(last, interval_s=30.0, changed_at_s=now):
            published.append(now)
            last = now
    assert len(published) == 10 and all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(published))


def test_open_now_expands_to_an_open_ended_open_for_every_camera() -> None:
    cmd = expand_open_now(json.loads(OPEN_NOW_BUTTON_PAYLOAD), NOW_NS)
    assert cmd["action"] == "open"
    assert cmd["id"] == open_now_id(NOW_NS) == "NOW-20261125T094640Z"
    assert cmd["camera"] == "*" and cmd["to"] is None
    assert cmd["from"] == "2026-11-25T09:46:40.000Z" and cmd["by"] == "home-assistant"
    assert expand_open_now({"action": "open_now", "id": "MINE", "camera": "gate"}, NOW_NS)["id"] == "MINE"


def test_topics_follow_prefix_device_and_site_settings(tmp_path: Path) -> None:
    cfg = Config("pi7", tmp_path, (), (), mqtt=MqttConfig(topic_prefix="cctv/", site_topic=None,
                                                          discovery=False))
    t = Topics.from_config(cfg)
    assert (t.availability, t.command, t.result) == ("cctv/pi7/availability", "cctv/pi7/incident/set",
                                                     "cctv/pi7/incident/result")
    assert t.command_topics == ("cctv/pi7/incident/set",) and t.ha_status is None


def test_discovery_covers_enabled_cameras_and_device_entities(tmp_path: Path) -> None:
    cfg = Config("pi7", tmp_path, (), (CameraConfig("gate", "testsrc"),
                                       CameraConfig("off", "testsrc", enabled=False)))
    topics = Topics.from_config(cfg)
    msgs = {t: json.loads(p) for t, p in discovery_messages(cfg, topics)}
    assert set(msgs) == {
        "homeassistant/binary_sensor/edgerec_pi7/cam_gate_recording/config",
        "homeassistant/binary_sensor/edgerec_pi7/cam_gate_tamper/config",
        "homeassistant/sensor/edgerec_pi7/cam_gate_last_packet_age/config",
        "homeassistant/sensor/edgerec_pi7/cam_gate_fps/config",
        "homeassistant/sensor/edgerec_pi7/cam_gate_bitrate/config",
        "homeassistant/sensor/edgerec_pi7/disk_free/config",
        "homeassistant/sensor/edgerec_pi7/oldest_footage_age/config",
        "homeassistant/sensor/edgerec_pi7/incidents_open/config",
        "homeassistant/button/edgerec_pi7/open_incident_now/config",
    }
    assert len({m["unique_id"] for m in msgs.values()}) == len(msgs)
    for topic, m in msgs.items():
        # default_entity_id (Home Assistant 2025.10+), never the deprecated object_id.
        assert "object_id" not in m and m["default_entity_id"] == f"{topic.split('/')[1]}.{m['unique_id']}"
        assert m["availability_topic"] == "edgerec/pi7/availability"
        assert m["device"]["identifiers"] == ["edgerec_pi7"] and m["device"]["sw_version"]
        assert m.get("state_topic", topics.status) == topics.status
    button = msgs["homeassistant/button/edgerec_pi7/open_incident_now/config"]
    assert button["command_topic"] == topics.command
    assert decode_command(button["payload_press"].encode()).command["action"] == "open_now"
    fewer = discovery_messages(replace(cfg, cameras=()), topics)
    assert len(discovery_removals(discovery_messages(cfg, topics), fewer)) == 5


def two_camera_config(**mqtt: Any) -> Config:
    cameras = (CameraConfig("gate", "testsrc"), CameraConfig("yard", "testsrc"))
    return Config("pi7", Path("/data"), (), cameras,
                  mqtt=MqttConfig(**{"enabled": True, "host": "broker.lan", **mqtt}))


def config_topics(config: Config) -> set[str]:
    return {topic for topic, _ in discovery_messages(config, Topics.from_config(config))}


@pytest.mark.parametrize(("change", "cleared"), [
    ({}, "yard"),
    ({"status_interval_s": 5.0, "client_id": "other", "username": "u", "topic_prefix": "cctv"}, "yard"),
    ({"discovery": False}, "all"),
    ({"enabled": False}, "all"),
    ({"discovery_prefix": "ha"}, "all"),
    ({"host": "other.lan"}, "all"),
    ({"port": 8883, "tls": TlsConfig()}, "all"),
], ids=["cameras-only", "same-place", "discovery-off", "mqtt-off", "other-prefix", "other-host",
        "other-port"])
def test_stale_discovery_topics_are_those_nothing_clears_or_overwrites_after_a_reload(
        change: dict[str, Any], cleared: str) -> None:
    old = two_camera_config()
    new = replace(old, cameras=old.cameras[:1], mqtt=replace(old.mqtt, **change))  # yard removed
    stale = stale_discovery_topics(old, new)
    assert len(stale) == len(set(stale))
    if cleared == "yard":
        assert set(stale) == {t for t in config_topics(old) if "/cam_yard_" in t} and len(stale) == 5
    else:
        assert set(stale) == config_topics(old) and len(stale) == 14


def test_stale_discovery_topics_with_nothing_removed_or_nothing_published() -> None:
    old = two_camera_config()
    assert stale_discovery_topics(old, replace(old, mqtt=replace(old.mqtt, status_interval_s=9.0))) == []
    quiet = two_camera_config(discovery=False)
    assert stale_discovery_topics(quiet, replace(quiet, cameras=())) == []
    assert stale_discovery_topics(two_camera_config(enabled=False), replace(old, cameras=())) == []


def test_connect_failures_are_described_for_the_operator() -> None:
    system, with_ca = TlsConfig(), TlsConfig(ca_file=Path("/etc/edgerec/ca.pem"))
    untrusted = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert describe_connect_failure(untrusted, "broker.lan", 8883, system) == (
        "TLS certificate of the broker at broker.lan:8883 not accepted: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed; checked against the system's CA store (no mqtt.tls.ca_file set)")
    assert "checked against the CA in mqtt.tls.ca_file (/etc/edgerec/ca.pem)" in describe_connect_failure(
        untrusted, "broker.lan", 8883, with_ca)
    assert "TLS handshake with the broker at b:1883 failed" in describe_connect_failure(
        ssl.SSLError(1, "wrong version number"), "b", 1883, system)
    assert describe_connect_failure(ConnectionRefusedError(111, "Connection refused"), "b", 1883, None) == (
        "broker unreachable at b:1883: Connection refused")
    assert describe_connect_failure(socket.gaierror(-2, "Name or service not known"), "nosuch", 1883,
                                    None) == "broker host nosuch not found: Name or service not known"
    assert describe_connect_failure(None, "b", 1883, None) == "broker unreachable at b:1883"


def test_password_file_is_read_without_trailing_newline(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert read_password_file(pw) == "s3cret"
    with pytest.raises(ConfigError, match="password_file"):
        read_password_file(tmp_path / "missing")


# ----- availability, status, incidents, events -----------------------------------------------------------
def test_availability_online_arrives_retained(running: tuple[Harness, Listener], broker: Broker) -> None:
    harness, _ = running
    with Listener(broker, [harness.topics.availability]) as late:
        msg = late.wait_for(harness.topics.availability)
        assert msg.retain and msg.payload == b"online"


def test_status_arrives_retained_and_on_request(running: tuple[Harness, Listener], broker: Broker) -> None:
    harness, listener = running
    t = harness.topics
    with Listener(broker, [t.status]) as late:
        msg = late.wait_for(t.status)
        assert msg.retain and msg.json()["device_id"] == harness.config.device_id
    listener.clear()
    before = harness.status_counter
    harness.link.status_changed()
    assert listener.wait_for(t.status).json()["n"] > before
    assert harness.link.stats()["connected"] is True


def test_status_says_subscribed_soon_though_the_callers_status_knows_nothing_of_mqtt(
        running: tuple[Harness, Listener]) -> None:
    # The daemon's snapshot can be older than the link (its first one is built before the link starts):
    # the link's own part of the status is its to set, read when the status goes out.
    harness, listener = running
    assert "mqtt" not in harness.status()
    status = listener.wait_for(harness.topics.status, lambda m: m.json().get("mqtt", {}).get("subscribed"),
                               timeout_s=5).json()  # well before status_interval_s (30 s)
    assert status["mqtt"]["connected"] is True and status["mqtt"]["enabled"] is True
    assert status["cameras"] == {"gate": {"state": "recording", "fps": 25.0}}


def test_status_is_republished_every_interval(broker: Broker, tmp_path: Path) -> None:
    h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False, status_interval_s=0.2))
    with Listener(broker, [h.topics.status]) as listener:
        h.start()
        try:
            listener.wait_for(h.topics.status, lambda m: m.json()["n"] >= 4, timeout_s=5)
        finally:
            h.stop()


def test_incidents_and_events_are_published(running: tuple[Harness, Listener], broker: Broker) -> None:
    harness, listener = running
    t = harness.topics
    harness.incidents_list = [{"id": "INC-1", "camera": "*", "from": "2026-11-20T09:55:00Z", "to": None}]
    harness.link.publish_incidents()
    assert listener.wait_for(t.incidents, lambda m: m.json() != []).json()[0]["id"] == "INC-1"
    with Listener(broker, [t.incidents]) as late:
        assert late.wait_for(t.incidents).retain
    harness.link.publish_event("camera_down", camera="gate", reason="stalled")
    event = listener.wait_for(t.events)
    assert not event.retain
    assert event.json() | {"at": None} == {"event": "camera_down", "camera": "gate", "reason": "stalled",
                                           "device_id": harness.config.device_id, "at": None}


def test_stop_publishes_offline_retained(harness: Harness, broker: Broker) -> None:
    t = harness.topics
    with Listener(broker, [t.availability]) as listener:
        harness.start()
        listener.wait_for(t.availability, lambda m: m.payload == b"online")
        harness.link.stop()
        listener.wait_for(t.availability, lambda m: m.payload == b"offline")
    with Listener(broker, [t.availability]) as late:
        msg = late.wait_for(t.availability)
        assert msg.retain and msg.payload == b"offline"
    assert not harness.link.thread_alive()


# ----- commands ----------------------------------------------------------------------------------------
def test_command_gets_reply_within_a_second_with_transaction_echoed(
        running: tuple[Harness, Listener]) -> None:
    harness, listener = running
    reply = command(listener, harness.topics, {"action": "close", "id": "INC-7", "transaction": "tx-42"})
    assert reply["ok"] is True and reply["id"] == "INC-7" and reply["transaction"] == "tx-42"
    assert reply["device_id"] == harness.config.device_id
    assert harness.calls == [{"action": "close", "id": "INC-7"}]  # the transaction stays in the envelope


def test_v5_response_topic_gets_reply_with_correlation_data(running: tuple[Harness, Listener]) -> None:
    harness, listener = running
    response_topic = f"{harness.topics.base}/replies/{uuid.uuid4().hex}"
    listener.publish(harness.topics.command, {"action": "close", "id": "INC-8"},
                     response_topic=response_topic, correlation_data=b"\x00corr-1")
    reply = listener.wait_for(response_topic)
    assert reply.correlation_data == b"\x00corr-1"
    assert reply.json()["id"] == "INC-8"
    assert listener.wait_for(harness.topics.result).json()["id"] == "INC-8"  # the usual reply as well


@pytest.mark.parametrize("payload", [
    b"not json at all",
    b"\xc3\x28",
    b"[1, 2, 3]",
    b'"open"',
    b"[" * 8000 + b"]" * 8000,
    b'{"action": "open", "reason": "' + b"x" * (MAX_COMMAND_BYTES + 1) + b'"}',
], ids=["not-json", "not-utf8", "array", "string", "deep-nesting", "over-16k"])
def test_malformed_command_gets_error_reply_and_never_reaches_handler(
        running: tuple[Harness, Listener], payload: bytes) -> None:
    harness, listener = running
    reply = command(listener, harness.topics, payload)
    assert reply["ok"] is False and reply["error"]
    assert harness.calls == []
    # The network thread survived: a good command still gets its reply.
    assert command(listener, harness.topics, {"action": "close", "id": "AFTER"})["ok"] is True


def test_handler_exception_becomes_internal_error_and_link_survives(
        running: tuple[Harness, Listener], caplog: pytest.LogCaptureFixture) -> None:
    harness, listener = running

    def boom(obj: Mapping[str, Any]) -> Mapping[str, Any]:
        if obj.get("id") == "BOOM":
            raise RuntimeError("database went away")
        if obj.get("id") == "ODD":
            return {"ok": True, "id": "ODD", "weird": object()}  # not JSON-serialisable
        return ok_reply(obj)

    harness.handler = boom
    reply = command(listener, harness.topics, {"action": "close", "id": "BOOM", "transaction": 1})
    assert reply == {"id": "BOOM", "action": "close", "ok": False, "error": INTERNAL_ERROR,
                     "duplicate": False, "held_segments": 0, "held_bytes": 0,
                     "device_id": harness.config.device_id, "transaction": 1}
    assert "database went away" in caplog.text  # logged with its traceback
    assert command(listener, harness.topics, {"action": "close", "id": "ODD"})["error"] == INTERNAL_ERROR
    assert command(listener, harness.topics, {"action": "close", "id": "FINE"})["ok"] is True
    assert harness.link.thread_alive()
    assert harness.link.stats()["internal_errors"] == 2


def test_open_now_button_payload_reaches_handler_as_an_open(running: tuple[Harness, Listener]) -> None:
    harness, listener = running
    reply = command(listener, harness.topics, OPEN_NOW_BUTTON_PAYLOAD)
    assert reply["ok"] is True and reply["id"] == open_now_id(NOW_NS)
    (call,) = harness.calls
    assert call["action"] == "open" and call["camera"] == "*" and call["to"] is None


def test_site_wide_command_is_handled_and_answered_on_device_topic(running: tuple[Harness, Listener],
                                                                   broker: Broker) -> None:
    harness, listener = running
    listener.publish(harness.topics.site_command, {"action": "close", "id": "SITE-1"})
    assert listener.wait_for(harness.topics.result).json()["id"] == "SITE-1"


def test_retained_command_is_not_run_again_on_reconnect(broker: Broker, tmp_path: Path) -> None:
    h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False))
    with Listener(broker, [h.topics.result]) as listener:
        listener.publish(h.topics.command, {"action": "close", "id": "RETAINED"}, retain=True)
        h.start()
        try:
            wait_until(lambda: h.link.stats()["subscribed"], what="link subscribed")
            # A live command answered proves the subscription is there; the retained one never came.
            listener.publish(h.topics.command, {"action": "close", "id": "LIVE"})
            listener.wait_for(h.topics.result, lambda m: m.json()["id"] == "LIVE")
            assert [c["id"] for c in h.calls] == ["LIVE"]
        finally:
            listener.publish(h.topics.command, b"", retain=True)  # clear the retained message
            h.stop()


# ----- field-level validation through the real incident parser ------------------------------------------
def _real_parser_handler(tmp_path: Path, config: Config) -> tuple[Callable, list[Any]]:
    incidents = pytest.importorskip("edgerec.incidents")
    catalog_mod = pytest.importorskip("edgerec.catalog")
    audit_mod = pytest.importorskip("edgerec.audit")
    catalog = catalog_mod.Catalog.open(config.data_dir)
    audit = audit_mod.AuditLog(config.data_dir / "audit.log")
    service = incidents.IncidentService(catalog, audit, config)
    applied: list[Any] = []

    def handle(obj: Mapping[str, Any]) -> Mapping[str, Any]:
        now_ns = time.time_ns()
        try:
            cmd = incidents.parse_command(obj, cameras=[c.name for c in config.cameras], now_ns=now_ns)
        except CommandError as exc:
            return incidents.command_result_for_error(obj, exc).to_json_dict()
        applied.append(cmd)
        return service.apply(cmd, now_ns).to_json_dict()

    return handle, applied


FIELD_ERRORS = {
    "unknown-action": {"action": "delete", "id": "INC-1"},
    "missing-id": {"action": "close"},
    "malformed-id": {"action": "close", "id": "no spaces/allowed"},
    "id-too-long": {"action": "close", "id": "x" * 65},
    "unparsable-from": {"action": "open", "id": "INC-2", "camera": "gate", "from": "yesterday-ish"},
    "to-before-from": {"action": "open", "id": "INC-3", "camera": "gate", "from": "2026-11-20T10:00:00Z",
                       "to": "2026-11-20T09:00:00Z"},
    "unknown-camera": {"action": "open", "id": "INC-4", "camera": "roof", "from": "2026-11-20T10:00:00Z"},
    "wrong-type-camera": {"action": "open", "id": "INC-5", "camera": 3, "from": "2026-11-20T10:00:00Z"},
    "wrong-type-id": {"action": "close", "id": 12},
    "unknown-key": {"action": "close", "id": "INC-6", "please": True},
}


def test_field_level_errors_get_error_replies_through_the_real_parser(broker: Broker, tmp_path: Path) -> None:
    config = make_config(broker, new_device_id(), tmp_path / "data", discovery=False)
    config.data_dir.mkdir()
    handle, applied = _real_parser_handler(tmp_path, config)
    h = Harness(config, handler=handle)
    with Listener(broker, [f"{h.topics.base}/#"]) as listener:
        h.start()
        try:
            wait_until(lambda: h.link.stats()["subscribed"], what="link subscribed")
            for name, obj in FIELD_ERRORS.items():
                reply = command(listener, h.topics, obj)
                assert reply["ok"] is False and reply["error"], name
            assert applied == []  # the parser refused every one: the service never saw them
            close_unknown = command(listener, h.topics, {"action": "close", "id": "NEVER-OPENED"})
            assert close_unknown["ok"] is False and close_unknown["error"]
            good = command(listener, h.topics, {"action": "open", "id": "INC-OK", "camera": "gate",
                                                "from": rfc3339(time.time_ns() - 600 * 10**9), "to": None,
                                                "reason": "test", "by": "pytest", "transaction": "t1"})
            assert good["ok"] is True and good["transaction"] == "t1" and good["id"] == "INC-OK"
        finally:
            h.stop()


# ----- processes that die, brokers that go away, sessions that persist -------------------------------------
CHILD = r"""
import os, sys, threading
from pathlib import Path
from edgerec.config import CameraConfig, Config, MqttConfig
from edgerec.mqtt import MqttLink, MqttLinkSettings

port, device_id, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
config = Config(device_id=device_id, data_dir=Path("."), recipients=(),
                cameras=(CameraConfig("gate", "testsrc"),),
                mqtt=MqttConfig(enabled=True, host="127.0.0.1", port=port, client_id="edgerec-" + device_id,
                                discovery=False))

def on_command(obj):
    if mode == "crash":
        os._exit(9)  # dies before committing: the broker must deliver the command again
    return {"id": obj.get("id"), "action": obj.get("action"), "ok": True}

MqttLink(MqttLinkSettings.from_config(config), status=dict, incidents=list, on_command=on_command).start()
threading.Event().wait()
"""


def start_child(broker: Broker, device_id: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(broker.port), device_id, mode])


def test_killed_process_gets_offline_from_last_will(broker: Broker, tmp_path: Path) -> None:
    device_id = new_device_id()
    topics = Topics.from_config(make_config(broker, device_id, tmp_path))
    with Listener(broker, [topics.availability]) as listener:
        child = start_child(broker, device_id, "reply")
        try:
            listener.wait_for(topics.availability, lambda m: m.payload == b"online")
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            listener.wait_for(topics.availability, lambda m: m.payload == b"offline")
        finally:
            child.kill()
            child.wait()
    with Listener(broker, [topics.availability]) as late:
        assert late.wait_for(topics.availability).payload == b"offline"  # retained


def test_command_is_redelivered_when_process_dies_before_ack(broker: Broker, tmp_path: Path) -> None:
    device_id = new_device_id()
    h = Harness(make_config(broker, device_id, tmp_path, discovery=False))
    with Listener(broker, [h.topics.availability, h.topics.result]) as listener:
        child = start_child(broker, device_id, "crash")
        try:
            listener.wait_for(h.topics.availability, lambda m: m.payload == b"online")
            listener.publish(h.topics.command, {"action": "close", "id": "INC-CRASH"})
            assert child.wait(timeout=10) == 9
        finally:
            child.kill()
            child.wait()
        assert listener.on(h.topics.result) == []
        h.start()  # same client id: resumes the session, gets the unacknowledged command again
        try:
            assert listener.wait_for(h.topics.result).json()["id"] == "INC-CRASH"
            assert [c["id"] for c in h.calls] == ["INC-CRASH"]
        finally:
            h.stop()


def test_command_sent_while_link_was_stopped_is_delivered_when_it_returns(tmp_path: Path) -> None:
    with Broker(tmp_path / "persistent", persistence=True) as broker:
        h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False))
        h.start()
        wait_until(lambda: h.link.stats()["subscribed"], what="link subscribed")
        h.stop()
        with Listener(broker) as sender:
            sender.publish(h.topics.command, {"action": "close", "id": "WHILE-AWAY", "transaction": "q"})
        broker.restart()  # the queued command survives a broker restart too (persistence true)
        with Listener(broker, [h.topics.result]) as listener:
            h.start()
            try:
                reply = listener.wait_for(h.topics.result).json()
                assert reply["id"] == "WHILE-AWAY" and reply["transaction"] == "q"
                assert [c["id"] for c in h.calls] == ["WHILE-AWAY"]
            finally:
                h.stop()


def test_link_starts_with_broker_down_and_connects_when_it_appears(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "late")
    broker.port = free_port()
    h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False))
    h.start()
    try:
        assert h.link.thread_alive() and not h.link.connected
        with broker, Listener(broker, [h.topics.availability]) as listener:
            listener.wait_for(h.topics.availability, lambda m: m.payload == b"online", timeout_s=15)
            assert h.link.connected
            h.stop()
    finally:
        h.stop()


def test_broker_restart_brings_link_back_online_with_status_republished(tmp_path: Path) -> None:
    with Broker(tmp_path / "persistent", persistence=True) as broker:
        h = Harness(make_config(broker, new_device_id(), tmp_path, discovery=False))
        h.start()
        try:
            wait_until(lambda: h.link.stats()["subscribed"], what="link subscribed")
            events = Listener(broker, [h.topics.events], client_id=f"events-{h.config.device_id}",
                              session_expiry_s=600)
            broker.stop()
            wait_until(lambda: not h.link.connected, what="link noticed the broker is gone")
            assert h.link.publish_event("camera_down", camera="gate", reason="while the broker was away")
            # Hold the port ourselves until the link knocks again: proof that it keeps retrying while the
            # broker is away (a few seconds, paced by the reconnect backoff).
            with socket.create_server((LOOPBACK, broker.port)) as fake:
                fake.settimeout(15)
                conn, _ = fake.accept()
                conn.close()
            before = h.status_counter
            broker.start()
            wait_until(lambda: h.link.stats()["subscribed"], timeout_s=20, what="link reconnected")
            with Listener(broker, [h.topics.status, h.topics.availability]) as listener:
                listener.wait_for(h.topics.status, lambda m: m.json()["n"] > before)
                listener.wait_for(h.topics.availability, lambda m: m.payload == b"online")
            assert h.link.stats()["connects"] == 2 and h.link.stats()["disconnects"] == 1
            # The event raised while the broker was down was kept and sent after the reconnection.
            assert events.wait_for(h.topics.events).json()["reason"] == "while the broker was away"
            events.close()
            # The session survived the restart: a command goes through on the same subscription.
            with Listener(broker, [h.topics.result]) as listener:
                listener.publish(h.topics.command, {"action": "close", "id": "AFTER-RESTART"})
                assert listener.wait_for(h.topics.result).json()["id"] == "AFTER-RESTART"
        finally:
            h.stop()


# ----- TLS, passwords and ACLs -------------------------------------------------------------------------
DEVICE_ACL = """\
user {device}
topic readwrite edgerec/{device}/#
topic read edgerec/all/incident/set
topic read homeassistant/status
topic write homeassistant/+/edgerec_{device}/+/config

user tester
topic readwrite #
"""


def test_tls_with_test_ca_password_file_and_acl(tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path / "ca")
    device_id = new_device_id()
    with Broker(tmp_path / "tls", tls=ca, require_certificate=True,
                users={device_id: "dev-secret", "tester": "test-secret"},
                acl=DEVICE_ACL.format(device=device_id)) as broker:
        pw = tmp_path / "mqtt.password"
        pw.write_text("dev-secret\n")  # the trailing newline must not end up in the password
        pw.chmod(0o600)
        tls = TlsConfig(ca_file=ca.ca_cert, cert_file=ca.client_cert, key_file=ca.client_key)
        h = Harness(make_config(broker, device_id, tmp_path, username=device_id, password_file=pw, tls=tls))
        t = h.topics
        with Listener(broker, ["edgerec/#", "homeassistant/#"], username="tester", password="test-secret",
                      tls=ca) as listener:
            h.start()
            try:
                listener.wait_for(t.availability, lambda m: m.payload == b"online")
                listener.wait_for(t.status)
                assert len(discovery_messages(h.config, t)) == 14
                wait_until(lambda: len([m for m in listener.messages if m.topic.endswith("/config")]) >= 14,
                           what="discovery allowed by the ACL")
                reply = command(listener, t, {"action": "close", "id": "TLS-1", "transaction": 9})
                assert reply["ok"] is True and reply["transaction"] == 9
                listener.publish(t.site_command, {"action": "close", "id": "TLS-SITE"})
                assert listener.wait_for(t.result, lambda m: m.json()["id"] == "TLS-SITE")
            finally:
                h.stop()

        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-it\n")
        bad = Harness(make_config(broker, device_id, tmp_path, username=device_id, password_file=wrong,
                                  tls=tls, discovery=False))
        bad.start()
        try:
            wait_until(lambda: "refused" in (bad.link.stats()["last_error"] or ""), what="connect refused")
            assert not bad.link.connected
        finally:
            bad.stop()


def test_unreadable_credentials_are_config_errors(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "unused")
    broker.port = free_port()
    for mqtt_settings in ({"username": "u", "password_file": tmp_path / "missing"},
                          {"tls": TlsConfig(ca_file=tmp_path / "missing-ca.crt")}):
        config = make_config(broker, new_device_id(), tmp_path, **mqtt_settings)
        settings = MqttLinkSettings.from_config(config)
        link = MqttLink(settings, status=dict, incidents=list, on_command=ok_reply)
        with pytest.raises(ConfigError, match="mqtt"):
            link.start()
        assert not link.thread_alive()


def test_tls_without_ca_file_trusts_the_system_ca_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ca = make_test_ca(tmp_path / "ca")
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    with Broker(tmp_path / "tls", tls=ca) as broker:
        # The system's store does not know the test CA: the handshake fails, is explained, and retried.
        untrusting = Harness(make_config(broker, new_device_id(), tmp_path, tls=TlsConfig(), discovery=False))
        untrusting.start()
        try:
            wait_until(lambda: caplog.text.count("mqtt connect failed: TLS certificate of the broker") >= 2,
                       timeout_s=15, what="two refused handshakes")
            assert "checked against the system's CA store" in untrusting.link.stats()["last_error"]
            assert not untrusting.link.connected and untrusting.link.thread_alive()
            assert "ERROR" in [r.levelname for r in caplog.records if "connect failed" in r.message]
        finally:
            untrusting.stop()
        # OpenSSL's default verify paths include $SSL_CERT_FILE: with the test CA there, it connects.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_cert))
        h = Harness(make_config(broker, new_device_id(), tmp_path, tls=TlsConfig(), discovery=False))
        with Listener(broker, [h.topics.availability], tls=ca) as listener:
            h.start()
            try:
                listener.wait_for(h.topics.availability, lambda m: m.payload == b"online")
                wait_until(lambda: h.link.stats()["subscribed"], what="link subscribed over TLS")
            finally:
                h.stop()


# ----- Home Assistant discovery ---------------------------------------------------------------------------
def start_with_discovery(h: Harness, broker: Broker) -> str:
    """Start the link and wait until its discovery configs are retained; returns the topic pattern."""
    pattern = f"homeassistant/+/edgerec_{h.config.device_id}/+/config"
    h.start()
    expected = config_topics(h.config)
    wait_until(lambda: set(retained_on(broker, pattern)) == expected, what="discovery retained")
    return pattern


@pytest.mark.parametrize("discovery", [True, False], ids=["camera-removed", "discovery-off"])
def test_stop_before_a_replacement_clears_the_entities_it_leaves_behind(broker: Broker, tmp_path: Path,
                                                                       discovery: bool) -> None:
    h = Harness(make_config(broker, new_device_id(), tmp_path))
    pattern = start_with_discovery(h, broker)
    new = replace(h.config, cameras=h.config.cameras[:1],
                  mqtt=replace(h.config.mqtt, status_interval_s=5.0, discovery=discovery))
    # every removal acknowledged by the broker
    assert h.link.stop(next_settings=MqttLinkSettings.from_config(new)) == []
    left = retained_on(broker, pattern)
    if discovery:  # the replacement publishes the rest again; only the removed camera's are gone
        assert set(left) == config_topics(new) and not any("/cam_yard_" in t for t in left)
    else:
        assert left == {}


def test_removals_scheduled_just_before_stop_are_still_sent(broker: Broker, tmp_path: Path) -> None:
    h = Harness(make_config(broker, new_device_id(), tmp_path))
    pattern = start_with_discovery(h, broker)
    fewer = replace(h.config, cameras=h.config.cameras[:1])
    h.link.reconfigure(MqttLinkSettings.from_config(fewer))
    h.link.stop()  # at once: the publisher thread may not have got to the removals
    assert set(retained_on(broker, pattern)) == config_topics(fewer)


def test_removals_the_old_link_could_not_send_are_sent_by_its_successor(tmp_path: Path) -> None:
    with Broker(tmp_path / "mosquitto", persistence=True) as own:
        h = Harness(make_config(own, new_device_id(), tmp_path))
        pattern = start_with_discovery(h, own)
        new = replace(h.config, cameras=h.config.cameras[:1],
                      mqtt=replace(h.config.mqtt, client_id=f"{h.config.mqtt.client_id}-2"))
        own.stop()  # a reload while the broker is away
        wait_until(lambda: not h.link.connected, what="link noticed the broker is gone")
        unsent = h.link.stop(next_settings=MqttLinkSettings.from_config(new))
        assert sorted(unsent) == sorted(t for t in config_topics(h.config) if "/cam_yard_" in t)
        own.start()
        assert any("/cam_yard_" in t for t in retained_on(own, pattern))  # kept by the broker's persistence
        successor = Harness(new)
        successor.start()
        try:
            successor.link.take_over_removals(unsent, previous=MqttLinkSettings.from_config(h.config))
            wait_until(lambda: set(retained_on(own, pattern)) == config_topics(new),
                       what="the removed camera's entities cleared by the new link")
        finally:
            successor.stop()


def test_discovery_is_retained_and_republished_when_home_assistant_comes_online(broker: Broker,
                                                                                 tmp_path: Path) -> None:
    h = Harness(make_config(broker, new_device_id(), tmp_path))
    expected = {topic for topic, _ in discovery_messages(h.config, h.topics)}
    node = f"edgerec_{h.config.device_id}"
    configs = f"homeassistant/+/{node}/+/config"
    with Listener(broker, [configs]) as early:
        h.start()
        wait_until(lambda: {m.topic for m in early.messages} == expected, what="discovery configs")
    try:
        with Listener(broker, [configs]) as listener:
            wait_until(lambda: {m.topic for m in listener.messages if m.retain} == expected,
                       what="retained discovery configs")
            listener.clear()
            listener.publish("homeassistant/status", "online")
            wait_until(lambda: {m.topic for m in listener.messages} == expected, what="discovery republished")
            assert all(json.loads(m.payload)["availability_topic"] == h.topics.availability
                       for m in listener.messages)
            listener.clear()
            listener.publish("homeassistant/status", "offline")
            listener.publish(h.topics.command, {"action": "close", "id": "SYNC"})  # a marker after it
            wait_until(lambda: h.calls, what="marker command handled")
            assert [m for m in listener.messages if m.topic.endswith("/config")] == []
            # Removing a camera removes its entities (an empty retained config).
            listener.clear()
            h.link.reconfigure(MqttLinkSettings.from_config(replace(h.config, cameras=h.config.cameras[:1])))
            wait_until(lambda: len([m for m in listener.messages if m.payload == b""]) == 5,
                       what="entities of the removed camera deleted")
    finally:
        h.stop()


def test_an_event_published_before_the_link_starts_goes_out_once_it_has(broker: Broker,
                                                                         tmp_path: Path) -> None:
    """A link made to replace another (an MQTT settings reload) is the daemon's before it starts: an event
    published meanwhile waits in it; after ``stop`` an event is refused, not kept."""
    config = make_config(broker, new_device_id(), tmp_path, discovery=False)
    link = MqttLink(MqttLinkSettings.from_config(config), status=dict, incidents=list, on_command=ok_reply)
    with Listener(broker, [link.topics.events]) as listener:
        assert link.publish_event("tamper", camera="gate", state="dark") is True
        link.start()
        try:
            event = listener.wait_for(link.topics.events).json()
            assert (event["event"], event["camera"], event["state"]) == ("tamper", "gate", "dark")
        finally:
            link.stop()
    assert link.publish_event("tamper", camera="gate", state="ok") is False


def test_link_threads_survive_a_failing_status_callback(broker: Broker, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def status() -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError("status broke")

    config = make_config(broker, new_device_id(), tmp_path, discovery=False, status_interval_s=0.1)
    link = MqttLink(MqttLinkSettings.from_config(config), status=status, incidents=list, on_command=ok_reply)
    link.start()
    try:
        wait_until(lambda: len(calls) >= 3, what="status retried on schedule")
        assert link.thread_alive()
        assert "status broke" in caplog.text
    finally:
        link.stop()


def test_stop_returns_promptly_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "never")
    broker.port = free_port()
    settings = MqttLinkSettings.from_config(make_config(broker, new_device_id(), tmp_path))
    link = MqttLink(settings, status=dict, incidents=list, on_command=ok_reply)
    link.start()
    started = time.monotonic()
    link.stop()
    assert time.monotonic() - started < 3.0
    assert not link.thread_alive()

