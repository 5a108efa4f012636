"""Run the edgerec command with its clocks moved: ``python -m tests.helpers.shifted SPEC ARGS...``.

SPEC is ``MONO_NS`` (both the monotonic and the wall clock run that much ahead: as if the command ran that
much later in the same boot) or ``MONO_NS:WALL_NS[:BOOT_ID]`` (each clock its own shift, and optionally
another boot id: a reboot).

Tests of retention let time pass with the first form: the retention clock advances only with the
monotonic clock (docs/design/time.md), so this is the one honest way to age footage in a test. The
attack tests use the second: a wall clock set ahead (by a spoofed NTP answer) while real time does not
move, or a reboot with a wall clock that claims a long downtime.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    parts = sys.argv[1].split(":")
    mono_shift_ns = int(parts[0])
    wall_shift_ns = int(parts[1]) if len(parts) > 1 else mono_shift_ns
    from edgerec import clock

    real_time_ns, real_time, real_mono = time.time_ns, time.time, clock.monotonic_ns
    time.time_ns = lambda: real_time_ns() + wall_shift_ns
    time.time = lambda: real_time() + wall_shift_ns / 1e9
    clock.monotonic_ns = lambda: real_mono() + mono_shift_ns
    if len(parts) > 2:
        boot = parts[2]
        clock.boot_id = lambda: boot
    from edgerec.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
