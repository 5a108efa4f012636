"""Reading the audit log in tests: which incident lines count once void lines are taken into account."""

from __future__ import annotations

from typing import Any


def counted_incident_lines(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The ``incident_opened``/``incident_closed`` lines that count, as (event, id): every one except those
    an ``incident_not_recorded`` line (same id and action) follows. Fails on a void line voiding nothing."""
    counted = []
    for e in events:
        if e["event"] in ("incident_opened", "incident_closed"):
            counted.append(e)
        elif e["event"] == "incident_not_recorded":
            voided = "incident_opened" if e["action"] == "open" else "incident_closed"
            earlier = [c for c in counted if (c["event"], c["id"]) == (voided, e["id"])]
            assert earlier, f"an incident_not_recorded line that voids nothing: {e}"
            counted.remove(earlier[-1])
    return [(e["event"], e["id"]) for e in counted]
