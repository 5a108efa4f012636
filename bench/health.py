"""Benchmark: what the keyframe health analysis adds to the CPU cost of recording a 1080p stream.

Recording is modelled as the recorder's packet path: demux an H.264 clip and copy-mux it to MPEG-TS
in memory. The same loop is then run with the health analysis on every keyframe (decoded inline, so
that all of its CPU lands in this process), in two ways:

- ``keyframes``: only keyframe packets reach the decoder (what ``KeyframeDecoder`` does);
- ``skip_frame``: every packet is sent to a decoder told to skip non-keyframes.

CPU is this process's user+sys time; each variant runs ``--repeat`` times and the lowest is kept.
The test clip (synthetic picture with sensor-like noise, constant bitrate) is generated once and kept
in the temporary directory.

    python bench/health.py [--seconds 60] [--bitrate-bps 4000000] [--gop-s 2] [--b-frames 0] [--encrypt]
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgerec.health import (
    ANALYSIS_HEIGHT_PX,
    ANALYSIS_WIDTH_PX,
    HealthMonitor,
    HealthThresholds,
    KeyframeDecoder,
    analysis_due,
    analyze,
    packet_time_s,
)

TARGET_RATIO = 1.10
CHUNK_BYTES = 64 * 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_clip(path: Path, seconds: float, bitrate_bps: int, gop_s: float, b_frames: int) -> None:
    """Encode a 1080p25 H.264 test clip (testsrc2 with temporal noise) at a constant bitrate."""
    fps = 25
    source = av.open("testsrc2=size=1920x1080:rate=25,noise=alls=8:allf=t", format="lavfi")
    with source, av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.gop_size = round(gop_s * fps)
        stream.codec_context.max_b_frames = b_frames
        stream.codec_context.bit_rate = bitrate_bps
        stream.options = {"preset": "veryfast", "bf": str(b_frames), "keyint_min": str(round(gop_s * fps)),
                          "sc_threshold": "0", "maxrate": str(bitrate_bps), "bufsize": str(bitrate_bps * 2)}
        for i, frame in enumerate(source.decode(video=0)):
            if i >= seconds * fps:
                break
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            frame.pict_type = av.video.frame.PictureType.NONE  # or x264 makes every frame a keyframe
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


class EncryptingSink(io.RawIOBase):
    """Seals what it is given in AES-256-GCM chunks, as the segment writer does (then drops it)."""

    def __init__(self) -> None:
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.pending = bytearray()
        self.counter = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self.pending += data
        while len(self.pending) >= CHUNK_BYTES:
            self.counter += 1
            self.aead.encrypt(self.counter.to_bytes(12, "big"), bytes(self.pending[:CHUNK_BYTES]), None)
            del self.pending[:CHUNK_BYTES]
        return len(data)


def remux(clip: Path, on_packet: Callable[[av.Packet], None] | None = None,
          encrypt: bool = False) -> tuple[int, int]:
    """Demux ``clip`` and copy its video to MPEG-TS in memory, calling ``on_packet`` on each packet first."""
    sink = EncryptingSink() if encrypt else io.BytesIO()
    packets = keyframes = 0
    with av.open(str(clip)) as src, av.open(sink, "w", format="mpegts") as out:
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            if on_packet is not None:
                on_packet(packet)
            packets += 1
            keyframes += packet.is_keyframe
            packet.stream = out_stream
            out.mux(packet)
    return packets, keyframes


class KeyframeHealth:
    """The production path: KeyframeDecoder + analyze + HealthMonitor on the keyframes that are due."""

    def __init__(self, interval_s: float = 0.0) -> None:
        self.decoder: KeyframeDecoder | None = None
        self.monitor = HealthMonitor(HealthThresholds(analysis_interval_s=interval_s))
        self.last_t_s: float | None = None
        self.analysed = 0
        self.busy_s = 0.0

    def __call__(self, packet: av.Packet) -> None:
        if not packet.is_keyframe:
            return
        t_s = packet_time_s(packet) or 0.0
        th = self.monitor.thresholds
        if not analysis_due(t_s, self.last_t_s, th.analysis_interval_s, self.monitor.pending):
            return
        self.last_t_s = t_s
        self.analysed += 1
        started = time.perf_counter()
        self.decoder = self.decoder or KeyframeDecoder(packet.stream.codec_context)
        gray = self.decoder.feed(packet)
        assert gray is not None and gray.shape == (ANALYSIS_HEIGHT_PX, ANALYSIS_WIDTH_PX)
        self.monitor.observe(analyze(gray), t_s)
        self.busy_s += time.perf_counter() - started


class SkipFrameHealth:
    """The alternative: every packet goes to a decoder with skip_frame='NONKEY' (drained after keyframes)."""

    def __init__(self) -> None:
        self.ctx: av.CodecContext | None = None
        self.monitor = HealthMonitor(HealthThresholds())
        self.busy_s = 0.0

    def __call__(self, packet: av.Packet) -> None:
        started = time.perf_counter()
        if self.ctx is None:
            self.ctx = av.CodecContext.create(packet.stream.codec_context.name, "r")
            self.ctx.extradata = packet.stream.codec_context.extradata
            self.ctx.thread_count = 1
            self.ctx.skip_frame = "NONKEY"
        frames = self.ctx.decode(packet)
        if packet.is_keyframe and not frames:
            frames = self.ctx.decode(None)
            self.ctx.flush_buffers()
        for frame in frames:
            gray = frame.reformat(width=ANALYSIS_WIDTH_PX, height=ANALYSIS_HEIGHT_PX, format="gray",
                                  interpolation="POINT").to_ndarray()
            self.monitor.observe(analyze(gray), packet_time_s(packet) or 0.0)
        self.busy_s += time.perf_counter() - started


def measure(clip: Path, make_hook: Callable[[], Callable[[av.Packet], None] | None], repeat: int,
            encrypt: bool) -> float:
    best = float("inf")
    for _ in range(repeat):
        hook = make_hook()
        before = cpu_s()
        remux(clip, hook, encrypt)
        best = min(best, cpu_s() - before)
    return best


def per_keyframe_costs_ms(clip: Path) -> dict[str, float]:
    """Split one keyframe's cost: decode+drain, scaling to gray, analysis, and re-creating a decoder."""
    with av.open(str(clip)) as src:
        stream = src.streams.video[0]
        keyframes = [bytes(p) for p in src.demux(stream) if p.size and p.is_keyframe]
        codec_context = stream.codec_context
        decoder = KeyframeDecoder(codec_context)
        frames = []
        started = time.perf_counter()
        for data in keyframes:
            frames += decoder._decode_and_drain(av.Packet(data))
        decode_ms = (time.perf_counter() - started) * 1000 / len(keyframes)
        started = time.perf_counter()
        grays = [f.reformat(width=ANALYSIS_WIDTH_PX, height=ANALYSIS_HEIGHT_PX, format="gray",
                            interpolation="POINT").to_ndarray() for f in frames]
        scale_ms = (time.perf_counter() - started) * 1000 / len(frames)
        started = time.perf_counter()
        for gray in grays:
            analyze(gray)
        analyze_ms = (time.perf_counter() - started) * 1000 / len(grays)
        started = time.perf_counter()
        for _ in range(20):
            KeyframeDecoder(codec_context)._decode_and_drain(av.Packet(keyframes[0]))
        reopen_ms = (time.perf_counter() - started) * 1000 / 20 - decode_ms
    return {"decode": decode_ms, "scale": scale_ms, "analyze": analyze_ms, "new_decoder": reopen_ms,
            "keyframe_kib": float(np.mean([len(k) for k in keyframes])) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--bitrate-bps", type=int, default=4_000_000)
    parser.add_argument("--gop-s", type=float, default=2.0)
    parser.add_argument("--b-frames", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--encrypt", action="store_true",
                        help="count AES-256-GCM sealing of the TS bytes as part of recording")
    args = parser.parse_args()

    name = f"edgerec-bench-1080p-{args.seconds:g}s-{args.bitrate_bps}-{args.gop_s:g}-{args.b_frames}.ts"
    clip = Path(tempfile.gettempdir()) / name
    if not clip.exists():
        print(f"generating {clip} ...", flush=True)
        partial = clip.with_suffix(".partial")
        make_clip(partial, args.seconds, args.bitrate_bps, args.gop_s, args.b_frames)
        partial.rename(clip)
    packets, keyframes = remux(clip)

    default_interval_s = HealthThresholds().analysis_interval_s
    base_s = measure(clip, lambda: None, args.repeat, args.encrypt)
    kf_s = measure(clip, KeyframeHealth, args.repeat, args.encrypt)
    skip_s = measure(clip, SkipFrameHealth, args.repeat, args.encrypt)
    sampled = KeyframeHealth(default_interval_s)
    remux(clip, sampled)
    costs = per_keyframe_costs_ms(clip)

    print(f"clip: 1920x1080 25 fps {args.seconds:g} s {args.bitrate_bps / 1e6:g} Mbit/s GOP {args.gop_s:g} s "
          f"b-frames {args.b_frames}: {packets} packets, {keyframes} keyframes "
          f"(mean keyframe {costs['keyframe_kib']:.0f} KiB)")
    recording = "demux + copy-mux to MPEG-TS" + (" + AES-256-GCM" if args.encrypt else "")
    print(f"record only ({recording}): {base_s:.3f} s CPU "
          f"= {100 * base_s / args.seconds:.2f} % of one core")
    kf_extra_s = kf_s - base_s
    for label, total_s in [("every keyframe, keyframes only to the decoder", kf_s),
                           ("every keyframe, all packets with skip_frame=NONKEY", skip_s)]:
        extra_s = total_s - base_s
        print(f"+ health ({label}): {total_s:.3f} s CPU, ratio {total_s / base_s:.2f}, "
              f"{1000 * extra_s / keyframes:.1f} ms CPU per keyframe, "
              f"{100 * extra_s / args.seconds:.2f} % of one core")
    # Sampling: the extra CPU scales with the share of keyframes analysed.
    per_keyframe_s = kf_extra_s / keyframes
    sampled_ratio = (base_s + per_keyframe_s * sampled.analysed) / base_s
    print(f"+ health (one keyframe per analysis_interval_s={default_interval_s:g} s, the default): "
          f"{sampled.analysed} of {keyframes} keyframes analysed, ratio {sampled_ratio:.3f} "
          f"(target <= {TARGET_RATIO:.2f})")
    needed_s = per_keyframe_s / ((TARGET_RATIO - 1.0) * base_s / args.seconds)
    print(f"analysis_interval_s for ratio {TARGET_RATIO:.2f} against this recording: >= {needed_s:.0f} s")
    print(f"per keyframe (wall): decode+drain {costs['decode']:.1f} ms, scale to gray "
          f"{costs['scale']:.2f} ms, analyze {costs['analyze']:.2f} ms, new decoder instead of "
          f"flush_buffers +{costs['new_decoder']:.2f} ms")

if __name__ == "__main__":
    main()
