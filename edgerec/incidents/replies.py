"""The reply to an incident command, the same shape for MQTT and the CLI: what was done, or why not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandResult:
    id: str | None
    action: str | None
    ok: bool
    error: str | None = None
    duplicate: bool = False
    held_segments: int = 0
    held_bytes: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "ok": self.ok, "error": self.error,
                "duplicate": self.duplicate, "held_segments": self.held_segments,
                "held_bytes": self.held_bytes}


def refused(incident_id: str | None, action: str | None, error: str | BaseException) -> CommandResult:
    """The reply refusing a command: the one shape of an error reply."""
    return CommandResult(incident_id, action, False, str(error))


def command_result_for_error(obj: object, error: str | BaseException) -> CommandResult:
    """The reply refusing a command object that could not be parsed: its id and action echoed when they
    are strings (``obj`` may be anything a sender put in a command)."""
    def text(key: str) -> str | None:
        value = obj.get(key) if isinstance(obj, Mapping) else None
        return value if isinstance(value, str) else None

    return refused(text("id"), text("action"), error)
