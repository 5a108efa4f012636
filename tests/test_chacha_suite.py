"""The ChaCha20-Poly1305 cipher suite (suite 2) of the segment format: vectors read from the spec's words,
round trip, recovery, tampering, a chain that changes suite, export, refusal of unknown suites, and the
config's ``segment_cipher`` with ``auto``."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from edgerec import inventory, keys, segfile
from edgerec.ciphersuite import cpu_has_aes, resolve_suite, suite_for_config
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.errors import SegmentError
from edgerec.export import ExportAccess, export_segments
from edgerec.recorder import ChainState, Recorder
from edgerec.segfile import SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305, SegmentWriter
from tests.helpers.media import decoded_frame_hashes, make_h264_clip
from tests.helpers.segments import START_NS, TestKeys, make_keys, make_meta, split_records

VECTORS = Path(__file__).parent / "vectors"
CHACHA = SUITE_CHACHA20_POLY1305


@pytest.fixture(scope="module")
def tk() -> TestKeys:
    return make_keys()


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256, 32 bytes (one block), written out: independent of the module."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _write(path: Path, data: bytes, tk: TestKeys, *, suite: int = CHACHA, chunk_bytes: int = 64,
           meta: segfile.SegmentMeta | None = None) -> SegmentWriter:
    writer = SegmentWriter(path, meta or make_meta(), [tk.recipient_public], tk.device,
                           chunk_bytes=chunk_bytes, suite=suite)
    for i in range(0, len(data), 50):
        writer.write(data[i : i + 50])
        writer.note(START_NS + (i + 50) * 1_000_000, i // 50 + 1)
    return writer


# ----- vectors, read from the words of docs/segment-format.md ----------------------------------------------
def test_chacha_payload_vector_matches_the_spec() -> None:
    v = json.loads((VECTORS / "payload-v1-chacha.json").read_text())
    assert v["suite"] == 2
    file_key, stream_nonce = bytes.fromhex(v["file_key"]), bytes.fromhex(v["stream_nonce"])
    payload_key = _hkdf(file_key, stream_nonce, b"edgerec segment v1 payload")
    assert payload_key.hex() == v["payload_key"]
    header_hash = hashlib.sha256(bytes.fromhex(v["header_without_mac"]) + bytes.fromhex(v["header_mac"]))
    file_so_far = bytes.fromhex(v["header_without_mac"]) + bytes.fromhex(v["header_mac"])
    aead = ChaCha20Poly1305(payload_key)
    for c in v["chunks"]:
        plaintext = bytes.fromhex(c["plaintext"])
        nonce = c["index"].to_bytes(11, "big") + bytes([1 if c["last"] else 0])
        prefix = struct.pack(">BIqI", 2 if c["last"] else 1, len(plaintext) + 16, c["end_ns"], c["frames"])
        ct = aead.encrypt(nonce, plaintext, header_hash.digest() + prefix)
        record = prefix + ct + hashlib.sha256(file_so_far + prefix + ct).digest()[:16]
        assert record.hex() == c["record"]
        file_so_far += record
    aes = json.loads((VECTORS / "payload-v1.json").read_text())
    assert aes["payload_key"] == v["payload_key"]  # one key schedule for both suites
    assert aes["chunks"][0]["record"] != v["chunks"][0]["record"]


def test_chacha_segment_vector_decrypts_with_an_independent_reader() -> None:
    """Only cryptography's primitives and the spec: header fields, HPKE unwrap, HKDF, chunk decryption."""
    v = json.loads((VECTORS / "segment-v1-chacha.json").read_text())
    blob = (VECTORS / v["file"]).read_bytes()
    version, suite, header_len, chunk_max = struct.unpack_from(">HHII", blob, 8)
    assert (blob[:8], version, suite) == (b"EDGERSEG", 1, 2)
    pos = 125
    for _ in range(5):
        pos += 1 + blob[pos]
    core = blob[: pos + 1]
    key = keys.parse_private_key(v["recipient_secrets"][0])
    wrapped = blob[pos + 1 + 8 : pos + 1 + 88]  # the first stanza is the first recipient's
    info = b"edgerec segment v1 wrap\x00" + hashlib.sha256(core).digest()
    file_key = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM).decrypt(wrapped, key, info=info)
    aead = ChaCha20Poly1305(_hkdf(file_key, blob[20:36], b"edgerec segment v1 payload"))
    header_hash = hashlib.sha256(blob[:header_len]).digest()
    plaintext, index, pos = b"", 0, header_len
    while blob[pos] in (1, 2):
        ct_len = struct.unpack_from(">I", blob, pos + 1)[0]
        assert ct_len <= chunk_max + 16
        prefix, ct = blob[pos : pos + 17], blob[pos + 17 : pos + 17 + ct_len]
        nonce = index.to_bytes(11, "big") + bytes([blob[pos] - 1])
        plaintext += aead.decrypt(nonce, ct, header_hash + prefix)
        index, pos = index + 1, pos + 17 + ct_len + 16
    assert plaintext.hex() == v["plaintext"]
    assert len(blob) - pos == 130 and blob[pos] == 3


