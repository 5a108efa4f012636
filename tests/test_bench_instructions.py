"""The pure parts of ``bench/instructions.py``: reading cachegrind's summary and the per-minute slope."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# What cachegrind 3.19 prints with --cache-sim=yes --branch-sim=yes (the lines that matter, abridged).
SUMMARY = """\
==20906== I   refs:      2,007,746,808
==20906== I1  misses:       15,593,540
==20906== LLi misses:          100,331
==20906== D   refs:        847,208,181  (528,376,201 rd   + 318,831,980 wr)
==20906== Branches:        337,813,915  (307,734,825 cond +  30,079,090 ind)
==20906== Mispredicts:      23,392,909  ( 14,635,134 cond +   8,757,775 ind)
==20906== Mispred rate:            6.9% (        4.8%     +        29.1%   )
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


def test_summary_is_read_as_whole_numbers(instructions: ModuleType) -> None:
    counts = instructions.parse_summary(SUMMARY)
    assert counts == instructions.Counts(2_007_746_808, 15_593_540, 23_392_909)


def test_a_summary_without_branch_simulation_is_refused(instructions: ModuleType) -> None:
    without = "\n".join(line for line in SUMMARY.splitlines() if "Mispred" not in line)
    with pytest.raises(RuntimeError, match="no mispredicts"):
        instructions.parse_summary(without)


def test_slope_per_minute_cancels_start_up(instructions: ModuleType) -> None:
    long, short = instructions.Counts(1_000, 100, 50), instructions.Counts(400, 40, 20)
    assert long.minus(short).per_minute(30) == instructions.Counts(1_200, 120, 60)
