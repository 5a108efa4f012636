"""The rules around the segment format (docs/segment-format.md sections 7.1, 7.6): which header problems
end a walk, where truncations are reported, and how a camera's hash chain is walked and reported."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from edgerec import inventory, layout, segfile
from edgerec.segfile import ChainLink, link_status
from tests.helpers.openfails import run_cli_with_open_failing
from tests.helpers.segments import START_NS, TestKeys, make_keys, make_meta, split_records, write_segment

SECOND_NS = 1_000_000_000
ZERO = segfile.GENESIS_DIGEST


@pytest.fixture(scope="module")
def tk() -> TestKeys:
    return make_keys()


# ----- link_status (pure) -------------------------------------------------------------------------------
def _link(seq: int, prev: bytes, digest: bytes | None = None, intact: bool = True,
          recovered: bool = False) -> ChainLink:
    return ChainLink(seq, prev, digest if digest is not None else bytes([seq + 1]) * 32, intact, recovered)


@pytest.mark.parametrize(("previous", "current", "status"), [
    (None, _link(0, ZERO), segfile.LINK_START),
    (None, _link(5, b"\x07" * 32), segfile.LINK_FIRST),  # retention deleted 0..4
    (_link(4, ZERO), _link(5, _link(4, ZERO).digest), segfile.LINK_OK),
    (_link(4, ZERO), _link(5, b"\xee" * 32), segfile.LINK_BROKEN),
    (_link(4, ZERO, intact=False), _link(5, b"\xee" * 32), segfile.LINK_UNCONFIRMED),
    (_link(4, ZERO, digest=b"", intact=False), _link(5, b"\xee" * 32), segfile.LINK_UNCONFIRMED),
    (_link(4, ZERO), _link(6, _link(4, ZERO).digest), segfile.LINK_SKIP),  # 5 was lost before sealing
    (_link(4, ZERO), _link(9, b"\xee" * 32), segfile.LINK_GAP),  # 5..8 deleted (held 4 kept)
    (_link(4, ZERO), _link(4, ZERO), segfile.LINK_DUPLICATE),
])
def test_link_status(previous: ChainLink | None, current: ChainLink, status: str) -> None:
    assert link_status(previous, current) == status
    assert (status in segfile.LINK_PROBLEMS) == (status in {segfile.LINK_BROKEN, segfile.LINK_DUPLICATE})


# The recorder gave up on 5 (it could not read it), went on with 6 linked to 4, the last it had sealed;
# start-up recovered 5 later.
_SEALED = _link(4, b"\x03" * 32)
_RECOVERED = _link(5, _SEALED.digest, recovered=True)
_NEXT = _link(6, _SEALED.digest)


def test_a_segment_going_on_past_a_recovered_one_it_was_given_up_for_is_explained() -> None:
    assert link_status(_SEALED, _RECOVERED) == segfile.LINK_OK
    assert link_status(_RECOVERED, _NEXT, before=_SEALED) == segfile.LINK_PAST
    assert segfile.LINK_PAST not in segfile.LINK_PROBLEMS
    assert link_status(_NEXT, _link(7, _NEXT.digest), before=_RECOVERED) == segfile.LINK_OK
    assert segfile.past_note(_SEALED, _RECOVERED).endswith("start-up recovered it later")


def test_a_segment_going_on_past_a_sealed_one_kept_out_of_the_catalog_is_explained() -> None:
    """5 was sealed, but a crash kept it out of the catalog and the next start could not read it (kept in
    place): 6 was numbered after it and linked to 4; a later start adopted 5 as it is (sealed). The same
    shape as a recovered 5, and as sound: every link in it was signed by the device."""
    sealed_5 = replace(_RECOVERED, recovered=False)
    assert link_status(_SEALED, sealed_5) == segfile.LINK_OK
    assert link_status(sealed_5, _NEXT, before=_SEALED) == segfile.LINK_PAST
    assert segfile.past_note(_SEALED, sealed_5) == (
        "goes on from sequence 4, not from sequence 5: sequence 5 could not be read when this one began "
        "(the recorder gave it up, or start-up kept it in place), so the chain went on from the last "
        "segment sealed before it; start-up catalogued it later")


def _walk(links: list[ChainLink]) -> list[str]:
    """The statuses a chain walk gives, passing ``before`` on as the walkers do."""
    statuses, before, previous = [], None, None
    for link in links:
        status = link_status(previous, link, before=before)
        statuses.append(status)
        before, previous = segfile.walked_before(status, before, previous), link
    return statuses


def test_a_run_of_segments_given_up_in_a_row_is_gone_past_to_the_same_segment() -> None:
    """The recorder gave up 5 and then 6 (neither could be read when the next began): 6 and 7 both link
    to 4, the last it sealed, as 5 does. Each goes on past the one before it."""
    given_up_6 = _link(6, _SEALED.digest, recovered=True)
    after = _link(7, _SEALED.digest)
    assert _walk([_SEALED, _RECOVERED, given_up_6, after, _link(8, after.digest)]) == [
        segfile.LINK_FIRST, segfile.LINK_OK, segfile.LINK_PAST, segfile.LINK_PAST, segfile.LINK_OK]
    # Only that shape: 7 linking to 5 (neither the segment gone past nor the one before it), 6 damaged,
    # 6 from elsewhere.
    assert _walk([_SEALED, _RECOVERED, given_up_6, replace(after, prev_digest=_RECOVERED.digest)])[-1] == (
        segfile.LINK_BROKEN)
    assert _walk([_SEALED, _RECOVERED, replace(given_up_6, intact=False), after])[-1] == (
        segfile.LINK_UNCONFIRMED)
    assert _walk([_SEALED, _RECOVERED, replace(given_up_6, prev_digest=b"\xee" * 32), after])[-2:] == [
        segfile.LINK_BROKEN, segfile.LINK_BROKEN]


@pytest.mark.parametrize(("before", "previous", "current", "status"), [
    # each condition broken on its own: the status without the rule
    (None, _RECOVERED, _NEXT, segfile.LINK_BROKEN),  # nothing walked before the recovered one
    (_SEALED, replace(_RECOVERED, intact=False), _NEXT, segfile.LINK_UNCONFIRMED),  # damaged 5
    (_SEALED, replace(_RECOVERED, intact=False, recovered=True), _NEXT, segfile.LINK_UNCONFIRMED),
    (_SEALED, replace(_RECOVERED, intact=False, recovered=False), _NEXT, segfile.LINK_UNCONFIRMED),
    (_SEALED, replace(_RECOVERED, recovered=False, prev_digest=b"\xee" * 32), _NEXT,
     segfile.LINK_BROKEN),  # a sealed 5 not from 4
    (replace(_SEALED, intact=False), _RECOVERED, _NEXT, segfile.LINK_BROKEN),  # 4's digest proves nothing
    (_SEALED, _RECOVERED, replace(_NEXT, intact=False), segfile.LINK_BROKEN),  # 6's header not authentic
    (_SEALED, _RECOVERED, replace(_NEXT, prev_digest=_link(3, ZERO).digest), segfile.LINK_BROKEN),  # to 3
    (_SEALED, _RECOVERED, replace(_NEXT, prev_digest=b"\xee" * 32), segfile.LINK_BROKEN),  # to one not here
    (_SEALED, replace(_RECOVERED, prev_digest=b"\xee" * 32), _NEXT, segfile.LINK_BROKEN),  # 5 not from 4
    (replace(_SEALED, sequence=5), _RECOVERED, _NEXT, segfile.LINK_BROKEN),  # "before" not before it
    (_SEALED, _RECOVERED, replace(_NEXT, sequence=7), segfile.LINK_GAP),  # not the next number
    (_SEALED, _RECOVERED, replace(_NEXT, sequence=5), segfile.LINK_DUPLICATE),
])
def test_only_exactly_the_given_up_shape_goes_on_past(before: ChainLink | None, previous: ChainLink,
                                                      current: ChainLink, status: str) -> None:
    assert link_status(previous, current, before=before) == status
    assert link_status(previous, current) == status


def test_chain_order_is_by_sequence_not_by_given_order() -> None:
    links = [(_link(3, ZERO), "c"), (_link(1, ZERO), "a"), (_link(2, ZERO), "b")]
    assert [name for _, name in segfile.chain_order(links)] == ["a", "b", "c"]


# ----- header problems are fatal; H11 is not ------------------------------------------------------------
def _sample(tmp_path: Path, tk: TestKeys) -> bytes:
    return write_segment(tmp_path / "s.seg", os.urandom(3000), tk, chunk_bytes=512).path.read_bytes()


def _header_damage(blob: bytes) -> dict[str, tuple[int, bytes]]:
    """Rule -> (offset, replacement bytes) that breaks exactly that rule."""
    header_len = struct.unpack_from(">I", blob, 12)[0]
    strings = 125
    count_at = strings
    for _ in range(5):
        count_at += 1 + blob[count_at]
    return {
        "H2": (0, b"X"), "H3": (8, b"\x00\x02"), "H4": (10, b"\x00\x09"),
        "H5": (12, struct.pack(">I", 65537)), "H6": (16, struct.pack(">I", 0)), "H7": (124, b"\x02"),
        "H8": (strings, bytes([255])), "H9": (count_at, b"\x00"),
        "H10": (12, struct.pack(">I", header_len + 1)),
    }


@pytest.mark.parametrize("rule", ["H1", "H2", "H3", "H4", "H5", "H6", "H7", "H8", "H9", "H10"])
def test_every_header_problem_is_fatal(tmp_path: Path, tk: TestKeys, rule: str) -> None:
    blob = bytearray(_sample(tmp_path, tk))
    if rule == "H1":
        blob = blob[:15]
    else:
        offset, repl = _header_damage(bytes(blob))[rule]
        blob[offset : offset + len(repl)] = repl
    path = tmp_path / "bad.seg"
    path.write_bytes(bytes(blob))
    check = segfile.check_segment(path, private_key=tk.recipient, prev_digest=b"\x01" * 32)
    # One problem and nothing after it: the walk stopped at the header (not even H11 was evaluated).
    assert len(check.problems) == 1, check.problems
    assert (check.header, check.digest, check.state) == (None, None, None)
    assert segfile.ChainLink.of(check) is None


def test_hash_chain_mismatch_is_not_fatal(tmp_path: Path, tk: TestKeys) -> None:
    path = write_segment(tmp_path / "s.seg", b"x" * 2000, tk, chunk_bytes=512).path
    check = segfile.check_segment(path, private_key=tk.recipient, prev_digest=b"\x01" * 32)
    assert [p.offset for p in check.problems] == [68]
    assert check.header is not None and check.digest == hashlib.sha256(path.read_bytes()).digest()


# ----- truncations are reported at the record they cut --------------------------------------------------
def test_truncations_are_reported_at_the_first_byte_of_the_cut_record(tmp_path: Path, tk: TestKeys) -> None:
    blob = _sample(tmp_path, tk)
    header, records = split_records(blob)
    trailer_at = len(blob) - segfile.TRAILER_BYTES
    cases = {
        len(header) - 1: 0,  # inside the header
        records[1].offset + 3: records[1].offset,  # inside a chunk's prefix
        records[1].offset + 30: records[1].offset,  # inside its ciphertext
        records[1].offset + len(records[1].raw) - 2: records[1].offset,  # inside its check
        trailer_at + 10: trailer_at,  # inside the trailer
        trailer_at: trailer_at,  # no trailer at all
    }
    for cut, expected in cases.items():
        path = tmp_path / f"cut{cut}.seg"
        path.write_bytes(blob[:cut])
        problems = segfile.verify(path)
        assert [p.offset for p in problems] == [expected], (cut, problems)


def test_digest_of_a_damaged_segment_is_of_its_bytes_as_found(tmp_path: Path, tk: TestKeys) -> None:
    blob = bytearray(_sample(tmp_path, tk))
    blob[len(blob) // 2] ^= 1
    path = tmp_path / "d.seg"
    path.write_bytes(bytes(blob))
    check = segfile.check_segment(path)
    assert not check.ok and check.info is None
    assert check.digest == hashlib.sha256(bytes(blob)).digest()


# ----- verify_tree walks each camera's chain by sequence --------------------------------------------------
def _record_chain(data_dir: Path, tk: TestKeys, starts_s: list[int], *, first_seq: int = 0,
                  prev: bytes = ZERO) -> list[segfile.SealedSegment]:
    sealed = []
    for i, start_s in enumerate(starts_s):
        start_ns = START_NS + start_s * SECOND_NS
        meta = make_meta(sequence=first_seq + i, start_ns=start_ns, prev_digest=prev)
        path = layout.segment_path(data_dir, meta.camera, start_ns)
        seg = write_segment(path, os.urandom(1500), tk, meta=meta, chunk_bytes=512, seed=i)
        sealed.append(seg)
        prev = seg.digest
    return sealed


def _device_pub(data_dir: Path, tk: TestKeys) -> None:
    from edgerec import keys

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "device.pub").write_text(keys.format_device_public_key(tk.device.public_key()) + "\n")


def test_a_clean_chain_verifies_with_one_start(tmp_path: Path, tk: TestKeys) -> None:
    _record_chain(tmp_path, tk, [0, 10, 20])
    report = inventory.verify_tree(tmp_path, private_key=tk.recipient)
    assert report.ok and report.checked == 3, report.problems
    assert not [n for n in report.notes if "sequence" in n]


def test_a_clock_step_backwards_is_not_a_chain_break(tmp_path: Path, tk: TestKeys) -> None:
    """Names sort by start time; the chain goes by sequence: segment 2 started 'before' segment 1."""
    _record_chain(tmp_path, tk, [100, 200, 50])
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems


def test_two_swapped_files_keep_the_chain_and_are_named_as_misplaced(tmp_path: Path, tk: TestKeys) -> None:
    a, b, _ = _record_chain(tmp_path, tk, [0, 10, 20])
    tmp = a.path.with_name("swap")
    os.replace(a.path, tmp)
    os.replace(b.path, a.path)
    os.replace(tmp, b.path)
    report = inventory.verify_tree(tmp_path)
    assert len(report.problems) == 2, report.problems
    assert all("renamed or swapped" in p for p in report.problems)
    assert not any("chain" in p for p in report.problems)


def test_a_file_moved_to_another_camera_is_named(tmp_path: Path, tk: TestKeys) -> None:
    [seg] = _record_chain(tmp_path, tk, [0])
    other = tmp_path / "back-yard" / seg.path.parent.name
    other.mkdir(parents=True)
    shutil.move(seg.path, other / seg.path.name)
    report = inventory.verify_tree(tmp_path)
    assert any("the header says camera 'front-door'" in p for p in report.problems), report.problems


def test_a_replaced_segment_breaks_the_chain_after_it(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    # A validly signed segment (stolen device key) put in place of sequence 1: the next link breaks.
    segs[1].path.unlink()
    write_segment(segs[1].path, b"forged" * 200, tk,
                  meta=replace(segs[1].meta, prev_digest=segs[0].digest), chunk_bytes=512)
    report = inventory.verify_tree(tmp_path)
    assert [p for p in report.problems if "hash chain broken" in p] == [
        f"{segs[2].path} (sequence 2): hash chain broken: prev_digest is not the digest of sequence 1"]


def test_after_a_damaged_segment_the_link_is_unconfirmed_not_a_second_problem(
    tmp_path: Path, tk: TestKeys
) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    blob = bytearray(segs[1].path.read_bytes())
    blob[len(blob) // 2] ^= 1
    segs[1].path.write_bytes(bytes(blob))
    report = inventory.verify_tree(tmp_path)
    assert report.problems and all(p.startswith(str(segs[1].path)) for p in report.problems)
    assert any("link not confirmed" in n and str(segs[2].path) in n for n in report.notes)


def test_verify_and_ls_name_a_segment_that_cannot_be_read_and_check_the_others(tmp_path: Path,
                                                                                tk: TestKeys) -> None:
    """The file cannot be opened (EACCES): not known to be damaged, but not verified either. The command
    names it and the reason, checks the rest, and says so in its exit code; no traceback."""
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    unreadable = segs[1].path
    proc = run_cli_with_open_failing(errno.EACCES, [unreadable], "verify", "--data-dir", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    # Named once, with the number its name puts it at: not again as a number missing from the chain.
    assert [line for line in lines if line.startswith("problem:")] == [
        f"problem: {unreadable}: cannot read: Permission denied; its sequence number is not known (its "
        "header cannot be read): by its name it lies between sequence 0 and sequence 2, in the place of "
        "sequence 1, which is therefore not confirmed"]
    assert lines[-1].startswith("3 segments checked") and lines[-1].endswith(": 1 problem(s)"), lines
    listing = run_cli_with_open_failing(errno.EACCES, [unreadable], "ls", "--data-dir", str(tmp_path))
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    rel = unreadable.relative_to(tmp_path)
    assert f"  BAD  {rel}: cannot read: Permission denied" in listing.stdout.splitlines()
    assert "front-door: 3 segments" in listing.stdout


def _damage_header(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[0:4] = b"XXXX"
    path.write_bytes(bytes(blob))


def _unread_place(path: Path, place: str) -> str:
    return (f"{path} at byte 0: not an edgerec segment (bad magic); its sequence number is not known (its "
            f"header cannot be read): by its name it lies {place}")


def test_a_segment_whose_header_cannot_be_read_is_one_problem_not_also_a_missing_number(
    tmp_path: Path, tk: TestKeys
) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30])
    _audit_deleted(tmp_path, [segs[3]])  # an audit log, recording another removal
    segs[3].path.unlink()
    _damage_header(segs[1].path)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [_unread_place(
        segs[1].path, "between sequence 0 and sequence 2, in the place of sequence 1, which is therefore not "
        "confirmed")]


def test_an_unreadable_file_accounts_for_one_number_and_hides_no_removal(tmp_path: Path,
                                                                         tk: TestKeys) -> None:
    """Sequence 2 removed without a record, sequence 1 damaged: the damaged file may be either, so one of
    the two numbers is still missing unexplained (and verify would fail on the damaged file alone)."""
    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30])
    _audit_deleted(tmp_path, [segs[0]], event="segments_spared")  # an audit log, explaining nothing
    segs[2].path.unlink()
    _damage_header(segs[1].path)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [
        _unread_place(segs[1].path, "between sequence 0 and sequence 3, where sequence(s) 1..2 are not here: "
                      "it may be any of them, none of which is confirmed"),
        f"{segs[3].path} (sequence 3): segment(s) 1..2 (1 of them) missing from the chain and the audit log "
        "does not record their removal"]
    # A garbage file put in the removed segment's place is no explanation either: it is a problem.
    garbage = segs[2].path
    garbage.write_bytes(b"not a segment at all")
    report = inventory.verify_tree(tmp_path)
    assert len(report.problems) == 2 and not [p for p in report.problems if "missing" in p], report.problems
    assert _unread_place(garbage, "between sequence 0 and sequence 3, where sequence(s) 1..2 are not here: "
                         "it may be any of them, none of which is confirmed") in report.problems


def test_an_unreadable_file_where_no_number_is_missing_or_after_the_newest_says_so(tmp_path: Path,
                                                                                  tk: TestKeys) -> None:
    from edgerec.chainheads import ChainHead

    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    between = layout.segment_path(tmp_path, "front-door", START_NS + 5 * SECOND_NS)
    between.write_bytes(b"XXXX" + bytes(200))
    head = ChainHead("front-door", 2, segs[2].digest.hex())
    _damage_header(segs[2].path)
    report = inventory.verify_tree(tmp_path, heads=[head])
    assert report.problems == [
        _unread_place(between, "where no number is missing from the chain: it is none of the chain's "
                      "segments"),
        _unread_place(segs[2].path, "after sequence 1, the newest here: it may be a later one")]
    # The head seen earlier is not confirmed, and not reported missing a second time.
    assert any(n.startswith(f"chain head {head} seen earlier: not confirmed") for n in report.notes)


def _audit_deleted(data_dir: Path, segs: list[segfile.SealedSegment], *, sequences: bool = True,
                   event: str = "segments_deleted", newest: bool = False) -> None:
    """Audit lines as retention writes them (with sequences, and with ``newest`` the newest one's digest)
    or as older logs and reconciliation do."""
    from edgerec import chainstart
    from edgerec.audit import AuditLog

    fields: dict[str, object] = {"reason": "age", "camera": "front-door", "count": len(segs),
                                 "paths": [str(s.path.relative_to(data_dir)) for s in segs]}
    if sequences:
        fields["sequences"] = [s.meta.sequence for s in segs]
    if newest:
        fields[chainstart.NEWEST_REMOVED] = chainstart.newest_removed(
            (s.meta.camera, s.meta.sequence, s.digest.hex()) for s in segs)
    AuditLog(data_dir / "audit.log").append(event, **fields)


def test_retention_and_holds_leave_a_first_segment_and_gaps_as_notes(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30, 40, 50])
    for i in (0, 1, 3, 4):  # retention deleted these; a hold kept 2
        segs[i].path.unlink()
    _audit_deleted(tmp_path, [segs[0], segs[1]])
    _audit_deleted(tmp_path, [segs[3], segs[4]], sequences=False)  # an older log: paths only
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert any("(sequence 2): first segment here" in n for n in report.notes)
    assert any("(sequence 5): follows sequence 2; the segments numbered in between are not here" in n
               for n in report.notes)


@pytest.mark.parametrize(("removed", "where"), [
    ([2], "(sequence 3): segment(s) 2 missing"),  # in the middle
    ([0, 1], "(sequence 2): segment(s) 0..1 missing"),  # at the start
])
def test_a_segment_removed_without_an_audit_line_is_a_problem(tmp_path: Path, tk: TestKeys,
                                                              removed: list[int], where: str) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30, 40])
    _audit_deleted(tmp_path, [segs[4]])  # an audit log exists, naming something else
    segs[4].path.unlink()
    for i in removed:
        segs[i].path.unlink()
    report = inventory.verify_tree(tmp_path)
    assert [p for p in report.problems if "missing from the chain" in p] == [
        f"{segs[max(removed) + 1].path} {where} from the chain and the audit log does not record their "
        "removal"]


def test_without_an_audit_log_no_hole_is_explained(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    segs[1].path.unlink()
    report = inventory.verify_tree(tmp_path)
    assert any("segment(s) 1 missing from the chain and there is no audit log" in p for p in report.problems)


def test_paths_only_explain_a_hole_by_count_between_its_neighbours(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30, 40, 50])
    for i in (1, 3, 4):
        segs[i].path.unlink()
    _audit_deleted(tmp_path, [segs[1], segs[3]], sequences=False)  # 4 was removed without a line
    report = inventory.verify_tree(tmp_path)
    assert [p for p in report.problems if "missing" in p] == [
        f"{segs[5].path} (sequence 5): segment(s) 4 missing from the chain and the audit log does not record "
        "their removal"]


def test_a_spared_segment_removed_later_is_not_explained(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    _audit_deleted(tmp_path, [segs[1]])
    _audit_deleted(tmp_path, [segs[1]], event="segments_spared")  # an incident held it after all
    segs[1].path.unlink()  # ... and someone removed it by hand
    report = inventory.verify_tree(tmp_path)
    assert any("segment(s) 1 missing from the chain and the audit log does not record" in p
               for p in report.problems), report.problems


def _all_deleted(data_dir: Path, tk: TestKeys) -> list[segfile.SealedSegment]:
    """A camera's segments 0..2, every one deleted by retention (the audit log names the newest's digest)."""
    old = _record_chain(data_dir, tk, [0, 10, 20])
    _audit_deleted(data_dir, old, newest=True)
    for seg in old:
        seg.path.unlink()
    return old


def test_a_chain_going_on_from_its_deleted_segments_is_explained(tmp_path: Path, tk: TestKeys) -> None:
    old = _all_deleted(tmp_path, tk)
    new = _record_chain(tmp_path, tk, [100, 110], first_seq=3, prev=old[2].digest)
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert [n for n in report.notes if "sequence" in n] == [
        f"{new[0].path} (sequence 3): links to sequence 2, deleted: the audit log records its removal and "
        "its digest"]


def test_a_chain_started_again_after_its_segments_were_deleted_is_a_problem(tmp_path: Path,
                                                                          tk: TestKeys) -> None:
    """Its files and catalog gone, a camera's chain begins again at 0: numbers the log names repeat."""
    old = _all_deleted(tmp_path, tk)
    again = _record_chain(tmp_path, tk, [100, 110])
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [
        f"{again[i].path} (sequence {i}): the audit log records {old[i].path.relative_to(tmp_path)} removed "
        "with this sequence number: two files claim it (the camera's chain was started again, or did not go "
        "on past the removed one)"
        for i in (0, 1)]


