"""The encrypted segment file format, version 1: writer, crash recovery, reader and verifier.

Pure file format: bytes in, an encrypted and signed file out, and back; it knows nothing of video or of
the catalog. The byte-exact specification is ``docs/segment-format.md``; the constants and the small
``encode_*``/``seal_chunk``/``open_chunk`` functions below are that specification in code, and the
known-answer vectors in ``tests/vectors/`` pin them.

In one paragraph: each segment has a fresh random file key, wrapped with HPKE for every recipient; the
payload is cut into AEAD chunks (AES-256-GCM or ChaCha20-Poly1305, as the header's cipher suite says;
STREAM construction: nonce = chunk counter || last flag), each framed with an authenticated length,
the writer's latest media end time and frame count, and a keyless integrity check; a trailer signed by
the device's Ed25519 key commits to a SHA-256 of everything before it. A ``.partial`` file left by a
crash keeps all its complete chunks (``recover_partial``).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import SegmentError
from .fsutil import create_private, fsync_dir
from .keys import device_key_id, format_key_id, key_id
from .layout import PARTIAL_SUFFIX, partial_path

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- format constants

MAGIC = b"EDGERSEG"
FORMAT_VERSION = 1
# Cipher suites (header offset 10). Both share everything but the chunk AEAD: HPKE(X25519, HKDF-SHA256,
# AES-256-GCM) for the file key, HKDF-SHA256, HMAC-SHA256, SHA-256, Ed25519, the STREAM nonces and AAD.
SUITE_AES_256_GCM = 1  # chunks: AES-256-GCM
SUITE_CHACHA20_POLY1305 = 2  # chunks: ChaCha20-Poly1305 (RFC 8439); cheaper without AES instructions
SUITE_V1 = SUITE_AES_256_GCM  # the first suite (kept for callers that name it so)
SUITE_NAMES = {SUITE_AES_256_GCM: "aes-256-gcm", SUITE_CHACHA20_POLY1305: "chacha20-poly1305"}
SUITE_BY_NAME = {name: suite for suite, name in SUITE_NAMES.items()}
PayloadAead: TypeAlias = AESGCM | ChaCha20Poly1305
_PAYLOAD_AEADS: dict[int, type[AESGCM] | type[ChaCha20Poly1305]] = {
    SUITE_AES_256_GCM: AESGCM, SUITE_CHACHA20_POLY1305: ChaCha20Poly1305,
}

FILE_KEY_BYTES = 32
STREAM_NONCE_BYTES = 16
DIGEST_BYTES = 32
KEY_ID_BYTES = 8
HPKE_WRAPPED_BYTES = 32 + FILE_KEY_BYTES + 16  # enc || AES-256-GCM(file key) || tag
STANZA_BYTES = KEY_ID_BYTES + HPKE_WRAPPED_BYTES
HEADER_MAC_BYTES = 32
TAG_BYTES = 16
CHECK_BYTES = 16
SIGNATURE_BYTES = 64
STRING_MAX_BYTES = 255
RECIPIENTS_MAX = 16
HEADER_MAX_BYTES = 65536
CHUNK_MAX_LIMIT_BYTES = 16 * 1024 * 1024
FRAMES_MAX = 2**32 - 1
# Plaintext per chunk as the writer seals them. Every chunk costs a fixed amount of work besides its bytes
# (a record, one write(2), hash and cipher set-up, Python calls): at 256 KiB that is a quarter of what 64 KiB
# chunks cost (docs/performance.md). Chunks are sealed on time as well (``flush_seconds``), so this bounds
# only the memory an open segment holds, not what a power cut can lose.
CHUNK_BYTES_DEFAULT = 262144

# magic, version, suite, header_len, chunk_max_bytes, stream nonce, device public key, prev digest,
# sequence, start_ns, monotonic_ns, clock_synced
_HEADER_FIXED = struct.Struct(">8sHHII16s32s32sQqqB")
_HEADER_STRINGS = ("device_id", "camera", "boot_id", "codec", "container")
HEADER_MIN_BYTES = _HEADER_FIXED.size + len(_HEADER_STRINGS) + 1 + STANZA_BYTES + HEADER_MAC_BYTES

KIND_CHUNK = 0x01
KIND_FINAL_CHUNK = 0x02
KIND_TRAILER = 0x03
_CHUNK_PREFIX = struct.Struct(">BIqI")  # kind, ciphertext length, end_ns, frames
CHUNK_OVERHEAD_BYTES = _CHUNK_PREFIX.size + TAG_BYTES + CHECK_BYTES

STATE_SEALED = 1
STATE_RECOVERED = 2
_STATE_NAMES = {STATE_SEALED: "sealed", STATE_RECOVERED: "recovered"}
_TRAILER_BODY = struct.Struct(">BBIQQqI32s")  # kind, state, chunks, payload, body bytes, end_ns, frames, hash
TRAILER_BYTES = _TRAILER_BODY.size + SIGNATURE_BYTES

# Domain-separation labels (ASCII); the spec lists them byte for byte.
WRAP_INFO_LABEL = b"edgerec segment v1 wrap\x00"
PAYLOAD_KEY_INFO = b"edgerec segment v1 payload"
HEADER_MAC_KEY_INFO = b"edgerec segment v1 header mac"
TRAILER_SIG_LABEL = b"edgerec segment v1 trailer\x00"

_HPKE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
# Encrypting into a caller's buffer saves an allocation and a copy per chunk; older ``cryptography``
# releases without it get the same bytes through ``encrypt``.
_HAS_ENCRYPT_INTO = all(hasattr(cls, "encrypt_into") for cls in _PAYLOAD_AEADS.values())
_MAX_REPORTED_PROBLEMS = 100


# -------------------------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class SegmentMeta:
    device_id: str
    camera: str
    sequence: int  # per-camera counter
    start_ns: int  # UTC wall-clock ns of the first media
    clock_synced: bool  # kernel said the clock was synchronised
    boot_id: str  # /proc/sys/kernel/random/boot_id
    monotonic_ns: int  # CLOCK_MONOTONIC (or BOOTTIME) at start_ns
    codec: str  # "h264", "hevc", ...
    container: str  # "mpegts"
    prev_digest: bytes = bytes(DIGEST_BYTES)  # digest of this camera's previous segment; zeros for the first


@dataclass(frozen=True)
class SealedSegment:
    """A closed, recovered or inspected segment."""

    path: Path
    meta: SegmentMeta
    digest: bytes  # SHA-256 of the whole file, header to end of trailer: the hash-chain link
    size_bytes: int
    chunks: int
    payload_bytes: int
    frames: int  # as noted by the writer (recovered: as of the last complete chunk)
    end_ns: int  # UTC ns of the end of the media (recovered: from the last complete chunk)
    state: str  # "sealed" | "recovered"
    device_key_id: bytes = b""  # id of the Ed25519 key that signed the trailer
    recipient_key_ids: tuple[bytes, ...] = ()

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.meta.start_ns)


@dataclass(frozen=True)
class Stanza:
    offset: int
    key_id: bytes
    wrapped: bytes  # HPKE enc || ciphertext


@dataclass(frozen=True)
class Header:
    """A parsed header. Parsing checks structure only; the MAC needs the file key."""

    raw: bytes
    core_len: int  # bytes before the first stanza (what the HPKE info commits to)
    chunk_max_bytes: int
    stream_nonce: bytes
    device_public: bytes  # raw Ed25519 public key
    meta: SegmentMeta
    stanzas: tuple[Stanza, ...]
    suite: int = SUITE_AES_256_GCM  # cipher suite of the chunks (SUITE_NAMES)

    @property
    def mac(self) -> bytes:
        return self.raw[-HEADER_MAC_BYTES:]

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


# ----------------------------------------------------------------------------- pure codec (the spec in code)


def derive_keys(file_key: bytes, stream_nonce: bytes) -> tuple[bytes, bytes]:
    """(payload key, header MAC key) = HKDF-SHA256(IKM=file key, salt=stream nonce, info=label)."""

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=SHA256(), length=32, salt=stream_nonce, info=info).derive(file_key)

    return hkdf(PAYLOAD_KEY_INFO), hkdf(HEADER_MAC_KEY_INFO)


def payload_aead(suite: int, payload_key: bytes) -> PayloadAead:
    """The chunk cipher of ``suite`` keyed with the payload key (ValueError for an unknown suite)."""
    cls = _PAYLOAD_AEADS.get(suite)
    if cls is None:
        raise ValueError(f"unknown cipher suite {suite}")
    return cls(payload_key)


def wrap_info(core: bytes) -> bytes:
    """HPKE ``info`` for a header: label || SHA-256(header core). 56 bytes, below every HPKE info limit."""
    return WRAP_INFO_LABEL + hashlib.sha256(core).digest()


def header_mac(mac_key: bytes, header_without_mac: bytes) -> bytes:
    return hmac.digest(mac_key, header_without_mac, "sha256")


def _encode_string(name: str, value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > STRING_MAX_BYTES:
        raise ValueError(f"{name} is {len(data)} bytes in UTF-8; at most {STRING_MAX_BYTES} fit a header")
    return bytes([len(data)]) + data


def encode_header_core(
    meta: SegmentMeta, chunk_max_bytes: int, stream_nonce: bytes, device_public: bytes, recipients: int,
    suite: int = SUITE_AES_256_GCM,
) -> bytes:
    """The header up to and including the recipient count (everything the stanzas and the MAC bind)."""
    if len(meta.prev_digest) != DIGEST_BYTES:
        raise ValueError(f"prev_digest must be {DIGEST_BYTES} bytes")
    if not 1 <= recipients <= RECIPIENTS_MAX:
        raise ValueError(f"a segment needs 1..{RECIPIENTS_MAX} recipients, got {recipients}")
    if not 1 <= chunk_max_bytes <= CHUNK_MAX_LIMIT_BYTES:
        raise ValueError(f"chunk_bytes must be 1..{CHUNK_MAX_LIMIT_BYTES}")
    if suite not in SUITE_NAMES:
        raise ValueError(f"unknown cipher suite {suite}")
    strings = b"".join(_encode_string(n, getattr(meta, n)) for n in _HEADER_STRINGS)
    header_len = _HEADER_FIXED.size + len(strings) + 1 + recipients * STANZA_BYTES + HEADER_MAC_BYTES
    fixed = _HEADER_FIXED.pack(
        MAGIC, FORMAT_VERSION, suite, header_len, chunk_max_bytes, stream_nonce, device_public,
        meta.prev_digest, meta.sequence, meta.start_ns, meta.monotonic_ns, 1 if meta.clock_synced else 0,
    )
    return fixed + strings + bytes([recipients])


def encode_header(
    meta: SegmentMeta,
    recipients: Sequence[X25519PublicKey],
    device_public: bytes,
    file_key: bytes,
    stream_nonce: bytes,
    chunk_max_bytes: int,
    suite: int = SUITE_AES_256_GCM,
) -> bytes:
    """A complete header: core, one HPKE stanza per recipient, HMAC-SHA256 over all of it."""
    core = encode_header_core(meta, chunk_max_bytes, stream_nonce, device_public, len(recipients), suite)
    info = wrap_info(core)
    stanzas = []
    for recipient in recipients:
        wrapped = _HPKE.encrypt(file_key, recipient, info=info)
        if len(wrapped) != HPKE_WRAPPED_BYTES:  # pragma: no cover - fixed by the suite
            raise RuntimeError(f"HPKE output is {len(wrapped)} bytes, expected {HPKE_WRAPPED_BYTES}")
        stanzas.append(key_id(recipient) + wrapped)
    body = core + b"".join(stanzas)
    return body + header_mac(derive_keys(file_key, stream_nonce)[1], body)


def chunk_nonce(index: int, last: bool) -> bytes:
    """STREAM nonce: 11-byte big-endian chunk counter || 0x01 for the final chunk, else 0x00."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def chunk_check(file_hash_state: Any) -> bytes:
    """Keyless integrity check of a chunk record: the first 16 bytes of the SHA-256 of the file from its
    first byte through the record's ciphertext and tag. ``file_hash_state`` is a running ``hashlib``
    SHA-256 over exactly those bytes; it is not changed. Because the writer and every reader keep that
    running hash anyway (for the trailer's file hash), the check costs no second pass over the data, and
    it binds the chunk to the header, its offset and everything before it."""
    return file_hash_state.digest()[:CHECK_BYTES]  # digest() works on a copy of the state


