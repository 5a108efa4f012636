"""Attacks on time, through the real daemon and the real ``edgerec`` command (docs/design/time.md).

Anyone on a school LAN can answer the Pi's NTP requests and set its wall clock; a reboot can claim any
downtime. Footage must never age faster than time really passes: these tests move the wall clock (and
the boot id) of the real processes, with ``tests.helpers.shifted``, and check what is deleted and what
the audit log records.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import pytest

from edgerec import trustedtime
from edgerec.clock import monotonic_ns
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.broker import make_test_ca
from tests.helpers.daemon import OfficerKey, run_cli
from tests.helpers.site import DAY, S, Site, make_site, newest_end_ns

HOUR = 3600 * S


@pytest.fixture
def site(recording: Path, officer: OfficerKey, tmp_path: Path) -> Site:
    return make_site(recording, officer, tmp_path)


def cli(site: Site, *args: str, clock: int | str = 0, expect: int = 0) -> str:
    proc = run_cli(*args, "-c", str(site.config), clock_shift_ns=clock)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return proc.stdout if expect == 0 else proc.stderr


def sweep(site: Site, clock: int | str) -> dict:
    return json.loads(cli(site, "retention", "--json", clock=clock))


def clock_lines(site: Site) -> list[dict]:
    return [e for e in site.audit() if e["event"] == "retention_clock"]


def rows(site: Site) -> list[tuple[str, int, int]]:
    with contextlib.closing(sqlite3.connect(site.data_dir / "catalog.sqlite3")) as conn:
        return conn.execute("SELECT path, end_ns, rclock_end_ns FROM segments").fetchall()


def test_a_wall_clock_set_40_days_ahead_deletes_nothing_and_stamps_nothing_old(site: Site) -> None:
    before = site.files()
    # The daemon starts and records with the wall clock 40 days ahead (real time does not move).
    cli(site, "run", "--exit-at-eof", clock=f"0:{40 * DAY}")
    assert before < site.files(), "it recorded"
    assert "segments_deleted" not in {e["event"] for e in site.audit()}
    start = [e for e in clock_lines(site) if e["by"] == "start"][-1]
    assert start["evidence"] == "monotonic"
    assert abs(start["clock"]["rclock_ns"] - time.time_ns()) < HOUR  # not 40 days ahead
    # Its footage carries the wrong wall time (evidence shows it), but its retention time is today's.
    new = [r for r in rows(site) if r[0] not in before]
    assert new and all(end > time.time_ns() + 39 * DAY for _, end, _ in new)
    assert all(abs(rclock - time.time_ns()) < HOUR for _, _, rclock in new)
    # Footage ages with real time only: 27 days on nothing is due, 29 days on all of it is.
    assert sweep(site, clock=27 * DAY)["deleted"] == []
    assert {d["path"] for d in sweep(site, clock=29 * DAY)["deleted"]} == site_catalogued(before, new)
    assert site.files() == set()


def site_catalogued(before: set[str], new: list[tuple[str, int, int]]) -> set[str]:
    return before | {path for path, _, _ in new}


def test_a_reboot_claiming_40_days_is_credited_one_day_and_the_footage_still_goes_in_time(site: Site) -> None:
    files = site.files()
    uptime_s = monotonic_ns() / 1e9
    # Another boot id, and a wall clock that says 40 days have passed since the last anchor.
    reboot = f"0:{40 * DAY}:boot-after-40-days"
    assert sweep(site, clock=reboot)["deleted"] == []
    assert site.files() == files
    start = clock_lines(site)[-1]
    assert start["evidence"] == "wall_capped"
    assert start["credited_s"] <= uptime_s + 86_400 + 60  # uptime, plus at most the one-day cap
    assert start["uncredited_s"] > 38 * 86_400
    # Time really passes in that boot: the footage goes when the retention clock says it is 28 days old
    # (a day credited, so a day early at most), never on the wall clock's say-so.
    credited_ns = int(start["credited_s"] * 1e9)
    almost = 28 * DAY - credited_ns - HOUR
    assert sweep(site, clock=f"{almost}:{40 * DAY + almost}:boot-after-40-days")["deleted"] == []
    done_ns = 28 * DAY - credited_ns + HOUR
    done = f"{done_ns}:{40 * DAY + done_ns}:boot-after-40-days"
    assert {d["path"] for d in sweep(site, clock=done)["deleted"]} == files
    lines = [e for e in site.audit() if e["event"] == "segments_deleted"]
    assert lines and all(e["time_source"] == "retention" and e["clock"]["boot_id"] == "boot-after-40-days"
                         for e in lines)


def test_a_sweep_is_never_handed_a_later_time(site: Site) -> None:
    files = site.files()
    ahead = rfc3339(time.time_ns() + 40 * DAY)
    err = cli(site, "retention", "--now", ahead, expect=2)
    assert "after the retention clock" in err and len(err.strip().splitlines()) == 1
    assert site.files() == files
    # A dry run may look ahead; it deletes nothing and writes nothing.
    audit_lines = len(site.audit())
    dry = json.loads(cli(site, "retention", "--dry-run", "--now", ahead, "--json"))
    assert {d["path"] for d in dry["deleted"]} == files and site.files() == files
    assert len(site.audit()) == audit_lines
    # Times outside what can be represented are refused with a message, not a traceback.
    assert "2300" in cli(site, "retention", "--dry-run", "--now", "2300-01-01", expect=2)
    # A given time the clock has reached is allowed, and the audit log records it with the clock used.
    now = newest_end_ns(site.segments()) + 29 * DAY
    swept = site.sweep_at(now)
    assert {d["path"] for d in swept["deleted"]} == files
    lines = [e for e in site.audit() if e["event"] == "segments_deleted"]
    assert lines and all(e["time_source"] == "given" and e["now"] == rfc3339(now) and e["clock"]["rclock_ns"]
                         for e in lines)


def test_a_clock_set_back_cannot_shorten_an_incidents_grace_period(site: Site) -> None:
    segs = site.segments()
    gate = segs["gate"]
    cli(site, "incident", "open", "--id", "INC-9", "--camera", "gate", "--from", gate[0]["start"],
        "--to", gate[-1]["end"], "--json")
    # Closed with the wall clock set 10 days back: the close takes the retention clock's time instead.
    cli(site, "incident", "close", "--id", "INC-9", "--json", clock=f"0:{-10 * DAY}")
    [inc] = json.loads(cli(site, "incident", "ls", "--all", "--json"))
    assert abs(parse_rfc3339(inc["closed"]) - time.time_ns()) < HOUR
    # So the gate footage is still held 29 days on (grace 30 days), while the yard's goes.
    swept = sweep(site, clock=29 * DAY)
    assert {d["path"] for d in swept["deleted"]} == {s["path"] for s in segs["yard"]}
    assert {s["path"] for s in gate} <= site.files()


# ----- an authenticated time source -----------------------------------------------------------------------
class _DateHandler(http.server.BaseHTTPRequestHandler):
    date_ns = 0

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(204)
        self.end_headers()

    def date_time_string(self, timestamp: float | None = None) -> str:  # the Date header it sends
        return email.utils.formatdate(self.date_ns / 1e9, usegmt=True)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def time_server(tmp_path: Path):
    """An HTTPS server on loopback whose Date header the test sets, with a certificate from a test CA."""
    ca = make_test_ca(tmp_path / "ca")
    handler = type("Handler", (_DateHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"https://localhost:{server.server_address[1]}/", ca.ca_cert
    finally:
        server.shutdown()
        server.server_close()


def test_trusted_time_reads_an_authenticated_date_and_nothing_else(time_server, tmp_path: Path) -> None:
    handler, url, ca_cert = time_server
    handler.date_ns = time.time_ns() + 40 * DAY
    got = trustedtime.fetch(url, ca_cert)
    assert got is not None and abs(got - handler.date_ns) < 2 * S
    assert trustedtime.fetch(url, None) is None  # a certificate the system does not trust: no time
    assert trustedtime.fetch(url.replace("localhost", "127.0.0.2"), ca_cert, timeout_s=1) is None
    assert trustedtime.date_of("not a date") is None and trustedtime.date_of(None) is None
    assert trustedtime.date_of("Thu, 03 Dec 2026 00:00:00 GMT") == parse_rfc3339("2026-12-03T00:00:00Z")


def test_a_downtime_the_trusted_source_confirms_is_credited_in_full(
        recording: Path, officer: OfficerKey, tmp_path: Path, time_server) -> None:
    handler, url, ca_cert = time_server
    site = make_site(recording, officer, tmp_path,
                     retention={"days": 28, "min_free": 0, "trusted_time": url,
                                "trusted_time_ca_file": str(ca_cert)})
    files = site.files()
    # Really off for 40 days: the wall clock and the trusted server agree, so the footage is due now.
    handler.date_ns = time.time_ns() + 40 * DAY
    swept = sweep(site, clock=f"0:{40 * DAY}:boot-after-40-days")
    start = [e for e in clock_lines(site) if e["by"] == "start"][-1]
    assert start["evidence"] == "trusted" and start["credited_s"] > 39.9 * 86_400
    assert {d["path"] for d in swept["deleted"]} == files