def test_a_first_segment_linking_elsewhere_than_the_deleted_one_is_a_problem(tmp_path: Path,
                                                                            tk: TestKeys) -> None:
    _all_deleted(tmp_path, tk)
    [forged] = _record_chain(tmp_path, tk, [100], first_seq=3, prev=b"\x11" * 32)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [f"{forged.path} (sequence 3): hash chain broken: prev_digest is not the "
                               "digest the audit log records for sequence 2 (removed)"]


def test_a_head_seen_earlier_whose_deleted_segment_the_log_records_otherwise_is_a_problem(
    tmp_path: Path, tk: TestKeys
) -> None:
    from edgerec.chainheads import ChainHead

    old = _all_deleted(tmp_path, tk)
    _record_chain(tmp_path, tk, [100], first_seq=3, prev=old[2].digest)
    assert inventory.verify_tree(tmp_path, heads=[ChainHead("front-door", 2, old[2].digest.hex())]).ok
    other = ChainHead("front-door", 2, "ab" * 32)
    report = inventory.verify_tree(tmp_path, heads=[other])
    assert report.problems == [
        f"camera front-door: the audit log records sequence 2 removed with digest {old[2].digest.hex()}, not "
        f"the chain head {other} seen earlier: the chain was started again, or the log rewritten"]


