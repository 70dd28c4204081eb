"""What the gateway measures: Prometheus series per endpoint and a sliding request window.

The Prometheus series are what ``GET /metrics`` and ``GET .../serving-endpoints/{name}/metrics``
serve (the latter filtered to one endpoint, as Databricks' metrics export is). The
:class:`RequestWindow` keeps the last few minutes of requests per served entity in memory, so
``monitor_endpoint`` can give exact p50/p95/p99 without a Prometheus server.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["PlatformMetrics", "RequestWindow", "summarize"]

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class PlatformMetrics:
    """The gateway's Prometheus series; every one is labelled by endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        entity = ("endpoint", "served_entity", "model", "version")
        self.requests = Counter(
            "cvdeploy_endpoint_requests",
            "Requests answered by the gateway, by served entity and HTTP status.",
            [*entity, "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cvdeploy_endpoint_request_duration_seconds",
            "Gateway request latency, replica time included.",
            entity,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "cvdeploy_endpoint_retries",
            "Requests retried on another replica after a connection failure.",
            ["endpoint"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "cvdeploy_endpoint_rejected",
            "Requests refused before reaching a replica, by reason.",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.replicas = Gauge(
            "cvdeploy_endpoint_replicas",
            "Replicas per served entity, by state.",
            [*entity, "state"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "cvdeploy_endpoint_in_flight_requests",
            "Requests being served by the replicas.",
            entity,
            registry=self.registry,
        )
        self.queued = Gauge(
            "cvdeploy_endpoint_queued_requests",
            "Requests waiting at the gateway for a replica (scale from zero).",
            entity,
            registry=self.registry,
        )
        self.cpu = Gauge(
            "cvdeploy_endpoint_cpu_percent",
            "CPU percent summed over the replicas of a served entity.",
            entity,
            registry=self.registry,
        )
        self.memory = Gauge(
            "cvdeploy_endpoint_memory_bytes",
            "Resident memory summed over the replicas of a served entity.",
            entity,
            registry=self.registry,
        )

    def render(self, endpoint: str | None = None) -> str:
        """Prometheus text of every series, or only the samples of ``endpoint``."""
        text = generate_latest(self.registry).decode()
        if endpoint is None:
            return text
        label = f'endpoint="{endpoint}"'
        kept = [
            line
            for line in text.splitlines()
            if line.startswith("#")
            or f"{{{label}," in line
            or f",{label}," in line
            or f"{{{label}}}" in line
            or f",{label}}}" in line
        ]
        return "\n".join(kept) + "\n"

    def forget(self, endpoint: str) -> None:
        """Drop every series of a deleted endpoint."""
        for metric in (
            self.requests,
            self.latency,
            self.retries,
            self.rejected,
            self.replicas,
            self.in_flight,
            self.queued,
            self.cpu,
            self.memory,
        ):
            for labels in list(metric._metrics):  # no public way to list a metric's children
                names = metric._labelnames
                if dict(zip(names, labels, strict=True)).get("endpoint") == endpoint:
                    metric.remove(*labels)


class RequestWindow:
    """The last ``horizon_s`` seconds of one served entity's requests, for exact percentiles.

    Bounded by ``max_items`` too, so a flood costs a fixed amount of memory (the oldest
    requests fall out first, which only shortens the window).
    """

    def __init__(
        self,
        horizon_s: float = 300.0,
        max_items: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.horizon_s = horizon_s
        self._clock = clock
        self._items: deque[tuple[float, float, int]] = deque(maxlen=max_items)
        self.total = 0
        self.errors = 0

    def record(self, seconds: float, status: int) -> None:
        self._items.append((self._clock(), seconds, status))
        self.total += 1
        if status >= 500:
            self.errors += 1

    def recent(self, window_s: float) -> list[tuple[float, int]]:
        """``(seconds, status)`` of the requests in the last ``window_s`` seconds."""
        now = self._clock()
        start = now - min(window_s, self.horizon_s)
        while self._items and self._items[0][0] < now - self.horizon_s:
            self._items.popleft()
        return [(s, status) for t, s, status in self._items if t >= start]

    def summary(self, window_s: float = 60.0) -> dict[str, Any]:
        """Requests, throughput, error rate and latency percentiles (ms) over ``window_s``."""
        return summarize(self.recent(window_s), window_s)


def summarize(recent: list[tuple[float, int]], window_s: float) -> dict[str, Any]:
    """The figures of :meth:`RequestWindow.summary` for ``(seconds, status)`` pairs."""
    count = len(recent)
    server_errors = sum(1 for _, status in recent if status >= 500)
    client_errors = sum(1 for _, status in recent if 400 <= status < 500)
    summary: dict[str, Any] = {
        "window_s": window_s,
        "requests": count,
        "throughput_rps": round(count / window_s, 3) if window_s > 0 else 0.0,
        "error_rate": round(server_errors / count, 4) if count else 0.0,
        "client_error_rate": round(client_errors / count, 4) if count else 0.0,
        "latency_ms": None,
    }
    if count:
        latencies = np.fromiter((s for s, _ in recent), dtype=np.float64, count=count) * 1e3
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        summary["latency_ms"] = {
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
            "mean": round(float(latencies.mean()), 3),
        }
    return summary
