"""Run the edgerec command with the open of some files failing as an error of the system does (EACCES,
EIO, EMFILE, ...): ``python -m tests.helpers.openfails ERRNO_NAME PATH[:PATH...] [--shifted SPEC] ARGS...``
(``--shifted``: its clocks moved too, as ``tests.helpers.shifted`` SPEC says).

A real edgerec process, its own exit code and stderr; only ``os.open`` of exactly the files named fails
(segfile opens segments with it). Tests may run as root, where chmod keeps no file from being read.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main() -> int:
    err = getattr(errno, sys.argv[1])
    paths = {os.path.abspath(p) for p in sys.argv[2].split(os.pathsep)}
    real_open = os.open

    def failing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is None and not isinstance(path, int) and os.path.abspath(os.fsdecode(path)) in paths:
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    os.open = failing_open
    if sys.argv[3] == "--shifted":
        from tests.helpers import shifted

        sys.argv = [sys.argv[0], *sys.argv[4:]]
        return shifted.main()
    from edgerec.cli import main as cli_main

    return cli_main(sys.argv[3:])


def run_cli_with_open_failing(err: int, paths: Sequence[Path], *args: str, timeout: float = 120,
                              clock_shift_ns: int = 0) -> subprocess.CompletedProcess[str]:
    """``edgerec ARGS`` with every ``os.open`` of ``paths`` failing with ``err`` (and its clocks
    ``clock_shift_ns`` ahead: time has passed)."""
    from tests.helpers.daemon import REPO

    shift = ["--shifted", str(clock_shift_ns)] if clock_shift_ns else []
    cmd = [sys.executable, "-m", "tests.helpers.openfails", errno.errorcode[err],
           os.pathsep.join(str(p) for p in paths), *shift, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
