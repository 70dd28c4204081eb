"""The endpoint spec as Ray Serve options: pure mapping, no Ray import.

Kept apart from the Serve application so the mapping (replica bounds, target ongoing requests,
batching, route weights) is unit-tested without a cluster, and documented in one place
(docs/ray.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cvdeploy.config.schema import BatchingConfig
from cvdeploy.platforms.base import EndpointCoreConfig, ServedEntity
from cvdeploy.platforms.concurrency import CONCURRENCY_PER_REPLICA

__all__ = [
    "ROUTER_NAME",
    "BatchSettings",
    "SmoothWeightedRoundRobin",
    "batch_settings",
    "deployment_options",
    "route_prefix",
    "route_weights",
]

#: The ingress deployment of every cvdeploy application; marks an app as a cvdeploy endpoint.
ROUTER_NAME = "cvdeploy-router"

# Each replica reserves a tenth of a CPU: ONNX Runtime's threads are not Ray's to schedule, and
# whole-CPU reservations would let only two replicas start on a two-core machine.
_REPLICA_CPUS = 0.1
_CONSTRUCTOR_RETRIES = 3


@dataclass(frozen=True)
class BatchSettings:
    """``@serve.batch`` arguments for one served entity."""

    max_batch_size: int
    batch_wait_timeout_s: float


def route_prefix(endpoint: str) -> str:
    """The HTTP prefix of an endpoint's application, the gateway's path."""
    return f"/serving-endpoints/{endpoint}"


def batch_settings(entity: ServedEntity) -> BatchSettings:
    """The entity's ``batching`` section (defaults of :class:`BatchingConfig`) for Serve.

    Disabled batching is a batch of one: Serve then calls the model per image as it arrives.
    """
    config = BatchingConfig.model_validate(entity.batching or {})
    if not config.enabled:
        return BatchSettings(max_batch_size=1, batch_wait_timeout_s=0.0)
    return BatchSettings(
        max_batch_size=config.max_batch_size,
        batch_wait_timeout_s=config.max_queue_delay_ms / 1000.0,
    )


def deployment_options(entity: ServedEntity) -> dict[str, Any]:
    """``Deployment.options(...)`` for a served entity.

    Fixed bounds (``min == max`` without scale to zero) give ``num_replicas``; anything else an
    ``autoscaling_config`` whose ``target_ongoing_requests`` is the workload size's concurrency
    per replica, and ``min_replicas`` 0 when scale to zero is on.
    """
    low, high = entity.replica_bounds
    per_replica = CONCURRENCY_PER_REPLICA[entity.workload_size]
    options: dict[str, Any] = {
        "name": entity.name,
        # Queue beyond the target so bursts wait in the replica rather than fail at the proxy.
        "max_ongoing_requests": per_replica * 4,
        "ray_actor_options": {"num_cpus": _REPLICA_CPUS},
        # A model that fails to load fails the same way again: give up after a few tries so
        # the update is UPDATE_FAILED in seconds (Serve's default is 20 tries).
        "max_constructor_retry_count": _CONSTRUCTOR_RETRIES,
    }
    if entity.scale_to_zero_enabled:
        low = 0
    if low == high:
        options["num_replicas"] = low
        return options
    options["autoscaling_config"] = {
        "min_replicas": low,
        "max_replicas": high,
        "initial_replicas": max(low, 1),
        "target_ongoing_requests": per_replica,
    }
    return options


def route_weights(config: EndpointCoreConfig) -> list[tuple[str, int]]:
    """``(served entity, percentage)`` of each route that takes traffic."""
    return [
        (route.served_model_name, route.traffic_percentage)
        for route in config.routes
        if route.traffic_percentage
    ]


class SmoothWeightedRoundRobin:
    """Nginx's smooth weighted round robin: exact shares over every ``sum(weights)`` picks,
    interleaved (50/50 alternates), and no randomness for tests to tolerate.
    """

    def __init__(self, weights: list[tuple[str, int]]) -> None:
        self._weights = [(name, weight) for name, weight in weights if weight > 0]
        if not self._weights:
            raise ValueError("no route takes traffic (every weight is 0)")
        self._total = sum(weight for _, weight in self._weights)
        self._current = {name: 0 for name, _ in self._weights}

    def pick(self) -> str:
        """The next served entity."""
        for name, weight in self._weights:
            self._current[name] += weight
        best = max(self._current, key=self._current.__getitem__)
        self._current[best] -= self._total
        return best
