"""The MQTT link: availability, retained status and incidents, events, Home Assistant discovery and
incident commands with replies.

The decisions are plain functions over data (``Topics.from_config``, ``decode_command``,
``unknown_action``, ``expand_open_now``, ``status_due``, ``discovery_messages``,
``stale_discovery_topics``, ``describe_connect_failure``); ``MqttLink`` is the paho client around them.
The link never owns incident logic: a decoded command object goes to ``on_command``, whose reply is
published as it is (plus the ``transaction`` echo, and ``open_now`` named as sent); a command it cannot
hand on is refused in the incident service's one reply shape (``incidents.command_result_for_error``).
Nothing here raises into paho's network thread: an exception there would stop the thread without a word.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import __version__
from .config import CameraConfig, Config, MqttConfig, TlsConfig
from .errors import ConfigError
from .incidents import command_result_for_error
from .inputcheck import JsonNumberError, loads_json
from .redact import redact_obj, register_secret
from .timefmt import rfc3339

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024  # larger command payloads are refused before decoding
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 60
STOP_PUBLISH_TIMEOUT_S = 5.0  # how long stop() waits for its last messages (removals, `offline`)
STATUS_MIN_INTERVAL_S = 1.0  # on-change status publications are at least this far apart
MAX_QUEUED_MESSAGES = 1000  # outgoing QoS 1 messages kept while the broker is away (events mostly)
QOS = 1

ONLINE = "online"
OFFLINE = "offline"
OPEN_NOW = "open_now"
# The actions a command on the command topic may name: the incident service's two, and open_now (a button
# press, expanded here into an open).
ACTIONS = ("open", "close", OPEN_NOW)
INTERNAL_ERROR = "internal error"


CommandHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]
RefusalHandler = Callable[[Mapping[str, Any]], Any]  # audits a payload refused before it was a command


# ----- a client's credentials (the link's, and the start-up read-back's) ---------------------------------
def authenticate(client: mqtt.Client, m: MqttConfig) -> None:
    """The user name and password (from its file) and TLS of ``mqtt`` settings ``m``, set on a client;
    ConfigError when the password file or the TLS files cannot be read."""
    if m.username is not None:
        password = read_password_file(m.password_file) if m.password_file is not None else None
        register_secret(password)
        client.username_pw_set(m.username, password)
    if m.tls is not None:
        # ca_certs=None: paho calls SSLContext.load_default_certs(), i.e. OpenSSL's default verify paths
        # (the system store, or $SSL_CERT_FILE / $SSL_CERT_DIR). Either way paho's context requires a
        # certificate and checks the host name (tls_insecure stays off).
        try:
            client.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                           certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                           keyfile=str(m.tls.key_file) if m.tls.key_file else None)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError(f"mqtt.tls: cannot load the CA, certificate or key: {exc}") from None


# ----- what the link needs from the configuration ------------------------------------------------------
@dataclass(frozen=True)
class MqttLinkSettings:
    """The part of the configuration the link uses: the MQTT settings, the device's name, and the cameras
    (for the Home Assistant entities). A config reload hands the link new settings."""

    mqtt: MqttConfig
    device_id: str
    cameras: tuple[CameraConfig, ...]

    @classmethod
    def from_config(cls, config: Config) -> MqttLinkSettings:
        return cls(config.mqtt, config.device_id, tuple(config.cameras))


# The topic and discovery functions read only these fields: a Config or the link's settings.
LinkConfig = Config | MqttLinkSettings


# ----- topics ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topics:
    """Every topic the link uses, derived from the configuration."""

    base: str
    availability: str
    status: str
    incidents: str
    events: str
    command: str
    result: str
    site_command: str | None
    ha_status: str | None
    discovery_prefix: str

    @classmethod
    def from_config(cls, config: LinkConfig) -> Topics:
        m = config.mqtt
        base = f"{m.topic_prefix.rstrip('/')}/{config.device_id}"
        return cls(
            base=base,
            availability=f"{base}/availability",
            status=f"{base}/status",
            incidents=f"{base}/incidents",
            events=f"{base}/events",
            command=f"{base}/incident/set",
            result=f"{base}/incident/result",
            site_command=f"{m.site_topic.rstrip('/')}/incident/set" if m.site_topic else None,
            ha_status=f"{m.discovery_prefix}/status" if m.discovery else None,
            discovery_prefix=m.discovery_prefix,
        )

    @property
    def command_topics(self) -> tuple[str, ...]:
        return (self.command,) if self.site_command is None else (self.command, self.site_command)


# ----- command envelope -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    """A command message after decoding: the command object, or the reason it was refused.

    ``transaction`` is taken out of the object (the incident parser refuses unknown keys) and echoed in
    the reply when ``has_transaction``.
    """

    command: dict[str, Any] | None
    error: str | None = None
    transaction: Any = None
    has_transaction: bool = False


def decode_command(payload: bytes, *, max_bytes: int = MAX_COMMAND_BYTES) -> Envelope:
    """Check size, UTF-8, JSON (with the number rule of ``inputcheck``) and object-ness of a command
    payload; never raises."""
    if len(payload) > max_bytes:
        return Envelope(None, f"payload too large: {len(payload)} bytes (limit {max_bytes})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Envelope(None, "payload is not valid UTF-8")
    try:
        obj = loads_json(text)
    except JsonNumberError as exc:  # NaN, Infinity, 1e400, integers past 2^53: one rule (inputcheck.py)
        return Envelope(None, f"payload refused: {exc}")
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays fit in 16 KiB
        return Envelope(None, "payload is not valid JSON")
    if not isinstance(obj, dict):
        return Envelope(None, f"command must be a JSON object, not {type(obj).__name__}")
    has_transaction = "transaction" in obj
    transaction = obj.pop("transaction", None)
    return Envelope(obj, None, transaction, has_transaction)


def unknown_action(command: Mapping[str, Any]) -> str | None:
    """Why a command's action is refused, when it is a string naming no action; else None (a missing or
    non-string action is left to the incident parser, which says so)."""
    action = command.get("action")
    if isinstance(action, str) and action not in ACTIONS:
        return f"unknown action {action[:32]!r} ({', '.join(ACTIONS[:-1])} or {ACTIONS[-1]})"
    return None


def status_due(last_published_s: float, *, interval_s: float, changed_at_s: float | None = None,
               min_interval_s: float = STATUS_MIN_INTERVAL_S) -> float:
    """When the retained status is next published (monotonic seconds): ``interval_s`` after the last one;
    after a change at ``changed_at_s``, as soon as ``min_interval_s`` has passed since the last one, so
    that changes in between go out together in one status."""
    periodic = last_published_s + interval_s
    if changed_at_s is None:
        return periodic
    return min(periodic, max(changed_at_s, last_published_s + min_interval_s))


def open_now_id(now_ns: int) -> str:
    """The id given to an ``open_now`` command without one: ``NOW-20261120T095500Z``."""
    return "NOW-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ns // 1_000_000_000))


def expand_open_now(command: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
    """Turn ``{"action": "open_now", ...}`` (what a button can send) into an ordinary ``open``.

    The window starts now (the configured pre-roll reaches back before it) and stays open until closed;
    ``camera`` defaults to ``*`` and ``id`` to ``open_now_id(now)``. ``reason``, ``by`` and any other key
    pass through, so the incident parser still judges them. ``from``/``to`` are left in place when given,
    and the parser's checks apply to them as to any open.
    """
    expanded: dict[str, Any] = {
        "action": "open",
        "id": open_now_id(now_ns),
        "camera": "*",
        "from": rfc3339(now_ns),
        "to": None,
        "reason": "opened now over MQTT",
        "by": "mqtt",
    }
    expanded.update({k: v for k, v in command.items() if k != "action"})
    return expanded


def finish_reply(reply: Mapping[str, Any], envelope: Envelope, device_id: str) -> bytes:
    """Serialise a reply, adding the device id and the request's transaction; raises TypeError/ValueError."""
    out = dict(reply)
    out.setdefault("device_id", device_id)
    if envelope.has_transaction:
        out["transaction"] = envelope.transaction
    return json.dumps(out, allow_nan=False).encode()


