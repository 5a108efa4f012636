"""Test helpers for MQTT: a private mosquitto on a free loopback port, a test CA, and a recording client.

``Broker`` writes a ``mosquitto.conf`` into a directory of its own and runs ``mosquitto -c`` on a port
picked from the kernel; it can persist its state (for restart tests), speak TLS with certificates from
``make_test_ca`` and check users from a password file against an ACL file. ``Listener`` is a paho client
that records every message it receives and lets a test wait, with a deadline, for the one it expects.
Tests never touch a broker they did not start.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.daemon import wait_for
from tests.helpers.media import free_port

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
WAIT_TIMEOUT_S = 10.0


# ----- test CA ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestCa:
    """Paths of a CA certificate, a server certificate for localhost/127.0.0.1 and a client certificate."""

    __test__ = False  # not a pytest class

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(subject_cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_test_ca(directory: Path) -> TestCa:
    """Create a throw-away CA with a server certificate (localhost, 127.0.0.1) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgerec test CA")])
    ca_cert = _issue("edgerec test CA", ca_key, ca_name, ca_key, ca=True)
    names = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    paths = TestCa(*(directory / n for n in names))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, server in ((paths.server_cert, paths.server_key, True),
                                        (paths.client_cert, paths.client_key, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue("localhost" if server else "edgerec test client", key, ca_name, ca_key, ca=False,
                      server=server)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return paths


# ----- password file ------------------------------------------------------------------------------------
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd uses for its "$7$" (PBKDF2-SHA512) hashes


def mosquitto_password_line(user: str, password: str) -> str:
    """One line of a mosquitto password file, in the ``$7$`` PBKDF2-SHA512 format of mosquitto >= 2.0."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


# ----- broker -------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout_s: float = WAIT_TIMEOUT_S, what: str = "condition",
               interval_s: float = 0.01) -> Any:
    """``tests.helpers.daemon.wait_for`` with this module's defaults (short poll for broker round trips)."""
    return wait_for(predicate, timeout_s, what, interval_s)


class Broker:
    """A private mosquitto for one test or test module.

    ``users`` maps user names to passwords (anonymous access is then off), ``acl`` is the text of an ACL
    file, ``tls`` a ``TestCa`` whose server certificate the listener uses (``require_certificate`` asks
    clients for a certificate signed by the same CA); ``tcp_nodelay`` turns Nagle's algorithm off, as
    docs/mqtt.md recommends for brokers serving edgerec.
    """

    def __init__(self, directory: Path, *, persistence: bool = False, tls: TestCa | None = None,
                 require_certificate: bool = False, users: dict[str, str] | None = None,
                 acl: str | None = None, tcp_nodelay: bool = True):
        self.directory = directory
        self.persistence = persistence
        self.tls = tls
        self.require_certificate = require_certificate
        self.users = users
        self.acl = acl
        self.tcp_nodelay = tcp_nodelay
        self.host = LOOPBACK
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def _config_text(self) -> str:
        lines = [f"listener {self.port} {LOOPBACK}", f"allow_anonymous {'false' if self.users else 'true'}",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "connection_messages true"]
        if self.tcp_nodelay:
            lines.append("set_tcp_nodelay true")  # replies in well under a millisecond instead of ~40-90 ms
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to its own user and cannot read our files
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/", "autosave_interval 1"]
        if self.users:
            pw = self.directory / "passwd"
            pw.write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in self.users.items()))
            pw.chmod(0o600)
            lines.append(f"password_file {pw}")
        if self.acl is not None:
            acl = self.directory / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca_cert}", f"certfile {self.tls.server_cert}",
                      f"keyfile {self.tls.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        return "\n".join(lines) + "\n"

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> Broker:
        """Start mosquitto (on the same port as before when restarting) and wait until it accepts."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("broker already running")
        for _attempt in range(5):
            if not self.port:
                self.port = free_port()
            self.conf_path.write_text(self._config_text())
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
            try:
                self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf_path)], stdout=log,
                                                stderr=subprocess.STDOUT)
            finally:
                log.close()
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.process.poll() is None and not self._accepts():
                time.sleep(0.005)
            if self.process.poll() is None and self._accepts():
                return self
            self.process.wait(timeout=STOP_TIMEOUT_S)
            if "Address already in use" not in self.log_path.read_text(errors="replace"):
                break
            self.port = 0  # another process took the port between picking and binding: pick again
        raise RuntimeError(f"mosquitto did not start; log:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: mosquitto saves its persistent state) and wait for the process to end."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Stop at once (SIGKILL): nothing is saved."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def _signal_and_wait(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None


needs_mosquitto = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")


# ----- recording client ---------------------------------------------------------------------------------
def set_tcp_nodelay(sock: Any) -> None:
    """Turn Nagle's algorithm off on a paho socket (see ``tcp_nodelay`` of ``Broker``)."""
    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    correlation_data: bytes | None
    at_monotonic: float

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class Listener:
    """A paho MQTT v5 client that records what it receives, for tests.

    ``wait_for(topic, predicate)`` returns the first recorded message (since the last ``clear``) on a
    topic that satisfies the predicate, waiting up to a deadline.
    """

    def __init__(self, broker: Broker, topics: Iterable[str] = (), *, username: str | None = None,
                 password: str | None = None, tls: TestCa | None = None, client_id: str | None = None,
                 session_expiry_s: int | None = None):
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = list(topics)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"t-{uuid.uuid4().hex}", protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca_cert), certfile=str(tls.client_cert),
                                keyfile=str(tls.client_key))
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = lambda c, u, sock: set_tcp_nodelay(sock)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        props = None
        if session_expiry_s is not None:  # a persistent session: messages wait for us across reconnects
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(broker.host, broker.port, keepalive=30, clean_start=session_expiry_s is None,
                            properties=props)
        self.client.loop_start()
        if self._topics:
            if not self._subscribed.wait(WAIT_TIMEOUT_S):
                raise AssertionError("test listener: no SUBACK")
        else:
            wait_until(self.client.is_connected, what="test listener connected")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, corr, time.monotonic())
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, predicate: Callable[[Received], bool] = lambda m: True,
                 timeout_s: float = WAIT_TIMEOUT_S) -> Received:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for m in self.messages:
                    if m.topic == topic and predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self.messages]
                    raise AssertionError(f"timed out after {timeout_s:.1f} s waiting for a message on "
                                         f"{topic}; seen: {seen}")
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1,
                retain: bool = False, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT_TIMEOUT_S)

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self._topics.append(topic)
        self.client.subscribe(topic, 1)
        if not self._subscribed.wait(WAIT_TIMEOUT_S):
            raise AssertionError(f"test listener: no SUBACK for {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retained_on(broker: Broker, pattern: str) -> dict[str, bytes]:
    """The retained messages on topics matching ``pattern`` now. A new subscription gets them right
    after its SUBACK; a marker published once subscribed arrives after all of them."""
    marker = pattern.replace("+", "marker")
    with Listener(broker, [pattern]) as listener:
        listener.publish(marker, b"marker")
        listener.wait_for(marker)
        return {m.topic: m.payload for m in listener.messages if m.retain}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A mosquitto of the test module's own on a free loopback port (offered to every module by
    conftest.py)."""
    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b
