"""Shared video test helpers: real H.264 clips made with PyAV, frame hashes, a real RTSP server, TS pushes.

Nothing here is mocked: clips are encoded with libx264 from lavfi test patterns, the RTSP server is
GStreamer's (run by the system Python, which has the GObject bindings), pushes are done by ffmpeg.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.video.frame import PictureType

from edgerec.layout import PARTIAL_SEGMENT_SUFFIX, SEGMENT_SUFFIX
from edgerec.segfile import CHECK_BYTES, CHUNK_OVERHEAD_BYTES, KIND_TRAILER, TAG_BYTES
from tests.helpers.segments import split_records

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
STARTUP_TIMEOUT_S = 15.0


def make_h264_clip(
    path: Path,
    seconds: float,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    bframes: bool = False,
    gop: int = 25,
    pattern: str = "testsrc",
    bitrate_bps: int | None = None,
) -> int:
    """Write a real H.264 clip (MP4 or MPEG-TS, chosen by the suffix); return its frame count.

    Keyframes fall exactly every ``gop`` frames (scene-cut detection is off) so tests can predict cuts.
    """
    path = Path(path)
    frames = round(seconds * fps)
    width, height = size
    fmt = "mpegts" if path.suffix == ".ts" else None
    graph = f"{pattern}=size={width}x{height}:rate={fps}"
    x264_params = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    if bitrate_bps:
        x264_params += f":bitrate={bitrate_bps // 1000}"
    with (
        av.open(graph, format="lavfi") as src,
        av.open(str(path), "w", format=fmt) as out,
    ):
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 2 if bframes else 0
        stream.codec_context.options = {"preset": "ultrafast" if not bframes else "veryfast",
                                        "x264-params": x264_params,
                                        "bf": "2" if bframes else "0"}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            frame.pict_type = PictureType.NONE  # keep the lavfi frame type from forcing keyframes
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return frames


def make_hevc_clip(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240),
                   gop: int = 50, bframes: int = 0) -> int:
    """Write a real H.265 clip (Matroska, MP4 or MPEG-TS, by the suffix) as a camera makes it: a closed GOP
    with a keyframe exactly every ``gop`` frames, ``bframes`` B-frames (cameras send none); return its
    frame count."""
    path = Path(path)
    frames = round(seconds * fps)
    width, height = size
    fmt = "mpegts" if path.suffix == ".ts" else None
    x265_params = (f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:bframes={bframes}:"
                   "repeat-headers=1:log-level=error")
    with (
        av.open(f"testsrc=size={width}x{height}:rate={fps}", format="lavfi") as src,
        av.open(str(path), "w", format=fmt) as out,
    ):
        stream = out.add_stream("libx265", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.options = {"preset": "ultrafast", "x265-params": x265_params}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            frame.pict_type = PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return frames


Retime = Callable[[int, int | None, int | None], tuple[int | None, int | None]]


def retime_clip(src: Path, dst: Path, retime: Retime, *, skip: int = 0, restart_at: int | None = None) -> int:
    """Copy the video of ``src`` into the MPEG-TS file ``dst`` with its timestamps rewritten (no re-encode).

    ``retime(i, pts, dts)`` returns the new (pts, dts) of packet ``i`` (in the stream's time base); the
    first ``skip`` packets are left out (a stream that starts in the middle of a GOP). From packet
    ``restart_at`` on, a new muxer continues the file, as a camera or server that restarts its media does:
    only then may timestamps go backwards. Returns the number of packets written.
    """
    written = 0
    with av.open(str(src)) as inp, open(dst, "wb") as raw:
        in_stream = inp.streams.video[0]
        packets = [p for p in inp.demux(in_stream) if p.size]
        runs = [range(0, len(packets))]
        if restart_at is not None:
            runs = [range(0, restart_at), range(restart_at, len(packets))]
        for run in runs:
            with av.open(raw, "w", format="mpegts") as out:
                out_stream = out.add_stream_from_template(in_stream)
                for i in run:
                    if i < skip:
                        continue
                    packet = packets[i]
                    packet.pts, packet.dts = retime(i, packet.pts, packet.dts)
                    packet.stream = out_stream
                    out.mux(packet)
                    written += 1
    return written


def decoded_frame_hashes(path: Path) -> list[str]:
    """Decode every video frame of a file and return one SHA-256 per frame (of its YUV planes)."""
    hashes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            digest = hashlib.sha256()
            for plane in frame.planes:
                digest.update(bytes(plane))
            hashes.append(digest.hexdigest())
    return hashes


def video_packets(path: Path) -> list[tuple[int | None, int | None, bool, bytes]]:
    """The (pts, dts, keyframe, payload) of every video packet of a file, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            (p.pts, p.dts, p.is_keyframe, bytes(p))
            for p in container.demux(stream)
            if p.size > 0
        ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:port accepts a connection (or the child exits, or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def rtsp_server_available() -> bool:
    """True when the system Python has GStreamer's RTSP server bindings."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0');"
         "from gi.repository import GstRtspServer"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


needs_rtsp = pytest.mark.skipif(not rtsp_server_available(), reason="GStreamer RTSP server not installed")


def start_rtsp_server(clip: Path, *, loop: bool = False, mount: str = "/cam",
                      port: int | None = None, audio: str | None = None) -> tuple[str, subprocess.Popen]:
    """Serve an H.264 or H.265 clip over RTSP on a loopback port (a free one unless given); return
    (url, process).

    Each client gets the clip from its start, paced in real time. ``loop`` plays it again and again and
    needs an MPEG-TS clip (the server re-encodes to keep the timestamps running). ``audio`` (``aac``,
    ``pcma``, ``pcmu``, ``opus``) adds an audio track as long as the clip. Stop it with ``stop_process``.
    """
    if loop and Path(clip).suffix != ".ts":
        raise ValueError("a looping RTSP server needs a .ts clip")
    port = port or free_port()
    args = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), str(clip), "--port", str(port), "--mount", mount]
    with av.open(str(clip)) as probe:
        video = probe.streams.video[0]
        args += ["--video", "h265" if video.codec_context.name == "hevc" else "h264"]
        seconds = float(video.duration * video.time_base) if video.duration else float(
            (probe.duration or 0) / av.time_base)
    if audio is not None:
        args += ["--audio", audio, "--audio-seconds", f"{seconds:.3f}"]
    if loop:
        args.append("--loop")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, STARTUP_TIMEOUT_S, proc)
    except BaseException:
        stop_process(proc)
        raise
    return f"rtsp://127.0.0.1:{port}{mount}", proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """Terminate a child process started by a test and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    for pipe in (proc.stdout, proc.stderr, proc.stdin):
        if pipe is not None:
            pipe.close()


def ffmpeg_tcp_push(clip: Path, *, realtime: bool = True, loop: bool = False,
                    port: int | None = None) -> tuple[str, subprocess.Popen]:
    """Serve a clip as MPEG-TS on a loopback tcp:// port (a free one unless given) with ffmpeg (listening,
    copy, no re-encode), as an encoder that serves its stream does.

    Returns (url, process); the recorder connects to the url as a ``tcp://`` camera. ffmpeg serves one
    client and exits at the end of the clip.
    """
    port = port or free_port()
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin"]
    if realtime:
        args.append("-re")
    if loop:
        args += ["-stream_loop", "-1"]
    # Send each packet as it comes (no interleaving queue), as a camera does.
    args += ["-i", str(clip), "-c", "copy", "-max_interleave_delta", "0", "-f", "mpegts",
             f"tcp://127.0.0.1:{port}?listen=1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # ffmpeg accepts only one client, so probing the port would consume it: wait for the socket instead.
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and not _port_listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"ffmpeg exited early with code {proc.returncode}")
        time.sleep(0.05)
    return f"tcp://127.0.0.1:{port}", proc


class PacedTcpServer:
    """Serves a file's bytes to one TCP client on a free loopback port at a steady byte rate, in a thread.

    A stand-in for a camera whose stream carries on at its own pace whatever is inside it (for example
    audio only, after its video died). ``close()`` stops it.
    """

    def __init__(self, path: Path, bytes_per_s: float, chunk_bytes: int = 188 * 20):
        self.data = Path(path).read_bytes()
        self.bytes_per_s = bytes_per_s
        self.chunk_bytes = chunk_bytes
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="paced-tcp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                started = time.monotonic()
                for at in range(0, len(self.data), self.chunk_bytes):
                    due = started + at / self.bytes_per_s
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                    conn.sendall(self.data[at:at + self.chunk_bytes])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _port_listening(port: int) -> bool:
    """True when a socket is in LISTEN state on 127.0.0.1:port (read from /proc, without connecting)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


TS_PACKET_BYTES = 188


def plaintext_video_findings(data: bytes) -> list[str]:
    """Signs of unencrypted video in a byte string: runs of MPEG-TS sync bytes or H.264 parameter sets/IDRs.

    Random (encrypted) data almost never shows eight 0x47 bytes 188 apart, nor a start code followed by
    an SPS/PPS/IDR NAL header with a valid forbidden bit and nal_ref_idc, repeatedly.
    """
    findings = []
    # Anywhere in the file, not only from its start: six sync bytes 188 apart (2^-40 per offset in noise).
    start = 0
    while (i := data.find(b"\x47", start)) != -1 and i + 5 * TS_PACKET_BYTES < len(data):
        if all(data[i + k * TS_PACKET_BYTES] == 0x47 for k in range(1, 6)):
            findings.append(f"MPEG-TS sync pattern at offset {i}")
            break
        start = i + 1
    # One 4-byte start code before an SPS, IDR or PPS header is already telling (2^-40 per offset).
    for nal in (b"\x00\x00\x00\x01\x67", b"\x00\x00\x00\x01\x65", b"\x00\x00\x00\x01\x68"):
        if (i := data.find(nal)) != -1:
            findings.append(f"H.264 start code + NAL header {nal[-1]:#x} at offset {i}")
            break
    nal_hits = 0
    for match in _iter_start_codes(data):
        header_at = match
        if header_at < len(data):
            header = data[header_at]
            nal_type = header & 0x1F
            if header & 0x80 == 0 and header & 0x60 and nal_type in (5, 7, 8):
                nal_hits += 1
    # A random 3-byte start code plus a matching header byte turns up about once per 2 MB of noise.
    if nal_hits >= 3 and nal_hits * 1_000_000 > len(data):
        findings.append(f"{nal_hits} H.264 SPS/PPS/IDR start codes")
    return findings


def _iter_start_codes(data: bytes) -> Iterator[int]:
    """Yield the offset just after every 00 00 01 start code (which also covers 00 00 00 01)."""
    at = data.find(b"\x00\x00\x01")
    while at != -1:
        yield at + 3
        at = data.find(b"\x00\x00\x01", at + 1)


def scan_tree_for_plaintext(root: Path) -> dict[str, list[str]]:
    """Map each file under root that looks like unencrypted video to what was found in it."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            hits = plaintext_video_findings(_scannable_bytes(path))
            if hits:
                found[str(path)] = hits
    return found


def _scannable_bytes(path: Path) -> bytes:
    """The bytes of a file that may not look like video. For a segment file: its chunks' ciphertext,
    joined. Its header, chunk prefixes and trailer are fixed-layout plaintext fields (times, counters,
    lengths), which can spell a start code and a NAL header byte by chance: a frame counter of 0x165 is
    ``00 00 01 65``, and so is a monotonic clock of about 1534 s in the header's big-endian field. Any
    other file, or a segment file whose framing does not hold, is scanned whole."""
    data = path.read_bytes()
    if not path.name.endswith((SEGMENT_SUFFIX, PARTIAL_SEGMENT_SUFFIX)):
        return data
    try:
        _, records = split_records(data)
    except (struct.error, IndexError):
        return data
    prefix = CHUNK_OVERHEAD_BYTES - TAG_BYTES - CHECK_BYTES
    chunks = [r.raw[prefix:len(r.raw) - CHECK_BYTES] for r in records if r.kind != KIND_TRAILER]
    return b"".join(chunks)

