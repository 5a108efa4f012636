"""The rules every value from outside keeps (MQTT commands, CLI arguments, the config): text without
control characters, JSON numbers that are finite and exactly representable. Pure.

One rule each, used by every parser, so that an id, a name or a reason that reaches the audit log, a
status, a log line or a terminal cannot carry bytes that rewrite what a reader sees:

- text: no C0 control (U+0000–U+001F, tab and newline included), no DEL (U+007F), no C1 control
  (U+0080–U+009F), no bidirectional override or isolate (U+202A–U+202E, U+2066–U+2069: they reorder what
  a terminal or a web page shows, "Trojan Source"). Multi-line free text is not needed anywhere.
- JSON numbers: finite (``NaN``, ``Infinity`` and overflowing literals like ``1e400``, which Python's
  ``json`` turns into ``inf``, are refused) and integers within ±(2^53 − 1), the range every JSON reader
  holds exactly (RFC 7493, I-JSON).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_JSON_INT = 2**53 - 1
_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def is_unsafe_char(ch: str) -> bool:
    """A character no id, name or free text may carry (see the module's rule)."""
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _BIDI


def text_problem(text: str) -> str | None:
    """Why ``text`` breaks the text rule (naming the first bad character and where), or None."""
    for index, ch in enumerate(text):
        if is_unsafe_char(ch):
            kind = "a bidirectional-text control" if ord(ch) in _BIDI else "a control character"
            return f"contains {kind} (U+{ord(ch):04X} at position {index + 1})"
    return None


class JsonNumberError(ValueError):
    """A JSON number that breaks the number rule (the message says which)."""


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonNumberError(f"number {text[:32]} is not finite")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 17:  # more digits than 2^53 has: refused before Python converts thousands of digits
        raise JsonNumberError(f"integer {text[:24]}... is too large (limit ±{MAX_JSON_INT})")
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise JsonNumberError(f"integer {text} is too large (limit ±{MAX_JSON_INT})")
    return value


def _refuse_constant(name: str) -> Any:
    raise JsonNumberError(f"{name} is not a JSON number")


def loads_json(text: str) -> Any:
    """``json.loads`` keeping the number rule; raises JsonNumberError for a bad number, ValueError (or
    RecursionError, for deep nesting) when the text is not JSON."""
    return json.loads(text, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_refuse_constant)
