"""The pure parts of ``bench/instructions.py``: reading callgrind's per-thread files, the per-minute slope and
which thread is the recording one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# The head of a callgrind 3.19 file of one thread (--cache-sim=yes --branch-sim=yes), abridged.
THREAD_FILE = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 20906
cmd:  python -m edgerec run -c edgerec.yaml --exit-at-eof
part: 1
thread: 5

desc: I1 cache: 32768 B, 64 B, 8-way associative
positions: line
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
summary: 1319487109 258332945 232391571 4201137 6643974 4678280 7379 3712 94443 217061947 1706622 \
3296017 1517581
"""


@pytest.fixture(scope="module")
def instructions() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the script imports its sibling ``ingest``
    try:
        spec = importlib.util.spec_from_file_location("bench_instructions", BENCH / "instructions.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_a_thread_file_is_read_as_its_counts(instructions: ModuleType) -> None:
    counts = instructions.parse_counts(THREAD_FILE)
    assert counts == instructions.Counts(1_319_487_109, 4_201_137, 1_706_622 + 1_517_581)


def test_a_file_without_branch_simulation_is_refused(instructions: ModuleType) -> None:
    without = THREAD_FILE.replace(" Bc Bcm Bi Bim", "").replace(" 217061947 1706622 3296017 1517581", "")
    with pytest.raises(RuntimeError, match="branch simulation"):
        instructions.parse_counts(without)


def test_slope_per_minute_cancels_start_up(instructions: ModuleType) -> None:
    long, short = instructions.Counts(1_000, 100, 50), instructions.Counts(400, 40, 20)
    assert long.minus(short).per_minute(30) == instructions.Counts(1_200, 120, 60)


def test_the_recording_thread_is_the_one_that_grows_with_the_clip(instructions: ModuleType) -> None:
    c = instructions.Counts
    short = [c(900, 90, 9), c(10, 1, 1), c(300, 30, 3)]  # main thread (start-up), flush timer, recording
    long = [c(950, 95, 9), c(20, 2, 1), c(1_300, 130, 13)]
    assert instructions.busiest_slope(long, short) == c(1_000, 100, 10)
    assert instructions.total(long).minus(instructions.total(short)) == c(1_060, 106, 10)
