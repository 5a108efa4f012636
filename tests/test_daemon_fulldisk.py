"""The daemon started on a completely full disk (right after the event that filled it): it comes up,
reports disk_full, and records once space returns, instead of failing start-up until systemd gives up.

A real size-limited tmpfs is mounted by the test; mounting needs root (CAP_SYS_ADMIN), so without it the
test skips and says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgerec import segfile
from edgerec.audit import verify_audit
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config
from tests.helpers.tmpfs import fill_up, needs_root_for_tmpfs, read_status, sealed


@needs_root_for_tmpfs
def test_the_daemon_started_on_a_full_disk_comes_up_as_disk_full_and_records_once_space_returns(
        tmp_path: Path, officer: OfficerKey, small_fs) -> None:
    fs = small_fs("24m")
    data = fs / "data"
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
    fill_up(fs / "filler")
    held = {p.name for p in sealed(data)}

    with Daemon(cfg, tmp_path / "second.log") as d:
        wait_for(lambda: read_status(tmp_path).get("state") == "disk_full", 30, "disk_full in the status")
        assert read_status(tmp_path)["pid"] == d.proc.pid
        assert d.proc.poll() is None, "the daemon exited on a full disk"
        (fs / "filler").unlink()
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
