"""Run the edgerec command with its clocks moved ahead: ``python -m tests.helpers.shifted SHIFT_NS ARGS...``.

Tests of retention let time pass this way: the wall clock and the monotonic clock both run SHIFT_NS
ahead, as if the command ran that much later in the same boot. The retention clock advances only with
the monotonic clock (docs/design/time.md), so this is the one honest way to age footage in a test; a
shifted wall clock alone is what the attack tests use.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    shift_ns = int(sys.argv[1])
    from edgerec import clock

    real_time_ns, real_time, real_mono = time.time_ns, time.time, clock.monotonic_ns
    time.time_ns = lambda: real_time_ns() + shift_ns
    time.time = lambda: real_time() + shift_ns / 1e9
    clock.monotonic_ns = lambda: real_mono() + shift_ns
    from edgerec.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