def seal_chunk_into(
    aead: PayloadAead, header_hash: bytes, file_hasher: Any, index: int, last: bool, end_ns: int, frames: int,
    plaintext: bytes | bytearray | memoryview, out: memoryview,
) -> int:
    """Build one complete chunk record (prefix || ciphertext || tag || check) at the start of ``out`` and
    return its length (``len(plaintext) + CHUNK_OVERHEAD_BYTES``).

    ``file_hasher`` is the running SHA-256 of the file before the record; it is advanced over the record.
    The ciphertext is written straight into ``out`` and hashed there: no allocation or copy per chunk.
    """
    size = len(plaintext)
    aad = _frame_chunk(out, header_hash, last, size, end_ns, frames)
    ct = out[_CHUNK_PREFIX.size : _CHUNK_PREFIX.size + size + TAG_BYTES]
    if _HAS_ENCRYPT_INTO:
        aead.encrypt_into(chunk_nonce(index, last), plaintext, aad, ct)
    else:  # pragma: no cover - cryptography releases before encrypt_into
        ct[:] = aead.encrypt(chunk_nonce(index, last), plaintext, aad)
    return _hash_chunk(out, file_hasher, size)


def _frame_chunk(
    out: memoryview, header_hash: bytes, last: bool, size: int, end_ns: int, frames: int
) -> bytes:
    """Write a chunk record's prefix at the start of ``out``; return the chunk's AAD."""
    kind = KIND_FINAL_CHUNK if last else KIND_CHUNK
    _CHUNK_PREFIX.pack_into(out, 0, kind, size + TAG_BYTES, end_ns, frames)
    return header_hash + out[: _CHUNK_PREFIX.size].tobytes()


def _hash_chunk(out: memoryview, file_hasher: Any, size: int) -> int:
    """Advance ``file_hasher`` over the framed ciphertext and tag, append the check; the record's length."""
    ct_end = _CHUNK_PREFIX.size + size + TAG_BYTES
    file_hasher.update(out[:ct_end])
    out[ct_end : ct_end + CHECK_BYTES] = chunk_check(file_hasher)
    file_hasher.update(out[ct_end : ct_end + CHECK_BYTES])
    return ct_end + CHECK_BYTES


def seal_chunk(
    aead: PayloadAead, header_hash: bytes, file_hasher: Any, index: int, last: bool, end_ns: int, frames: int,
    plaintext: bytes | bytearray | memoryview,
) -> bytes:
    """One complete chunk record as bytes (see ``seal_chunk_into``); ``file_hasher`` is advanced."""
    out = bytearray(len(plaintext) + CHUNK_OVERHEAD_BYTES)
    seal_chunk_into(aead, header_hash, file_hasher, index, last, end_ns, frames, plaintext, memoryview(out))
    return bytes(out)


def open_chunk(aead: PayloadAead, header_hash: bytes, index: int, prefix: bytes, ciphertext: bytes) -> bytes:
    """Authenticate and decrypt chunk ``index``; raises InvalidTag."""
    last = prefix[0] == KIND_FINAL_CHUNK
    return aead.decrypt(chunk_nonce(index, last), ciphertext, header_hash + prefix)


def trailer_signed_bytes(body: bytes) -> bytes:
    return TRAILER_SIG_LABEL + body


def encode_trailer(
    state: int, chunks: int, payload_bytes: int, body_bytes: int, end_ns: int, frames: int,
    file_hash: bytes, signing_key: Ed25519PrivateKey,
) -> bytes:
    body = _TRAILER_BODY.pack(
        KIND_TRAILER, state, chunks, payload_bytes, body_bytes, end_ns, frames, file_hash
    )
    return body + signing_key.sign(trailer_signed_bytes(body))


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_header(raw: bytes, path: object = "<header>") -> Header:
    """Parse complete header bytes (``header_len`` of them); SegmentError names the failing field."""

    def fail(offset: int, what: str) -> SegmentError:
        return SegmentError(path, offset, what)

    if len(raw) < 16:
        raise fail(0, f"not an edgerec segment: only {len(raw)} bytes")
    if raw[:8] != MAGIC:
        raise fail(0, "not an edgerec segment (bad magic)")
    version, suite, header_len = struct.unpack_from(">HHI", raw, 8)
    if version != FORMAT_VERSION:
        raise fail(8, f"unsupported format version {version} (this edgerec reads version {FORMAT_VERSION})")
    if suite not in SUITE_NAMES:
        # The suite decides how every chunk is read: one this reader does not implement is refused
        # before anything else of the header is trusted.
        known = ", ".join(f"{n} ({name})" for n, name in SUITE_NAMES.items())
        raise fail(10, f"unknown cipher suite {suite} (this edgerec reads suites {known})")
    if not HEADER_MIN_BYTES <= header_len <= HEADER_MAX_BYTES:
        raise fail(12, f"header length {header_len} out of range {HEADER_MIN_BYTES}..{HEADER_MAX_BYTES}")
    if len(raw) != header_len:
        raise fail(0, f"truncated header: {len(raw)} of {header_len} bytes")
    (_, _, _, _, chunk_max, nonce, device_public, prev_digest, sequence, start_ns, mono_ns, synced) = (
        _HEADER_FIXED.unpack_from(raw, 0)
    )
    if not 1 <= chunk_max <= CHUNK_MAX_LIMIT_BYTES:
        raise fail(16, f"chunk size {chunk_max} out of range 1..{CHUNK_MAX_LIMIT_BYTES}")
    if synced not in (0, 1):
        raise fail(_HEADER_FIXED.size - 1, f"clock_synced flag is {synced}, must be 0 or 1")
    pos = _HEADER_FIXED.size
    strings: dict[str, str] = {}
    for name in _HEADER_STRINGS:
        n = raw[pos]
        if pos + 1 + n > header_len - HEADER_MAC_BYTES:
            raise fail(pos, f"{name} length {n} runs past the header")
        try:
            strings[name] = raw[pos + 1 : pos + 1 + n].decode("utf-8")
        except UnicodeDecodeError:
            raise fail(pos + 1, f"{name} is not valid UTF-8") from None
        pos += 1 + n
    count = raw[pos]
    if not 1 <= count <= RECIPIENTS_MAX:
        raise fail(pos, f"recipient count {count} out of range 1..{RECIPIENTS_MAX}")
    core_len = pos + 1
    expected_len = core_len + count * STANZA_BYTES + HEADER_MAC_BYTES
    if expected_len != header_len:
        raise fail(12, f"header length {header_len} does not match its contents ({expected_len} bytes)")
    stanzas = tuple(
        Stanza(o, raw[o : o + KEY_ID_BYTES], raw[o + KEY_ID_BYTES : o + STANZA_BYTES])
        for o in range(core_len, core_len + count * STANZA_BYTES, STANZA_BYTES)
    )
    meta = SegmentMeta(
        device_id=strings["device_id"], camera=strings["camera"], sequence=sequence, start_ns=start_ns,
        clock_synced=bool(synced), boot_id=strings["boot_id"], monotonic_ns=mono_ns,
        codec=strings["codec"], container=strings["container"], prev_digest=prev_digest,
    )
    return Header(raw, core_len, chunk_max, nonce, device_public, meta, stanzas, suite)


