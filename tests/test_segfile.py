"""Segment format v1: round trips, known-answer vectors, tampering, truncation, crash recovery."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerec import keys, segfile
from edgerec.errors import SegmentError
from edgerec.fsutil import fsync_dir
from edgerec.segfile import SegmentWriter
from tests.helpers.daemon import wait_for
from tests.helpers.segments import (
    START_NS,
    DirSyncFailsAtSeal,
    OpenFails,
    Record,
    TestKeys,
    make_keys,
    make_meta,
    split_records,
    write_segment,
)

VECTORS = Path(__file__).parent / "vectors"
REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL_CHUNK_BYTES = 64


@pytest.fixture(scope="module")
def tk() -> TestKeys:
    return make_keys()


def _data(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def _plain(path: Path, key: X25519PrivateKey) -> bytes:
    return b"".join(segfile.decrypt(path, key))


def _strict_error(path: Path, key: X25519PrivateKey) -> SegmentError:
    with pytest.raises(SegmentError) as caught:
        _plain(path, key)
    return caught.value


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "size",
    [0, 1, SMALL_CHUNK_BYTES - 1, SMALL_CHUNK_BYTES, SMALL_CHUNK_BYTES + 1, 5 * SMALL_CHUNK_BYTES + 17],
)
def test_round_trip_at_chunk_boundaries(tmp_path: Path, tk: TestKeys, size: int) -> None:
    data = _data(size)
    sealed = write_segment(tmp_path / "s.seg", data, tk, chunk_bytes=SMALL_CHUNK_BYTES, write_size=20)
    # Every non-final chunk is full; the final one holds the rest, possibly nothing.
    assert sealed.chunks == size // SMALL_CHUNK_BYTES + 1
    assert sealed.payload_bytes == size
    assert sealed.state == "sealed"
    assert not (tmp_path / "s.seg.partial").exists()
    assert _plain(sealed.path, tk.recipient) == data
    info = segfile.read_info(sealed.path, tk.device.public_key())
    assert info == sealed
    assert info.digest == hashlib.sha256(sealed.path.read_bytes()).digest()
    assert info.size_bytes == sealed.path.stat().st_size
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []


def test_round_trip_with_default_chunk_size_and_packet_writes(tmp_path: Path, tk: TestKeys) -> None:
    data = _data(600_000)
    sealed = write_segment(tmp_path / "s.seg", data, tk, write_size=1316)
    assert sealed.chunks == 600_000 // segfile.CHUNK_BYTES_DEFAULT + 1
    assert _plain(sealed.path, tk.recipient) == data


@settings(max_examples=60, deadline=None)
@given(
    suite=st.sampled_from(sorted(segfile.SUITE_NAMES)),
    sizes=st.lists(st.integers(min_value=0, max_value=3 * SMALL_CHUNK_BYTES), max_size=12),
)
def test_any_write_sizes_give_full_chunks_and_the_same_plaintext(
    tmp_path_factory: pytest.TempPathFactory, tk: TestKeys, suite: int, sizes: list[int]
) -> None:
    """The writer copies each write into its chunk buffer: whatever the sizes of the writes (inside a
    chunk, across one, several chunks at once), every chunk but the last is exactly ``chunk_bytes`` and
    the segment decrypts to the writes joined."""
    plaintext = _data(sum(sizes), seed=len(sizes))
    path = tmp_path_factory.mktemp("w") / "s.seg"
    writer = SegmentWriter(path, make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES,
                           suite=suite)
    offset = 0
    for size in sizes:
        writer.write(plaintext[offset : offset + size])
        offset += size
    assert writer.payload_bytes == len(plaintext)
    sealed = writer.close()
    records = split_records(path.read_bytes())[1]
    chunks = [r for r in records if r.kind != segfile.KIND_TRAILER]
    body_sizes = [len(r.raw) - segfile.CHUNK_OVERHEAD_BYTES for r in chunks]
    assert all(size == SMALL_CHUNK_BYTES for size in body_sizes[:-1])
    assert sealed.payload_bytes == sum(body_sizes) == len(plaintext)
    assert _plain(path, tk.recipient) == plaintext


def test_a_reused_caller_buffer_does_not_change_what_was_written(tmp_path: Path, tk: TestKeys) -> None:
    """The writer copies what it is given: changing the caller's buffer after ``write`` returns changes
    nothing in the segment."""
    writer = SegmentWriter(tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device,
                           chunk_bytes=SMALL_CHUNK_BYTES)
    buffer = bytearray(b"a" * 40)
    writer.write(buffer)
    buffer[:] = b"b" * 40
    writer.write(memoryview(buffer))
    buffer[:] = b"c" * 40
    sealed = writer.close()
    assert _plain(sealed.path, tk.recipient) == b"a" * 40 + b"b" * 40


def test_metadata_and_notes_are_stored(tmp_path: Path, tk: TestKeys) -> None:
    meta = make_meta(camera="garage ü", sequence=2**40, clock_synced=False, monotonic_ns=-5)
    writer = SegmentWriter(tmp_path / "s.seg", meta, [tk.recipient_public], tk.device)
    writer.write(b"x" * 100)
    writer.note(START_NS + 2_000_000_000, 50)
    sealed = writer.close()
    info = segfile.read_info(sealed.path)
    assert info.meta == meta
    assert (info.end_ns, info.frames) == (START_NS + 2_000_000_000, 50)
    assert info.duration_ns == 2_000_000_000
    assert info.device_key_id == keys.device_key_id(tk.device.public_key())
    assert info.recipient_key_ids == (keys.key_id(tk.recipient_public),)


def test_two_recipients_either_key_decrypts(tmp_path: Path, tk: TestKeys) -> None:
    escrow = X25519PrivateKey.generate()
    data = _data(1000)
    sealed = write_segment(
        tmp_path / "s.seg", data, tk, recipients=[tk.recipient_public, escrow.public_key()], chunk_bytes=256
    )
    assert _plain(sealed.path, tk.recipient) == data
    assert _plain(sealed.path, escrow) == data
    assert segfile.verify(sealed.path, private_key=escrow) == []


def test_writer_refuses_existing_segment(tmp_path: Path, tk: TestKeys) -> None:
    sealed = write_segment(tmp_path / "s.seg", b"abc", tk)
    with pytest.raises(FileExistsError):
        SegmentWriter(sealed.path, make_meta(), [tk.recipient_public], tk.device)


def test_writer_creates_parent_directories(tmp_path: Path, tk: TestKeys) -> None:
    sealed = write_segment(tmp_path / "cam" / "2025-01-01" / "s.seg", b"abc", tk)
    assert sealed.path.exists()


def test_abort_removes_the_partial(tmp_path: Path, tk: TestKeys) -> None:
    writer = SegmentWriter(tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device)
    writer.write(b"x" * 70_000)
    assert writer.partial_path.exists()
    writer.abort()
    assert not writer.partial_path.exists()
    assert not writer.path.exists()
    with pytest.raises(RuntimeError):
        writer.write(b"more")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fd_of(path: Path) -> int:
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
    raise AssertionError(f"no descriptor open on {path}")


def _break_writer(writer: SegmentWriter) -> int:
    """Put /dev/full under the writer's descriptor (same number): the next chunk's write fails with ENOSPC
    and, /dev/full being no regular file, cutting the torn bytes (ftruncate) fails too, so the writer gives
    up as on a failing SD card. Returns the descriptor's number."""
    fd = _fd_of(writer.partial_path)
    full = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(full, fd)
    finally:
        os.close(full)
    with pytest.raises(OSError, match="No space"):
        writer.write(b"x" * (SMALL_CHUNK_BYTES + 1))  # seals a chunk: its write fails and cannot be cut
    with pytest.raises(SegmentError, match="recover the .partial"):
        writer.write(b"more")  # broken for good
    return fd


def test_close_of_a_broken_writer_releases_its_descriptor_and_leaves_the_partial(
    tmp_path: Path, tk: TestKeys
) -> None:
    before = _fd_count()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES
    )
    assert _fd_count() == before + 1
    _break_writer(writer)
    with pytest.raises(SegmentError, match="recover the .partial"):
        writer.close()
    assert _fd_count() == before
    assert writer.closed and not writer.path.exists()
    recovered = segfile.recover_partial(writer.partial_path, tk.device)  # what the recorder does next
    assert (recovered.state, recovered.chunks) == ("recovered", 0)


