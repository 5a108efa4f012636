"""Secrets never leave: a unique password planted in every place a credential can go (a url's userinfo, its
query string, the arguments of an exec: camera, a camera's password_file, the MQTT password file) is
found in none of the daemon's outputs: its log, the status file, the MQTT messages (retained and live,
through a real mosquitto), the catalog, the audit log, an export and its manifest.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from edgerec.timefmt import rfc3339
from tests.helpers.broker import Broker, Listener, needs_mosquitto
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config
from tests.helpers.media import free_port


def secret(place: str) -> str:
    return f"{place}-{uuid.uuid4().hex}"


@needs_mosquitto
def test_a_planted_password_reaches_no_output(tmp_path: Path, officer: OfficerKey) -> None:
    planted = {place: secret(place) for place in ("userinfo", "query", "exec", "file", "mqtt")}
    data_dir = tmp_path / "data"
    cam_pass = tmp_path / "cam.pass"
    cam_pass.write_text(planted["file"] + "\n")
    cam_pass.chmod(0o600)
    mqtt_pass = tmp_path / "mqtt.pass"
    mqtt_pass.write_text(planted["mqtt"] + "\n")
    mqtt_pass.chmod(0o600)
    closed = free_port()  # nobody listens: every open fails with an error that names the url
    exec_url = f"rtsp://admin:{planted['exec']}@127.0.0.1:{closed}/s"
    cameras = [
        {"name": "gate", "url": "testsrc:size=160x120:rate=10"},
        {"name": "userinfo", "url": f"rtsp://admin:{planted['userinfo']}@127.0.0.1:{closed}/s",
         "timeout_seconds": 1, "health": False},
        {"name": "query", "url": f"http://127.0.0.1:{closed}/video?user=admin&password={planted['query']}",
         "timeout_seconds": 1, "health": False},
        # A camera program that repeats its arguments on stderr, as many do when they fail.
        {"name": "program", "url": f"exec:sh -c 'echo \"cannot reach $0 (--password $1)\" >&2; exit 1' "
                                   f"{exec_url} {planted['exec']}", "health": False},
        {"name": "fromfile", "url": f"rtsp://127.0.0.1:{closed}/s", "username": "admin",
         "password_file": str(cam_pass), "timeout_seconds": 1, "health": False},
    ]
    with Broker(tmp_path / "mosquitto", users={"testdev": planted["mqtt"], "watcher": "watch"}) as broker:
        config = write_config(
            tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1, cameras=cameras,
            status_file=str(tmp_path / "status.json"),
            mqtt={"enabled": True, "host": broker.host, "port": broker.port, "username": "testdev",
                  "password_file": str(mqtt_pass), "status_interval_s": 1})
        with Listener(broker, ["edgerec/#"], username="watcher", password="watch") as listener, \
                Daemon(config, tmp_path / "daemon.log") as daemon:
            def failed_everywhere() -> bool:
                try:
                    status = json.loads((tmp_path / "status.json").read_text())
                except (OSError, ValueError):
                    return False
                cams = status["cameras"]
                failing = ("userinfo", "query", "program", "fromfile")
                return segment_count(data_dir) >= 2 and all(cams.get(n, {}).get("error")
                                                            for n in failing)

            wait_for(failed_everywhere, 60, "every failing camera to report its error and gate to record")
            wait_for(lambda: listener.on("edgerec/testdev/status"), 30, "an MQTT status")
            daemon.proc.send_signal(1)  # SIGHUP: a reload logs and audits too
            wait_for(lambda: "config unchanged" in daemon.log(), 30, "the reload")
            assert daemon.terminate() == 0
            with Listener(broker, ["edgerec/#"], username="watcher", password="watch") as late:
                late.publish("edgerec/marker", b"marker")  # arrives after every retained message
                late.wait_for("edgerec/marker")
                retained = {m.topic: m.payload for m in late.messages if m.retain}
            live = [m.payload for m in listener.messages]
        status_text = (tmp_path / "status.json").read_text()

    # An export of what was recorded, with its manifest.
    out = tmp_path / "export.mp4"
    export = run_cli("export", "-c", str(config), "--key", str(officer.private_path), "--camera", "gate",
                     "--from", rfc3339(time.time_ns() - 3600 * 10**9), "--to", rfc3339(time.time_ns()),
                     "-o", str(out), "--reason", "secrets check", timeout=120)
    assert export.returncode == 0, export.stderr

    outputs: dict[str, bytes] = {
        "daemon log": (tmp_path / "daemon.log").read_bytes(),
        "status file": status_text.encode(),
        "export stderr": export.stderr.encode(),
        **{f"retained {topic}": payload for topic, payload in retained.items()},
        **{f"live message {i}": payload for i, payload in enumerate(live)},
        **{f"export {p.name}": p.read_bytes() for p in tmp_path.glob("export.mp4*")},
        **{f"data {p.relative_to(data_dir)}": p.read_bytes() for p in data_dir.rglob("*") if p.is_file()},
    }
    assert {"data catalog.sqlite3", "data audit.log", "export export.mp4.manifest.json"} <= outputs.keys()
    leaks = [(where, place) for where, data in outputs.items() for place, value in planted.items()
             if value.encode() in data]
    assert not leaks, "\n".join(f"{place} password in {where}" for where, place in leaks)
    # The errors were there, redacted (so the scan looked at text that held the urls).
    log = outputs["daemon log"].decode(errors="replace")
    assert f"rtsp://admin:***@127.0.0.1:{closed}/s" in log
    assert "password=***" in log
    assert "--password ***" in log
    assert json.loads(status_text)["cameras"]["fromfile"]["error"]["message"]