def _catalogue(data_dir: Path, segs: list[segfile.SealedSegment]) -> None:
    from edgerec.catalog import Catalog

    cat = Catalog.open(data_dir)
    try:
        for seg in segs:
            cat.add_segment(seg)
    finally:
        cat.close()


def test_the_newest_segments_removed_show_against_the_catalog(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10, 20])
    _catalogue(tmp_path, segs)
    _audit_deleted(tmp_path, [segs[0]])
    segs[0].path.unlink()
    segs[2].path.unlink()  # the newest: the chain alone cannot show it
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [
        f"{segs[2].path} (sequence 2): in the catalog but the file is missing, and the audit log does not "
        "record its removal"]
    assert any(f"{segs[0].path}: deleted (the audit log records it)" in n for n in report.notes)


def test_a_catalog_digest_that_differs_from_the_file_is_a_problem(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10])
    _catalogue(tmp_path, segs)
    # A validly signed file (stolen device key) with the same sequence and link put in place of the newest.
    segs[1].path.unlink()
    forged = write_segment(segs[1].path, b"forged" * 200, tk, meta=segs[1].meta, chunk_bytes=512)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [
        f"{segs[1].path}: the catalog's digest {segs[1].digest.hex()} is not the file's "
        f"{forged.digest.hex()}: the file was replaced after it was catalogued (or the catalog edited)"]


