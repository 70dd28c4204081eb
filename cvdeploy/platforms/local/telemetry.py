"""What the gateway measures in Prometheus series, every one labelled by endpoint.

They are what ``GET /metrics`` and ``GET .../serving-endpoints/{name}/metrics`` serve (the
latter filtered to one endpoint, as Databricks' metrics export is). Exact percentiles for
``monitor_endpoint`` come from :class:`cvdeploy.monitoring.window.RequestWindow`, one per
served entity.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["PlatformMetrics"]

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
