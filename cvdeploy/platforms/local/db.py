"""The SQLite file under the platform's state: schema, connections, transactions, backups.

WAL mode lets the control plane, the CLI and a backup read while one of them writes. Each
thread gets its own connection; a change runs in one ``BEGIN IMMEDIATE`` transaction together
with its audit entry, so the log can never miss a change nor record one that did not happen.
Triggers refuse edits to a revision's config and any edit or deletion of an audit entry, so
"history is never rewritten" holds for every writer of the file, not only this package.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.local.records import AuditEntry
from cvdeploy.registry.paths import cvdeploy_home

__all__ = ["SCHEMA_VERSION", "Database", "default_state_path"]

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS endpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        current_revision INTEGER,
        pending_revision INTEGER,
        config_update TEXT NOT NULL
            CHECK (config_update IN ('NOT_UPDATING', 'IN_PROGRESS', 'UPDATE_FAILED')),
        message TEXT,
        deleted_at REAL)""",
    # A deleted endpoint keeps its rows (the audit log refers to them); its name is free again.
    """CREATE UNIQUE INDEX IF NOT EXISTS endpoints_live_name
        ON endpoints (name) WHERE deleted_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS revisions (
        endpoint_id INTEGER NOT NULL REFERENCES endpoints (id),
        revision INTEGER NOT NULL,
        config TEXT NOT NULL,
        created_at REAL NOT NULL,
        author TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('PENDING', 'APPLIED', 'FAILED')),
        rollback_of INTEGER,
        PRIMARY KEY (endpoint_id, revision))""",
    """CREATE TRIGGER IF NOT EXISTS revisions_immutable
        BEFORE UPDATE OF endpoint_id, revision, config, created_at, author, rollback_of
        ON revisions BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END""",
    """CREATE TRIGGER IF NOT EXISTS revisions_kept BEFORE DELETE ON revisions
        BEGIN SELECT RAISE(ABORT, 'revisions are never deleted'); END""",
    """CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY,
        salt BLOB NOT NULL,
        hash BLOB NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('query', 'manage')),
        comment TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL)""",
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        endpoint TEXT,
        before TEXT,
        after TEXT)""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)


def default_state_path() -> Path:
    return cvdeploy_home() / "platform.db"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_schema(conn: sqlite3.Connection, where: object) -> None:
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    if row[0] is not None and row[0] > SCHEMA_VERSION:
        raise ConfigError(
            f"the platform state {where} has schema version {row[0]}, newer than this "
            f"cvdeploy understands ({SCHEMA_VERSION}); upgrade cvdeploy"
        )


class Database:
    """One state file shared by the threads of a process (see :class:`PlatformState`)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path) if path is not None else default_state_path()
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Token hashes and the audit log are nobody else's business.
            self.path.touch(mode=0o600)
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            _check_schema(conn, self.path)
            if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("this PlatformState is closed")
            # Each thread uses only its own connection; check_same_thread is off so that close()
            # may close them all from one thread.
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a read.
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; the object cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _audit(
        self,
        conn: sqlite3.Connection,
        who: str,
        action: str,
        endpoint: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (at, who, action, endpoint, before, after) VALUES (?,?,?,?,?,?)",
            (self._clock(), who, action, endpoint, _dumps(before), _dumps(after)),
        )

    def audit(self, limit: int = 100, endpoint: str | None = None) -> list[AuditEntry]:
        """The latest ``limit`` entries, newest first, optionally of one endpoint."""
        sql = "SELECT seq, at, who, action, endpoint, before, after FROM audit"
        args: tuple[Any, ...] = ()
        if endpoint is not None:
            sql += " WHERE endpoint = ?"
            args = (endpoint,)
        rows = self._conn().execute(f"{sql} ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [
            AuditEntry(
                seq=r[0],
                at=r[1],
                who=r[2],
                action=r[3],
                endpoint=r[4],
                before=json.loads(r[5]) if r[5] is not None else None,
                after=json.loads(r[6]) if r[6] is not None else None,
            )
            for r in rows.fetchall()
        ]

    def backup(self, dest: str | os.PathLike[str]) -> Path:
        """Copy the state to ``dest`` while it is in use (SQLite's online backup: consistent)."""
        return _copy(self._conn(), Path(dest))

    @staticmethod
    def restore(src: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None) -> Path:
        """Replace the state file ``dest`` with the backup ``src``; stop the platform first.

        Raises:
            ConfigError: ``src`` is missing or not a cvdeploy platform state.
        """
        src_path = Path(src)
        dest_path = Path(dest) if dest is not None else default_state_path()
        if not src_path.is_file():
            raise ConfigError(f"backup {src_path} does not exist")
        try:
            source = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise ConfigError(f"backup {src_path} cannot be opened: {exc}") from None
        try:
            try:
                ok = source.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                _check_schema(source, src_path)
            except sqlite3.DatabaseError:
                ok = False
            if not ok:
                raise ConfigError(f"{src_path} is not a cvdeploy platform state backup")
            return _copy(source, dest_path)
        finally:
            source.close()


def _copy(source: sqlite3.Connection, dest: Path) -> Path:
    # Build the copy beside the target and rename it in, so a reader never sees half a file;
    # stale -wal/-shm files of the old target would otherwise be replayed over the new one.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, dest)
    return dest