def test_a_head_seen_earlier_finds_the_newest_segments_removed(tmp_path: Path, tk: TestKeys) -> None:
    from edgerec.chainheads import ChainHead

    segs = _record_chain(tmp_path, tk, [0, 10, 20, 30])
    head = ChainHead("front-door", 3, segs[3].digest.hex())
    _audit_deleted(tmp_path, [segs[0]])
    segs[0].path.unlink()
    assert inventory.verify_tree(tmp_path, heads=[head]).ok
    segs[3].path.unlink()
    segs[2].path.unlink()  # no catalog (it was deleted too): only the head shows it
    report = inventory.verify_tree(tmp_path, heads=[head])
    assert report.problems == [
        f"camera front-door: the newest segment(s) 2..3 missing from the chain and the audit log does not "
        f"record their removal (chain head {head} seen earlier)"]
    _audit_deleted(tmp_path, [segs[2], segs[3]])  # recorded deletions are notes
    assert inventory.verify_tree(tmp_path, heads=[head]).ok


def test_a_head_whose_segment_was_replaced_is_a_problem(tmp_path: Path, tk: TestKeys) -> None:
    from edgerec.chainheads import ChainHead

    segs = _record_chain(tmp_path, tk, [0, 10])
    # The chain started again from genesis (catalog and files removed): sequence 1 is another segment.
    for seg in segs:
        seg.path.unlink()
    again = _record_chain(tmp_path, tk, [100, 110])
    report = inventory.verify_tree(tmp_path, heads=[ChainHead("front-door", 1, segs[1].digest.hex())])
    assert any(p.startswith(f"{again[1].path} (sequence 1): not the segment of the chain head")
               for p in report.problems), report.problems


