"""Retention, incidents, the audit log and trusted time end to end: real segments recorded by
``edgerec run``, the real catalog and files, driven through the ``edgerec`` command (and, for clock jumps,
the daemon's own sweep loop fed with injected clock readings)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edgerec.audit import verify_audit
from edgerec.clock import ClockReading
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.daemon import OfficerKey, open_daemon_state
from tests.helpers.events import from_records, named
from tests.helpers.site import CAMERAS, CLIP_SECONDS, DAY, GRACE_DAYS, S, Site, make_site, newest_end_ns


@pytest.fixture
def site(recording: Path, officer: OfficerKey, tmp_path: Path) -> Site:
    return make_site(recording, officer, tmp_path)


# ----- incidents and sweeps through the CLI ----------------------------------------------------------------
def test_incident_holds_exactly_its_footage_through_sweeps_until_released_after_the_grace_period(site):
    segs = site.segments()
    assert all(len(segs[c]) >= CLIP_SECONDS - 1 for c in CAMERAS), segs
    everything = {s["path"] for c in CAMERAS for s in segs[c]}
    assert site.files() == everything
    gate = segs["gate"]
    # A window inside gate's 3rd..5th segments (segments touch: each ends where the next starts).
    start, to = parse_rfc3339(gate[2]["start"]) + S // 10, parse_rfc3339(gate[4]["start"]) + S // 10
    held = {gate[i]["path"] for i in (2, 3, 4)}
    opened = site.cli("incident", "open", "--id", "INC-7", "--camera", "gate", "--from", rfc3339(start),
                      "--to", rfc3339(to), "--reason", "theft", "--by", "alice", "--json")
    assert opened["ok"] and not opened["duplicate"] and opened["held_segments"] == 3

    # Idempotency: the same open is a duplicate; a conflicting one is refused with a clear message.
    again = site.cli("incident", "open", "--id", "INC-7", "--camera", "gate", "--from", rfc3339(start),
                     "--to", rfc3339(to), "--json")
    assert again["ok"] and again["duplicate"] and again["held_segments"] == 3
    clash = site.cli("incident", "open", "--id", "INC-7", "--camera", "gate", "--from", rfc3339(start),
                     "--to", rfc3339(to + S), expect=1)
    assert "ok=False" in clash and "INC-7 already exists with a different window" in clash
    assert [i["id"] for i in site.cli("incident", "ls", "--json")] == ["INC-7"]

    # 29 days after the footage: a dry run says what would go and why, and changes nothing.
    now = rfc3339(newest_end_ns(segs) + 29 * DAY)
    dry = site.cli("retention", "--dry-run", "--now", now, "--json")
    assert dry["dry_run"] and not dry["disk_full"]
    assert {d["path"] for d in dry["deleted"]} == everything - held
    assert {d["reason"] for d in dry["deleted"]} == {"age"}
    assert all(d["start"] and d["end"] and d["bytes"] > 0 for d in dry["deleted"])
    assert site.files() == everything
    assert "segments_deleted" not in {e["event"] for e in site.audit()}

    # The real sweep: exactly the unheld segments go, the audit log names every one of them.
    swept = site.sweep_at(now)
    assert {d["path"] for d in swept["deleted"]} == everything - held
    assert site.files() == held
    assert {s["path"] for c in CAMERAS for s in site.segments()[c]} == held
    assert site.audited_deletions() == dict.fromkeys(everything - held, "age")

    # Closed, the hold lingers for the grace period; after it, the footage goes as "released".
    closed = site.cli("incident", "close", "--id", "INC-7", "--by", "bob", "--json")
    assert closed["ok"] and not closed["duplicate"]
    assert site.cli("incident", "close", "--id", "INC-7", "--by", "bob", "--json")["duplicate"]
    assert site.cli("incident", "ls", "--json") == []
    assert site.sweep_at(now)["deleted"] == []
    assert site.files() == held
    closed_at = parse_rfc3339(site.cli("incident", "ls", "--all", "--json")[0]["closed"])
    later = rfc3339(closed_at + GRACE_DAYS * DAY + S)
    released = site.sweep_at(later)
    assert {d["path"]: d["reason"] for d in released["deleted"]} == dict.fromkeys(held, "released")
    assert site.files() == set()
    assert site.audited_deletions() == {**dict.fromkeys(everything - held, "age"),
                                        **dict.fromkeys(held, "released")}
    events = [e["event"] for e in site.audit()]
    assert events.count("incident_opened") == 1 and events.count("incident_closed") == 1
    assert "audit log OK" in site.cli("audit", "verify")


def test_per_camera_retention_is_applied_to_that_camera_only(recording, officer, tmp_path):
    site = make_site(recording, officer, tmp_path, cameras={"gate": {"retention": {"days": 2}}})
    segs = site.segments()
    dry = site.cli("retention", "--dry-run", "--now", rfc3339(newest_end_ns(segs) + 3 * DAY), "--json")
    assert {d["path"] for d in dry["deleted"]} == {s["path"] for s in segs["gate"]}


def test_audit_verify_names_an_edited_line(site):
    segs = site.segments()
    site.sweep_at(rfc3339(newest_end_ns(segs) + 29 * DAY))
    assert "audit log OK" in site.cli("audit", "verify")
    log_path = site.data_dir / "audit.log"
    lines = log_path.read_text().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if '"segments_deleted"' in line)
    assert k + 1 < len(lines)  # not the last line: an edit of the last line needs an anchored head
    lines[k] = lines[k].replace('"reason":"age"', '"reason":"released"')
    log_path.write_text("".join(lines))
    out = site.cli("audit", "verify", expect=1)
    assert f"BROKEN at line {k + 1}" in out and "edited" in out
    assert not verify_audit(log_path).ok


# ----- trusted time: the daemon's sweep loop with injected clock readings -----------------------------------
class InjectedClock:
    def __init__(self, reading: ClockReading):
        self.reading = reading

    def __call__(self) -> ClockReading:
        return self.reading

    def advance(self, seconds: float, *, jump_s: float = 0.0, synced: bool | None = None) -> None:
        r = self.reading
        self.reading = ClockReading(r.wall_ns + int((seconds + jump_s) * S), r.mono_ns + int(seconds * S),
                                    r.boot_id, r.synced if synced is None else synced)


@pytest.fixture
def daemon(site: Site, monkeypatch: pytest.MonkeyPatch):
    """The daemon's state opened in-process (catalog, audit log, sweeper, retention clock) over recorded
    footage, the kernel's clock readings injected (a new boot, 10 000 s up) and its events captured;
    recorders are not started."""
    clock = InjectedClock(ClockReading(newest_end_ns(site.segments()) + S, 10_000 * S, "boot-1", False))
    monkeypatch.setattr("edgerec.clock.read_clock", clock)
    d = open_daemon_state(site.config)
    events: list[tuple[str, dict[str, Any]]] = []
    d.event_observers.append(lambda kind, fields: events.append((kind, fields)))
    try:
        yield d, clock, events
    finally:
        d.catalog.close()


def tick(d: Any, clock: InjectedClock, mono_s: list[float], seconds: float = 0.25, **jump: Any) -> None:
    clock.advance(seconds, **jump)
    mono_s[0] += seconds
    d.sweep_if_due(mono_s[0])


def test_a_clock_jump_is_logged_audited_and_published_exactly_once(daemon, site, caplog):
    d, clock, events = daemon
    caplog.set_level(logging.WARNING)
    mono = [0.0]
    tick(d, clock, mono)  # the first sweep
    for _ in range(4):
        tick(d, clock, mono)
    tick(d, clock, mono, jump_s=3 * 3600, synced=True)  # NTP steps the clock 3 h ahead
    for _ in range(8):
        tick(d, clock, mono)
    tick(d, clock, mono, jump_s=-2 * 3600)  # and someone sets it back 2 h
    for _ in range(8):
        tick(d, clock, mono)

    jumps = [e for e in site.audit() if e["event"] == "clock_jump"]
    assert [round(j["seconds"]) for j in jumps] == [3 * 3600, -2 * 3600]
    assert [round(f["seconds"]) for k, f in events if k == "clock_jump"] == [3 * 3600, -2 * 3600]
    logged = named(from_records(caplog.records), "clock jump")
    assert [round(float(e.fields["seconds"])) for e in logged] == [3 * 3600, -2 * 3600]
    assert verify_audit(site.data_dir / "audit.log").ok
    # Neither jump deleted the (minutes-old) footage.
    assert len(site.files()) == sum(len(v) for v in site.segments().values()) > 0


@pytest.mark.parametrize("synced", [False, True])
def test_a_jump_ahead_neither_deletes_recent_footage_nor_keeps_it_forever(daemon, site, synced):
    """Whether or not the kernel calls the clock synchronised (a spoofed NTP server makes it so), a jump
    of the wall clock does not move the retention clock."""
    d, clock, events = daemon
    count = len(site.files())
    mono = [0.0]
    tick(d, clock, mono)
    tick(d, clock, mono, jump_s=40 * 86_400, synced=synced)  # a wrong clock, 40 days ahead
    assert len(site.files()) == count
    assert [k for k, _ in events].count("clock_jump") == 1
    # Time passes on the monotonic clock (the wall clock keeps its wrong offset): after 28 days the
    # footage is due, and goes.
    interval_s = d.config.retention.sweep_interval_s
    tick(d, clock, mono, seconds=27 * 86_400)
    assert len(site.files()) == count
    tick(d, clock, mono, seconds=86_400 + interval_s)
    assert site.files() == set()
    assert set(site.audited_deletions().values()) == {"age"}
    assert [k for k, _ in events].count("clock_jump") == 1
