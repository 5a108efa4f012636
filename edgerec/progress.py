"""Progress of a long command on stderr: a bar redrawn in place (``\\r``) on a terminal, a plain line every
few seconds otherwise (a log file, a pipe), and nothing at all for work done within the first seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

SHOW_AFTER_S = 2.0  # quick work stays quiet
REDRAW_EVERY_S = 0.1  # on a terminal
LINE_EVERY_S = 5.0  # elsewhere: a line per interval, not one per step
BAR_WIDTH = 30


class Progress:
    """A ``progress(done, total)`` callback; call ``finish()`` when the work ends (it ends the bar's
    line, so that what is printed next starts on a line of its own)."""

    def __init__(self, what: str, unit: str, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self._clock = clock
        self._started = clock()
        self._last_shown: float | None = None
        self._bar_open = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        elapsed = now - self._started
        if elapsed < SHOW_AFTER_S:
            return
        if self.tty:
            if self._last_shown is not None and now - self._last_shown < REDRAW_EVERY_S and done < total:
                return
            self._write(f"\r{self.bar(done, total, elapsed)}")
            self._bar_open = True
        else:
            if self._last_shown is not None and now - self._last_shown < LINE_EVERY_S:
                return
            if self._last_shown is None and elapsed < LINE_EVERY_S:
                return
            self._write(f"{self.what}: {done}/{total} {self.unit} ({_percent(done, total)}%, "
                        f"{elapsed:.0f} s)\n")
        self._last_shown = now

    def bar(self, done: int, total: int, elapsed: float) -> str:
        filled = BAR_WIDTH * done // total if total else BAR_WIDTH
        return (f"{self.what}: [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} {self.unit} "
                f"{_percent(done, total):3d}% {elapsed:.0f} s")

    def finish(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # stderr gone (closed pipe): progress is not worth failing
            pass


def _percent(done: int, total: int) -> int:
    return 100 * done // total if total else 100


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