def fallback_reply(reply: Mapping[str, Any], envelope: Envelope, device_id: str) -> bytes:
    """The reply sent instead of one that cannot be serialised (a non-finite number, an object JSON has no
    form for): an ``internal error`` refusal, with the transaction echoed when it can be. Never raises, so
    a command always gets a reply."""
    refusal = command_result_for_error(reply, INTERNAL_ERROR).to_json_dict()
    try:
        return finish_reply(refusal, envelope, device_id)
    except (TypeError, ValueError, RecursionError):
        refusal["device_id"] = device_id
        refusal["transaction"] = None
        refusal["error"] = f"{INTERNAL_ERROR} (the transaction could not be echoed)"
        return json.dumps(refusal, allow_nan=False).encode()


# ----- Home Assistant discovery -----------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


OPEN_NOW_BUTTON_PAYLOAD = json.dumps(
    {"action": OPEN_NOW, "camera": "*", "by": "home-assistant", "reason": "opened from Home Assistant"})


# The tamper sensor's attributes: the condition (None when the picture is fine) and every active one.
TAMPER_ATTRIBUTES_EXPRESSION = (
    "{'condition': (c.get('health') or {}).get('state') if (c.get('health') or {}).get('state', 'ok')"
    " != 'ok' else None, 'active': (c.get('health') or {}).get('active', [])} | tojson")


