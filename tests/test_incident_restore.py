"""Incident holds survive the loss of the catalog: footage recorded by the real daemon, incidents opened
and closed with the ``edgerec`` command, the catalog file damaged (its header overwritten) and moved
away; then the real daemon (or first a CLI sweep) restores the incidents from the real audit log, and a
retention sweep past the retention period keeps the held footage. Also what ``Catalog.open`` says about
a damaged catalog, a locked one and a full disk (real SQLite files, a real tmpfs)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgerec import catalog as catalog_module
from edgerec.catalog import Catalog
from edgerec.errors import CatalogError
from edgerec.layout import CATALOG_NAME
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for
from tests.helpers.events import Event, named, parse_log
from tests.helpers.site import (
    CAMERAS,
    DAY,
    S,
    Site,
    make_site,
    newest_end_ns,
)
from tests.helpers.tmpfs import fill_up, needs_root_for_tmpfs

# The footage is recorded once by the daemon (the `recording` fixture); the daemons started here only
# restore and reconcile, so no new footage blurs which segments a sweep must keep.
DISABLED = {camera: {"enabled": False} for camera in CAMERAS}
DAMAGED_ADVICE = "incidents restored from the audit log"


@pytest.fixture
def held_site(recording: Path, officer: OfficerKey,
              tmp_path: Path) -> tuple[Site, dict[str, Any]]:
    """A site with two incidents opened with the CLI, INC-GATE open and INC-YARD closed (still held: its
    grace period is 30 days), and what a sweep 29 days after the footage must keep."""
    site = make_site(recording, officer, tmp_path, cameras=DISABLED)
    segs = site.segments()
    gate, yard = segs["gate"], segs["yard"]
    assert len(gate) >= 6 and len(yard) >= 4, segs

    def window(segments: list[dict[str, Any]], first: int, last: int) -> tuple[str, str]:
        return (rfc3339(parse_rfc3339(segments[first]["start"]) + S // 10),
                rfc3339(parse_rfc3339(segments[last]["start"]) + S // 10))

    for inc_id, camera, (start, to) in (("INC-GATE", "gate", window(gate, 2, 4)),
                                        ("INC-YARD", "yard", window(yard, 1, 2))):
        opened = site.cli("incident", "open", "--id", inc_id, "--camera", camera, "--from", start, "--to", to,
                          "--reason", f"seen at the {camera}", "--by", "alice", "--json")
        assert opened["ok"] and opened["held_segments"] == (3 if camera == "gate" else 2), opened
    assert site.cli("incident", "close", "--id", "INC-YARD", "--by", "bob", "--json")["ok"]
    expected = {
        "incidents": site.cli("incident", "ls", "--all", "--json"),
        "everything": {s["path"] for c in CAMERAS for s in segs[c]},
        "held": {gate[i]["path"] for i in (2, 3, 4)} | {yard[i]["path"] for i in (1, 2)},
        "now": rfc3339(newest_end_ns(segs) + 29 * DAY),
    }
    assert [i["state"] for i in expected["incidents"]] == ["open", "closed"]
    return site, expected


def damage_catalog(data_dir: Path) -> None:
    """What an SD card does to a file: its first bytes (SQLite's header) become garbage."""
    assert not list(data_dir.glob(CATALOG_NAME + "-*"))  # closed cleanly: everything is in the file
    with open(data_dir / CATALOG_NAME, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef garbage from a failing card \x00\xff" * 4)


def move_catalog_away(data_dir: Path) -> None:
    for path in data_dir.glob(CATALOG_NAME + "*"):
        path.rename(data_dir.parent / (path.name + ".damaged"))


def assert_incidents_restored(site: Site, expected: list[dict[str, Any]]) -> None:
    """The same incidents and windows; opened and closed come from the audit lines' ts, written a moment
    after the command's own time."""
    restored = site.cli("incident", "ls", "--all", "--json")
    assert [i["id"] for i in restored] == [i["id"] for i in expected]
    for got, want in zip(restored, expected, strict=True):
        for key in ("opened", "closed"):
            if want[key] is None:
                assert got[key] is None
            else:
                assert 0 <= parse_rfc3339(got[key]) - parse_rfc3339(want[key]) < 2 * S, (key, got, want)
        assert {k: v for k, v in got.items() if k not in ("opened", "closed")} == \
               {k: v for k, v in want.items() if k not in ("opened", "closed")}


def restore_lines(site: Site) -> list[dict[str, Any]]:
    return [e for e in site.audit() if e["event"] == "incidents_restored"]


def sweep_keeps_exactly_the_held_footage(site: Site, expected: dict[str, Any]) -> None:
    assert site.files() == expected["everything"]  # the restarted daemon adopted the files, deleted none
    swept = site.sweep_at(expected["now"])
    assert {d["path"] for d in swept["deleted"]} == expected["everything"] - expected["held"]
    assert site.files() == expected["held"]
    assert "incident_not_recorded" not in {e["event"] for e in site.audit()}  # nothing was voided
    assert "audit log OK" in site.cli("audit", "verify")


def run_daemon_start_up(site: Site, log_path: Path) -> list[Event]:
    """Start the daemon, wait for its start-up (restore and reconciliation) to finish, stop it; return the
    events it logged."""
    with Daemon(site.config, log_path, clock_shift_ns=site.clock_shift_ns) as daemon:
        wait_for(lambda: daemon.events("reconcile done") or daemon.proc.poll() is not None, 60,
                 "the daemon's start-up reconciliation")
        assert daemon.terminate(30) == 0, daemon.log()[-3000:]
    return daemon.events()


def test_the_daemon_restores_the_incidents_of_a_damaged_and_moved_catalog(held_site, tmp_path):
    site, expected = held_site
    damage_catalog(site.data_dir)

    # The damaged catalog: both the CLI and the daemon say what it is and what to do.
    ls = run_cli("ls", "-c", str(site.config))
    assert ls.returncode == 1
    assert "is damaged (file is not a database)" in ls.stderr and DAMAGED_ADVICE in ls.stderr, ls.stderr
    with Daemon(site.config, tmp_path / "damaged.log") as daemon:
        assert daemon.wait(60) == 1
    assert "is damaged (file is not a database)" in daemon.log() and DAMAGED_ADVICE in daemon.log()

    move_catalog_away(site.data_dir)
    events = run_daemon_start_up(site, tmp_path / "daemon.log")
    assert named(events, "open incident restored from the audit log", id="INC-GATE", camera="gate")
    assert not named(events, "open incident restored from the audit log", id="INC-YARD")  # closed
    assert named(events, "incidents restored from the audit log", count=2, open=1, catalog="created",
                 chain_ok=True)

    assert_incidents_restored(site, expected["incidents"])
    [line] = restore_lines(site)
    assert {k: line[k] for k in ("count", "open", "source", "chain_ok", "catalog", "ids")} == {
        "count": 2, "open": 1, "source": "audit log", "chain_ok": True, "catalog": "created",
        "ids": ["INC-GATE", "INC-YARD"]}
    sweep_keeps_exactly_the_held_footage(site, expected)
    # The released footage still goes once the closed incident's grace period is over.
    closed_at = parse_rfc3339(site.cli("incident", "ls", "--all", "--json")[1]["closed"])
    later = site.sweep_at(rfc3339(closed_at + 31 * DAY))
    assert {d["path"] for d in later["deleted"]} == {p for p in expected["held"] if p.startswith("yard/")}


def test_a_cli_sweep_on_the_new_catalog_restores_the_holds_before_anything_else(held_site, tmp_path):
    site, expected = held_site
    damage_catalog(site.data_dir)
    move_catalog_away(site.data_dir)

    site.pass_time_until(parse_rfc3339(expected["now"]))
    first = run_cli("retention", "-c", str(site.config), "--now", expected["now"], "--json",
                    clock_shift_ns=site.clock_shift_ns)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["deleted"] == []  # the new catalog knows no segment yet
    assert named(parse_log(first.stderr), "open incident restored from the audit log", id="INC-GATE")
    assert_incidents_restored(site, expected["incidents"])

    # The daemon then finds a catalog that exists: already restored (marked), it is not restored twice,
    # and it adopts the footage; the next sweep keeps what the incidents hold.
    events = run_daemon_start_up(site, tmp_path / "daemon.log")
    assert not [e for e in events if e.name.endswith("restored from the audit log")]
    [line] = restore_lines(site)
    assert (line["count"], line["open"], line["catalog"]) == (2, 1, "created")
    sweep_keeps_exactly_the_held_footage(site, expected)


# ----- what Catalog.open says -------------------------------------------------------------------------------
def test_a_damaged_catalog_file_gets_the_advice_to_move_it_away(tmp_path):
    Catalog.open(tmp_path).close()
    damage_catalog(tmp_path)
    with pytest.raises(CatalogError) as exc:
        Catalog.open(tmp_path)
    message = str(exc.value)
    assert "is damaged (file is not a database)" in message
    assert "move it (and any catalog.sqlite3-wal and -shm next to it) away and start again" in message
    assert "segments are adopted from the files and incidents restored from the audit log" in message


def test_a_locked_catalog_is_not_called_damaged(tmp_path, monkeypatch):
    Catalog.open(tmp_path).close()
    holder = sqlite3.connect(tmp_path / CATALOG_NAME, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # as a process stuck inside a write would
        holder.execute("BEGIN EXCLUSIVE")
        monkeypatch.setattr(catalog_module, "BUSY_TIMEOUT_MS", 200)  # fail in 0.2 s, not 5
        with pytest.raises(CatalogError) as exc:
            Catalog.open(tmp_path)
    finally:
        holder.close()
    message = str(exc.value)
    assert "(database is locked): another process holds it locked" in message
    assert "not damaged: keep it" in message and "move" not in message and "damaged (" not in message
    Catalog.open(tmp_path).close()  # the lock gone, the same file opens


@needs_root_for_tmpfs
def test_a_catalog_on_a_full_disk_is_not_called_damaged(tmp_path, small_fs):
    data = small_fs("4m") / "data"
    data.mkdir()
    Catalog.open(data).close()  # closed: its WAL index must be made again at the next open
    fill_up(data.parent / "filler")
    with pytest.raises(CatalogError) as exc:
        Catalog.open(data)
    message = str(exc.value)
    assert "the disk is full" in message and "not damaged: keep it" in message, message
    assert "move" not in message
    (data.parent / "filler").unlink()
    Catalog.open(data).close()


def test_an_unreadable_audit_log_keeps_the_daemon_recording_but_never_sweeping(tmp_path, officer):
    from tests.helpers.daemon import open_daemon_state, write_config

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "audit.log").mkdir()  # unreadable as a file, even for root
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "gate", "url": "testsrc"}])
    daemon = open_daemon_state(cfg)  # the start-up goes on: the cameras would be recorded
    try:
        assert daemon.sweeps_blocked is not None and "audit log" in daemon.sweeps_blocked
        assert any("retention disabled until a restart" in e["message"] for e in daemon.last_errors)
        daemon.sweep_if_due(0.0)  # a sweep would be due at once
        assert daemon.last_sweep is None
    finally:
        daemon.catalog.close()
