"""``strace`` for tests of the order of system calls: run a command traced, and parse the trace into calls.

``parse_strace`` turns ``strace -f -ttt -y`` output into calls with the order in which each started and
finished, so "A completed before B started" can be asserted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

STRACE = shutil.which("strace")
TRACED_CALLS = "openat,write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat"

_LINE = re.compile(r"^(\d+)\s+([\d.]+)\s+(.*)$")
_CALL = re.compile(r"^([a-z0-9_]+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. ([a-z0-9_]+) resumed>(.*)$")
_FD_PATH = re.compile(r"^-?\d+<([^>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)(?:<([^>]*)>)?")


@dataclass
class Call:
    """One system call. ``start``/``end`` are positions in the trace (the order calls began and ended)."""

    pid: int
    name: str
    args: str
    start: int
    end: int | None = None  # None: unfinished when the trace ended (the process was killed in it)
    result: int | None = None
    result_path: str | None = None
    time_s: float = 0.0

    @property
    def fd_path(self) -> str | None:
        """The path of the first argument when it is a file descriptor (``strace -y``)."""
        m = _FD_PATH.match(self.args)
        return m.group(1) if m else None

    @property
    def paths(self) -> list[str]:
        return [bytes(q, "utf-8").decode("unicode_escape") for q in _QUOTED.findall(self.args)]

    @property
    def ok(self) -> bool:
        return self.end is not None and self.result is not None and self.result >= 0

    @property
    def size(self) -> int:
        """write/pwrite64: the byte count written (the result)."""
        return self.result or 0

    @property
    def offset(self) -> int | None:
        """pwrite64: the file offset (its last argument)."""
        if self.name != "pwrite64":
            return None
        return int(self.args.rsplit(",", 1)[1].strip().split(")")[0])


def parse_strace(text: str) -> list[Call]:
    """Calls in start order from ``strace -f -ttt -y -s 0`` output (signals and exits are skipped)."""
    calls: list[Call] = []
    pending: dict[int, Call] = {}
    pos = 0
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        pid, when, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        pos += 1
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            call = pending.pop(pid, None)
            if call is None:
                continue
            call.end = pos
            call.args += resumed.group(2)
            _set_result(call, resumed.group(2))
            continue
        c = _CALL.match(rest)
        if c is None:
            continue  # --- SIGNAL ---, +++ exited +++
        call = Call(pid, c.group(1), c.group(2), pos, time_s=when)
        calls.append(call)
        if rest.endswith("<unfinished ...>"):
            call.args = call.args.removesuffix("<unfinished ...>")
            pending[pid] = call
        else:
            call.end = pos
            _set_result(call, rest)
    return calls


def _set_result(call: Call, text: str) -> None:
    found = _RESULT.findall(text)
    if found:
        value, path = found[-1]
        call.result = int(value)
        call.result_path = path or None


def strace_cmd(trace: Path) -> list[str]:
    assert STRACE is not None
    return [STRACE, "-f", "-q", "-ttt", "-y", "-s", "0", "-e", f"trace={TRACED_CALLS}",
            "-o", str(trace)]


def strace_works() -> bool:
    if STRACE is None:
        return False
    probe = subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_strace = pytest.mark.skipif(not strace_works(), reason="strace is missing or cannot trace here")


def first(calls: list[Call], pred, after: int = 0) -> Call | None:  # type: ignore[no-untyped-def]
    return next((c for c in calls if c.start > after and pred(c)), None)


def last(calls: list[Call], pred, before: int) -> Call | None:  # type: ignore[no-untyped-def]
    found = [c for c in calls if c.start < before and pred(c)]
    return found[-1] if found else None