def test_a_broken_writer_never_closes_its_descriptor_number_twice(tmp_path: Path, tk: TestKeys) -> None:
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES
    )
    number = _break_writer(writer)
    with pytest.raises(SegmentError):
        writer.close()
    # The number is free again, and the next file opened may get it: later calls must leave that file be.
    other = tmp_path / "other"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if fd != number:  # usually the same: the lowest free number
        os.dup2(fd, number)
        os.close(fd)
    try:
        with pytest.raises(SegmentError):
            writer.close()
        writer.abort()  # after close: does nothing, the .partial stays for recovery
        assert os.readlink(f"/proc/self/fd/{number}") == str(other)
        assert writer.partial_path.exists()
    finally:
        os.close(number)


def test_abort_of_a_broken_writer_releases_its_descriptor(tmp_path: Path, tk: TestKeys) -> None:
    before = _fd_count()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES
    )
    _break_writer(writer)
    writer.abort()
    assert _fd_count() == before
    assert not writer.partial_path.exists()


def test_concurrent_write_and_poll_keep_every_byte(tmp_path: Path, tk: TestKeys) -> None:
    data = _data(400_000)
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device,
        chunk_bytes=4096, flush_seconds=0.0005, fsync_seconds=0.01,
    )  # fmt: skip
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            writer.poll()

    thread = threading.Thread(target=poller)
    thread.start()
    try:
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])
    finally:
        stop.set()
        thread.join()
    sealed = writer.close()
    assert _plain(sealed.path, tk.recipient) == data
    assert sealed.chunks > len(data) // 4096  # time-based seals made some chunks short


class _CountingSha256:
    """hashlib's SHA-256, counting every byte it is fed (across copies)."""

    def __init__(self, counter: list[int], inner: object | None = None, data: bytes = b""):
        self._counter = counter
        self._inner = inner if inner is not None else hashlib.sha256()
        self.update(data)

    def update(self, data: bytes) -> None:
        self._counter[0] += memoryview(data).nbytes
        self._inner.update(data)  # type: ignore[attr-defined]

    def copy(self) -> _CountingSha256:
        return _CountingSha256(self._counter, self._inner.copy())  # type: ignore[attr-defined]

    def digest(self) -> bytes:
        return self._inner.digest()  # type: ignore[attr-defined]


def test_writing_and_reading_hash_each_byte_of_the_file_once(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk checks come from the running file hash, so the data is not hashed a second time."""
    hashed = [0]
    fake = types.SimpleNamespace(sha256=lambda data=b"": _CountingSha256(hashed, data=data))
    monkeypatch.setattr(segfile, "hashlib", fake)
    data = _data(400_000)
    sealed = write_segment(tmp_path / "s.seg", data, tk, chunk_bytes=4096)
    hashed_writing = hashed[0]
    hashed[0] = 0
    assert segfile.read_info(sealed.path) == sealed
    hashed_reading = hashed[0]
    header = segfile.read_header(sealed.path)
    # Besides the file itself, only the header is hashed again: its core for the HPKE info when
    # writing, all of it for the chunks' AAD when reading.
    assert sealed.size_bytes <= hashed_writing <= sealed.size_bytes + header.core_len
    assert sealed.size_bytes <= hashed_reading <= sealed.size_bytes + len(header.raw)


def test_a_failed_write_is_retried_with_the_same_record_bytes(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk whose write failed (disk full) is written again unchanged, never re-encrypted: its nonce
    must not cover other plaintext, even if more data arrived meanwhile."""
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES,
        flush_seconds=1.0, monotonic=clock,
    )  # fmt: skip
    partial = str(writer.partial_path)
    real_write = os.write
    attempts: list[bytes] = []

    def disk_full_once(fd: int, data: bytes) -> int:
        if not attempts and os.readlink(f"/proc/self/fd/{fd}") == partial:
            attempts.append(bytes(data))
            real_write(fd, bytes(data)[:20])  # a torn record first, as a filling disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(segfile.os, "write", disk_full_once)
    data = _data(3 * SMALL_CHUNK_BYTES, seed=4)
    header_bytes = writer.bytes_written
    writer.write(data[:40])
    clock.t += 2
    with pytest.raises(OSError, match="No space"):
        writer.poll()  # the time-based seal of 40 bytes fails
    assert writer.partial_path.stat().st_size == writer.bytes_written == header_bytes  # torn bytes cut
    assert (writer.chunks, writer.pending_bytes) == (0, 40)
    writer.write(data[40:])  # more data: the failed record goes first, exactly as sealed
    sealed = writer.close()
    records = split_records(sealed.path.read_bytes())[1]
    assert records[0].raw == attempts[0]
    assert len(records[0].raw) == 40 + segfile.CHUNK_OVERHEAD_BYTES
    assert _plain(sealed.path, tk.recipient) == data
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []


def test_a_write_whose_seal_hits_a_full_disk_keeps_every_byte(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of several chunks whose first seal finds the disk full: the error propagates, nothing of
    the write is dropped, and all of it reaches the file in order once there is room again."""
    writer = SegmentWriter(tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device,
                           chunk_bytes=SMALL_CHUNK_BYTES)
    partial = str(writer.partial_path)
    real_write = os.write
    disk_full = True

    def write_unless_full(fd: int, data: bytes) -> int:
        if disk_full and os.readlink(f"/proc/self/fd/{fd}") == partial:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(segfile.os, "write", write_unless_full)
    data = _data(3 * SMALL_CHUNK_BYTES + 7, seed=9)
    writer.write(data[:10])
    with pytest.raises(OSError, match="No space"):
        writer.write(data[10:])
    assert writer.payload_bytes == writer.pending_bytes == len(data)
    with pytest.raises(OSError, match="No space"):
        writer.poll()  # still full: still nothing lost
    assert writer.pending_bytes == len(data)
    disk_full = False
    sealed = writer.close()
    assert _plain(sealed.path, tk.recipient) == data
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []


# ----------------------------------------------------------------------------------- time-based sealing


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_poll_seals_pending_data_after_flush_seconds(tmp_path: Path, tk: TestKeys) -> None:
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, flush_seconds=1.0, monotonic=clock
    )
    header_bytes = writer.bytes_written
    writer.write(b"a" * 10)
    clock.t += 0.5
    writer.poll()
    assert (writer.chunks, writer.pending_bytes, writer.bytes_written) == (0, 10, header_bytes)
    clock.t += 0.5
    writer.poll()
    assert (writer.chunks, writer.pending_bytes) == (1, 0)
    assert writer.partial_path.stat().st_size == writer.bytes_written > header_bytes
    # A write that finds the pending data old enough seals it too, without waiting for poll.
    writer.write(b"b")
    clock.t += 1.0
    writer.write(b"c")
    assert (writer.chunks, writer.pending_bytes) == (2, 0)
    sealed = writer.close()
    assert _plain(sealed.path, tk.recipient) == b"a" * 10 + b"bc"
    assert sealed.chunks == 3


def _disk_full_switch(monkeypatch: pytest.MonkeyPatch, writer: SegmentWriter) -> dict[str, int]:
    """``os.write`` on ``writer``'s file fails with ENOSPC while ``["full"]`` is set; with ``["short"]``
    set, the next write there writes only that many bytes (as a filling disk does before ENOSPC)."""
    partial = str(writer.partial_path)
    real_write = os.write
    disk = {"full": 0, "short": 0}

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == partial:
            if disk["full"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            if disk["short"]:
                data, disk["short"] = bytes(memoryview(data)[: disk["short"]]), 0
        return real_write(fd, data)

    monkeypatch.setattr(segfile.os, "write", write)
    return disk


def test_data_a_full_disk_held_back_is_sealed_by_the_first_poll_once_there_is_room(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write across a chunk boundary finds the disk full: the chunk it filled and the byte after it stay
    in memory. A second later there is room: the next poll writes both, as the byte is flush_seconds old by
    then (it must not count as new because it only now moved into the chunk buffer)."""
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=SMALL_CHUNK_BYTES,
        flush_seconds=1.0, monotonic=clock,
    )  # fmt: skip
    disk = _disk_full_switch(monkeypatch, writer)
    disk["full"] = 1
    data = _data(SMALL_CHUNK_BYTES + 1, seed=5)
    with pytest.raises(OSError, match="No space"):
        writer.write(data)
    clock.t += 1.0
    disk["full"] = 0
    writer.poll()
    assert (writer.chunks, writer.pending_bytes) == (2, 0)
    assert writer.partial_path.stat().st_size == writer.bytes_written
    assert _plain(writer.close().path, tk.recipient) == data


