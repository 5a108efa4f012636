"""Input at the edges (docs/security.md): numbers that are not finite or too large, times outside
1970..2199 (with or without an offset), and control characters of every kind (C0, DEL, C1, bidi) in ids,
names and free text are refused with a clear reply, in MQTT commands, the CLI and the config; a refused
command is audited like an accepted one (rate-limited); a reply that cannot be serialised is replaced by
an error reply, never dropped. Each rule directly, then through the real daemon and broker; and the
chain heads the daemon publishes, given back to ``edgerec verify --head``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerec import timefmt
from edgerec.config import parse_config
from edgerec.errors import CommandError, ConfigError
from edgerec.incidents.commands import parse_command
from edgerec.incidents.service import RefusalBudget
from edgerec.inputcheck import MAX_JSON_INT, loads_json, text_problem
from edgerec.mqtt import Envelope, decode_command, fallback_reply, finish_reply
from tests.helpers.broker import Broker, Listener, needs_mosquitto
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, wait_for
from tests.helpers.mqtt_daemon import (
    REPLY_DEADLINE_S,
    Running,
    Setup,
    command,
    incidents_cli,
    make_setup,
    running_daemon,
    wait_for_segments,
    wait_online,
)

NOW = timefmt.parse_rfc3339("2026-11-20T09:55:00Z")
OPEN = {"action": "open", "id": "INC-1", "camera": "gate", "from": "2026-11-20T09:00:00Z", "by": "officer"}
UNSAFE = ["\x00", "\x07", "\t", "\n", "\x1b", "\x7f", "\x80", "\x85", "\x9f", "\u202a", "\u202e", "\u2066",
          "\u2069"]


# ----- the rules, directly ------------------------------------------------------------------------------
@pytest.mark.parametrize("ch", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_every_kind_of_control_character_breaks_the_text_rule(ch: str) -> None:
    problem = text_problem(f"ab{ch}c")
    assert problem is not None and f"U+{ord(ch):04X} at position 3" in problem
    assert text_problem("Gate – north, 09:55 (Zoë)") is None  # ordinary text, other scripts and dashes pass


@pytest.mark.parametrize("ch", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
@pytest.mark.parametrize("key", ["reason", "by", "camera"])
def test_a_command_with_a_control_character_is_refused(ch: str, key: str) -> None:
    with pytest.raises(CommandError, match=f"field '{key}' contains .*U\\+{ord(ch):04X}"):
        parse_command({**OPEN, key: f"x{ch}y"}, cameras=["gate"], now_ns=NOW)


def test_an_id_with_a_control_character_is_refused() -> None:
    for ch in UNSAFE:
        with pytest.raises(CommandError, match="field 'id'"):
            parse_command({**OPEN, "id": f"INC{ch}1"}, cameras=["gate"], now_ns=NOW)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(MAX_JSON_INT + 1),
                                  "9" * 5000])
def test_json_numbers_must_be_finite_and_exact(text: str) -> None:
    payload = f'{{"action": "open", "id": "X", "camera": "*", "transaction": {text}}}'.encode()
    envelope = decode_command(payload)
    assert envelope.command is None and envelope.error is not None
    assert envelope.error.startswith("payload refused: ") and ("finite" in envelope.error
                                                               or "too large" in envelope.error
                                                               or "not a JSON number" in envelope.error)
    assert loads_json(str(MAX_JSON_INT)) == MAX_JSON_INT and loads_json("-1.5e3") == -1500.0


@pytest.mark.parametrize("text", [
    "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-05:00",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "2300-01-01T00:00:00Z", "2300-01-01 00:00",
    "1900-01-01 12:00",
])
def test_times_outside_1970_to_2199_are_refused_with_or_without_an_offset(text: str) -> None:
    with pytest.raises(CommandError, match="outside what edgerec can represent"):
        timefmt.parse_time(text)
    obj = {**OPEN, "from": text}
    if " " not in text:  # commands take RFC 3339 only
        with pytest.raises(CommandError, match="field 'from': .*outside what edgerec can represent"):
            parse_command(obj, cameras=["gate"], now_ns=NOW)


def test_the_edges_of_the_time_range_are_accepted() -> None:
    assert timefmt.parse_rfc3339("1970-01-01T00:00:00Z") == 0
    assert timefmt.parse_rfc3339("1970-01-01T01:00:00+01:00") == 0
    assert timefmt.parse_rfc3339("2199-12-31T23:59:59.999999999Z") == timefmt.MAX_TIME_NS - 1


def test_out_of_range_times_on_the_cli_are_one_line_errors(tmp_path: Path, officer: OfficerKey) -> None:
    from tests.helpers.daemon import write_config

    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                          cameras=[{"name": "gate", "url": "testsrc"}])
    (tmp_path / "data").mkdir(mode=0o700)
    proc = run_cli("retention", "-c", str(config), "--dry-run", "--now", "2300-01-01T00:00:00Z")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "edgerec: --now '2300-01-01T00:00:00Z': year 2300 is outside what edgerec can represent "
        "(1970-01-01T00:00:00Z .. 2199-12-31T23:59:59Z)"]
    proc = run_cli("incident", "open", "-c", str(config), "--id", "X", "--from", "1960-01-01 10:00")
    assert proc.returncode == 2 and "outside what edgerec can represent" in proc.stderr
    proc = run_cli("incident", "open", "-c", str(config), "--id", "X", "--from", "2026-11-20T09:00:00Z",
                   "--reason", "a\u202ebidi")
    assert proc.returncode == 1 and "field 'reason' contains a bidirectional-text control" in proc.stderr


@pytest.mark.parametrize(("data", "message"), [
    ({"device_id": "pi\x85gate"}, "device_id: contains a control character (U+0085 at position 3)"),
    ({"cameras": [{"name": "ga\u202ete", "url": "testsrc"}]},
     "cameras[0].name: contains a bidirectional-text control (U+202E at position 3)"),
    ({"cameras": [{"name": "gate", "url": "rtsp://cam/\x7fstream"}]},
     "cameras[0].url: contains a control character (U+007F at position 12)"),
])
def test_config_strings_with_control_characters_are_refused_naming_the_key(data: dict[str, Any],
                                                                           message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/"))
    assert message in str(info.value)


def test_refusal_lines_are_rate_limited_and_count_what_they_left_out() -> None:
    now = [0.0]
    budget = RefusalBudget(burst=3, refill_s=60.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 60.0
    assert budget.take() == 2  # the next line says that two refusals were not written
    assert budget.take() is None


def test_a_reply_that_cannot_be_serialised_becomes_an_error_reply() -> None:
    reply = {"id": "X", "action": "open", "ok": True, "error": None, "held_bytes": float("nan")}
    with pytest.raises(ValueError):
        finish_reply(reply, Envelope({}, None, "t-1", True), "dev")
    out = json.loads(fallback_reply(reply, Envelope({}, None, "t-1", True), "dev"))
    assert out["ok"] is False and out["error"] == "internal error" and out["transaction"] == "t-1"
    # Even a transaction that cannot be echoed (only possible if decoding let it through) gets a reply.
    out = json.loads(fallback_reply(reply, Envelope({}, None, float("inf"), True), "dev"))
    assert out["ok"] is False and out["transaction"] is None and out["device_id"] == "dev"


# ----- through the real daemon and broker ----------------------------------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, broker: Broker,
            officer: OfficerKey) -> Iterator[Running]:
    with running_daemon(tmp_path_factory.mktemp("edges"), officer, broker) as r:
        yield r


def _audit(setup: Setup) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (setup.data_dir / "audit.log").read_text().splitlines()]


@needs_mosquitto
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("payload", "fragment"), [
    (b'{"action": "open", "id": "NAN-1", "camera": "*", "transaction": NaN}', "NaN is not a JSON number"),
    (b'{"action": "open", "id": "INF-1", "camera": "*", "from": 1e400}', "number 1e400 is not finite"),
    (b'{"action": "open", "id": "BIG-1", "camera": "*", "transaction": 123456789012345678901}',
     "is too large"),
    ({"action": "open", "id": "FAR-1", "camera": "*", "from": "2300-01-01T00:00:00+02:00"},
     "field 'from': year 2300 is outside what edgerec can represent"),
    ({"action": "open", "id": "OLD-1", "camera": "*", "from": "1970-01-01T01:00:00+02:00", "to": None},
     "field 'from': the time is outside what edgerec can represent"),
    ({"action": "open", "id": "C1-1", "camera": "*", "reason": "x\x85y"},
     "field 'reason' contains a control character (U+0085 at position 2)"),
    ({"action": "open", "id": "BIDI-1", "camera": "*", "by": "evil\u202egpj.exe"},
     "field 'by' contains a bidirectional-text control (U+202E at position 5)"),
    ({"action": "close", "id": "DEL\x7f1", "by": "x"}, "field 'id'"),
], ids=["nan", "inf", "huge-int", "far-future-offset", "before-1970-offset", "c1-reason", "bidi-by",
        "del-id"])
def test_refused_commands_get_an_error_reply_and_an_audit_line(running: Running, payload: Any,
                                                               fragment: str) -> None:
    setup, listener = running.setup, running.listener
    before = incidents_cli(setup, "--all")
    if isinstance(payload, bytes):
        listener.clear()
        listener.publish(setup.command, payload)
        reply = listener.wait_for(setup.result, lambda m: fragment in (m.json().get("error") or ""),
                                  timeout_s=REPLY_DEADLINE_S + 5).json()
    else:
        reply = command(listener, setup, payload, f"t-{uuid.uuid4().hex[:8]}")
    assert reply["ok"] is False and fragment in reply["error"], reply
    assert incidents_cli(setup, "--all") == before
    line = wait_for(lambda: next((e for e in reversed(_audit(setup)) if e["event"] == "incident_refused"
                                  and fragment in e["error"]), None), 5, "the refusal's audit line")
    assert line["source"] == "mqtt"
    assert run_cli("audit", "verify", "-c", str(setup.config)).returncode == 0


@needs_mosquitto
@pytest.mark.timeout(120)
def test_chain_heads_are_published_and_verify_head_finds_the_newest_segments_removed(
    tmp_path: Path, broker: Broker, officer: OfficerKey
) -> None:
    # A new chain head is not news (it changes with every segment): it goes out with the periodic status.
    setup = make_setup(tmp_path, officer, broker.port, mqtt={"status_interval_s": 1})
    with Listener(broker, [f"{setup.base}/#"]) as listener, \
            Daemon(setup.config, tmp_path / "daemon.log") as daemon:
        wait_online(listener, setup, daemon)
        wait_for_segments(setup.data_dir, 3, "three sealed segments", daemon)
        listener.wait_for(f"{setup.base}/status", lambda m: (m.json().get("chain_heads") or {})
                          .get("gate", {}).get("sequence", -1) >= 2, timeout_s=15)
        with Listener(broker, [f"{setup.base}/status"]) as late:  # a recorder of heads, off the device
            status = late.wait_for(f"{setup.base}/status")
        assert status.retain
        published = status.json()["chain_heads"]["gate"]
        printed = run_cli("status", "-c", str(setup.config), check=True).stdout
        assert "chain heads (for edgerec verify --head):" in printed
        assert daemon.terminate() == 0, daemon.log()
    head = f"gate={published['sequence']}:{published['digest']}"
    assert published["start"].endswith("Z")
    ok = run_cli("verify", "-c", str(setup.config), "--head", head)
    assert ok.returncode == 0, ok.stdout
    assert f"chain head {head} seen earlier: confirmed" in ok.stdout

    # An insider removes the newest segments and their catalog (the cache): only the head shows it.
    removed = [p for p in (setup.data_dir / "gate").glob("*/*.seg") if _seq_of(p) >= published["sequence"]]
    assert removed
    for path in removed:
        path.unlink()
    for name in ("catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm"):
        (setup.data_dir / name).unlink(missing_ok=True)
    saved = tmp_path / "heads.txt"
    saved.write_text(f"# recorded off the device\n{head}\n")
    broken = run_cli("verify", "-c", str(setup.config), "--head", str(saved))
    assert broken.returncode == 1
    assert (f"problem: camera gate: the newest segment(s) {published['sequence']}" in broken.stdout
            and f"missing from the chain and the audit log does not record their removal (chain head {head} "
                "seen earlier)"
            in broken.stdout), broken.stdout
    bad = run_cli("verify", "-c", str(setup.config), "--head", "gate=1:xyz")
    assert bad.returncode == 2 and "--head gate=1:xyz: expected CAMERA=SEQUENCE:SHA256" in bad.stderr


def _seq_of(path: Path) -> int:
    from edgerec import segfile

    return segfile.read_info(path).meta.sequence
