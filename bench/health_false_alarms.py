"""Benchmark: false health alarms on the built-in test camera over a long real-time recording.

The real recorder records the built-in test camera (``testsrc``: FFmpeg's testsrc2 pattern, 1280x720
25 fps by default, encoded to H.264 here) in real time into encrypted segments in a temporary data
directory, with health analysis on every keyframe (``analysis_interval_s: 0``, the strictest setting)
and the default detection levels and delays. Every health change is collected; any alarm is a false
alarm, since nothing is wrong with the picture. Prints the minutes recorded, keyframes analysed and
alarms raised; exits 1 if there was an alarm. docs/health.md records the latest run.

    python bench/health_false_alarms.py [--minutes 10] [--url testsrc:size=1280x720:rate=25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.config import CameraConfig, DurabilityConfig
from edgerec.health import HealthChange, HealthThresholds
from edgerec.recorder import ChainState, Recorder

SEGMENT_SECONDS = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--url", default="testsrc", help="camera url (default: the built-in test camera)")
    args = parser.parse_args()

    thresholds = HealthThresholds(analysis_interval_s=0.0)
    changes: list[HealthChange] = []
    with tempfile.TemporaryDirectory(prefix="edgerec-bench-") as tmp:
        camera = CameraConfig("test", args.url, realtime=True, loop=True, health=True)
        recorder = Recorder(camera, data_dir=Path(tmp), device_id="bench", segment_seconds=SEGMENT_SECONDS,
                            durability=DurabilityConfig(),
                            recipients=[X25519PrivateKey.generate().public_key()],
                            signing_key=Ed25519PrivateKey.generate(), chain=ChainState(0, bytes(32)),
                            on_sealed=lambda segment: None, health_thresholds=thresholds,
                            on_health=lambda name, change: changes.append(change))
        started = time.monotonic()
        recorder.start()
        try:
            while time.monotonic() - started < args.minutes * 60.0:
                time.sleep(1.0)
            health = recorder.stats().health or {}
        finally:
            recorder.stop(10)
    minutes = (time.monotonic() - started) / 60.0
    print(f"camera {args.url}: {minutes:.1f} min real time, {health.get('keyframes', 0)} keyframes analysed "
          f"({health.get('dropped', 0)} dropped while busy, {health.get('decode_errors', 0)} decode errors), "
          f"state {health.get('state')}, sharpness {health.get('sharpness')}, "
          f"moved dissimilarity {health.get('moved_dissimilarity')}")
    print(f"alarms: {len([c for c in changes if c.active])}")
    for change in changes:
        print(f"  t={change.t_s:.1f}s {change.condition} active={change.active} {change.detail}")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
