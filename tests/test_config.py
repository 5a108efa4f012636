"""Configuration loading: defaults, every validation rule and its message, the example file, fuzzing."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerec import config as config_module
from edgerec import keys
from edgerec.config import (
    Config,
    EncoderConfig,
    HealthThresholds,
    MqttConfig,
    load_config,
    parse_bitrate_bps,
    parse_config,
    parse_size_bytes,
)
from edgerec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "edgerec.example.yaml"
DOCS = REPO / "docs" / "configuration.md"
EXAMPLE_KEY_PLACEHOLDER = "PASTE-THE-LINE-FROM-officer.key.pub-HERE"
BASE = Path("/etc/edgerec")
DELETE = object()


def new_public_key() -> str:
    return keys.format_public_key(X25519PrivateKey.generate().public_key())


KEY = new_public_key()
OTHER_KEY = new_public_key()
HEALTH_FIELDS = [f for f in dataclasses.fields(HealthThresholds) if f.init]
NUMERIC_HEALTH_FIELD = next(f.name for f in HEALTH_FIELDS if not isinstance(f.default, bool))


def minimal() -> dict[str, Any]:
    return {
        "device_id": "pi-1",
        "data_dir": "data",
        "recipients": [KEY],
        "cameras": [{"name": "gate", "url": "rtsp://192.168.1.64/stream"}],
    }


def changed_health() -> dict[str, Any]:
    """Every health threshold set away from its default (generic over the HealthThresholds fields)."""
    return {f.name: (not f.default) if isinstance(f.default, bool) else f.default * 2 + 1
            for f in HEALTH_FIELDS}


def full() -> dict[str, Any]:
    return {
        "device_id": "school-gate-01",
        "data_dir": "/srv/edgerec",
        "recipients": [KEY, OTHER_KEY],
        "segment_seconds": 30,
        "durability": {"flush_seconds": 0.5, "fsync_seconds": 5},
        "cameras": [
            {"name": "gate", "url": "rtsp://user:pw@192.168.1.64:554/stream", "enabled": False,
             "rtsp_transport": "udp", "timeout_seconds": 3, "stall_seconds": 20, "retention": {"days": 14},
             "health": False, "input_options": {"max_delay": "500000", "reorder_queue_size": 64},
             "realtime": False, "loop": False},
            {"name": "Pattern_2", "url": "lavfi:testsrc2=size=640x360:rate=25",
             "encoder": {"codec": "libx264", "bitrate": "2500k", "gop_seconds": 1, "preset": "ultrafast"}},
        ],
        "retention": {"days": 30, "sweep_interval_s": 60, "min_free": "2G"},
        "incidents": {"pre_roll_s": 10, "post_roll_s": 20, "release_grace_days": 3, "max_window_days": 14,
                      "max_open": 5},
        "mqtt": {"enabled": True, "host": "broker.lan", "port": 8884, "client_id": "rec-1",
                 "topic_prefix": "site/cctv", "username": "rec", "password_file": "secrets/mqtt.pw",
                 "tls": {"ca_file": "ca.pem", "cert_file": "/etc/ssl/c.pem", "key_file": "c.key"},
                 "keepalive_s": 15, "status_interval_s": 10, "discovery": False, "discovery_prefix": "ha",
                 "site_topic": False, "session_expiry_s": 3600},
        "health": changed_health(),
        "status_file": "status/now.json",
    }


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted paths ("cameras.0.url") set, or removed when given DELETE."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        parts: list[Any] = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        target = data
        for part in parts[:-1]:
            if isinstance(target, dict) and part not in target:
                target[part] = {}
            target = target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return data


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=BASE)
    return info.value.problems


# ----- valid configs ---------------------------------------------------------------------------------------
def test_minimal_config_gets_the_documented_defaults():
    cfg = parse_config(minimal(), base_dir=BASE)
    assert cfg.device_id == "pi-1"
    assert cfg.data_dir == BASE / "data"
    assert cfg.recipients == (KEY,)
    assert cfg.segment_seconds == 60.0
    assert cfg.segment_cipher == "aes-256-gcm"
    assert cfg.durability == config_module.DurabilityConfig()
    assert cfg.retention == config_module.RetentionConfig()
    assert cfg.retention.min_free_pct == 5.0 and cfg.retention.min_free_bytes is None
    assert cfg.incidents == config_module.IncidentsConfig()
    assert cfg.mqtt == MqttConfig(client_id="edgerec-pi-1")
    assert cfg.health == HealthThresholds()
    assert cfg.status_file is None
    assert cfg.source_path is None
    (camera,) = cfg.cameras
    assert camera == config_module.CameraConfig(name="gate", url="rtsp://192.168.1.64/stream")
    assert camera.kind == "rtsp"


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305", "auto"])
def test_segment_cipher_takes_each_suite_and_auto(cipher: str):
    assert parse_config({**minimal(), "segment_cipher": cipher}, base_dir=BASE).segment_cipher == cipher


def test_an_unknown_segment_cipher_is_named():
    assert problems_of({**minimal(), "segment_cipher": "aes-128-cbc"}) == [
        "segment_cipher: expected one of aes-256-gcm, chacha20-poly1305, auto; got 'aes-128-cbc'"]


def test_full_config_sets_every_field():
    cfg = parse_config(full(), base_dir=BASE)
    assert cfg.device_id == "school-gate-01"
    assert cfg.data_dir == Path("/srv/edgerec")
    assert cfg.recipients == (KEY, OTHER_KEY)
    assert cfg.segment_seconds == 30.0
    assert cfg.durability == config_module.DurabilityConfig(flush_seconds=0.5, fsync_seconds=5.0)
    gate, pattern = cfg.cameras
    assert gate == config_module.CameraConfig(
        name="gate", url="rtsp://user:pw@192.168.1.64:554/stream", realtime=False, loop=False, enabled=False,
        rtsp_transport="udp", timeout_seconds=3.0, stall_seconds=20.0, retention_days=14.0, health=False,
        input_options={"max_delay": "500000", "reorder_queue_size": "64"}, encoder=EncoderConfig())
    assert pattern.name == "Pattern_2" and pattern.kind == "lavfi"
    assert pattern.encoder == EncoderConfig(codec="libx264", bitrate_bps=2_500_000, gop_seconds=1.0,
                                            preset="ultrafast")
    assert cfg.retention == config_module.RetentionConfig(days=30.0, sweep_interval_s=60.0,
                                                          min_free_bytes=2 * 1024**3, min_free_pct=None)
    assert cfg.incidents == config_module.IncidentsConfig(pre_roll_s=10.0, post_roll_s=20.0,
                                                          release_grace_days=3.0, max_window_days=14.0,
                                                          max_open=5)
    assert cfg.mqtt == MqttConfig(
        enabled=True, host="broker.lan", port=8884, client_id="rec-1", topic_prefix="site/cctv",
        username="rec", password_file=BASE / "secrets/mqtt.pw",
        tls=config_module.TlsConfig(ca_file=BASE / "ca.pem", cert_file=Path("/etc/ssl/c.pem"),
                                    key_file=BASE / "c.key"),
        keepalive_s=15, status_interval_s=10.0, discovery=False, discovery_prefix="ha", site_topic=None,
        session_expiry_s=3600)
    assert cfg.health == HealthThresholds(**changed_health())
    assert cfg.status_file == BASE / "status" / "now.json"


def test_relative_file_url_is_taken_from_the_config_directory_and_need_not_exist():
    data = changed(minimal(), {"cameras.0.url": "clips/missing.mp4"})
    (camera,) = parse_config(data, base_dir=BASE).cameras
    assert camera.url == str(BASE / "clips" / "missing.mp4")
    assert camera.kind == "file"


def test_absolute_paths_are_kept_as_written():
    data = changed(minimal(), {"data_dir": "/var/lib/edgerec", "cameras.0.url": "/media/usb/clip.mp4"})
    cfg = parse_config(data, base_dir=BASE)
    assert cfg.data_dir == Path("/var/lib/edgerec")
    assert cfg.cameras[0].url == "/media/usb/clip.mp4"


def test_default_gop_follows_segments_shorter_than_it():
    data = changed(minimal(), {"segment_seconds": 1, "cameras.0.url": "testsrc"})
    assert parse_config(data, base_dir=BASE).cameras[0].encoder.gop_seconds == 1.0
    data = changed(minimal(), {"segment_seconds": 1, "cameras.0.encoder.gop_seconds": 0.5})
    assert parse_config(data, base_dir=BASE).cameras[0].encoder.gop_seconds == 0.5


def test_mqtt_port_defaults_to_8883_with_tls():
    cfg = parse_config(changed(minimal(), {"mqtt": {"tls": {"ca_file": "ca.pem"}}}), base_dir=BASE)
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.tls == config_module.TlsConfig(ca_file=BASE / "ca.pem")


@pytest.mark.parametrize("tls", [{}, True, {"ca_file": None}, {"ca_file": None, "cert_file": None}],
                         ids=["empty-mapping", "true", "null-ca", "null-files"])
def test_tls_without_ca_file_uses_the_system_ca_store(tls: object):
    cfg = parse_config(changed(minimal(), {"mqtt": {"tls": tls}}), base_dir=BASE)
    assert cfg.mqtt.tls == config_module.TlsConfig(ca_file=None, cert_file=None, key_file=None)
    assert cfg.mqtt.port == 8883


def test_tls_client_certificate_without_ca_file():
    tls = {"cert_file": "client.pem", "key_file": "client.key"}
    cfg = parse_config(changed(minimal(), {"mqtt": {"tls": tls, "port": 8884}}), base_dir=BASE)
    assert cfg.mqtt.tls == config_module.TlsConfig(cert_file=BASE / "client.pem",
                                                   key_file=BASE / "client.key")
    assert cfg.mqtt.port == 8884


def test_tls_false_is_plain_tcp():
    cfg = parse_config(changed(minimal(), {"mqtt": {"tls": False}}), base_dir=BASE)
    assert cfg.mqtt.tls is None
    assert cfg.mqtt.port == 1883


def test_an_empty_tls_section_is_refused_not_taken_as_plain_tcp():
    with pytest.raises(ConfigError) as err:
        parse_config(changed(minimal(), {"mqtt": {"tls": None}}), base_dir=BASE)
    assert err.value.problems == [
        "mqtt.tls: empty; write 'tls: true' (TLS checked against the system's CA store), a mapping with "
        "ca_file, cert_file, key_file, or 'tls: false' (no TLS)"]


@pytest.mark.parametrize("off", [None, False])
def test_site_topic_null_or_false_turns_site_commands_off(off: object):
    cfg = parse_config(changed(minimal(), {"mqtt.site_topic": off}), base_dir=BASE)
    assert cfg.mqtt.site_topic is None


def test_empty_sections_mean_all_defaults():
    data = changed(minimal(), {"mqtt": None, "retention": None, "health": {}, "durability": None})
    cfg = parse_config(data, base_dir=BASE)
    assert cfg.mqtt.client_id == "edgerec-pi-1"
    assert cfg.retention == config_module.RetentionConfig()
    assert cfg.health == HealthThresholds()


def test_the_same_recipient_key_in_upper_case_is_stored_once_spelled_canonically():
    data = changed(minimal(), {"recipients": [f"  {KEY.upper()} "]})
    assert parse_config(data, base_dir=BASE).recipients == (KEY,)
    assert problems_of(changed(minimal(), {"recipients": [KEY, KEY.upper()]})) == [
        "recipients[1]: the same key as recipients[0]"]


# ----- one line per problem, naming the key path --------------------------------------------------------
def _mistyped_key() -> str:
    body = KEY[len(keys.PUBLIC_PREFIX):]
    swapped = body[:10] + ("a" if body[10] != "a" else "b") + body[11:]
    return keys.PUBLIC_PREFIX + swapped


SAFE_NAME_RULE = ("is not a safe name: use 1 to 64 letters, digits, '_' or '-', starting with a letter or "
                  "digit (it is used in file names and MQTT topics)")
ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    # top level
    ("device_id missing", {"device_id": DELETE}, "device_id: missing (required)"),
    ("device_id path", {"device_id": "../etc"}, f"device_id: '../etc' {SAFE_NAME_RULE}"),
    ("device_id topic", {"device_id": "a/b"}, f"device_id: 'a/b' {SAFE_NAME_RULE}"),
    ("device_id wildcard", {"device_id": "pi+1"}, f"device_id: 'pi+1' {SAFE_NAME_RULE}"),
    ("device_id number", {"device_id": 42}, "device_id: expected a string, got 42 (put it in quotes)"),
    ("device_id too long", {"device_id": "a" * 65}, f"device_id: '{'a' * 55}...' {SAFE_NAME_RULE}"),
    ("data_dir missing", {"data_dir": DELETE}, "data_dir: missing (required)"),
    ("data_dir list", {"data_dir": ["a"]}, "data_dir: expected a string, got a list"),
    ("recipients empty", {"recipients": []},
     "recipients: at least one recipient public key is needed, or nobody can ever decrypt the footage"),
    ("recipients string", {"recipients": KEY},
     "recipients: expected a list of public keys (made by 'edgerec keygen'), got "
     f"'{KEY[:55]}...'"),
    ("recipient mistyped", {"recipients": [KEY, _mistyped_key()]},
     "recipients[1]: checksum mismatch: the key was mistyped or truncated"),
    ("recipient truncated", {"recipients": [KEY[:-3]]},
     "recipients[0]: bad length: expected 58 characters after 'edgerec-pub1-', got 55 (the key was "
     "truncated or has extra characters)"),
    ("recipient number", {"recipients": [7]}, "recipients[0]: expected a public key string, got 7"),
    ("segment_seconds zero", {"segment_seconds": 0},
     "segment_seconds: expected a number from 1 to 3600, got 0"),
    ("segment_seconds big", {"segment_seconds": 3601},
     "segment_seconds: expected a number from 1 to 3600, got 3601"),
    ("segment_seconds text", {"segment_seconds": "60"},
     "segment_seconds: expected a number from 1 to 3600, got '60'"),
    ("segment_seconds nan", {"segment_seconds": float("nan")},
     "segment_seconds: expected a number from 1 to 3600, got nan"),
    ("status_file number", {"status_file": 5}, "status_file: expected a string, got 5 (put it in quotes)"),
    # durability
    ("flush negative", {"durability.flush_seconds": -1},
     "durability.flush_seconds: expected a number > 0 and <= 60, got -1"),
    ("fsync before flush", {"durability": {"flush_seconds": 3, "fsync_seconds": 2}},
     "durability.fsync_seconds: must be at least flush_seconds (3), got 2: chunks are synced after they are "
     "written"),
    ("fsync default before flush", {"durability": {"flush_seconds": 5}},
     "durability.fsync_seconds: must be at least flush_seconds (5), got 2: chunks are synced after they are "
     "written"),
    ("durability list", {"durability": [1, 2]}, "durability: expected a mapping of keys, got a list"),
    # cameras
    ("cameras empty", {"cameras": []}, "cameras: at least one camera is needed"),
    ("cameras mapping", {"cameras": {"name": "gate"}}, "cameras: expected a list of cameras, got a mapping"),
    ("camera null", {"cameras.0": None},
     "cameras[0]: expected a camera (a mapping with name and url), got null"),
    ("camera string", {"cameras.0": "rtsp://x/y"}, "cameras[0]: expected a mapping of keys, got 'rtsp://x/y'"),
    ("camera name missing", {"cameras.1.name": DELETE}, "cameras[1].name: missing (required)"),
    ("camera name dotdot", {"cameras.1.name": ".."}, f"cameras[1].name: '..' {SAFE_NAME_RULE}"),
    ("camera name dot", {"cameras.1.name": "."}, f"cameras[1].name: '.' {SAFE_NAME_RULE}"),
    ("camera name slash", {"cameras.1.name": "a/b"}, f"cameras[1].name: 'a/b' {SAFE_NAME_RULE}"),
    ("camera name space", {"cameras.1.name": "a b"}, f"cameras[1].name: 'a b' {SAFE_NAME_RULE}"),
    ("camera name newline", {"cameras.1.name": "gate2\n"},
     "cameras[1].name: contains a control character (U+000A at position 6)"),
    ("camera name unicode k", {"cameras.1.name": "\u212aitchen"},
     f"cameras[1].name: '\u212aitchen' {SAFE_NAME_RULE}"),
    ("camera name duplicate", {"cameras.1.name": "GATE"}, "cameras[1].name: 'GATE' is already the name of "
     "cameras[0]"),
    ("url missing", {"cameras.0.url": DELETE}, "cameras[0].url: missing (required)"),
    ("url empty", {"cameras.0.url": ""},
     "cameras[0].url: expected a non-empty string without control characters, got ''"),
    ("rtsp no host", {"cameras.0.url": "rtsp:///stream"},
     "cameras[0].url: the url has no host (expected something like rtsp://192.168.1.20:554/stream)"),
    ("http bad port", {"cameras.0.url": "http://cam:99999/x.ts"},
     "cameras[0].url: not a valid http url (Port out of range 0-65535)"),
    ("tcp no host", {"cameras.0.url": "tcp://:9000"},
     "cameras[0].url: the url has no host (expected something like tcp://192.168.1.20:9000)"),
    ("exec empty", {"cameras.0.url": "exec:"},
     "cameras[0].url: exec: needs a command after it, like 'exec:rpicam-vid -t 0 --inline -o -'"),
    ("exec quote", {"cameras.0.url": "exec:rpicam-vid -o 'x"},
     "cameras[0].url: cannot split the exec: command into arguments: No closing quotation"),
    ("lavfi empty", {"cameras.0.url": "lavfi:"},
     "cameras[0].url: lavfi: needs a filter graph after it, like 'lavfi:testsrc2=size=640x360:rate=25'"),
    ("testsrc option", {"cameras.0.url": "testsrc:size=640x360:fast"},
     "cameras[0].url: testsrc option 'fast' is not key=value (example: testsrc:size=640x360:rate=25)"),
    ("unknown scheme", {"cameras.0.url": "rtmp://cam/live"},
     "cameras[0].url: unsupported url scheme 'rtmp': use rtsp://, rtsps://, http://, https://, tcp://, "
     "exec:, lavfi:, testsrc, /dev/videoN or a file path"),
    ("url spaces", {"cameras.0.url": " rtsp://cam/x"}, "cameras[0].url: remove the spaces around the url"),
    ("transport", {"cameras.0.rtsp_transport": "quic"},
     "cameras[0].rtsp_transport: expected one of tcp, udp; got 'quic'"),
    ("timeout negative", {"cameras.0.timeout_seconds": -1},
     "cameras[0].timeout_seconds: expected a number > 0 and <= 3600, got -1"),
    ("stall zero", {"cameras.0.stall_seconds": 0},
     "cameras[0].stall_seconds: expected a number > 0 and <= 3600, got 0"),
    ("realtime string", {"cameras.0.realtime": "yes please"},
     "cameras[0].realtime: expected true or false, got 'yes please'"),
    ("enabled number", {"cameras.0.enabled": 1}, "cameras[0].enabled: expected true or false, got 1"),
    ("camera retention days", {"cameras.0.retention.days": -3},
     "cameras[0].retention.days: expected a number > 0 and <= 36500, got -3"),
    ("camera retention number", {"cameras.0.retention": 14},
     "cameras[0].retention: expected a mapping of keys, got 14"),
    ("input option list", {"cameras.0.input_options": {"probesize": [1]}},
     "cameras[0].input_options.probesize: expected a string or a number, got a list"),
    ("input option huge", {"cameras.0.input_options": {"probesize": 10**5000}},
     "cameras[0].input_options.probesize: expected a string or a number, got a very large number"),
    ("input option bool", {"cameras.0.input_options": {"listen": True}},
     "cameras[0].input_options.listen: expected a string or a number, got true (put it in quotes)"),
    ("bitrate word", {"cameras.1.encoder.bitrate": "fast"},
     "cameras[1].encoder.bitrate: expected bits per second from 10000 to 200000000 (2000000, \"2M\", "
     "\"2500k\"), got 'fast'"),
    ("bitrate tiny", {"cameras.1.encoder.bitrate": 2000},
     "cameras[1].encoder.bitrate: expected bits per second from 10000 to 200000000 (2000000, \"2M\", "
     "\"2500k\"), got 2000"),
    ("codec", {"cameras.1.encoder.codec": "h265"},
     "cameras[1].encoder.codec: expected one of auto, h264_v4l2m2m, libx264; got 'h265'"),
    ("preset", {"cameras.1.encoder.preset": "warp"},
     "cameras[1].encoder.preset: expected one of ultrafast, superfast, veryfast, faster, fast, medium, slow, "
     "slower, veryslow, placebo; got 'warp'"),
    ("gop longer than segment", {"segment_seconds": 2, "cameras.1.encoder.gop_seconds": 4},
     "cameras[1].encoder.gop_seconds: must not exceed segment_seconds (2), got 4: segments start on "
     "keyframes"),
    # retention and incidents
    ("retention days zero", {"retention.days": 0},
     "retention.days: expected a number > 0 and <= 36500, got 0"),
    ("sweep negative", {"retention.sweep_interval_s": -5},
     "retention.sweep_interval_s: expected a number from 1 to 86400, got -5"),
    ("min_free unit", {"retention.min_free": "5 furlongs"},
     "retention.min_free: expected bytes (2000000000, \"2G\", \"500MiB\") or a percentage of the disk "
     "(\"5%\"), got '5 furlongs'"),
    ("min_free percent", {"retention.min_free": "120%"},
     "retention.min_free: a percentage must be from 0% to below 100%, got '120%'"),
    ("pre roll negative", {"incidents.pre_roll_s": -1},
     "incidents.pre_roll_s: expected a number from 0 to 86400, got -1"),
    ("grace text", {"incidents.release_grace_days": "7d"},
     "incidents.release_grace_days: expected a number from 0 to 36500, got '7d'"),
    ("max window zero", {"incidents.max_window_days": 0},
     "incidents.max_window_days: expected a number > 0 and <= 36500, got 0"),
    ("max open zero", {"incidents.max_open": 0},
     "incidents.max_open: expected an integer from 1 to 100000, got 0"),
    ("max open float", {"incidents.max_open": 2.5},
     "incidents.max_open: expected an integer from 1 to 100000, got 2.5"),
    # mqtt
    ("mqtt port text", {"mqtt.port": "abc"}, "mqtt.port: expected an integer from 1 to 65535, got 'abc'"),
    ("mqtt port zero", {"mqtt.port": 0}, "mqtt.port: expected an integer from 1 to 65535, got 0"),
    ("mqtt port float", {"mqtt.port": 1883.5}, "mqtt.port: expected an integer from 1 to 65535, got 1883.5"),
    ("mqtt enabled text", {"mqtt.enabled": "true"}, "mqtt.enabled: expected true or false, got 'true'"),
    ("mqtt host url", {"mqtt.host": "mqtt://broker"},
     "mqtt.host: expected a host name or address only (set port and tls separately), got 'mqtt://broker'"),
    ("username alone", {"mqtt.password_file": DELETE},
     "mqtt.password_file: missing (required when mqtt.username is set)"),
    ("password alone", {"mqtt.username": DELETE},
     "mqtt.username: missing (required when mqtt.password_file is set)"),
    ("tls ca empty", {"mqtt.tls.ca_file": ""},
     "mqtt.tls.ca_file: expected a non-empty string without control characters, got ''"),
    ("tls ca typo", {"mqtt.tls.cafile": "ca.pem"}, "mqtt.tls.cafile: unknown key (did you mean 'ca_file'?)"),
    ("cert without key", {"mqtt.tls.key_file": DELETE},
     "mqtt.tls.key_file: missing (required when cert_file is set: a client certificate needs its private "
     "key)"),
    ("key without cert", {"mqtt.tls.cert_file": DELETE},
     "mqtt.tls.cert_file: missing (required when key_file is set: a client certificate needs its private "
     "key)"),
    ("cert null with key", {"mqtt.tls.cert_file": None},
     "mqtt.tls.cert_file: missing (required when key_file is set: a client certificate needs its private "
     "key)"),
    ("tls quoted true", {"mqtt.tls": "true"},
     "mqtt.tls: expected true, false or a mapping with ca_file, cert_file, key_file; got 'true'"),
    ("tls number", {"mqtt.tls": 1},
     "mqtt.tls: expected true, false or a mapping with ca_file, cert_file, key_file; got 1"),
    ("tls list", {"mqtt.tls": ["ca.pem"]},
     "mqtt.tls: expected true, false or a mapping with ca_file, cert_file, key_file; got a list"),
    ("topic wildcard", {"mqtt.topic_prefix": "cctv/#"},
     "mqtt.topic_prefix: 'cctv/#' must not contain the MQTT wildcards '+' or '#'"),
    ("topic slash", {"mqtt.topic_prefix": "/cctv"},
     "mqtt.topic_prefix: '/cctv' must not start or end with '/' or contain empty levels ('//')"),
    ("topic sys", {"mqtt.discovery_prefix": "$SYS"},
     "mqtt.discovery_prefix: '$SYS' must not start with '$' (reserved for the broker)"),
    ("site topic true", {"mqtt.site_topic": True},
     "mqtt.site_topic: expected a topic such as 'edgerec/all', or false to turn it off; got true"),
    ("keepalive zero", {"mqtt.keepalive_s": 0},
     "mqtt.keepalive_s: expected an integer from 1 to 65535, got 0"),
    ("session expiry negative", {"mqtt.session_expiry_s": -1},
     "mqtt.session_expiry_s: expected an integer from 0 to 4294967295, got -1"),
    ("status interval", {"mqtt.status_interval_s": 0},
     "mqtt.status_interval_s: expected a number from 1 to 86400, got 0"),
    # health, checked generically from HealthThresholds
    ("health negative", {f"health.{NUMERIC_HEALTH_FIELD}": -1},
     f"health.{NUMERIC_HEALTH_FIELD}: expected a number >= 0, got -1"),
    ("health text", {f"health.{NUMERIC_HEALTH_FIELD}": "high"},
     f"health.{NUMERIC_HEALTH_FIELD}: expected a number >= 0, got 'high'"),
    ("health bool", {f"health.{NUMERIC_HEALTH_FIELD}": True},
     f"health.{NUMERIC_HEALTH_FIELD}: expected a number >= 0, got true"),
    ("health unknown", {"health.sensitivity": 3}, "health.sensitivity: unknown key"),
    # unknown keys, with the likely intended key
    ("typo top", {"segment_secs": 10}, "segment_secs: unknown key (did you mean 'segment_seconds'?)"),
    ("typo mqtt", {"mqtt.prot": 1884}, "mqtt.prot: unknown key (did you mean 'port'?)"),
    ("typo camera", {"cameras.0.stall_second": 3}, "cameras[0].stall_second: unknown key (did you mean "
     "'stall_seconds'?)"),
    ("typo encoder", {"cameras.1.encoder.bitrate_bps": 3},
     "cameras[1].encoder.bitrate_bps: unknown key (did you mean 'bitrate'?)"),
    ("upper case key", {"Device_ID": "x"},
     "Device_ID: unknown key (did you mean 'device_id'? keys are lower case)"),
    ("key in wrong section", {"pre_roll_s": 5},
     "pre_roll_s: unknown key here (it belongs under 'incidents')"),
    ("camera key at top", {"url": "rtsp://x/y"},
     "url: unknown key here (it belongs in each camera entry under 'cameras')"),
    ("unrelated key", {"colour": "blue"}, "colour: unknown key"),
    ("days at top", {"days": 14}, "days: unknown key here (it belongs under 'retention')"),
    ("health key at top", {NUMERIC_HEALTH_FIELD: 1},
     f"{NUMERIC_HEALTH_FIELD}: unknown key here (it belongs under 'health')"),
    ("top key in mqtt", {"mqtt.device_id": "x"},
     "mqtt.device_id: unknown key here (it belongs at the top level)"),
    ("number key", {"mqtt.1": "x"}, "mqtt[1]: unknown key"),
]


@pytest.mark.parametrize(("changes", "expected"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_each_invalid_value_is_reported_on_one_line_naming_its_key_path(changes: dict[str, Any],
                                                                        expected: str):
    problems = problems_of(changed(full(), changes))
    assert problems == [expected]


def test_every_problem_is_reported_at_once_with_the_file_name():
    data = changed(full(), {
        "device_id": "a b", "segment_seconds": -1, "cameras.0.url": "rtsp://", "cameras.1.name": "gate",
        "retention.min_free": "lots", "mqtt.port": "abc", f"health.{NUMERIC_HEALTH_FIELD}": -2, "mqt": {},
    })
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=BASE, source="/etc/edgerec/edgerec.yaml")
    err = info.value
    paths = [p.split(":", 1)[0] for p in err.problems]
    assert sorted(paths) == sorted(["device_id", "segment_seconds", "cameras[0].url", "cameras[1].name",
                                    "retention.min_free", "mqtt.port", f"health.{NUMERIC_HEALTH_FIELD}",
                                    "mqt"])
    assert err.exit_code == 2
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems)
    assert all(line.startswith("/etc/edgerec/edgerec.yaml: ") for line in lines)


@pytest.mark.parametrize(("data", "expected"), [
    (None, "the file is empty: expected a mapping with device_id, data_dir, recipients and cameras"),
    ([1, 2], "top level: expected a mapping of keys, got a list"),
    ("device_id: x", "top level: expected a mapping of keys, got 'device_id: x'"),
])
def test_a_document_that_is_not_a_mapping_is_one_problem(data: object, expected: str):
    assert problems_of(data) == [expected]


def test_empty_mapping_lists_every_required_key():
    assert problems_of({}) == ["device_id: missing (required)", "data_dir: missing (required)",
                               "recipients: missing (required)", "cameras: missing (required)"]


# ----- sizes and bitrates ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "min_free_bytes", "min_free_pct"), [
    ("5%", None, 5.0),
    ("0.5%", None, 0.5),
    ("0%", None, 0.0),
    (" 10 % ", None, 10.0),
    ("2G", 2 * 1024**3, None),
    ("500M", 500 * 1024**2, None),
    ("1.5GiB", int(1.5 * 1024**3), None),
    ("20GB", 20 * 1000**3, None),
    ("750 mb", 750 * 1000**2, None),
    ("1T", 1024**4, None),
    ("4096", 4096, None),
    ("512B", 512, None),
    (2_000_000_000, 2_000_000_000, None),
    (0, 0, None),
])
def test_min_free_sets_exactly_one_of_bytes_or_percent(value: object, min_free_bytes: int | None,
                                                       min_free_pct: float | None):
    cfg = parse_config(changed(minimal(), {"retention.min_free": value}), base_dir=BASE)
    assert (cfg.retention.min_free_bytes, cfg.retention.min_free_pct) == (min_free_bytes, min_free_pct)


@pytest.mark.parametrize("value", ["-1G", "100%", "-5%", "abc%", "5 furlongs", "G", "", 1.5, True, None, -1,
                                   "1" * 400 + "G", [5]])
def test_min_free_rejects_what_is_not_a_size_or_percentage(value: object):
    (problem,) = problems_of(changed(minimal(), {"retention.min_free": value}))
    assert problem.startswith("retention.min_free: ")


@pytest.mark.parametrize(("text", "size"), [("1k", 1024), ("1KB", 1000), ("1KiB", 1024), ("3 g", 3 * 1024**3),
                                           ("1 kb", 1000), ("x", None), ("1e3", None), ("-1k", None)])
def test_parse_size_bytes_uses_1024_for_bare_letters_and_1000_for_kb_mb_gb(text: str, size: int | None):
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize(("value", "bps"), [(2_000_000, 2_000_000), ("2M", 2_000_000), ("2500k", 2_500_000),
                                            ("2.5Mbps", 2_500_000), ("800 kb/s", 800_000), (1.5e6, 1_500_000),
                                            ("\u0665M", None), (10**400, 10**400), (-1, None),
                                            ("x", None), (True, None), ("2MB", None), (float("inf"), None)])
def test_parse_bitrate_accepts_plain_numbers_and_decimal_suffixes(value: object, bps: int | None):
    assert parse_bitrate_bps(value) == bps


# ----- files -----------------------------------------------------------------------------------------------
def example_text(key: str = KEY) -> str:
    text = EXAMPLE.read_text()
    assert EXAMPLE_KEY_PLACEHOLDER in text
    return text.replace(EXAMPLE_KEY_PLACEHOLDER, key)


# A commented-out YAML line of the example ("  #   url: ..." or "  # - name: ..."), not prose.
_COMMENTED_YAML_RE = re.compile(r"^(\s*)# ( *(?:- )?[a-z_]+:(?:\s.*)?)$", re.MULTILINE)


def test_example_config_loads_with_a_real_key(tmp_path: Path):
    path = tmp_path / "edgerec.yaml"
    path.write_text(example_text())
    cfg = load_config(path)
    assert cfg.source_path == path
    assert cfg.recipients == (KEY,)
    assert [c.kind for c in cfg.cameras] == ["rtsp"]  # exactly one camera kind is left uncommented


def test_example_config_still_loads_with_every_commented_example_enabled(tmp_path: Path):
    text = _COMMENTED_YAML_RE.sub(r"\1\2", example_text())
    path = tmp_path / "edgerec.yaml"
    path.write_text(text)
    cfg = load_config(path)
    kinds = {c.kind for c in cfg.cameras}
    assert kinds == {"rtsp", "http", "tcp", "v4l2", "lavfi", "testsrc", "exec", "file"}
    assert cfg.status_file is not None
    assert cfg.mqtt.username is not None and cfg.mqtt.password_file is not None
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.key_file is not None
    demo = cfg.camera("demo")
    assert demo is not None and demo.url == str(tmp_path / "clips" / "entrance.mp4")


def test_example_without_a_key_names_the_recipient_problem(tmp_path: Path):
    path = tmp_path / "edgerec.yaml"
    path.write_text(EXAMPLE.read_text())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.split(":")[0] for p in info.value.problems] == ["recipients[0]"]


def _documented_keys() -> set[str]:
    keys_ = {key for section in config_module.accepted_keys().values() for key in section}
    return keys_ | {f.name for f in HEALTH_FIELDS}


def test_every_key_is_in_the_example_and_the_reference():
    example = EXAMPLE.read_text()
    docs = DOCS.read_text()
    missing_example = sorted(k for k in _documented_keys() if not re.search(rf"\b{k}:", example))
    missing_docs = sorted(k for k in _documented_keys() if f"`{k}`" not in docs)
    assert (missing_example, missing_docs) == ([], [])


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("device_id: pi\ncameras:\n  - name: gate\n    url: [rtsp://x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert re.match(r"line \d+, column \d+: invalid YAML: ", problem), problem
    assert str(info.value).startswith(f"{path}: line ")


def test_a_key_given_twice_is_an_error_not_silently_the_last(tmp_path: Path):
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(minimal(), sort_keys=False) + "device_id: other\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["line 8, column 1: invalid YAML: the key 'device_id' is given twice "
                                   "(first on line 1)"]


def test_yaml_merge_keys_may_override_on_purpose(tmp_path: Path):
    path = tmp_path / "merge.yaml"
    path.write_text(f"device_id: pi-1\ndata_dir: data\nrecipients: ['{KEY}']\ncameras:\n"
                    "  - &cam {name: gate, url: 'rtsp://10.0.0.9/s', stall_seconds: 4}\n"
                    "  - {<<: *cam, name: yard, stall_seconds: 8}\n")
    cfg = load_config(path)
    assert [(c.name, c.url, c.stall_seconds) for c in cfg.cameras] == [
        ("gate", "rtsp://10.0.0.9/s", 4.0), ("yard", "rtsp://10.0.0.9/s", 8.0)]


@pytest.mark.parametrize(("text", "expected"), [
    ("device_id: 2024-13-01\n", "line 1, column 12: invalid YAML: cannot read '2024-13-01': month must be in "
                                 "1..12 (put it in quotes if it is text)"),
    ("segment_seconds: !!int sixty\n",
     "line 1, column 18: invalid YAML: cannot read 'sixty': invalid literal for int() with base 10: 'sixty' "
     "(put it in quotes if it is text)"),
])
def test_yaml_values_python_cannot_build_are_yaml_errors(text: str, expected: str):
    with pytest.raises(ConfigError) as info:
        config_module.parse_yaml(text)
    assert info.value.problems == [expected]


@pytest.mark.parametrize(("content", "expected"), [
    (None, "file not found"),
    (b"", "the file is empty: expected a mapping with device_id, data_dir, recipients and cameras"),
    (b"device_id: \xff\xfe\n", "not UTF-8 text (byte 11)"),
])
def test_unreadable_or_empty_files_are_config_errors(tmp_path: Path, content: bytes | None, expected: str):
    path = tmp_path / "edgerec.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [expected]
    assert info.value.source == str(path)


def test_a_directory_is_not_a_config_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == ["is a directory, not a config file"]


def test_load_config_resolves_paths_from_the_file_directory_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "edgerec.yaml").write_text(yaml.safe_dump(minimal()))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("etc/edgerec.yaml"))
    assert cfg.data_dir == conf_dir / "data"
    assert cfg.source_path == conf_dir / "edgerec.yaml"
    assert cfg.source_path.is_absolute()


# ----- fuzzing ---------------------------------------------------------------------------------------------
INTERESTING_STRINGS = [
    KEY, KEY.upper(), KEY[:-1], "edgerec-pub1-", "rtsp://", "rtsp://h/x", "rtsps://[::1", "http://h:99999/",
    "tcp://:1", "exec:", "exec:'", "exec:ffmpeg -i x -", "lavfi:", "lavfi:testsrc2", "testsrc", "testsrc:x",
    "testsrc:size=1x1", "/dev/video0", "rtmp://x", "x.mp4", "..", ".", "-", "a" * 70, "5%", "100%", "2G",
    "1.5GiB", "2M", "2500k", "a/#", "$SYS", "/x", "tcp", "udp", "auto", "libx264", "veryfast", "\x00", "é",
]
KNOWN_KEYS = sorted(_documented_keys())
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**5000), max_value=10**5000)
           | st.floats() | st.text(max_size=12) | st.sampled_from(INTERESTING_STRINGS))
YAMLISH = st.recursive(
    SCALARS,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8) | st.integers(),
                                        children, max_size=5)),
    max_leaves=25,
)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_config_or_config_error(data: object) -> None:
    try:
        result = parse_config(data, base_dir=BASE, source="fuzz.yaml")
    except ConfigError as err:
        assert err.problems
        for problem in err.problems:
            assert problem and "\n" not in problem, problem
    else:
        assert isinstance(result, Config)


@FUZZ
@given(YAMLISH)
def test_fuzz_random_documents_give_a_config_or_a_config_error(data: object):
    _assert_config_or_config_error(data)


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a nested dict/list, the containers themselves included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*prefix, i))
    return found


FULL_PATHS = [p for p in _paths(full()) if p]


@FUZZ
@given(st.data())
def test_fuzz_valid_config_with_one_part_replaced_gives_a_config_or_a_config_error(data: st.DataObject):
    document = full()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(FULL_PATHS))
        target: Any = document
        try:
            for step in path[:-1]:
                target = target[step]
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace" or not isinstance(target, dict):
                target[path[-1]] = data.draw(YAMLISH)
            elif action == "delete":
                del target[path[-1]]
            else:
                target[data.draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8))] = data.draw(YAMLISH)
        except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced this path
            continue
    _assert_config_or_config_error(document)


# Fragments of YAML syntax, tags and config words: joined at random they reach PyYAML's constructors far
# more often than random text does.
YAML_TOKENS = st.sampled_from([
    "!!timestamp", "!!int", "!!float", "!!binary", "!!bool", "!!null", "!!set", "!!omap", "!!pairs", "!!str",
    "!!seq", "!!map", "!!merge", "!!value", "&a", "*a", "<<:", "-", "?", ":", "{", "[", "]", "}", ",", "|",
    ">", "'", '"', "#", "\n", " ", "  ", "0", "1:2", "2020-01-01", "x", "device_id", "cameras", "url",
])


@FUZZ
@given(st.lists(YAML_TOKENS, max_size=12).map("".join) | st.lists(YAML_TOKENS, max_size=12).map(" ".join)
       | st.text(max_size=300) | st.sampled_from([
    EXAMPLE.read_text(), "a: &x [*x]", "- - - -", "{a: 1, a: 2}", "? [1, 2]\n: 3",
    "!!python/object:os.system {}",
    "a: 2024-02-30", "a: 2024-01-01 25:00:00", "a: " + "9" * 5000, "a: 0x" + "f" * 5000, "a: !!float x",
    "a: !!binary x", "a: !!timestamp x", "a: !!set {1, 2}", "a: !!omap [b: 1]", "<<: {a: 1}", "a: {<<: 5}",
    "!!map 0", "!!seq 0", "!!set 0", "!!omap 0", "!!pairs {a: 1}", "a: !!timestamp",
]) | st.builds("{}: {}".format, st.sampled_from(KNOWN_KEYS), st.text(max_size=30)))
def test_fuzz_yaml_text_gives_a_config_or_a_config_error(text: str):
    try:
        data = config_module.parse_yaml(text, "fuzz.yaml")
    except ConfigError:
        return
    _assert_config_or_config_error(data)