def test_a_file_found_missing_at_start_up_stays_a_problem(tmp_path: Path, tk: TestKeys) -> None:
    from edgerec.audit import AuditLog

    segs = _record_chain(tmp_path, tk, [0, 10])
    segs[1].path.unlink()
    rel = str(segs[1].path.relative_to(tmp_path))
    AuditLog(tmp_path / "audit.log").append("segments_missing", count=1, paths=[rel])  # as reconcile writes
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [f"{segs[1].path}: found missing at a start-up (audit line segments_missing): "
                               "removed without a deletion record"]


def test_chain_heads_parse_from_lines_and_status_documents() -> None:
    import json

    from edgerec.chainheads import ChainHead, parse_chain_head, parse_heads_file

    digest = "ab" * 32
    assert parse_chain_head(f"door=7:{digest.upper()}") == ChainHead("door", 7, digest)
    for bad in ("door=7", f"=7:{digest}", f"door=-1:{digest}", f"do\x85or=7:{digest}", f"door=7:{digest}0"):
        with pytest.raises(ValueError):
            parse_chain_head(bad)
    assert parse_heads_file(f"# heads\ndoor=7:{digest}\n\nyard=2:{digest}  # noted 09:55\n") == [
        ChainHead("door", 7, digest), ChainHead("yard", 2, digest)]
    status = {"chain_heads": {"door": {"sequence": 7, "digest": digest, "start": "2026-11-20T09:55:00.000Z"}}}
    assert parse_heads_file(json.dumps(status)) == [ChainHead("door", 7, digest)]
    with pytest.raises(ValueError, match="line 2"):
        parse_heads_file(f"door=7:{digest}\nnonsense\n")