_WRITER_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(min_value=0, max_value=4 * SMALL_CHUNK_BYTES)),
        st.tuples(st.just("poll"), st.sampled_from([0.0, 0.3, 0.5, 1.0, 2.5])),  # after this many seconds
        st.tuples(st.just("full"), st.integers(min_value=0, max_value=1)),
        st.tuples(st.just("short"), st.integers(min_value=1, max_value=2 * SMALL_CHUNK_BYTES)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_WRITER_STEPS)
def test_writes_polls_and_a_disk_that_fills_and_frees_lose_nothing_and_keep_the_flush_bound(
    tmp_path_factory: pytest.TempPathFactory, tk: TestKeys, monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, int | float]],
) -> None:
    """Any mix of writes (inside a chunk, across one, several at once), polls, a disk that fills and frees
    and short writes: every accepted byte reaches the segment once and in order, and after a poll that
    succeeds nothing accepted ``flush_seconds`` ago or earlier is still only in memory."""
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path_factory.mktemp("w") / "s.seg", make_meta(), [tk.recipient_public], tk.device,
        chunk_bytes=SMALL_CHUNK_BYTES, flush_seconds=1.0, fsync_seconds=2.0, monotonic=clock,
    )  # fmt: skip
    with monkeypatch.context() as patch:
        disk = _disk_full_switch(patch, writer)
        accepted = bytearray()
        accepted_at: list[tuple[float, int]] = []  # (time, bytes accepted by then)
        for step, arg in steps:
            if step == "write":
                data = _data(int(arg), seed=len(accepted_at))
                try:
                    writer.write(data)
                except OSError:
                    pass  # the data is accepted all the same
                accepted += data
                accepted_at.append((clock.t, len(accepted)))
                assert writer.payload_bytes == len(accepted)
            elif step == "poll":
                clock.t += arg
                try:
                    writer.poll()
                except OSError:
                    continue
                due = max((n for t, n in accepted_at if t <= clock.t - 1.0), default=0)
                assert writer.payload_bytes - writer.pending_bytes >= due
            else:
                disk[step] = int(arg)
        disk["full"] = 0
        sealed = writer.close()
    assert _plain(sealed.path, tk.recipient) == bytes(accepted)
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []


def test_poll_fdatasyncs_on_its_own_schedule(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path / "s.seg", make_meta(), [tk.recipient_public], tk.device,
        flush_seconds=0.5, fsync_seconds=2.0, monotonic=clock,
    )  # fmt: skip
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(segfile.os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    writer.write(b"x" * 10)
    clock.t += 0.6
    writer.poll()  # seals, but the last sync (at open) is only 0.6 s old
    assert writer.chunks == 1 and synced == []
    clock.t += 1.5
    writer.poll()
    assert len(synced) == 1
    clock.t += 5
    writer.poll()  # nothing new written since: no sync
    assert len(synced) == 1
    writer.close()
    assert len(synced) == 2


# ----------------------------------------------------------------------------------- known-answer vectors


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869, written out here so the vectors are checked against the spec, not the module."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_payload_vectors_match_the_spec() -> None:
    v = json.loads((VECTORS / "payload-v1.json").read_text())
    file_key, nonce = bytes.fromhex(v["file_key"]), bytes.fromhex(v["stream_nonce"])
    payload_key = _hkdf_sha256(file_key, nonce, b"edgerec segment v1 payload")
    mac_key = _hkdf_sha256(file_key, nonce, b"edgerec segment v1 header mac")
    assert payload_key.hex() == v["payload_key"]
    assert mac_key.hex() == v["header_mac_key"]
    assert segfile.derive_keys(file_key, nonce) == (payload_key, mac_key)
    header_without_mac = bytes.fromhex(v["header_without_mac"])
    assert hmac.new(mac_key, header_without_mac, hashlib.sha256).hexdigest() == v["header_mac"]
    header = header_without_mac + bytes.fromhex(v["header_mac"])
    header_hash = hashlib.sha256(header).digest()
    assert header_hash.hex() == v["header_hash"]
    aead = AESGCM(payload_key)
    file_so_far = header  # the checks hash the file from its first byte
    module_hasher = hashlib.sha256(header)
    for c in v["chunks"]:
        assert c["offset"] == len(file_so_far)
        plaintext = bytes.fromhex(c["plaintext"])
        nonce12 = c["index"].to_bytes(11, "big") + bytes([1 if c["last"] else 0])
        prefix = struct.pack(">BIqI", 2 if c["last"] else 1, len(plaintext) + 16, c["end_ns"], c["frames"])
        ciphertext = aead.encrypt(nonce12, plaintext, header_hash + prefix)
        check = hashlib.sha256(file_so_far + prefix + ciphertext).digest()[:16]
        record = prefix + ciphertext + check
        assert nonce12.hex() == c["nonce"]
        assert record.hex() == c["record"]
        sealed = segfile.seal_chunk(
            aead, header_hash, module_hasher, c["index"], c["last"], c["end_ns"], c["frames"], plaintext
        )
        assert sealed == record
        assert segfile.open_chunk(aead, header_hash, c["index"], prefix, ciphertext) == plaintext
        file_so_far += record
        assert module_hasher.digest() == hashlib.sha256(file_so_far).digest()


def _vector_segment() -> tuple[dict, Path]:
    v = json.loads((VECTORS / "segment-v1.json").read_text())
    return v, VECTORS / v["file"]


def test_segment_vector_file_decrypts_and_verifies_with_either_recipient() -> None:
    v, path = _vector_segment()
    device = keys.parse_device_public_key(v["device_public_key"])
    info = segfile.read_info(path, device)
    assert info.digest.hex() == v["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.size_bytes, info.chunks, info.frames, info.end_ns, info.state) == (
        v["size_bytes"], v["chunks"], v["frames"], v["end_ns"], v["state"]
    )  # fmt: skip
    m = v["meta"]
    assert info.meta == segfile.SegmentMeta(**{**m, "prev_digest": bytes.fromhex(m["prev_digest"])})
    for secret in v["recipient_secrets"]:
        key = keys.parse_private_key(secret)
        assert _plain(path, key).hex() == v["plaintext"]
        assert segfile.verify(path, private_key=key, device_key=device) == []


def test_segment_vector_file_reads_with_a_from_scratch_parser() -> None:
    """Follow docs/segment-format.md by hand (offsets, labels) to open the vector file."""
    v, path = _vector_segment()
    blob = path.read_bytes()
    assert blob[:8] == b"EDGERSEG"
    version, suite, header_len, chunk_max = struct.unpack_from(">HHII", blob, 8)
    assert (version, suite) == (1, 1)
    stream_nonce = blob[20:36]
    pos = 125
    for _ in range(5):  # device_id, camera, boot_id, codec, container
        pos += 1 + blob[pos]
    count = blob[pos]
    core = blob[: pos + 1]
    key = keys.parse_private_key(v["recipient_secrets"][1])
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(b"edgerec recipient key id v1\x00" + raw_public).digest()[:8]
    stanzas = [blob[pos + 1 + i * 88 : pos + 1 + (i + 1) * 88] for i in range(count)]
    wrapped = next(s[8:] for s in stanzas if s[:8] == kid)
    info = b"edgerec segment v1 wrap\x00" + hashlib.sha256(core).digest()
    file_key = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM).decrypt(wrapped, key, info=info)
    mac_key = _hkdf_sha256(file_key, stream_nonce, b"edgerec segment v1 header mac")
    mac = hmac.new(mac_key, blob[: header_len - 32], hashlib.sha256).digest()
    assert mac == blob[header_len - 32 : header_len]
    aead = AESGCM(_hkdf_sha256(file_key, stream_nonce, b"edgerec segment v1 payload"))
    header_hash = hashlib.sha256(blob[:header_len]).digest()
    plaintext, index, pos = b"", 0, header_len
    while blob[pos] in (1, 2):
        kind, ct_len = blob[pos], struct.unpack_from(">I", blob, pos + 1)[0]
        assert ct_len <= chunk_max + 16
        prefix, ct = blob[pos : pos + 17], blob[pos + 17 : pos + 17 + ct_len]
        check = blob[pos + 17 + ct_len : pos + 17 + ct_len + 16]
        assert check == hashlib.sha256(blob[: pos + 17 + ct_len]).digest()[:16]
        plaintext += aead.decrypt(index.to_bytes(11, "big") + bytes([kind - 1]), ct, header_hash + prefix)
        index, pos = index + 1, pos + 17 + ct_len + 16
    assert plaintext.hex() == v["plaintext"]
    trailer = blob[pos:]
    assert len(trailer) == 130 and trailer[0] == 3 and trailer[1] == 1
    assert trailer[34:66] == hashlib.sha256(blob[:pos]).digest()
    device = Ed25519PublicKey.from_public_bytes(blob[36:68])
    device.verify(trailer[66:], b"edgerec segment v1 trailer\x00" + trailer[:66])