def test_chacha_segment_vector_reads_and_verifies_with_the_module() -> None:
    v = json.loads((VECTORS / "segment-v1-chacha.json").read_text())
    path = VECTORS / v["file"]
    device = keys.parse_device_public_key(v["device_public_key"])
    info = segfile.read_info(path, device)
    assert info.digest.hex() == v["digest"]
    assert segfile.read_header(path).suite == CHACHA
    for secret in v["recipient_secrets"]:
        key = keys.parse_private_key(secret)
        assert b"".join(segfile.decrypt(path, key)).hex() == v["plaintext"]
        assert segfile.verify(path, private_key=key, device_key=device) == []


def test_the_aes_vector_is_still_suite_1() -> None:
    assert segfile.read_header(VECTORS / "segment-v1.seg").suite == SUITE_AES_256_GCM


# ----- round trip, recovery, tampering --------------------------------------------------------------------
def test_chacha_round_trip_strict_read_and_verify(tmp_path: Path, tk: TestKeys) -> None:
    data = os.urandom(1000)
    sealed = _write(tmp_path / "c.seg", data, tk).close()
    assert sealed.chunks == 16 and sealed.state == "sealed"
    assert b"".join(segfile.decrypt(sealed.path, tk.recipient)) == data
    assert segfile.verify(sealed.path, private_key=tk.recipient, device_key=tk.device.public_key()) == []
    # The chunks really are ChaCha20-Poly1305: AES-GCM under the same key does not open them.
    header = segfile.read_header(sealed.path)
    file_key = segfile._unwrap_file_key(header, tk.recipient, sealed.path)
    payload_key = segfile.derive_keys(file_key, header.stream_nonce)[0]
    _, records = split_records(sealed.path.read_bytes())
    first = records[0].raw
    prefix, ct = first[:17], first[17:-16]
    assert segfile.open_chunk(ChaCha20Poly1305(payload_key), header.hash, 0, prefix, ct) == data[:64]
    with pytest.raises(InvalidTag):
        segfile.open_chunk(segfile.payload_aead(SUITE_AES_256_GCM, payload_key), header.hash, 0, prefix, ct)


def test_chacha_partial_is_recovered_and_read(tmp_path: Path, tk: TestKeys) -> None:
    data = os.urandom(700)
    writer = _write(tmp_path / "p.seg", data, tk)  # 10 full chunks sealed, 60 bytes pending: lost
    recovered = segfile.recover_partial(writer.partial_path, tk.device)
    writer.abort()
    assert recovered.state == "recovered" and recovered.chunks == 10
    assert segfile.verify(recovered.path, private_key=tk.recipient) == []
    assert b"".join(segfile.decrypt(recovered.path, tk.recipient, allow_recovered=True)) == data[:640]


def test_tampering_in_a_chacha_chunk_is_detected(tmp_path: Path, tk: TestKeys) -> None:
    sealed = _write(tmp_path / "t.seg", os.urandom(500), tk).close()
    header, records = split_records(sealed.path.read_bytes())
    target = records[2].offset + 17 + 5  # one ciphertext bit of chunk 2
    blob = bytearray(sealed.path.read_bytes())
    blob[target] ^= 0x01
    sealed.path.write_bytes(bytes(blob))
    assert any(e.offset == records[2].offset + len(records[2].raw) - 16 for e in segfile.verify(sealed.path))
    # An insider with the device key recomputes every keyless check, the file hash and the signature:
    # only the Poly1305 tag is left, and a keyed read names the chunk.
    hasher, out = hashlib.sha256(header), bytearray(header)
    for record in records[:-1]:
        raw = bytearray(blob[record.offset : record.offset + len(record.raw)])
        hasher.update(raw[:-16])
        raw[-16:] = hasher.copy().digest()[:16]
        hasher.update(raw[-16:])
        out += raw
    body = bytearray(records[-1].raw[:66])
    body[34:66] = hasher.digest()
    out += body + tk.device.sign(segfile.trailer_signed_bytes(bytes(body)))
    sealed.path.write_bytes(bytes(out))
    assert segfile.verify(sealed.path, device_key=tk.device.public_key()) == []
    keyed = segfile.verify(sealed.path, private_key=tk.recipient)
    assert [e.what for e in keyed] == [
        "chunk 2 authentication failed: altered, reordered, a chunk dropped, or spliced"]
    with pytest.raises(SegmentError, match="chunk 2 authentication failed"):
        b"".join(segfile.decrypt(sealed.path, tk.recipient))


def test_changing_the_suite_field_fails_the_header(tmp_path: Path, tk: TestKeys) -> None:
    """The suite is in the authenticated core: relabelling a ChaCha segment as AES-GCM breaks the unwrap."""
    sealed = _write(tmp_path / "d.seg", os.urandom(200), tk).close()
    blob = bytearray(sealed.path.read_bytes())
    blob[10:12] = struct.pack(">H", SUITE_AES_256_GCM)
    sealed.path.write_bytes(bytes(blob))
    with pytest.raises(SegmentError, match="cannot unwrap the file key"):
        b"".join(segfile.decrypt(sealed.path, tk.recipient))