def test_a_forked_chain_is_a_problem(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10])
    # A second recorder on the camera continued from the same head: two segments number 1.
    _record_chain(tmp_path, tk, [15], first_seq=1, prev=segs[0].digest)
    report = inventory.verify_tree(tmp_path)
    assert any("the chain forked" in p for p in report.problems), report.problems


def test_recovered_segments_are_listed_as_such(tmp_path: Path, tk: TestKeys) -> None:
    _device_pub(tmp_path, tk)
    [seg] = _record_chain(tmp_path, tk, [0])
    recovered = _recovered_segment(tmp_path, tk, 1, 10, seg.digest)
    report = inventory.verify_tree(tmp_path, private_key=tk.recipient)
    assert report.ok, report.problems
    assert report.recovered == [str(recovered.path)]
    assert report.to_json_dict()["recovered"] == [str(recovered.path)]


def _recovered_segment(data_dir: Path, tk: TestKeys, sequence: int, start_s: int,
                       prev: bytes) -> segfile.SealedSegment:
    """A segment closed by recovery (its ``.partial`` recovered, as start-up does), linked to ``prev``."""
    meta = make_meta(sequence=sequence, start_ns=START_NS + start_s * SECOND_NS, prev_digest=prev)
    path = layout.segment_path(data_dir, meta.camera, meta.start_ns)
    writer = segfile.SegmentWriter(path, meta, [tk.recipient_public], tk.device, chunk_bytes=512)
    writer.note(meta.start_ns + SECOND_NS, 5)
    writer.write(os.urandom(2000))
    writer.poll()
    recovered = segfile.recover_partial(writer.partial_path, tk.device)
    writer.abort()
    assert recovered.state == "recovered"
    return recovered


