"""An authenticated reading of the time of day: the ``Date`` header of an HTTPS server whose certificate
verifies (``retention.trusted_time``). Only a new boot asks it, to credit a downtime longer than the
unproven cap (docs/design/time.md); a failure just means the cap applies.

A TLS certificate check itself depends on the clock (a certificate's validity period), so a clock set
far wrong may make the check fail: that costs the credit, never footage.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0


def date_of(header: str | None) -> int | None:
    """An HTTP ``Date`` header (RFC 9110, one-second resolution) as UTC ns; None when absent or invalid."""
    if not header:
        return None
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp()) * 1_000_000_000


def fetch(url: str, ca_file: Path | None = None, timeout_s: float = TIMEOUT_S) -> int | None:
    """The server's time (UTC ns), read from its ``Date`` header over a verified TLS connection; None when
    it cannot be had (the reason is logged)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "edgerec"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            header = response.headers.get("Date")
    except urllib.error.HTTPError as exc:  # an error status still carries the server's Date
        header = exc.headers.get("Date") if exc.headers is not None else None
    except (OSError, ValueError) as exc:
        log.warning("trusted time not read url=%s error=%s", url, getattr(exc, "reason", exc))
        return None
    when = date_of(header)
    if when is None:
        log.warning("trusted time not read url=%s error=no valid Date header", url)
    return when
