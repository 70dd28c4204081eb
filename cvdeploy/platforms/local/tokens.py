"""API tokens: the secret's format, its salted hash and the scope rule.

A secret is ``cvd_<id>_<random>``: the 16-hex-digit id lets the check find one row instead of
hashing against every stored token, and the random part (256 bits from :mod:`secrets`) is the
secret. Only a per-token salted scrypt hash is stored, so a copy of the state file (or a backup)
does not hand out working tokens. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from typing import Literal

from cvdeploy.errors import ConfigError, ModelNotFoundError
from cvdeploy.platforms.base import (
    PermissionDeniedError,
    UnauthenticatedError,
)
from cvdeploy.platforms.local.db import Database
from cvdeploy.platforms.local.records import TokenInfo

__all__ = [
    "TokenNotFoundError",
    "TokenStore",
    "PREFIX",
    "SCOPES",
    "Scope",
    "hash_secret",
    "matches",
    "new_secret",
    "require_scope",
    "split_secret",
]

Scope = Literal["query", "manage"]
SCOPES: tuple[Scope, ...] = ("query", "manage")
PREFIX = "cvd_"
_ID_HEX = 16

# scrypt's cost guards low-entropy passwords; these secrets carry 256 random bits, so a modest
# cost is enough and a check stays in the low milliseconds (the state layer caches hits too).
_N, _R, _P = 2**14, 8, 1


class TokenNotFoundError(ModelNotFoundError):
    """No active token with that id (404, RESOURCE_DOES_NOT_EXIST)."""


def new_secret() -> tuple[str, str]:
    """A fresh ``(token_id, secret)``; the secret is shown to the user once."""
    token_id = secrets.token_hex(_ID_HEX // 2)
    return token_id, f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def split_secret(secret: str | None) -> tuple[str, str]:
    """``(token_id, secret)`` for a well-formed ``secret``.

    Raises:
        UnauthenticatedError: No secret, or not one cvdeploy issued.
    """
    if not secret:
        raise UnauthenticatedError(
            "this action needs a token: send 'Authorization: Bearer <token>' "
            "(create one with `cvdeploy tokens create`)"
        )
    token_id = secret[len(PREFIX) : len(PREFIX) + _ID_HEX]
    well_formed = (
        secret.startswith(PREFIX)
        and len(secret) > len(PREFIX) + _ID_HEX + 1
        and secret[len(PREFIX) + _ID_HEX] == "_"
        and all(c in "0123456789abcdef" for c in token_id)
        and len(token_id) == _ID_HEX
    )
    if not well_formed:
        raise UnauthenticatedError("the token is not valid; check it or create a new one")
    return token_id, secret


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)


def matches(secret: str, salt: bytes, stored: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), stored)


def require_scope(token_scope: str, needed: Scope) -> None:
    """``manage`` implies ``query``.

    Raises:
        PermissionDeniedError: A ``query`` token on a management action.
    """
    if needed not in SCOPES:
        raise ValueError(f"needed scope must be one of {SCOPES}, got {needed!r}")
    if needed == "manage" and token_scope != "manage":
        raise PermissionDeniedError(
            f"this token has scope '{token_scope}' but this action needs a 'manage' token "
            "(create one with `cvdeploy tokens create --scope manage`)"
        )


class TokenStore(Database):
    """The token operations of :class:`PlatformState`."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(path, clock=clock)
        # sha256 of secrets already verified, so a gateway pays scrypt once per token, not
        # once per request; keyed by the stored hash too, so a replaced row is checked afresh.
        self._verified: dict[str, tuple[bytes, bytes]] = {}

    def create_token(self, scope: Scope, comment: str = "", *, author: str = "local") -> str:
        """A new token's secret; this is the only time it is available."""
        if scope not in SCOPES:
            raise ConfigError(f"token scope must be 'query' or 'manage', got {scope!r}")
        token_id, secret = new_secret()
        salt = os.urandom(16)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tokens (id, salt, hash, scope, comment, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, salt, hash_secret(secret, salt), scope, comment, self._clock()),
            )
            info = {"id": token_id, "scope": scope, "comment": comment}
            self._audit(conn, author, "create_token", None, None, info)
        return secret

    def check_token(self, secret: str | None, needed_scope: Scope) -> str:
        """The id of the token ``secret`` if it may do a ``needed_scope`` action.

        Raises:
            UnauthenticatedError: Missing, unknown or revoked token (401).
            PermissionDeniedError: A ``query`` token on a ``manage`` action (403).
        """
        token_id, secret = split_secret(secret)
        row = (
            self._conn()
            .execute(
                "SELECT salt, hash, scope FROM tokens WHERE id = ? AND revoked_at IS NULL",
                (token_id,),
            )
            .fetchone()
        )
        if row is None:
            raise UnauthenticatedError("the token is not valid; it may have been revoked")
        salt, stored, scope = row
        digest = hashlib.sha256(secret.encode()).digest()
        cached = self._verified.get(token_id)
        hit = (
            cached is not None
            and hmac.compare_digest(cached[0], stored)
            and hmac.compare_digest(cached[1], digest)
        )
        if not hit:
            if not matches(secret, salt, stored):
                raise UnauthenticatedError("the token is not valid; it may have been revoked")
            self._verified[token_id] = (stored, digest)
        require_scope(scope, needed_scope)
        return token_id

    def revoke_token(self, token_id: str, *, author: str = "local") -> None:
        """Revoke at once; raises :class:`TokenNotFoundError` (404) for an unknown id."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT scope, comment FROM tokens WHERE id = ? AND revoked_at IS NULL",
                (token_id,),
            ).fetchone()
            if row is None:
                raise TokenNotFoundError(f"no active token with id '{token_id}'")
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (self._clock(), token_id))
            info = {"id": token_id, "scope": row[0], "comment": row[1]}
            self._audit(conn, author, "revoke_token", None, info, None)
        self._verified.pop(token_id, None)

    def tokens_exist(self) -> bool:
        """Whether any unrevoked token exists (then every platform call needs one)."""
        row = self._conn().execute("SELECT 1 FROM tokens WHERE revoked_at IS NULL LIMIT 1")
        return row.fetchone() is not None

    def list_tokens(self) -> list[TokenInfo]:
        rows = self._conn().execute(
            "SELECT id, scope, comment, created_at, revoked_at FROM tokens ORDER BY created_at"
        )
        return [TokenInfo(*row) for row in rows.fetchall()]