# ---------------------------------------------------------------------------------------------- the writer


def partial_path_for(path: Path) -> Path:
    return partial_path(path)


class SegmentWriter:
    """Writes one segment: encrypts as it goes, seals a chunk when full or ``flush_seconds`` old.

    ``write``/``note``/``poll``/``close``/``abort`` may be called from different threads (one lock; ``note``,
    once per packet, stores one tuple and needs none).
    ``poll`` runs the time-based seal and the periodic ``fdatasync``; call it at least every
    ``flush_seconds / 2`` from a timer thread. The ``fdatasync`` itself runs outside the main lock, so a
    slow SD card never blocks ``write`` in the packet loop.

    If an ``os.write`` fails (disk full), the torn bytes are cut off again and the error propagates; the
    sealed record is kept and written again, byte for byte, before anything else by the next ``write``,
    ``poll`` or ``close`` (never re-encrypted: a chunk's nonce is used for one plaintext only). If even
    the repair fails, the writer refuses further work and the ``.partial`` is left for
    ``recover_partial`` (``close`` then releases the descriptor and raises ``SegmentError``).
    """

    def __init__(
        self,
        path: Path,
        meta: SegmentMeta,
        recipients: Sequence[X25519PublicKey],
        signing_key: Ed25519PrivateKey,
        *,
        flush_seconds: float = 1.0,
        fsync_seconds: float = 2.0,
        chunk_bytes: int = CHUNK_BYTES_DEFAULT,
        suite: int = SUITE_AES_256_GCM,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if suite not in SUITE_NAMES:
            raise ValueError(f"unknown cipher suite {suite}")
        if not 1 <= chunk_bytes <= CHUNK_MAX_LIMIT_BYTES:
            raise ValueError(f"chunk_bytes must be 1..{CHUNK_MAX_LIMIT_BYTES}, got {chunk_bytes}")
        _check_int64("start_ns", meta.start_ns)
        _check_int64("monotonic_ns", meta.monotonic_ns)
        if not 0 <= meta.sequence < 2**64:
            raise ValueError("sequence must fit an unsigned 64-bit integer")
        self._path = Path(path)
        self._partial = partial_path_for(self._path)
        self.meta = meta
        self._signing_key = signing_key
        self._flush_seconds = flush_seconds
        self._fsync_seconds = fsync_seconds
        self._chunk_bytes = chunk_bytes
        self._monotonic = monotonic

        file_key = os.urandom(FILE_KEY_BYTES)
        stream_nonce = os.urandom(STREAM_NONCE_BYTES)
        signing_public = signing_key.public_key()
        device_public = _raw_public(signing_public)
        self._device_key_id = device_key_id(signing_public)
        recipients = list(recipients)
        header = encode_header(meta, recipients, device_public, file_key, stream_nonce, chunk_bytes, suite)
        self.suite = suite
        self._aead = payload_aead(suite, derive_keys(file_key, stream_nonce)[0])
        del file_key  # only the derived payload key stays in RAM while the segment is open
        header_hasher = hashlib.sha256(header)
        self._header_hash = header_hasher.digest()
        self._recipient_ids = tuple(key_id(r) for r in recipients)

        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        # The plaintext not sealed yet: ``_buffer[:_pending_bytes]``. Each write is copied in at once, while
        # the muxer's bytes are still in the CPU's cache, and a chunk is sealed from here in one call
        # (measured: cheaper than keeping the muxer's objects and encrypting from them later).
        self._buffer = memoryview(bytearray(chunk_bytes))
        self._pending_bytes = 0
        # Data accepted by a ``write`` whose seal failed before all of it fit in the buffer (disk full):
        # buffered first by the next write, poll or close. ``_spill_since``: when its oldest byte was
        # accepted (what the flush deadline counts from once it is in the buffer).
        self._spill = b""
        self._spill_since = 0.0
        # Chunk records are built here, one at a time (largest: a full chunk plus the framing).
        self._record = memoryview(bytearray(chunk_bytes + CHUNK_OVERHEAD_BYTES))
        self._first_pending: float | None = None
        # (end_ns, frames) of the media so far: one tuple, replaced whole, so that a seal on the timer
        # thread never sees the end time of one call with the frame count of another.
        self._progress = (meta.start_ns, 0)
        self._index = 0  # chunks sealed (their nonces used)
        self._payload_bytes = 0  # plaintext bytes in sealed chunks
        # A sealed record whose write failed: (record, running hash after it, its plaintext length).
        # It is written, unchanged, before anything else.
        self._unwritten: tuple[memoryview, Any, int] | None = None
        self._offset = 0
        self._synced_offset = 0
        self._hasher = hashlib.sha256()  # running SHA-256 of the file as written (one pass over every byte)
        self._closed = False
        self._broken: BaseException | None = None

        if self._path.exists():
            raise FileExistsError(f"{self._path} already exists")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = create_private(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            self._append(header, header_hasher.copy())
            os.fdatasync(self._fd)
            # The directory entry must survive a power cut too, or recovery never finds the footage.
            fsync_dir(self._partial.parent, strict=True)
        except BaseException:
            os.close(self._fd)
            self._partial.unlink(missing_ok=True)
            raise
        self._last_sync = monotonic()
        self._synced_offset = self._offset
        log.debug("segment opened camera=%s sequence=%d path=%s", meta.camera, meta.sequence, self._partial)

    # -- properties
    @property
    def path(self) -> Path:
        return self._path

    @property
    def partial_path(self) -> Path:
        return self._partial

    @property
    def header_hash(self) -> bytes:
        """SHA-256 of the header: with ``meta``, what ``recover_partial`` checks the file it finds against."""
        return self._header_hash

    @property
    def bytes_written(self) -> int:
        """Bytes in the file so far (header and sealed chunks; not the data still buffered)."""
        return self._offset

    @property
    def pending_bytes(self) -> int:
        """Plaintext bytes not in the file yet (buffered, or in a sealed chunk whose write failed)."""
        unwritten = self._unwritten[2] if self._unwritten is not None else 0
        return self._pending_bytes + len(self._spill) + unwritten

    @property
    def payload_bytes(self) -> int:
        """Plaintext bytes accepted so far, sealed or still buffered."""
        return self._payload_bytes + self._pending_bytes + len(self._spill)

    @property
    def chunks(self) -> int:
        """Chunk records in the file so far."""
        return self._index - (self._unwritten is not None)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- public operations
    def write(self, data: bytes) -> None:
        """Buffer ``data`` (copied at once); seal and write a chunk when ``chunk_bytes`` are pending or the
        flush is due. If a seal fails (disk full), the error propagates and every byte of ``data`` is
        still kept: the failed record and the rest go first in the next ``write``, ``poll`` or ``close``."""
        if type(data) is not bytes:
            data = bytes(data)  # a view of any format, a bytearray the caller goes on changing
        size = len(data)
        if not size:
            return
        with self._lock:
            if self._closed or self._broken is not None:
                self._check_usable()
            now = self._monotonic()
            pending = self._pending_bytes
            end = pending + size
            if end < self._chunk_bytes and not self._spill:  # the common case: a packet fits the chunk
                if not pending:
                    self._first_pending = now
                self._buffer[pending:end] = data
                self._pending_bytes = end
            else:
                if self._spill:
                    self._spill += data
                else:
                    self._spill, self._spill_since = data, now
                self._buffer_spill()
            if self._pending_bytes and now - self._first_pending >= self._flush_seconds:  # type: ignore[operator]
                self._seal(last=False)

    def note(self, end_ns: int, frames: int) -> None:
        """Latest media end time (UTC ns) and frame count; stored in every chunk sealed from now on.
        Called once per packet: no lock (one attribute store is atomic), the range checks inline."""
        if not (_INT64_MIN <= end_ns <= _INT64_MAX and 0 <= frames <= FRAMES_MAX):
            _check_int64("end_ns", end_ns)
            raise ValueError(f"frames must be 0..{FRAMES_MAX}")
        self._progress = (end_ns, frames)

    def poll(self) -> None:
        """Seal pending data older than ``flush_seconds``; fdatasync if ``fsync_seconds`` have passed."""
        with self._lock:
            if self._closed or self._broken is not None:
                return
            now = self._monotonic()
            self._write_unwritten()
            self._buffer_spill()
            if self._pending_bytes and now - self._first_pending >= self._flush_seconds:  # type: ignore[operator]
                self._seal(last=False)
            sync_to = self._offset
            if sync_to <= self._synced_offset or now - self._last_sync < self._fsync_seconds:
                return
            self._last_sync = now
        with self._sync_lock:
            if self._closed:
                return
            os.fdatasync(self._fd)
        with self._lock:
            self._synced_offset = max(self._synced_offset, sync_to)

    def close(self) -> SealedSegment:
        """Final chunk, signed trailer, fdatasync, rename ``.partial`` to the final name, fsync the dir.

        On an exception the writer is done and ``recover_partial`` of ``partial_path`` closes the segment:
        the file stays as ``.partial``, unless only the directory fsync after the rename failed; then the
        sealed file is under its final name already, and ``recover_partial`` checks it and syncs its entry.
        """
        with self._lock:
            if self._broken is not None:
                # The writer refuses to seal, but its descriptor must go all the same: a camera on a
                # failing disk would otherwise leak one per segment until the process runs out.
                self._release_fd()
            self._check_usable()  # broken: still a SegmentError, so the caller recovers the .partial
            try:
                self._buffer_spill()
                self._seal(last=True)
                body_bytes = self._offset
                end_ns, frames = self._progress
                trailer = encode_trailer(
                    STATE_SEALED, self._index, self._payload_bytes, body_bytes, end_ns, frames,
                    self._hasher.digest(), self._signing_key,
                )
                hasher = self._hasher.copy()
                hasher.update(trailer)
                self._append(trailer, hasher)
            except BaseException:
                self._release_fd()
                raise
            self._release_fd(sync=True)
            os.rename(self._partial, self._path)
            fsync_dir(self._path.parent, strict=True)  # strict: the sealed name is what gets catalogued
            sealed = SealedSegment(
                path=self._path, meta=self.meta, digest=self._hasher.digest(), size_bytes=self._offset,
                chunks=self._index, payload_bytes=self._payload_bytes, frames=frames,
                end_ns=end_ns, state="sealed",
                device_key_id=self._device_key_id,
                recipient_key_ids=self._recipient_ids,
            )
        log.info(
            "segment sealed camera=%s sequence=%d path=%s chunks=%d bytes=%d",
            self.meta.camera, self.meta.sequence, self._path, sealed.chunks, sealed.size_bytes,
        )
        return sealed

    def abort(self) -> None:
        """Stop and delete the ``.partial`` (the segment is discarded). Does nothing after ``close``."""
        with self._lock:
            if self._closed:
                return
            self._release_fd()
            self._pending_bytes = 0
            self._spill = b""
            self._partial.unlink(missing_ok=True)
        log.info("segment aborted camera=%s sequence=%d path=%s", self.meta.camera, self.meta.sequence,
                 self._partial)

    # -- internals (called with self._lock held)
    def _check_usable(self) -> None:
        if self._broken is not None:  # first: a broken writer is closed by close() and still says why
            raise SegmentError(
                self._partial, self._offset,
                f"writer stopped after an I/O error ({self._broken}); recover the .partial file",
            )
        if self._closed:
            raise RuntimeError(f"segment writer for {self._path} is closed")

    def _seal(self, last: bool) -> None:
        """Seal the buffer as the next chunk and write it."""
        self._write_unwritten()  # records reach the file in nonce order
        n = self._pending_bytes
        # The running hash only advances once the record is in the file.
        hasher = self._hasher.copy()
        end_ns, frames = self._progress
        size = seal_chunk_into(
            self._aead, self._header_hash, hasher, self._index, last, end_ns, frames, self._buffer[:n],
            self._record,
        )
        # The nonce is used and the plaintext consumed: from here on this chunk exists only as these exact
        # bytes. A failed write is retried with them (``_record`` is not reused until they are written);
        # sealing other data under the same nonce would give away the keystream (and GCM's hash key).
        self._index += 1
        self._payload_bytes += n
        self._pending_bytes = 0
        self._first_pending = None
        self._unwritten = (self._record[:size], hasher, n)
        self._write_unwritten()

    def _buffer_spill(self) -> None:
        """Move ``_spill`` into the buffer, sealing each chunk it fills. What a failed seal leaves stays."""
        if not self._spill:
            return
        view, pos = memoryview(self._spill), 0
        try:
            while pos < len(view):
                pending = self._pending_bytes
                if not pending:
                    # As old as the spill: data a full disk held back is not new when there is room again.
                    self._first_pending = self._spill_since
                take = min(len(view) - pos, self._chunk_bytes - pending)
                self._buffer[pending : pending + take] = view[pos : pos + take]
                self._pending_bytes = pending + take
                pos += take
                if self._pending_bytes == self._chunk_bytes:
                    self._seal(last=False)
        finally:
            self._spill = bytes(view[pos:]) if pos < len(view) else b""

    def _write_unwritten(self) -> None:
        if self._unwritten is not None:
            record, hasher, _ = self._unwritten
            self._append(record, hasher)
            self._unwritten = None

    def _append(self, data: bytes | memoryview, hasher_after: Any) -> None:
        """Write ``data`` at the end of the file in one ``os.write``; on failure cut the torn bytes.

        ``hasher_after`` is the running file hash including ``data``; it replaces the writer's only once
        every byte is written.
        """
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._offset)
                os.lseek(self._fd, self._offset, os.SEEK_SET)
            except OSError:
                self._broken = exc
            log.error("segment write failed path=%s offset=%d error=%s", self._partial, self._offset, exc)
            raise
        self._hasher = hasher_after
        self._offset += len(data)

    def _release_fd(self, *, sync: bool = False) -> None:
        """Close the descriptor once; later calls do nothing (closing a number twice could close a file
        some other thread has opened since under the same number)."""
        self._closed = True
        with self._sync_lock:
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            try:
                if sync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_int64(name: str, value: int) -> None:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} must fit a signed 64-bit integer")


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class _Chunk:
    index: int
    offset: int
    prefix: bytes
    ciphertext: bytes
    check_ok: bool | None  # None: not checkable, an earlier chunk's check already failed

    @property
    def last(self) -> bool:
        return self.prefix[0] == KIND_FINAL_CHUNK

    @property
    def end_ns(self) -> int:
        return _CHUNK_PREFIX.unpack(self.prefix)[2]

    @property
    def frames(self) -> int:
        return _CHUNK_PREFIX.unpack(self.prefix)[3]

    @property
    def end_offset(self) -> int:
        return self.offset + _CHUNK_PREFIX.size + len(self.ciphertext) + CHECK_BYTES


