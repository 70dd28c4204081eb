"""The rule behind ``cvdeploy endpoints update`` and ``ModelServer.update_endpoint``.

``next_config(current, model, version, traffic_percentage)`` is a pure function from the
endpoint's serving config to the config to switch to, so the CLI and the Python API agree and
the rule is tested without a platform:

* The target is the served entity for ``(model, version)``; a new one is named
  ``"{model}-{version}"`` (the last part of a Unity Catalog name, as in :class:`ServedEntity`)
  and copies the
  replica settings (workload size and type, scale to zero, replica bounds, batching) of the
  current *primary*, the entity with the most traffic.
* The target gets ``traffic_percentage``; the rest goes to the *receiver*, the other entity with
  the most traffic (the first listed on a tie), which keeps its settings. Every other entity is
  dropped: a route with 0% would keep replicas running that serve nothing. The exception is the
  endpoint's ``fallback_served_entity``, kept with its 0% route; rate limits are kept too.
* 100 sends everything to the target and drops the rest (a plain replacement).
* A version already served only changes the split. 0 for it sends everything to the receiver
  and drops it (abandon a canary); 0 for a new version is refused, as it would start replicas
  that get no traffic.
"""

from __future__ import annotations

from typing import Any

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.base import EndpointCoreConfig, ServedEntity, entity_name_for

__all__ = ["entity_name_for", "next_config"]

# What a new served entity inherits from the primary; its name and version are its own.
_INHERITED = (
    "workload_size",
    "workload_type",
    "scale_to_zero_enabled",
    "min_replicas",
    "max_replicas",
    "batching",
    "instance_type",
)


def next_config(
    current: EndpointCoreConfig, model: str, version: str, traffic_percentage: int
) -> EndpointCoreConfig:
    """The config that gives ``model`` version ``version`` ``traffic_percentage`` percent.

    Args:
        current: The endpoint's serving config.
        model: Registered model name of the target entity.
        version: Its version.
        traffic_percentage: 0-100, the target's share; the rest goes to the receiver.

    Returns:
        The new config, validated, with at most two served entities.

    Raises:
        ConfigError: the percentage is out of range, a new version would get 0%, there is no
            other entity to take the remaining share, or the new entity's name is taken.
    """
    version = str(version)
    if isinstance(traffic_percentage, bool) or not 0 <= traffic_percentage <= 100:
        raise ConfigError(
            f"traffic percentage must be an integer from 0 to 100, got {traffic_percentage!r}"
        )
    share = {r.served_model_name: r.traffic_percentage for r in current.routes}
    # sorted() is stable, so on a tie the entity listed first wins.
    by_traffic = sorted(current.served_entities, key=lambda e: -share.get(e.name, 0))
    target = next(
        (
            e
            for e in current.served_entities
            if e.entity_name == model and e.entity_version == version
        ),
        None,
    )
    if target is None:
        if traffic_percentage == 0:
            raise ConfigError(
                f"{model} version {version} is not served by this endpoint, so 0% traffic would "
                "start replicas that serve nothing; give it a share from 1 to 100"
            )
        target = _new_entity(current, model, version, primary=by_traffic[0])
    if traffic_percentage == 100:
        return _build(current, [(target, 100)])
    receiver = next((e for e in by_traffic if e.name != target.name), None)
    if receiver is None:
        raise ConfigError(
            f"{model} version {version} is the only served entity, so nothing can take the "
            f"other {100 - traffic_percentage}%; use 100, or add another version first"
        )
    if traffic_percentage == 0:
        return _build(current, [(receiver, 100)])
    return _build(current, [(receiver, 100 - traffic_percentage), (target, traffic_percentage)])


def _new_entity(
    current: EndpointCoreConfig, model: str, version: str, *, primary: ServedEntity
) -> ServedEntity:
    name = entity_name_for(model, version)
    if any(e.name == name for e in current.served_entities):
        raise ConfigError(
            f"served entity name '{name}' is already used by another model version on this "
            "endpoint; give the configs explicit names with --file"
        )
    body: dict[str, Any] = {k: getattr(primary, k) for k in _INHERITED}
    body.update(name=name, entity_name=model, entity_version=version)
    # Parse through the config so a bad model name is a ConfigError (400) that names it.
    return EndpointCoreConfig.parse({"served_entities": [body]}).served_entities[0]


def _build(
    current: EndpointCoreConfig, shares: list[tuple[ServedEntity, int]]
) -> EndpointCoreConfig:
    # Endpoint-wide settings survive a version change: the rate limits, and the fallback
    # entity, which keeps serving with its 0% route unless the change removed it on purpose.
    fallback = current.fallback_served_entity
    keep_fallback = fallback is not None and fallback not in {e.name for e, _ in shares}
    if keep_fallback:
        spare = next(e for e in current.served_entities if e.name == fallback)
        shares = [*shares, (spare, 0)]
    body: dict[str, Any] = {
        "served_entities": [e.model_dump(mode="json") for e, _ in shares],
        "traffic_config": {
            "routes": [
                {"served_model_name": e.name, "traffic_percentage": pct} for e, pct in shares
            ]
        },
        "rate_limits": [limit.model_dump(mode="json") for limit in current.rate_limits],
    }
    if fallback is not None:
        body["fallback_served_entity"] = fallback
    return EndpointCoreConfig.parse(body)
