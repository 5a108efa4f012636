"""A bundle's hash chains are walked by sequence number, never by name (docs/segment-format.md section 7.6):
footage recorded by the real daemon across a wall clock stepped backwards, bundled by the real command,
verifies; a segment taken out, two segments swapped under each other's names and a segment whose header
cannot be read are each named, once."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgerec import bundle as bundle_mod
from edgerec import inventory, keys
from edgerec.bundlereader import verify_bundle
from edgerec.catalog import Catalog
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import OfficerKey, run_cli, write_config
from tests.helpers.media import make_h264_clip
from tests.test_bundle import manifest_of, rewrite

S = 1_000_000_000
STEP_BACK_NS = 10 * 60 * S  # NTP steps the wall clock back by ten minutes between two runs


@dataclass(frozen=True)
class Recording:
    config: Path
    data_dir: Path
    bundle: Path
    paths: dict[int, str]  # sequence -> path of camera gate's segment (relative to the data directory)


def sequences(data_dir: Path) -> dict[int, str]:
    uri = f"file:{data_dir / 'catalog.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return dict(conn.execute("SELECT sequence, path FROM segments WHERE camera = 'gate'").fetchall())


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, officer: OfficerKey) -> Recording:
    """Camera gate recorded, then recorded again after the wall clock was stepped back: the second run's
    segments go on with the chain (sequence 3, 4, 5) but are named before the first run's (0, 1, 2). An
    incident holds all six; the device bundles it."""
    root = tmp_path_factory.mktemp("stepped")
    clip = root / "clip.mp4"
    make_h264_clip(clip, seconds=6, fps=25, gop=25)
    data_dir = root / "data"
    cfg = write_config(root / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=2,
                       incidents={"pre_roll_s": 0, "post_roll_s": 0},
                       cameras=[{"name": "gate", "url": str(clip), "realtime": False, "loop": False}])
    run_cli("run", "-c", str(cfg), "--exit-at-eof", timeout=180, check=True)
    run_cli("run", "-c", str(cfg), "--exit-at-eof", timeout=180, check=True,
            clock_shift_ns=f"0:-{STEP_BACK_NS}")  # wall clock back, monotonic clock and boot as they were
    paths = sequences(data_dir)
    assert sorted(paths) == [0, 1, 2, 3, 4, 5], paths
    by_name = [seq for seq, _ in sorted(paths.items(), key=lambda item: item[1])]
    assert by_name == [3, 4, 5, 0, 1, 2]  # the step gave the later segments the earlier names
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite3")) as conn:
        lo, hi = conn.execute("SELECT min(start_ns), max(end_ns) FROM segments").fetchone()
    run_cli("incident", "open", "-c", str(cfg), "--id", "INC-7", "--camera", "gate", "--from",
            rfc3339(lo) or "", "--to", rfc3339(hi) or "", "--reason", "clock stepped", "--by", "j.devries",
            check=True)
    out = root / "INC-7.edgerec-bundle"
    run_cli("bundle", "-c", str(cfg), "--incident", "INC-7", "-o", str(out), check=True)
    return Recording(cfg, data_dir, out, paths)


def member(rec: Recording, sequence: int) -> str:
    return f"segments/{rec.paths[sequence]}"


def without(name: str) -> Callable[[list[Any]], list[Any]]:
    return lambda items: [(i, d) for i, d in items if i.name != name]


def bundle_of(data_dir: Path, out: Path) -> Path:
    """The device's bundle of INC-7 made from ``data_dir`` as it is now."""
    catalog = Catalog.open(data_dir)
    try:
        snap = bundle_mod.read_snapshot(catalog, "INC-7", 0)
    finally:
        catalog.close()
    key = keys.load_device_key(data_dir / "device.key")
    bundle_mod.write_bundle(data_dir, snap, key, "testdev", out, now_ns=snap.selection.to_ns, grace_ns=0)
    return out


