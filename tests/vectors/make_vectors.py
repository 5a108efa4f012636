"""Regenerate the known-answer vectors of segment format v1 (run from the repository root).

    .venv/bin/python tests/vectors/make_vectors.py [NAME.json ...]

The vectors pin the format: a change to the writer that alters them is a format change and needs a new
format version, not new vectors. Only run this when adding vectors: without names it writes only the
vectors whose JSON file is missing, so the existing ones stay byte for byte (a segment file is not
reproducible: its file key, stream nonce and HPKE encapsulation are random).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import keys, segfile
from edgerec.segfile import SegmentMeta, SegmentWriter

HERE = Path(__file__).resolve().parent


def payload_vector(suite: int = segfile.SUITE_AES_256_GCM) -> dict:
    file_key = bytes(range(32))
    stream_nonce = bytes(range(0xA0, 0xB0))
    payload_key, mac_key = segfile.derive_keys(file_key, stream_nonce)
    header_without_mac = b"EDGERSEG" + bytes(range(200))
    # The chunks follow a stand-in header (these bytes and their MAC) as they would in a file: each
    # check is a truncated SHA-256 of everything from the first header byte through its ciphertext.
    header = header_without_mac + segfile.header_mac(mac_key, header_without_mac)
    header_hash = hashlib.sha256(header).digest()
    file_hasher = hashlib.sha256(header)
    aead = segfile.payload_aead(suite, payload_key)
    plaintexts = [b"The quick brown fox jumps over t", b"he lazy dog.", b""]
    chunks = []
    offset = len(header)
    for index, plaintext in enumerate(plaintexts):
        last = index == len(plaintexts) - 1
        end_ns, frames = 1_750_000_000_000_000_000 + index * 40_000_000, index + 1
        record = segfile.seal_chunk(aead, header_hash, file_hasher, index, last, end_ns, frames, plaintext)
        chunks.append({
            "index": index, "offset": offset, "last": last, "end_ns": end_ns, "frames": frames,
            "plaintext": plaintext.hex(), "nonce": segfile.chunk_nonce(index, last).hex(),
            "record": record.hex(),
        })
        offset += len(record)
    return {
        "description": f"segment format v1 payload layer, suite {suite} ({segfile.SUITE_NAMES[suite]}): key "
                       "derivation, header MAC, chunk records following the header "
                       "(header_without_mac || header_mac)",
        "suite": suite,
        "file_key": file_key.hex(),
        "stream_nonce": stream_nonce.hex(),
        "payload_key": payload_key.hex(),
        "header_mac_key": mac_key.hex(),
        "header_without_mac": header_without_mac.hex(),
        "header_mac": segfile.header_mac(mac_key, header_without_mac).hex(),
        "header_hash": header_hash.hex(),
        "chunks": chunks,
    }


def segment_vector(suite: int = segfile.SUITE_AES_256_GCM, file_name: str = "segment-v1.seg") -> dict:
    officer = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"vector officer").digest())
    escrow = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"vector escrow").digest())
    device = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"vector device").digest())
    meta = SegmentMeta(
        device_id="pi-vector", camera="gate", sequence=42, start_ns=1_750_000_000_123_456_789,
        clock_synced=False, boot_id="6b1b1c4e-0f55-4a58-9a3c-7f1d1f6d2e01", monotonic_ns=98_765_432_100,
        codec="h264", container="mpegts", prev_digest=hashlib.sha256(b"previous segment").digest(),
    )
    plaintext = bytes((i * 7 + 3) % 251 for i in range(150))
    path = HERE / file_name
    path.unlink(missing_ok=True)
    writer = SegmentWriter(path, meta, [officer.public_key(), escrow.public_key()], device, chunk_bytes=64,
                           suite=suite)
    for i in range(0, len(plaintext), 50):
        writer.write(plaintext[i : i + 50])
        writer.note(meta.start_ns + (i + 50) * 1_000_000, i // 50 + 1)
    sealed = writer.close()
    return {
        "description": f"a complete segment v1 file ({path.name}) with two recipients, suite {suite} "
                       f"({segfile.SUITE_NAMES[suite]})",
        "file": path.name,
        "suite": suite,
        "recipient_secrets": [keys.format_private_key(officer), keys.format_private_key(escrow)],
        "device_public_key": keys.format_device_public_key(device.public_key()),
        "meta": {
            "device_id": meta.device_id, "camera": meta.camera, "sequence": meta.sequence,
            "start_ns": meta.start_ns, "clock_synced": meta.clock_synced, "boot_id": meta.boot_id,
            "monotonic_ns": meta.monotonic_ns, "codec": meta.codec, "container": meta.container,
            "prev_digest": meta.prev_digest.hex(),
        },
        "plaintext": plaintext.hex(),
        "digest": sealed.digest.hex(),
        "size_bytes": sealed.size_bytes,
        "chunks": sealed.chunks,
        "frames": sealed.frames,
        "end_ns": sealed.end_ns,
        "state": sealed.state,
    }


VECTORS: dict[str, Callable[[], dict]] = {
    "payload-v1.json": payload_vector,
    "segment-v1.json": segment_vector,
    "payload-v1-chacha.json": lambda: payload_vector(segfile.SUITE_CHACHA20_POLY1305),
    "segment-v1-chacha.json": lambda: segment_vector(segfile.SUITE_CHACHA20_POLY1305,
                                                     "segment-v1-chacha.seg"),
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in VECTORS]
    if unknown:
        print(f"unknown vector {unknown[0]}; known: {', '.join(VECTORS)}", file=sys.stderr)
        return 2
    for name in names or [n for n in VECTORS if not (HERE / n).exists()]:
        (HERE / name).write_text(json.dumps(VECTORS[name](), indent=2) + "\n")
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
