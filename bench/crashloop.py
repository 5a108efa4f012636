"""Long crash loop: the rounds of ``tests/test_crashloop.py`` (kill -9 during writes, rotations, retention
sweeps and incident commits; start-up repair; every invariant checked) run many times.

Run: ``.venv/bin/python bench/crashloop.py --kills 200 [--seed N] [--dir DIR]``. Prints one line per kill
and a summary (kills per phase, what start-up repaired, footage lost per kill: max, mean, 95th
percentile), writes ``crashloop.json`` into the work directory, and exits 1 if any round broke a promise.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.crashloop import CrashRig, KillRecord, crash_rounds  # noqa: E402
from tests.helpers.daemon import make_officer_key  # noqa: E402


class RepairCounter(logging.Handler):
    """Counts what start-up reconciliation did (its log lines are one per repaired item)."""

    KINDS = ("recovered segment", "adopted segment", "quarantined", "removed partial",
             "dropped row", "finished deletion")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for kind in self.KINDS:
            if message.startswith(f"reconcile {kind}"):
                self.counts[kind] += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgerec crash loop")
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    args = p.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="edgerec-crashloop-"))
    work.mkdir(parents=True, exist_ok=True)
    counter = RepairCounter()
    logging.getLogger("edgerec.reconcile").addHandler(counter)
    logging.getLogger("edgerec.reconcile").setLevel(logging.INFO)
    officer = make_officer_key(work / "officer.key")
    (work / "rig").mkdir(exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    started = time.monotonic()

    def progress(k: KillRecord) -> None:
        lost = "-" if k.lost_s is None else f"{k.lost_s:+.3f}"
        print(f"kill {k.round + 1:4d}/{args.kills} phase={k.phase:<9} lost_s={lost}", flush=True)

    with Broker(work / "broker") as broker:
        rig = CrashRig(work / "rig", officer, broker)
        ledger = crash_rounds(rig, args.kills, args.seed, work / "logs", progress=progress, keep_going=True)
    losses = [k.lost_s for k in ledger.kills if k.lost_s is not None]
    summary = {
        "kills": len(ledger.kills),
        "seed": args.seed,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "phases": dict(Counter(k.phase for k in ledger.kills)),
        "repairs": dict(counter.counts),
        "incidents_acknowledged": len(ledger.acked),
        "held_segments_checked": len(ledger.must_keep),
        "segments_seen": len(ledger.digests),
        "lost_s_max": round(max(losses), 3) if losses else None,
        "lost_s_mean": round(statistics.fmean(losses), 3) if losses else None,
        "lost_s_p95": round(percentile(losses, 0.95), 3) if losses else None,
        "flush_seconds": rig.flush_seconds,
        "failures": ledger.failures,
    }
    (work / "crashloop.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print("CRASHLOOP OK" if not ledger.failures else f"CRASHLOOP FAILED: {len(ledger.failures)} round(s)")
    return 0 if not ledger.failures else 1


if __name__ == "__main__":
    sys.exit(main())