def test_a_bundle_recorded_across_a_clock_step_backwards_verifies(recording: Recording,
                                                                  officer: OfficerKey) -> None:
    names = [m["name"] for m in manifest_of(recording.bundle)["members"] if m["kind"] == "segment"]
    assert sorted(names) == sorted(member(recording, s) for s in range(6))
    proc = run_cli("verify", "--bundle", str(recording.bundle), "--key", str(officer.private_path),
                   "--device-pub", str(recording.data_dir / "device.pub"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 segments checked: OK" in proc.stdout and "problem" not in proc.stdout
    # The data directory it came from verifies too (its walk has always gone by sequence).
    assert run_cli("verify", "-c", str(recording.config)).returncode == 0


@pytest.mark.parametrize("taken", [3, 4])  # the first one after the step, and one after that
def test_a_segment_taken_out_of_the_bundle_breaks_the_chain_where_it_was(recording: Recording,
                                                                         tmp_path: Path, taken: int) -> None:
    gone = member(recording, taken)
    bad = rewrite(recording.bundle, tmp_path / "b", without(gone))
    report = verify_bundle(bad)
    assert f"missing segment {gone}: listed in the manifest, not in the bundle" in report.problems
    assert [p for p in report.problems if "hash chain" in p] == [
        f"{member(recording, taken + 1)}: hash chain broken: sequence {taken + 1} follows {taken - 1} (a "
        "segment is missing)"]


def test_two_segments_swapped_on_the_device_are_named_though_their_chain_holds(recording: Recording,
                                                                               tmp_path: Path) -> None:
    """Someone on the device swaps two segment files (across the step) and edits the catalog to match,
    before the bundle is made: the device signs what it finds. The walk by sequence sees an intact chain,
    so the check of each name against its (signed) header is what shows it."""
    data = tmp_path / "data"
    shutil.copytree(recording.data_dir, data)
    a, b = recording.paths[1], recording.paths[4]
    (data / a).rename(data / "swap")
    (data / b).rename(data / a)
    (data / "swap").rename(data / b)
    with contextlib.closing(sqlite3.connect(data / "catalog.sqlite3")) as conn, conn:
        conn.execute("UPDATE segments SET path = 'swap' WHERE path = ?", (a,))
        conn.execute("UPDATE segments SET path = ? WHERE path = ?", (a, b))
        conn.execute("UPDATE segments SET path = ? WHERE path = 'swap'", (b,))
    report = verify_bundle(bundle_of(data, tmp_path / "b"))
    assert sorted(report.problems) == sorted(
        f"segments/{name}: the name does not match the header's start time {start} (sequence {seq}): "
        "renamed or swapped"
        for name, start, seq in ((a, header_start(data / a), 4), (b, header_start(data / b), 1)))


def header_start(path: Path) -> str:
    from edgerec import segfile

    return rfc3339(segfile.read_header(path).meta.start_ns) or ""


def test_a_segment_whose_header_cannot_be_read_is_named_once_and_hides_no_missing_one(
    recording: Recording, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(recording.data_dir, data)
    damaged = data / recording.paths[4]
    blob = bytearray(damaged.read_bytes())
    blob[0:4] = b"XXXX"
    damaged.write_bytes(bytes(blob))
    made = bundle_of(data, tmp_path / "b")
    once = (f"{member(recording, 4)}: not an edgerec segment (bad magic); its header cannot be read: its "
            "catalog row says it is sequence 4, which is therefore not confirmed")
    # Its number is not reported again as missing from the chain: 5 follows 3 across it.
    assert verify_bundle(made).problems == [once]
    # The data directory's verify says the same once, by the file's name.
    tree = inventory.verify_tree(data)
    assert [p for p in tree.problems if "missing" in p or str(damaged) in p] == [
        f"{damaged} at byte 0: not an edgerec segment (bad magic); its sequence number is not known (its "
        "header cannot be read): by its name it lies between sequence 3 and sequence 5, in the place of "
        "sequence 4, which is therefore not confirmed"]
    # A segment taken out next to it is still missing: the damaged one accounts for one number, not two.
    gone = member(recording, 3)
    problems = verify_bundle(rewrite(made, tmp_path / "c", without(gone))).problems
    assert once in problems
    assert f"missing segment {gone}: listed in the manifest, not in the bundle" in problems
    five = member(recording, 5)
    assert f"{five}: hash chain broken: sequence 5 follows 2 (a segment is missing)" in problems
