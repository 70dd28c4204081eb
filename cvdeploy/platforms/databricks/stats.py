"""Successive metrics exports of an endpoint as the ``Platform.stats`` dict the rollout reads.

Databricks' export counts the last minute. Two consequences:

* Figures have one-minute resolution: ``last_minute`` is Databricks' minute whatever
  ``window_s`` is asked, so a rollout on Databricks needs ``rollout.window_s >= 60``.
* Databricks keeps no running totals, so :class:`StatsTracker` makes ``requests_total`` and
  ``errors_total`` by adding a served entity's last-minute count at most once per minute of
  wall clock. Between two looks more than a minute apart the minutes in between are missed:
  the totals are a lower bound unless something looks every minute (a rollout does).

cvdeploy's control plane exports cumulative counters: the totals are then exact, and
``last_minute`` is the difference from an earlier look by the same tracker
(``basis: "since_last_look"``), or the counters' whole life on the first look
(``basis: "lifetime"``, ``window_s`` None).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cvdeploy.monitoring.window import figures
from cvdeploy.platforms.base import EndpointInfo
from cvdeploy.platforms.databricks.mapping import CONCURRENCY_PER_REPLICA
from cvdeploy.platforms.databricks.metrics import (
    Dialect,
    EntitySample,
    MetricsExport,
    latency_summary,
    merge_samples,
)

__all__ = ["Basis", "StatsTracker"]

Basis = Literal["last_minute", "since_last_look", "lifetime"]

_MINUTE_S = 60.0
_HISTORY_S = 300.0


@dataclass
class _Running:
    requests: int = 0
    errors: int = 0
    added_at: float | None = None


class StatsTracker:
    """Turns successive exports of endpoints into ``Platform.stats`` dicts.

    It holds what Databricks does not: running totals per served entity, and (for cvdeploy's
    cumulative series) the earlier looks to difference against. One tracker per
    :class:`~cvdeploy.platforms.databricks.DatabricksPlatform`; the clock is injectable so the
    once-a-minute rule is tested without waiting.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._running: dict[tuple[str, str], _Running] = {}
        self._looks: dict[str, deque[tuple[float, MetricsExport]]] = {}

    def stats(
        self,
        info: EndpointInfo,
        export: MetricsExport,
        window_s: float = 60.0,
        deployed: Mapping[str, bool] | None = None,
    ) -> dict[str, Any]:
        """The ``stats`` dict of endpoint ``info`` from its ``export``.

        Args:
            info: The endpoint as ``get`` returned it (served entities and routes).
            export: Its parsed metrics export.
            window_s: The window asked for; cvdeploy's series honour it, Databricks' are
                always its last minute.
            deployed: Per served entity, whether Databricks reports it deployed (for the
                replica estimate when the export has no provisioned concurrency).
        """
        now = self._clock()
        name = info.name
        if export.dialect == "cvdeploy":
            window, basis, earlier = self._earlier(name, now, window_s, export)
        else:
            window, basis, earlier = _MINUTE_S, "last_minute", None
        config = info.config
        served = config.served_entities if config is not None else []
        traffic = (
            {r.served_model_name: r.traffic_percentage for r in config.routes} if config else {}
        )
        samples = dict(export.entities)
        if "" in samples and len(served) == 1 and served[0].name not in samples:
            # Endpoint-wide figures of a one-entity endpoint are that entity's.
            samples[served[0].name] = samples[""]
        entities: dict[str, Any] = {}
        windows: list[EntitySample] = []
        for entity in served:
            sample = samples.get(entity.name, EntitySample())
            seen = _windowed(sample, earlier, entity.name)
            windows.append(seen)
            totals = self._totals(name, entity.name, sample, seen, export.dialect, now)
            size = entity.workload_size
            entities[entity.name] = {
                "model": entity.entity_name,
                "version": entity.entity_version,
                "traffic_percentage": traffic.get(entity.name, 0),
                "ready_replicas": _replicas(sample, size, (deployed or {}).get(entity.name)),
                "last_minute": _figures(seen, window, basis),
                "requests_total": totals.requests,
                "errors_total": totals.errors,
                "instance_type": entity.instance_type or _workload_name(entity.workload_type, size),
                "replica_hours": None,
                "autoscaler": None,
                "cpu_percent": sample.cpu_percent,
                "memory_percent": sample.memory_percent,
                "memory_bytes": sample.memory_bytes,
                "provisioned_concurrency": sample.provisioned_concurrency,
            }
        if set(export.entities) == {""}:
            # Only endpoint-wide figures: they are the overall ones, whatever the entities.
            overall = _windowed(export.entities[""], earlier, "")
        else:
            overall = merge_samples(windows)
        return {
            "name": name,
            "state": info.state.model_dump(),
            "overall": _figures(overall, window, basis),
            "revision": None,
            "served_entities": entities,
            "metrics_source": export.dialect,
        }

    def _earlier(
        self, name: str, now: float, window_s: float, export: MetricsExport
    ) -> tuple[float | None, Basis, MetricsExport | None]:
        looks = self._looks.setdefault(name, deque())
        while looks and now - looks[0][0] > _HISTORY_S:
            looks.popleft()
        # The newest look at least window_s old, else the oldest there is.
        older = [look for look in looks if now - look[0] >= window_s]
        chosen = older[-1] if older else (looks[0] if looks else None)
        looks.append((now, export))
        if chosen is None:
            return None, "lifetime", None
        return max(now - chosen[0], 1e-9), "since_last_look", chosen[1]

    def _totals(
        self,
        endpoint: str,
        entity: str,
        sample: EntitySample,
        seen: EntitySample,
        dialect: Dialect,
        now: float,
    ) -> _Running:
        running = self._running.setdefault((endpoint, entity), _Running())
        if dialect == "cvdeploy":
            running.requests, running.errors = int(sample.requests), int(sample.server_errors)
        elif running.added_at is None or now - running.added_at >= _MINUTE_S:
            # Databricks' counts are the last minute's: add each minute once.
            running.requests += int(seen.requests)
            running.errors += int(seen.server_errors)
            running.added_at = now
        return running


def _windowed(sample: EntitySample, earlier: MetricsExport | None, name: str) -> EntitySample:
    if earlier is None:
        return sample
    return sample.minus(earlier.entities.get(name, EntitySample()))


def _figures(sample: EntitySample, window: float | None, basis: Basis) -> dict[str, Any]:
    shown = figures(
        window if window is not None else _MINUTE_S,
        None,
        int(sample.requests),
        int(sample.server_errors),
        int(sample.client_errors),
        latency_summary(sample),
    )
    if window is None:
        shown["window_s"] = None
        shown["throughput_rps"] = None
    elif basis == "since_last_look":
        shown["window_s"] = round(window, 3)
    shown["basis"] = basis
    return shown


def _replicas(sample: EntitySample, size: str, deployed: bool | None) -> int:
    if sample.ready_replicas is not None:
        return sample.ready_replicas
    if sample.provisioned_concurrency is not None:
        per = CONCURRENCY_PER_REPLICA.get(size, 4)
        return math.ceil(sample.provisioned_concurrency / per)
    return 1 if deployed else 0


def _workload_name(workload_type: str, workload_size: str) -> str:
    # Names instance_types.lookup() knows, so a cost table can price them.
    return workload_size if workload_type == "CPU" else workload_type
