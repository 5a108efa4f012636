"""Offload latency over a throttled link: how long after `edgerec incident open` is the incident's footage
(pre-roll and the segment being written) in the store, and how far behind does it stay while open?

Runs the real recorder (testsrc encoded at the camera's bitrate), a real S3 API server (moto's server
mode on a loopback port), the real `edgerec offload` service with `offload.bandwidth_limit`, and opens the
incident with the CLI. Usage:

    .venv/bin/python bench/offload.py [--preroll-s 60] [--follow-s 60] [--limit "500KB/s"]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* when run as a script

from edgerec.timefmt import parse_rfc3339  # noqa: E402
from tests.helpers.daemon import (  # noqa: E402
    REPO,
    Daemon,
    edgerec_cmd,
    make_officer_key,
    run_cli,
    wait_for,
    write_config,
)
from tests.helpers.s3_server import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402

BUCKET = "bench"


def newest_end_ns(server: S3Server) -> tuple[int, int, int]:
    """(newest media end in the store, sealed objects, bytes) from the objects' metadata."""
    client = server.client()
    newest = 0
    sealed = size = 0
    for obj in client.list_objects(BUCKET, prefix="edgerec/bench/cam/", recursive=True):
        size += obj.size or 0
        head = client.stat_object(BUCKET, obj.object_name)
        meta = {k.lower(): v for k, v in (head.metadata or {}).items()}
        if obj.object_name.endswith(".partial"):
            end = meta.get("x-amz-meta-end")
            if end:
                newest = max(newest, parse_rfc3339(end))
        else:
            sealed += 1
    return newest, sealed, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preroll-s", type=float, default=60.0, help="record this long before the incident")
    ap.add_argument("--follow-s", type=float, default=60.0, help="then watch the lag this long")
    ap.add_argument("--limit", default="500KB/s", help="offload.bandwidth_limit")
    ap.add_argument("--bitrate", default="2M", help="the camera's encoder bitrate")
    ap.add_argument("--segment-seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgerec-bench-offload-") as tmp_name:
        tmp = Path(tmp_name)
        server = S3Server(tmp / "moto.log").start()
        server.make_bucket(BUCKET)
        secret = tmp / "s3.secret"
        secret.write_text(SECRET_KEY)
        officer = make_officer_key(tmp / "officer.key")
        data_dir = tmp / "data"
        cfg = write_config(
            tmp / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=args.segment_seconds,
            cameras=[{"name": "cam", "url": "testsrc:size=640x480:rate=25",
                      "encoder": {"bitrate": args.bitrate}}],
            offload={"enabled": True, "endpoint": server.endpoint, "bucket": BUCKET,
                     "access_key_id": ACCESS_KEY, "secret_access_key_file": str(secret),
                     "bandwidth_limit": args.limit})
        cfg.write_text(cfg.read_text().replace("device_id: testdev", "device_id: bench"))
        with Daemon(cfg, tmp / "daemon.log") as daemon:
            print(f"recording {args.preroll_s:.0f} s of pre-roll ...", file=sys.stderr)
            time.sleep(args.preroll_s)
            log = open(tmp / "offload.log", "ab")  # noqa: SIM115 - closed below
            service = subprocess.Popen(edgerec_cmd("offload", "-c", str(cfg)), stdout=log,
                                       stderr=subprocess.STDOUT, cwd=REPO)
            try:
                time.sleep(2)  # the service is up and idle: nothing is held yet
                command_ns = time.time_ns()
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(command_ns / 1e9))
                run_cli("incident", "open", "-c", str(cfg), "--id", "bench", "--from", since, check=True)
                t0 = time.monotonic()
                wait_for(lambda: newest_end_ns(server)[0] >= command_ns - 2_000_000_000, 300,
                         "footage up to the command in the store", interval=0.5)
                first = time.monotonic() - t0
                # Pre-roll: every sealed segment of the window is in the store too.
                wait_for(lambda: "incident_offloaded" in (data_dir / "audit.log").read_text(), 300,
                         "the pre-roll in the store", interval=0.5)
                preroll = time.monotonic() - t0
                lags = []
                stop = time.monotonic() + args.follow_s
                while time.monotonic() < stop:
                    newest, _, _ = newest_end_ns(server)
                    lags.append((time.time_ns() - newest) / 1e9)
                    time.sleep(1.0)
                _, sealed, size = newest_end_ns(server)
            finally:
                service.terminate()
                service.wait(30)
                log.close()
            daemon.terminate()
        server.stop()
    print(f"bandwidth_limit {args.limit}, camera {args.bitrate}bps, "
          f"segment_seconds {args.segment_seconds:g}, pre-roll {args.preroll_s:.0f} s")
    print(f"footage up to the command in the store after {first:.1f} s; whole pre-roll after {preroll:.1f} s")
    print(f"while open: lag of the newest stored footage behind real time: max {max(lags):.1f} s, "
          f"median {sorted(lags)[len(lags) // 2]:.1f} s over {args.follow_s:.0f} s")
    print(f"store: {sealed} sealed segments, {size / 1e6:.1f} MB in objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
