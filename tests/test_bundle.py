"""Incident bundles end to end: footage recorded by the real daemon, bundled by the real command, verified
and exported on the officer's side; tampered, forged and hostile bundles are named and refused."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec import bundle as bundle_mod
from edgerec import keys
from edgerec.bundle import plan_selection
from edgerec.bundlereader import name_problem, verify_bundle
from edgerec.catalog import IncidentRow
from edgerec.errors import UsageError
from edgerec.exportsource import select_in_range
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config
from tests.helpers.media import decoded_frame_hashes, make_h264_clip, scan_tree_for_plaintext

S = 1_000_000_000


@dataclass(frozen=True)
class Site:
    root: Path
    config: Path
    data_dir: Path
    officer: OfficerKey
    starts: dict[str, list[int]]  # camera -> segment start times (catalog)
    bundle: Path


def catalog_rows(data_dir: Path) -> list[tuple[str, int, int, str]]:
    uri = f"file:{data_dir / 'catalog.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute("SELECT camera, start_ns, end_ns, path FROM segments ORDER BY camera, start_ns"
                            ).fetchall()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, officer: OfficerKey) -> Site:
    root = tmp_path_factory.mktemp("site")
    clip = root / "clip.mp4"
    make_h264_clip(clip, seconds=12, fps=25, gop=25)
    data_dir = root / "data"
    cfg = write_config(root / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=2,
                       incidents={"pre_roll_s": 1, "post_roll_s": 1},
                       cameras=[{"name": "gate", "url": str(clip), "realtime": False, "loop": False},
                                {"name": "yard", "url": str(clip), "realtime": False, "loop": False}])
    run_cli("run", "-c", str(cfg), "--exit-at-eof", timeout=180, check=True)
    starts: dict[str, list[int]] = {}
    for camera, start, _end, _path in catalog_rows(data_dir):
        starts.setdefault(camera, []).append(start)
    assert len(starts["gate"]) >= 5 and len(starts["yard"]) >= 5
    t0 = starts["gate"][0]
    run_cli("incident", "open", "-c", str(cfg), "--id", "INC-1", "--camera", "*", "--from",
            rfc3339(t0 + 4 * S) or "", "--to", rfc3339(t0 + 7 * S) or "", "--reason", "bike theft",
            "--by", "j.devries", check=True)
    out = root / "INC-1.edgerec-bundle"
    run_cli("bundle", "-c", str(cfg), "--incident", "INC-1", "-o", str(out), check=True)
    return Site(root, cfg, data_dir, officer, starts, out)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads(members(path)["manifest.json"])


def rewrite(src: Path, dst: Path, change: Any) -> Path:
    """Copy a bundle's members into a new tar, through ``change(list of (TarInfo, bytes))``."""
    with tarfile.open(src) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    items = change(items)
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as out:
        for info, data in items:
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dst


def replace_member(name: str, data: bytes) -> Any:
    return lambda items: [(i, data if i.name == name else d) for i, d in items]


