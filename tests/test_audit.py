"""The hash-chained audit log: appends, verification, and detection of edited, removed and inserted lines."""

from __future__ import annotations

import json
import threading

import pytest

from edgerec.audit import GENESIS_PREV, AuditLog, encode_line, line_hash, verify_audit


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
    assert AuditLog(path).head() == (3, line_hash(lines(path)[-1]))


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
    assert log.head() == (4, line_hash(lines(path)[-1]))


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
    import os

    from edgerec.config import load_config
    from edgerec.supervisor import Daemon
    from tests.daemon_helpers import write_config

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "audit.log"
    write_log(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"n":3,"ts":"2026-')
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                       cameras=[{"name": "gate", "url": "testsrc"}])
    daemon = Daemon(load_config(cfg))
    umask = os.umask(0o022)
    try:
        daemon._open_state()  # it sets the daemon's umask: restored below
    finally:
        os.umask(umask)
        daemon.catalog.close()
    assert verify_audit(path).ok
    assert [json.loads(r)["event"] for r in lines(path)][2:] == ["audit_torn_tail"]
