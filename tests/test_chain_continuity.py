"""A camera's hash chain never starts again: its sequence numbers only go up, and each new segment links
to the one before it, even when retention (or anything else the audit log records) has removed that one.

Through the real daemon and the real ``edgerec`` command: footage recorded by ``edgerec run``, aged with
moved clocks (``tests.helpers.shifted``) until retention deletes it, then the daemon started again over
what is left. The record the chain goes on from is the audit log (docs/design/storage.md, "The rule:
where a chain goes on"), so a lost or older catalog must not change where it goes on.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from edgerec import segfile
from edgerec.segfile import SegmentMeta
from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.daemon import OfficerKey, open_daemon_state
from tests.helpers.site import CAMERAS, DAY, S, Site, make_site, newest_end_ns


@pytest.fixture
def site(recording: Path, officer: OfficerKey, tmp_path: Path) -> Site:
    return make_site(recording, officer, tmp_path)


def headers(site: Site, camera: str) -> list[SegmentMeta]:
    """The headers of the camera's segment files, in sequence order."""
    metas = [segfile.read_header(p).meta for p in (site.data_dir / camera).glob("*/*.seg")]
    return sorted(metas, key=lambda m: m.sequence)


def heads(segments: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[int, str]]:
    """Each camera's newest catalogued segment: (sequence, digest hex)."""
    out = {}
    for cam, segs in segments.items():
        newest = max(segs, key=lambda s: s["sequence"])
        out[cam] = (newest["sequence"], newest["digest"])
    return out


def record_again(site: Site) -> dict[str, list[SegmentMeta]]:
    """Start the daemon again (at the site's time), let it record the clip once more; the new segments."""
    before = site.files()
    site.cli("run", "--exit-at-eof")
    new = site.files() - before
    assert new, "it recorded"
    return {cam: [m for m in headers(site, cam)
                  if any(p.startswith(f"{cam}/") and p.endswith(_name(m)) for p in new)] for cam in CAMERAS}


def _name(meta: SegmentMeta) -> str:
    from edgerec.layout import segment_name

    return segment_name(meta.start_ns)


def assert_goes_on_from(new: list[SegmentMeta], head: tuple[int, str]) -> None:
    sequence, digest = head
    assert new, "the camera recorded"
    assert [m.sequence for m in new] == list(range(sequence + 1, sequence + 1 + len(new))), \
        f"sequence numbers start again: {[m.sequence for m in new]} after {sequence}"
    assert new[0].prev_digest.hex() == digest, "the first new segment does not link to the deleted one"


@pytest.mark.parametrize("catalog", ["kept", "lost", "older_copy"])
def test_a_camera_whose_every_segment_was_deleted_goes_on_with_its_chain(site: Site, catalog: str) -> None:
    segs = site.segments()
    old_heads = heads(segs)
    older = site.data_dir.parent / "catalog-copy"
    older.mkdir()
    for f in site.data_dir.glob("catalog.sqlite3*"):
        shutil.copy2(f, older / f.name)
    # 29 days on, retention deletes everything (the cameras were offline for longer than retention).
    swept = site.sweep_at(rfc3339(newest_end_ns(segs) + 29 * DAY))
    assert len(swept["deleted"]) == sum(len(v) for v in segs.values())
    assert site.files() == set()
    if catalog != "kept":
        for f in site.data_dir.glob("catalog.sqlite3*"):
            f.unlink()
    if catalog == "older_copy":  # the catalog as it was before the sweep: rows of deleted files
        for f in older.iterdir():
            shutil.copy2(f, site.data_dir / f.name)

    new = record_again(site)
    for cam in CAMERAS:
        assert_goes_on_from(new[cam], old_heads[cam])
    out = site.cli("verify")
    for cam in CAMERAS:
        sequence, _ = old_heads[cam]
        assert (f"(sequence {sequence + 1}): links to sequence {sequence}, deleted: the audit log records "
                "its removal and its digest") in out, out