@dataclass(frozen=True)
class _Trailer:
    offset: int
    raw: bytes
    computed_hash: bytes  # SHA-256 of the file before the trailer, as read

    @property
    def fields(self) -> tuple[int, int, int, int, int, int, int, bytes]:
        return _TRAILER_BODY.unpack_from(self.raw, 0)


@dataclass
class _Tally:
    """What the chunks read so far add up to (compared against the trailer)."""

    chunks: int = 0
    payload_bytes: int = 0
    end_ns: int = 0
    frames: int = 0
    seen_final: bool = False

    def add(self, chunk: _Chunk) -> None:
        self.chunks += 1
        self.payload_bytes += len(chunk.ciphertext) - TAG_BYTES
        self.end_ns, self.frames = chunk.end_ns, chunk.frames
        self.seen_final = self.seen_final or chunk.last


class _Source:
    """A segment file being read front to back: bounded reads, running SHA-256, offset for errors."""

    def __init__(self, f: BinaryIO, path: Path):
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size
        self.offset = 0
        self.hasher = hashlib.sha256()

    def read(self, n: int, what: str, record_start: int) -> bytes:
        """``n`` more bytes of the record that begins at ``record_start``. A truncation is reported at
        the record's first byte (the header's is 0): that is where recovery cuts, and the record it names."""
        data = self.f.read(n)
        if len(data) < n:
            present = self.offset + len(data) - record_start
            raise SegmentError(
                self.path, record_start,
                f"truncated {what}: the file ends {present} bytes into this record (needs "
                f"{self.offset + n - record_start})",
            )
        self.hasher.update(data)
        self.offset += n
        return data

    def read_kind(self) -> tuple[int | None, bytes]:
        """Read a record's type byte; for a trailer also SHA-256 of the file before it."""
        data = self.f.read(1)
        before = self.hasher.digest() if data == bytes([KIND_TRAILER]) else b""
        self.hasher.update(data)
        self.offset += len(data)
        return (data[0] if data else None), before