def _camera_template(camera: str, expression: str) -> str:
    # .get keeps the template quiet when a camera is missing from status (stopped, just removed).
    return "{% set c = value_json.cameras.get(" + json.dumps(camera) + ") or {} %}{{ " + expression + " }}"


def discovery_messages(config: LinkConfig, topics: Topics) -> list[tuple[str, str]]:
    """(topic, retained JSON payload) for every Home Assistant entity of this device."""
    node = _slug(f"edgerec_{config.device_id}")
    device = {
        "identifiers": [node],
        "name": f"edgerec {config.device_id}",
        "manufacturer": "edgerec",
        "model": "edgerec video recorder",
        "sw_version": __version__,
    }
    common = {"availability_topic": topics.availability, "payload_available": ONLINE,
              "payload_not_available": OFFLINE, "device": device, "qos": QOS}

    def entity(component: str, object_name: str, name: str, **fields: Any) -> tuple[str, str]:
        unique = f"{node}_{_slug(object_name)}"
        # default_entity_id (Home Assistant 2025.10+) replaces the deprecated object_id: the entity id
        # is the component's domain, a dot and our slug.
        cfg = {"name": name, "unique_id": unique, "default_entity_id": f"{component}.{unique}", **common,
               **fields}
        return f"{topics.discovery_prefix}/{component}/{node}/{_slug(object_name)}/config", json.dumps(cfg)

    out = []
    for cam in config.cameras:
        if not cam.enabled:
            continue
        oid = f"cam_{cam.name}"
        out += [
            entity("binary_sensor", f"{oid}_recording", f"{cam.name} recording", state_topic=topics.status,
                   device_class="running", value_template=_camera_template(
                       cam.name, "'ON' if c.get('state') == 'recording' else 'OFF'")),
            # On while the camera's picture health reports a condition (health.state is not "ok"); the
            # condition and all active ones are its attributes, from the same retained status.
            entity("binary_sensor", f"{oid}_tamper", f"{cam.name} tamper", state_topic=topics.status,
                   device_class="tamper", value_template=_camera_template(
                       cam.name, "'ON' if (c.get('health') or {}).get('state', 'ok') != 'ok' else 'OFF'"),
                   json_attributes_topic=topics.status, json_attributes_template=_camera_template(
                       cam.name, TAMPER_ATTRIBUTES_EXPRESSION)),
            entity("sensor", f"{oid}_last_packet_age", f"{cam.name} last packet age",
                   state_topic=topics.status, device_class="duration", unit_of_measurement="s",
                   state_class="measurement",
                   value_template=_camera_template(cam.name, "c.get('last_packet_age_s')")),
            entity("sensor", f"{oid}_fps", f"{cam.name} frame rate", state_topic=topics.status,
                   unit_of_measurement="fps", state_class="measurement", icon="mdi:filmstrip",
                   value_template=_camera_template(cam.name, "c.get('fps')")),
            entity("sensor", f"{oid}_bitrate", f"{cam.name} bitrate", state_topic=topics.status,
                   device_class="data_rate", unit_of_measurement="bit/s", state_class="measurement",
                   value_template=_camera_template(cam.name, "c.get('bitrate_bps')")),
        ]
    out += [
        entity("sensor", "disk_free", "disk free", state_topic=topics.status, device_class="data_size",
               unit_of_measurement="B", state_class="measurement",
               value_template="{{ (value_json.disk or {}).get('free_bytes') }}"),
        entity("sensor", "oldest_footage_age", "oldest footage age", state_topic=topics.status,
               device_class="duration", unit_of_measurement="d", state_class="measurement",
               value_template="{% set a = value_json.get('oldest_footage_age_s') %}"
                              "{{ (a / 86400) | round(2) if a is not none else None }}"),
        entity("sensor", "incidents_open", "open incidents", state_topic=topics.status,
               state_class="measurement", icon="mdi:alert-octagon",
               value_template="{{ value_json.get('incidents_open') }}"),
        entity("button", "open_incident_now", "open incident now", command_topic=topics.command,
               payload_press=OPEN_NOW_BUTTON_PAYLOAD, icon="mdi:record-rec"),
    ]
    return out


