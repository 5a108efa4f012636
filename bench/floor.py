"""The design's floor for bench/ingest.py: one SHA-256 pass and AES-256-GCM over files already written.

Run after ``ffmpeg -c copy -f segment`` in the same measured child, it adds to ffmpeg's cost what the
segment format cannot do without: every byte encrypted with AES-256-GCM (256 KiB chunks, one nonce each,
into one reused buffer, as the segment writer does) and hashed once with SHA-256 (over the ciphertext, as
the file hash is). No framing, header, signature, fsync or writing of the result: those are edgerec's own
costs above the floor.

    python bench/floor.py [--chacha] FILE...

``--chacha``: ChaCha20-Poly1305 instead of AES-256-GCM (the segment format's second cipher suite).
"""

from __future__ import annotations

import hashlib
import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

CHUNK_BYTES = 262144  # the segment writer's default (edgerec.segfile.CHUNK_BYTES_DEFAULT)
TAG_BYTES = 16


def seal_file(path: str, aead: AESGCM | ChaCha20Poly1305) -> bytes:
    """Encrypt ``path`` chunk by chunk and hash the ciphertext; the digest (so nothing is optimised out)."""
    hasher = hashlib.sha256()
    out = bytearray(CHUNK_BYTES + TAG_BYTES)
    index = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            view = memoryview(out)[: len(chunk) + TAG_BYTES]
            aead.encrypt_into(index.to_bytes(12, "big"), chunk, None, view)
            hasher.update(view)
            index += 1
    return hasher.digest()


def main(paths: list[str]) -> int:
    chacha = paths[:1] == ["--chacha"]
    if chacha:
        paths = paths[1:]
    aead = ChaCha20Poly1305(os.urandom(32)) if chacha else AESGCM(os.urandom(32))
    for path in paths:
        seal_file(path, aead)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
