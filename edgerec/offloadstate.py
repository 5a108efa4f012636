"""What the offloader has put in the store: its own table, ``offloaded``, in the catalog's SQLite file.

Only ``edgerec offload`` writes this table (the recorder never touches it, and the offloader writes no
other). A row means "this object is in the store and was checked after upload": a sealed segment, the
provisional prefix of one still being written (with how many bytes it holds), the device key or an
incident record (with the SHA-256 of the version uploaded). Losing the table costs only re-uploads: the
objects are named by content position and rewritten byte for byte, so an upload is idempotent.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import CatalogError
from .layout import CATALOG_NAME

BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offloaded (
    key TEXT PRIMARY KEY,            -- object key in the store
    kind TEXT NOT NULL,              -- segment | provisional | device_key | incident | audit_mark
    path TEXT NOT NULL,              -- data directory path it came from ('' for records)
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,            -- hex SHA-256 of the object's bytes
    uploaded_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offloaded_path ON offloaded(path);
"""


@dataclass(frozen=True)
class Offloaded:
    key: str
    kind: str
    path: str
    size_bytes: int
    sha256: str
    uploaded_ns: int


class OffloadState:
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path) -> OffloadState:
        path = Path(data_dir) / CATALOG_NAME
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: cannot open the offload table: {exc}") from None
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def get(self, key: str) -> Offloaded | None:
        with self._lock:
            row = self._conn.execute("SELECT key, kind, path, size_bytes, sha256, uploaded_ns FROM offloaded "
                                     "WHERE key = ?", (key,)).fetchone()
        return Offloaded(*row) if row else None

    def all(self, kind: str | None = None) -> list[Offloaded]:
        sql = "SELECT key, kind, path, size_bytes, sha256, uploaded_ns FROM offloaded"
        params: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            params = (kind,)
        with self._lock:
            return [Offloaded(*r) for r in self._conn.execute(sql + " ORDER BY key", params)]

    def put(self, item: Offloaded) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO offloaded (key, kind, path, size_bytes, sha256, "
                               "uploaded_ns) VALUES (?, ?, ?, ?, ?, ?)",
                               (item.key, item.kind, item.path, item.size_bytes, item.sha256,
                                item.uploaded_ns))

    def remove(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM offloaded WHERE key = ?", (key,))