def discovery_removals(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> list[str]:
    """Config topics present before and gone now: publishing an empty retained payload removes them."""
    keep = {t for t, _ in new}
    return [t for t, _ in old if t not in keep]


def _discovery_place(config: LinkConfig) -> tuple[str, int, str, str]:
    """Where a configuration's discovery configs live: broker (host, port), discovery prefix, node."""
    m = config.mqtt
    return m.host, m.port, m.discovery_prefix, _slug(f"edgerec_{config.device_id}")


def stale_discovery_topics(old: LinkConfig, new: LinkConfig) -> list[str]:
    """The discovery config topics published under ``old`` that nobody clears or overwrites once ``new``
    replaces it: on the same broker, prefix and node with discovery still on, those of entities ``new``
    no longer has (removed or disabled cameras); when ``new`` turns MQTT or discovery off, or publishes
    to another broker, prefix or node, every one of them (Home Assistant would keep them forever)."""
    if not (old.mqtt.enabled and old.mqtt.discovery):
        return []  # nothing was published
    before = discovery_messages(old, Topics.from_config(old))
    if new.mqtt.enabled and new.mqtt.discovery and _discovery_place(new) == _discovery_place(old):
        return discovery_removals(before, discovery_messages(new, Topics.from_config(new)))
    return [topic for topic, _ in before]


# ----- connection failures ----------------------------------------------------------------------------------
def describe_connect_failure(exc: BaseException | None, host: str, port: int, tls: TlsConfig | None) -> str:
    """One line saying why a connection attempt failed, for the log and the status's ``last_error``.

    A certificate the trusted CAs do not vouch for, or one naming another host, is a configuration
    problem that retrying will not fix: say what was checked against what."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (f"the CA in mqtt.tls.ca_file ({tls.ca_file})" if tls is not None and tls.ca_file
                   else "the system's CA store (no mqtt.tls.ca_file set)")
        # verify_message and reason are set by the ssl module on a real handshake failure.
        why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        return f"TLS certificate of the broker at {where} not accepted: {why}; checked against {trusted}"
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake with the broker at {where} failed: {getattr(exc, 'reason', None) or exc} "
                "(does the broker speak TLS on this port?)")
    if isinstance(exc, socket.gaierror):
        return f"broker host {host} not found: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"broker unreachable at {where}: {exc.strerror or exc}"
    return f"broker unreachable at {where}"


# ----- the link ---------------------------------------------------------------------------------------------
def read_password_file(path: Any) -> str:
    """The password in ``path`` without its trailing newline; ConfigError when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc}") from None


def _set_tcp_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Measured on loopback: with Nagle's algorithm on (paho's default) a command round trip takes ~90 ms,
    # waiting on delayed ACKs; with TCP_NODELAY here and on the broker (set_tcp_nodelay) ~0.5 ms.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # not a TCP socket (a proxy, a unix socket)
        log.debug("mqtt TCP_NODELAY not set error=%s", exc)


