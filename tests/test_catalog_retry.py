"""Sealed segments go into the catalog through a queue the daemon's main loop drains; those the catalog
cannot take (a full disk, a locked database) wait there and are retried while the daemon runs: the queue on
its own, the daemon's use of it, and a real daemon against a real lock."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerec.catalog import Catalog
from edgerec.catalogqueue import CATALOG_RETRY_S, CatalogQueue, Gap
from edgerec.daemon import Daemon
from edgerec.errors import CatalogError
from edgerec.layout import CATALOG_NAME, segment_path
from edgerec.recorder import ChainState
from edgerec.segfile import SealedSegment
from tests.helpers.daemon import Daemon as DaemonProcess
from tests.helpers.daemon import OfficerKey, open_daemon_state, run_cli, wait_for, write_config
from tests.helpers.events import from_records, named
from tests.helpers.segments import START_NS, TestKeys, make_keys, make_meta, write_segment

S = 1_000_000_000


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FlakyCatalog:
    """The real catalog, except that ``add_segment`` first fails ``failures`` times as the real one does
    when SQLite finds the disk full."""

    def __init__(self, real: Catalog, failures: int):
        self.real = real
        self.failures = failures
        self.calls: list[int] = []  # sequence numbers, one per add_segment call

    def add_segment(self, seg: SealedSegment) -> Any:
        self.calls.append(seg.meta.sequence)
        if self.failures:
            self.failures -= 1
            # Through the catalog's own transaction, which wraps SQLite's error as it does for a real one.
            with self.real.transaction():
                raise sqlite3.OperationalError("database or disk is full")
        return self.real.add_segment(seg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def tk() -> TestKeys:
    return make_keys()


def make_segments(data_dir: Path, tk: TestKeys, n: int, camera: str = "gate") -> list[SealedSegment]:
    """``n`` real sealed segments of one camera, chained, one second apart."""
    out: list[SealedSegment] = []
    prev = bytes(32)
    for seq in range(n):
        start = START_NS + seq * S
        meta = make_meta(camera=camera, sequence=seq, start_ns=start, prev_digest=prev)
        sealed = write_segment(segment_path(data_dir, camera, start), b"ts" * 500, tk, meta=meta, seed=seq)
        out.append(sealed)
        prev = sealed.digest
    return out


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cat = Catalog.open(data_dir)
    yield cat
    cat.close()


def gap_adder(cat: Catalog) -> Callable[[Gap], None]:
    return lambda gap: cat.add_gap(gap.camera, gap.from_ns, gap.to_ns, gap.reason)


def catalogued_sequences(cat: Catalog, camera: str = "gate") -> list[int]:
    """Sequence numbers in the order the rows were inserted."""
    return [r.sequence for r in sorted(cat.segments(camera), key=lambda r: r.id)]


# ----- the queue -----------------------------------------------------------------------------------------
def test_put_never_touches_the_catalog_and_drain_inserts_in_order(catalog: Catalog, tk: TestKeys) -> None:
    segs = make_segments(catalog.data_dir, tk, 3)
    flaky = FlakyCatalog(catalog, failures=0)
    queue = CatalogQueue(flaky.add_segment, gap_adder(catalog), clock=FakeClock())
    for seg in segs:
        queue.put(seg)
    assert flaky.calls == [] and len(queue) == 3
    assert queue.behind() == 0  # waiting for the main loop is not being behind
    assert queue.drain() == 3 and len(queue) == 0
    assert catalogued_sequences(catalog) == [0, 1, 2]


def test_segments_the_full_disk_refused_go_in_in_order_once_it_takes_them(
        catalog: Catalog, tk: TestKeys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgerec.catalogqueue")
    segs = make_segments(catalog.data_dir, tk, 4)
    flaky = FlakyCatalog(catalog, failures=3)
    clock = FakeClock()
    queue = CatalogQueue(flaky.add_segment, gap_adder(catalog), clock=clock)

    queue.put(segs[0])
    assert queue.drain() == 0  # failure 1
    queue.put(segs[1])
    queue.put(segs[2])
    assert flaky.calls == [0]
    assert len(queue) == 3 and queue.behind() == 3

    clock.t += CATALOG_RETRY_S - 0.1
    assert queue.drain() == 0 and flaky.calls == [0]  # backing off
    clock.t += 0.1
    assert queue.drain() == 0 and flaky.calls == [0, 0]  # failure 2, once per step
    assert queue.drain() == 0 and flaky.calls == [0, 0]
    assert queue.drain(force=True) == 0 and flaky.calls == [0, 0, 0]  # failure 3 (before a sweep)
    clock.t += CATALOG_RETRY_S
    assert queue.drain() == 3
    assert flaky.calls == [0, 0, 0, 0, 1, 2] and len(queue) == 0 and queue.behind() == 0
    queue.put(segs[3])
    assert queue.drain() == 1  # no backoff left over once the queue was empty
    assert catalogued_sequences(catalog) == [0, 1, 2, 3]

    events = from_records(caplog.records)
    assert len(named(events, "segment not catalogued; retrying", camera="gate")) == 1
    still = named(events, "segment still not catalogued", camera="gate")
    assert len(still) == 2 and all(e.fields["error"].endswith("database or disk is full") for e in still)
    assert len(named(events, "segment catalogued after retry", camera="gate")) == 3


def test_a_gap_waits_in_order_with_the_segments_and_is_not_counted_as_one(catalog: Catalog,
                                                                        tk: TestKeys) -> None:
    segs = make_segments(catalog.data_dir, tk, 2)
    flaky = FlakyCatalog(catalog, failures=1)
    gaps: list[Gap] = []

    def add_gap(gap: Gap) -> None:
        # The segment before the gap is in when the gap goes in.
        assert catalogued_sequences(catalog) == [0]
        gaps.append(gap)
        gap_adder(catalog)(gap)

    queue = CatalogQueue(flaky.add_segment, add_gap, clock=FakeClock())
    gap = Gap("gate", segs[0].end_ns, segs[1].meta.start_ns, "camera down")
    for item in (segs[0], gap, segs[1]):
        queue.put(item)
    assert queue.drain() == 0 and queue.behind() == 2  # two segments behind; the gap is not one
    assert queue.drain(force=True) == 3
    assert gaps == [gap] and catalogued_sequences(catalog) == [0, 1]
    assert [(g.from_ns, g.to_ns, g.reason) for g in catalog.gaps("gate")] == [
        (gap.from_ns, gap.to_ns, "camera down")]


def test_the_failure_is_the_one_the_catalog_gives_for_a_full_disk(catalog: Catalog, tk: TestKeys) -> None:
    """What the retry decision sees: CatalogError caused by sqlite3.OperationalError."""
    flaky = FlakyCatalog(catalog, failures=1)
    with pytest.raises(CatalogError, match="write failed: database or disk is full") as caught:
        flaky.add_segment(make_segments(catalog.data_dir, tk, 1)[0])
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


def test_a_segment_catalogued_meanwhile_by_someone_else_counts_as_done(
        catalog: Catalog, tk: TestKeys) -> None:
    segs = make_segments(catalog.data_dir, tk, 2)
    flaky = FlakyCatalog(catalog, failures=1)
    queue = CatalogQueue(flaky.add_segment, gap_adder(catalog), clock=FakeClock())
    queue.put(segs[0])
    queue.put(segs[1])
    assert queue.drain() == 0
    catalog.add_segment(segs[0])  # as start-up reconciliation of another run, or the CLI, would
    assert queue.drain(force=True) == 2 and len(queue) == 0
    assert catalogued_sequences(catalog) == [0, 1]  # no duplicate row


def test_a_segment_the_catalog_can_never_take_is_left_to_reconciliation_without_blocking_the_rest(
        catalog: Catalog, tk: TestKeys, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    segs = make_segments(catalog.data_dir, tk, 2)
    elsewhere = make_segments(tmp_path / "elsewhere", tk, 1, camera="yard")[0]  # outside the data dir
    with pytest.raises(CatalogError, match="not inside the data directory"):
        catalog.add_segment(elsewhere)
    flaky = FlakyCatalog(catalog, failures=1)
    queue = CatalogQueue(flaky.add_segment, gap_adder(catalog), clock=FakeClock())
    for seg in (segs[0], elsewhere, segs[1]):
        queue.put(seg)
    assert queue.drain() == 0  # the full disk, first
    assert queue.drain(force=True) == 3 and len(queue) == 0
    assert catalogued_sequences(catalog) == [0, 1]
    left = named(from_records(caplog.records), "segment not catalogued; left for start-up reconciliation")
    assert [e.fields["camera"] for e in left] == ["yard"]


def test_the_chain_goes_on_from_the_newest_queued_segment_of_the_camera(
        catalog: Catalog, tk: TestKeys) -> None:
    gate = make_segments(catalog.data_dir, tk, 2)
    yard = make_segments(catalog.data_dir, tk, 1, camera="yard")
    queue = CatalogQueue(FlakyCatalog(catalog, failures=1).add_segment, gap_adder(catalog),
                         clock=FakeClock())
    for seg in (gate[0], yard[0], gate[1]):
        queue.put(seg)
    assert queue.last_for("gate") is gate[1]
    assert queue.last_for("yard") is yard[0]
    assert queue.last_for("door") is None


# ----- the daemon's use of it ---------------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path, officer: OfficerKey) -> Iterator[Daemon]:
    """The daemon's state opened in-process (catalog, audit log, sweeper); recorders are not started."""
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                       cameras=[{"name": "gate", "url": "testsrc", "health": False}])
    d = open_daemon_state(cfg)
    try:
        yield d
    finally:
        d.catalog.close()


