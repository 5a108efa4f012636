"""The commit order on disk, seen by ``strace``: what a power cut can interrupt is always repairable.

A segment: chunks written, ``fdatasync`` of the ``.partial`` → ``rename`` to ``.seg`` → ``fsync`` of its
directory → catalog commit (a write to the SQLite WAL). A new ``.partial``: header written and
``fdatasync``ed, then its directory ``fsync``ed, before any chunk follows. A deletion: the catalog mark
and the fsynced audit line → ``unlink`` → directory ``fsync`` → the catalog drop.

The trace is parsed by ``tests.helpers.strace`` into calls with the order in which each started and
finished, so "A completed before B started" can be asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.daemon import REPO, OfficerKey, write_config
from tests.helpers.media import make_h264_clip
from tests.helpers.strace import Call, first, last, needs_strace, parse_strace, strace_cmd


# ----- tests -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded_trace(tmp_path_factory: pytest.TempPathFactory, officer: OfficerKey) -> tuple[Path, list[Call]]:
    tmp = tmp_path_factory.mktemp("write-order")
    clip = tmp / "clip.mp4"
    make_h264_clip(clip, seconds=4, fps=25, gop=25)
    data_dir = tmp / "data"
    cfg = write_config(tmp / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[{"name": "gate", "url": str(clip), "realtime": False, "loop": False,
                                 "health": False}])
    trace = tmp / "run.trace"
    run = subprocess.run([*strace_cmd(trace), sys.executable, "-m", "edgerec", "run", "-c", str(cfg),
                          "--exit-at-eof"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    return data_dir, parse_strace(trace.read_text())


@needs_strace
def test_sealed_segment_is_synced_then_renamed_then_dir_synced_then_catalogued(
        recorded_trace: tuple[Path, list[Call]]) -> None:
    data_dir, calls = recorded_trace
    renames = [c for c in calls if c.name.startswith("rename") and c.ok
               and any(p.endswith(".seg.partial") for p in c.paths)]
    assert len(renames) >= 3, "expected a sealed segment per second of the clip"
    for ren in renames:
        partial, final = ren.paths[-2], ren.paths[-1]
        assert final == partial.removesuffix(".partial")
        sync = last(calls, lambda c, p=partial: c.name in ("fdatasync", "fsync") and c.fd_path == p,
                    before=ren.start)
        assert sync is not None and sync.end is not None and sync.end < ren.start, \
            f"{partial}: no fdatasync before the rename"
        data_write = last(calls, lambda c, p=partial: c.name == "write" and c.fd_path == p, before=ren.start)
        assert data_write is not None and data_write.end is not None and data_write.end < sync.start, \
            f"{partial}: written after its last fdatasync"
        directory = str(Path(final).parent)
        dsync = first(calls, lambda c, d=directory: c.name == "fsync" and c.fd_path == d, after=ren.start)
        assert dsync is not None and ren.end is not None and ren.end < dsync.start, \
            f"{final}: directory not fsynced after the rename"
        wal = first(calls, lambda c: c.name in ("pwrite64", "write") and (c.fd_path or "").endswith(
            "catalog.sqlite3-wal"), after=ren.start)
        assert wal is not None and dsync.end is not None and dsync.end < wal.start, \
            f"{final}: catalogued before its directory was synced"


@needs_strace
def test_new_partial_header_and_directory_are_synced_before_any_chunk(
        recorded_trace: tuple[Path, list[Call]]) -> None:
    _, calls = recorded_trace
    creates = [c for c in calls if c.name == "openat" and c.ok and (c.result_path or "").endswith(".partial")]
    assert len(creates) >= 3
    for op in creates:
        partial = op.result_path
        writes = [c for c in calls if c.start > op.start and c.name == "write" and c.fd_path == partial]
        assert len(writes) >= 2, f"{partial}: header and at least one chunk"
        header, chunk = writes[0], writes[1]
        sync = first(calls, lambda c, p=partial: c.name == "fdatasync" and c.fd_path == p, after=header.start)
        directory = str(Path(partial).parent)
        dsync = first(calls, lambda c, d=directory: c.name == "fsync" and c.fd_path == d, after=header.start)
        assert sync is not None and sync.start < chunk.start, f"{partial}: header not synced before chunks"
        assert dsync is not None and dsync.start < chunk.start, f"{partial}: directory entry not synced"


@needs_strace
def test_retention_marks_and_audits_before_unlink_and_syncs_the_directory_before_dropping(
        recorded_trace: tuple[Path, list[Call]], tmp_path: Path) -> None:
    data_dir, _ = recorded_trace
    cfg = data_dir.parent / "edgerec.yaml"
    trace = tmp_path / "retention.trace"
    # 40 days later (wall and monotonic clocks moved on together: tests.helpers.shifted), all is due.
    later = str(40 * 86_400 * 10**9)
    run = subprocess.run([*strace_cmd(trace), sys.executable, "-m", "tests.helpers.shifted", later,
                          "retention", "-c", str(cfg)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    calls = parse_strace(trace.read_text())
    unlinks = [c for c in calls if c.name in ("unlink", "unlinkat") and c.ok
               and any(p.endswith(".seg") for p in c.paths)]
    assert len(unlinks) >= 3, "the sweep deleted the recorded segments"
    first_unlink, last_unlink = unlinks[0], unlinks[-1]

    def is_wal(c: Call) -> bool:
        return c.name in ("pwrite64", "write") and (c.fd_path or "").endswith("catalog.sqlite3-wal")

    mark = last(calls, is_wal, before=first_unlink.start)
    assert mark is not None, "no catalog mark before the first unlink"
    audit_sync = last(calls, lambda c: c.name == "fsync" and (c.fd_path or "").endswith("audit.log"),
                      before=first_unlink.start)
    assert audit_sync is not None and audit_sync.end is not None and audit_sync.end < first_unlink.start, \
        "the deletion's audit line was not fsynced before the unlink"
    directory = str(Path(last_unlink.paths[-1]).parent)
    dsync = first(calls, lambda c: c.name == "fsync" and c.fd_path == directory, after=last_unlink.start)
    assert dsync is not None, "directory not fsynced after the unlinks"
    drop = first(calls, is_wal, after=last_unlink.start)
    assert drop is not None and dsync.end is not None and dsync.end < drop.start, \
        "rows dropped before the directory was synced"
