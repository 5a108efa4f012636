"""The daemon started on a completely full disk (right after the event that filled it): it comes up,
reports disk_full, and records once space returns, instead of failing start-up until systemd gives up.

A real size-limited tmpfs is mounted by the test; mounting needs root (CAP_SYS_ADMIN), so without it the
test skips and says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerec import segfile
from edgerec.audit import verify_audit
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config

MIB = 1024 * 1024


@pytest.fixture
def full_disk_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN): run as root to test a real full disk")
    path = tmp_path / "fs"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill_up(filler: Path) -> None:
    """Write ``filler`` until the filesystem says ENOSPC, in smaller and smaller pieces."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for piece in (MIB, 64 * 1024, 4096, 512):
            block = bytes(piece)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x" * 4096)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def read_status(tmp_path: Path) -> dict[str, Any]:
    try:
        return json.loads((tmp_path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def sealed(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("gate/*/*.seg"), key=lambda p: p.name)


def test_the_daemon_started_on_a_full_disk_comes_up_as_disk_full_and_records_once_space_returns(
        tmp_path: Path, officer: OfficerKey, full_disk_fs: Path) -> None:
    data = full_disk_fs / "data"
    cfg = write_config(
        tmp_path / "edgerec.yaml", officer=officer, data_dir=data, segment_seconds=1,
        status_file=str(tmp_path / "status.json"),  # as under systemd: not on the data filesystem
        durability={"flush_seconds": 0.2, "fsync_seconds": 0.5},
        retention={"min_free": "8m"},  # above the space reserve: releasing it does not end disk_full
        cameras=[{"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
                  "encoder": {"codec": "libx264", "bitrate": "300k", "gop_seconds": 1}}])
    with Daemon(cfg, tmp_path / "first.log") as d:
        wait_for(lambda: segment_count(data) >= 2, 60, "two catalogued segments")
        wait_for(lambda: (data / ".space-reserve").exists(), 20, "the space reserve")
        opened = run_cli("incident", "open", "-c", str(cfg), "--id", "HOLD", "--camera", "*", "--from",
                         rfc3339(time.time_ns() - 3600 * 10**9), "--json", check=True)
        assert json.loads(opened.stdout)["ok"]  # every segment held: no sweep can make room
        d.kill()  # a crash leaves an unfinished segment for start-up reconciliation to recover
    fill_up(full_disk_fs / "filler")
    held = {p.name for p in sealed(data)}

    with Daemon(cfg, tmp_path / "second.log") as d:
        wait_for(lambda: read_status(tmp_path).get("state") == "disk_full", 30, "disk_full in the status")
        assert read_status(tmp_path)["pid"] == d.proc.pid
        assert d.proc.poll() is None, "the daemon exited on a full disk"
        (full_disk_fs / "filler").unlink()
        wait_for(lambda: read_status(tmp_path).get("state") == "recording", 30, "recording again")
        wait_for(lambda: len({p.name for p in sealed(data)} - held) >= 2, 60, "new segments recorded")
        assert d.proc.poll() is None
        assert d.terminate() == 0
        assert "Traceback" not in d.log()

    assert held <= {p.name for p in sealed(data)}  # nothing held was deleted
    assert verify_audit(data / "audit.log").ok
    infos = [segfile.read_info(path) for path in sealed(data)]
    sequences = [i.meta.sequence for i in infos]
    assert len(set(sequences)) == len(sequences), f"a sequence number used twice: {sequences}"
