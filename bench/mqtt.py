"""Benchmark: incident command round trip over MQTT on loopback, publish → reply on ``incident/result``.

A private mosquitto is started on a free loopback port; the daemon's ``MqttLink`` runs with the real
incident parser and service over a catalog of ``--segments`` one-minute segments (spread over four
cameras), so every ``open`` commits an incident (and an audit line) and counts what it holds. Without
``edgerec.incidents`` the handler falls back to one SQLite insert + commit per command. A requester
publishes one command at a time (QoS 1) and waits for its reply, matched by ``transaction``.

Reported per kind (open, close, refused by the parser): p50, p99 and max in milliseconds.

    python bench/mqtt.py [--segments 100000] [--commands 300]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers.broker when run as a script

from edgerec.config import CameraConfig, Config, MqttConfig  # noqa: E402
from edgerec.incidents import command_result_for_error  # noqa: E402
from edgerec.layout import DataDir  # noqa: E402
from edgerec.mqtt import MqttLink, MqttLinkSettings, Topics  # noqa: E402
from tests.helpers.broker import Broker, set_tcp_nodelay  # noqa: E402

CAMERAS = ("gate", "yard", "hall", "roof")
SEGMENT_NS = 60 * 1_000_000_000
REPLY_TIMEOUT_S = 10.0


def fill_catalog(catalog: Any, data_dir: Path, segments: int, end_ns: int) -> int:
    """Add ``segments`` one-minute rows ending at ``end_ns``, round-robin over the cameras; returns start."""
    per_camera = segments // len(CAMERAS)
    start_ns = end_ns - per_camera * SEGMENT_NS
    with catalog.transaction():
        for cam in CAMERAS:
            for seq in range(per_camera):
                t = start_ns + seq * SEGMENT_NS
                meta = SimpleNamespace(camera=cam, sequence=seq, start_ns=t, clock_synced=True,
                                       boot_id="bench", monotonic_ns=seq * SEGMENT_NS)
                seg = SimpleNamespace(meta=meta, path=data_dir / cam / f"{seq:08d}.seg",
                                      end_ns=t + SEGMENT_NS, size_bytes=15_000_000, frames=1500,
                                      digest=bytes(32), state="sealed")
                catalog.add_segment(seg)
    return start_ns


Handler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def real_handler(config: Config, segments: int) -> tuple[Handler, int]:
    from edgerec.audit import AuditLog
    from edgerec.catalog import Catalog
    from edgerec.incidents import IncidentService

    catalog = Catalog.open(config.data_dir)
    audit = AuditLog(DataDir(config.data_dir).audit_path)
    t0 = time.perf_counter()
    start_ns = fill_catalog(catalog, config.data_dir, segments, time.time_ns())
    print(f"catalog: {segments} segments in {time.perf_counter() - t0:.1f} s")
    service = IncidentService(catalog, audit, config)

    def handle(obj: Mapping[str, Any]) -> Mapping[str, Any]:
        # The daemon's one entry point: parse, apply, and every failure as a reply.
        return service.handle(obj, time.time_ns(), source="mqtt").to_json_dict()

    return handle, start_ns


def sqlite_handler(config: Config) -> tuple[Handler, int]:
    conn = sqlite3.connect(config.data_dir / "bench.sqlite3", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE incidents (id TEXT PRIMARY KEY, body TEXT)")

    def handle(obj: Mapping[str, Any]) -> Mapping[str, Any]:
        if obj.get("action") not in ("open", "close"):
            return command_result_for_error(obj, "unknown action").to_json_dict()
        conn.execute("INSERT OR REPLACE INTO incidents VALUES (?, ?)", (obj.get("id"), json.dumps(obj)))
        return {"id": obj.get("id"), "action": obj.get("action"), "ok": True, "error": None,
                "duplicate": False, "held_segments": 0, "held_bytes": 0}

    return handle, time.time_ns() - 86_400 * 10**9


@dataclass
class Requester:
    """Publishes one command at a time and waits for the reply carrying its transaction."""

    client: mqtt.Client
    topics: Topics
    replies: dict[str, float]
    cond: threading.Condition

    @classmethod
    def connect(cls, broker: Broker, topics: Topics) -> Requester:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        req = cls(client, topics, {}, threading.Condition())
        subscribed = threading.Event()
        client.on_message = req._on_message
        client.on_socket_open = lambda c, u, sock: set_tcp_nodelay(sock)
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe(topics.result, 1)
        if not subscribed.wait(REPLY_TIMEOUT_S):
            raise RuntimeError("no SUBACK")
        return req

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        tx = json.loads(msg.payload).get("transaction")
        with self.cond:
            self.replies[tx] = time.perf_counter()
            self.cond.notify_all()

    def round_trip_s(self, command: dict[str, Any]) -> float:
        tx = uuid.uuid4().hex
        sent = time.perf_counter()
        self.client.publish(self.topics.command, json.dumps({**command, "transaction": tx}), qos=1)
        with self.cond:
            if not self.cond.wait_for(lambda: tx in self.replies, REPLY_TIMEOUT_S):
                raise RuntimeError(f"no reply to {command}")
            return self.replies.pop(tx) - sent


def rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


def percentiles_ms(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms  (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--commands", type=int, default=300, help="commands of each kind")
    parser.add_argument("--sqlite-only", action="store_true", help="use the plain SQLite handler")
    parser.add_argument("--broker-nagle", action="store_true",
                        help="leave mosquitto's set_tcp_nodelay at its default (off)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, \
            Broker(Path(tmp) / "mosquitto", tcp_nodelay=not args.broker_nagle) as broker:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        config = Config(device_id="bench", data_dir=data_dir, recipients=(),
                        cameras=tuple(CameraConfig(c, "testsrc") for c in CAMERAS),
                        mqtt=MqttConfig(enabled=True, host=broker.host, port=broker.port,
                                        client_id="edgerec-bench", discovery=False, status_interval_s=3600))
        try:
            if args.sqlite_only:
                raise ImportError("asked for")
            handler, start_ns = real_handler(config, args.segments)
            kind = f"real incident service, catalog of {args.segments} segments"
        except ImportError as exc:
            handler, start_ns = sqlite_handler(config)
            kind = f"SQLite insert + commit per command ({exc})"
        settings = MqttLinkSettings.from_config(config)
        link = MqttLink(settings, status=dict, incidents=list, on_command=handler)
        link.start()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not link.stats()["subscribed"]:
            if time.monotonic() > deadline:
                raise RuntimeError("link did not connect")
            time.sleep(0.01)
        req = Requester.connect(broker, Topics.from_config(settings))
        times: dict[str, list[float]] = {"open": [], "close": [], "refused": []}
        try:
            for i in range(args.commands):
                frm = start_ns + (i * 7919 % 20_000) * SEGMENT_NS  # spread over the catalog
                times["open"].append(req.round_trip_s({
                    "action": "open", "id": f"BENCH-{i}", "camera": CAMERAS[i % len(CAMERAS)],
                    "from": rfc3339(frm), "to": rfc3339(frm + 30 * SEGMENT_NS), "reason": "bench",
                    "by": "bench"}))
            for i in range(args.commands):
                times["close"].append(req.round_trip_s({"action": "close", "id": f"BENCH-{i}",
                                                        "by": "bench"}))
            for i in range(args.commands):
                times["refused"].append(req.round_trip_s({"action": "explode", "id": f"BAD-{i}"}))
        finally:
            req.client.disconnect()
            req.client.loop_stop()
            link.stop()
    nagle = "default (Nagle on)" if args.broker_nagle else "set_tcp_nodelay true"
    print(f"MQTT command round trip on loopback; broker {nagle}; handler: {kind}")
    for name, samples in times.items():
        print(f"  {name:8s} {percentiles_ms(samples)}")


if __name__ == "__main__":
    main()