Report = Callable[[SegmentError], None]


def _raise(error: SegmentError) -> None:
    raise error


def _read_header(src: _Source) -> Header:
    if src.size < 16:
        raise SegmentError(src.path, 0, f"not an edgerec segment: only {src.size} bytes")
    fixed = src.read(16, "header", 0)
    if fixed[:8] != MAGIC:
        raise SegmentError(src.path, 0, "not an edgerec segment (bad magic)")
    header_len = struct.unpack_from(">I", fixed, 12)[0]
    version, suite = struct.unpack_from(">HH", fixed, 8)
    if (
        version == FORMAT_VERSION
        and suite in SUITE_NAMES
        and HEADER_MIN_BYTES <= header_len <= HEADER_MAX_BYTES
    ):
        return parse_header(fixed + src.read(header_len - 16, "header", 0), src.path)
    return parse_header(fixed, src.path)  # raises, naming the bad field


def _scan(src: _Source, header: Header, report: Report) -> Iterator[_Chunk | _Trailer]:
    """Yield every chunk record, then the trailer; problems that keep the framing go to ``report``,
    framing-breaking ones raise.

    Each check covers the whole file before it, so only the first mismatch locates damage: the checks
    after it cannot match and are not reported again (a keyed reader still authenticates those chunks).
    """
    max_ct = header.chunk_max_bytes + TAG_BYTES
    index = 0
    seen_final = False
    checks_valid = True  # no check mismatch yet: later checks still say something
    while True:
        start = src.offset
        kind, hash_before = src.read_kind()
        if kind is None:
            raise SegmentError(
                src.path, start,
                f"missing trailer: the file ends after {index} chunks (not closed, or truncated)",
            )
        if kind in (KIND_CHUNK, KIND_FINAL_CHUNK):
            rest = src.read(_CHUNK_PREFIX.size - 1, f"chunk {index}", start)
            prefix = bytes([kind]) + rest
            _, ct_len, _, _ = _CHUNK_PREFIX.unpack(prefix)
            if not TAG_BYTES <= ct_len <= max_ct:
                raise SegmentError(
                    src.path, start + 1,
                    f"chunk {index} length {ct_len} out of range {TAG_BYTES}..{max_ct} (framing lost)",
                )
            if seen_final:
                report(SegmentError(src.path, start, f"chunk {index} follows the final chunk"))
            if kind == KIND_CHUNK and ct_len == TAG_BYTES:
                report(SegmentError(src.path, start, f"chunk {index} is empty but not final"))
            ciphertext = src.read(ct_len, f"chunk {index}", start)
            check_offset = src.offset
            expected = chunk_check(src.hasher)
            check = src.read(CHECK_BYTES, f"chunk {index}", start)
            check_ok = hmac.compare_digest(check, expected) if checks_valid else None
            if check_ok is False:
                checks_valid = False
                report(SegmentError(
                    src.path, check_offset,
                    f"chunk {index} check mismatch: altered, moved, or taken from another segment "
                    "(the checks of later chunks depend on it and are not reported)",
                ))
            yield _Chunk(index, start, prefix, ciphertext, check_ok)
            index += 1
            seen_final = seen_final or kind == KIND_FINAL_CHUNK
        elif kind == KIND_TRAILER:
            raw = bytes([kind]) + src.read(TRAILER_BYTES - 1, "trailer", start)
            if src.size > src.offset:
                report(SegmentError(
                    src.path, src.offset,
                    f"{src.size - src.offset} bytes of unexpected data after the trailer",
                ))
            yield _Trailer(start, raw, hash_before)
            return
        else:
            raise SegmentError(src.path, start, f"unknown record type 0x{kind:02x} (framing lost)")


def _check_trailer(
    src: _Source, header: Header, trailer: _Trailer, tally: _Tally, report: Report,
    device_key: Ed25519PublicKey | None,
) -> None:
    """Every trailer check, in the order the spec lists them."""
    _, state, chunks, payload, body_bytes, end_ns, frames, file_hash = trailer.fields
    off = trailer.offset

    def bad(rel: int, what: str) -> None:
        report(SegmentError(src.path, off + rel, what))

    if state not in _STATE_NAMES:
        bad(1, f"unknown trailer state {state}")
    if body_bytes != off:
        bad(14, f"trailer says the body is {body_bytes} bytes, it is {off}")
    if chunks != tally.chunks:
        bad(2, f"trailer says {chunks} chunks, the file has {tally.chunks}")
    if payload != tally.payload_bytes:
        bad(6, f"trailer says {payload} payload bytes, the chunks hold {tally.payload_bytes}")
    expected_end, expected_frames = (
        (tally.end_ns, tally.frames) if tally.chunks else (header.meta.start_ns, 0)
    )
    if end_ns != expected_end:
        bad(22, f"trailer end time {end_ns} differs from the last chunk's {expected_end}")
    if frames != expected_frames:
        bad(30, f"trailer frame count {frames} differs from the last chunk's {expected_frames}")
    if state == STATE_SEALED and not tally.seen_final:
        bad(0, "sealed segment has no final chunk (truncated and given a new trailer?)")
    if not hmac.compare_digest(file_hash, trailer.computed_hash):
        bad(34, "trailer hash mismatch: the file before the trailer was altered")
    try:
        signer = Ed25519PublicKey.from_public_bytes(header.device_public)
    except ValueError:
        report(SegmentError(src.path, 36, "device public key in the header is invalid"))
        return
    if device_key is not None and _raw_public(device_key) != header.device_public:
        report(SegmentError(
            src.path, 36,
            f"signed by device key {format_key_id(device_key_id(signer))}, "
            f"expected {format_key_id(device_key_id(device_key))}",
        ))
    try:
        body, signature = trailer.raw[: _TRAILER_BODY.size], trailer.raw[_TRAILER_BODY.size :]
        signer.verify(signature, trailer_signed_bytes(body))
    except InvalidSignature:
        bad(_TRAILER_BODY.size, "trailer signature invalid: the trailer or the header's device key changed")


