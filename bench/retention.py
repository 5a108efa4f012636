"""Benchmark: the cost of a retention sweep against catalog size and the amount deleted.

Builds catalogs of 25 cameras × 1-minute segments (28 days ≈ 1,000,000 segments, and half that) with
1,000 incidents, then times one sweep that deletes one day of footage and one that deletes two days,
each on a fresh copy of the catalog. The segment files of the days being deleted exist (empty files),
so the figures include the unlinks, the catalog's delete protocol and the audit lines.

Run: ``python bench/retention.py [--days 28] [--dir /path/with/space]``. Prints one line per run:
planning (candidate queries + the pure policy) and the whole sweep, in CPU and wall seconds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edgerec.audit import AuditLog
from edgerec.catalog import Catalog
from edgerec.config import CameraConfig, Config, RetentionConfig
from edgerec.layout import CATALOG_NAME
from edgerec.retention import DiskState, Sweeper
from edgerec.walltime import RELEASE_FLOOR_NS

S = 1_000_000_000
MIN = 60 * S
DAY = 86_400 * S
CAMERAS = tuple(f"cam{i:02d}" for i in range(25))
T0 = RELEASE_FLOOR_NS + 30 * DAY
INCIDENTS = 1000
SEGMENT_BYTES = 4_000_000


def rel_path(camera: str, start_ns: int) -> str:
    t = datetime.fromtimestamp(start_ns / 1e9, UTC)
    return f"{camera}/{t:%Y-%m-%d}/{t:%Y%m%dT%H%M%S}.000Z.seg"


def build_catalog(data_dir: Path, days: int, seed: int = 1) -> int:
    """A catalog of ``days`` days of 1-minute segments for every camera, plus incidents; returns rows."""
    Catalog.open(data_dir).close()  # schema
    conn = sqlite3.connect(data_dir / CATALOG_NAME, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    per_camera = days * 1440

    def rows():
        for cam in CAMERAS:
            for i in range(per_camera):
                start = T0 + i * MIN
                yield (cam, i, rel_path(cam, start), start, start + MIN, SEGMENT_BYTES, 1500, "00" * 32,
                       "sealed", 1, "boot", i * MIN, 1)

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO segments (camera, sequence, path, start_ns, end_ns, size_bytes, frames, digest, state, "
        "clock_synced, boot_id, monotonic_ns, time_ok) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    rng = random.Random(seed)
    incidents = []
    for k in range(INCIDENTS):
        start = T0 + rng.randrange(days * DAY)
        camera = "*" if rng.random() < 0.05 else rng.choice(CAMERAS)
        closed = None if rng.random() < 0.3 else start + rng.randrange(30 * DAY)
        incidents.append((f"INC-{k:04d}", camera, start, start + rng.randrange(5, 60) * MIN, "bench", "bench",
                          start, closed, None if closed is None else "bench", MIN, MIN))
    conn.executemany("INSERT INTO incidents VALUES (?,?,?,?,?,?,?,?,?,?,?)", incidents)
    conn.execute("INSERT INTO meta (key, value) VALUES ('max_duration_ns', ?)", (MIN,))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return len(CAMERAS) * per_camera


def make_files(data_dir: Path, delete_days: int) -> None:
    for cam in CAMERAS:
        for i in range(delete_days * 1440):
            path = data_dir / rel_path(cam, T0 + i * MIN)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def run(template: Path, work: Path, rows: int, delete_days: int) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copy(template / CATALOG_NAME, work / CATALOG_NAME)
    make_files(work, delete_days)
    cfg = Config(device_id="bench", data_dir=work, recipients=(),
                 cameras=tuple(CameraConfig(c, "testsrc") for c in CAMERAS),
                 retention=RetentionConfig(days=28, min_free_bytes=0, min_free_pct=None))
    catalog = Catalog.open(work)
    try:
        sweeper = Sweeper(catalog, AuditLog(work / "audit.log"), cfg, work,
                          free_space=lambda: DiskState(10**13, 10**12))
        now = T0 + (28 + delete_days) * DAY
        cpu, wall = time.process_time(), time.perf_counter()
        sweeper._plan(now)  # the planning half of a sweep: candidate queries and the pure policy
        plan_cpu, plan_wall = time.process_time() - cpu, time.perf_counter() - wall
        cpu, wall = time.process_time(), time.perf_counter()
        report = sweeper.sweep(now_ns=now)
        sweep_cpu, sweep_wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        catalog.close()
    print(f"catalog {rows:>9,} rows  delete {delete_days} day(s) = {len(report.deleted):>6,} segments "
          f"plan {plan_cpu:5.2f} s CPU {plan_wall:5.2f} s wall  "
          f"sweep {sweep_cpu:5.2f} s CPU {sweep_wall:5.2f} s wall", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=28, help="days of footage in the large catalog (28)")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="edgerec-bench-", dir=args.dir))
    try:
        for days in (args.days, args.days // 2):
            template = base / f"template-{days}"
            template.mkdir()
            t = time.perf_counter()
            rows = build_catalog(template, days)
            print(f"built catalog of {rows:,} segments and {INCIDENTS} incidents in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            for delete_days in (1, 2):
                run(template, base / "work", rows, delete_days)
            shutil.rmtree(template)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
