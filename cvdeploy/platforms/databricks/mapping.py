"""Pure conversions between cvdeploy's endpoint spec and Databricks' serving-endpoints JSON.

cvdeploy's spec (:mod:`cvdeploy.platforms.base`) is Databricks' JSON plus a few extensions;
this module decides, field by field, what each extension becomes on Databricks, so nothing is
dropped silently (``docs/databricks.md`` has the table):

==========================  ===============================================================
cvdeploy                    Databricks
==========================  ===============================================================
``instance_type``           ``workload_type`` / ``workload_size`` (via ``instance_types``);
                            a contradicting explicit ``workload_*`` is a ConfigError
``min_replicas``            ``min_provisioned_concurrency`` = replicas x concurrency per
``max_replicas``            replica of the workload size (Small 4, Medium 16, Large 64),
                            sent instead of ``workload_size`` (Databricks takes one or the
                            other); one replica (1 to 1) sends ``workload_size`` alone
``scale_to_zero_enabled``   ``scale_to_zero_enabled``
``traffic_config.routes``   ``traffic_config.routes``
``rate_limits``             ``rate_limits`` (per minute only; per second is a ConfigError)
``batching``                refused: Databricks does not batch custom-model requests
``fallback_served_entity``  refused: Databricks has no fallback between served entities
==========================  ===============================================================

Served-entity names follow Databricks' default where cvdeploy derived them: a Unity Catalog
model ``catalog.schema.model`` version 3 is served as ``model-3`` (cvdeploy alone would say
``catalog_schema_model-3`` before it took Databricks' rule); a name the user chose is kept.

Everything here is a pure function of its arguments, so the table is unit-tested without a
workspace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import ValidationError

from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.platforms.base import (
    EndpointCoreConfig,
    EndpointInfo,
    EndpointSpec,
    ServedEntity,
    WorkloadSize,
    WorkloadType,
)
from cvdeploy.platforms.concurrency import CONCURRENCY_PER_REPLICA, replicas_from_concurrency
from cvdeploy.platforms.instance_types import lookup

__all__ = [
    "CONCURRENCY_PER_REPLICA",
    "DatabricksConfig",
    "config_to_databricks",
    "databricks_entity_name",
    "entity_from_databricks",
    "entity_to_databricks",
    "info_from_databricks",
    "replicas_from_concurrency",
    "spec_to_databricks",
    "validate_endpoint_name",
]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
_WORKLOAD_TYPES: frozenset[str] = frozenset(get_args(WorkloadType))
_WORKLOAD_SIZES: frozenset[str] = frozenset(get_args(WorkloadSize))
# Databricks' states cvdeploy has no word for: a cancelled update left the old config serving,
# which is what UPDATE_FAILED means to cvdeploy's callers.
_CONFIG_UPDATES = {"UPDATE_CANCELED": "UPDATE_FAILED"}


@dataclass(frozen=True)
class DatabricksConfig:
    """A config as Databricks takes it: the ``config`` body and the endpoint's rate limits."""

    config: dict[str, Any]
    rate_limits: list[dict[str, Any]] = field(default_factory=list)


