"""The daemon's log as structured events, so tests assert on what happened rather than on its wording.

``edgerec.logsetup`` writes one line per event: ``<time> <level> <logger>: <name> key=value ...``
(values bare, or double-quoted with escapes). An event's name is the message up to its first field
(``segment sealed``); its fields are the ``key=value`` pairs after it, as strings. Words after the last
field's value (``id=7 action=open: not in the catalog``) are prose, not part of the value. The same parser
reads a daemon's log file and the records ``caplog`` captured in-process (formatted by the daemon's
own ``LineFormatter``, so both see exactly the same line).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgerec.logsetup import LineFormatter

# "<time> <level> <logger>: <message>", or under journald "<N><level> <logger>: <message>".
_LINE = re.compile(r"^(?:\S+Z |<\d>)(debug|info|warning|error|critical) ([\w.]+): (.*)$")
# A field starts at " key=" (a lower-case identifier); its value runs to the next field.
_FIELD = re.compile(r"(?:^| )([a-z_][a-z0-9_]*)=")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Event:
    """One log line: its level, logger, event name and fields (values as the line wrote them)."""

    level: str
    logger: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)

    def has(self, **fields: object) -> bool:
        """True when every given field has that value (compared as text, the way the line wrote it)."""
        return all(self.fields.get(key) == str(value) for key, value in fields.items())


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
# The last value, one word, then lower-case prose: "open: not in the catalog", "x; systemd restarts it".
_WORD_THEN_PROSE = re.compile(r"^(\S+)[:;] [a-z]")


def _value(text: str, last: bool) -> str:
    text = text.strip()
    quoted = _QUOTED.match(text)
    if quoted is not None:
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), quoted.group(1))
    word = _WORD_THEN_PROSE.match(text) if last else None
    return word.group(1) if word is not None else text


def parse_message(message: str) -> tuple[str, dict[str, str]]:
    """``"segment sealed camera=gate path=a/b.seg"`` -> ``("segment sealed", {"camera": "gate", ...})``."""
    starts = list(_FIELD.finditer(message))
    if not starts:
        return message.strip(), {}
    name = message[: starts[0].start()].strip()
    fields: dict[str, str] = {}
    for here, after in zip(starts, [*starts[1:], None], strict=True):
        end = after.start() if after is not None else len(message)
        fields[here.group(1)] = _value(message[here.end() : end], last=after is None)
    return name, fields


def parse_line(line: str) -> Event | None:
    """The event of one log line; None for anything else (traceback lines, other programs' output)."""
    m = _LINE.match(line)
    if m is None:
        return None
    name, fields = parse_message(m.group(3))
    return Event(m.group(1), m.group(2), name, fields)


def parse_log(text: str) -> list[Event]:
    """Every event in a log file's text, in order."""
    return [e for e in map(parse_line, text.splitlines()) if e is not None]


_FORMATTER = LineFormatter(journal=False)


def from_records(records: Iterable[logging.LogRecord]) -> list[Event]:
    """Events of log records captured in-process (``caplog.records``)."""
    events = []
    for record in records:
        event = parse_line(_FORMATTER.format(record).splitlines()[0])
        assert event is not None, f"not a log line: {record.getMessage()!r}"
        events.append(event)
    return events


def named(events: Iterable[Event], name: str, **fields: object) -> list[Event]:
    """The events called ``name`` whose fields include ``fields``."""
    return [e for e in events if e.name == name and e.has(**fields)]
