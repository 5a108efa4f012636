"""Logging set-up for the daemon and the CLI: one line per event, readable in a terminal and in journald.

A line is ``<time> <level> <logger>: <message>``, and messages carry their details as ``key=value``
fields (``segment sealed camera=gate path=...``). When stderr is connected to journald the time is
left out (journald records it) and each line starts with its syslog priority (``<4>``), so
``journalctl -p warning`` and the colours in ``journalctl`` work.

Tracebacks are for bugs: an EdgerecError (an operator-facing problem) logged with ``exc_info`` is
rendered as ``error="..."`` on the same line instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

from .errors import EdgerecError, UsageError
from .redact import redact

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog priorities (sd-daemon(3)): what journald understands in a "<N>" line prefix.
SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# Libraries that are chatty at INFO; their warnings still come through (everything at debug).
QUIET_LOGGERS = ("libav",)
# Libraries kept at WARNING even at debug. The `watchdog` package logs every inotify event at debug:
# with the log file in the watched config directory, each logged event would be a new event (a loop).
SILENT_LOGGERS = ("watchdog",)


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown log level {level!r}; use one of debug, info, warning, error") from None


def syslog_priority(levelno: int) -> int:
    """The syslog priority for any logging level, including custom ones between the standard ones."""
    for std in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= std:
            return SYSLOG_PRIORITY[std]
    return SYSLOG_PRIORITY[logging.DEBUG]


def level_name(levelno: int) -> str:
    return logging.getLevelName(levelno).lower()


def quote_value(value: object) -> str:
    """A ``key=value`` value: bare when it is one plain word, else double-quoted with escapes."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def kv(**fields: object) -> str:
    """Format fields as ``a=1 b="two words"`` for a log message."""
    return " ".join(f"{key}={quote_value(value)}" for key, value in fields.items())


def is_journal_stream(stream: IO[str], env: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald connection systemd announced in ``$JOURNAL_STREAM``."""
    announced = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    if not announced:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return announced == f"{st.st_dev}:{st.st_ino}"


def rfc3339_ms(created_s: float) -> str:
    millis = int(created_s * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created_s)) + f".{millis:03d}Z"


class LineFormatter(logging.Formatter):
    """Formats a record as one line (plus traceback lines only for unexpected exceptions), credentials
    redacted (redact.py): every library's messages pass here, FFmpeg's and camera programs' too."""

    def __init__(self, journal: bool):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", "\\n")
        exc = record.exc_info[1] if record.exc_info else None
        trace = ""
        if isinstance(exc, EdgerecError):
            message += " " + kv(error=str(exc))
        elif record.exc_info:
            trace = self.formatException(record.exc_info)
        if record.stack_info:
            trace = (trace + "\n" if trace else "") + self.formatStack(record.stack_info)
        head = f"{level_name(record.levelno)} {record.name}: {message}"
        if not self.journal:
            line = f"{rfc3339_ms(record.created)} {head}"
            return line + ("\n" + trace if trace else "")
        # journald splits on newlines: give every traceback line the record's priority too.
        prefix = f"<{syslog_priority(record.levelno)}>"
        lines = [head, *trace.splitlines()] if trace else [head]
        return "\n".join(prefix + line for line in lines)


class _EdgerecHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so a second call replaces it instead of adding one."""


def setup_logging(
    level: str | int = "info", stream: IO[str] | None = None, journal: bool | None = None
) -> None:
    """Configure the root logger; safe to call again (on config reload or in tests).

    ``journal``: None detects journald from ``$JOURNAL_STREAM``; True/False force the format.
    """
    stream = sys.stderr if stream is None else stream
    levelno = parse_level(level)
    journal = is_journal_stream(stream) if journal is None else journal
    handler = _EdgerecHandler(stream)
    handler.setFormatter(LineFormatter(journal))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EdgerecHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    library_levelno = logging.NOTSET if levelno <= logging.DEBUG else max(levelno, logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(library_levelno)
    for name in SILENT_LOGGERS:
        logging.getLogger(name).setLevel(max(levelno, logging.WARNING))