def test_a_link_knows_a_recovered_segment_only_when_it_is_intact(tmp_path: Path, tk: TestKeys) -> None:
    [sealed] = _record_chain(tmp_path, tk, [0])
    recovered = _recovered_segment(tmp_path, tk, 1, 10, sealed.digest)

    def link(path: Path) -> ChainLink:
        found = ChainLink.of(segfile.check_segment(path, private_key=tk.recipient))
        assert found is not None
        return found

    assert (link(sealed.path).recovered, link(recovered.path).recovered) == (False, True)
    blob = bytearray(recovered.path.read_bytes())
    blob[len(blob) // 2] ^= 1  # its trailer still says "recovered", but the file is damaged
    recovered.path.write_bytes(bytes(blob))
    damaged = link(recovered.path)
    assert (damaged.intact, damaged.recovered) == (False, False)


def _given_up_and_recovered(data_dir: Path, tk: TestKeys, *, second_sealed: bool = False,
                            next_links_to: int = 1) -> list[segfile.SealedSegment]:
    """Sequences 0, 1 sealed; 2 given up by the recorder and recovered at start-up; 3, 4 sealed, 3 linked
    to 1 (the last segment the recorder had sealed when it went on). ``second_sealed``: 2 is a sealed
    segment instead; ``next_links_to``: 3 links to that one instead."""
    sealed = _record_chain(data_dir, tk, [0, 10])
    if second_sealed:
        [middle] = _record_chain(data_dir, tk, [20], first_seq=2, prev=sealed[1].digest)
    else:
        middle = _recovered_segment(data_dir, tk, 2, 20, sealed[1].digest)
    after = _record_chain(data_dir, tk, [30, 40], first_seq=3, prev=sealed[next_links_to].digest)
    return [*sealed, middle, *after]


PAST_NOTE = ("(sequence 3): goes on from sequence 1, not from sequence 2: sequence 2 could not be read when "
             "this one began (the recorder gave it up, or start-up kept it in place), so the chain went on "
             "from the last segment sealed before it; start-up {} it later")


@pytest.mark.parametrize("second_sealed", [False, True], ids=["recovered", "sealed"])
def test_verify_explains_a_segment_going_on_past_one_recovered_at_start_up(tmp_path: Path, tk: TestKeys,
                                                                           second_sealed: bool) -> None:
    """2 recovered (given up unsealed, or kept as a .partial at start-up) or sealed (kept out of the
    catalog and unreadable at start-up, or given up after its seal's rename): 3 links past it, to 1."""
    segs = _given_up_and_recovered(tmp_path, tk, second_sealed=second_sealed)
    report = inventory.verify_tree(tmp_path, private_key=tk.recipient)
    assert report.ok, report.problems
    assert report.recovered == ([] if second_sealed else [str(segs[2].path)])
    note = PAST_NOTE.format("catalogued" if second_sealed else "recovered")
    assert f"{segs[3].path} {note}" in report.notes, report.notes


def test_verify_explains_two_segments_given_up_in_a_row(tmp_path: Path, tk: TestKeys) -> None:
    """0, 1 sealed; 2 and 3 given up one after the other and recovered later, both linked to 1; 4 linked
    to 1 too, 5 to 4: verify explains both links as ``past`` (export and bundle verification walk with the
    same ``segfile.walked_before``)."""
    sealed = _record_chain(tmp_path, tk, [0, 10])
    given_up = [_recovered_segment(tmp_path, tk, 2, 20, sealed[1].digest),
                _recovered_segment(tmp_path, tk, 3, 30, sealed[1].digest)]
    after = _record_chain(tmp_path, tk, [40, 50], first_seq=4, prev=sealed[1].digest)
    report = inventory.verify_tree(tmp_path, private_key=tk.recipient)
    assert report.ok, report.problems
    past = [n for n in report.notes if "could not be read when this one began" in n]
    assert [n.split(" (sequence")[0] for n in past] == [str(given_up[1].path), str(after[0].path)]
    assert "goes on from sequence 1, not from sequence 3" in past[1]


def test_a_segment_linking_past_to_a_third_one_is_broken(tmp_path: Path, tk: TestKeys) -> None:
    """2 recovered but 3 linking to 0, a segment neither just before it nor before that one."""
    segs = _given_up_and_recovered(tmp_path, tk, next_links_to=0)
    report = inventory.verify_tree(tmp_path, private_key=tk.recipient)
    assert report.problems == [
        f"{segs[3].path} (sequence 3): hash chain broken: prev_digest is not the digest of sequence 2"]
    assert not [n for n in report.notes if "gave it up" in n]


# ----- numbers set aside at start-up (quarantined): one rule for every hole -------------------------------
def _foreign_partial(data_dir: Path, tk: TestKeys, sequence: int, start_s: int, prev: bytes) -> Path:
    """A ``.partial`` left by a power cut that this device cannot recover (another device key signed its
    header): start-up reconciliation sets it aside."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    meta = make_meta(sequence=sequence, start_ns=START_NS + start_s * SECOND_NS, prev_digest=prev)
    writer = segfile.SegmentWriter(layout.segment_path(data_dir, meta.camera, meta.start_ns), meta,
                                   [tk.recipient_public], Ed25519PrivateKey.generate(), chunk_bytes=512)
    writer.write(os.urandom(1500))
    writer.note(meta.start_ns + SECOND_NS, 5)
    writer.poll()
    snapshot = writer.partial_path.read_bytes()
    writer.abort()
    writer.partial_path.write_bytes(snapshot)
    return writer.partial_path


def _reconcile(data_dir: Path, tk: TestKeys) -> None:
    """Start-up reconciliation as the daemon runs it (real catalog, real audit log)."""
    from edgerec.audit import AuditLog
    from edgerec.catalog import Catalog
    from edgerec.reconcile import reconcile

    cat = Catalog.open(data_dir)
    try:
        reconcile(data_dir, cat, tk.device, tk.device.public_key(), audit=AuditLog(data_dir / "audit.log"))
    finally:
        cat.close()


def _audit_quarantined(data_dir: Path, quarantined: list[tuple[Path, int | None]], *,
                       sequences: bool = True) -> None:
    """A segments_quarantined line as reconciliation writes it (``sequences=False``: as older logs do)."""
    from edgerec.audit import AuditLog

    rels = [str(p.relative_to(data_dir)) for p, _ in quarantined]
    fields: dict[str, object] = {"count": len(rels),
                                 "paths": [f"path={r} to=quarantine/{r} why=damaged" for r in rels]}
    if sequences:
        fields["sequences"] = [n for _, n in quarantined]
    AuditLog(data_dir / "audit.log").append("segments_quarantined", **fields)


def test_a_number_set_aside_at_start_up_is_explained_and_must_not_come_back(tmp_path: Path,
                                                                           tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10])
    rel = str(_foreign_partial(tmp_path, tk, 2, 20, segs[1].digest).relative_to(tmp_path))
    _reconcile(tmp_path, tk)
    # The chain goes on past the number set aside, linked to the last good segment.
    [after] = _record_chain(tmp_path, tk, [30], first_seq=3, prev=segs[1].digest)
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert f"{after.path} (sequence 3): follows sequence 1 directly; sequence(s) 2 in between were never " \
           "sealed: set aside at start-up (the audit log records it)" in report.notes
    # As the chain went on before: the set-aside number used again. Two files claim it.
    after.path.unlink()
    [again] = _record_chain(tmp_path, tk, [30], first_seq=2, prev=segs[1].digest)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [
        f"{again.path} (sequence 2): the audit log records {rel} removed with this sequence number: two "
        "files claim it (the camera's chain was started again, or did not go on past the removed one)"]


def test_a_skip_the_audit_log_does_not_explain_is_a_problem(tmp_path: Path, tk: TestKeys) -> None:
    segs = _record_chain(tmp_path, tk, [0, 10])
    [after] = _record_chain(tmp_path, tk, [30], first_seq=3, prev=segs[1].digest)
    _audit_quarantined(tmp_path, [(segs[0].path.with_name("elsewhere.seg"), 7)])  # a log, naming other things
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [f"{after.path} (sequence 3): segment(s) 2 missing from the chain and the "
                               "audit log does not record their removal"]


def test_a_quarantine_named_by_path_only_explains_a_skip_by_count(tmp_path: Path, tk: TestKeys) -> None:
    """Logs written before the numbers were recorded: the set-aside file lies between the neighbours."""
    segs = _record_chain(tmp_path, tk, [0, 10])
    partial = _foreign_partial(tmp_path, tk, 2, 20, segs[1].digest)
    partial.unlink()
    _audit_quarantined(tmp_path, [(partial, None)], sequences=False)
    _record_chain(tmp_path, tk, [30], first_seq=3, prev=segs[1].digest)
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert any("sequence(s) 2 in between were never sealed: set aside at start-up" in n for n in report.notes)


def test_a_partial_still_here_accounts_for_a_skip_until_the_next_start(tmp_path: Path, tk: TestKeys) -> None:
    """A recorder that could not recover its unsealed segment went on past its number; the .partial waits
    for the next start-up, which sets it aside and records it."""
    segs = _record_chain(tmp_path, tk, [0, 10])
    partial = layout.partial_path(layout.segment_path(tmp_path, "front-door", START_NS + 20 * SECOND_NS))
    partial.write_bytes(b"EDGERSEG\x00\x01")  # its header never reached the card whole
    [after] = _record_chain(tmp_path, tk, [30], first_seq=3, prev=segs[1].digest)
    _audit_deleted(tmp_path, [])  # a log exists
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert f"{after.path} (sequence 3): sequence(s) 2 before it not here, but a .partial is (the next " \
           "start recovers it or sets it aside)" in report.notes
    partial.unlink()  # removed by hand instead
    assert not inventory.verify_tree(tmp_path).ok


def test_a_camera_whose_first_segment_was_set_aside_starts_at_one(tmp_path: Path, tk: TestKeys) -> None:
    _foreign_partial(tmp_path, tk, 0, 0, ZERO)
    _reconcile(tmp_path, tk)
    [first] = _record_chain(tmp_path, tk, [10], first_seq=1)
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert f"{first.path} (sequence 1): the camera's first segment; sequence(s) 0 before it were never " \
           "sealed: set aside at start-up (the audit log records it)" in report.notes
    (tmp_path / "audit.log").unlink()
    assert inventory.verify_tree(tmp_path).problems == [
        f"{first.path} (sequence 1): segment(s) 0 missing from the chain and there is no audit log"]


def test_a_link_past_set_aside_numbers_goes_to_the_deleted_segment_the_log_records(tmp_path: Path,
                                                                                   tk: TestKeys) -> None:
    old = _all_deleted(tmp_path, tk)  # 0..2 deleted, the digest of 2 recorded
    set_aside = layout.segment_path(tmp_path, "front-door", START_NS + 30 * SECOND_NS)
    _audit_quarantined(tmp_path, [(set_aside, 3)])
    [after] = _record_chain(tmp_path, tk, [100], first_seq=4, prev=old[2].digest)
    report = inventory.verify_tree(tmp_path)
    assert report.ok, report.problems
    assert f"{after.path} (sequence 4): links to sequence 2, deleted: the audit log records its removal " \
           "and its digest (sequence(s) 3 after it were set aside at start-up)" in report.notes
    after.path.unlink()
    [forged] = _record_chain(tmp_path, tk, [100], first_seq=4, prev=b"\x11" * 32)
    assert inventory.verify_tree(tmp_path).problems == [
        f"{forged.path} (sequence 4): hash chain broken: prev_digest is not the digest the audit log records "
        "for sequence 2 (removed)"]


def test_a_wide_hole_is_reported_without_walking_it(tmp_path: Path, tk: TestKeys) -> None:
    """A header's number can be anything (a damaged header set aside, its number recorded): the check
    costs what the record holds, not what the hole spans."""
    [first] = _record_chain(tmp_path, tk, [0])
    wide = 10**15
    _audit_quarantined(tmp_path, [(first.path.with_name("x.seg"), wide - 1)])
    [far] = _record_chain(tmp_path, tk, [10], first_seq=wide, prev=first.digest)
    report = inventory.verify_tree(tmp_path)
    assert report.problems == [f"{far.path} (sequence {wide}): segment(s) 1..{wide - 2} missing from the "
                               "chain and the audit log does not record their removal"]
