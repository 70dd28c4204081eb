"""Validation of an endpoint config (``EndpointCoreConfigInput``) as Databricks applies it.

Input is read with the SDK's own dataclasses (``ServedEntityInput``, ``TrafficConfig``) and the
output is built from ``ServedEntityOutput``, so the JSON shapes are Databricks', not cvdeploy's.
The rules come from the SDK's field documentation (``databricks/sdk/service/serving.py``):
names of alphanumerics, ``-`` and ``_``; at most ten served entities; workload sizes Small
(4-4), Medium (8-16), Large (16-64) provisioned concurrency; ``workload_size`` and
``min/max_provisioned_concurrency`` mutually exclusive; a served entity's default name is
``entity_name-entity_version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from databricks.sdk.service.serving import (
    Route,
    ServedEntityInput,
    ServedEntityOutput,
    ServedModelState,
    ServedModelStateDeployment,
    ServingModelWorkloadType,
    TrafficConfig,
)

from .errors import ApiError

__all__ = [
    "MAX_SERVED_ENTITIES",
    "WORKLOAD_SIZES",
    "ParsedConfig",
    "check_endpoint_name",
    "default_served_name",
    "parse_config",
]

#: The endpoint name rule: the SDK says "alphanumeric characters, dashes, and underscores";
#: the 63-character bound is Databricks' documented limit for endpoint names.
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
MAX_SERVED_ENTITIES = 10
#: Provisioned concurrency (min, max) of each workload size, from ServedEntityInput's docs.
WORKLOAD_SIZES = {"Small": (4, 4), "Medium": (8, 16), "Large": (16, 64)}
_WORKLOAD_TYPES = {t.value for t in ServingModelWorkloadType}
_UNSUPPORTED = ("external_model", "provisioned_model_units", "max_provisioned_throughput")


@dataclass
class ParsedConfig:
    """A validated config: served entities in output form, routes, and its concurrency."""

    served_entities: list[ServedEntityOutput]
    routes: list[Route]
    #: (min, max) provisioned concurrency per served entity name, scale-to-zero applied.
    concurrency: dict[str, tuple[int, int]]

    @property
    def max_concurrency(self) -> int:
        return sum(high for _, high in self.concurrency.values())

    def names(self) -> list[str]:
        return [e.name or "" for e in self.served_entities]

    def entity(self, name: str) -> ServedEntityOutput | None:
        return next((e for e in self.served_entities if e.name == name), None)

    def set_deployment(self, deployment: ServedModelStateDeployment, message: str) -> None:
        for entity in self.served_entities:
            entity.state = ServedModelState(deployment=deployment, deployment_state_message=message)

    def traffic_config(self) -> TrafficConfig:
        return TrafficConfig(routes=list(self.routes))


def check_endpoint_name(name: Any) -> str:
    if not isinstance(name, str) or not _ENDPOINT_NAME.match(name):
        raise ApiError.invalid(
            f"Invalid endpoint name {name!r}: an endpoint name must be 1 to 63 characters, "
            "each an alphanumeric character, a dash or an underscore."
        )
    return name


def default_served_name(entity_name: str, entity_version: str) -> str:
    """``entity_name-entity_version``, a Unity Catalog name reduced to its last part.

    The SDK documents the default as ``entity_name-entity_version``; a UC name
    (``catalog.schema.model``) holds dots, which a served entity name cannot, so the catalog and
    schema are dropped (``model-1``). Databricks' exact behaviour here is not specified publicly.
    """
    return f"{entity_name.rsplit('.', 1)[-1]}-{entity_version}"


def parse_config(
    body: dict[str, Any], *, creator: str, now_ms: int, quota: int | None
) -> ParsedConfig:
    """The validated config of a create or update_config body (``served_entities`` etc.)."""
    if body.get("served_models") is not None:
        raise ApiError.invalid(
            "served_models is deprecated and not implemented by this fake workspace; "
            "send served_entities"
        )
    raw_entities = body.get("served_entities")
    if not isinstance(raw_entities, list) or not raw_entities:
        raise ApiError.invalid("The config must contain at least one served entity.")
    if len(raw_entities) > MAX_SERVED_ENTITIES:
        raise ApiError.invalid(
            f"A serving endpoint can have at most {MAX_SERVED_ENTITIES} served entities; "
            f"got {len(raw_entities)}."
        )
    pairs = [_served_entity(raw, creator, now_ms) for raw in raw_entities]
    entities = [entity for entity, _ in pairs]
    names = [e.name for e in entities]
    duplicates = sorted({n for n in names if n is not None and names.count(n) > 1})
    if duplicates:
        raise ApiError.invalid(f"Served entity names must be unique; repeated: {duplicates}.")
    routes = _routes(body.get("traffic_config"), [n or "" for n in names])
    concurrency = {entity.name or "": bounds for entity, bounds in pairs}
    total = sum(high for _, high in concurrency.values())
    if quota is not None and total > quota:
        # 429 RESOURCE_EXHAUSTED: the code Databricks' API reference lists for an exhausted
        # quota, mapped by the SDK to ResourceExhausted.
        raise ApiError(
            429,
            "RESOURCE_EXHAUSTED",
            f"The config asks for {total} provisioned concurrency in total, over this "
            f"workspace's quota of {quota}; lower max_provisioned_concurrency or the workload "
            "sizes, or ask your account team to raise the quota.",
        )
    return ParsedConfig(served_entities=entities, routes=routes, concurrency=concurrency)


def _served_entity(
    raw: Any, creator: str, now_ms: int
) -> tuple[ServedEntityOutput, tuple[int, int]]:
    if not isinstance(raw, dict):
        raise ApiError.invalid("Each served entity must be an object.")
    for key in _UNSUPPORTED:
        if raw.get(key) is not None:
            raise ApiError.invalid(
                f"{key} is not implemented by this fake workspace (custom models only)"
            )
    spec = ServedEntityInput.from_dict(raw)
    name_of = _text(raw, "entity_name")
    version = _text(raw, "entity_version")
    workload_type = raw.get("workload_type", "CPU")
    if workload_type not in _WORKLOAD_TYPES:
        raise ApiError.invalid(
            f"Invalid workload_type {workload_type!r}; valid types: {sorted(_WORKLOAD_TYPES)}."
        )
    low, high = _concurrency(raw)
    scale_to_zero = raw.get("scale_to_zero_enabled", False)
    if not isinstance(scale_to_zero, bool):
        raise ApiError.invalid("scale_to_zero_enabled must be a boolean.")
    served_name = spec.name if spec.name is not None else default_served_name(name_of, version)
    if not isinstance(served_name, str) or not _SERVED_NAME.match(served_name):
        raise ApiError.invalid(
            f"Invalid served entity name {served_name!r}: use 1 to 63 alphanumeric "
            "characters, dashes and underscores."
        )
    entity = ServedEntityOutput(
        name=served_name,
        entity_name=name_of,
        entity_version=version,
        workload_size=spec.workload_size,
        workload_type=ServingModelWorkloadType(workload_type),
        scale_to_zero_enabled=scale_to_zero,
        # Echoed only when given, as the concurrency range of a workload size is implied.
        min_provisioned_concurrency=raw.get("min_provisioned_concurrency"),
        max_provisioned_concurrency=raw.get("max_provisioned_concurrency"),
        environment_vars=spec.environment_vars,
        creator=creator,
        creation_timestamp=now_ms,
        state=ServedModelState(
            deployment=ServedModelStateDeployment.DEPLOYMENT_CREATING,
            deployment_state_message="Creating the served entity's container.",
        ),
    )
    # With scale to zero the lower bound of every size is 0 (ServedEntityInput's docs).
    return entity, (0 if scale_to_zero else low, high)


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError.invalid(f"Served entity field {key!r} is required and must be a string.")
    return value


def _concurrency(raw: dict[str, Any]) -> tuple[int, int]:
    size = raw.get("workload_size")
    low, high = raw.get("min_provisioned_concurrency"), raw.get("max_provisioned_concurrency")
    if size is not None and (low is not None or high is not None):
        raise ApiError.invalid(
            "workload_size cannot be used with min_provisioned_concurrency / "
            "max_provisioned_concurrency; give one or the other."
        )
    if size is not None:
        if size not in WORKLOAD_SIZES:
            raise ApiError.invalid(
                f"Invalid workload_size {size!r}; valid sizes: {sorted(WORKLOAD_SIZES)}."
            )
        return WORKLOAD_SIZES[size]
    if low is None or high is None:
        raise ApiError.invalid(
            "A served entity needs workload_size, or both min_provisioned_concurrency and "
            "max_provisioned_concurrency."
        )
    for key, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % 4:
            raise ApiError.invalid(
                f"{key}_provisioned_concurrency must be a non-negative multiple of 4; "
                f"got {value!r}."
            )
    if high == 0 or low > high:
        raise ApiError.invalid(
            "max_provisioned_concurrency must be positive and at least "
            f"min_provisioned_concurrency; got min {low}, max {high}."
        )
    return low, high


def _routes(raw: Any, names: list[str]) -> list[Route]:
    if raw is None or raw.get("routes") is None:
        if len(names) == 1:
            return [Route(served_model_name=names[0], traffic_percentage=100)]
        raise ApiError.invalid(
            "traffic_config is required when a config serves more than one entity."
        )
    routes = raw["routes"]
    if not isinstance(routes, list) or not routes:
        raise ApiError.invalid("traffic_config.routes must be a non-empty list.")
    parsed: list[Route] = []
    for item in routes:
        if not isinstance(item, dict):
            raise ApiError.invalid("Each route must be an object.")
        target = item.get("served_entity_name") or item.get("served_model_name")
        if target not in names:
            raise ApiError.invalid(
                f"Route names served entity {target!r}, which is not in the config "
                f"(served entities: {names})."
            )
        pct = item.get("traffic_percentage")
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise ApiError.invalid(
                f"traffic_percentage of route {target!r} must be an integer 0-100; got {pct!r}."
            )
        parsed.append(
            Route(
                served_model_name=target,
                served_entity_name=item.get("served_entity_name"),
                traffic_percentage=pct,
            )
        )
    targets = [r.served_model_name for r in parsed]
    if len(set(targets)) != len(targets):
        raise ApiError.invalid(f"Each served entity may have one route only; got {targets}.")
    total = sum(r.traffic_percentage for r in parsed)
    if total != 100:
        raise ApiError.invalid(
            f"The traffic percentages of the routes must sum to 100; got {total}."
        )
    return parsed
