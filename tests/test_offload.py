"""Offload to an S3-compatible store: the real recorder, the real `edgerec offload`, a real S3 API server
(moto's server mode on a loopback port) and the officer's export from the store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import keys, store
from edgerec.config import ConfigError, parse_config
from edgerec.timefmt import parse_rfc3339
from tests.helpers.daemon import (
    REPO,
    Daemon,
    OfficerKey,
    edgerec_cmd,
    run_cli,
    segment_count,
    wait_for,
    write_config,
)
from tests.helpers.media import decoded_frame_hashes
from tests.helpers.s3_server import ACCESS_KEY, SECRET_KEY, Outage, S3Server, needs_moto, s3  # noqa: F401

BUCKET = "evidence"
CAMERA = "gate"


# ----- pure parts ------------------------------------------------------------------------------------------
def _cfg(offload: Any) -> Any:
    recipient = keys.format_public_key(X25519PrivateKey.generate().public_key())
    return parse_config({"device_id": "pi1", "data_dir": "/d", "cameras": [{"name": "c", "url": "testsrc"}],
                         "recipients": [recipient], "offload": offload}, base_dir=Path("/etc/edgerec"))


def test_offload_config_problems_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg({"enabled": True, "endpoint": "ftp://x", "what": "some", "bandwidth_limit": "fast",
              "access_key_id": "k", "addressing_style": "dns", "prefix": "/a/"})
    text = "\n".join(err.value.problems)
    for key in ("offload.endpoint", "offload.what", "offload.bandwidth_limit", "offload.bucket: missing",
                "offload.secret_access_key_file: missing", "offload.addressing_style", "offload.prefix"):
        assert key in text


def test_offload_config_sizes_and_defaults() -> None:
    cfg = _cfg({"enabled": True, "bucket": "cctv-school", "bandwidth_limit": "2 MB/s",
                "secret_access_key_file": "s3.secret", "access_key_id": "k"}).offload
    assert cfg.bandwidth_limit_bytes_per_s == 2_000_000 and cfg.prefix == "edgerec" and cfg.what == "held"
    assert cfg.secret_access_key_file == Path("/etc/edgerec/s3.secret")
    assert _cfg({"bandwidth_limit": 500_000}).offload.bandwidth_limit_bytes_per_s == 500_000


def test_object_names_follow_the_data_directory() -> None:
    assert store.segment_key_for("edgerec", "pi1", "gate/2026-11-20/20261120T095500.000Z.seg") \
        == "edgerec/pi1/gate/2026-11-20/20261120T095500.000Z.seg"
    assert store.incident_key("edgerec", "pi1", "fight 1/ä") == "edgerec/pi1/_incidents/fight%201%2F%E4.json"
    assert store.parse_store_url("s3://bucket/a/b") == store.StoreUrl("bucket", "a/b")


def test_throttle_keeps_the_average_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    throttle = store.Throttle(1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        throttle.take(500)
    assert sum(slept) == pytest.approx(2.0)  # 2500 bytes at 1000 B/s: the first 500 go at once


# ----- with a recorder and a store -------------------------------------------------------------------------
def _config(tmp_path: Path, officer: OfficerKey, endpoint: str, **offload: Any) -> Path:
    data_dir = tmp_path / "data"
    return write_config(
        tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=offload.pop("seg", 4),
        durability={"flush_seconds": 1, "fsync_seconds": 1},
        cameras=[{"name": CAMERA, "url": "testsrc:size=320x240:rate=25"}],
        offload={"enabled": True, "endpoint": endpoint, "bucket": BUCKET, "access_key_id": ACCESS_KEY,
                 "secret_access_key_file": str(_secret(tmp_path)), **offload})


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "s3.secret"
    path.write_text(SECRET_KEY + "\n")
    path.chmod(0o600)
    return path


def _objects(server: S3Server, prefix: str = "") -> dict[str, bytes]:
    client = server.client()
    return {o.object_name: client.get_object(BUCKET, o.object_name).read()
            for o in client.list_objects(BUCKET, prefix=prefix, recursive=True)}


def _local_segments(data_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(data_dir).as_posix(): p.read_bytes() for p in data_dir.glob(f"{CAMERA}/*/*.seg")}


def _tree_digest(data_dir: Path) -> dict[str, str]:
    return {p.relative_to(data_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in data_dir.glob(f"{CAMERA}/*/*.seg")}


@needs_moto
@pytest.mark.slow
def test_incident_footage_reaches_the_store_within_60_s_and_exports_the_same(
        tmp_path: Path, officer: OfficerKey, s3: S3Server) -> None:  # noqa: F811
    s3.make_bucket(BUCKET)
    cfg = _config(tmp_path, officer, s3.endpoint, seg=20)
    data_dir = tmp_path / "data"
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: segment_count(data_dir, CAMERA) >= 1, 90, "a sealed segment (pre-roll)")
        wait_for(lambda: list(data_dir.glob(f"{CAMERA}/*/*.partial")), 30, "a segment being written")
        time.sleep(3)  # a few complete chunks in the open segment
        log = open(tmp_path / "offload.log", "ab")  # noqa: SIM115 - closed below
        service = subprocess.Popen(edgerec_cmd("offload", "-c", str(cfg)), stdout=log,
                                   stderr=subprocess.STDOUT, cwd=REPO)  # the offload service
        try:
            command_ns = time.time_ns()
            opened = run_cli("incident", "open", "-c", str(cfg), "--id", "vandal", "--from",
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            assert opened.returncode == 0, opened.stderr
            start = time.monotonic()

            def in_store() -> bool:
                objects = _objects(s3, "edgerec/testdev/")
                sealed = [k for k in objects if k.endswith(".seg")]
                provisional = [k for k in objects if k.endswith(".seg.partial")]
                record = objects.get("edgerec/testdev/_incidents/vandal.json")
                if not (sealed and provisional and record and "edgerec/testdev/device.pub" in objects):
                    return False
                heads = [s3.client().stat_object(BUCKET, k) for k in provisional]
                ends = [h.metadata.get("x-amz-meta-end") for h in heads]
                # Footage up to the moment of the command (less one chunk period still in RAM).
                return any(e and parse_rfc3339(e) >= command_ns - 2_000_000_000 for e in ends)

            wait_for(in_store, 60, "the incident's footage up to the command in the store", interval=0.5)
            elapsed = time.monotonic() - start
            print(f"incident footage in the store {elapsed:.1f} s after the command")
            assert elapsed < 60
        finally:
            service.terminate()
            assert service.wait(10) == 0
            log.close()
        assert daemon.terminate() == 0
    # The recorder sealed the open segment at stop: one more pass replaces the provisional object.
    once = run_cli("offload", "-c", str(cfg), "--once")
    assert once.returncode == 0, once.stderr
    objects = _objects(s3, "edgerec/testdev/")
    assert not [k for k in objects if k.endswith(".partial")]
    local = _local_segments(data_dir)
    for rel, data in local.items():
        assert objects[f"edgerec/testdev/{rel}"] == data
    audit = (data_dir / "audit.log").read_text()
    assert '"incident_offloaded"' in audit

    # The officer: export the same range from the store and from the data directory.
    first = min(local)
    start_s = first.split("/")[-1][:15]
    t_from = f"{start_s[:4]}-{start_s[4:6]}-{start_s[6:8]}T{start_s[9:11]}:{start_s[11:13]}:{start_s[13:15]}Z"
    t_to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    env_args = ("--camera", CAMERA, "--from", t_from, "--to", t_to, "--key", str(officer.private_path))
    local_out = tmp_path / "local.mp4"
    store_out = tmp_path / "store.mp4"
    exported = run_cli("export", "-c", str(cfg), *env_args, "-o", str(local_out), "--reason", "case 12")
    assert exported.returncode == 0, exported.stderr
    proc = _store_cli(s3, "export", "--store", f"s3://{BUCKET}/edgerec", "--endpoint", s3.endpoint,
                      "--device", "testdev", *env_args, "-o", str(store_out), "--reason", "case 12",
                      "--by", "dpo")
    assert proc.returncode == 0, proc.stderr
    assert decoded_frame_hashes(store_out) == decoded_frame_hashes(local_out)
    digests = [[s["digest"] for s in json.loads(Path(f"{o}.manifest.json").read_text())["segments"]]
               for o in (local_out, store_out)]
    assert digests[0] == digests[1]
    assert store_out.stat().st_mode & 0o777 == 0o600
    access = _store_cli(s3, "ls", "--store", f"s3://{BUCKET}/edgerec", "--endpoint", s3.endpoint, "--access",
                        "--json")
    records = json.loads(access.stdout)
    assert len(records) == 1 and records[0]["by"] == "dpo" and records[0]["reason"] == "case 12"
    assert sorted(s["sha256"] for s in records[0]["segments"]) == sorted(digests[1])
    listing = _store_cli(s3, "ls", "--store", f"s3://{BUCKET}/edgerec", "--endpoint", s3.endpoint)
    assert "device testdev" in listing.stdout and "incident vandal" in listing.stdout


def _store_cli(server: S3Server, *args: str) -> Any:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(edgerec_cmd(*args), capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def _record_some(tmp_path: Path, officer: OfficerKey, endpoint: str, segments: int = 3,
                 **offload: Any) -> Path:
    cfg = _config(tmp_path, officer, endpoint, seg=2, **offload)
    data_dir = tmp_path / "data"
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: segment_count(data_dir, CAMERA) >= segments, 90, f"{segments} segments")
        assert daemon.terminate() == 0
    opened = run_cli("incident", "open", "-c", str(cfg), "--id", "case1", "--from", _hour_ago())
    assert opened.returncode == 0, opened.stderr
    return cfg


@needs_moto
@pytest.mark.slow
def test_store_outage_mid_upload_then_recovery_loses_and_duplicates_nothing(
        tmp_path: Path, officer: OfficerKey, s3: S3Server) -> None:  # noqa: F811
    from edgerec.config import load_config
    from edgerec.offload import Offloader, store_settings

    s3.make_bucket(BUCKET)
    relay = Outage(s3.port).up()
    cfg_path = _record_some(tmp_path, officer, relay.endpoint, segments=4, bandwidth_limit=100_000)
    data_dir = tmp_path / "data"
    before = _tree_digest(data_dir)
    cfg = load_config(cfg_path)
    the_store = store.Store(store_settings(cfg), store.Throttle(cfg.offload.bandwidth_limit_bytes_per_s))
    offloader = Offloader(cfg, the_store)
    cutter = threading.Timer(1.5, relay.down)  # mid-upload: at 100 kB/s no segment is done by then
    cutter.start()
    try:
        failed = offloader.run_pass()
        assert failed.error and "store unreachable" in failed.error and BUCKET in failed.error
        assert _tree_digest(data_dir) == before  # local footage untouched
        status = json.loads(offloader.status_path.read_text())
        assert status["last_error"] and status["backlog_segments"] >= 1
        relay.up()
        for _ in range(5):
            if offloader.run_pass().empty:
                break
        else:
            pytest.fail("backlog not empty after the store came back")
    finally:
        cutter.cancel()
        relay.down()
        offloader.close()
    objects = _objects(s3, "edgerec/testdev/")
    local = _local_segments(data_dir)
    stored = {k.removeprefix("edgerec/testdev/"): v for k, v in objects.items() if k.endswith(".seg")}
    assert stored == local  # every segment once, byte for byte; nothing else
    assert _tree_digest(data_dir) == before
    assert json.loads(offloader.status_path.read_text())["backlog_segments"] == 0


@needs_moto
@pytest.mark.slow
def test_wrong_credentials_and_missing_bucket_give_one_line_and_the_recorder_goes_on(
        tmp_path: Path, officer: OfficerKey) -> None:
    server = S3Server(tmp_path / "moto.log", check_credentials=True).start()
    try:
        cfg = _config(tmp_path, officer, server.endpoint, seg=2)
        data_dir = tmp_path / "data"
        with Daemon(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: segment_count(data_dir, CAMERA) >= 1, 90, "a segment")
            assert run_cli("incident", "open", "-c", str(cfg), "--id", "x", "--from",
                           _hour_ago()).returncode == 0
            proc = run_cli("offload", "-c", str(cfg), "--once")
            assert proc.returncode == 1
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "credentials" in lines[0] and BUCKET in lines[0] and server.endpoint in lines[0]
            count = segment_count(data_dir, CAMERA)
            wait_for(lambda: segment_count(data_dir, CAMERA) > count, 30, "recording going on")
            assert daemon.terminate() == 0
    finally:
        server.stop()
    # A store that takes the credentials but has no such bucket.
    server = S3Server(tmp_path / "moto2.log").start()
    try:
        text = cfg.read_text()
        cfg.write_text(text.replace(f"127.0.0.1:{_port_of(text)}", f"127.0.0.1:{server.port}"))
        proc = run_cli("offload", "-c", str(cfg), "--once")
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "no such bucket" in proc.stderr and BUCKET in proc.stderr
        assert server.endpoint in proc.stderr
    finally:
        server.stop()


def _hour_ago() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))


def _port_of(text: str) -> str:
    match = re.search(r"127\.0\.0\.1:(\d+)", text)
    assert match
    return match.group(1)


@needs_moto
@pytest.mark.slow
def test_an_object_tampered_in_the_store_is_named_by_the_export(
        tmp_path: Path, officer: OfficerKey, s3: S3Server) -> None:  # noqa: F811
    s3.make_bucket(BUCKET)
    cfg = _record_some(tmp_path, officer, s3.endpoint, segments=3)
    assert run_cli("offload", "-c", str(cfg), "--once").returncode == 0
    client = s3.client()
    keys = sorted(k for k in _objects(s3, "edgerec/testdev/gate/"))
    victim = keys[1]
    data = bytearray(client.get_object(BUCKET, victim).read())
    data[len(data) // 2] ^= 0x01
    client.put_object(BUCKET, victim, io.BytesIO(bytes(data)), len(data))
    proc = _store_cli(s3, "export", "--store", f"s3://{BUCKET}/edgerec", "--endpoint", s3.endpoint,
                      "--device", "testdev", "--camera", CAMERA, "--from", "2000-01-01T00:00:00Z",
                      "--to", "2100-01-01T00:00:00Z", "--key", str(officer.private_path),
                      "-o", str(tmp_path / "out.mp4"), "--reason", "check")
    assert proc.returncode == 1
    assert f"s3://{BUCKET}/{victim}" in proc.stderr
