"""One serving endpoint and its ``state.config_update`` life cycle.

Databricks' documented cycle (``EndpointState`` in the SDK): a create or ``update_config``
puts the new config in ``pending_config`` with ``config_update: IN_PROGRESS``; when the
served entities are deployed the pending config becomes ``config`` (``config_version``
incremented) and ``config_update`` goes back to ``NOT_UPDATING``; if the deployment fails,
``config_update`` is ``UPDATE_FAILED``, the old ``config`` keeps serving and ``pending_config``
keeps the failed one. ``state.ready`` is ``READY`` when a config is being served. Time passes
lazily: :meth:`Endpoint.advance` is called before every read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from databricks.sdk.service.serving import (
    EndpointCoreConfigOutput,
    EndpointCoreConfigSummary,
    EndpointPendingConfig,
    EndpointState,
    EndpointStateConfigUpdate,
    EndpointStateReady,
    ServedEntitySpec,
    ServedModelStateDeployment,
    ServingEndpoint,
    ServingEndpointDetailed,
    ServingEndpointDetailedPermissionLevel,
)

from .config import ParsedConfig

__all__ = ["Endpoint", "PendingUpdate"]

#: A build step: raises with the reason when a served entity cannot be deployed.
Builder = Callable[[ParsedConfig], None]


@dataclass
class PendingUpdate:
    """A config being deployed: its version, start time and the failure it is scripted for."""

    config: ParsedConfig
    version: int
    started: float
    fail_reason: str | None = None
    failed: bool = False


@dataclass
class Endpoint:
    name: str
    creator: str
    created: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    config: ParsedConfig | None = None
    config_version: int = 0
    pending: PendingUpdate | None = None
    last_updated: float = 0.0
    build_logs: dict[str, str] = field(default_factory=dict)
    server_logs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def updating(self) -> bool:
        return self.pending is not None and not self.pending.failed

    def start_update(self, config: ParsedConfig, now: float, fail_reason: str | None) -> None:
        versions = [self.config_version, self.pending.version if self.pending else 0]
        self.pending = PendingUpdate(config, max(versions) + 1, now, fail_reason)
        self.last_updated = now
        for name in config.names():
            self.build_logs[name] = f"{_stamp(now)} Build started for served entity {name}.\n"

    def advance(self, now: float, delay_s: float, build: Builder) -> None:
        """Finish the pending update if ``delay_s`` has passed since it started."""
        pending = self.pending
        if pending is None or pending.failed or now < pending.started + delay_s:
            return
        reason = pending.fail_reason
        if reason is None:
            try:
                build(pending.config)
            except Exception as exc:  # the build's own error is what the build log shows
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            pending.failed = True
            pending.config.set_deployment(
                ServedModelStateDeployment.DEPLOYMENT_FAILED,
                "Served entity creation failed; see the build logs.",
            )
            for name in pending.config.names():
                self.build_logs[name] += (
                    f"{_stamp(now)} ERROR building the model environment: {reason}\n"
                    f"{_stamp(now)} Build failed.\n"
                )
            return
        pending.config.set_deployment(ServedModelStateDeployment.DEPLOYMENT_READY, "")
        for entity in pending.config.served_entities:
            name = entity.name or ""
            self.build_logs[name] += f"{_stamp(now)} Build succeeded.\n"
            self.server_logs.setdefault(name, []).extend(
                [
                    f"{_stamp(now)} Loading model models:/{entity.entity_name}/"
                    f"{entity.entity_version}",
                    f"{_stamp(now)} Model server listening on 0.0.0.0:8080",
                ]
            )
        self.config, self.config_version, self.pending = pending.config, pending.version, None

    def state(self) -> EndpointState:
        if self.updating:
            update = EndpointStateConfigUpdate.IN_PROGRESS
        elif self.pending is not None:
            update = EndpointStateConfigUpdate.UPDATE_FAILED
        else:
            update = EndpointStateConfigUpdate.NOT_UPDATING
        ready = EndpointStateReady.READY if self.config else EndpointStateReady.NOT_READY
        return EndpointState(config_update=update, ready=ready)

    def detailed(self) -> dict[str, Any]:
        """The ``ServingEndpointDetailed`` JSON that ``get``, create and update return."""
        config = pending = None
        if self.config is not None:
            config = EndpointCoreConfigOutput(
                config_version=self.config_version,
                served_entities=self.config.served_entities,
                traffic_config=self.config.traffic_config(),
            )
        if self.pending is not None:
            pending = EndpointPendingConfig(
                config_version=self.pending.version,
                served_entities=self.pending.config.served_entities,
                traffic_config=self.pending.config.traffic_config(),
                start_time=int(self.pending.started * 1000),
            )
        return ServingEndpointDetailed(
            name=self.name,
            id=self.id,
            creator=self.creator,
            creation_timestamp=int(self.created * 1000),
            last_updated_timestamp=int(self.last_updated * 1000),
            config=config,
            pending_config=pending,
            state=self.state(),
            permission_level=ServingEndpointDetailedPermissionLevel.CAN_MANAGE,
            route_optimized=False,
        ).as_dict()

    def summary(self) -> dict[str, Any]:
        """The ``ServingEndpoint`` JSON of one item of ``list``."""
        config = None
        if self.config is not None:
            config = EndpointCoreConfigSummary(
                served_entities=[
                    ServedEntitySpec(
                        name=e.name, entity_name=e.entity_name, entity_version=e.entity_version
                    )
                    for e in self.config.served_entities
                ]
            )
        return ServingEndpoint(
            name=self.name,
            id=self.id,
            creator=self.creator,
            creation_timestamp=int(self.created * 1000),
            last_updated_timestamp=int(self.last_updated * 1000),
            config=config,
            state=self.state(),
        ).as_dict()

    def known_served_name(self, name: str) -> bool:
        configs = [self.config, self.pending.config if self.pending else None]
        return any(c is not None and name in c.names() for c in configs)


def _stamp(now: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
