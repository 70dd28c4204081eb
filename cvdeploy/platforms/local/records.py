"""The rows :class:`~cvdeploy.platforms.local.state.PlatformState` hands out, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cvdeploy.platforms.base import ConfigUpdate, EndpointCoreConfig, EndpointInfo, EndpointState

__all__ = ["AuditEntry", "EndpointRecord", "Revision", "RevisionStatus", "TokenInfo"]

#: PENDING until the platform reports the switch done (APPLIED) or failed (FAILED).
RevisionStatus = Literal["PENDING", "APPLIED", "FAILED"]


@dataclass(frozen=True)
class Revision:
    """One immutable config of an endpoint.

    Args:
        number: 1, 2, 3... per endpoint, never reused.
        rollback_of: For a revision written by ``rollback``, the revision it copies.
    """

    endpoint: str
    number: int
    config: EndpointCoreConfig
    created_at: float
    author: str
    status: RevisionStatus
    rollback_of: int | None = None


@dataclass(frozen=True)
class EndpointRecord:
    """An endpoint as stored: the serving config and the one being switched to, if any."""

    name: str
    creator: str
    created_at: float
    updated_at: float
    config_update: ConfigUpdate
    current_revision: int | None
    pending_revision: int | None
    config: EndpointCoreConfig | None
    pending_config: EndpointCoreConfig | None
    #: Why the last update failed (UPDATE_FAILED), else None.
    message: str | None = None

    def to_info(self, *, ready: bool = False) -> EndpointInfo:
        """The Databricks ``GET`` shape; readiness is the runtime's to say."""
        return EndpointInfo(
            name=self.name,
            config=self.config,
            pending_config=self.pending_config,
            state=EndpointState(
                ready="READY" if ready else "NOT_READY", config_update=self.config_update
            ),
            creator=self.creator,
            creation_timestamp=int(self.created_at * 1000),
            last_updated_timestamp=int(self.updated_at * 1000),
        )

    def snapshot(self) -> dict[str, Any]:
        """What the audit log records as ``before``/``after``."""
        return {
            "name": self.name,
            "current_revision": self.current_revision,
            "pending_revision": self.pending_revision,
            "config_update": self.config_update,
            "config": self.config.to_json() if self.config else None,
            "pending_config": self.pending_config.to_json() if self.pending_config else None,
        }


@dataclass(frozen=True)
class TokenInfo:
    """A token's public facts; the secret is never stored."""

    id: str
    scope: str
    comment: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One management change: who (token id or ``local``), when, what, before and after."""

    seq: int
    at: float
    who: str
    action: str
    endpoint: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
