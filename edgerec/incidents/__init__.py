"""Incidents: holds on footage opened and closed by command (MQTT or the CLI).

The package, by concern: ``commands`` (validating a command, the limits), ``replies`` (the reply
shape), ``replay`` (incidents as the audit log tells them) and ``service`` (applying commands to the
catalog and the audit log). What an incident holds is decided by ``edgerec.holds``; times are read by
``edgerec.timefmt``. The names below are the public line the CLI, the daemon and the tests use.
"""

from __future__ import annotations

from .commands import (
    ID_PATTERN,
    MAX_BY_CHARS,
    MAX_REASON_CHARS,
    IncidentCommand,
    IncidentLimitError,
    parse_command,
    window_limit_problem,
)
from .replay import LoggedIncidents, incidents_from_audit, unconfirmed_claims
from .replies import CommandResult, command_result_for_error
from .service import IncidentService

__all__ = [
    "ID_PATTERN",
    "MAX_BY_CHARS",
    "MAX_REASON_CHARS",
    "CommandResult",
    "IncidentCommand",
    "IncidentLimitError",
    "IncidentService",
    "LoggedIncidents",
    "command_result_for_error",
    "incidents_from_audit",
    "parse_command",
    "unconfirmed_claims",
    "window_limit_problem",
]