def test_the_daemon_queues_a_refused_segment_reports_it_and_retries_it_before_the_sweep(
        daemon: Daemon, tk: TestKeys) -> None:
    seg = make_segments(daemon.config.data_dir, tk, 1)[0]
    real = daemon.catalog
    daemon.catalog = FlakyCatalog(real, failures=1)  # type: ignore[assignment]
    daemon.facts_wanted.clear()

    daemon.on_sealed(seg)  # as a recorder thread calls it: queued, the catalog is not touched
    assert daemon.catalog.calls == []  # type: ignore[attr-defined]
    assert daemon.status()["uncatalogued_segments"] == 0
    daemon.catalogue_sealed()  # the worker's tick: the full disk refuses it
    assert daemon.facts_wanted.is_set()  # the status asks the worker for a new count
    assert daemon.status()["uncatalogued_segments"] == 1
    assert real.segments("gate") == []
    # A recorder started now (restart, reload) goes on from the queued segment, not the catalog's last.
    assert daemon.chain_for("gate") == ChainState(next_sequence=1, prev_digest=seg.digest)

    daemon.catalogue_sealed()  # backing off: not yet
    assert daemon.status()["uncatalogued_segments"] == 1
    daemon.sweep_if_due(0.0)  # the first sweep is due at once; the queue goes in first
    assert daemon.last_sweep is not None
    assert daemon.status()["uncatalogued_segments"] == 0
    assert [r.path for r in real.segments("gate")] == [real.relative_path(seg.path)]
    assert daemon.chain_for("gate") == ChainState(next_sequence=1, prev_digest=seg.digest)


