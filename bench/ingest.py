"""Ingest benchmark: CPU time of recording a file with edgerec's Recorder vs ``ffmpeg -c copy -f segment``.

Makes a 1080p25, 4 Mbit/s H.264 clip (or uses ``--clip``), then in the same run records it with
``realtime: false`` through the Recorder (demux, TS mux, AES-256-GCM chunks, fsync, signed trailer) and
segments it with ffmpeg, each in a child process, and compares their CPU time (user + system, from
``wait4``) and peak RSS. A third child that only imports edgerec and makes the keys is measured too, so
the Recorder's figure can be given without the interpreter's start-up.

    python bench/ingest.py [--minutes 3] [--clip FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TARGET_RATIO = 1.3

RECORD_SCRIPT = """
import sys, time
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.recorder import ChainState, Recorder

clip, data_dir, only_setup = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
recipient = X25519PrivateKey.generate().public_key()
signing = Ed25519PrivateKey.generate()
if only_setup:
    sys.exit(0)
sealed = []
rec = Recorder(CameraConfig("bench", clip, realtime=False, loop=False), data_dir=data_dir, device_id="bench",
               segment_seconds=60, durability=DurabilityConfig(), recipients=[recipient], signing_key=signing,
               chain=ChainState(0, bytes(32)), on_sealed=sealed.append, exit_at_eof=True)
rec.start()
rec.join()
rec.stop(10)
assert rec.finished, rec.stats()
print(len(sealed), sum(s.frames for s in sealed), sum(s.size_bytes for s in sealed))
"""


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    wall_s: float
    max_rss_mb: float
    output: str


def run_measured(argv: list[str]) -> Usage:
    """Run a child to completion and return its CPU time and peak RSS (from wait4)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{err}")
    return Usage(usage.ru_utime + usage.ru_stime, time.monotonic() - started, usage.ru_maxrss / 1024,
                 out.strip())


def make_clip(path: Path, minutes: float) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1920x1080:rate=25", "-t", str(minutes * 60), "-c:v", "libx264",
         "-preset", "ultrafast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", "50",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="edgerec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        clip = args.clip
        if clip is None:
            clip = work / "clip.mp4"
            if not clip.exists():
                print(f"making a {args.minutes} min 1080p25 4 Mbit/s clip ...", flush=True)
                make_clip(clip, args.minutes)
        size_mb = clip.stat().st_size / 1e6

        setup = run_measured([sys.executable, "-c", RECORD_SCRIPT, str(clip), str(work / "none"), "1"])
        ours = run_measured([sys.executable, "-c", RECORD_SCRIPT, str(clip), str(work / "data"), "0"])
        seg_dir = work / "ffmpeg"
        seg_dir.mkdir(exist_ok=True)
        theirs = run_measured(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                               "-i", str(clip), "-map", "0:v", "-c", "copy", "-f", "segment",
                               "-segment_time", "60", str(seg_dir / "seg%03d.ts")])

        net = ours.cpu_s - setup.cpu_s
        print(f"clip: {clip} ({size_mb:.1f} MB)")
        print(f"edgerec Recorder: cpu {ours.cpu_s:.2f} s (without start-up {net:.2f} s), "
              f"wall {ours.wall_s:.2f} s, max RSS {ours.max_rss_mb:.0f} MB; "
              f"segments/frames/bytes: {ours.output}")
        print(f"interpreter + imports + keys only: cpu {setup.cpu_s:.2f} s, "
              f"max RSS {setup.max_rss_mb:.0f} MB")
        print(f"ffmpeg -c copy -f segment: cpu {theirs.cpu_s:.2f} s, wall {theirs.wall_s:.2f} s,"
              f" max RSS {theirs.max_rss_mb:.0f} MB")
        ratio = net / theirs.cpu_s if theirs.cpu_s > 0 else float("inf")
        ratio_total = ours.cpu_s / theirs.cpu_s if theirs.cpu_s > 0 else float("inf")
        verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
        print(f"cpu ratio edgerec/ffmpeg: {ratio:.2f}x without start-up, {ratio_total:.2f}x with it "
              f"(target <= {TARGET_RATIO}x: {verdict})")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