@dataclass
class _Stats:
    """The link's counters. paho's network thread, the publisher thread and any thread publishing an
    event change them, so every change and every read goes through the lock."""

    connects: int = 0
    disconnects: int = 0
    commands: int = 0
    command_errors: int = 0
    internal_errors: int = 0
    published: int = 0
    publish_failures: int = 0
    last_connect: str | None = None
    last_disconnect: str | None = None
    last_error: str | None = None
    session_present: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str, **fields: Any) -> None:
        """Add one to counter ``name`` and set ``fields``, together."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
            for key, value in fields.items():
                setattr(self, key, value)

    def note(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"session_present": self.session_present, "connects": self.connects,
                    "disconnects": self.disconnects, "commands": self.commands,
                    "command_errors": self.command_errors, "internal_errors": self.internal_errors,
                    "published": self.published, "publish_failures": self.publish_failures,
                    "last_connect": self.last_connect, "last_disconnect": self.last_disconnect,
                    "last_error": self.last_error}


@dataclass
class _Schedule:
    """What the publisher thread has to do next (guarded by MqttLink._lock)."""

    connected: bool = False  # a (re)connect happened: publish everything
    discovery: bool = False
    incidents: bool = False
    status_due_monotonic: float = 0.0
    last_status_monotonic: float = float("-inf")
    removals: list[str] = field(default_factory=list)


class MqttLink:
    """The daemon's MQTT client.

    ``status()`` and ``incidents()`` give the payloads of the retained status and incidents topics (the
    link sets the status's ``mqtt`` key itself, to ``stats()`` at the time it publishes);
    ``on_command(obj)`` handles a decoded incident command and returns the reply object (it must commit
    before returning: the MQTT message is acknowledged only afterwards, so a crash before the commit
    makes the broker deliver the command again). ``on_refused(fields)`` is told of every payload the link
    itself refuses (too large, not UTF-8, not JSON, a bad number, not an object), so that these refusals
    are audited like the ones ``on_command`` makes.

    Threads: paho's network thread (``loop_start``) receives commands and runs ``on_command``; a
    publisher thread of the link publishes availability, discovery, status (every ``status_interval_s``
    and on request) and incidents, so a slow ``status()`` never holds up the network thread.
    """

    def __init__(self, settings: MqttLinkSettings, *, status: Callable[[], dict[str, Any]],
                 incidents: Callable[[], list[dict[str, Any]]], on_command: CommandHandler,
                 clock_ns: Callable[[], int] = time.time_ns, on_refused: RefusalHandler | None = None):
        self._settings = settings
        self._status = status
        self._incidents = incidents
        self._on_command = on_command
        self._on_refused = on_refused
        self._clock_ns = clock_ns
        self.topics = Topics.from_config(settings)
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._schedule = _Schedule()
        self._stats = _Stats()
        self._publisher: threading.Thread | None = None
        self._connected = False
        self._subscribed = False  # the broker acknowledged our subscriptions on this connection
        # Events published before ``start`` (a link made to replace another is the daemon's link before it
        # connects): kept for ``start``, which hands them to paho's queue. Guarded by _lock.
        self._started = False
        self._early: list[tuple[str, str | bytes, bool, Properties | None]] = []

    # ----- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (the broker may be down) and start publishing."""
        if self._client is not None:
            raise RuntimeError("MqttLink already started")
        m = self._settings.mqtt
        client_id = m.client_id or f"edgerec-{self._settings.device_id}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.suppress_exceptions = True  # belt and braces: our callbacks catch everything themselves
        if log.isEnabledFor(logging.DEBUG):
            # paho reports an unreachable broker at error level on every retry; that is an expected
            # failure, logged once per attempt as a warning by _on_connect_fail instead.
            client.enable_logger(logging.getLogger(__name__ + ".paho"))
        authenticate(client, m)
        client.will_set(self.topics.availability, OFFLINE, qos=QOS, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = _set_tcp_nodelay
        props = Properties(PacketTypes.CONNECT)
        # clean_start=False alone is not enough: without a session expiry the broker forgets the session
        # (and the commands queued for us) the moment we disconnect.
        props.SessionExpiryInterval = m.session_expiry_s
        client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        self._client = client
        self._stopping.clear()
        client.loop_start()
        with self._lock:
            self._started = True
            early, self._early = self._early, []
        for topic, payload, retain, properties in early:
            self._publish(topic, payload, retain=retain, queue=True, properties=properties)
        self._publisher = threading.Thread(target=self._publisher_main, name="mqtt-publisher", daemon=True)
        self._publisher.start()
        tls = "off" if m.tls is None else ("ca_file" if m.tls.ca_file else "system_ca_store")
        log.info("mqtt starting host=%s port=%d client_id=%s base=%s tls=%s", m.host, m.port, client_id,
                 self.topics.base, tls)

    def stop(self, next_settings: MqttLinkSettings | None = None) -> list[str]:
        """Publish what is still due, then ``offline`` (a clean disconnect does not fire the will), then
        disconnect and stop.

        Still due: the discovery removals ``reconfigure`` scheduled, and, when a link for ``next_settings``
        is about to replace this one (a reload that changed the MQTT settings), the entities those settings
        leaves behind here (``stale_discovery_topics``). Each is waited for like ``offline``. Returns the
        removal topics not confirmed by the broker (not connected, or no PUBACK in time), for the next
        link to send (``take_over_removals``)."""
        client = self._client
        if client is None:
            return []
        self._stopping.set()
        self._wake.set()
        if self._publisher is not None:
            self._publisher.join(timeout=STOP_PUBLISH_TIMEOUT_S)
        with self._lock:
            removals, self._schedule.removals = self._schedule.removals, []
        if next_settings is not None:
            stale = stale_discovery_topics(self._settings, next_settings)
            removals += [t for t in stale if t not in removals]
        unsent = removals
        if client.is_connected():
            messages = [(topic, b"") for topic in removals] + [(self.topics.availability, OFFLINE.encode())]
            unconfirmed = self._publish_and_wait(client, messages, STOP_PUBLISH_TIMEOUT_S)
            if self.topics.availability in unconfirmed:
                log.warning("mqtt offline not sent")
            unsent = [topic for topic in removals if topic in unconfirmed]
            if len(unsent) < len(removals):
                log.info("mqtt discovery entities removed count=%d", len(removals) - len(unsent))
        if unsent:
            log.warning("mqtt discovery removals not sent count=%d", len(unsent))
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._connected = self._subscribed = False
        log.info("mqtt stopped")
        return unsent

    @staticmethod
    def _publish_and_wait(client: mqtt.Client, messages: list[tuple[str, bytes]],
                          timeout_s: float) -> set[str]:
        """Publish retained QoS 1 messages and wait (``timeout_s`` for all of them) for their PUBACKs;
        returns the topics not acknowledged."""
        infos = []
        for topic, payload in messages:
            try:
                infos.append((topic, client.publish(topic, payload, qos=QOS, retain=True)))
            except (ValueError, TypeError) as exc:
                log.warning("mqtt publish refused topic=%s error=%s", topic, exc)
        deadline = time.monotonic() + timeout_s
        unconfirmed = {topic for topic, _ in messages} - {topic for topic, _ in infos}
        for topic, info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt publish not confirmed topic=%s error=%s", topic, exc)
            if not info.is_published():
                unconfirmed.add(topic)
        return unconfirmed

    def take_over_removals(self, topics: list[str], previous: MqttLinkSettings) -> None:
        """Send discovery removals a replaced link could not (``stop`` returned them), once connected:
        only when this link talks to the same broker as ``previous``; on another broker those retained
        configs do not exist and the old broker is out of reach."""
        m, p = self._settings.mqtt, previous.mqtt
        if not topics or (m.host, m.port) != (p.host, p.port):
            return
        with self._lock:
            self._schedule.removals += [t for t in topics if t not in self._schedule.removals]
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected

    def thread_alive(self) -> bool:
        """True while paho's network thread and the publisher thread run (for the daemon's watchdog)."""
        client = self._client
        if client is None or self._publisher is None or not self._publisher.is_alive():
            return False
        # paho has no public accessor for the thread loop_start() made.
        thread = getattr(client, "_thread", None)
        return thread is not None and thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """A small dict for the daemon's status."""
        return {"enabled": True, "connected": self._connected, "subscribed": self._subscribed,
                **self._stats.snapshot()}

    # ----- publishing API (any thread; none of these block on the network) ---------------------------
    def status_changed(self) -> None:
        """Something in the status changed: publish soon, at most once per STATUS_MIN_INTERVAL_S."""
        now = time.monotonic()
        with self._lock:
            s = self._schedule
            soonest = status_due(s.last_status_monotonic, interval_s=self._settings.mqtt.status_interval_s,
                                 changed_at_s=now)
            s.status_due_monotonic = min(s.status_due_monotonic, soonest)
        self._wake.set()

    def publish_incidents(self) -> None:
        """Publish the retained list of open incidents (from the publisher thread)."""
        with self._lock:
            self._schedule.incidents = True
        self._wake.set()

    def publish_event(self, kind: str, **fields: Any) -> bool:
        """Publish one event on ``<base>/events`` (not retained); queued while the broker is away."""
        payload = {"event": kind, "at": rfc3339(self._clock_ns()), "device_id": self._settings.device_id,
                   **fields}
        log.info("mqtt event kind=%s", kind)
        return self._publish(self.topics.events, json.dumps(redact_obj(payload), default=str), retain=False,
                             queue=True)

    def reconfigure(self, settings: MqttLinkSettings) -> None:
        """Take new settings with the same MQTT settings (cameras added or removed): remove the discovery
        entities of cameras that are gone and publish the new ones."""
        old = discovery_messages(self._settings, self.topics)
        self._settings = settings
        with self._lock:
            self._schedule.removals += discovery_removals(old, discovery_messages(settings, self.topics))
            self._schedule.discovery = True
        self._wake.set()

    # ----- publisher thread -----------------------------------------------------------------------------
    def _publisher_main(self) -> None:
        interval_s = self._settings.mqtt.status_interval_s
        while not self._stopping.is_set():
            with self._lock:
                wait_s = self._schedule.status_due_monotonic - time.monotonic()
            if wait_s > 0:
                self._wake.wait(wait_s)
            if self._stopping.is_set():
                return
            self._wake.clear()
            with self._lock:
                s = self._schedule
                connected, s.connected = s.connected, False
                discovery, s.discovery = s.discovery or connected, False
                incidents, s.incidents = s.incidents or connected, False
                removals, s.removals = s.removals, []
                status = connected or time.monotonic() >= s.status_due_monotonic
                if status:
                    s.last_status_monotonic = time.monotonic()
                    s.status_due_monotonic = status_due(s.last_status_monotonic, interval_s=interval_s)
            try:
                self._publish_due(connected, removals, discovery, status, incidents)
            except Exception:  # a failing callback must not end the thread
                log.exception("mqtt publish failed")
                self._stats.note(last_error="publish failed (see log)")

    def _publish_due(self, connected: bool, removals: list[str], discovery: bool, status: bool,
                     incidents: bool) -> None:
        if not self._connected:
            # Everything else is published again on connect; removals are not, so keep them for then.
            if removals:
                with self._lock:
                    self._schedule.removals[:0] = removals
            return
        if connected:
            self._publish(self.topics.availability, ONLINE, retain=True)
        for topic in removals:
            self._publish(topic, b"", retain=True)
        if discovery and self._settings.mqtt.discovery:
            for topic, payload in discovery_messages(self._settings, self.topics):
                self._publish(topic, payload, retain=True)
        if status:
            # The link's own part is read here, when the status goes out, and not taken from the caller:
            # a snapshot built before this link existed, or before its SUBACK, would say "not subscribed"
            # until the next interval, and that change was already published with this status.
            status_obj = {**self._status(), "mqtt": self.stats()}
            self._publish(self.topics.status, json.dumps(redact_obj(status_obj), default=str), retain=True)
        if incidents:
            self._publish(self.topics.incidents, json.dumps(redact_obj(self._incidents()), default=str),
                          retain=True)

    def _publish(self, topic: str, payload: str | bytes, *, retain: bool, queue: bool = False,
                 properties: Properties | None = None) -> bool:
        client = self._client
        if client is None and queue:
            with self._lock:
                if not self._started:
                    if len(self._early) >= MAX_QUEUED_MESSAGES:
                        log.warning("mqtt publish dropped before start topic=%s", topic)
                        return False
                    self._early.append((topic, payload, retain, properties))
                    return True
            client = self._client
        if client is None or (not queue and not self._connected):
            return False
        try:
            info = client.publish(topic, payload, qos=QOS, retain=retain, properties=properties)
        except (ValueError, TypeError) as exc:  # bad topic (wildcards in a ResponseTopic) or payload
            log.warning("mqtt publish refused topic=%s error=%s", topic, exc)
            self._stats.count("publish_failures")
            return False
        # NO_CONN: paho keeps a QoS 1 message and sends it after the next connect.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("mqtt publish failed topic=%s error=%s", topic, mqtt.error_string(info.rc))
            self._stats.count("publish_failures")
            return False
        self._stats.count("published")
        return True

    # ----- paho callbacks (network thread; each catches everything) -------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    props: Properties | None) -> None:
        try:
            if reason.is_failure:
                self._stats.note(last_error=f"connect refused: {reason}")
                log.error("mqtt connect refused reason=%s", reason)
                return
            self._connected = True
            self._stats.count("connects", last_connect=rfc3339(self._clock_ns()),
                              session_present=bool(flags.session_present))
            # Subscribe every time: the broker may have lost the session. Commands are events, not state:
            # a retained command must not run again on each reconnect, hence RETAIN_DO_NOT_SEND.
            no_retained = SubscribeOptions(qos=QOS, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            subs = [(t, no_retained) for t in self.topics.command_topics]
            if self.topics.ha_status is not None:
                subs.append((self.topics.ha_status, no_retained))
            client.subscribe(subs)
            with self._lock:
                self._schedule.connected = True
            self._wake.set()
            log.info("mqtt connected session_present=%s", bool(flags.session_present))
        except Exception:
            log.exception("mqtt on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            m = self._settings.mqtt
            # paho calls this from inside its `except OSError:` around the connection attempt and does
            # not pass the exception on: it is the one being handled.
            exc = sys.exc_info()[1]
            message = describe_connect_failure(exc, m.host, m.port, m.tls)
            self._stats.note(last_error=message)
            if isinstance(exc, ssl.SSLError):  # a set-up problem retrying will not fix: error, not warning
                log.error("mqtt connect failed: %s", message)
            else:
                log.warning("mqtt connect failed: %s", message)
        except Exception:
            log.exception("mqtt on_connect_fail failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, props: Properties | None) -> None:
        try:
            was_connected, self._connected = self._connected, False
            self._subscribed = False
            if was_connected:
                self._stats.count("disconnects", last_disconnect=rfc3339(self._clock_ns()))
            if not self._stopping.is_set():
                log.warning("mqtt disconnected reason=%s", reason)
        except Exception:
            log.exception("mqtt on_disconnect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        try:
            refused = [code for code in reasons if code.is_failure]
            for code in refused:
                self._stats.note(last_error=f"subscribe refused: {code}")
                log.error("mqtt subscribe refused reason=%s", code)
            self._subscribed = not refused
            # The status published on connect went out before this SUBACK and says `subscribed: false`;
            # without a new one the retained status would keep saying so until the next interval.
            self.status_changed()
        except Exception:
            log.exception("mqtt on_subscribe failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.ha_status:
                self._on_ha_status(msg.payload)
            elif msg.topic in self.topics.command_topics:
                self._handle_command(msg)
            else:
                log.warning("mqtt message on unexpected topic=%s", msg.topic)
        except Exception:
            log.exception("mqtt message handling failed topic=%s", msg.topic)
        finally:
            # manual_ack: only now, after on_command has returned (and committed), may the broker forget
            # the message. A crash before this line leaves it unacknowledged and the broker redelivers.
            if msg.qos > 0:
                try:
                    client.ack(msg.mid, msg.qos)
                except Exception:
                    log.exception("mqtt ack failed mid=%s", msg.mid)

    def _on_ha_status(self, payload: bytes | bytearray) -> None:
        if payload.strip() == ONLINE.encode():
            log.info("home assistant online: republishing discovery")
            with self._lock:
                self._schedule.discovery = True
                self._schedule.status_due_monotonic = 0.0
            self._wake.set()

    def _handle_command(self, msg: mqtt.MQTTMessage) -> None:
        self._stats.count("commands")
        envelope = decode_command(bytes(msg.payload))
        if envelope.command is None:
            reply: Mapping[str, Any] = command_result_for_error(
                None, envelope.error or "malformed command").to_json_dict()
            self._refused(reply)
        elif (problem := unknown_action(envelope.command)) is not None:
            reply = {**command_result_for_error(envelope.command, problem).to_json_dict(), "action": None}
            self._refused(reply)
        else:
            command: Mapping[str, Any] = envelope.command
            asked = command.get("action")
            if asked == OPEN_NOW:
                command = expand_open_now(command, self._clock_ns())
            reply = self._call_on_command(command)
            if asked == OPEN_NOW:  # the reply names the action as the command did
                reply = {**reply, "action": OPEN_NOW}
        if not reply.get("ok"):
            self._stats.count("command_errors")
        log.info("incident command topic=%s action=%s id=%s ok=%s duplicate=%s error=%s redelivered=%s",
                 msg.topic, reply.get("action"), reply.get("id"), reply.get("ok"), reply.get("duplicate"),
                 reply.get("error"), bool(msg.dup))
        self._publish_reply(msg, envelope, reply)

    def _refused(self, reply: Mapping[str, Any]) -> None:
        if self._on_refused is None:
            return
        try:
            self._on_refused({"id": None, "action": None, "error": reply.get("error")})
        except Exception:  # auditing is best effort here; the reply still goes out
            log.exception("mqtt refusal not audited")

    def _call_on_command(self, command: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            reply = self._on_command(command)
            if not isinstance(reply, Mapping):
                raise TypeError(f"on_command returned {type(reply).__name__}, not a mapping")
            return reply
        except Exception:
            log.exception("incident command handler failed action=%s id=%s", command.get("action"),
                          command.get("id"))
            self._stats.count("internal_errors")
            return command_result_for_error(command, INTERNAL_ERROR).to_json_dict()

    def _publish_reply(self, msg: mqtt.MQTTMessage, envelope: Envelope, reply: Mapping[str, Any]) -> None:
        device_id = self._settings.device_id
        try:
            payload = finish_reply(redact_obj(reply), envelope, device_id)
        except (TypeError, ValueError, RecursionError):
            log.exception("incident reply not serialisable id=%s", reply.get("id"))
            self._stats.count("internal_errors")
            payload = fallback_reply(reply, envelope, device_id)
        self._publish(self.topics.result, payload, retain=False, queue=True)
        response_topic = getattr(msg.properties, "ResponseTopic", None) if msg.properties else None
        if response_topic:
            props = Properties(PacketTypes.PUBLISH)
            correlation = getattr(msg.properties, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
            self._publish(response_topic, payload, retain=False, queue=True, properties=props)


# ----- reading a retained message back (start-up) ---------------------------------------------------------
RETAINED_GRACE_S = 0.5  # after the broker acknowledged the subscription: its retained message comes first


def read_retained(settings: MqttLinkSettings, topic: str, timeout_s: float = 3.0) -> bytes | None:
    """The message retained on ``topic`` (the daemon's own status, for ``rollback``), read with a short
    separate connection before the link publishes anything; None when there is none, or the broker does
    not answer within ``timeout_s`` (start-up is not held up longer than that)."""
    m = settings.mqtt
    client_id = f"{m.client_id or f'edgerec-{settings.device_id}'}-readback"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.suppress_exceptions = True
    authenticate(client, m)
    got: list[bytes] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            done.set()
        else:
            client.subscribe(topic, qos=QOS)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_connect_fail(client: mqtt.Client, userdata: Any) -> None:
        done.set()  # no broker: do not wait for it (the link retries on its own)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.topic == topic:
            got.append(bytes(msg.payload))
            done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.on_connect_fail = on_connect_fail
    deadline = time.monotonic() + timeout_s
    try:
        client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=True)
        client.loop_start()
        while not (subscribed.is_set() or done.is_set()) and time.monotonic() < deadline:
            subscribed.wait(0.05)
        if subscribed.is_set() and not done.is_set():
            done.wait(max(0.0, min(RETAINED_GRACE_S, deadline - time.monotonic())))
    except (OSError, ValueError) as exc:
        log.warning("mqtt retained %s not read error=%s", topic, exc)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None
