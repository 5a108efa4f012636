"""The floor of a recorder written as edgerec is, in Python on PyAV, for bench/ingest.py.

``bench/floor.py`` adds the format's cryptography to ``ffmpeg -c copy -f segment``, whose packet loop is C.
A recorder in Python that reads with PyAV also pays for its packet loop: one Python iteration per packet,
PyAV's packet objects, and the TS muxer handing its output to Python (the bytes must reach the cipher
before any disk, so the muxer cannot write a file itself). This script is the least such a recorder does,
with nothing of edgerec's own: demux with PyAV, mux MPEG-TS into a Python object (``flush_packets=1``,
as edgerec), cut at the first keyframe after each 60 s, gather 256 KiB chunks, AES-256-GCM each into one
reused buffer, SHA-256 over the result, ``os.write`` it, ``fdatasync`` each file at its end. No framing,
header, signature, timestamp repair, catalog, threads or flush timer.

    python bench/floor_pyav.py CLIP OUT_DIR
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import av
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK_BYTES = 262144  # the segment writer's default (edgerec.segfile.CHUNK_BYTES_DEFAULT)
TAG_BYTES = 16
SEGMENT_SECONDS = 60


class EncryptingFile:
    """What the muxer writes into: 256 KiB chunks encrypted, hashed and written as they fill."""

    def __init__(self, path: Path, aead: AESGCM):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.aead = aead
        self.hasher = hashlib.sha256()
        self.chunk = bytearray(CHUNK_BYTES)
        self.fill = 0
        self.out = memoryview(bytearray(CHUNK_BYTES + TAG_BYTES))
        self.index = 0

    def write(self, data: bytes) -> int:
        view, pos, size = memoryview(data), 0, len(data)
        while pos < size:
            take = min(size - pos, CHUNK_BYTES - self.fill)
            self.chunk[self.fill : self.fill + take] = view[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == CHUNK_BYTES:
                self.seal()
        return size

    def seal(self) -> None:
        record = self.out[: self.fill + TAG_BYTES]
        plaintext = memoryview(self.chunk)[: self.fill]
        self.aead.encrypt_into(self.index.to_bytes(12, "big"), plaintext, None, record)
        self.hasher.update(record)
        os.write(self.fd, record)
        self.index += 1
        self.fill = 0

    def close(self) -> None:
        self.seal()
        os.fdatasync(self.fd)
        os.close(self.fd)


def record(clip: str, out_dir: Path) -> None:
    aead = AESGCM(os.urandom(32))
    with av.open(clip) as source:
        stream = source.streams.video[0]
        cut_ticks = int(SEGMENT_SECONDS / stream.time_base)
        sink = container = out = None
        first_pts = 0
        count = 0
        for packet in source.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_keyframe and (container is None or packet.pts - first_pts >= cut_ticks):
                if container is not None:
                    container.close()
                    sink.close()
                count += 1
                sink = EncryptingFile(out_dir / f"seg{count:05d}.bin", aead)
                container = av.open(sink, "w", format="mpegts", options={"flush_packets": "1"})
                out = container.add_stream_from_template(stream)
                first_pts = packet.pts
            if container is None:
                continue
            packet.stream = out
            container.mux(packet)
        if container is not None:
            container.close()
            sink.close()


if __name__ == "__main__":
    record(sys.argv[1], Path(sys.argv[2]))
