"""The catalog is a cache, the audit log the record: a catalog edited with the daemon stopped (an
incident's row deleted, its close back-dated, a close added) never releases held footage, through the
real daemon and the real ``edgerec retention``; the pure comparison is tested directly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import stat

import pytest

from edgerec.catalog import IncidentRow
from edgerec.incidents.agreement import compare, mismatch_digest, stricter
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.daemon import run_cli
from tests.helpers.site import DAY, S, make_site, newest_end_ns

T0 = 1_800_000_000 * S
H = 3600 * S


def row(inc_id="A", camera="gate", from_ns=T0, to_ns=T0 + H, closed_ns=None, roll=0):
    return IncidentRow(inc_id, camera, from_ns, to_ns, "", "", T0, closed_ns=closed_ns, closed_by=None,
                       pre_roll_ns=roll, post_roll_ns=roll)


# ----- the pure comparison ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cat", "kind"), [
    (None, "missing"),
    (row(closed_ns=T0), "closed_early"),
    (row(camera="yard"), "camera"),
    (row(from_ns=T0 + 10 * 60 * S), "window"),
    (row(to_ns=T0 + H // 2), "window"),
])
def test_a_catalog_row_that_keeps_less_than_the_log_is_a_disagreement(cat, kind):
    found = compare([row()], {"A": cat}.get)
    assert [(d.id, d.kind) for d in found] == [("A", kind)]


@pytest.mark.parametrize("cat", [row(), row(camera="*"), row(from_ns=T0 - H), row(to_ns=None),
                                 row(to_ns=T0 + H + 30 * S)])
def test_a_catalog_row_that_keeps_as_much_or_more_agrees(cat):
    assert compare([row()], {"A": cat}.get) == []


def test_closes_compare_with_slack_and_an_earlier_close_is_caught():
    logged = row(closed_ns=T0 + DAY)
    assert compare([logged], {"A": row(closed_ns=T0 + DAY - 5 * S)}.get) == []  # milliseconds of writing
    assert compare([logged], {"A": row(closed_ns=None)}.get) == []  # open keeps more
    assert [d.kind for d in compare([logged], {"A": row(closed_ns=T0 + DAY - H)}.get)] == ["closed_early"]


def test_the_mismatch_digest_names_the_disagreements_not_their_order():
    a = compare([row("A"), row("B")], {}.get)
    assert mismatch_digest(a) == mismatch_digest(list(reversed(a)))
    assert mismatch_digest(a) != mismatch_digest(a[:1])


def test_stricter_holds_by_both_rows():
    assert stricter([row(closed_ns=T0)], [row()]) == [row(closed_ns=T0), row()]


# ----- the attacks, through the real daemon and CLI -----------------------------------------------------
def edit_catalog(data_dir, sql, *params):
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as conn, conn:
        conn.execute(sql, params)


ATTACKS = {
    "row_deleted": ("DELETE FROM incidents WHERE id = 'INC-1'",),
    "close_backdated": ("UPDATE incidents SET closed_ns = ? WHERE id = 'INC-1'", T0 - 400 * DAY),
    "close_added": ("UPDATE incidents SET closed_ns = ?, closed_by = 'x' WHERE id = 'INC-1'",
                    T0 - 400 * DAY),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_edited_catalog_releases_nothing_raises_the_alarm_once_and_is_repaired_from_the_log(
        attack, recording, officer, tmp_path):
    site = make_site(recording, officer, tmp_path)
    segs = site.segments()
    gate = segs["gate"]
    start, to = parse_rfc3339(gate[2]["start"]) + S // 10, parse_rfc3339(gate[4]["start"]) + S // 10
    held = {gate[i]["path"] for i in (2, 3, 4)}
    assert site.cli("incident", "open", "--id", "INC-1", "--camera", "gate", "--from", rfc3339(start),
                    "--to", rfc3339(to), "--by", "alice", "--json")["ok"]
    if attack == "close_backdated":
        assert site.cli("incident", "close", "--id", "INC-1", "--by", "bob", "--json")["ok"]
    edit_catalog(site.data_dir, *ATTACKS[attack])

    # The daemon starts on the edited catalog: its start-up check voids nothing (the line was confirmed).
    run_cli("run", "-c", str(site.config), "--exit-at-eof", check=True)
    events = [e["event"] for e in site.audit()]
    assert "incident_not_recorded" not in events and events.count("catalog_mismatch") <= 1

    # 29 days on, the real sweep deletes nothing by age, and says why and how to repair; no new alarm line.
    now = rfc3339(newest_end_ns(site.segments()) + 29 * DAY)
    site.pass_time_until(parse_rfc3339(now))
    for _ in range(2):
        proc = run_cli("retention", "-c", str(site.config), "--now", now, clock_shift_ns=site.clock_shift_ns)
    assert proc.returncode == 1 and "catalog disagrees with the audit log" in proc.stderr
    assert "edgerec incident repair" in proc.stderr
    assert held <= site.files() and site.audited_deletions() == {}
    assert [e["event"] for e in site.audit()].count("catalog_mismatch") == 1
    mismatch = next(e for e in site.audit() if e["event"] == "catalog_mismatch")
    assert [i["id"] for i in mismatch["incidents"]] == ["INC-1"]

    # The repair rewrites the row from the log; then age deletes all but the held footage.
    out = site.cli("incident", "repair")
    assert "rewrote incident INC-1" in out
    assert "incidents_repaired" in [e["event"] for e in site.audit()]
    swept = site.sweep_at(now)
    assert swept["catalog_disagrees"] is None
    deleted = {d["path"] for d in swept["deleted"]}
    assert deleted and not deleted & held and held <= site.files()
    assert {s["path"] for s in segs["yard"]} <= deleted
    assert "audit log OK" in site.cli("audit", "verify")


# ----- the audit log's own repairs and rollbacks ------------------------------------------------------------
def test_audit_verify_lists_a_torn_tail_repair(recording, officer, tmp_path):
    site = make_site(recording, officer, tmp_path)
    site.cli("incident", "open", "--id", "INC-0", "--from", rfc3339(newest_end_ns(site.segments())))
    log_path = site.data_dir / "audit.log"
    before = len(log_path.read_bytes().splitlines())
    torn = b'{"n":999,"ts":"2026-01-01T00:00:00.000Z","event":"incident_op'
    with open(log_path, "ab") as f:
        f.write(torn)
    run_cli("run", "-c", str(site.config), "--exit-at-eof", check=True)  # start-up repairs the tail
    out = site.cli("audit", "verify")
    assert "audit log OK" in out
    assert f"cut {len(torn)} bytes (SHA-256 {hashlib.sha256(torn).hexdigest()})" in out
    assert f"would have been line {before + 1}" in out


def test_a_start_on_an_older_audit_log_raises_rollback_suspected(recording, officer, tmp_path):
    site = make_site(recording, officer, tmp_path)
    site.cli("incident", "open", "--id", "INC-0", "--from", rfc3339(newest_end_ns(site.segments())))
    old = (site.data_dir / "audit.log").read_bytes()
    assert site.cli("incident", "open", "--id", "INC-1", "--camera", "gate", "--from",
                    rfc3339(newest_end_ns(site.segments())), "--json")["ok"]
    run_cli("run", "-c", str(site.config), "--exit-at-eof", check=True)
    heads = site.data_dir / "published-heads.json"
    assert stat.S_IMODE(heads.stat().st_mode) == 0o600
    published = json.loads(heads.read_text())["audit_head"]
    assert published["lines"] > len(old.splitlines())
    (site.data_dir / "audit.log").write_bytes(old)  # the log of an older copy
    proc = run_cli("--log-level", "info", "run", "-c", str(site.config), "--exit-at-eof", check=True)
    assert "rollback suspected" in proc.stderr
    alarm = [e for e in site.audit() if e["event"] == "rollback_suspected"]
    assert len(alarm) == 1 and alarm[0]["source"] == "heads_file"
    assert alarm[0]["remembered"] == f"{published['lines']}:{published['sha256']}"


def test_a_start_on_a_chain_shorter_than_its_published_head_raises_rollback_suspected(recording, officer,
                                                                                       tmp_path):
    """The audit log intact, but a camera's newest segments gone (removed by hand, with their catalog
    rows): the chain head the daemon remembered publishing shows it at the next start."""
    site = make_site(recording, officer, tmp_path)
    run_cli("run", "-c", str(site.config), "--exit-at-eof", check=True)
    published = json.loads((site.data_dir / "published-heads.json").read_text())["chain_heads"]["gate"]
    newest = sorted(site.data_dir.glob("gate/*/*.seg"))[-2:]
    for path in newest:
        path.unlink()
    proc = run_cli("--log-level", "info", "run", "-c", str(site.config), "--exit-at-eof", check=True)
    assert "rollback suspected" in proc.stderr and "camera gate's chain is behind" in proc.stderr
    alarm = [e for e in site.audit() if e["event"] == "rollback_suspected"]
    assert len(alarm) == 1 and alarm[0]["source"] == "heads_file"
    assert alarm[0]["remembered"] == f"gate={published['sequence']}:{published['digest']}"
    assert "before the" in alarm[0]["problem"]


def test_chains_behind_is_judged_per_camera() -> None:
    from edgerec.chainheads import ChainHead
    from edgerec.rollback import chains_behind

    a, b = "a" * 64, "b" * 64
    head = ChainHead("gate", 10, a)
    assert chains_behind([head], {"gate": ChainHead("gate", 12, b)}, "x") is None  # recorded on since
    assert chains_behind([head], {"gate": ChainHead("gate", 10, a)}, "x") is None
    assert chains_behind([head], {}, "x") is None  # no footage left of it: not judged
    behind = chains_behind([head], {"gate": ChainHead("gate", 7, b)}, "mqtt")
    assert behind is not None and behind.source == "mqtt" and behind.found.sequence == 7
    replaced = chains_behind([head], {"gate": ChainHead("gate", 10, b)}, "x")
    assert replaced is not None and "another segment" in replaced.problem
