"""The local platform's durable state: endpoints, config revisions, tokens and the audit log.

One SQLite file, ``$CVDEPLOY_HOME/platform.db`` (:mod:`.db` has the schema, connections and
backups; :mod:`.tokens` the token operations). History is never rewritten: a config change
appends a revision and ``rollback`` appends a copy of an earlier one.

An update is two steps, as on Databricks: :meth:`PlatformState.update_config` records the new
revision as pending (``config_update`` IN_PROGRESS) and the platform, once the new replicas are
ready (or failed to load), calls :meth:`PlatformState.finish_update`; until then the previous
revision keeps serving, and a second update is refused with 409.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.base import (
    ConflictError,
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointNotFoundError,
    EndpointSpec,
)
from cvdeploy.platforms.local.db import SCHEMA_VERSION, default_state_path
from cvdeploy.platforms.local.records import EndpointRecord, Revision
from cvdeploy.platforms.local.tokens import TokenStore

__all__ = ["SCHEMA_VERSION", "PlatformState", "default_state_path"]

_ENDPOINT_COLUMNS = (
    "id, name, creator, created_at, updated_at, current_revision, pending_revision, "
    "config_update, message"
)


class PlatformState(TokenStore):
    """The platform's state in one SQLite file; safe to share between threads.

    Args:
        path: The file (created with its folder if missing); default
            ``$CVDEPLOY_HOME/platform.db``.
        clock: Seconds since the epoch; tests pass a fake.

    Every method that changes something takes ``author``: the token id that asked, or
    ``"local"`` for the machine's own user; it is what the audit log records as ``who``.
    """

    # -- endpoints --------------------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, name: str) -> tuple[Any, ...]:
        row = conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE name = ? AND deleted_at IS NULL",
            (name,),
        ).fetchone()
        if row is None:
            raise EndpointNotFoundError(
                f"endpoint '{name}' does not exist; `cvdeploy endpoints list` shows the endpoints"
            )
        return tuple(row)

    def _config(self, conn: sqlite3.Connection, eid: int, number: int | None) -> Any:
        if number is None:
            return None
        row = conn.execute(
            "SELECT config FROM revisions WHERE endpoint_id = ? AND revision = ?", (eid, number)
        ).fetchone()
        return EndpointCoreConfig.model_validate_json(row[0])

    def _record(self, conn: sqlite3.Connection, name: str) -> tuple[int, EndpointRecord]:
        eid, name, creator, created, updated, current, pending, update, message = self._row(
            conn, name
        )
        record = EndpointRecord(
            name=name,
            creator=creator,
            created_at=created,
            updated_at=updated,
            config_update=update,
            current_revision=current,
            pending_revision=pending,
            config=self._config(conn, eid, current),
            pending_config=self._config(conn, eid, pending),
            message=message,
        )
        return eid, record

    def get_endpoint(self, name: str) -> EndpointRecord:
        """Raises :class:`EndpointNotFoundError` (404) for an unknown name."""
        return self._record(self._conn(), name)[1]

    def list_endpoints(self) -> list[EndpointRecord]:
        """Every live endpoint, sorted by name."""
        conn = self._conn()
        names = conn.execute(
            "SELECT name FROM endpoints WHERE deleted_at IS NULL ORDER BY name"
        ).fetchall()
        return [self._record(conn, n)[1] for (n,) in names]

    def create_endpoint(self, spec: EndpointSpec, *, author: str = "local") -> EndpointRecord:
        """Store ``spec`` as revision 1, pending (``config_update`` IN_PROGRESS).

        Raises:
            EndpointAlreadyExistsError: The name is taken (409).
        """
        now = self._clock()
        with self._write() as conn:
            taken = conn.execute(
                "SELECT 1 FROM endpoints WHERE name = ? AND deleted_at IS NULL", (spec.name,)
            ).fetchone()
            if taken:
                raise EndpointAlreadyExistsError(
                    f"endpoint '{spec.name}' already exists; update its config or pick another name"
                )
            cur = conn.execute(
                "INSERT INTO endpoints (name, creator, created_at, updated_at, pending_revision,"
                " config_update) VALUES (?, ?, ?, ?, 1, 'IN_PROGRESS')",
                (spec.name, author, now, now),
            )
            self._add_revision(conn, cur.lastrowid or 0, 1, spec.config, author, None)
            _, after = self._record(conn, spec.name)
            self._audit(conn, author, "create_endpoint", spec.name, None, after.snapshot())
        return after

    def _add_revision(
        self,
        conn: sqlite3.Connection,
        eid: int,
        number: int,
        config: EndpointCoreConfig,
        author: str,
        rollback_of: int | None,
    ) -> None:
        conn.execute(
            "INSERT INTO revisions (endpoint_id, revision, config, created_at, author, status,"
            " rollback_of) VALUES (?, ?, ?, ?, ?, 'PENDING', ?)",
            (eid, number, config.model_dump_json(), self._clock(), author, rollback_of),
        )

    def _start_update(
        self,
        name: str,
        author: str,
        action: str,
        choose: Callable[[sqlite3.Connection, int, EndpointRecord], tuple[Any, int | None]],
    ) -> Revision:
        with self._write() as conn:
            eid, before = self._record(conn, name)
            if before.config_update == "IN_PROGRESS":
                raise ConflictError(
                    f"endpoint '{name}' is already switching to revision "
                    f"{before.pending_revision}; wait for it to finish, then retry"
                )
            config, rollback_of = choose(conn, eid, before)
            number = conn.execute(
                "SELECT max(revision) + 1 FROM revisions WHERE endpoint_id = ?", (eid,)
            ).fetchone()[0]
            self._add_revision(conn, eid, number, config, author, rollback_of)
            conn.execute(
                "UPDATE endpoints SET pending_revision = ?, config_update = 'IN_PROGRESS',"
                " message = NULL, updated_at = ? WHERE id = ?",
                (number, self._clock(), eid),
            )
            _, after = self._record(conn, name)
            self._audit(conn, author, action, name, before.snapshot(), after.snapshot())
            return self._revision(conn, eid, name, number)

    def update_config(
        self, name: str, config: EndpointCoreConfig, *, author: str = "local"
    ) -> Revision:
        """Append ``config`` as a new pending revision and mark the update IN_PROGRESS.

        Raises:
            EndpointNotFoundError: Unknown endpoint (404).
            ConflictError: An update is already in progress (409).
        """
        return self._start_update(name, author, "update_config", lambda *_: (config, None))

    def rollback(
        self, name: str, to_revision: int | None = None, *, author: str = "local"
    ) -> Revision:
        """Append a copy of an earlier revision as a new pending update.

        Without ``to_revision`` the copy is of the latest applied revision before the current
        one, so rolling back a rollback returns to where the first rollback started.

        Raises:
            EndpointNotFoundError: Unknown endpoint or revision (404).
            ConfigError: No earlier applied revision to return to (400).
            ConflictError: An update is already in progress (409).
        """

        def choose(
            conn: sqlite3.Connection, eid: int, before: EndpointRecord
        ) -> tuple[Any, int | None]:
            if to_revision is None:
                row = conn.execute(
                    "SELECT max(revision) FROM revisions WHERE endpoint_id = ? AND revision < ?"
                    " AND status = 'APPLIED'",
                    (eid, before.current_revision or 0),
                ).fetchone()
                if row[0] is None:
                    raise ConfigError(
                        f"endpoint '{name}' has no applied revision before "
                        f"{before.current_revision}; name one with to_revision"
                    )
                target = int(row[0])
            else:
                target = to_revision
            return self._revision(conn, eid, name, target).config, target

        return self._start_update(name, author, "rollback", choose)

    def finish_update(
        self, name: str, *, ok: bool, message: str | None = None, author: str = "local"
    ) -> EndpointRecord:
        """Record the outcome of the pending update: serve it, or keep the old one (FAILED).

        Raises:
            ConflictError: No update is in progress.
        """
        with self._write() as conn:
            eid, before = self._record(conn, name)
            pending = before.pending_revision
            if before.config_update != "IN_PROGRESS" or pending is None:
                raise ConflictError(f"endpoint '{name}' has no config update in progress")
            conn.execute(
                "UPDATE revisions SET status = ? WHERE endpoint_id = ? AND revision = ?",
                ("APPLIED" if ok else "FAILED", eid, pending),
            )
            conn.execute(
                "UPDATE endpoints SET current_revision = ?, pending_revision = NULL,"
                " config_update = ?, message = ?, updated_at = ? WHERE id = ?",
                (
                    pending if ok else before.current_revision,
                    "NOT_UPDATING" if ok else "UPDATE_FAILED",
                    None if ok else (message or "the update failed"),
                    self._clock(),
                    eid,
                ),
            )
            _, after = self._record(conn, name)
            action = "config_applied" if ok else "config_failed"
            self._audit(conn, author, action, name, before.snapshot(), after.snapshot())
        return after

    def delete_endpoint(self, name: str, *, author: str = "local") -> None:
        """Forget the endpoint; its revisions and audit entries stay in the file."""
        with self._write() as conn:
            eid, before = self._record(conn, name)
            conn.execute("UPDATE endpoints SET deleted_at = ? WHERE id = ?", (self._clock(), eid))
            self._audit(conn, author, "delete_endpoint", name, before.snapshot(), None)

    # -- revisions --------------------------------------------------------------------------

    def _revision(self, conn: sqlite3.Connection, eid: int, name: str, number: int) -> Revision:
        row = conn.execute(
            "SELECT revision, config, created_at, author, status, rollback_of FROM revisions"
            " WHERE endpoint_id = ? AND revision = ?",
            (eid, number),
        ).fetchone()
        if row is None:
            raise EndpointNotFoundError(f"endpoint '{name}' has no revision {number}")
        return Revision(
            endpoint=name,
            number=row[0],
            config=EndpointCoreConfig.model_validate_json(row[1]),
            created_at=row[2],
            author=row[3],
            status=row[4],
            rollback_of=row[5],
        )

    def revisions(self, name: str) -> list[Revision]:
        """Every revision of the endpoint, oldest first."""
        conn = self._conn()
        eid = self._row(conn, name)[0]
        numbers = conn.execute(
            "SELECT revision FROM revisions WHERE endpoint_id = ? ORDER BY revision", (eid,)
        ).fetchall()
        return [self._revision(conn, eid, name, n) for (n,) in numbers]

    def revision(self, name: str, number: int) -> Revision:
        conn = self._conn()
        return self._revision(conn, self._row(conn, name)[0], name, number)
