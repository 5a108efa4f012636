"""Benchmark: what the keyframe health analysis adds to the CPU cost of recording a 1080p25 stream.

Recording is the real thing: a ``Recorder`` reads an H.264 clip (file source, ``realtime: false``),
cuts it into MPEG-TS segments and writes them encrypted, signed and fsynced to a temporary data
directory. The same clip is recorded without health analysis and with it at several
``analysis_interval_s`` values; CPU is this process's user+sys time over the whole recording (every
thread: the recorder, its flush timer and the health worker), the lowest of ``--repeat`` runs.

Read faster than real time, the clip puts a keyframe in front of the health worker every few
milliseconds, so at short intervals the worker may drop some (counted); the cost of one analysed
keyframe is therefore measured as (CPU with analysis of every keyframe - CPU without) / keyframes
analysed, and the overhead of a live camera at interval X is predicted as

    ratio(X) = 1 + cost_per_keyframe / max(X, GOP) / recording_cpu_per_second_of_video.

The measured ratio at each interval is printed next to the prediction. Reading fast leaves out the
per-wall-second costs of a live recording (timer wake-ups, more and smaller chunks, fsyncs), so the
recording CPU is underestimated and the ratios are, if anything, too high. ``--realtime`` paces the
clip instead (then each run takes ``--seconds`` of wall time) for a direct check.

    python bench/health.py [--seconds 60] [--bitrate-bps 4000000] [--gop-s 2] [--repeat 3]
                           [--intervals 0,2,4,10,30,120] [--realtime]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.health import ANALYSIS_HEIGHT_PX, ANALYSIS_WIDTH_PX, HealthThresholds, KeyframeDecoder, analyze
from edgerec.recorder import ChainState, Recorder

TARGET_RATIO = 1.10
SEGMENT_SECONDS = 60.0  # the default of the configuration


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_clip(path: Path, seconds: float, bitrate_bps: int, gop_s: float) -> None:
    """Encode a 1080p25 H.264 test clip (testsrc2 with temporal noise) at a constant bitrate."""
    fps = 25
    source = av.open("testsrc2=size=1920x1080:rate=25,noise=alls=8:allf=t", format="lavfi")
    with source, av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.gop_size = round(gop_s * fps)
        stream.codec_context.max_b_frames = 0
        stream.codec_context.bit_rate = bitrate_bps
        stream.options = {"preset": "veryfast", "bf": "0", "keyint_min": str(round(gop_s * fps)),
                          "sc_threshold": "0", "maxrate": str(bitrate_bps), "bufsize": str(bitrate_bps * 2)}
        for i, frame in enumerate(source.decode(video=0)):
            if i >= seconds * fps:
                break
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            frame.pict_type = av.video.frame.PictureType.NONE  # or x264 makes every frame a keyframe
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@dataclass(frozen=True)
class Run:
    cpu_s: float
    wall_s: float
    frames: int
    analysed: int  # keyframes the health worker analysed
    dropped: int  # keyframes due but dropped because the worker was busy
    busy_ms: float  # the worker's own time, as it measured it


def record(clip: Path, interval_s: float | None, realtime: bool) -> Run:
    """Record ``clip`` once with the real recorder; ``interval_s`` None records without health analysis."""
    recipient = X25519PrivateKey.generate().public_key()
    with tempfile.TemporaryDirectory(prefix="edgerec-bench-") as tmp:
        camera = CameraConfig("bench", str(clip), realtime=realtime, loop=False,
                              health=interval_s is not None)
        thresholds = None if interval_s is None else HealthThresholds(analysis_interval_s=interval_s)
        sealed = []
        recorder = Recorder(camera, data_dir=Path(tmp), device_id="bench", segment_seconds=SEGMENT_SECONDS,
                            durability=DurabilityConfig(), recipients=[recipient],
                            signing_key=Ed25519PrivateKey.generate(), chain=ChainState(0, bytes(32)),
                            on_sealed=sealed.append, exit_at_eof=True, health_thresholds=thresholds)
        started_cpu, started_wall = cpu_s(), time.perf_counter()
        recorder.start()
        recorder.join()
        health = recorder.stats().health  # before stop: the worker's final counters
        recorder.stop(10)
        used_cpu, used_wall = cpu_s() - started_cpu, time.perf_counter() - started_wall
    if not recorder.finished:
        raise SystemExit("the recorder did not finish the clip")
    return Run(used_cpu, used_wall, sum(s.frames for s in sealed),
               analysed=health["keyframes"] if health else 0, dropped=health["dropped"] if health else 0,
               busy_ms=health["analysed_ms_total"] if health else 0.0)


def best_of(clip: Path, interval_s: float | None, realtime: bool, repeat: int) -> Run:
    runs = [record(clip, interval_s, realtime) for _ in range(repeat)]
    spread[interval_s] = (min(r.cpu_s for r in runs), max(r.cpu_s for r in runs))
    return min(runs, key=lambda r: r.cpu_s)


spread: dict[float | None, tuple[float, float]] = {}  # CPU of the fastest and slowest run of each variant


def per_keyframe_costs_ms(clip: Path) -> dict[str, float]:
    """Split one keyframe's cost (wall, one thread): decode+drain, scaling to gray, and the analysis."""
    with av.open(str(clip)) as src:
        stream = src.streams.video[0]
        keyframes = [bytes(p) for p in src.demux(stream) if p.size and p.is_keyframe]
        decoder = KeyframeDecoder(stream.codec_context)
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
    return {"decode": decode_ms, "scale": scale_ms, "analyze": analyze_ms, "keyframes": len(keyframes),
            "keyframe_kib": float(np.mean([len(k) for k in keyframes])) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--bitrate-bps", type=int, default=4_000_000)
    parser.add_argument("--gop-s", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--intervals", default="0,2,4,10,30,120",
                        help="analysis_interval_s values to measure, comma-separated")
    parser.add_argument("--realtime", action="store_true", help="pace the clip as a live camera would")
    args = parser.parse_args()
    intervals = [float(v) for v in args.intervals.split(",")]

    name = f"edgerec-bench-1080p-{args.seconds:g}s-{args.bitrate_bps}-{args.gop_s:g}.ts"
    clip = Path(tempfile.gettempdir()) / name
    if not clip.exists():
        print(f"generating {clip} ...", flush=True)
        partial = clip.with_suffix(".partial")
        make_clip(partial, args.seconds, args.bitrate_bps, args.gop_s)
        partial.rename(clip)
    costs = per_keyframe_costs_ms(clip)
    keyframes = int(costs["keyframes"])

    base = best_of(clip, None, args.realtime, args.repeat)
    every = best_of(clip, 0.0, args.realtime, args.repeat)
    base_per_s = base.cpu_s / args.seconds
    per_keyframe_s = (every.cpu_s - base.cpu_s) / max(every.analysed, 1)

    print(f"clip: 1920x1080 25 fps {args.seconds:g} s {args.bitrate_bps / 1e6:g} Mbit/s "
          f"GOP {args.gop_s:g} s, {base.frames} frames, {keyframes} keyframes "
          f"(mean keyframe {costs['keyframe_kib']:.0f} KiB)")
    print(f"record only (real recorder, encrypted segments to disk, realtime {args.realtime}): "
          f"{base.cpu_s:.3f} s CPU in {base.wall_s:.2f} s = {1000 * base_per_s:.2f} ms CPU per second "
          f"of video ({100 * base_per_s:.2f} % of one core live); runs spread "
          f"{spread[None][0]:.3f}..{spread[None][1]:.3f} s")
    print(f"+ health on every keyframe: {every.cpu_s:.3f} s CPU, {every.analysed} analysed, {every.dropped} "
          f"dropped while busy: {1000 * per_keyframe_s:.1f} ms CPU per analysed keyframe "
          f"(worker's own timing {every.busy_ms / max(every.analysed, 1):.1f} ms)")
    print(f"per keyframe (wall, one thread): decode+drain {costs['decode']:.1f} ms, scale to gray "
          f"{costs['scale']:.2f} ms, analyze {costs['analyze']:.2f} ms")
    print(f"{'interval_s':>10} {'analysed':>9} {'measured':>9} {'predicted':>10}")
    predicted = {}
    for interval_s in intervals:
        run = best_of(clip, interval_s, args.realtime, args.repeat) if interval_s else every
        predicted[interval_s] = 1 + per_keyframe_s / max(interval_s, args.gop_s) / base_per_s
        print(f"{interval_s:>10g} {run.analysed:>9d} {run.cpu_s / base.cpu_s:>9.3f} "
              f"{predicted[interval_s]:>10.3f}")
    needed_s = per_keyframe_s / ((TARGET_RATIO - 1.0) * base_per_s)
    default_s = HealthThresholds().analysis_interval_s
    print(f"analysis_interval_s for ratio <= {TARGET_RATIO:.2f}: >= {needed_s:.1f} s "
          f"(default {default_s:g} s: predicted ratio "
          f"{1 + per_keyframe_s / max(default_s, args.gop_s) / base_per_s:.3f})")


if __name__ == "__main__":
    main()