# ----- making a bundle ------------------------------------------------------------------------------
def test_bundle_holds_the_held_segments_of_every_camera_signed_and_private(site: Site) -> None:
    assert stat.S_IMODE(site.bundle.stat().st_mode) == 0o600
    got = members(site.bundle)
    manifest = json.loads(got["manifest.json"])
    t0 = site.starts["gate"][0]
    lo, hi = manifest["selection"]["from_ns"], manifest["selection"]["to_ns"]
    # The window with its 1 s pre- and post-roll (the command line carries milliseconds).
    assert abs(lo - (t0 + 3 * S)) < 1_000_000 and abs(hi - (t0 + 8 * S)) < 1_000_000
    expected = {"segments/" + p for _cam, start, end, p in catalog_rows(site.data_dir)
                if start <= hi and end >= lo}
    segs = {n for n in got if n.startswith("segments/")}
    assert segs == expected and {n.split("/")[1] for n in segs} == {"gate", "yard"}
    # Every listed member has its digest; the manifest and its signature are the two unlisted ones.
    listed = {m["name"]: m for m in manifest["members"]}
    assert set(got) == set(listed) | {"manifest.json", "manifest.sig"}
    for name, entry in listed.items():
        assert hashlib.sha256(got[name]).hexdigest() == entry["sha256"]
    device_pub = keys.load_device_public_key(site.data_dir / "device.pub")
    assert bundle_mod.check_signature(got["manifest.json"], got["manifest.sig"], device_pub)
    assert got["device.pub"].decode().strip() == manifest["device"]["public_key"]
    catalog = json.loads(got["catalog.json"])
    assert catalog["incident"]["id"] == "INC-1" and catalog["incident"]["reason"] == "bike theft"
    audit_lines = [json.loads(line) for line in got["audit/lines.jsonl"].splitlines()]
    assert [e["event"] for e in audit_lines] == ["incident_opened"]
    assert "device.key" not in got and not scan_tree_for_plaintext(site.root / "data")
    # The audit log records it: id, member count and the digest of the file as written.
    last = json.loads((site.data_dir / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == "bundle_created" and last["id"] == "INC-1"
    assert last["members"] == len(got)
    assert last["sha256"] == hashlib.sha256(site.bundle.read_bytes()).hexdigest()
    assert manifest["audit_head"]["lines"] == last["n"] - 1


def test_bundle_refuses_an_unknown_incident_naming_the_ones_that_exist(site: Site, tmp_path: Path) -> None:
    proc = run_cli("bundle", "-c", str(site.config), "--incident", "INC-404", "-o", str(tmp_path / "x"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no incident 'INC-404'" in proc.stderr and "INC-1" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bundle_narrowed_to_one_camera_and_a_shorter_range(site: Site, tmp_path: Path) -> None:
    t0 = site.starts["gate"][0]
    out = tmp_path / "yard.bundle"
    run_cli("bundle", "-c", str(site.config), "--incident", "INC-1", "--camera", "yard", "--from",
            rfc3339(t0 + 5 * S) or "", "-o", str(out), check=True)
    manifest = manifest_of(out)
    assert manifest["selection"]["cameras"] == ["yard"] and manifest["selection"]["narrowed"]
    assert abs(manifest["selection"]["from_ns"] - (t0 + 5 * S)) < 1_000_000
    names = [m["name"] for m in manifest["members"] if m["kind"] == "segment"]
    assert names and all(n.startswith("segments/yard/") for n in names)
    proc = run_cli("bundle", "-c", str(site.config), "--incident", "INC-1", "--camera", "nope", "-o",
                   str(tmp_path / "y"))
    assert proc.returncode == 2 and "gate, yard" in proc.stderr


def test_a_segment_deleted_while_bundling_is_listed_as_absent(site: Site, tmp_path: Path) -> None:
    from edgerec.catalog import Catalog

    data = tmp_path / "data"
    shutil.copytree(site.data_dir, data)
    catalog = Catalog.open(data)
    try:
        snap = bundle_mod.read_snapshot(catalog, "INC-1", 0)
    finally:
        catalog.close()
    gone = snap.segments[1]
    (data / gone.path).unlink()  # as a sweep would, between the snapshot and the copy
    key = keys.load_device_key(data / "device.key")
    result = bundle_mod.write_bundle(data, snap, key, "testdev", tmp_path / "b", now_ns=snap.selection.to_ns,
                                     grace_ns=0)
    assert [a["path"] for a in result.absent] == [gone.path]
    report = verify_bundle(tmp_path / "b")
    assert report.ok, report.problems
    assert any(gone.path in n and "missing on the device" in n for n in report.notes)


# ----- verify ---------------------------------------------------------------------------------------
def test_verify_bundle_passes_with_and_without_the_key(site: Site) -> None:
    proc = run_cli("verify", "--bundle", str(site.bundle), check=True)
    assert "OK" in proc.stdout and "INC-1" in proc.stdout
    proc = run_cli("verify", "--bundle", str(site.bundle), "--key", str(site.officer.private_path),
                   "--device-pub", str(site.data_dir / "device.pub"), "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["ok"] and report["checked"] == len(manifest_of(site.bundle)["members"]) - 4


def first_segment(path: Path) -> str:
    return next(m["name"] for m in manifest_of(path)["members"] if m["kind"] == "segment")


def test_verify_names_an_altered_segment(site: Site, tmp_path: Path) -> None:
    name = first_segment(site.bundle)
    data = bytearray(members(site.bundle)[name])
    data[len(data) // 2] ^= 0x01
    bad = rewrite(site.bundle, tmp_path / "b", replace_member(name, bytes(data)))
    proc = run_cli("verify", "--bundle", str(bad))
    assert proc.returncode == 1
    assert f"problem: tampered member {name}" in proc.stdout


def test_verify_names_a_removed_segment_and_an_extra_member(site: Site, tmp_path: Path) -> None:
    name = first_segment(site.bundle)

    def change(items: list[Any]) -> list[Any]:
        extra = tarfile.TarInfo("notes.txt")
        return [(i, d) for i, d in items if i.name != name] + [(extra, b"hello")]

    report = verify_bundle(rewrite(site.bundle, tmp_path / "b", change))
    assert any(p.startswith(f"missing segment {name}") for p in report.problems), report.problems
    assert any(p.startswith("extra member notes.txt") for p in report.problems)


def test_verify_names_a_forged_and_an_unsigned_manifest(site: Site, tmp_path: Path) -> None:
    manifest = members(site.bundle)["manifest.json"]
    forged = manifest.replace(b'"INC-1"', b'"INC-2"', 1)
    report = verify_bundle(rewrite(site.bundle, tmp_path / "a", replace_member("manifest.json", forged)))
    assert "manifest signature invalid: the manifest was altered or forged" in report.problems
    unsigned = rewrite(site.bundle, tmp_path / "b",
                       lambda items: [(i, d) for i, d in items if i.name != "manifest.sig"])
    assert "manifest.json is not signed (no manifest.sig)" in verify_bundle(unsigned).problems


def test_verify_names_a_bundle_signed_by_another_device(site: Site, tmp_path: Path) -> None:
    """A forger re-signs everything with his own key: the bundle agrees with itself, not with the device."""
    other = Ed25519PrivateKey.generate()
    other_text = keys.format_device_public_key(other.public_key())
    doc = json.loads(members(site.bundle)["manifest.json"])
    doc["device"]["public_key"] = other_text
    pub_entry = next(m for m in doc["members"] if m["name"] == "device.pub")
    pub_bytes = f"{other_text}\n".encode()
    pub_entry["sha256"], pub_entry["bytes"] = hashlib.sha256(pub_bytes).hexdigest(), len(pub_bytes)
    raw = bundle_mod.encode_json(doc)

    def change(items: list[Any]) -> list[Any]:
        new = {"manifest.json": raw, "manifest.sig": bundle_mod.sign_manifest(raw, other),
               "device.pub": pub_bytes}
        return [(i, new.get(i.name, d)) for i, d in items]

    forged = rewrite(site.bundle, tmp_path / "b", change)
    report = verify_bundle(forged, device_key=keys.load_device_public_key(site.data_dir / "device.pub"))
    assert any(p.startswith("wrong device: the bundle is signed by device key") for p in report.problems)
    # Even without the trusted key, its segments were not signed by the key it claims.
    assert not verify_bundle(forged).ok


def hostile_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_hostile_members_are_refused_and_nothing_is_extracted(site: Site, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    got = members(site.bundle)
    link = tarfile.TarInfo("segments/gate/2026-01-01/20260101T000000.000Z.seg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    evil = [(tarfile.TarInfo(n), got[n]) for n in ("manifest.json", "manifest.sig")]
    evil += [(tarfile.TarInfo("../evil.txt"), b"x"), (tarfile.TarInfo("/abs.txt"), b"x"), (link, b""),
             (tarfile.TarInfo("catalog.json"), b"{}"), (tarfile.TarInfo("catalog.json"), b"[]")]
    bad = hostile_tar(work / "evil.tar", evil)
    proc = run_cli("verify", "--bundle", str(bad))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "'../evil.txt': a '.' or '..' in the name; refused" in proc.stdout
    assert "'/abs.txt': not a plain relative name; refused" in proc.stdout
    assert "a symbolic link; refused" in proc.stdout
    assert "'catalog.json': duplicate name; refused" in proc.stdout
    proc = run_cli("export", "--bundle", str(bad), "--key", str(site.officer.private_path), "-o",
                   str(work / "x.mp4"), "--reason", "test")
    assert proc.returncode == 1 and "refused" in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar", "work"]


def test_a_huge_member_and_a_compressed_tar_are_refused_without_reading_them(site: Site,
                                                                             tmp_path: Path) -> None:
    huge = tarfile.TarInfo("catalog.json")
    huge.size = 100 * 1024 * 1024
    path = tmp_path / "huge.tar"
    with open(path, "wb") as f:  # a sparse file: the header claims 100 MiB that are holes on disk
        f.write(huge.tobuf(tarfile.PAX_FORMAT))
        f.seek(huge.size, io.SEEK_CUR)
        f.write(bytes(1024))
    report = verify_bundle(path)
    assert any("over the limit" in p for p in report.problems), report.problems
    gz = tmp_path / "b.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(site.bundle, arcname="x")
    proc = run_cli("verify", "--bundle", str(gz))
    assert proc.returncode == 1 and "not a bundle" in proc.stderr and "Traceback" not in proc.stderr


# ----- export ---------------------------------------------------------------------------------------
def test_export_from_the_bundle_equals_export_from_the_data_directory(site: Site, tmp_path: Path) -> None:
    manifest = manifest_of(site.bundle)
    lo, hi = manifest["selection"]["from"], manifest["selection"]["to"]
    from_bundle, from_dir = tmp_path / "bundle.mp4", tmp_path / "dir.mp4"
    run_cli("export", "--bundle", str(site.bundle), "--key", str(site.officer.private_path), "--camera",
            "gate", "-o", str(from_bundle), "--reason", "INC-1 review", "--by", "officer", check=True)
    run_cli("export", "-c", str(site.config), "--key", str(site.officer.private_path), "--camera", "gate",
            "--from", lo, "--to", hi, "-o", str(from_dir), "--reason", "INC-1 review", check=True)
    frames = decoded_frame_hashes(from_bundle)
    assert frames and frames == decoded_frame_hashes(from_dir)
    a = json.loads(Path(f"{from_bundle}.manifest.json").read_text())
    b = json.loads(Path(f"{from_dir}.manifest.json").read_text())
    assert [s["digest"] for s in a["segments"]] == [s["digest"] for s in b["segments"]]
    assert all(s["path"].startswith("segments/gate/") for s in a["segments"])
    assert a["access"] == {"by": "officer", "reason": "INC-1 review"}
    assert b["access"]["reason"] == "INC-1 review" and b["access"]["by"]  # --by defaults to the OS user
    assert a["origin"]["kind"] == "bundle" and a["origin"]["incident"] == "INC-1"
    assert a["origin"]["sha256"] == hashlib.sha256(site.bundle.read_bytes()).hexdigest()
    for path in (from_bundle, from_dir, Path(f"{from_bundle}.manifest.json"),
                 Path(f"{from_dir}.manifest.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    last = json.loads((site.data_dir / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == "export" and last["reason"] == "INC-1 review"


def test_export_needs_a_reason_and_a_camera_when_the_bundle_has_several(site: Site, tmp_path: Path) -> None:
    base = ["export", "--bundle", str(site.bundle), "--key", str(site.officer.private_path),
            "-o", str(tmp_path / "x.mp4")]
    proc = run_cli(*base)
    assert proc.returncode == 2 and "--reason" in proc.stderr
    proc = run_cli(*base, "--reason", "   ")
    assert proc.returncode == 2 and "needs a reason" in proc.stderr
    proc = run_cli(*base, "--reason", "review")
    assert proc.returncode == 2 and "gate, yard: give --camera" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_from_a_bundle_leaves_out_an_altered_segment(site: Site, tmp_path: Path) -> None:
    name = first_segment(site.bundle)
    data = bytearray(members(site.bundle)[name])
    data[len(data) // 2] ^= 0x01
    bad = rewrite(site.bundle, tmp_path / "b", replace_member(name, bytes(data)))
    out = tmp_path / "x.mp4"
    proc = run_cli("export", "--bundle", str(bad), "--key", str(site.officer.private_path), "--camera",
                   "gate", "-o", str(out), "--reason", "review")
    assert proc.returncode == 1 and f"problem: {name}" in proc.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert [s["included"] for s in manifest["segments"]][0] is False


def test_ls_lists_the_bundle(site: Site) -> None:
    proc = run_cli("ls", "--bundle", str(site.bundle), check=True)
    assert "incident INC-1" in proc.stdout and "gate:" in proc.stdout and "yard:" in proc.stdout


# ----- pure parts -----------------------------------------------------------------------------------
def incident(camera: str = "*", to_ns: int | None = 200) -> IncidentRow:
    return IncidentRow("I", camera, 100, to_ns, "r", "b", 100, pre_roll_ns=10, post_roll_ns=10)


def test_plan_selection_narrows_and_refuses() -> None:
    assert plan_selection(incident(), 0).to_json_dict()["from_ns"] == 90
    sel = plan_selection(incident(to_ns=None), 500, from_ns=50, to_ns=300)
    assert (sel.from_ns, sel.to_ns, sel.narrowed) == (90, 300, True)
    with pytest.raises(UsageError, match="covers camera gate only"):
        plan_selection(incident("gate"), 0, camera="yard")
    with pytest.raises(UsageError, match="leave nothing"):
        plan_selection(incident(), 0, from_ns=300)


def test_member_names_outside_the_bundle_form_are_unsafe() -> None:
    for name in ("../x", "a/../b", "/etc/x", "a\\b", "", "a//b", "./a", "x" * 300, "a b"):
        assert name_problem(name) is not None, name
    assert name_problem("segments/gate/2026-11-20/20261120T095000.000Z.seg") is None


def test_selection_takes_the_next_start_as_a_segments_end_as_the_data_dir_does() -> None:
    spans = [(0, 10), (20, 30), (30, 38)]
    assert select_in_range(spans, 12, 18) == [0]  # in the gap after segment 0: as inventory does
    assert select_in_range(spans, 30, 40) == [2]
    assert select_in_range(spans, 38, 50) == []


# ----- the officer's workstation: no Linux-only parts -----------------------------------------------
# What a laptop lacks (Windows lacks all of it, macOS the systemd and inotify parts): modules that cannot be
# imported, and os functions and flags that do not exist. Installed through sitecustomize in a subprocess.
NOT_LINUX = '''
import importlib.abc, os, sys

BLOCKED = {"fcntl", "pwd", "grp", "termios", "edgerec.notify", "edgerec.configwatch", "edgerec.supervisor"}
BLOCKED_PACKAGES = {"watchdog", "systemd", "inotify", "inotify_simple", "pyinotify"}


class NotOnThisOS(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r} (not on this OS)", name=name)
        return None


sys.meta_path.insert(0, NotOnThisOS())
for name in [m for m in sys.modules if m in BLOCKED or m.split(".")[0] in BLOCKED_PACKAGES]:
    del sys.modules[name]
for attr in ("O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW", "fchmod", "geteuid", "statvfs"):
    if hasattr(os, attr):
        delattr(os, attr)
'''


def test_the_read_side_runs_without_linux_only_parts(site: Site, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers.daemon import REPO

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NOT_LINUX)
    env = {**os.environ, "PYTHONPATH": str(blocker), "USER": "officer", "LOGNAME": "officer"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                              env=env)

    probe = run("-c", "import os, sys\ntry:\n import fcntl\nexcept ImportError:\n sys.exit(3)\n")
    assert probe.returncode == 3, "the blocker is not active"

    def edgerec(*args: str) -> str:
        proc = run("-m", "edgerec", *args)
        assert proc.returncode == 0, f"edgerec {' '.join(args)}: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc.stdout

    key = tmp_path / "laptop.key"
    assert "fingerprint" in edgerec("keygen", "--out", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    copy = tmp_path / "copy"
    shutil.copytree(site.data_dir, copy)
    off = str(site.officer.private_path)
    assert "OK" in edgerec("verify", "--bundle", str(site.bundle), "--key", off)
    assert "incident INC-1" in edgerec("ls", "--bundle", str(site.bundle))
    assert "OK" in edgerec("verify", "--data-dir", str(copy), "--key", off)
    assert "gate:" in edgerec("ls", "--data-dir", str(copy))
    out = tmp_path / "laptop.mp4"
    edgerec("export", "--bundle", str(site.bundle), "--key", off, "--camera", "yard", "-o", str(out),
            "--reason", "review on a laptop")
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["access"] == {"by": "officer", "reason": "review on a laptop"}
    selection = manifest["origin"]
    out2 = tmp_path / "dir.mp4"
    edgerec("export", "--data-dir", str(copy), "--key", off, "--camera", "yard", "--from", selection["from"],
            "--to", selection["to"], "-o", str(out2), "--reason", "review on a laptop")
    assert decoded_frame_hashes(out) == decoded_frame_hashes(out2)


def test_a_gap_the_device_recorded_is_listed_by_the_export_from_the_bundle_and_the_data_dir(
    site: Site, tmp_path: Path
) -> None:
    from edgerec.catalog import Catalog

    data_dir = tmp_path / "data"
    shutil.copytree(site.data_dir, data_dir)
    cfg = write_config(tmp_path / "edgerec.yaml", officer=site.officer, data_dir=data_dir, segment_seconds=2,
                       incidents={"pre_roll_s": 1, "post_roll_s": 1},
                       cameras=[{"name": "gate", "url": "/dev/null", "realtime": False, "loop": False},
                                {"name": "yard", "url": "/dev/null", "realtime": False, "loop": False}])
    t0 = site.starts["gate"][0]
    catalog = Catalog.open(data_dir)
    try:
        catalog.add_gap("gate", t0 + 5 * S, t0 + 5 * S + S // 2, "camera disconnected: read timeout")
        catalog.add_gap("yard", t0 + 5 * S, t0 + 6 * S, "disk full")  # another camera's: not listed
    finally:
        catalog.close()
    bundle = tmp_path / "INC-1.edgerec-bundle"
    run_cli("bundle", "-c", str(cfg), "--incident", "INC-1", "-o", str(bundle), check=True)
    lo, hi = manifest_of(bundle)["selection"]["from"], manifest_of(bundle)["selection"]["to"]
    key = str(site.officer.private_path)
    from_bundle = run_cli("export", "--bundle", str(bundle), "--key", key, "--camera", "gate", "-o",
                          str(tmp_path / "b.mp4"), "--reason", "gap check", check=True)
    from_dir = run_cli("export", "-c", str(cfg), "--key", key, "--camera", "gate", "--from", lo, "--to", hi,
                       "-o", str(tmp_path / "d.mp4"), "--reason", "gap check", check=True)
    expected = [{"from": rfc3339(t0 + 5 * S), "to": rfc3339(t0 + 5 * S + S // 2), "seconds": 0.5,
                 "reason": "camera disconnected: read timeout", "source": "catalog",
                 "from_ns": t0 + 5 * S, "to_ns": t0 + 5 * S + S // 2}]
    for name, proc in (("b.mp4", from_bundle), ("d.mp4", from_dir)):
        manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
        assert manifest["gaps"] == expected
        assert "1 gap" in proc.stdout and "(0.5 s): camera disconnected: read timeout" in proc.stdout
    assert decoded_frame_hashes(tmp_path / "b.mp4") == decoded_frame_hashes(tmp_path / "d.mp4")


# ----- a bundle made while the daemon records --------------------------------------------------------
LIVE_CAMERA = {"name": "gate", "url": "testsrc:size=160x120:rate=10", "health": False,
               "encoder": {"codec": "libx264", "gop_seconds": 1, "bitrate": 100_000}}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bundles_made_while_the_daemon_records_over_an_open_incident_verify_and_export(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       durability={"flush_seconds": 1, "fsync_seconds": 1},
                       incidents={"pre_roll_s": 2, "post_roll_s": 0}, cameras=[LIVE_CAMERA])
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: segment_count(data_dir, "gate") >= 3, 90, "three sealed segments")
        # Open over the live footage: from a moment already recorded, no end.
        first_start = min(start for camera, start, _e, _p in catalog_rows(data_dir) if camera == "gate")
        run_cli("incident", "open", "-c", str(cfg), "--id", "LIVE", "--from",
                rfc3339(first_start + S) or "", "--reason", "ongoing", check=True)
        counts: list[int] = []
        for n in range(3):
            before = segment_count(data_dir, "gate")
            out = tmp_path / f"live-{n}.edgerec-bundle"
            made = run_cli("bundle", "-c", str(cfg), "--incident", "LIVE", "-o", str(out))
            assert made.returncode == 0, made.stderr
            assert daemon.proc.poll() is None  # still recording
            for key_args in ((), ("--key", str(officer.private_path))):
                checked = run_cli("verify", "--bundle", str(out), *key_args)
                assert checked.returncode == 0, f"bundle {n}: {checked.stdout}{checked.stderr}"
            video = tmp_path / f"live-{n}.mp4"
            exported = run_cli("export", "--bundle", str(out), "--key", str(officer.private_path),
                               "-o", str(video), "--reason", "live check", "--by", "officer")
            assert exported.returncode == 0, exported.stderr
            assert decoded_frame_hashes(video)
            counts.append(sum(1 for name in members(out) if name.startswith("segments/gate/")))
            # The recorder goes on between bundles: the next one must see newer footage.
            wait_for(lambda b=before: segment_count(data_dir, "gate") >= b + 2, 30, "recording going on")
        assert counts[0] >= 1 and counts == sorted(counts) and counts[-1] > counts[0]
        assert daemon.terminate() == 0, daemon.log()
    audit = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    assert sum(1 for e in audit if e["event"] == "bundle_created" and e.get("id") == "LIVE") == 3