# ---------------------------------------------------------------------------------------------- tampering


def _header_fields(header: segfile.Header) -> dict[str, tuple[int, int]]:
    """Field name -> (offset, size), from the layout in the spec."""
    fields = {
        "magic": (0, 8), "version": (8, 2), "suite": (10, 2), "header_len": (12, 4), "chunk_max": (16, 4),
        "stream_nonce": (20, 16), "device_public": (36, 32), "prev_digest": (68, 32), "sequence": (100, 8),
        "start_ns": (108, 8), "monotonic_ns": (116, 8), "clock_synced": (124, 1),
    }  # fmt: skip
    pos = 125
    for name in ("device_id", "camera", "boot_id", "codec", "container"):
        n = len(getattr(header.meta, name).encode())
        fields[f"{name}_len"] = (pos, 1)
        fields[name] = (pos + 1, n)
        pos += 1 + n
    fields["recipient_count"] = (pos, 1)
    fields["stanza_key_id"] = (pos + 1, 8)
    fields["stanza_enc"] = (pos + 9, 32)
    fields["stanza_wrapped_key"] = (pos + 41, 48)
    fields["header_mac"] = (len(header.raw) - 32, 32)
    assert pos + 1 + 88 * len(header.stanzas) + 32 == len(header.raw)
    return fields


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= mask
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, tk: TestKeys) -> tuple[bytes, bytes]:
    """A sealed segment of 5 chunks (4 full, final short) and its plaintext."""
    data = _data(4 * SMALL_CHUNK_BYTES + 30)
    sealed = write_segment(
        tmp_path_factory.mktemp("sample") / "s.seg", data, tk, chunk_bytes=SMALL_CHUNK_BYTES, write_size=20
    )
    assert sealed.chunks == 5
    return sealed.path.read_bytes(), data


def _copy(tmp_path: Path, blob: bytes, name: str = "t.seg") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def _assert_rejected_everywhere(path: Path, tk: TestKeys) -> list[SegmentError]:
    """Tampering must be caught by the keyless verify, the keyed verify, read_info and strict decrypt."""
    keyless = segfile.verify(path)
    keyed = segfile.verify(path, private_key=tk.recipient)
    assert keyless, "keyless verify missed it"
    assert keyed, "keyed verify missed it"
    with pytest.raises(SegmentError):
        segfile.read_info(path)
    _strict_error(path, tk.recipient)
    return keyed


HEADER_FIELD_NAMES = list(_header_fields(segfile.read_header(VECTORS / "segment-v1.seg")))


@pytest.mark.parametrize("field", HEADER_FIELD_NAMES)
def test_bit_flip_in_each_header_field_is_detected(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes], field: str
) -> None:
    path = _copy(tmp_path, sample[0])
    offset, size = _header_fields(segfile.read_header(path))[field]
    _flip(path, offset + size - 1)
    problems = _assert_rejected_everywhere(path, tk)
    assert all(p.path == str(path) for p in problems)


def test_bad_magic_and_version_are_named(tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]) -> None:
    path = _copy(tmp_path, sample[0])
    _flip(path, 0)
    err = _strict_error(path, tk.recipient)
    assert (err.offset, "bad magic" in err.what) == (0, True)
    path = _copy(tmp_path, sample[0])
    _flip(path, 9, 0x02)
    assert "unsupported format version 3" in segfile.verify(path)[0].what


def test_header_change_is_named_by_the_keyed_reader(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    path = _copy(tmp_path, sample[0])
    header = segfile.read_header(path)
    _flip(path, _header_fields(header)["clock_synced"][0])
    err = _strict_error(path, tk.recipient)
    assert "cannot unwrap the file key" in err.what  # the HPKE info binds the header core
    path = _copy(tmp_path, sample[0])
    _flip(path, _header_fields(header)["header_mac"][0])
    err = _strict_error(path, tk.recipient)
    assert "header MAC mismatch" in err.what
    assert err.offset == len(header.raw) - 32


def _records(blob: bytes) -> tuple[bytes, list[Record]]:
    header, records = split_records(blob)
    assert [r.kind for r in records] == [1, 1, 1, 1, 2, 3]
    return header, records


CHUNK_PARTS = {  # name -> offset within chunk record 2
    "kind": 0, "length": 4, "end_ns": 12, "frames": 16, "body": 17 + 5, "tag": 17 + SMALL_CHUNK_BYTES + 3,
    "check": 17 + SMALL_CHUNK_BYTES + 16 + 2,
}  # fmt: skip


@pytest.mark.parametrize("part", list(CHUNK_PARTS))
def test_bit_flip_in_a_chunk_is_detected_at_that_chunk(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes], part: str
) -> None:
    blob, data = sample
    _, records = _records(blob)
    target = records[2]
    path = _copy(tmp_path, blob)
    _flip(path, target.offset + CHUNK_PARTS[part])
    problems = _assert_rejected_everywhere(path, tk)
    assert target.offset <= problems[0].offset < target.offset + len(target.raw)
    err = _strict_error(path, tk.recipient)
    assert target.offset <= err.offset < target.offset + len(target.raw)
    # Recovery mode still returns the chunks before the damage, and says where it stopped.
    errors: list[SegmentError] = []
    assert b"".join(segfile.decrypt(path, tk.recipient, recover=True, errors=errors)) == data[:128]
    assert len(errors) == 1 and errors[0].offset == err.offset