# The errors of open(2) that say the path itself names no segment file, whenever it is tried: nothing is
# there (ENOENT; a dangling symlink too), a component of the path is not a directory (ENOTDIR), the name
# cannot be resolved at all (ELOOP: a symlink loop; ENAMETOOLONG), or it names a directory (EISDIR) or a
# special file without a device behind it (ENXIO, ENODEV: a socket, a device node). These, and a path that
# opens but is no regular file (a directory, a FIFO, a device), are SegmentError, which callers act on by
# setting the file aside or giving the segment up. Every other error is one of the system or of the
# moment, not of the file (EIO, EMFILE, ENFILE, ENOMEM, EACCES, EPERM, EROFS, ESTALE, EAGAIN, ...): it
# propagates as OSError, and callers keep the file and try again, or report it. An errno not named here
# is taken as one of those: when in doubt, the file is kept.
_NO_SUCH_PATH = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})  # leads nowhere
_NOT_A_SEGMENT_PATH = _NO_SUCH_PATH | {errno.EISDIR, errno.ENXIO, errno.ENODEV}
_OPEN_FLAGS = {"rb": os.O_RDONLY, "r+b": os.O_RDWR}
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever (a FIFO named like a
# segment in the data directory, or in a copy of one, would hang start-up or verify). It changes nothing
# for a regular file, and is cleared again once the file is known to be one. Windows has neither.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _open_path(path: Path, mode: Literal["rb", "r+b"] = "rb") -> io.BufferedReader | io.BufferedRandom:
    """Open a segment file (``mode`` as ``open``): SegmentError when the path names no regular file (it is
    not a segment, and never will be), OSError when the open failed for any other reason (see
    ``_NOT_A_SEGMENT_PATH``)."""
    try:
        fd = os.open(path, _OPEN_FLAGS[mode] | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        if exc.errno in _NOT_A_SEGMENT_PATH:
            raise SegmentError(path, None, f"cannot open segment: {exc.strerror}") from None
        raise
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            what = _FILE_KINDS.get(kind, "a special file")
            raise SegmentError(path, None, f"cannot open segment: not a regular file ({what})")
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb") if mode == "rb" else os.fdopen(fd, "r+b")


def _present(path: Path) -> bool:
    """Whether something is at ``path``, by the same rule as ``_open_path``: only an error that says the
    name leads nowhere means absent; any other error of ``stat`` propagates (``Path.exists`` answers
    False for every error on newer Pythons, and an I/O error would then read as "the file is gone")."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in _NO_SUCH_PATH:
            return False
        raise
    return True


def _unwrap_file_key(header: Header, private_key: X25519PrivateKey, path: Path) -> bytes:
    kid = key_id(private_key.public_key())
    candidates = [s for s in header.stanzas if s.key_id == kid]
    if not candidates:
        listed = ", ".join(format_key_id(s.key_id) for s in header.stanzas)
        raise SegmentError(
            path, header.core_len,
            f"recipient not in the header: key {format_key_id(kid)} is not one of {listed}",
        )
    info = wrap_info(header.raw[: header.core_len])
    for stanza in candidates:
        try:
            file_key = _HPKE.decrypt(stanza.wrapped, private_key, info=info)
        except (InvalidTag, ValueError):
            continue
        if len(file_key) == FILE_KEY_BYTES:
            return file_key
    raise SegmentError(
        path, candidates[0].offset,
        f"cannot unwrap the file key for key {format_key_id(kid)}: the header or the stanza was altered",
    )


def _payload_aead(header: Header, private_key: X25519PrivateKey, path: Path) -> PayloadAead:
    """Unwrap the file key, check the header MAC, return the payload cipher."""
    file_key = _unwrap_file_key(header, private_key, path)
    payload_key, mac_key = derive_keys(file_key, header.stream_nonce)
    mac_offset = len(header.raw) - HEADER_MAC_BYTES
    if not hmac.compare_digest(header.mac, header_mac(mac_key, header.raw[:mac_offset])):
        raise SegmentError(path, mac_offset, "header MAC mismatch: the header was altered")
    return payload_aead(header.suite, payload_key)


def _sealed_segment(path: Path, header: Header, trailer: _Trailer, digest: bytes, size: int) -> SealedSegment:
    _, state, chunks, payload, _, end_ns, frames, _ = trailer.fields
    signer = Ed25519PublicKey.from_public_bytes(header.device_public)
    return SealedSegment(
        path=path, meta=header.meta, digest=digest, size_bytes=size, chunks=chunks, payload_bytes=payload,
        frames=frames, end_ns=end_ns, state=_STATE_NAMES.get(state, f"unknown({state})"),
        device_key_id=device_key_id(signer), recipient_key_ids=tuple(s.key_id for s in header.stanzas),
    )


def read_header(path: Path) -> Header:
    """Parse only the header of a segment (or ``.partial``): metadata without reading the chunks."""
    path = Path(path)
    with _open_path(path) as f:
        return _read_header(_Source(f, path))


def read_info(path: Path, device_key: Ed25519PublicKey | None = None) -> SealedSegment:
    """Check a closed segment without any private key: framing, chunk checks, trailer hash, signature.

    With ``device_key``, the trailer must be signed by that key. Raises SegmentError on the first problem,
    OSError when the file cannot be opened or read for a reason of the system (see ``_open_path``): then
    nothing is known about the file.
    """
    path = Path(path)
    with _open_path(path) as f:
        src = _Source(f, path)
        return _read_closed(src, _read_header(src), device_key)


def _read_closed(src: _Source, header: Header, device_key: Ed25519PublicKey | None) -> SealedSegment:
    """``read_info`` from just after the header."""
    tally = _Tally()
    for record in _scan(src, header, _raise):
        if isinstance(record, _Chunk):
            tally.add(record)
        else:
            _check_trailer(src, header, record, tally, _raise, device_key)
            return _sealed_segment(src.path, header, record, src.hasher.digest(), src.offset)
    raise AssertionError("unreachable: _scan ends with a trailer or raises")  # pragma: no cover


@dataclass(frozen=True)
class SegmentCheck:
    """What ``check_segment`` found in one file: its problems, and what a chain walk needs from it."""

    path: Path
    problems: tuple[SegmentError, ...]
    header: Header | None  # None: the header failed H1-H10 and nothing after it was read
    digest: bytes | None  # SHA-256 of header..trailer as found (the chain link); None without a trailer
    state: str | None  # the trailer's state ("sealed", "recovered"); None without a readable trailer
    info: SealedSegment | None = None  # what ``read_info`` returns; only for a segment without problems

    @property
    def ok(self) -> bool:
        return not self.problems


def check_segment(
    path: Path,
    *,
    private_key: X25519PrivateKey | None = None,
    device_key: Ed25519PublicKey | None = None,
    prev_digest: bytes | None = None,
) -> SegmentCheck:
    """Every problem found in a segment (``docs/segment-format.md`` section 7), with its header and digest.

    Without ``private_key``: framing, chunk checks, trailer hash and signature, and the hash chain when
    ``prev_digest`` is given. With it: also unwrap the file key, check the header MAC and authenticate
    every chunk. A fatal problem ends the walk (it is the last one listed); the digest is that of the
    bytes as found, so it is known for a damaged segment too as long as its trailer was reached. An
    OSError (an open or read that failed for a reason of the system, ``_open_path``) is no problem of the
    file and is not listed: it propagates.
    """
    path = Path(path)
    problems: list[SegmentError] = []
    header: Header | None = None
    digest: bytes | None = None
    state: str | None = None
    trailer: _Trailer | None = None

    def report(error: SegmentError) -> None:
        if len(problems) < _MAX_REPORTED_PROBLEMS:
            problems.append(error)
        elif len(problems) == _MAX_REPORTED_PROBLEMS:
            problems.append(SegmentError(path, None, "too many problems; the rest are not listed"))

    try:
        with _open_path(path) as f:
            src = _Source(f, path)
            header = _read_header(src)
            if prev_digest is not None and header.meta.prev_digest != prev_digest:
                report(SegmentError(
                    path, 68, "hash chain broken: prev_digest differs from the previous segment's digest"
                ))
            aead = None
            if private_key is not None:
                try:
                    aead = _payload_aead(header, private_key, path)
                except SegmentError as exc:
                    report(exc)
            header_hash = header.hash
            tally = _Tally()
            for record in _scan(src, header, report):
                if isinstance(record, _Trailer):
                    _check_trailer(src, header, record, tally, report, device_key)
                    digest = src.hasher.digest()
                    state = _STATE_NAMES.get(record.fields[1], f"unknown({record.fields[1]})")
                    trailer = record
                    break
                tally.add(record)
                # A chunk whose own check failed is already reported; the tags of the chunks after
                # it are independent of the damage and say exactly which of them are intact.
                if aead is not None and record.check_ok is not False:
                    try:
                        open_chunk(aead, header_hash, record.index, record.prefix, record.ciphertext)
                    except InvalidTag:
                        report(_auth_error(path, record))
    except SegmentError as exc:
        report(exc)
    info = None
    if not problems and header is not None and trailer is not None and digest is not None:
        info = _sealed_segment(path, header, trailer, digest, trailer.offset + TRAILER_BYTES)
    return SegmentCheck(path, tuple(problems), header, digest, state, info)


def verify(
    path: Path,
    *,
    private_key: X25519PrivateKey | None = None,
    device_key: Ed25519PublicKey | None = None,
    prev_digest: bytes | None = None,
) -> list[SegmentError]:
    """Every problem found in a segment (empty list: good); see ``check_segment``."""
    return list(check_segment(path, private_key=private_key, device_key=device_key,
                              prev_digest=prev_digest).problems)


def _auth_error(path: Path, chunk: _Chunk) -> SegmentError:
    return SegmentError(
        path, chunk.offset,
        f"chunk {chunk.index} authentication failed: altered, reordered, a chunk dropped, or spliced",
    )


def decrypt(
    path: Path,
    private_key: X25519PrivateKey,
    *,
    allow_recovered: bool = False,
    recover: bool = False,
    errors: list[SegmentError] | None = None,
) -> Iterator[bytes]:
    """Yield the plaintext chunk by chunk.

    Strict (default): raises SegmentError on the first problem. A segment closed by crash recovery
    (state ``recovered``: it ends at its last intact chunk) is refused unless ``allow_recovered``, so
    nobody takes a cut-short segment for a whole one by accident; a caller that allows it must say so
    where it presents the footage (export names it in its manifest). A chunk is yielded only after it
    authenticated, so the caller has to consume to the end before trusting the whole.

    ``recover=True`` (salvage): yields every chunk that authenticates and stops at the first problem,
    appending it to ``errors`` (when given) so the caller can report it; a recovered segment reads to its
    end with no error.
    """
    if not recover:
        return _decrypt_strict(Path(path), private_key, accept_recovered=allow_recovered)
    return _decrypt_recovering(_decrypt_strict(Path(path), private_key, accept_recovered=True), errors)


def _decrypt_recovering(strict: Iterator[bytes], errors: list[SegmentError] | None) -> Iterator[bytes]:
    try:
        yield from strict
    except SegmentError as exc:
        log.warning("segment read stopped early path=%s offset=%s what=%s", exc.path, exc.offset, exc.what)
        if errors is not None:
            errors.append(exc)


def _decrypt_strict(path: Path, private_key: X25519PrivateKey, *, accept_recovered: bool) -> Iterator[bytes]:
    """Yield authenticated chunks; raise on the first problem. ``accept_recovered``: a valid trailer of
    state ``recovered`` ends the segment, with or without a final chunk (its signature is by the header's
    device key, which the header MAC authenticated, so a truncation by anyone else is still detected)."""
    with _open_path(path) as f:
        src = _Source(f, path)
        header = _read_header(src)
        aead = _payload_aead(header, private_key, path)
        header_hash = header.hash
        tally = _Tally()
        for record in _scan(src, header, _raise):
            if isinstance(record, _Trailer):
                _check_trailer(src, header, record, tally, _raise, None)  # T8: sealed needs a final chunk
                if record.fields[1] == STATE_RECOVERED and not accept_recovered:
                    raise SegmentError(
                        path, record.offset + 1,
                        "recovered segment: closed by crash recovery at its last intact chunk, the rest "
                        "was lost; read it allowing recovered segments",
                    )
                return
            try:
                plaintext = open_chunk(aead, header_hash, record.index, record.prefix, record.ciphertext)
            except InvalidTag:
                raise _auth_error(path, record) from None
            tally.add(record)
            yield plaintext


# ------------------------------------------------------------------------------------------- hash chains

GENESIS_DIGEST = bytes(DIGEST_BYTES)  # prev_digest of a camera's first segment

# How a segment follows the one before it in a chain walk (spec section 7.6). The first two are problems.
LINK_BROKEN = "broken"  # next sequence number, previous segment intact, but prev_digest differs
LINK_DUPLICATE = "duplicate"  # two segments claim one sequence number: the chain forked
LINK_OK = "ok"  # next sequence number and prev_digest is the previous segment's digest
LINK_SKIP = "skip"  # numbers skipped, link intact: the segments in between were never closed
LINK_GAP = "gap"  # numbers skipped, link to another segment: the ones in between are not here
LINK_UNCONFIRMED = "unconfirmed"  # the previous segment is damaged: its digest proves nothing
LINK_START = "start"  # the camera's first segment ever (prev_digest all zero)
LINK_FIRST = "first"  # first of the walk, its predecessors are not here (retention, or not selected)
# next sequence number, linked to the segment before the previous one, as the previous one is: it could not
# be read when this one began (the recorder gave it up, or start-up kept it in place), so the chain went on
# from the last sealed one; start-up recovered or adopted it later
LINK_PAST = "past"
LINK_PROBLEMS = frozenset({LINK_BROKEN, LINK_DUPLICATE})


@dataclass(frozen=True)
class ChainLink:
    """One segment as a chain walk sees it: from its header, and its digest as found."""

    sequence: int
    prev_digest: bytes
    digest: bytes | None  # None: not known (the walk through the file did not reach its trailer)
    intact: bool  # the file passed every check
    # Closed by recovery (its signed trailer says "recovered"); only ever known of an intact file: the
    # state of a damaged one proves nothing.
    recovered: bool = False

    @classmethod
    def of(cls, check: SegmentCheck) -> ChainLink | None:
        """None when the header itself is unreadable: such a file has no place in the chain."""
        if check.header is None:
            return None
        meta = check.header.meta
        recovered = check.ok and check.state == _STATE_NAMES[STATE_RECOVERED]
        return cls(meta.sequence, meta.prev_digest, check.digest, check.ok, recovered)


def chain_order(links: Sequence[tuple[ChainLink, Any]]) -> list[tuple[ChainLink, Any]]:
    """A camera's segments in chain order: by sequence number (never by name or start time, which a
    clock step can move backwards and which the file name does not authenticate)."""
    return sorted(links, key=lambda item: item[0].sequence)


def link_status(previous: ChainLink | None, current: ChainLink, *, before: ChainLink | None = None) -> str:
    """How ``current`` follows ``previous``, the segment of the same camera walked just before it (by
    sequence); ``before`` is the one walked before ``previous`` (None: there is none), or after a ``past``
    link the one that link went on from (``walked_before``). One of the ``LINK_*`` values;
    ``LINK_PROBLEMS`` are breaks, the others are explained."""
    if previous is None:
        return LINK_START if current.prev_digest == GENESIS_DIGEST else LINK_FIRST
    if current.sequence == previous.sequence:
        return LINK_DUPLICATE
    linked = _links_to(current, previous)
    if current.sequence == previous.sequence + 1:
        if linked:
            return LINK_OK
        if not previous.intact:
            return LINK_UNCONFIRMED
        return LINK_PAST if _goes_on_past(before, previous, current) else LINK_BROKEN
    if linked:
        return LINK_SKIP
    return LINK_GAP if previous.intact else LINK_UNCONFIRMED


def walked_before(status: str, before: ChainLink | None, previous: ChainLink | None) -> ChainLink | None:
    """The ``before`` of a chain walk's next step, once ``current`` followed ``previous`` with ``status``:
    ``previous``, except after a ``past`` link, when the chain still goes on from ``before``. A recorder
    that gives up two segments in a row links the next one to the last segment it sealed, as it did the
    first: each of the three then goes on past the one before it to that same segment."""
    return before if status == LINK_PAST else previous


def _links_to(current: ChainLink, previous: ChainLink) -> bool:
    return previous.digest is not None and hmac.compare_digest(current.prev_digest, previous.digest)


def _goes_on_past(before: ChainLink | None, previous: ChainLink, current: ChainLink) -> bool:
    """Whether ``current`` (numbered right after ``previous``) goes on past ``previous`` the way the chain
    goes on past a segment that could not be read when ``current`` began: the recorder gave it up (it
    could neither seal nor read it), or start-up kept it in place (a ``.partial``, or a sealed segment the
    catalog lacked, that an error of the system kept from being recovered or adopted). The next segment
    was then numbered after it and linked to the last segment sealed before it, and a later start
    recovered or adopted it (``docs/design/storage.md``). Exactly that shape and nothing else:
    ``previous``, ``current`` and ``before`` intact, ``before`` numbered lower, and both ``previous`` and
    ``current`` linking to ``before``. ``previous`` may be ``recovered`` or ``sealed``: a complete
    ``.partial`` (crash between trailer and rename) is recovered as ``sealed``, a seal whose directory
    fsync failed after the rename leaves a sealed file the recorder may give up, and a sealed segment
    kept out of the catalog is adopted as it is.

    This explains no tampering. ``prev_digest`` is in the signed header and every trailer is signed, so
    without the device's signing key nobody can make a segment N+1 that links to N-1, nor an N (sealed
    or recovered) that links to N-1: all three files and both links were written by this device, and
    all three are here, intact. What could the shape hide? Not N removed: the shape needs N here (N
    gone leaves N+1 after N-1, a ``skip`` whose hole the audit log must account for). Not N altered: it
    would not be intact. Not N replaced: an N that verifies and links to N-1 is one the device signed,
    and an N+1 written after any N links to that N's digest, never past it; a second N exists only if
    the device forked, as below. Not a later segment removed: a segment linking to N (an N+1 written
    after N) would need the device to have numbered two segments N+1, one after N and one past it, which
    it does only when the state it starts from was rolled back or hidden (an older catalog with N's file
    out of reach, and the other N+1 out of reach too); the other branch removed then is a chain's newest
    segments removed, which no chain walk can tell from a chain that ends there (the shape with a
    ``recovered`` N, which a power cut makes, allows the same), and which the published chain heads
    catch once a head on that branch was published (``rollback_suspected`` at start, ``edgerec verify
    --head``). So requiring a ``recovered`` N would add no protection, only report an honest device's
    chain as broken."""
    if before is None or not (previous.intact and current.intact and before.intact):
        return False  # a damaged file proves nothing: its header and digest are not authenticated
    if before.sequence >= previous.sequence:
        return False
    return _links_to(previous, before) and _links_to(current, before)


def past_note(before: ChainLink, previous: ChainLink) -> str:
    """What a chain walk notes about a ``LINK_PAST`` link (after the segment's name)."""
    taken = "recovered" if previous.recovered else "catalogued"
    return (f"goes on from sequence {before.sequence}, not from sequence {previous.sequence}: sequence "
            f"{previous.sequence} could not be read when this one began (the recorder gave it up, or "
            "start-up kept it in place), so the chain went on from the last segment sealed before it; "
            f"start-up {taken} it later")


# ----------------------------------------------------------------------------------------------- recovery


@dataclass
class _GoodPrefix:
    """The longest run of intact records at the start of a partial file."""

    end_offset: int
    hasher: Any  # hashlib sha256 state at end_offset
    tally: _Tally = field(default_factory=_Tally)
    complete_trailer: _Trailer | None = None
    cut_reason: SegmentError | None = None


def _good_prefix(src: _Source, header: Header, signing_pub: Ed25519PublicKey) -> _GoodPrefix:
    good = _GoodPrefix(src.offset, src.hasher.copy())
    try:
        for record in _scan(src, header, _raise):
            if isinstance(record, _Chunk):
                good.tally.add(record)
                good.end_offset = src.offset
                good.hasher = src.hasher.copy()
            else:
                _check_trailer(src, header, record, good.tally, _raise, signing_pub)
                good.complete_trailer = record
    except SegmentError as exc:
        good.cut_reason = exc
    return good


@dataclass(frozen=True)
class ReadablePrefix:
    """The part of a segment still being written that a reader can already use: header and complete
    chunks. Its bytes are a prefix of the sealed file (the writer only appends)."""

    size_bytes: int
    chunks: int
    end_ns: int  # media end of the last complete chunk (the header's start when there is none)
    frames: int = 0
    payload_bytes: int = 0


def readable_prefix(partial: Path) -> ReadablePrefix:
    """How much of a ``.partial`` file (one the recorder may be appending to) is complete chunks.

    Read-only: the keyless framing and checks only, as ``recover_partial`` judges them; a chunk being
    written is simply not counted yet. Raises SegmentError when not even the header is complete.
    """
    partial = Path(partial)
    with _open_path(partial) as f:
        src = _Source(f, partial)
        header = _read_header(src)
        good = _good_prefix(src, header, Ed25519PublicKey.from_public_bytes(header.device_public))
    tally = good.tally
    end_ns = tally.end_ns if tally.chunks else header.meta.start_ns
    return ReadablePrefix(good.end_offset, tally.chunks, end_ns,
                          tally.frames, tally.payload_bytes)


STATE_PROVISIONAL = "provisional"


def read_provisional(path: Path, private_key: X25519PrivateKey) -> tuple[SealedSegment, bytes]:
    """Decrypt a provisional copy (the complete-chunk prefix of a segment that was being written, as the
    offloader uploads it): every chunk must authenticate; it has no trailer, so no device signature.
    Raises SegmentError on damage anywhere before its end."""
    path = Path(path)
    prefix = readable_prefix(path)
    if prefix.size_bytes != path.stat().st_size:
        raise SegmentError(path, prefix.size_bytes, "damaged: not a run of complete chunks to its end")
    errors: list[SegmentError] = []
    payload = b"".join(decrypt(path, private_key, recover=True, errors=errors))
    real = [e for e in errors if e.offset is None or e.offset < prefix.size_bytes]
    if real:
        raise real[0]
    header = read_header(path)
    with _open_path(path) as f:
        digest = hashlib.file_digest(f, "sha256").digest()
    info = SealedSegment(path=path, meta=header.meta, digest=digest, size_bytes=prefix.size_bytes,
                         chunks=prefix.chunks, payload_bytes=prefix.payload_bytes, frames=prefix.frames,
                         end_ns=prefix.end_ns, state=STATE_PROVISIONAL,
                         device_key_id=device_key_id(Ed25519PublicKey.from_public_bytes(header.device_public)))
    return info, payload


def recover_partial(
    partial: Path, signing_key: Ed25519PrivateKey, *, meta: SegmentMeta | None = None,
    header_hash: bytes | None = None,
) -> SealedSegment:
    """Turn a ``.partial`` left by a crash (or by a seal that failed) into a closed segment with state
    ``recovered``.

    Keeps every complete chunk whose framing and keyless check are intact (the AEAD tags need a private
    key and are not checked), cuts off the rest, appends a trailer signed with ``signing_key``, fsyncs
    and renames to the final name. A partial that is in fact complete (crash between trailer and
    rename) is only renamed and keeps state ``sealed``. A partial without even a complete header raises
    SegmentError: the caller deletes or quarantines it. A partial beside an existing final file is
    refused (SegmentError): two files would claim one name.

    A seal (``SegmentWriter.close``, or an earlier call of this function) that got as far as the rename
    and then failed to fsync the directory leaves no ``.partial``, only the final file: that file is
    checked completely (framing, chunk checks, hash, signature by ``signing_key``), its directory entry
    made durable, and it is returned as it is (state as in its trailer); SegmentError when it fails a
    check. With neither file there, SegmentError. OSError (the directory fsync failing again, an open or
    read error of the system or the moment: EIO, EMFILE, EACCES, ...; see ``_open_path``) means: the
    file is kept as it is, try again later.

    ``meta`` and ``header_hash`` (``SegmentWriter.meta`` and ``header_hash`` of the writer that left the
    segment): the file found, ``.partial`` or final, must be that very segment, or SegmentError before
    anything is changed. Without them any segment of this device's key is taken (start-up reconciliation,
    which has nothing to compare with); with them, another segment moved or copied under the name (an
    older one of the same camera, say, also signed by this device) is never adopted in its place, where it
    would fork the chain.
    """
    partial = Path(partial)
    if not partial.name.endswith(PARTIAL_SUFFIX):
        raise SegmentError(partial, None, f"not a {PARTIAL_SUFFIX} file")
    final = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    if _present(final):
        if not _present(partial):
            return _confirm_renamed(final, partial, signing_key, meta, header_hash)
        raise SegmentError(final, None, f"already exists; not replacing it with the recovered {partial.name}")
    if not _present(partial):
        raise SegmentError(partial, None, f"gone, and {final.name} is not there either: nothing to recover "
                                          "(deleted or moved away)")
    signing_pub = signing_key.public_key()
    with _open_path(partial, "r+b") as f:
        src = _Source(f, partial)
        header = _read_header(src)
        _check_identity(partial, header, meta, header_hash)
        if header.device_public != _raw_public(signing_pub):
            raise SegmentError(
                partial, 36, "written with a different device key than this device's; not re-signing it"
            )
        good = _good_prefix(src, header, signing_pub)
        if good.complete_trailer is not None and good.cut_reason is None:
            os.fdatasync(f.fileno())
            sealed_trailer = good.complete_trailer
            size = src.offset
            digest = src.hasher.digest()
        else:
            tally = good.tally
            end_ns, frames = (tally.end_ns, tally.frames) if tally.chunks else (header.meta.start_ns, 0)
            trailer = encode_trailer(
                STATE_RECOVERED, tally.chunks, tally.payload_bytes, good.end_offset, end_ns, frames,
                good.hasher.digest(), signing_key,
            )
            f.truncate(good.end_offset)
            f.seek(good.end_offset)
            f.write(trailer)
            f.flush()
            os.fdatasync(f.fileno())
            good.hasher.update(trailer)
            digest = good.hasher.digest()
            size = good.end_offset + len(trailer)
            sealed_trailer = _Trailer(good.end_offset, trailer, b"")
            cut = good.cut_reason
            log.warning(
                "segment recovered path=%s chunks=%d kept_bytes=%d cut_bytes=%d reason=%r",
                final, tally.chunks, good.end_offset, src.size - good.end_offset, cut.what if cut else "",
            )
    os.rename(partial, final)
    fsync_dir(final.parent, strict=True)  # strict: the recovered segment is catalogued next
    return _sealed_segment(final, header, sealed_trailer, digest, size)


def _check_identity(path: Path, header: Header, meta: SegmentMeta | None, header_hash: bytes | None) -> None:
    """SegmentError unless ``header`` is the one expected (see ``recover_partial``)."""
    if meta is not None and header.meta != meta:
        found = header.meta
        differ = [f.name for f in fields(SegmentMeta) if getattr(found, f.name) != getattr(meta, f.name)]
        raise SegmentError(path, 0, f"not the segment to recover (camera {meta.camera}, sequence "
                                    f"{meta.sequence}): its header differs in {', '.join(differ)}")
    if header_hash is not None and not hmac.compare_digest(header.hash, header_hash):
        who = f" (camera {meta.camera}, sequence {meta.sequence})" if meta is not None else ""
        raise SegmentError(path, 0, f"not the segment to recover{who}: another file's header")


def _confirm_renamed(
    final: Path, partial: Path, signing_key: Ed25519PrivateKey, meta: SegmentMeta | None,
    header_hash: bytes | None,
) -> SealedSegment:
    """The segment a seal renamed to ``final`` before its directory fsync failed: whole, signed by this
    device and (given ``meta``/``header_hash``) the one expected, or SegmentError; header and body are
    judged through one descriptor, so they are of one file. Its directory entry is made durable now
    (strict, as the seal's was): the caller goes on with the chain from it and catalogues it. An OSError
    (opening or reading it, the directory fsync) says nothing about the file: it propagates, and the caller
    tries again."""
    try:
        with _open_path(final) as f:
            src = _Source(f, final)
            header = _read_header(src)
            _check_identity(final, header, meta, header_hash)
            sealed = _read_closed(src, header, signing_key.public_key())
    except SegmentError as exc:
        raise SegmentError(final, exc.offset, f"no {partial.name} to recover, and the file under the final "
                                              f"name fails its check: {exc.what}") from exc
    fsync_dir(final.parent, strict=True)
    log.warning("segment found renamed to its final name by a seal that failed after the rename; its "
                "directory entry is durable now path=%s state=%s", final, sealed.state)
    return sealed
