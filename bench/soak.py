"""Soak test: the daemon records two real cameras for M minutes while the world around it misbehaves.

Unattended; prints one line per event and a summary, writes ``soak.json`` into the work directory and
exits 0 only when every check passed:

- a test-pattern camera (``testsrc``, encoded live) and an RTSP camera served by GStreamer
  (``tests/helpers/media.py``), both in real time;
- a private mosquitto (``tests/helpers/broker.py``) restarted every ``--broker-every`` seconds;
- the RTSP server killed every ``--camera-every`` seconds and restarted ``--camera-down`` seconds later;
- a retention sweep run every ``--sweep-every`` seconds as a separate ``edgerec retention --now T``
  process, with ``T`` jumped ahead so that it deletes the older footage while the daemon records;
- incidents opened (holding a window of past footage) and closed over MQTT every ``--incident-every`` s.

At the end: the daemon is still alive and exits 0 on SIGTERM; no recorder thread was restarted (status
file ``thread_restarts``); RSS growth (least-squares slope after a warm-up) stays under ``--rss-slope-mb-h``;
the only footage gaps are those of the RTSP camera while its server was down; every command got its
reply; footage held by an open incident survived every sweep; ``edgerec verify --key`` passes.

Run: ``.venv/bin/python bench/soak.py --minutes 30 [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgerec.catalog import Catalog  # noqa: E402
from edgerec.timefmt import rfc3339  # noqa: E402
from tests.helpers.broker import Broker, Listener  # noqa: E402
from tests.helpers.daemon import Daemon, make_officer_key, run_cli, wait_for, write_config  # noqa: E402
from tests.helpers.media import free_port, make_h264_clip, start_rtsp_server, stop_process  # noqa: E402

S = 1_000_000_000
DEVICE = "soakdev"
SAMPLE_EVERY_S = 5.0
REPLY_TIMEOUT_S = 60.0
WARMUP_S = 120.0
OUTAGE_SLACK_S = 15.0  # a gap may begin this much before the kill (stall detection) and end after restart


@dataclass
class Outage:
    down_monotonic: float
    down_ns: int
    up_ns: int | None = None


@dataclass
class Soak:
    work: Path
    minutes: float
    args: argparse.Namespace
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # transaction -> command
    open_incidents: list[str] = field(default_factory=list)
    sweeps: int = 0
    gaps: dict[tuple[str, int], Any] = field(default_factory=dict)  # every gap seen, by (camera, from)
    broker_restarts: int = 0

    def note(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        self.events.append(line)
        print(line, flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.note(f"PROBLEM {text}")


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def slope_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in bytes per hour."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    if den == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in samples) / den * 3600


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def send_command(soak: Soak, listener: Listener, topic: str, command: dict[str, Any]) -> str:
    tx = uuid.uuid4().hex[:12]
    soak.sent[tx] = command
    try:
        listener.publish(topic, {**command, "transaction": tx})
    except Exception as exc:  # the broker may be restarting; the reply check reports a lost command
        soak.note(f"publish failed tx={tx} error={exc}")
    return tx


def replies_by_tx(listener: Listener, topic: str) -> dict[str, dict[str, Any]]:
    out = {}
    for m in listener.on(topic):
        try:
            obj = m.json()
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("transaction"), str):
            out[obj["transaction"]] = obj
    return out


def held_paths(data_dir: Path, incident_ids: list[str]) -> set[str]:
    """Paths of the segments overlapping the hold windows of the given (open) incidents."""
    cat = Catalog.open(data_dir)
    try:
        out: set[str] = set()
        for inc in cat.incidents(open_only=True):
            if inc.id not in incident_ids:
                continue
            hi = inc.hold_end_ns
            for row in cat.segments():
                if row.deleting_ns is None and (inc.camera in ("*", row.camera)) and row.end_ns >= \
                        inc.hold_start_ns and (hi is None or row.start_ns <= hi):
                    out.add(row.path)
        return out
    finally:
        cat.close()


def run_soak(soak: Soak) -> dict[str, Any]:
    args = soak.args
    work = soak.work
    officer = make_officer_key(work / "officer.key")
    clip = work / "clip.ts"
    make_h264_clip(clip, seconds=10, fps=25, gop=25, size=(320, 240))
    data_dir = work / "data"
    broker = Broker(work / "broker", persistence=True).start()
    rtsp_port = free_port()
    url, rtsp = start_rtsp_server(clip, loop=True, port=rtsp_port)
    cfg = write_config(
        work / "edgerec.yaml", officer=officer, data_dir=data_dir, device_id=DEVICE,
        segment_seconds=args.segment_seconds,
        retention={"days": 1, "sweep_interval_s": 60},
        incidents={"pre_roll_s": 5, "post_roll_s": 5, "release_grace_days": 0},
        mqtt={"enabled": True, "host": broker.host, "port": broker.port, "discovery": False,
              "status_interval_s": 10},
        cameras=[{"name": "pattern", "url": "testsrc:size=320x240:rate=15"},
                 {"name": "ipcam", "url": url, "stall_seconds": 5, "timeout_seconds": 3}],
    )
    base = f"edgerec/{DEVICE}"
    command_topic, result_topic = f"{base}/incident/set", f"{base}/incident/result"
    status_path = data_dir / "status.json"
    daemon = Daemon(cfg, work / "daemon.log")
    listener = Listener(broker, [result_topic], session_expiry_s=3600)
    started = time.monotonic()
    end = started + soak.minutes * 60
    next_broker = started + args.broker_every
    next_camera = started + args.camera_every / 2
    next_sweep = started + args.sweep_every
    next_incident = started + 20
    next_sample = started
    sweep_offset_s = 0.0  # how far --now runs ahead of the wall clock
    max_restarts = 0
    try:
        wait_for(lambda: (st := read_status(status_path)) and all(
            c["state"] == "recording" for c in st["cameras"].values()) and len(st["cameras"]) == 2,
            60, "both cameras recording")
        soak.note(f"recording; daemon pid={daemon.proc.pid} broker port={broker.port} rtsp={url}")
        while time.monotonic() < end:
            now = time.monotonic()
            if daemon.proc.poll() is not None:
                soak.problem(f"daemon exited with {daemon.proc.returncode}")
                break
            if now >= next_sample:
                next_sample = now + SAMPLE_EVERY_S
                size = rss_bytes(daemon.proc.pid)
                if size is not None:
                    soak.rss.append((now - started, size))
                st = read_status(status_path)
                if st is not None:
                    restarts = sum(c.get("thread_restarts", 0) for c in st["cameras"].values())
                    if restarts > max_restarts:
                        max_restarts = restarts
                        soak.problem(f"recorder thread restarts={restarts}")
            if now >= next_broker:
                next_broker = now + args.broker_every
                broker.restart()
                soak.broker_restarts += 1
                soak.note(f"broker restarted (#{soak.broker_restarts})")
            if rtsp is not None and now >= next_camera:
                stop_process(rtsp)
                rtsp = None
                soak.outages.append(Outage(now, time.time_ns()))
                soak.note("rtsp server killed")
            elif rtsp is None and now >= soak.outages[-1].down_monotonic + args.camera_down:
                url, rtsp = start_rtsp_server(clip, loop=True, port=rtsp_port)
                soak.outages[-1].up_ns = time.time_ns()
                next_camera = now + args.camera_every
                soak.note("rtsp server back")
            if now >= next_incident:
                next_incident = now + args.incident_every
                if len(soak.open_incidents) >= 2 or (soak.open_incidents and soak.rng.random() < 0.4):
                    inc_id = soak.open_incidents.pop(0)
                    send_command(soak, listener, command_topic,
                                 {"action": "close", "id": inc_id, "by": "soak"})
                    soak.note(f"close {inc_id}")
                else:
                    inc_id = f"soak-{len(soak.sent)}"
                    back_s = soak.rng.uniform(10, 90)
                    frm = time.time_ns() - int(back_s * S)
                    camera = soak.rng.choice(["*", "pattern", "ipcam"])
                    send_command(soak, listener, command_topic, {
                        "action": "open", "id": inc_id, "camera": camera, "from": rfc3339(frm),
                        "to": rfc3339(frm + int(20 * S)), "reason": "soak", "by": "soak"})
                    soak.open_incidents.append(inc_id)
                    soak.note(f"open {inc_id} camera={camera} from={back_s:.0f}s ago")
            if now >= next_sweep:
                next_sweep = now + args.sweep_every
                _sweep(soak, cfg, data_dir, sweep_offset_s)
                # Next time jump further: what was recorded up to a minute or two ago goes.
                sweep_offset_s = 86_400 - soak.rng.uniform(60, 120)
            time.sleep(0.2)
        # ----- the end ------------------------------------------------------------------------------
        alive = daemon.proc.poll() is None
        if not alive:
            soak.problem("daemon not alive at the end")
        if rtsp is None:
            url, rtsp = start_rtsp_server(clip, loop=True, port=rtsp_port)
            soak.outages[-1].up_ns = time.time_ns()
        replies = _await_replies(soak, listener, result_topic)
        final_status = read_status(status_path) or {}
        code = daemon.terminate(60) if alive else daemon.proc.returncode
        if code != 0:
            soak.problem(f"daemon exit code {code} on SIGTERM")
        verify = run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path), timeout=600)
        if verify.returncode != 0:
            soak.problem(f"edgerec verify failed: {verify.stdout[-2000:]}{verify.stderr[-2000:]}")
        gaps = _check_gaps(soak, data_dir)
        warm = [(t, v) for t, v in soak.rss if t >= WARMUP_S]
        slope = slope_per_hour(warm)
        if slope > args.rss_slope_mb_h * 1e6:
            soak.problem(f"RSS grows {slope / 1e6:.1f} MB/h (limit {args.rss_slope_mb_h} MB/h)")
        rss_values = [v for _, v in soak.rss]
        return {
            "minutes": soak.minutes,
            "ok": not soak.problems,
            "problems": soak.problems,
            "broker_restarts": soak.broker_restarts,
            "camera_outages": len(soak.outages),
            "sweeps": soak.sweeps,
            "commands_sent": len(soak.sent),
            "commands_replied": len(replies),
            "commands_failed": sorted(tx for tx, r in replies.items() if not r.get("ok")),
            "thread_restarts": max_restarts,
            "rss_mb_first": round(rss_values[0] / 1e6, 1) if rss_values else None,
            "rss_mb_max": round(max(rss_values) / 1e6, 1) if rss_values else None,
            "rss_mb_last": round(rss_values[-1] / 1e6, 1) if rss_values else None,
            "rss_slope_mb_per_h": round(slope / 1e6, 2),
            "gaps": gaps,
            "segments": {name: cam.get("segments") for name, cam in final_status.get("cameras", {}).items()},
            "mqtt": final_status.get("mqtt"),
            "verify": verify.stdout.strip().splitlines()[-1:] if verify.stdout else [],
        }
    finally:
        listener.close()
        if daemon.proc.poll() is None:
            daemon.kill()
        if rtsp is not None:
            stop_process(rtsp)
        broker.kill()


def _sweep(soak: Soak, cfg: Path, data_dir: Path, offset_s: float) -> None:
    _collect_gaps(soak, data_dir)  # a sweep with --now ahead also forgets gaps older than the retention
    held_before = held_paths(data_dir, soak.open_incidents)
    now_arg = rfc3339(time.time_ns() + int(offset_s * S))
    proc = run_cli("retention", "-c", str(cfg), "--now", now_arg or "", "--json", timeout=300)
    soak.sweeps += 1
    if proc.returncode != 0:
        soak.problem(f"retention --now {now_arg} exited {proc.returncode}: {proc.stderr[-500:]}")
        return
    try:
        deleted = json.loads(proc.stdout).get("deleted", [])
    except ValueError:
        deleted = []
    gone = {p for p in held_before if not (data_dir / p).exists()}
    if gone:
        soak.problem(f"held footage deleted by a sweep: {sorted(gone)[:5]}")
    soak.note(f"retention --now {now_arg}: deleted {len(deleted)} segments, {len(held_before)} held kept")


def _await_replies(soak: Soak, listener: Listener, topic: str) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        replies = replies_by_tx(listener, topic)
        missing = [tx for tx in soak.sent if tx not in replies]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for tx in missing:
        soak.problem(f"no reply to command tx={tx} {soak.sent[tx]}")
    for tx, reply in replies.items():
        if tx in soak.sent and not reply.get("ok"):
            soak.problem(f"command refused tx={tx} {soak.sent[tx]} reply={reply}")
    return replies


def _collect_gaps(soak: Soak, data_dir: Path) -> None:
    cat = Catalog.open(data_dir)
    try:
        for g in cat.gaps():
            soak.gaps[(g.camera, g.from_ns)] = g
    finally:
        cat.close()


def _check_gaps(soak: Soak, data_dir: Path) -> list[dict[str, Any]]:
    """Every gap catalogued during the run must lie around an outage of the RTSP camera."""
    _collect_gaps(soak, data_dir)
    out = []
    for g in sorted(soak.gaps.values(), key=lambda g: g.from_ns):
        explained = g.camera == "ipcam" and any(
            g.from_ns >= o.down_ns - OUTAGE_SLACK_S * S
            and g.to_ns <= (o.up_ns or time.time_ns()) + OUTAGE_SLACK_S * S
            for o in soak.outages)
        out.append({"camera": g.camera, "from": rfc3339(g.from_ns), "to": rfc3339(g.to_ns),
                    "seconds": round((g.to_ns - g.from_ns) / S, 1), "reason": g.reason,
                    "explained": explained})
        if not explained:
            soak.problem(f"unexpected gap camera={g.camera} {rfc3339(g.from_ns)}..{rfc3339(g.to_ns)} "
                         f"reason={g.reason}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgerec soak test")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--dir", type=Path,
                   help="work directory (default: a new temporary one, removed on success)")
    p.add_argument("--segment-seconds", type=float, default=10)
    p.add_argument("--broker-every", type=float, default=180)
    p.add_argument("--camera-every", type=float, default=240)
    p.add_argument("--camera-down", type=float, default=20)
    p.add_argument("--sweep-every", type=float, default=150)
    p.add_argument("--incident-every", type=float, default=30)
    p.add_argument("--rss-slope-mb-h", type=float, default=20.0)
    args = p.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="edgerec-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    soak = Soak(work, args.minutes, args)
    soak.note(f"soak start minutes={args.minutes} work={work}")
    summary = run_soak(soak)
    (work / "soak.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print("SOAK OK" if summary["ok"] else f"SOAK FAILED: {len(summary['problems'])} problem(s)")
    if summary["ok"] and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
