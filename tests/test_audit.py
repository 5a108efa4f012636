"""The hash-chained audit log: appends, verification, and detection of edited, removed and inserted lines."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgerec.audit import (
    EMPTY_HEAD,
    GENESIS_PREV,
    AuditHead,
    AuditLog,
    encode_line,
    line_hash,
    parse_head,
    verify_audit,
)
from tests.helpers.events import from_records, named


def write_log(path, n=5):
    log = AuditLog(path, clock_ns=lambda: 1_800_000_000_000_000_000)
    for i in range(n):
        log.append("incident_opened", id=f"INC-{i}", reason="test", by="officer")
    return log


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def test_appended_lines_chain_to_each_other(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    raw = lines(path)
    objs = [json.loads(r) for r in raw]
    assert [o["n"] for o in objs] == [1, 2, 3]
    assert objs[0]["prev"] == GENESIS_PREV
    assert objs[1]["prev"] == line_hash(raw[0])
    assert objs[2]["prev"] == line_hash(raw[1])
    assert objs[0]["event"] == "incident_opened" and objs[0]["id"] == "INC-0"
    assert objs[0]["ts"].endswith("Z")
    result = verify_audit(path)
    assert result.ok and result.lines == 3 and "OK" in result.message


def test_log_survives_reopening_and_keeps_chaining(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 2)
    AuditLog(path).append("export", camera="gate", segments=3)
    assert verify_audit(path).ok
    assert json.loads(lines(path)[-1])["n"] == 3
    assert AuditLog(path).head() == AuditHead(3, line_hash(lines(path)[-1]))


def test_missing_or_empty_log_verifies(tmp_path):
    assert verify_audit(tmp_path / "none.log").ok
    (tmp_path / "empty.log").write_bytes(b"")
    assert verify_audit(tmp_path / "empty.log").ok


def test_edited_line_is_named(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    raw = lines(path)
    raw[2] = raw[2].replace(b"INC-2", b"INC-9")
    path.write_bytes(b"\n".join(raw) + b"\n")
    result = verify_audit(path)
    assert not result.ok
    assert result.line == 3
    assert "edited" in result.problem
    assert "line 3" in result.message


def test_removed_line_is_named(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    raw = lines(path)
    del raw[1]
    path.write_bytes(b"\n".join(raw) + b"\n")
    result = verify_audit(path)
    assert not result.ok and result.line == 2
    assert "removed" in result.problem


def test_inserted_line_with_forged_link_is_named(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    raw = lines(path)
    forged = encode_line(3, "2027-01-01T00:00:00.000Z", "incident_closed", {"id": "INC-1"}, line_hash(raw[1]))
    raw.insert(2, forged)
    path.write_bytes(b"\n".join(raw) + b"\n")
    result = verify_audit(path)
    assert not result.ok and result.line == 3
    assert "inserted" in result.problem


def test_inserted_copy_of_an_old_line_is_named(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    raw = lines(path)
    raw.insert(3, raw[0])
    path.write_bytes(b"\n".join(raw) + b"\n")
    result = verify_audit(path)
    assert not result.ok and result.line == 4
    assert "inserted" in result.problem


def test_garbage_line_is_named(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    raw = lines(path)
    raw[1] = b"not json"
    path.write_bytes(b"\n".join(raw) + b"\n")
    result = verify_audit(path)
    assert not result.ok and result.line == 2


def test_torn_tail_is_cut_and_recorded_at_next_append(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"n":3,"ts":"2026-')  # power cut in the middle of an append
    assert not verify_audit(path).ok
    AuditLog(path).append("export", camera="gate")
    objs = [json.loads(r) for r in lines(path)]
    assert [o["event"] for o in objs] == ["incident_opened", "incident_opened", "audit_torn_tail", "export"]
    assert objs[2]["bytes"] == len(b'{"n":3,"ts":"2026-')
    assert verify_audit(path).ok


def test_reserved_field_names_are_refused(tmp_path):
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.log").append("export", prev="x")


def test_concurrent_appends_from_threads_keep_the_chain(tmp_path):
    path = tmp_path / "audit.log"
    log = AuditLog(path)

    def worker(k):
        for i in range(25):
            log.append("segments_deleted", worker=k, i=i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_audit(path)
    assert result.ok and result.lines == 100


def test_two_writers_on_one_file_keep_the_chain(tmp_path):
    # The daemon and the CLI each hold an AuditLog of the same file.
    path = tmp_path / "audit.log"
    a, b = AuditLog(path), AuditLog(path)
    for i in range(10):
        (a if i % 2 else b).append("export", i=i)
    assert verify_audit(path).ok and verify_audit(path).lines == 10


def test_append_many_writes_chained_lines_in_one_go(tmp_path):
    path = tmp_path / "audit.log"
    log = write_log(path, 2)
    log.append_many([("segments_deleted", {"reason": "age", "paths": ["a.seg"]}),
                     ("segments_deleted", {"reason": "age", "paths": ["b.seg", "c.seg"]})])
    log.append_many([])
    objs = [json.loads(r) for r in lines(path)]
    assert [o["n"] for o in objs] == [1, 2, 3, 4]
    assert [o.get("paths") for o in objs[2:]] == [["a.seg"], ["b.seg", "c.seg"]]
    assert verify_audit(path).ok
    assert log.head() == AuditHead(4, line_hash(lines(path)[-1]))


def test_repair_tail_cuts_a_torn_line_so_the_log_verifies(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 2)
    torn = b'{"n":3,"ts":"2026-11-20T09:'
    with open(path, "ab") as f:
        f.write(torn)  # power cut in the middle of an append
    assert not verify_audit(path).ok
    log = AuditLog(path)
    assert log.repair_tail() == len(torn)
    result = verify_audit(path)
    assert result.ok and result.lines == 3
    objs = [json.loads(r) for r in lines(path)]
    assert objs[-1]["event"] == "audit_torn_tail" and objs[-1]["bytes"] == len(torn)
    # A whole tail is left alone, and the chain goes on from the repair line.
    assert log.repair_tail() == 0 and len(lines(path)) == 3
    log.append("export", camera="gate")
    assert verify_audit(path).ok and json.loads(lines(path)[-1])["n"] == 4


def test_repair_tail_of_a_missing_log_creates_nothing(tmp_path):
    assert AuditLog(tmp_path / "audit.log").repair_tail() == 0
    assert not (tmp_path / "audit.log").exists()


def test_repair_tail_of_a_log_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"n":1,"ts')
    assert AuditLog(path).repair_tail() == 10
    assert verify_audit(path).ok and [json.loads(r)["n"] for r in lines(path)] == [1]


def test_daemon_start_up_repairs_a_torn_audit_tail(tmp_path, officer):
    from tests.helpers.daemon import open_daemon_state, write_config

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "audit.log"
    log = AuditLog(path)
    for i in range(2):  # not incident lines: the start-up would check those against the (new) catalog
        log.append("note", i=i)
    with open(path, "ab") as f:
        f.write(b'{"n":3,"ts":"2026-')
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "gate", "url": "testsrc"}])
    open_daemon_state(cfg).catalog.close()
    assert verify_audit(path).ok
    # The repair is recorded first, before the start writes anything else (its retention clock line).
    assert [json.loads(r)["event"] for r in lines(path)][2:] == ["audit_torn_tail", "retention_clock"]


# ----- the head: kept in memory, published, checked with verify --head -----------------------------------
def file_head(path) -> AuditHead:
    raw = lines(path)
    return AuditHead(len(raw), line_hash(raw[-1]))


# Opens of the files a test watches, seen through Python's "open" audit event (which every open() and
# os.open() raises): whether the head came from the file or from memory, without reaching into AuditLog.
# An audit hook cannot be removed, so one is installed once and counts only what a test watches.
_watched_opens: dict[str, list[object]] = {}
_hook_installed: list[bool] = []


def _note_open(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watched_opens and isinstance(args[0], (str, os.PathLike)):
        opens = _watched_opens.get(os.fspath(args[0]))
        if opens is not None:
            opens.append(args[1])  # the mode (None for os.open)


@contextmanager
def opens_of(path: Path) -> Iterator[list[object]]:
    """The opens of ``path`` made inside the block."""
    if not _hook_installed:
        sys.addaudithook(_note_open)
        _hook_installed.append(True)
    opens: list[object] = []
    _watched_opens[os.fspath(path)] = opens
    try:
        yield opens
    finally:
        del _watched_opens[os.fspath(path)]


def test_head_is_read_once_then_kept_in_memory_by_appends(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    log = AuditLog(path)
    expected = file_head(path)
    with opens_of(path) as opens:
        assert log.head() == expected
    assert len(opens) == 1  # the first time, from the file
    with opens_of(path) as opens:
        for _ in range(5):
            assert log.head() == expected
    assert opens == []  # asking again (every status tick) does not read the file
    log.append("export", camera="gate")
    log.append_many([("segments_deleted", {"paths": ["a.seg"]}), ("segments_deleted", {"paths": ["b"]})])
    expected = file_head(path)
    assert expected == AuditHead(6, line_hash(lines(path)[-1]))
    with opens_of(path) as opens:
        assert log.head() == expected
    assert opens == []  # the appends set it: no read for the head


def test_head_follows_another_writer_of_the_same_file(tmp_path):
    # The daemon and the CLI each hold an AuditLog of the same file.
    path = tmp_path / "audit.log"
    daemon, cli = AuditLog(path), AuditLog(path)
    daemon.append("config_changed")
    assert daemon.head().lines == 1
    cli.append("incident_opened", id="INC-1")
    cli.append("incident_closed", id="INC-1")
    assert daemon.head() == file_head(path) and daemon.head().lines == 3


def test_head_of_a_missing_log_is_the_empty_head_and_creates_nothing(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    assert log.head() == EMPTY_HEAD == AuditHead(0, GENESIS_PREV)
    assert not (tmp_path / "audit.log").exists()
    log.append("export")
    assert log.head().lines == 1


def test_head_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 2)
    whole = file_head(path)
    with open(path, "ab") as f:
        f.write(b'{"n":3,"ts":"2026-')
    assert AuditLog(path).head() == whole


def test_head_that_goes_back_is_logged_as_an_error(tmp_path, caplog):
    path = tmp_path / "audit.log"
    log = write_log(path, 4)
    before = log.head()
    raw = lines(path)
    raw[-1] = raw[-1].replace(b"INC-3", b"INC-X")  # the last line edited: the chain cannot show it
    path.write_bytes(b"\n".join(raw) + b"\n")
    assert verify_audit(path).ok
    after = log.head()
    assert after.lines == before.lines and after.sha256 != before.sha256 == line_hash(
        lines(path)[-1].replace(b"INC-X", b"INC-3"))
    [changed] = named(from_records(caplog.records), "audit log changed other than by appending")
    assert changed.level == "error" and changed.fields["head_now"] != changed.fields["head_was"]


def test_head_text_round_trips_and_bad_heads_are_refused():
    head = AuditHead(12, "ab" * 32)
    assert str(head) == f"12:{'ab' * 32}"
    assert parse_head(str(head)) == head
    assert parse_head(f" 12:{'AB' * 32}\n") == head
    for bad in ("12", f"12:{'ab' * 31}", f"x:{'ab' * 32}", f"-1:{'ab' * 32}", f"0:{GENESIS_PREV}",
                f"12:{'zz' * 32}", f"12:{'ab' * 32}:3"):
        with pytest.raises(ValueError):
            parse_head(bad)


def test_verify_with_the_head_seen_earlier_passes_on_an_appended_log(tmp_path):
    path = tmp_path / "audit.log"
    log = write_log(path, 5)
    seen = log.head()
    log.append("export", camera="gate")  # appending after the head was published is normal
    result = verify_audit(path, seen)
    assert result.ok and result.head_line == 5 and result.lines == 6
    assert result.message == "audit log OK: 6 lines, hash chain intact, line 5 is the expected head"


def test_verify_with_the_head_detects_an_edit_of_the_last_line(tmp_path):
    path = tmp_path / "audit.log"
    seen = write_log(path, 5).head()
    raw = lines(path)
    raw[-1] = raw[-1].replace(b"INC-4", b"INC-9")
    path.write_bytes(b"\n".join(raw) + b"\n")
    assert verify_audit(path).ok  # the chain alone cannot show it
    result = verify_audit(path, seen)
    assert not result.ok and result.line == 5
    assert "not the expected head" in result.problem and "rewritten" in result.problem


def test_verify_with_the_head_detects_a_tail_rewritten_with_a_consistent_chain(tmp_path):
    path = tmp_path / "audit.log"
    seen = write_log(path, 5).head()
    raw = lines(path)
    path.write_bytes(b"\n".join(raw[:2]) + b"\n")
    forger = AuditLog(path, clock_ns=lambda: 1_800_000_000_000_000_000)
    for i in range(4):  # lines 3..6 made anew: a longer log whose chain is intact
        forger.append("incident_opened", id=f"FORGED-{i}", reason="test", by="officer")
    assert verify_audit(path).ok
    result = verify_audit(path, seen)
    assert not result.ok and result.line == 5 and "not the expected head" in result.problem


def test_verify_with_the_head_detects_a_log_cut_before_it(tmp_path):
    path = tmp_path / "audit.log"
    seen = write_log(path, 5).head()
    path.write_bytes(b"\n".join(lines(path)[:3]) + b"\n")
    assert verify_audit(path).ok
    result = verify_audit(path, seen)
    assert not result.ok and result.line == 4 and result.lines == 3
    assert "ends at line 3, before the expected head 5" in result.problem
    path.unlink()  # the whole log gone
    gone = verify_audit(path, seen)
    assert not gone.ok and "ends at line 0" in gone.problem


def test_audit_verify_command_takes_a_head(tmp_path):
    from tests.helpers.daemon import run_cli  # the real command: main() in-process would set up logging

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "audit.log"
    seen = write_log(path, 5).head()
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--head", str(seen))
    assert proc.returncode == 0 and "line 5 is the expected head" in proc.stdout
    path.write_bytes(b"\n".join(lines(path)[:4]) + b"\n")
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--head", str(seen))
    assert proc.returncode == 1 and "BROKEN at line 5: the log ends at line 4" in proc.stdout
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--head", "5:abc")
    assert proc.returncode == 2 and "--head 5:abc: expected LINES:SHA256" in proc.stderr


def test_daemon_publishes_the_head_in_its_status_and_follows_audited_events(tmp_path, officer):
    from edgerec.timefmt import rfc3339
    from tests.helpers.daemon import Daemon, run_cli, wait_for, write_config

    data_dir = tmp_path / "data"
    status_path = tmp_path / "status.json"
    camera = {"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
              "encoder": {"codec": "libx264", "gop_seconds": 1, "bitrate": 100_000}}
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                          cameras=[camera], status_file=str(status_path))

    def status_head() -> AuditHead | None:
        try:
            head = json.loads(status_path.read_text())["audit_head"]
        except (OSError, ValueError, KeyError):
            return None
        return AuditHead(head["lines"], head["sha256"])

    log_path = data_dir / "audit.log"

    def names_a_line_of_the_log(head: AuditHead) -> bool:
        raw = lines(log_path) if log_path.exists() else []
        if head == EMPTY_HEAD:
            return True
        return head.lines <= len(raw) and line_hash(raw[head.lines - 1]) == head.sha256

    def events(after: AuditHead, upto: AuditHead) -> list[str]:
        return [json.loads(r)["event"] for r in lines(log_path)[after.lines:upto.lines]]

    with Daemon(config, tmp_path / "daemon.log") as daemon:
        start = wait_for(status_head, 30, "a status with the audit head")
        assert names_a_line_of_the_log(start)

        # An event the daemon audits itself: a reload that changes the configuration.
        text = config.read_text()
        config.write_text(text.replace("segment_seconds: 1", "segment_seconds: 2"))
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: (h := status_head()) is not None and h.lines > start.lines and h,
                            15, "the head to move after the reload")
        assert names_a_line_of_the_log(reloaded) and "config_changed" in events(start, reloaded)

        # One another process audits (the CLI appends to the same log): noticed without an append.
        run_cli("incident", "open", "-c", str(config), "--id", "INC-HEAD", "--camera", "gate",
                "--from", rfc3339(time.time_ns() - 60 * 10**9), "--by", "pytest", check=True)
        opened = wait_for(lambda: (h := status_head()) is not None and h.lines > reloaded.lines and h,
                          15, "the head to move after the CLI's incident")
        assert names_a_line_of_the_log(opened) and "incident_opened" in events(reloaded, opened)
        assert daemon.terminate() == 0, daemon.log()

    # What a central system does with a head it stored: the log still has it.
    verified = run_cli("audit", "verify", "-c", str(config), "--head", str(opened))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"line {opened.lines} is the expected head" in verified.stdout
