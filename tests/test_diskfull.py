"""Disk pressure and a full disk on a real small filesystem: a size-limited tmpfs mounted by the test;
and incidents recorded on a completely full disk (the space reserve), through the CLI and over MQTT.

Mounting needs root (CAP_SYS_ADMIN): without it these tests skip and say so; the same policy with an
injected free-space reading is covered by ``tests/test_retention.py``
(``test_disk_pressure_deletes_oldest_unheld_early_and_audits_it``,
``test_disk_full_when_only_held_footage_is_left``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from edgerec import segfile
from edgerec.audit import verify_audit
from edgerec.layout import RESERVE_NAME
from edgerec.spacereserve import RESERVE_BYTES, SpaceReserve
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.audit import counted_incident_lines
from tests.helpers.broker import LOOPBACK, Broker, Listener, needs_mosquitto
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for, write_config
from tests.helpers.events import named, parse_log
from tests.helpers.mqtt_daemon import Setup, command, wait_online
from tests.helpers.site import S, make_site, newest_end_ns
from tests.helpers.tmpfs import MIB, fill_to, fill_up, free_bytes, needs_root_for_tmpfs, read_status, sealed

pytestmark = needs_root_for_tmpfs


# ----- disk pressure through the CLI ----------------------------------------------------------------------
def test_disk_pressure_on_a_small_filesystem_deletes_the_oldest_unheld_footage_across_cameras(
        recording, officer: OfficerKey, tmp_path: Path, small_fs):
    fs = small_fs("4m")
    site = make_site(recording, officer, tmp_path, data_dir=fs / "data", retention={"min_free": "1m"})
    segs = site.segments()
    gate, yard = segs["gate"], segs["yard"]
    held = {gate[0]["path"], gate[1]["path"]}
    opened = site.cli("incident", "open", "--id", "HOLD", "--camera", "gate", "--from", gate[0]["start"],
                      "--to", rfc3339(parse_rfc3339(gate[1]["start"]) + S // 10), "--json")
    assert opened["held_segments"] == 2
    by_start = sorted((s for c in segs.values() for s in c), key=lambda s: (s["start"], s["path"]))
    unheld = [s for s in by_start if s["path"] not in held]
    now = rfc3339(newest_end_ns(segs) + 60 * S)  # the footage is a minute old: nothing is due by age

    # About two and a half segments short of the 1 MiB mark.
    fill_to(fs, fs / "filler", MIB - 5 * unheld[0]["bytes"] // 2)
    report = site.sweep_at(now)
    gone = [d["path"] for d in report["deleted"]]
    assert 2 <= len(gone) <= 6 and {d["reason"] for d in report["deleted"]} == {"disk_pressure"}
    assert not report["disk_full"] and report["shortfall_bytes"] == 0
    # The oldest unheld footage of both cameras, in time order; the held segments are skipped. (The two
    # cameras' segments can start in the same millisecond: compare start times, not positions.)
    kept_unheld = [s["start"] for s in unheld if s["path"] not in gone]
    gone_starts = [d["start"] for d in report["deleted"]]
    assert max(gone_starts) <= min(kept_unheld)
    assert all(s["path"] in gone for s in unheld if s["start"] < max(gone_starts))
    assert set(gone) & {s["path"] for s in yard}
    assert held <= site.files() and not set(gone) & site.files()
    assert set(site.audited_deletions()) == set(gone)
    assert free_bytes(fs) >= MIB - 64 * 1024  # the sweep's own audit line and catalog pages aside

    # Now only the held footage could make room: everything unheld goes and the disk is full.
    fill_to(fs, fs / "filler", MIB // 4)
    report = site.sweep_at(now)
    assert report["disk_full"] and report["shortfall_bytes"] > 0
    assert site.files() == held
    text = site.cli("retention", "--dry-run", "--now", now)
    assert "DISK FULL" in text and "only held footage left" in text
    assert verify_audit(site.data_dir / "audit.log").ok


# ----- a really full disk under the running daemon ---------------------------------------------------------
def daemon_config(tmp_path: Path, officer: OfficerKey, data_dir: Path, **extra: Any) -> Path:
    return write_config(
        tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
        status_file=str(tmp_path / "status.json"),  # as under systemd: not on the data filesystem
        durability={"flush_seconds": 0.2, "fsync_seconds": 0.5},
        retention={"min_free": "1m"},
        cameras=[{"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
                  "encoder": {"codec": "libx264", "bitrate": "300k", "gop_seconds": 1}}], **extra)



def assert_every_file_verifies(cfg: Path, officer: OfficerKey, data_dir: Path) -> None:
    """After a restart's reconciliation: no unfinished segment is left, and every segment verifies
    (framing, signature, every chunk decrypted with the officer's key, the per-camera hash chain)."""
    assert not list(data_dir.glob("gate/*/*.partial"))
    infos = [segfile.read_info(path) for path in sealed(data_dir)]
    assert {i.state for i in infos} <= {"sealed", "recovered"}
    assert verify_audit(data_dir / "audit.log").ok
    sequences = [i.meta.sequence for i in infos]
    assert len(set(sequences)) == len(sequences), f"a sequence number used twice: {sequences}"
    verify = run_cli("verify", "-c", str(cfg), "--key", str(officer.private_path), "--json")
    report = json.loads(verify.stdout)
    assert report["ok"], f"verify found problems: {report['problems']}"
    assert verify.returncode == 0


def restart_for_reconciliation(cfg: Path, log_path: Path) -> None:
    with Daemon(cfg, log_path) as d:
        wait_for(lambda: d.events("reconcile done"), 30, "start-up reconciliation")
        assert d.terminate() == 0


def test_enospc_with_only_held_footage_pauses_recording_as_disk_full_and_resumes_when_space_returns(
        tmp_path: Path, officer: OfficerKey, small_fs):
    fs = small_fs("24m")
    data = fs / "data"
    cfg = daemon_config(tmp_path, officer, data)
    with Daemon(cfg, tmp_path / "daemon.log") as d:
        wait_for(lambda: len(sealed(data)) >= 2, 60, "two recorded segments")
        opened = run_cli("incident", "open", "-c", str(cfg), "--id", "HOLD", "--camera", "*", "--from",
                         rfc3339(time.time_ns() - 3600 * 10**9), "--json", check=True)
        assert json.loads(opened.stdout)["ok"]
        fill_up(fs / "filler")
        wait_for(lambda: read_status(tmp_path).get("state") == "disk_full", 20,
                 "disk_full in the status file")
        assert read_status(tmp_path)["retention"]["disk_full"] is True
        enospc = f"[Errno {errno.ENOSPC}]"
        wait_for(lambda: [e for e in d.events() if e.fields.get("camera") == "gate"
                          and e.fields.get("error", "").startswith(enospc)], 20,
                 "a segment write hitting ENOSPC")
        wait_for(lambda: read_status(tmp_path)["cameras"]["gate"]["state"] == "waiting_disk", 20,
                 "the recorder waiting for space")
        assert d.proc.poll() is None
        held_before = {p.name for p in sealed(data)}

        (fs / "filler").unlink()
        wait_for(lambda: read_status(tmp_path).get("state") == "recording", 20, "recording again")
        wait_for(lambda: len({p.name for p in sealed(data)} - held_before) >= 2, 30, "new segments")
        assert d.proc.poll() is None
        assert d.terminate() == 0
    assert d.events("disk full: only held footage is left; not starting new segments")
    assert d.events("disk space back; recording resumes")
    assert "Traceback" not in d.log()
    restart_for_reconciliation(cfg, tmp_path / "daemon2.log")
    assert held_before <= {p.name for p in sealed(data)}  # nothing held was deleted
    assert_every_file_verifies(cfg, officer, data)


def test_enospc_with_unheld_footage_makes_room_by_deleting_the_oldest_and_recording_goes_on(
        tmp_path: Path, officer: OfficerKey, small_fs):
    fs = small_fs("24m")
    data = fs / "data"
    cfg = daemon_config(tmp_path, officer, data)
    with Daemon(cfg, tmp_path / "daemon.log") as d:
        wait_for(lambda: len(sealed(data)) >= 3 and (data / ".space-reserve").exists(), 60,
                 "three recorded segments and the space reserve")
        fill_up(fs / "filler")  # stays: only deleting footage can make room
        filled = {p.name for p in sealed(data)}

        def deleted_for_space() -> set[str]:
            audit = data / "audit.log"
            lines = [json.loads(x) for x in audit.read_text().splitlines()] if audit.exists() else []
            return {Path(p).name for e in lines if e["event"] == "segments_deleted"
                    and e["reason"] == "disk_pressure" for p in e["paths"]}

        wait_for(lambda: deleted_for_space() & filled, 20, "the oldest footage deleted for space")
        wait_for(lambda: len({p.name for p in sealed(data)} - filled) >= 2, 30, "segments recorded after")
        assert d.proc.poll() is None
        assert d.terminate() == 0
    assert not [e for e in d.events() if e.name.startswith("retention sweep failed")]
    assert "Traceback" not in d.log()
    gone = deleted_for_space()
    assert min(gone) <= min(filled)  # the oldest went first
    assert not gone & {p.name for p in sealed(data)}
    restart_for_reconciliation(cfg, tmp_path / "daemon2.log")
    assert_every_file_verifies(cfg, officer, data)


# ----- an incident on a completely full disk ---------------------------------------------------------------
def audit_events(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (data_dir / "audit.log").read_text().splitlines()]


INCIDENT_EVENTS = ("incident_opened", "incident_closed", "incident_not_recorded")


def incident_events(data_dir: Path) -> list[dict[str, Any]]:
    """The audit lines of incident commands (not the clock's, nor the holds checks' lines around them)."""
    return [e for e in audit_events(data_dir) if e["event"] in INCIDENT_EVENTS]


def incident_ids(cfg: Path) -> list[str]:
    listed = run_cli("incident", "ls", "-c", str(cfg), "--all", "--json", check=True)
    return [i["id"] for i in json.loads(listed.stdout)]


def catalog_incident_lines(cfg: Path) -> list[tuple[str, str]]:
    """The (event, id) audit lines the catalog's incidents call for, read with ``edgerec incident ls``."""
    listed = json.loads(run_cli("incident", "ls", "-c", str(cfg), "--all", "--json", check=True).stdout)
    return [(event, i["id"]) for i in listed
            for event in ("incident_opened", "incident_closed") if event == "incident_opened" or i["closed"]]


def assert_audit_verifies(cfg: Path) -> None:
    verify = run_cli("audit", "verify", "-c", str(cfg))
    assert verify.returncode == 0 and "audit log OK" in verify.stdout, verify.stdout + verify.stderr


def empty_the_wal(data_dir: Path) -> None:
    """Checkpoint the catalog's WAL into the database and cut it to nothing (while there is room for the
    checkpoint): a process keeps reusing a WAL's blocks, and a commit on the full disk must need new ones."""
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite3", timeout=10)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def cli_open(cfg: Path, incident_id: str) -> subprocess.CompletedProcess[str]:
    return run_cli("incident", "open", "-c", str(cfg), "--id", incident_id, "--camera", "gate",
                   "--from", rfc3339(time.time_ns() - 60 * S) or "", "--by", "pytest", "--json")


def test_the_cli_records_an_incident_on_a_completely_full_disk_while_the_daemon_has_the_catalog_open(
        tmp_path: Path, officer: OfficerKey, small_fs):
    fs = small_fs("16m")
    data = fs / "data"
    cfg = daemon_config(tmp_path, officer, data)
    assert cli_open(cfg, "BEFORE").returncode == 0
    # The daemon's connection (without the daemon, so that nothing else writes): it keeps the WAL and the
    # WAL index in place, as on a running device.
    with contextlib.closing(sqlite3.connect(data / "catalog.sqlite3")) as daemons:
        daemons.execute("SELECT count(*) FROM incidents").fetchone()
        reserve = SpaceReserve.in_dir(data, RESERVE_BYTES)
        assert reserve.keep()  # as the daemon does after each sweep
        empty_the_wal(data)
        fill_up(fs / "filler")
        assert free_bytes(fs) == 0 and (data / "catalog.sqlite3-wal").stat().st_size == 0

        opened = cli_open(cfg, "FULL-1")
        assert opened.returncode == 0, opened.stdout + opened.stderr
        reply = json.loads(opened.stdout)
        assert reply["ok"] and not reply["duplicate"] and reply["error"] is None
        assert not reserve.path.exists()
        assert named(parse_log(opened.stderr), "disk full: space reserve released", path=reserve.path)
        # The audit line fitted in the log's last block, the commit did not fit in the WAL: the first
        # try's line is voided, then the retry's line follows.
        assert [(e["event"], e["id"]) for e in incident_events(data)] == [
            ("incident_opened", "BEFORE"), ("incident_opened", "FULL-1"),
            ("incident_not_recorded", "FULL-1"), ("incident_opened", "FULL-1")]
        assert incident_ids(cfg) == ["BEFORE", "FULL-1"]
        assert_audit_verifies(cfg)

        # No reserve left, and the disk full again: the clean error, and nothing half-written.
        empty_the_wal(data)
        fill_up(fs / "filler")
        assert free_bytes(fs) == 0 and not reserve.path.exists()
        refused = cli_open(cfg, "FULL-2")
        assert refused.returncode == 1
        reply = json.loads(refused.stdout)
        assert not reply["ok"] and reply["error"].startswith("not recorded: ")
        assert "disk is full" in reply["error"]
        assert incident_ids(cfg) == ["BEFORE", "FULL-1"]
        assert counted_incident_lines(audit_events(data)) == catalog_incident_lines(cfg)
        assert incident_events(data)[-1]["event"] == "incident_not_recorded"
        assert_audit_verifies(cfg)

        # Space again: the same command is recorded, as a new incident (nothing of it was kept).
        (fs / "filler").unlink()
        again = json.loads(cli_open(cfg, "FULL-2").stdout)
        assert again["ok"] and not again["duplicate"]
        assert counted_incident_lines(audit_events(data)) == catalog_incident_lines(cfg)


def test_the_cli_records_an_incident_on_a_completely_full_disk_with_the_daemon_stopped(
        tmp_path: Path, officer: OfficerKey, small_fs):
    fs = small_fs("16m")
    data = fs / "data"
    cfg = daemon_config(tmp_path, officer, data)
    assert cli_open(cfg, "BEFORE").returncode == 0
    reserve = SpaceReserve.in_dir(data, RESERVE_BYTES)
    assert reserve.keep()
    fill_up(fs / "filler")
    # Nobody has the catalog open: SQLite removed its WAL and WAL index and must make them again.
    assert free_bytes(fs) == 0 and not (data / "catalog.sqlite3-shm").exists()

    opened = cli_open(cfg, "FULL-1")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    assert json.loads(opened.stdout)["ok"] and not reserve.path.exists()
    assert incident_ids(cfg) == ["BEFORE", "FULL-1"]
    assert_audit_verifies(cfg)

    fill_up(fs / "filler")
    assert not list(data.glob("catalog.sqlite3-*"))  # the last process to close the catalog removed them
    refused = cli_open(cfg, "FULL-2")
    assert refused.returncode == 1
    assert "the disk is full" in refused.stderr and "nothing was recorded" in refused.stderr
    assert "move the file away" not in refused.stderr  # the catalog is fine: only the disk is full
    assert "FULL-2" not in (data / "audit.log").read_text()
    (fs / "filler").unlink()
    assert incident_ids(cfg) == ["BEFORE", "FULL-1"]
    assert counted_incident_lines(audit_events(data)) == catalog_incident_lines(cfg)


def read_camera_state(tmp_path: Path) -> str | None:
    return read_status(tmp_path).get("cameras", {}).get("gate", {}).get("state")


def fill_completely_under_the_daemon(fs: Path, data: Path, tmp_path: Path) -> None:
    """Fill the disk until nothing is left, the catalog's WAL emptied first. The daemon may still commit
    into the WAL until its recorder stops for want of space: such commits only append to it, so a later
    commit needs new blocks all the same."""
    empty_the_wal(data)
    fill_up(fs / "filler")
    wait_for(lambda: read_status(tmp_path).get("state") == "disk_full"
             and read_camera_state(tmp_path) == "waiting_disk", 30, "the daemon stopped by the full disk")
    fill_up(fs / "filler")  # whatever a last segment write gave back
    assert free_bytes(fs) == 0


@needs_mosquitto
def test_an_incident_opened_over_mqtt_is_recorded_on_a_completely_full_disk(
        tmp_path: Path, officer: OfficerKey, small_fs):
    fs = small_fs("24m")
    data = fs / "data"
    with Broker(tmp_path / "mosquitto") as broker:
        device_id = f"dev{uuid.uuid4().hex[:10]}"
        setup = Setup(daemon_config(tmp_path, officer, data, device_id=device_id,
                                    mqtt={"enabled": True, "host": LOOPBACK, "port": broker.port}),
                      data, device_id)
        with Listener(broker, [f"{setup.base}/#"]) as listener, \
                Daemon(setup.config, tmp_path / "daemon.log") as daemon:
            wait_online(listener, setup, daemon)
            wait_for(lambda: len(sealed(data)) >= 2 and (data / RESERVE_NAME).exists(), 60,
                     "two recorded segments and the space reserve")
            # Everything recorded is held: the daemon cannot make room by deleting footage.
            hold = command(listener, setup, {"action": "open", "id": "HOLD", "camera": "*", "by": "pytest",
                                             "from": rfc3339(time.time_ns() - 3600 * S)}, "t-hold", 5.0)
            assert hold["ok"]
            fill_completely_under_the_daemon(fs, data, tmp_path)

            reply = command(listener, setup, {"action": "open", "id": "FULL-1", "camera": "gate",
                                              "by": "pytest"}, "t-full-1", 5.0)
            assert reply["ok"] and not reply["duplicate"] and reply["error"] is None
            assert not (data / RESERVE_NAME).exists()
            wait_for(lambda: daemon.events("disk full: space reserve released"), 5, "the reserve given up")
            assert incident_ids(setup.config) == ["HOLD", "FULL-1"]
            assert_audit_verifies(setup.config)

            # No reserve left (the daemon makes it again only with twice its size free).
            fill_completely_under_the_daemon(fs, data, tmp_path)
            assert not (data / RESERVE_NAME).exists()
            refused = command(listener, setup, {"action": "open", "id": "FULL-2", "camera": "gate",
                                                "by": "pytest"}, "t-full-2", 5.0)
            assert not refused["ok"] and refused["error"].startswith("not recorded: ")
            assert incident_ids(setup.config) == ["HOLD", "FULL-1"]
            assert_audit_verifies(setup.config)
            assert daemon.proc.poll() is None

            (fs / "filler").unlink()
            again = command(listener, setup, {"action": "open", "id": "FULL-2", "camera": "gate",
                                              "by": "pytest"}, "t-full-2-again", 5.0)
            assert again["ok"] and not again["duplicate"]  # nothing of the refused open was kept
            assert counted_incident_lines(audit_events(data)) == catalog_incident_lines(setup.config)
            assert_audit_verifies(setup.config)
            assert daemon.terminate() == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
