"""The one exception hierarchy of edgerec: every error a user can act on is an EdgerecError.

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``; anything that
is not an EdgerecError is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgerecError(Exception):
    """Base class for errors with a message meant for the operator."""

    exit_code = 1


class ConfigError(EdgerecError):
    """The configuration is invalid; ``problems`` holds one line per problem, each naming its key path."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class UsageError(EdgerecError):
    """A command-line argument is wrong (bad time, missing file, ...)."""

    exit_code = 2


class KeyFormatError(EdgerecError):
    """A key string or key file is malformed, mistyped or of the wrong kind."""


class SegmentError(EdgerecError):
    """A segment file is damaged, truncated, tampered with or not a segment at all.

    ``offset`` is the byte offset where the problem was found (None when it concerns the whole file).
    """

    def __init__(self, path: object, offset: int | None, what: str):
        self.path = str(path)
        self.offset = offset
        self.what = what
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.path}{where}: {what}")


class CatalogError(EdgerecError):
    """The catalog database is unusable (wrong schema, locked, corrupt)."""


class CommandError(EdgerecError):
    """An incident command (from the CLI or MQTT) is invalid or conflicts with the stored state."""


class SourceError(EdgerecError):
    """A camera source cannot be opened or read (expected in the field; logged without traceback)."""



class UntrustedFileError(ConfigError):
    """A config file, a directory above it, or a file it names can be changed by someone other than root and
    the service user (see filetrust.py); each problem names the file and the fix."""