@pytest.mark.parametrize("suite", [0, 3, 0xFFFF])
def test_an_unknown_suite_is_refused_at_offset_10(tmp_path: Path, tk: TestKeys, suite: int) -> None:
    sealed = _write(tmp_path / "u.seg", os.urandom(200), tk).close()
    blob = bytearray(sealed.path.read_bytes())
    blob[10:12] = struct.pack(">H", suite)
    sealed.path.write_bytes(bytes(blob))
    for call in (lambda: segfile.read_info(sealed.path), lambda: segfile.read_header(sealed.path),
                 lambda: b"".join(segfile.decrypt(sealed.path, tk.recipient))):
        with pytest.raises(SegmentError, match=f"unknown cipher suite {suite} ") as exc:
            call()
        assert exc.value.offset == 10
    [problem] = segfile.verify(sealed.path, private_key=tk.recipient)
    assert problem.offset == 10
    with pytest.raises(ValueError, match="unknown cipher suite"):
        SegmentWriter(tmp_path / "x.seg", make_meta(), [tk.recipient_public], tk.device, suite=suite)


# ----- a chain that changes suite, verified and exported --------------------------------------------------
def _record(clip: Path, data_dir: Path, key: X25519PrivateKey, device: Ed25519PrivateKey, chain: ChainState,
            suite: int) -> list[segfile.SealedSegment]:
    sealed: list[segfile.SealedSegment] = []
    recorder = Recorder(CameraConfig("gate", str(clip), realtime=False, loop=False), data_dir=data_dir,
                        device_id="pi-test", segment_seconds=1, durability=DurabilityConfig(),
                        recipients=[key.public_key()], signing_key=device, chain=chain, suite=suite,
                        on_sealed=sealed.append, exit_at_eof=True)
    recorder.start()
    recorder.join(60)
    recorder.stop(5)
    assert recorder.finished and sealed
    return sealed


def test_a_chain_of_aes_then_chacha_segments_verifies_and_exports(tmp_path: Path) -> None:
    """The config changed from aes-256-gcm to chacha20-poly1305 between two runs of one camera."""
    clip = tmp_path / "clip.mp4"
    make_h264_clip(clip, 2, fps=25, gop=25, bframes=False)
    key, device, data_dir = X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), tmp_path / "data"
    first = _record(clip, data_dir, key, device, ChainState(0, bytes(32)), SUITE_AES_256_GCM)
    last = first[-1]
    second = _record(clip, data_dir, key, device, ChainState(last.meta.sequence + 1, last.digest), CHACHA)
    suites = [segfile.read_header(s.path).suite for s in first + second]
    assert suites == [SUITE_AES_256_GCM] * len(first) + [CHACHA] * len(second)
    assert second[0].meta.prev_digest == last.digest

    report = inventory.verify_tree(data_dir, private_key=key)
    assert report.ok and report.checked == len(first) + len(second), report.problems

    out = tmp_path / "out.mp4"
    paths = [s.path for s in first + second]
    result = export_segments(paths, key, out, access=ExportAccess(by="tester", reason="suite change"))
    assert result.problems == ()
    assert [e.chain for e in result.segments][1:] == ["ok"] * (len(paths) - 1)
    frames = decoded_frame_hashes(clip)
    assert decoded_frame_hashes(out) == frames + frames


# ----- the config's choice --------------------------------------------------------------------------------
X86_WITH_AES = "processor\t: 0\nflags\t\t: fpu sse2 aes pclmulqdq avx2 vaes sha_ni\n"
X86_WITHOUT_AES = "processor\t: 0\nflags\t\t: fpu sse2 avx2 vaes\n"
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
PI5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU part\t: 0xd0b\n"


@pytest.mark.parametrize(("cpuinfo", "has_aes", "suite"), [
    (X86_WITH_AES, True, SUITE_AES_256_GCM),
    (X86_WITHOUT_AES, False, CHACHA),  # "vaes" alone is not "aes"
    (PI4, False, CHACHA),
    (PI5, True, SUITE_AES_256_GCM),
    ("", None, SUITE_AES_256_GCM),  # unreadable: keep the default
])
def test_auto_picks_chacha_without_aes_instructions(cpuinfo: str, has_aes: bool | None, suite: int) -> None:
    assert cpu_has_aes(cpuinfo) is has_aes
    assert resolve_suite("auto", cpuinfo) == suite
    assert resolve_suite("aes-256-gcm", PI4) == SUITE_AES_256_GCM
    assert resolve_suite("chacha20-poly1305", PI5) == CHACHA


def test_auto_reads_the_cpu_feature_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(PI4)
    assert suite_for_config("auto", cpuinfo) == CHACHA
    assert suite_for_config("auto", tmp_path / "missing") == SUITE_AES_256_GCM
    assert suite_for_config("chacha20-poly1305", tmp_path / "missing") == CHACHA