def validate_endpoint_name(name: str) -> str:
    """``name`` if Databricks would take it as an endpoint name.

    Raises:
        ConfigError: the name is empty, longer than 63 characters or has other characters than
            letters, digits, ``-`` and ``_``; the message names the problem.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("an endpoint name is required (1-63 letters, digits, '-' or '_')")
    if len(name) > 63:
        raise ConfigError(
            f"endpoint name '{name[:70]}...' has {len(name)} characters; Databricks allows at "
            "most 63"
        )
    if not _NAME.fullmatch(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "-_"))})
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(
            f"endpoint name '{name}' has characters Databricks refuses ({shown}); use only "
            "letters, digits, '-' and '_'"
        )
    return name


def databricks_entity_name(entity: ServedEntity) -> str:
    """The served-entity name sent to Databricks: Databricks' default where cvdeploy derived one.

    A Unity Catalog name ``catalog.schema.model`` gives ``model-<version>``; a name the user set
    (anything but cvdeploy's derived ``catalog_schema_model-<version>``) is kept.
    """
    # Specs written before cvdeploy took Databricks' rule derived "catalog_schema_model-N".
    derived = f"{entity.entity_name}-{entity.entity_version}".replace(".", "_")
    if entity.name != derived or "." not in entity.entity_name:
        return entity.name
    short = f"{entity.entity_name.rsplit('.', 1)[-1]}-{entity.entity_version}"
    if not _NAME.fullmatch(short):
        raise ConfigError(
            f"the default served entity name '{short}' of {entity.entity_name} version "
            f"{entity.entity_version} is not valid on Databricks; set 'name' on this entity"
        )
    return short


def _workload(entity: ServedEntity) -> tuple[str, str]:
    """The workload type and size, with ``instance_type`` resolved (and checked)."""
    if entity.instance_type is None:
        return entity.workload_type, entity.workload_size
    instance = lookup(entity.instance_type)
    explicit = entity.model_fields_set
    for key, mine in (
        ("workload_type", instance.workload_type),
        ("workload_size", instance.workload_size),
    ):
        given = getattr(entity, key)
        if key in explicit and given != mine:
            raise ConfigError(
                f"served entity '{entity.name}': instance_type {instance.name} means {key} "
                f"{mine} on Databricks, but {key} {given} is given; drop one of them"
            )
    return instance.workload_type, instance.workload_size


def entity_to_databricks(entity: ServedEntity) -> dict[str, Any]:
    """The ``ServedEntityInput`` JSON of a cvdeploy served entity.

    Raises:
        ConfigError: the entity sets ``batching`` (Databricks has no batching for custom
            models), or an ``instance_type`` that contradicts its ``workload_*``.
    """
    if entity.batching is not None:
        raise ConfigError(
            f"served entity '{entity.name}': batching is not supported on Databricks (Model "
            "Serving sends each request to the model as it comes); remove 'batching'"
        )
    workload_type, workload_size = _workload(entity)
    body: dict[str, Any] = {
        "name": databricks_entity_name(entity),
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "workload_type": workload_type,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
    }
    if entity.replica_bounds == (1, 1):
        # One replica is what a workload size alone means to Databricks (Small 4, Medium 8-16,
        # Large 16-64 concurrent requests), so its own sizing is sent.
        body["workload_size"] = workload_size
        return body
    low, high = entity.replica_bounds
    per_replica = CONCURRENCY_PER_REPLICA[workload_size]
    body["min_provisioned_concurrency"] = low * per_replica
    body["max_provisioned_concurrency"] = high * per_replica
    return body


def config_to_databricks(config: EndpointCoreConfig) -> DatabricksConfig:
    """The Databricks body of a cvdeploy config (served entities, routes, rate limits).

    Raises:
        ConfigError: a field Databricks has no counterpart for is set (``batching``,
            ``fallback_served_entity``) or a rate limit renews per second.
    """
    if config.fallback_served_entity is not None:
        raise ConfigError(
            f"fallback_served_entity ('{config.fallback_served_entity}') is not supported on "
            "Databricks, which has no fallback between served entities; remove it (route "
            "traffic with traffic_config instead)"
        )
    entities = [entity_to_databricks(e) for e in config.served_entities]
    renamed = {
        e.name: body["name"] for e, body in zip(config.served_entities, entities, strict=True)
    }
    routes = [
        {
            "served_model_name": renamed[r.served_model_name],
            "traffic_percentage": r.traffic_percentage,
        }
        for r in config.routes
    ]
    limits = []
    for limit in config.rate_limits:
        if limit.renewal_period != "minute":
            raise ConfigError(
                f"rate limit of {limit.calls} calls per {limit.renewal_period} is not supported "
                f"on Databricks, whose limits renew per minute; give {limit.calls * 60} calls "
                "per minute instead"
            )
        limits.append({"calls": limit.calls, "key": limit.key, "renewal_period": "minute"})
    body = {"served_entities": entities, "traffic_config": {"routes": routes}}
    return DatabricksConfig(config=body, rate_limits=limits)


def entity_from_databricks(data: Mapping[str, Any]) -> dict[str, Any]:
    """The cvdeploy served-entity JSON of a Databricks ``served_entities[]`` (or legacy
    ``served_models[]``) item, keeping only what cvdeploy's spec knows.

    Raises:
        CVDeployError: the entity is an external or foundation model, or runs on a workload
            type cvdeploy cannot describe.
    """
    name = data.get("name") or ""
    if data.get("external_model") or data.get("foundation_model"):
        raise CVDeployError(
            f"served entity '{name}' is an external or foundation model, which cvdeploy does not "
            "manage; use the Databricks UI or SDK for it"
        )
    entity_name = data.get("entity_name") or data.get("model_name")
    version = data.get("entity_version") or data.get("model_version")
    workload_type = data.get("workload_type") or "CPU"
    if workload_type not in _WORKLOAD_TYPES:
        raise CVDeployError(
            f"served entity '{name}' runs on workload type {workload_type}, which cvdeploy "
            f"cannot describe (it knows {', '.join(sorted(_WORKLOAD_TYPES))})"
        )
    size = data.get("workload_size")
    scale_to_zero = bool(data.get("scale_to_zero_enabled", False))
    body: dict[str, Any] = {
        "name": name,
        "entity_name": entity_name,
        "entity_version": version,
        "workload_type": workload_type,
        "workload_size": size if size in _WORKLOAD_SIZES else "Small",
        "scale_to_zero_enabled": scale_to_zero,
    }
    low, high = data.get("min_provisioned_concurrency"), data.get("max_provisioned_concurrency")
    if isinstance(low, int) and isinstance(high, int):
        body["workload_size"], body["min_replicas"], body["max_replicas"] = (
            replicas_from_concurrency(low, high, size, scale_to_zero)
        )
    elif isinstance(data.get("min_replicas"), int):
        # A cvdeploy control plane answers with its own replica bounds.
        body["min_replicas"] = data["min_replicas"]
        body["max_replicas"] = data.get("max_replicas")
    return body


def _config_from_databricks(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    items = data.get("served_entities") or data.get("served_models") or []
    if not items:
        return None
    body: dict[str, Any] = {"served_entities": [entity_from_databricks(i) for i in items]}
    routes = (data.get("traffic_config") or {}).get("routes") or []
    if routes:
        body["traffic_config"] = {
            "routes": [
                {
                    "served_model_name": r.get("served_model_name") or r.get("served_entity_name"),
                    "traffic_percentage": r.get("traffic_percentage", 0),
                }
                for r in routes
            ]
        }
    return body


def info_from_databricks(data: Mapping[str, Any]) -> EndpointInfo:
    """The :class:`EndpointInfo` of a Databricks ``ServingEndpointDetailed`` JSON.

    Raises:
        CVDeployError: the endpoint holds something cvdeploy's spec cannot describe; the
            message says what.
    """
    name = str(data.get("name") or "")
    state = data.get("state") or {}
    update = state.get("config_update") or "NOT_UPDATING"
    body: dict[str, Any] = {
        "name": name,
        "config": _config_from_databricks(data.get("config")),
        "pending_config": _config_from_databricks(data.get("pending_config")),
        "state": {
            "ready": state.get("ready") or "NOT_READY",
            "config_update": _CONFIG_UPDATES.get(update, update),
        },
        "creator": data.get("creator") or "databricks",
        "creation_timestamp": int(data.get("creation_timestamp") or 0),
        "last_updated_timestamp": int(
            data.get("last_updated_timestamp") or data.get("creation_timestamp") or 0
        ),
    }
    try:
        return EndpointInfo.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)[:3]
        )
        raise CVDeployError(
            f"endpoint '{name}' on Databricks has a config cvdeploy cannot read ({problems})"
        ) from None


def spec_to_databricks(spec: EndpointSpec) -> tuple[str, DatabricksConfig]:
    """The endpoint name (validated) and the Databricks body of a create request."""
    return validate_endpoint_name(spec.name), config_to_databricks(spec.config)
