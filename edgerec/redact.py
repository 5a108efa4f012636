"""Credentials never leave the process: one function takes them out of any text before it is logged,
audited, stored in the catalog, written to the status file or an export manifest, or published.

``redact`` replaces, wherever they appear in a text (a URL in a log line, in an FFmpeg error, in a
camera program's stderr, inside ``exec:`` arguments):

- the password of a URL's userinfo (``rtsp://admin:***@cam/``; a userinfo without ``:`` may be a token,
  so all of it: ``https://***@host/``);
- the value of a secret-looking query parameter (``?user=admin&password=***``, ``token``, ``auth``,
  ``pass``, ``pwd``, ``key``, ``secret``, ...);
- the value of a secret-looking option (``--password=***``, ``--token ***``) or assignment
  (``password=***`` after a space);
- every known secret value (camera passwords, the MQTT password: see ``register_secret``), raw or
  percent-encoded, also where no pattern would find it. Values shorter than ``MIN_SECRET_CHARS`` are
  only removed by the patterns: scrubbing every "1" from every line would make the logs useless.

Redacting too much is preferred to too little: an ``@`` in a URL's path makes the text before it look
like a userinfo, and it is redacted.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

REDACTED = "***"
MIN_SECRET_CHARS = 4

# Query parameter names whose value is a credential (compared in lower case, '-' read as '_').
SECRET_PARAMS = frozenset({
    "password", "passwd", "pass", "pwd", "pw", "passphrase", "token", "access_token", "auth", "auth_token",
    "authorization", "key", "apikey", "api_key", "secret", "client_secret", "sig", "signature",
    "credential", "credentials", "session", "sessionid",
})
# Option and assignment names outside URLs: only unmistakable ones (log lines are full of key=value).
_SECRET_WORDS = r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?token|auth[_-]?token)"

# scheme://userinfo@ : greedy to the last '@' of the URL-looking token, so that a password with an
# unencoded '@', '/' or '#' is covered as a whole.
_USERINFO_RE = re.compile(r"(?P<scheme>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://)"
                          r"(?P<userinfo>[^\s'\"<>@]*(?:@[^\s'\"<>@]*)*)@")
_PARAM_RE = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#;\s'\"<>]*)")
_OPTION_RE = re.compile(r"(?P<lead>(?:^|[\s'\"])-{1,2}" + _SECRET_WORDS + r")(?P<sep>=|\s+)"
                        r"(?P<value>[^\s'\"]+)", re.IGNORECASE)
_ASSIGN_RE = re.compile(r"(?P<lead>(?:^|[\s'\"{,(])" + _SECRET_WORDS + r")(?P<sep>=|:\s*)"
                        r"(?P<value>[^\s'\",;&)}]+)", re.IGNORECASE)


def _userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    if userinfo == REDACTED or userinfo.endswith(":" + REDACTED):
        return match[0]
    user, colon, _password = userinfo.partition(":")
    if colon and "/" not in user and "@" not in user:
        return f"{match['scheme']}{user}:{REDACTED}@"
    return f"{match['scheme']}{REDACTED}@"


def _param(match: re.Match[str]) -> str:
    if match["name"].lower().replace("-", "_") not in SECRET_PARAMS or not match["value"]:
        return match[0]
    return f"{match['lead']}{match['name']}={REDACTED}"


def _option(match: re.Match[str]) -> str:
    return f"{match['lead']}{match['sep']}{REDACTED}"


def _scrub(text: str, secret: str) -> str:
    # Replacing can join the ends of two pieces into the secret again ('a*' in 'aa*'): repeat until gone.
    # Each round removes at least one character of the secret that is not '*', so this ends.
    while secret in text:
        text = text.replace(secret, REDACTED)
    return text


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` without credentials; ``secrets``: the known secret values (None: those registered)."""
    return _redact(text, registered_secrets() if secrets is None else _variants(secrets))


def redact_obj(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of JSON-like data (dicts, lists, strings, numbers) with every string redacted, keys too."""
    return _redact_obj(obj, registered_secrets() if secrets is None else _variants(secrets))


def _redact(text: str, variants: tuple[str, ...]) -> str:
    if not text:
        return text
    text = _USERINFO_RE.sub(_userinfo, text)
    text = _PARAM_RE.sub(_param, text)
    text = _OPTION_RE.sub(_option, text)
    text = _ASSIGN_RE.sub(_option, text)
    for secret in variants:
        text = _scrub(text, secret)
    return text


def _redact_obj(obj: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(obj, str):
        return _redact(obj, secrets)
    if isinstance(obj, Mapping):
        return {(_redact_obj(k, secrets) if isinstance(k, str) else k): _redact_obj(v, secrets)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_obj(v, secrets) for v in obj]
    return obj


# ----- secrets found in the configuration ---------------------------------------------------------------
def url_secrets(text: str) -> list[str]:
    """The credentials a pattern finds in ``text`` (userinfo passwords, secret query values), decoded."""
    found: list[str] = []
    for match in _USERINFO_RE.finditer(text):
        userinfo = match["userinfo"]
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else userinfo)
    for match in _PARAM_RE.finditer(text):
        if match["name"].lower().replace("-", "_") in SECRET_PARAMS and match["value"]:
            found.append(match["value"])
    for regex in (_OPTION_RE, _ASSIGN_RE):
        found.extend(m["value"] for m in regex.finditer(text))
    return [s for s in found if s]


def _variants(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret as written and percent-encoded (both ways), longest first, short ones left out."""
    out: set[str] = set()
    for secret in secrets:
        for variant in (secret, quote(secret, safe=""), unquote(secret), quote(secret, safe="/:")):
            if len(variant) >= MIN_SECRET_CHARS and variant.strip("*"):
                out.add(variant)
    return tuple(sorted(out, key=lambda s: (-len(s), s)))


_lock = threading.Lock()
_registered: tuple[str, ...] = ()


def register_secret(*values: str | None) -> None:
    """Remember secret values for the life of the process; ``redact`` scrubs them from every text."""
    global _registered
    with _lock:
        _registered = _variants({*_registered, *(v for v in values if v)})


def register_text_secrets(text: str) -> None:
    """Register every credential the patterns find in ``text`` (a camera url, an exec: command)."""
    register_secret(*url_secrets(text))
    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    register_secret(password)


def registered_secrets() -> tuple[str, ...]:
    return _registered