def test_a_held_old_segment_is_not_where_the_chain_goes_on(site: Site) -> None:
    """An incident keeps gate's first segments; everything after them ages out. The chain's newest
    segment is a deleted one, not the held one the catalog still has."""
    segs = site.segments()
    old_heads = heads(segs)
    gate = sorted(segs["gate"], key=lambda s: s["sequence"])
    site.cli("incident", "open", "--id", "INC-1", "--camera", "gate", "--from", gate[0]["start"],
             "--to", rfc3339(parse_rfc3339(gate[1]["end"]) - S // 10), "--json")
    site.sweep_at(rfc3339(newest_end_ns(segs) + 29 * DAY))
    assert {p.split("/")[0] for p in site.files()} == {"gate"}
    new = record_again(site)
    assert_goes_on_from(new["gate"], old_heads["gate"])
    assert_goes_on_from(new["yard"], old_heads["yard"])
    assert "OK" in site.cli("verify").splitlines()[-1]


def test_files_removed_without_a_record_do_not_take_the_chain_back(site: Site) -> None:
    """Someone removes a camera's files by hand: start-up drops their rows (audited as segments_missing,
    a problem for verify), and the chain still goes on past them."""
    segs = site.segments()
    old_heads = heads(segs)
    shutil.rmtree(site.data_dir / "yard")
    daemon = open_daemon_state(site.config)
    try:
        chain = daemon.chain_for("yard")
    finally:
        daemon.catalog.close()
    sequence, digest = old_heads["yard"]
    assert (chain.next_sequence, chain.prev_digest.hex()) == (sequence + 1, digest)


def test_a_running_daemon_reads_deletions_made_since_it_started(site: Site) -> None:
    """A camera added while the daemon runs goes on from what was deleted after the daemon read the log
    (here by `edgerec retention` in another process)."""
    segs = site.segments()
    old_heads = heads(segs)
    daemon = open_daemon_state(site.config)
    try:
        before = daemon.chain_for("yard")
        site.sweep_at(rfc3339(newest_end_ns(segs) + 29 * DAY))
        assert site.files() == set()
        after = daemon.chain_for("yard")
        reads = daemon.removed_heads.full_reads
    finally:
        daemon.catalog.close()
    sequence, digest = old_heads["yard"]
    assert (before.next_sequence, before.prev_digest.hex()) == (sequence + 1, digest)  # from the catalog
    assert (after.next_sequence, after.prev_digest.hex()) == (sequence + 1, digest)  # from the log
    assert reads == 1, "the log was read once, then only what was appended"


# ----- the record: newest_removed in the audit log ---------------------------------------------------------
def test_deletion_lines_name_each_cameras_newest_removed_segment(site: Site) -> None:
    segs = site.segments()
    site.sweep_at(rfc3339(newest_end_ns(segs) + 29 * DAY))
    named: dict[str, dict[str, Any]] = {}
    for line in site.audit():
        if line["event"] == "segments_deleted":
            for cam, head in line["newest_removed"].items():
                assert cam == line["camera"]
                if cam not in named or head["sequence"] > named[cam]["sequence"]:
                    named[cam] = head
    assert {cam: (h["sequence"], h["digest"]) for cam, h in named.items()} == heads(segs)


def test_removed_heads_keep_the_highest_and_read_only_the_field(tmp_path: Path) -> None:
    from edgerec.audit import AuditLog
    from edgerec.chainheads import ChainHead
    from edgerec.chainstart import NEWEST_REMOVED, RemovedHeads, newest_removed

    log = AuditLog(tmp_path / "audit.log")
    d1, d2 = "a1" * 32, "b2" * 32
    # A path (before the field) that looks like the field is not taken for it.
    newest = newest_removed([("gate", 5, d1), ("gate", 3, "c3" * 32), ("yard", 1, None)])
    log.append("segments_deleted", paths=['gate/x "newest_removed":{"gate":{"sequence":99}}'],
               **{NEWEST_REMOVED: newest})
    heads_ = RemovedHeads(log.path)
    heads_.refresh()
    assert heads_.heads == {"gate": ChainHead("gate", 5, d1)}
    # A later line naming an older segment (a released hold) does not take the chain back.
    log.append("segments_deleted", **{NEWEST_REMOVED: newest_removed([("gate", 2, d2), ("yard", 7, d2)])})
    heads_.refresh()
    assert heads_.heads == {"gate": ChainHead("gate", 5, d1), "yard": ChainHead("yard", 7, d2)}
    # The log replaced by an older one under a running daemon: read again, nothing forgotten.
    (tmp_path / "audit.log").write_text("")
    log2 = AuditLog(tmp_path / "audit.log")
    log2.append("segments_deleted", **{NEWEST_REMOVED: newest_removed([("gate", 1, d2)])})
    heads_.refresh()
    assert heads_.full_reads == 2
    assert heads_.heads["gate"] == ChainHead("gate", 5, d1)


# ----- a segment quarantined at start-up keeps its number -------------------------------------------------
def newest_file(site: Site, camera: str) -> tuple[SegmentMeta, bytes, Path]:
    """The camera's newest segment file: its header, digest and path."""
    infos = [segfile.read_info(p) for p in (site.data_dir / camera).glob("*/*.seg")]
    newest = max(infos, key=lambda i: i.meta.sequence)
    return newest.meta, newest.digest, newest.path


def damage_uncatalogued(site: Site, camera: str) -> tuple[SegmentMeta, bytes]:
    """The camera's newest segment was sealed just before a power cut that also damaged the catalog (the
    operator moved it away), and the card flipped a byte in one of its chunks: start-up cannot adopt it.
    Returns the header of the damaged segment and the digest of the one before it."""
    meta, _, path = newest_file(site, camera)
    for f in site.data_dir.glob("catalog.sqlite3*"):
        f.rename(f.with_name(f.name + ".damaged"))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    before = [segfile.read_info(p) for p in (site.data_dir / camera).glob("*/*.seg") if p != path]
    return meta, max(before, key=lambda i: i.meta.sequence).digest


def foreign_partial(site: Site, camera: str) -> tuple[SegmentMeta, bytes]:
    """A power cut left the camera's next segment as a ``.partial`` this device cannot re-sign (written
    under another device key: the card was in another device then), so start-up cannot recover it.
    Returns its header and the digest of the camera's newest segment, the one it follows."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    last, digest, _ = newest_file(site, camera)
    meta = replace(last, sequence=last.sequence + 1, start_ns=last.start_ns + 60 * S, prev_digest=digest)
    write_partial(site.data_dir, meta, Ed25519PrivateKey.generate())
    return meta, digest


def _writer_with_chunks(data_dir: Path, meta: SegmentMeta, signing_key: Any) -> segfile.SegmentWriter:
    """A segment writer of ``meta`` that has been given four chunks of footage."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edgerec.layout import segment_path

    writer = segfile.SegmentWriter(segment_path(data_dir, meta.camera, meta.start_ns), meta,
                                   [X25519PrivateKey.generate().public_key()], signing_key, chunk_bytes=1024)
    for i in range(4):
        writer.write(bytes(range(256)) * 4)
        writer.note(meta.start_ns + (i + 1) * S // 4, i + 1)
    return writer


def write_partial(data_dir: Path, meta: SegmentMeta, signing_key: Any) -> Path:
    """A ``.partial`` as a power cut leaves it: a few chunks, the next one torn, no trailer."""
    writer = _writer_with_chunks(data_dir, meta, signing_key)
    writer.poll()
    snapshot = writer.partial_path.read_bytes()
    writer.abort()
    writer.partial_path.write_bytes(snapshot + b"\x01\x00")  # the chunk the power cut tore
    return writer.partial_path


@pytest.mark.parametrize("staged", [damage_uncatalogued, foreign_partial], ids=["sealed", "partial"])
def test_a_quarantined_newest_segment_keeps_its_number(site: Site, staged: Any) -> None:
    """Start-up quarantines the camera's newest segment; the chain goes on at its number + 1, linked to
    the last good segment, so no two files (one in quarantine/) claim one number; verify explains the
    number missing from the chain by the quarantine the audit log records."""
    lost, good_digest = staged(site, "gate")
    yard_head = newest_file(site, "yard")
    new = record_again(site)
    quarantined = [segfile.read_header(p).meta for p in (site.data_dir / "quarantine").rglob("*.seg*")]
    assert [(m.camera, m.sequence) for m in quarantined] == [("gate", lost.sequence)]
    assert_goes_on_from(new["gate"], (lost.sequence, good_digest.hex()))
    assert_goes_on_from(new["yard"], (yard_head[0].sequence, yard_head[1].hex()))
    [line] = [e for e in site.audit() if e["event"] == "segments_quarantined"]
    assert line["sequences"] == [lost.sequence]
    assert line["newest_quarantined"] == {"gate": {"sequence": lost.sequence}}
    out = site.cli("verify")
    assert out.splitlines()[-1].endswith(": OK"), out
    assert (f"(sequence {lost.sequence + 1}): follows sequence {lost.sequence - 1} directly; sequence(s) "
            f"{lost.sequence} in between were never sealed: set aside at start-up (the audit log records "
            "it)") in out, out


def test_a_camera_whose_first_segment_was_set_aside_starts_after_it(site: Site) -> None:
    """A camera's first segment ever could not be recovered (its .partial signed under another key): the
    chain goes on at 1, and, with nothing good to link to, with a zero prev_digest."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    gate, _, _ = newest_file(site, "gate")
    write_partial(site.data_dir, replace(gate, camera="door", sequence=0, prev_digest=bytes(32)),
                  Ed25519PrivateKey.generate())
    daemon = open_daemon_state(site.config)
    try:
        chain = daemon.chain_for("door")
    finally:
        daemon.catalog.close()
    assert (chain.next_sequence, chain.prev_digest) == (1, bytes(32))


def test_removed_heads_keep_the_highest_number_set_aside(tmp_path: Path) -> None:
    from edgerec.audit import AuditLog
    from edgerec.chainheads import ChainHead
    from edgerec.chainstart import NEWEST_QUARANTINED, RemovedHeads, newest_quarantined, next_link

    log = AuditLog(tmp_path / "audit.log")
    log.append("segments_quarantined", paths=["gate/a", "gate/b", "yard/c"], sequences=[4, 9, None],
               **{NEWEST_QUARANTINED: newest_quarantined([("gate", 4), ("gate", 9), ("yard", None)])})
    log.append("segments_quarantined", **{NEWEST_QUARANTINED: {"gate": {"sequence": 2},  # an older one
                                                                "yard": {"sequence": 2**63 - 1}}})  # unusable
    heads_ = RemovedHeads(log.path)
    heads_.refresh()
    assert heads_.quarantined == {"gate": 9}
    d = "a1" * 32
    # Past the number set aside, linked to the newest good segment; a head past it wins.
    assert next_link(ChainHead("gate", 7, d), 9) == (10, bytes.fromhex(d))
    assert next_link(ChainHead("gate", 12, d), 9) == (13, bytes.fromhex(d))
    assert next_link(None, None) == (0, bytes(32))


# ----- a file start-up keeps in place (an error of the system) keeps its number ---------------------------
@dataclass(frozen=True)
class KeptFile:
    """gate's newest segment, left on disk by a crash and not catalogued (``path``, as ``blob``), and what
    came before it: the newest sealed segment (``last``, ``last_digest``) and yard's newest file."""

    path: Path
    rel: str
    blob: bytes
    lost: SegmentMeta
    last: SegmentMeta
    last_digest: bytes
    yard_head: tuple[SegmentMeta, bytes, Path]


def leave_gate_newest(site: Site, write: Callable[[Path, SegmentMeta, Any], Path]) -> KeptFile:
    """gate's next segment written by ``write`` (a ``.partial`` or a sealed file) as a crash leaves it."""
    from edgerec.keys import load_or_create_device_key

    last, last_digest, _ = newest_file(site, "gate")
    yard_head = newest_file(site, "yard")
    lost = replace(last, sequence=last.sequence + 1, start_ns=last.start_ns + S, prev_digest=last_digest)
    path = write(site.data_dir, lost, load_or_create_device_key(site.data_dir))
    return KeptFile(path, path.relative_to(site.data_dir).as_posix(), path.read_bytes(), lost, last,
                    last_digest, yard_head)


def start_with_it_unreadable(site: Site, kept: KeptFile, error: str, newer_than: int) -> list[SegmentMeta]:
    """A start at which opening ``kept.path`` fails with EIO: start-up keeps it in place (``error``, its
    line in the journal) and gate goes on at its number + 1, linked to the last sealed segment; yard is
    not affected and verify passes. Returns gate's new segments (numbered above ``newer_than``)."""
    from tests.helpers.openfails import run_cli_with_open_failing

    site.pass_time_until(kept.lost.start_ns + S)  # the device starts again after the crash
    before = site.files()
    proc = run_cli_with_open_failing(errno.EIO, [kept.path], "run", "-c", str(site.config), "--exit-at-eof",
                                     clock_shift_ns=site.clock_shift_ns)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reconcile error path={kept.rel} {error}: Input/output error; kept in place" in proc.stderr
    assert (f"chain goes on past a file kept in place camera=gate path={kept.rel} "
            f"skipped={kept.lost.sequence} number_known=False") in proc.stderr, proc.stderr[-3000:]
    assert kept.path.read_bytes() == kept.blob, "the kept file is where it was, as it was"
    new = [m for m in headers(site, "gate") if m.sequence > newer_than]
    yard_head = kept.yard_head
    yard_new = [m for m in headers(site, "yard") if m.sequence > yard_head[0].sequence]
    assert new and len(site.files() - before) == len(new) + len(yard_new)
    assert_goes_on_from(new, (kept.lost.sequence, kept.last_digest.hex()))  # at lost + 1, after last sealed
    assert_goes_on_from(yard_new, (yard_head[0].sequence, yard_head[1].hex()))
    pending = site.cli("verify")  # the kept file is still there: accounted for, or the link past explained
    assert pending.splitlines()[-1].endswith(": OK"), pending
    return new


def verify_explains_the_link_past(site: Site, kept: KeptFile) -> str:
    """Once the kept file is catalogued under its number: no number claimed twice, and verify passes,
    noting the link past it. Returns verify's output."""
    numbers = [m.sequence for m in headers(site, "gate")]
    assert len(numbers) == len(set(numbers)), "a number claimed twice"
    out = site.cli("verify")
    assert out.splitlines()[-1].endswith(": OK"), out
    assert "forked" not in out and "problem:" not in out, out
    lost = kept.lost.sequence
    assert (f"(sequence {lost + 1}): goes on from sequence {kept.last.sequence}, not from sequence "
            f"{lost}: sequence {lost} could not be read when this one began") in out, out
    return out


def test_a_kept_partial_keeps_its_number_and_is_recovered_later(site: Site) -> None:
    """A crash left gate's newest segment unsealed; at the next start its .partial cannot be opened (EIO:
    not the file's fault), so start-up keeps it in place. The camera goes on at its number + 1, linked to
    the last sealed segment, as a recorder goes on past an unsealed segment it gives up; once a later
    start can read the file it recovers it under its own number, and verify explains the link past it:
    no number claimed twice, no fork."""
    kept = leave_gate_newest(site, write_partial)
    new = start_with_it_unreadable(site, kept, "cannot recover", newer_than=kept.last.sequence)

    after_first = max(m.sequence for m in new)
    again = record_again(site)  # the error is gone: start-up recovers the .partial under its number
    assert not kept.path.exists()
    recovered = kept.path.with_name(kept.path.name.removesuffix(".partial"))
    info = segfile.read_info(recovered)
    assert (info.meta.sequence, info.state) == (kept.lost.sequence, "recovered")
    assert [m.sequence for m in again["gate"]][:2] == [kept.lost.sequence, after_first + 1]  # recovered, on
    out = verify_explains_the_link_past(site, kept)
    assert "start-up recovered it later" in out, out


def write_sealed(data_dir: Path, meta: SegmentMeta, signing_key: Any) -> Path:
    """A sealed segment as the recorder leaves it (a few chunks, a signed trailer, its final name)."""
    return _writer_with_chunks(data_dir, meta, signing_key).close().path


def test_a_kept_uncatalogued_segment_keeps_its_number_and_is_adopted_later(site: Site) -> None:
    """gate's newest segment was sealed, but a crash came between the seal's rename and the catalog insert;
    at the next start the file cannot be opened (EIO: not the file's fault), so start-up keeps it in place
    instead of adopting it. The camera goes on at its number + 1, linked to the newest catalogued
    segment; once a later start can read the file it adopts it as it is (sealed), and verify explains the
    link past it: no number claimed twice, no fork."""
    kept = leave_gate_newest(site, write_sealed)
    assert kept.rel not in {s["path"] for s in site.segments()["gate"]}, "not in the catalog"
    new = start_with_it_unreadable(site, kept, "cannot read", newer_than=kept.lost.sequence)
    assert kept.rel not in {s["path"] for s in site.segments()["gate"]}, "not adopted while it cannot be read"

    after_first = max(m.sequence for m in new)
    again = record_again(site)  # the error is gone: start-up adopts the segment under its number
    catalogued = {s["path"]: s for s in site.segments()["gate"]}
    row = catalogued[kept.rel]
    assert row["sequence"] == kept.lost.sequence and row["state"] == "sealed"
    assert kept.path.read_bytes() == kept.blob, "adopted as it is"
    assert [m.sequence for m in again["gate"]][0] == after_first + 1
    out = verify_explains_the_link_past(site, kept)
    lost, last = kept.lost.sequence, kept.last.sequence
    assert (f"(sequence {lost + 1}): goes on from sequence {last}, not from sequence {lost}: sequence "
            f"{lost} could not be read when this one began (the recorder gave it up, or start-up kept it in "
            "place), so the chain went on from the last segment sealed before it; start-up catalogued it "
            "later") in out, out


def test_past_kept_goes_on_past_a_kept_file_newer_than_the_head() -> None:
    """The rule of chain_for for files (.partial or sealed) start-up kept in place (chainstart.past_kept):
    a known number still ahead is passed; an unknown one takes one number if its name is later than the
    start of the camera's newest segment (or there is none); anything behind the head changes nothing."""
    from edgerec.chainstart import KeptFile, past_kept

    newest_start = 1000 * S  # the camera's newest catalogued segment started then; next number 8

    def kept(sequence: int | None, start_ns: int | None, name: str = "a", suffix: str = ".seg.partial"
             ) -> KeptFile:
        return KeptFile("gate", f"gate/d/{name}{suffix}", sequence, start_ns)

    known = kept(8, newest_start + S)
    assert past_kept(8, [known], newest_start) == (9, [(known, 8)])
    far = kept(12, newest_start + S)  # numbers skipped before it: the chain goes on past its number
    assert past_kept(8, [far], newest_start) == (13, [(far, 12)])
    assert past_kept(8, [kept(7, newest_start + S), kept(3, 0)], newest_start) == (8, [])  # behind the head
    unknown = kept(None, newest_start + S)
    assert past_kept(8, [unknown], newest_start) == (9, [(unknown, 8)])
    assert past_kept(8, [kept(None, newest_start - S)], newest_start) == (8, [])  # older than the head
    assert past_kept(8, [kept(None, newest_start)], newest_start) == (8, [])
    assert past_kept(0, [unknown], None) == (1, [(unknown, 0)])  # nothing catalogued: one number
    assert past_kept(8, [], newest_start) == (8, [])
    # Two left unsealed (one given up by the recorder, then a crash): each takes a number, in name order,
    # the known one after the unknown one before it.
    first, second = kept(None, newest_start + S, "1"), kept(9, newest_start + 2 * S, "2")
    assert past_kept(8, [second, first], newest_start) == (10, [(first, 8), (second, 9)])
    # A sealed segment kept out of the catalog (kept in place, not adopted) takes its place by the same
    # rule: its known number, or one number when its name is later than the head's start; and a .partial
    # begun after it (a crash right after) takes the number after it.
    sealed = kept(8, newest_start + S, "1", suffix=".seg")
    assert past_kept(8, [sealed], newest_start) == (9, [(sealed, 8)])
    assert past_kept(9, [sealed], newest_start) == (9, [])  # its number behind the head: adopted already
    unreadable = kept(None, newest_start + S, "1", suffix=".seg")
    assert past_kept(8, [unreadable], newest_start) == (9, [(unreadable, 8)])
    assert past_kept(8, [kept(None, newest_start - S, suffix=".seg")], newest_start) == (8, [])
    after = kept(None, newest_start + 2 * S, "2")
    assert past_kept(8, [after, sealed], newest_start) == (10, [(sealed, 8), (after, 9)])
    assert past_kept(8, [after, unreadable], newest_start) == (10, [(unreadable, 8), (after, 9)])


def test_chain_for_goes_on_past_a_kept_partial(site: Site) -> None:
    """Through the daemon's start-up in this process: the kept .partial of gate (number known, newer than
    the head) moves gate's chain on, still linked to its newest sealed segment; yard's kept .partial is
    older than its head and changes nothing."""
    from edgerec.chainstart import KeptFile

    gate, gate_digest, _ = newest_file(site, "gate")
    yard, yard_digest, _ = newest_file(site, "yard")
    daemon = open_daemon_state(site.config)
    try:
        daemon.kept_files = {
            "gate": [KeptFile("gate", "gate/x.seg.partial", gate.sequence + 1, gate.start_ns + S)],
            "yard": [KeptFile("yard", "yard/x.seg.partial", None, yard.start_ns - S)]}
        chains = {cam: daemon.chain_for(cam) for cam in CAMERAS}
    finally:
        daemon.catalog.close()
    assert (chains["gate"].next_sequence, chains["gate"].prev_digest) == (gate.sequence + 2, gate_digest)
    assert (chains["yard"].next_sequence, chains["yard"].prev_digest) == (yard.sequence + 1, yard_digest)
