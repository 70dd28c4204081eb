"""The monitor's history: one row per snapshot, in SQLite, bounded per source.

``ModelMonitor`` appends a snapshot every ``metrics_interval`` seconds; the dashboard and
``cvdeploy monitor --history`` read them back. Old rows beyond ``max_rows`` per source are
deleted as new ones arrive, so the file stays small however long a monitor runs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MetricsHistory", "connect"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots (source, at);
"""


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction on a fresh connection, closed after (commit, or roll back on error).

    A connection per call: background writers, worker processes and readers never share one;
    WAL lets readers run while a writer appends.
    """
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            yield conn
    finally:
        conn.close()


class MetricsHistory:
    """Snapshots per source (a server URL or ``endpoint:NAME``), newest kept.

    Args:
        path: The SQLite file (created with its folder).
        max_rows: Rows kept per source.
    """

    def __init__(self, path: str | Path, max_rows: int = 10_000) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    def append(self, source: str, snapshot: dict[str, Any], at: float | None = None) -> None:
        when = time.time() if at is None else at
        text = json.dumps(snapshot, default=str)
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT INTO snapshots (source, at, data) VALUES (?, ?, ?)", (source, when, text)
            )
            conn.execute(
                "DELETE FROM snapshots WHERE source = ? AND id <= (SELECT id FROM snapshots"
                " WHERE source = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (source, source, self.max_rows),
            )

    def read(
        self, source: str, limit: int = 100, since: float | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` snapshots of ``source`` (after ``since``), oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT at, data FROM snapshots WHERE source = ? AND at >= ?"
                " ORDER BY id DESC LIMIT ?",
                (source, since or 0.0, limit),
            ).fetchall()
        return [{"at": at, **json.loads(data)} for at, data in reversed(rows)]

    def sources(self) -> list[str]:
        with self._connect() as conn:
            return [s for (s,) in conn.execute("SELECT DISTINCT source FROM snapshots ORDER BY 1")]