def test_tag_failure_is_reported_when_only_the_check_was_fixed_up(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    """Someone who recomputes the keyless checks and the trailer still cannot forge a chunk."""
    blob, _ = sample
    header, records = _records(blob)
    chunks = [r.raw for r in records[:-1]]
    body = bytearray(chunks[1])
    body[20] ^= 0x40
    chunks[1] = bytes(body)
    path = _copy(tmp_path, _rebuild(header, chunks, tk.device))
    assert segfile.verify(path) == []  # keyless: consistent, and signed by the device key
    err = _strict_error(path, tk.recipient)
    assert "chunk 1 authentication failed" in err.what
    assert err.offset == records[1].offset


def test_keyless_verify_names_the_first_damaged_chunk_and_keyed_verify_every_one(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob, _ = sample
    _, records = _records(blob)
    path = _copy(tmp_path, blob)
    _flip(path, records[1].offset + 20)
    _flip(path, records[3].offset + 20)
    keyless = segfile.verify(path)
    # Each check covers the file before it: after the first mismatch the later checks say nothing more.
    assert [p.what.split(":")[0] for p in keyless] == ["chunk 1 check mismatch", "trailer hash mismatch"]
    assert records[1].offset < keyless[0].offset < records[2].offset
    keyed = segfile.verify(path, private_key=tk.recipient)
    assert [p.what.split(":")[0] for p in keyed] == [
        "chunk 1 check mismatch", "chunk 3 authentication failed", "trailer hash mismatch"
    ]  # fmt: skip
    assert keyed[1].offset == records[3].offset


def _rebuild(
    header: bytes, chunk_records: list[bytes], device: Ed25519PrivateKey, state: int = segfile.STATE_SEALED
) -> bytes:
    """Reassemble a segment from chunk records, recomputing every keyless check and a signed trailer:
    what a thief holding the device key (but no recipient key) can do."""
    out = bytearray(header)
    payload = 0
    end_ns, frames = make_meta().start_ns, 0
    for raw in chunk_records:
        prefix, ciphertext = raw[:17], raw[17:-16]
        out += prefix + ciphertext
        out += segfile.chunk_check(hashlib.sha256(out))
        payload += len(ciphertext) - 16
        _, _, end_ns, frames = struct.unpack(">BIqI", prefix)
    file_hash = hashlib.sha256(out).digest()
    count = len(chunk_records)
    out += segfile.encode_trailer(state, count, payload, len(out), end_ns, frames, file_hash, device)
    return bytes(out)


@pytest.mark.parametrize("manipulation", ["swap", "duplicate", "drop", "move_final"])
def test_reordered_duplicated_or_dropped_chunks_fail_authentication(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes], manipulation: str
) -> None:
    blob, _ = sample
    header, records = _records(blob)
    chunks = [r.raw for r in records[:-1]]
    if manipulation == "swap":
        chunks[1], chunks[2] = chunks[2], chunks[1]
    elif manipulation == "duplicate":
        chunks.insert(2, chunks[1])
    elif manipulation == "drop":
        del chunks[2]
    else:
        chunks.insert(2, chunks.pop())
    # As written in place (no fix-ups), every reader rejects it...
    spliced = header + b"".join(chunks) + records[-1].raw
    _assert_rejected_everywhere(_copy(tmp_path, spliced, "plain.seg"), tk)
    # ...and with every keyless check and the signature redone, the chunk counter still catches it.
    path = _copy(tmp_path, _rebuild(header, chunks, tk.device), "fixed.seg")
    err = _strict_error(path, tk.recipient)
    assert "authentication failed" in err.what or "follows the final chunk" in err.what
    assert segfile.verify(path, private_key=tk.recipient)


def test_bit_flip_in_each_trailer_field_is_detected(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob, _ = sample
    trailer = _records(blob)[1][-1]
    # state, chunks, payload, body bytes, end_ns, frames, file hash, signature
    for rel in (1, 5, 13, 21, 29, 33, 40, 100):
        path = _copy(tmp_path, blob)
        _flip(path, trailer.offset + rel)
        _assert_rejected_everywhere(path, tk)
        with pytest.raises(SegmentError) as caught:
            segfile.read_info(path)
        assert caught.value.offset >= trailer.offset


def test_trailer_signed_by_another_device_is_rejected(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    path = _copy(tmp_path, sample[0])
    other = Ed25519PrivateKey.generate()
    assert segfile.verify(path, device_key=tk.device.public_key()) == []
    problems = segfile.verify(path, device_key=other.public_key())
    assert len(problems) == 1 and "signed by device key" in problems[0].what
    with pytest.raises(SegmentError, match="signed by device key"):
        segfile.read_info(path, other.public_key())


def test_truncation_at_a_chunk_boundary_is_detected(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob, data = sample
    _, records = _records(blob)
    cut = records[3].offset
    path = _copy(tmp_path, blob[:cut])
    problems = segfile.verify(path, private_key=tk.recipient)
    assert len(problems) == 1
    assert problems[0].offset == cut and "missing trailer" in problems[0].what
    err = _strict_error(path, tk.recipient)
    assert err.offset == cut
    assert b"".join(segfile.decrypt(path, tk.recipient, recover=True)) == data[: 3 * SMALL_CHUNK_BYTES]


def test_truncation_mid_chunk_is_detected(tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]) -> None:
    blob, data = sample
    _, records = _records(blob)
    path = _copy(tmp_path, blob[: records[2].offset + 40])
    err = _strict_error(path, tk.recipient)
    assert "truncated chunk 2" in err.what and "40 bytes into this record" in err.what
    assert err.offset == records[2].offset  # a truncation is reported at the record it cuts
    assert len(segfile.verify(path)) == 1
    assert b"".join(segfile.decrypt(path, tk.recipient, recover=True)) == data[: 2 * SMALL_CHUNK_BYTES]


def test_truncated_then_re_signed_segment_cannot_pass_as_complete(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob, data = sample
    header, records = _records(blob)
    chunks = [r.raw for r in records[:3]]
    sealed_claim = _copy(tmp_path, _rebuild(header, chunks, tk.device), "sealed.seg")
    assert any("no final chunk" in p.what for p in segfile.verify(sealed_claim))
    recovered_claim = _copy(
        tmp_path, _rebuild(header, chunks, tk.device, segfile.STATE_RECOVERED), "recovered.seg"
    )
    assert segfile.read_info(recovered_claim).state == "recovered"
    assert "recovered segment" in _strict_error(recovered_claim, tk.recipient).what
    assert b"".join(segfile.decrypt(recovered_claim, tk.recipient, recover=True)) == data[:192]
    # Allowed explicitly, it reads strictly (every check) and is still a recovered segment, not a whole one.
    assert b"".join(segfile.decrypt(recovered_claim, tk.recipient, allow_recovered=True)) == data[:192]
    with pytest.raises(SegmentError, match="no final chunk"):
        b"".join(segfile.decrypt(sealed_claim, tk.recipient, allow_recovered=True))


def test_data_appended_after_the_trailer_is_detected(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob, _ = sample
    path = _copy(tmp_path, blob + b"\x01extra")
    problems = _assert_rejected_everywhere(path, tk)
    assert problems[0].offset == len(blob)
    assert "after the trailer" in problems[0].what


def test_chunks_spliced_from_another_segment_are_detected(tmp_path: Path, tk: TestKeys) -> None:
    data_a, data_b = _data(300, seed=1), _data(300, seed=2)
    a = write_segment(tmp_path / "a.seg", data_a, tk, chunk_bytes=SMALL_CHUNK_BYTES).path.read_bytes()
    b = write_segment(tmp_path / "b.seg", data_b, tk, chunk_bytes=SMALL_CHUNK_BYTES).path.read_bytes()
    header_a, recs_a = split_records(a)
    header_b, recs_b = split_records(b)
    assert len(header_a) == len(header_b)
    spliced = bytearray(a)
    spliced[recs_a[1].offset : recs_a[1].offset + len(recs_a[1].raw)] = recs_b[1].raw
    path = _copy(tmp_path, bytes(spliced), "spliced.seg")
    _assert_rejected_everywhere(path, tk)
    # Even with the keyless checks and the trailer redone by a device-key holder.
    chunks = [r.raw for r in recs_a[:-1]]
    chunks[1] = recs_b[1].raw
    path = _copy(tmp_path, _rebuild(header_a, chunks, tk.device), "spliced-fixed.seg")
    assert "chunk 1 authentication failed" in _strict_error(path, tk.recipient).what


def test_swapped_headers_are_detected(tmp_path: Path, tk: TestKeys) -> None:
    a = write_segment(tmp_path / "a.seg", _data(300, 1), tk, chunk_bytes=SMALL_CHUNK_BYTES).path.read_bytes()
    b = write_segment(tmp_path / "b.seg", _data(300, 2), tk, chunk_bytes=SMALL_CHUNK_BYTES).path.read_bytes()
    header_a, recs_a = split_records(a)
    header_b, _ = split_records(b)
    path = _copy(tmp_path, header_b + a[len(header_a) :], "swapped.seg")
    _assert_rejected_everywhere(path, tk)
    path = _copy(tmp_path, _rebuild(header_b, [r.raw for r in recs_a[:-1]], tk.device), "swapped-fixed.seg")
    assert "chunk 0 authentication failed" in _strict_error(path, tk.recipient).what


def test_wrong_private_key_is_reported_as_not_a_recipient(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    path = _copy(tmp_path, sample[0])
    stranger = X25519PrivateKey.generate()
    err = _strict_error(path, stranger)
    assert "recipient not in the header" in err.what
    assert keys.fingerprint(tk.recipient_public) in err.what
    assert keys.fingerprint(stranger.public_key()) in err.what
    problems = segfile.verify(path, private_key=stranger)
    assert [p.what for p in problems] == [err.what]  # the keyless checks still pass


def test_stanza_relabelled_for_another_key_does_not_unwrap(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob = bytearray(sample[0])
    stranger = X25519PrivateKey.generate()
    offset = _header_fields(segfile.parse_header(bytes(blob[: struct.unpack_from(">I", blob, 12)[0]])))[
        "stanza_key_id"
    ][0]
    blob[offset : offset + 8] = keys.key_id(stranger.public_key())
    path = _copy(tmp_path, bytes(blob))
    assert "cannot unwrap the file key" in _strict_error(path, stranger).what


def test_hash_chain_is_checked_against_the_previous_digest(tmp_path: Path, tk: TestKeys) -> None:
    first = write_segment(tmp_path / "1.seg", b"one", tk, meta=make_meta(prev_digest=bytes(32)))
    second = write_segment(tmp_path / "2.seg", b"two", tk, meta=make_meta(prev_digest=first.digest))
    assert segfile.verify(second.path, prev_digest=first.digest) == []
    problems = segfile.verify(second.path, prev_digest=hashlib.sha256(b"something else").digest())
    assert len(problems) == 1 and "hash chain broken" in problems[0].what and problems[0].offset == 68


def test_not_a_segment_and_missing_file_are_segment_errors(tmp_path: Path, tk: TestKeys) -> None:
    junk = _copy(tmp_path, b"GIF89a" + bytes(400), "junk.seg")
    with pytest.raises(SegmentError, match="bad magic"):
        segfile.read_info(junk)
    with pytest.raises(SegmentError, match="only 3 bytes"):
        segfile.read_info(_copy(tmp_path, b"EDG", "tiny.seg"))
    problems = segfile.verify(tmp_path / "absent.seg")
    assert len(problems) == 1 and "cannot open segment" in problems[0].what


# Errors of the system or of the moment: they say nothing about the file (docs/design/storage.md).
SYSTEM_ERRORS = [errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EACCES, errno.EPERM, errno.EINTR]


def _salvage_errors(path: Path, key: X25519PrivateKey) -> list[SegmentError]:
    errors: list[SegmentError] = []
    b"".join(segfile.decrypt(path, key, recover=True, errors=errors))
    return errors


def _every_reader(path: Path, tk: TestKeys) -> dict[str, Callable[[], Any]]:
    """Each segfile function that opens ``path`` to read it, as a call."""
    return {
        "read_header": lambda: segfile.read_header(path),
        "read_info": lambda: segfile.read_info(path),
        "check_segment": lambda: segfile.check_segment(path, private_key=tk.recipient).problems,
        "verify": lambda: segfile.verify(path),
        "decrypt": lambda: _plain(path, tk.recipient),
        "decrypt(recover)": lambda: _salvage_errors(path, tk.recipient),
        "readable_prefix": lambda: segfile.readable_prefix(path),
        "read_provisional": lambda: segfile.read_provisional(path, tk.recipient),
    }


@pytest.mark.parametrize("err", SYSTEM_ERRORS, ids=errno.errorcode.get)
def test_an_open_failing_for_a_reason_of_the_system_is_an_oserror_not_a_damaged_segment(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    path = _copy(tmp_path, sample[0], "s.seg")
    opens = OpenFails(monkeypatch, path, err=err)
    readers = _every_reader(path, tk)
    for name, read in readers.items():
        with pytest.raises(OSError) as caught:
            read()
        assert not isinstance(caught.value, SegmentError), name
        assert caught.value.errno == err and caught.value.filename == str(path), name
    assert opens.failed == len(readers)
    opens.stop()  # the error gone: the same file reads as it always did
    assert segfile.read_info(path).digest == hashlib.sha256(sample[0]).digest()
    assert _plain(path, tk.recipient) == sample[1]


@pytest.mark.parametrize("kind", ["missing", "missing directory", "under a file", "directory", "symlink loop",
                                  "dangling symlink", "fifo"])
def test_a_path_that_names_no_segment_file_is_a_segment_error_naming_it(
    tmp_path: Path, tk: TestKeys, kind: str
) -> None:
    """Only what says the path itself is no segment file is a SegmentError (callers set such a file aside,
    or give its segment up). A FIFO is refused at once: opening it must not wait for a writer."""
    path = tmp_path / "s.seg"
    if kind == "missing directory":
        path = tmp_path / "gone" / "s.seg"
    elif kind == "under a file":
        (tmp_path / "file").write_bytes(b"x")
        path = tmp_path / "file" / "s.seg"
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere.seg")
    elif kind == "fifo":
        os.mkfifo(path)
    for name, read in _every_reader(path, tk).items():
        try:
            problems = list(read())  # the walks and the salvage list what they found
        except SegmentError as exc:
            problems = [exc]
        assert len(problems) == 1, (name, problems)
        assert problems[0].path == str(path) and problems[0].what.startswith("cannot open segment"), name
    if kind == "fifo":
        assert "not a regular file (a FIFO)" in problems[0].what


def test_absurd_lengths_are_rejected_without_allocating(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    blob = bytearray(sample[0])
    struct.pack_into(">I", blob, 12, 2**31)
    with pytest.raises(SegmentError, match="header length 2147483648 out of range") as caught:
        segfile.read_info(_copy(tmp_path, bytes(blob), "h.seg"))
    assert caught.value.offset == 12
    blob = bytearray(sample[0])
    first_chunk = split_records(bytes(blob))[1][0].offset
    struct.pack_into(">I", blob, first_chunk + 1, 0xFFFFFFF0)
    with pytest.raises(SegmentError, match="chunk 0 length 4294967280 out of range"):
        segfile.read_info(_copy(tmp_path, bytes(blob), "c.seg"))


# ----------------------------------------------------------------------------------------------- recovery


def _open_partial(tmp_path: Path, tk: TestKeys, chunks: int) -> tuple[SegmentWriter, bytes]:
    clock = FakeClock()
    writer = SegmentWriter(
        tmp_path / "p.seg", make_meta(), [tk.recipient_public], tk.device,
        chunk_bytes=SMALL_CHUNK_BYTES, monotonic=clock,
    )  # fmt: skip
    data = _data(chunks * 40)
    for i in range(chunks):
        writer.write(data[i * 40 : (i + 1) * 40])
        writer.note(START_NS + (i + 1) * 1000, i + 1)
        clock.t += 2
        writer.poll()
    assert writer.chunks == chunks
    return writer, data


def test_recover_partial_keeps_complete_chunks_and_cuts_a_torn_tail(tmp_path: Path, tk: TestKeys) -> None:
    writer, data = _open_partial(tmp_path, tk, 4)
    partial = writer.partial_path
    blob = partial.read_bytes()
    writer.abort()
    partial.write_bytes(blob + bytes([1, 0, 0]))  # the start of a fifth chunk, torn by the crash
    sealed = segfile.recover_partial(partial, tk.device)
    assert not partial.exists()
    assert sealed.path == tmp_path / "p.seg"
    assert (sealed.state, sealed.chunks, sealed.payload_bytes) == ("recovered", 4, 160)
    assert (sealed.end_ns, sealed.frames) == (START_NS + 4000, 4)
    assert segfile.read_info(sealed.path, tk.device.public_key()) == sealed
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []
    errors: list[SegmentError] = []
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, recover=True, errors=errors)) == data
    assert errors == []
    assert "recovered segment" in _strict_error(sealed.path, tk.recipient).what
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, allow_recovered=True)) == data


def test_recover_partial_with_no_chunks_gives_an_empty_segment(tmp_path: Path, tk: TestKeys) -> None:
    writer = SegmentWriter(tmp_path / "p.seg", make_meta(), [tk.recipient_public], tk.device)
    blob = writer.partial_path.read_bytes()
    writer.abort()
    partial = _copy(tmp_path, blob, "p.seg.partial")
    sealed = segfile.recover_partial(partial, tk.device)
    assert (sealed.chunks, sealed.payload_bytes, sealed.end_ns) == (0, 0, START_NS)
    assert list(segfile.decrypt(sealed.path, tk.recipient, recover=True)) == []


def test_recover_partial_without_a_complete_header_raises(tmp_path: Path, tk: TestKeys) -> None:
    writer = SegmentWriter(tmp_path / "p.seg", make_meta(), [tk.recipient_public], tk.device)
    blob = writer.partial_path.read_bytes()
    writer.abort()
    for size in (0, 10, len(blob) - 1):
        partial = _copy(tmp_path, blob[:size], "p.seg.partial")
        with pytest.raises(SegmentError):
            segfile.recover_partial(partial, tk.device)
        assert partial.exists() and not (tmp_path / "p.seg").exists()


def test_recover_partial_of_a_complete_file_just_renames_it(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    """A crash between writing the trailer and the rename leaves a complete .partial."""
    partial = _copy(tmp_path, sample[0], "s.seg.partial")
    sealed = segfile.recover_partial(partial, tk.device)
    assert sealed.state == "sealed"
    assert sealed.path.read_bytes() == sample[0]
    assert sealed.digest == hashlib.sha256(sample[0]).digest()


def test_recover_partial_refuses_other_device_key_and_existing_final(
    tmp_path: Path, tk: TestKeys, sample: tuple[bytes, bytes]
) -> None:
    partial = _copy(tmp_path, sample[0], "s.seg.partial")
    with pytest.raises(SegmentError, match="different device key"):
        segfile.recover_partial(partial, Ed25519PrivateKey.generate())
    _copy(tmp_path, b"x", "s.seg")
    with pytest.raises(SegmentError, match="already exists"):
        segfile.recover_partial(partial, tk.device)
    assert partial.read_bytes() == sample[0]


def _dir_sync_failing(monkeypatch: pytest.MonkeyPatch, times: int) -> list[Path]:
    """segfile's directory fsync failing with EIO on its first ``times`` calls, then the real one; returns
    the directories it was called for."""
    calls: list[Path] = []

    def dir_sync(path: str | Path, *, strict: bool) -> None:
        calls.append(Path(path))
        if len(calls) <= times:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync_dir(path, strict=strict)

    monkeypatch.setattr(segfile, "fsync_dir", dir_sync)
    return calls


def _sealed_but_dir_sync_failed(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> tuple[SegmentWriter, bytes]:
    """A writer whose close renamed the .partial to the final name, then found the directory fsync failing."""
    writer, data = _open_partial(tmp_path, tk, 3)
    dir_sync = DirSyncFailsAtSeal(monkeypatch)
    with pytest.raises(OSError) as caught:
        writer.close()
    assert caught.value.errno == errno.EIO and dir_sync.failed == tmp_path
    assert writer.closed and not writer.partial_path.exists() and writer.path.exists()
    return writer, data


def test_recover_partial_after_a_seal_whose_directory_fsync_failed_returns_the_sealed_file(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() raised after its rename: the caller recovers the .partial, which is gone. The file under the
    final name is the segment, whole and signed: it is returned unchanged, once its directory entry is
    durable (a directory fsync failing again is an OSError: the caller tries again later)."""
    writer, data = _sealed_but_dir_sync_failed(tmp_path, tk, monkeypatch)
    blob = writer.path.read_bytes()
    calls = _dir_sync_failing(monkeypatch, times=1)
    with pytest.raises(OSError, match="Input/output error"):
        segfile.recover_partial(writer.partial_path, tk.device)
    sealed = segfile.recover_partial(writer.partial_path, tk.device)
    assert calls == [tmp_path, tmp_path]
    assert sealed.path == writer.path and sealed.state == "sealed"
    assert sealed.digest == hashlib.sha256(blob).digest()
    assert writer.path.read_bytes() == blob and not writer.partial_path.exists()
    assert sealed.meta == writer.meta and sealed.chunks == 4  # three chunks and the (empty) final one
    assert sealed == segfile.read_info(writer.path, tk.device.public_key())
    assert _plain(sealed.path, tk.recipient) == data


def test_recover_partial_refuses_a_damaged_or_foreign_file_under_the_final_name(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, _ = _sealed_but_dir_sync_failed(tmp_path, tk, monkeypatch)
    with pytest.raises(SegmentError, match="signed by device key") as caught:
        segfile.recover_partial(writer.partial_path, Ed25519PrivateKey.generate())
    assert caught.value.path == str(writer.path)
    blob = bytearray(writer.path.read_bytes())
    blob[split_records(bytes(blob))[1][0].offset + 30] ^= 0x01  # a flipped bit in the first chunk
    writer.path.write_bytes(blob)
    with pytest.raises(SegmentError, match="fails its check") as caught:
        segfile.recover_partial(writer.partial_path, tk.device)
    assert caught.value.path == str(writer.path)
    assert writer.path.read_bytes() == blob and not writer.partial_path.exists()  # left as found


def _other_segment(tmp_path: Path, tk: TestKeys, name: str, *, meta: segfile.SegmentMeta,
                   close: bool = True) -> bytes:
    """The bytes of another segment of this device (closed, or a .partial with two chunks)."""
    if close:
        return write_segment(tmp_path / name, _data(300, seed=3), tk, meta=meta,
                             chunk_bytes=SMALL_CHUNK_BYTES).path.read_bytes()
    writer = SegmentWriter(tmp_path / name, meta, [tk.recipient_public], tk.device,
                           chunk_bytes=SMALL_CHUNK_BYTES)
    writer.write(_data(2 * SMALL_CHUNK_BYTES, seed=3))
    blob = writer.partial_path.read_bytes()
    writer.abort()
    return blob


def test_recover_partial_takes_only_the_segment_expected_under_the_final_name(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal renamed the file and failed; then someone put another segment of this device under that
    name: an older one of the camera, or one with the same metadata but another file. Given the writer's
    meta and header hash, recovery refuses both and leaves the file as found; the real one is taken."""
    writer, data = _sealed_but_dir_sync_failed(tmp_path, tk, monkeypatch)
    expected = {"meta": writer.meta, "header_hash": writer.header_hash}
    real = writer.path.read_bytes()
    older = _other_segment(tmp_path / "o", tk, "o.seg", meta=make_meta(sequence=6, start_ns=START_NS - 10**9))
    twin = _other_segment(tmp_path / "t", tk, "t.seg", meta=writer.meta)
    for blob, why in [(older, "its header differs in sequence, start_ns"), (twin, "another file's header")]:
        writer.path.write_bytes(blob)
        with pytest.raises(SegmentError, match=why) as caught:
            segfile.recover_partial(writer.partial_path, tk.device, **expected)
        assert "not the segment to recover (camera front-door, sequence 7)" in caught.value.what
        assert caught.value.path == str(writer.path)
        assert writer.path.read_bytes() == blob and not writer.partial_path.exists()  # left as found
    assert segfile.recover_partial(writer.partial_path, tk.device).meta == writer.meta  # none expected
    writer.path.write_bytes(real)
    sealed = segfile.recover_partial(writer.partial_path, tk.device, **expected)
    assert (sealed.state, sealed.meta) == ("sealed", writer.meta)
    assert sealed.digest == hashlib.sha256(real).digest()
    assert _plain(sealed.path, tk.recipient) == data


def test_recover_partial_takes_only_the_segment_expected_as_the_partial(tmp_path: Path, tk: TestKeys) -> None:
    """A .partial replaced by another segment of this device (an older closed one: it would merely be
    renamed; or another writer's partial with the same metadata) is refused before anything is changed."""
    writer, data = _open_partial(tmp_path, tk, 2)
    expected = {"meta": writer.meta, "header_hash": writer.header_hash}
    real = writer.partial_path.read_bytes()
    writer.abort()
    older = _other_segment(tmp_path / "o", tk, "o.seg", meta=make_meta(sequence=6, prev_digest=bytes(32)))
    twin = _other_segment(tmp_path / "t", tk, "t.seg", meta=writer.meta, close=False)
    refused = [(older, "its header differs in sequence, prev_digest"), (twin, "another file's header")]
    for blob, why in refused:
        partial = _copy(tmp_path, blob, "p.seg.partial")
        with pytest.raises(SegmentError, match=why) as caught:
            segfile.recover_partial(partial, tk.device, **expected)
        assert caught.value.path == str(partial)
        assert partial.read_bytes() == blob and not writer.path.exists()  # untouched, nothing renamed
    partial = _copy(tmp_path, real, "p.seg.partial")
    sealed = segfile.recover_partial(partial, tk.device, **expected)
    assert (sealed.state, sealed.chunks, sealed.meta) == ("recovered", 2, writer.meta)
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, allow_recovered=True)) == data


def test_a_recovery_whose_directory_fsync_failed_is_returned_by_the_next_try(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for recovery's own rename: the next try finds the recovered file and keeps its state."""
    writer, data = _open_partial(tmp_path, tk, 2)
    blob = writer.partial_path.read_bytes()
    writer.abort()
    partial = _copy(tmp_path, blob, "p.seg.partial")
    _dir_sync_failing(monkeypatch, times=1)
    with pytest.raises(OSError, match="Input/output error"):
        segfile.recover_partial(partial, tk.device)
    assert not partial.exists()
    sealed = segfile.recover_partial(partial, tk.device)
    assert (sealed.state, sealed.chunks, sealed.path) == ("recovered", 2, tmp_path / "p.seg")
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, allow_recovered=True)) == data


def test_recover_partial_with_neither_file_there_says_so(tmp_path: Path, tk: TestKeys) -> None:
    with pytest.raises(SegmentError, match="p.seg is not there either: nothing to recover") as caught:
        segfile.recover_partial(tmp_path / "p.seg.partial", tk.device)
    assert caught.value.path == str(tmp_path / "p.seg.partial")


@pytest.mark.parametrize("err", [errno.EIO, errno.EMFILE, errno.EACCES], ids=errno.errorcode.get)
@pytest.mark.parametrize("failing", ["open", "stat"])
def test_a_recovery_failing_for_a_reason_of_the_system_keeps_the_partial_for_the_next_try(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch, err: int, failing: str
) -> None:
    """Opening the .partial (or finding out whether it is there) fails: an OSError, never a verdict on the
    file (a SegmentError would have it set aside, or its segment given up). The next try recovers it."""
    writer, data = _open_partial(tmp_path, tk, 3)
    blob = writer.partial_path.read_bytes() + bytes([1, 0, 0])  # a chunk torn by the crash
    writer.abort()
    partial = _copy(tmp_path, blob, "p.seg.partial")
    opens = OpenFails(monkeypatch, partial, err=err, times=1, also_stat=failing == "stat")
    with pytest.raises(OSError) as caught:
        segfile.recover_partial(partial, tk.device)
    assert not isinstance(caught.value, SegmentError) and caught.value.errno == err
    assert partial.read_bytes() == blob and not (tmp_path / "p.seg").exists()  # untouched
    sealed = segfile.recover_partial(partial, tk.device)
    assert opens.failed == 1
    assert (sealed.state, sealed.chunks, sealed.path) == ("recovered", 3, tmp_path / "p.seg")
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, allow_recovered=True)) == data


@pytest.mark.parametrize("failing", ["open", "stat"])
def test_the_file_a_failed_seal_renamed_is_kept_when_reading_it_fails_for_a_reason_of_the_system(
    tmp_path: Path, tk: TestKeys, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The confirm-renamed branch: the sealed file under the final name cannot be opened (or looked at) for
    an I/O error. That is an OSError, not "fails its check": the caller tries again and the chain keeps it."""
    writer, data = _sealed_but_dir_sync_failed(tmp_path, tk, monkeypatch)
    blob = writer.path.read_bytes()
    opens = OpenFails(monkeypatch, writer.path, err=errno.EIO, times=1, also_stat=failing == "stat")
    with pytest.raises(OSError) as caught:
        segfile.recover_partial(writer.partial_path, tk.device)
    assert not isinstance(caught.value, SegmentError) and caught.value.errno == errno.EIO
    assert writer.path.read_bytes() == blob and not writer.partial_path.exists()
    sealed = segfile.recover_partial(writer.partial_path, tk.device)
    assert opens.failed == 1
    assert sealed.state == "sealed" and sealed.digest == hashlib.sha256(blob).digest()
    assert _plain(sealed.path, tk.recipient) == data


def test_recover_partial_cuts_at_a_chunk_with_a_bad_check(tmp_path: Path, tk: TestKeys) -> None:
    """Garbage where a chunk should be (e.g. unwritten blocks after a power cut) ends the kept part."""
    writer, data = _open_partial(tmp_path, tk, 4)
    blob = bytearray(writer.partial_path.read_bytes())
    writer.abort()
    _, records = split_records(bytes(blob))
    third = records[2]
    blob[third.offset + 17 : third.offset + len(third.raw)] = bytes(len(third.raw) - 17)
    sealed = segfile.recover_partial(_copy(tmp_path, bytes(blob), "p.seg.partial"), tk.device)
    assert sealed.chunks == 2
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient, recover=True)) == data[:80]


@pytest.fixture(scope="module")
def partial_sample(tmp_path_factory: pytest.TempPathFactory, tk: TestKeys) -> tuple[bytes, bytes]:
    """The bytes of a .partial with 12 chunks of assorted sizes, and the data written."""
    tmp = tmp_path_factory.mktemp("partial")
    clock = FakeClock()
    writer = SegmentWriter(
        tmp / "p.seg", make_meta(), [tk.recipient_public], tk.device, chunk_bytes=100, monotonic=clock
    )
    data = _data(700, seed=9)
    pos = 0
    for i, size in enumerate([30, 170, 1, 99, 100, 5, 250, 45]):
        writer.write(data[pos : pos + size])
        pos += size
        writer.note(START_NS + i, i)
        clock.t += 1.5
        writer.poll()
    blob = writer.partial_path.read_bytes()
    writer.abort()
    return blob, data[:pos]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut_fraction=st.floats(min_value=0.0, max_value=1.0))
def test_recover_partial_keeps_exactly_the_chunks_before_a_random_cut(
    tk: TestKeys, partial_sample: tuple[bytes, bytes], cut_fraction: float
) -> None:
    blob, data = partial_sample
    header, records = split_records(blob)
    assert len(records) >= 10 and all(r.kind == segfile.KIND_CHUNK for r in records)
    cut = round(cut_fraction * len(blob))
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "p.seg.partial"
        partial.write_bytes(blob[:cut])
        if cut < len(header):
            with pytest.raises(SegmentError):
                segfile.recover_partial(partial, tk.device)
            return
        sealed = segfile.recover_partial(partial, tk.device)
        kept = [r for r in records if r.offset + len(r.raw) <= cut]
        assert sealed.chunks == len(kept)
        kept_bytes = sum(len(r.raw) - segfile.CHUNK_OVERHEAD_BYTES for r in kept)
        assert sealed.payload_bytes == kept_bytes
        assert segfile.verify(sealed.path, private_key=tk.recipient) == []
        assert b"".join(segfile.decrypt(sealed.path, tk.recipient, recover=True)) == data[:kept_bytes]


_CHILD_WRITER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    from edgerec import keys, segfile
    from tests.helpers.segments import make_meta

    out, recipient_pub, device_key = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    writer = segfile.SegmentWriter(
        out, make_meta(), [keys.load_public_key(recipient_pub)], keys.load_device_key(device_key),
        chunk_bytes=4096, flush_seconds=0.02, fsync_seconds=0.05,
    )
    counter = frames = 0
    while True:
        packet = b"".join(hashlib.sha256(b"%d" % (counter + i)).digest() for i in range(41))[:1316]
        counter += 41
        writer.write(packet)
        frames += 1
        writer.note(1_750_000_000_000_000_000 + frames, frames)
        writer.poll()
        if frames % 50 == 0:
            time.sleep(0.001)
    """
)


def _child_stream(n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += b"".join(hashlib.sha256(b"%d" % (counter + i)).digest() for i in range(41))[:1316]
        counter += 41
    return bytes(out[:n])


def test_killed_writer_leaves_a_partial_whose_complete_chunks_all_recover(tmp_path: Path) -> None:
    recipient_file = tmp_path / "officer.key"
    keys.generate_recipient(recipient_file)
    device = keys.load_or_create_device_key(tmp_path / "data")
    out = tmp_path / "data" / "cam" / "seg.ts.seg"
    partial = segfile.partial_path_for(out)
    device_file = tmp_path / "data" / "device.key"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_WRITER, str(out), f"{recipient_file}.pub", str(device_file)],
        cwd=REPO_ROOT,
    )
    try:
        wait_for(lambda: partial.exists() and partial.stat().st_size > 300_000, 30, "the child to write")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    sealed = segfile.recover_partial(partial, device)
    assert sealed.state == "recovered"
    assert sealed.payload_bytes > 200_000
    assert sealed.frames > 0 and sealed.end_ns == START_NS + sealed.frames
    errors: list[SegmentError] = []
    plain = b"".join(segfile.decrypt(sealed.path, keys.load_private_key(recipient_file), recover=True,
                                     errors=errors))  # fmt: skip
    assert errors == []
    assert len(plain) == sealed.payload_bytes
    assert plain == _child_stream(len(plain))


_CHILD_DISK_FULL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from edgerec import segfile
    from tests.helpers.segments import make_meta

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceed the size limit: EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    device = Ed25519PrivateKey.from_private_bytes(bytes(32))
    writer = segfile.SegmentWriter(Path(sys.argv[1]), make_meta(),
                                   [X25519PrivateKey.generate().public_key()], device, chunk_bytes=3000)
    failures = 0
    for i in range(100):
        try:
            writer.write(bytes([i]) * 1000)
        except OSError:
            failures += 1
    try:
        writer.close()
        closed = True
    except OSError:
        closed = False
    print(json.dumps({"failures": failures, "chunks": writer.chunks, "bytes": writer.bytes_written,
                      "closed": closed}))
    """
)


def test_disk_full_write_leaves_no_torn_chunk(tmp_path: Path) -> None:
    out = tmp_path / "s.seg"
    result = subprocess.run(
        [sys.executable, "-c", _CHILD_DISK_FULL, str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    state = json.loads(result.stdout)
    assert state["failures"] > 0 and not state["closed"]
    partial = segfile.partial_path_for(out)
    assert partial.stat().st_size == state["bytes"]  # the short write was cut off again
    sealed = segfile.recover_partial(partial, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert sealed.chunks == state["chunks"] > 0
