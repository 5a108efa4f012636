"""The data directory's layout (edgerec.layout): every file's place, and segment names both ways."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edgerec.layout import (
    PARTIAL_SEGMENT_SUFFIX,
    PARTIAL_SUFFIX,
    SEGMENT_SUFFIX,
    DataDir,
    day_dir_name,
    is_day_dir_name,
    partial_path,
    segment_path,
    start_ns_from_name,
)

T = 1_795_536_720_123_999_999  # 2026-11-24T16:12:00.123999999Z


def test_data_dir_names_each_file_once():
    d = DataDir(Path("/srv/rec"))
    assert d.catalog_path == Path("/srv/rec/catalog.sqlite3")
    assert d.audit_path == Path("/srv/rec/audit.log")
    assert d.reserve_path == Path("/srv/rec/.space-reserve")
    assert d.device_key_path == Path("/srv/rec/device.key")
    assert d.device_pub_path == Path("/srv/rec/device.pub")
    assert d.quarantine_path("gate/2026-11-24/x.seg") == Path("/srv/rec/quarantine/gate/2026-11-24/x.seg")
    assert d.segment_path("gate", T) == segment_path(Path("/srv/rec"), "gate", T)


def test_segment_names_carry_the_utc_start_to_the_millisecond():
    path = segment_path(Path("/d"), "gate", T)
    assert path == Path("/d/gate/2026-11-24/20261124T161200.123Z.seg")
    assert start_ns_from_name(path) == T - T % 1_000_000
    assert start_ns_from_name(Path("/d/gate/2026-11-24/notes.txt")) is None
    assert start_ns_from_name(partial_path(path)) is None  # a partial is not a segment yet


def test_one_partial_suffix_and_the_suffix_of_a_partial_segment():
    path = segment_path(Path("/d"), "gate", T)
    assert partial_path(path).name == path.name + PARTIAL_SUFFIX
    assert partial_path(path).name.endswith(PARTIAL_SEGMENT_SUFFIX)
    assert PARTIAL_SEGMENT_SUFFIX == SEGMENT_SUFFIX + PARTIAL_SUFFIX == ".seg.partial"


def test_day_directories():
    assert day_dir_name(T) == "2026-11-24" and is_day_dir_name("2026-11-24")
    assert not is_day_dir_name("quarantine") and not is_day_dir_name("2026-11-24x")


@given(st.integers(0, 4_102_444_800 * 10**9))  # 1970 .. 2100
def test_names_sort_by_start_time_and_parse_back(start_ns):
    path = segment_path(Path("/d"), "c", start_ns)
    assert start_ns_from_name(path) == start_ns - start_ns % 1_000_000
    later = segment_path(Path("/d"), "c", start_ns + 1_000_000)
    assert path.name < later.name and path.parent.name == day_dir_name(start_ns)
