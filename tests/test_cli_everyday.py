"""The operator's everyday commands: a data_dir that cannot be used is one line, read-only commands create
nothing, verify gives the same answer against a recording daemon every time, and human output speaks in
local times and plain words while --json keeps the machine fields."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config
from tests.helpers.tmpfs import mount_tmpfs

CAMERA = {"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
          "encoder": {"codec": "libx264", "gop_seconds": 1, "bitrate": 100_000}}


def config(tmp_path: Path, officer: OfficerKey, data_dir: Path, **extra: object) -> Path:
    return write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                        cameras=[CAMERA], mqtt={"enabled": False}, **extra)


def assert_one_line_config_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgerec: ")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ----- a data_dir the daemon cannot use ---------------------------------------------------------------
def test_data_dir_under_proc_is_one_line_naming_the_key(tmp_path: Path, officer: OfficerKey) -> None:
    cfg = config(tmp_path, officer, Path("/proc/edgerec-test"))
    proc = run_cli("run", "-c", str(cfg), timeout=60)
    assert_one_line_config_error(proc, "data_dir", "/proc/edgerec-test", "No such file or directory")


def test_data_dir_on_a_read_only_mount_is_one_line_naming_the_key(tmp_path: Path,
                                                                    officer: OfficerKey) -> None:
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    why_not = mount_tmpfs(mount_point, "1m")
    if why_not is not None:
        pytest.skip(why_not)
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True, timeout=30)
        cfg = config(tmp_path, officer, mount_point)
        proc = run_cli("run", "-c", str(cfg), timeout=60)
        assert_one_line_config_error(proc, "data_dir", str(mount_point), "not writable")
        # A directory to be made inside it: the reason is the file system's own.
        cfg = config(tmp_path, officer, mount_point / "data")
        assert_one_line_config_error(run_cli("run", "-c", str(cfg), timeout=60), "data_dir",
                                     "Read-only file system")
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30)


# ----- read-only commands create nothing ------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ("incident", "ls"), ("incident", "ls", "--all"), ("retention", "--dry-run"), ("ls",), ("verify",),
    ("audit", "verify"), ("status",),
], ids=lambda c: " ".join(c))
def test_read_only_commands_create_no_data_directory(tmp_path: Path, officer: OfficerKey,
                                                      command: tuple[str, ...]) -> None:
    absent = tmp_path / "nonexistent" / "edgerec"
    cfg = config(tmp_path, officer, absent)
    proc = run_cli(*command, "-c", str(cfg), timeout=60)
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no open incidents" not in proc.stdout
    if command[0] != "status":  # status looks for the daemon's status file, and says it found none
        assert str(absent) in proc.stderr
        assert "does not exist" in proc.stderr or "not a directory" in proc.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_read_only_commands_create_no_catalog_in_an_empty_data_directory(tmp_path: Path,
                                                                          officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    cfg = config(tmp_path, officer, data_dir)
    assert run_cli("incident", "ls", "-c", str(cfg)).stdout.strip() == "no open incidents"
    dry = run_cli("retention", "--dry-run", "-c", str(cfg))
    assert dry.returncode == 0 and "nothing to delete" in dry.stdout
    assert run_cli("ls", "-c", str(cfg), check=True).stdout.strip() == "no footage"
    assert list(data_dir.iterdir()) == []


# ----- against a recording daemon -----------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_verify_against_a_recording_daemon_passes_every_time_and_human_output_is_plain(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    cfg = config(tmp_path, officer, data_dir, incidents={"pre_roll_s": 0, "post_roll_s": 0})
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: segment_count(data_dir) >= 2, 60, "segments sealed")
        # 1 s segments: at least 30 runs, and on until 8 more segments were sealed while verify ran.
        start_count, failures, runs = segment_count(data_dir), [], 0
        while runs < 30 or (segment_count(data_dir) - start_count < 8 and runs < 300):
            proc = run_cli("verify", "-c", str(cfg), timeout=60)
            runs += 1
            if proc.returncode != 0:
                failures.append(f"run {runs}: {proc.stdout}{proc.stderr}")
        assert not failures, "\n".join(failures)
        assert segment_count(data_dir) - start_count >= 8

        since = (datetime.now() - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M")
        opened = run_cli("incident", "open", "-c", str(cfg), "--id", "INC-7", "--from", since,
                         "--reason", "a fight in the yard", "--by", "head")
        assert opened.returncode == 0, opened.stderr
        listed = run_cli("incident", "ls", "-c", str(cfg), check=True).stdout
        dry = run_cli("retention", "-c", str(cfg), "--dry-run", check=True).stdout
        as_json = json.loads(run_cli("incident", "ls", "-c", str(cfg), "--json", check=True).stdout)
        assert daemon.terminate() == 0, daemon.log()

    # Plain words: no None, local times (no RFC 3339 'T...Z'), an open end said as such.
    [line] = listed.splitlines()
    assert "None" not in line and "=" not in line and "Z" not in line.split(";")[0]
    assert line.startswith(f"INC-7 (open): every camera, {since}:00") and "until closed" in line
    assert "reason: a fight in the yard" in line
    # --json keeps the machine fields.
    assert as_json[0]["to"] is None and as_json[0]["closed"] is None and as_json[0]["from"].endswith("Z")
    # A dry run that deletes nothing says what is kept and by which incident.
    assert "kept by open incidents:" in dry and "INC-7 (open)" in dry and "holds " in dry
    assert "segments (" in dry or "segment (" in dry


def test_listing_says_one_gap_not_one_gaps_and_gives_local_times() -> None:
    from edgerec.inventory import format_listing

    env_tz = os.environ.get("TZ")
    listing = {"cameras": {"gate": {
        "segments": [{"start": "2026-11-20T09:55:00.000Z", "end": "2026-11-20T09:55:10.000Z", "frames": 250,
                      "bytes": 1_000_000, "state": "complete", "path": "gate/a.seg"}],
        "gaps": [{"from": "2026-11-20T09:55:10.000Z", "to": "2026-11-20T09:55:33.700Z", "seconds": 23.7,
                  "reason": "stalled"}]}}}
    text = format_listing(listing)
    assert text.splitlines()[0] == "gate: 1 segment, 1.0 MB, 1 gap"
    assert "T09:55" not in text and "(23.7 s)" in text
    assert env_tz == os.environ.get("TZ")