# ----- a real daemon, a really locked catalog -------------------------------------------------------------
def read_status(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def listed_paths(cfg: Path) -> list[dict[str, Any]]:
    listing = json.loads(run_cli("ls", "-c", str(cfg), "--json", timeout=60, check=True).stdout)
    return listing["cameras"].get("gate", {}).get("segments", [])


@pytest.mark.slow
def test_segments_sealed_while_another_process_locks_the_catalog_land_while_the_daemon_runs(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[{"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
                                 "encoder": {"codec": "libx264", "gop_seconds": 1, "bitrate": 100_000}}])
    log_path = tmp_path / "daemon.log"
    with DaemonProcess(cfg, log_path, env={"RUNTIME_DIRECTORY": ""}) as daemon:
        wait_for(lambda: read_status(data_dir).get("cameras", {}).get("gate", {}).get("segments"), 60,
                 "a first catalogued segment")
        # Another process takes the write lock and keeps it well past the catalog's busy timeout (5 s):
        # every insert the daemon tries meanwhile fails with "database is locked".
        holder = sqlite3.connect(data_dir / CATALOG_NAME, isolation_level=None, timeout=30)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            wait_for(lambda: read_status(data_dir).get("uncatalogued_segments", 0) >= 2, 60,
                     "two sealed segments waiting for the catalog in the status")
            status = json.loads(run_cli("status", "-c", str(cfg), "--json", timeout=30, check=True).stdout)
            assert status["uncatalogued_segments"] >= 2
            assert daemon.events("segment not catalogued; retrying", camera="gate")
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        def all_files_catalogued() -> bool:
            on_disk = {p.relative_to(data_dir).as_posix() for p in data_dir.glob("gate/*/*.seg")}
            return bool(on_disk) and on_disk <= {s["path"] for s in listed_paths(cfg)}

        wait_for(all_files_catalogued, 3 * CATALOG_RETRY_S + 30, "every sealed segment in the catalog")
        wait_for(lambda: read_status(data_dir).get("uncatalogued_segments") == 0, 30, "an empty queue")
        assert daemon.proc.poll() is None  # caught up while running, not by start-up reconciliation
        sequences = sorted(s["sequence"] for s in listed_paths(cfg))
        assert sequences == list(range(len(sequences)))
        assert daemon.events("segment catalogued after retry", camera="gate")
        assert daemon.terminate(30) == 0
    text = log_path.read_text()
    assert "Traceback" not in text, text[-4000:]
    assert not daemon.events("sealed-segment callback failed")
