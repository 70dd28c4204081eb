"""An endpoint's Prometheus metrics export, parsed; percentiles from its histogram buckets.

Databricks' export (``GET /api/2.0/serving-endpoints/{name}/metrics``) gives, per served entity
(label ``served_entity_name``; ``served_model_name`` is accepted too; no label means the
figures are endpoint-wide), what happened in the LAST MINUTE as gauges:
``request_count_total``, ``request_4xx_count_total``, ``request_5xx_count_total``, the
``request_latency_ms`` histogram, ``cpu_usage_percentage``, ``mem_usage_percentage`` and
``provisioned_concurrent_requests_total``.

cvdeploy's own control plane speaks the same API but exports its gateway's series
(``cvdeploy_endpoint_requests_total`` and friends: cumulative counters, latency in seconds).
Those are read too, into the same :class:`EntitySample`; :mod:`.stats` knows which is which.

Percentiles come from histogram buckets, interpolated linearly inside the bucket as
Prometheus' ``histogram_quantile`` does, so they are only as fine as the buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cvdeploy.errors import CVDeployError

__all__ = [
    "Dialect",
    "EntitySample",
    "MetricsExport",
    "histogram_quantile",
    "latency_summary",
    "merge_samples",
    "parse_export",
]

Dialect = Literal["databricks", "cvdeploy", "none"]
Buckets = dict[float, float]

_ENTITY_LABELS = ("served_entity_name", "served_model_name", "served_entity")


@dataclass(frozen=True)
class EntitySample:
    """One served entity's figures in one export (latency in milliseconds)."""

    requests: float = 0.0
    client_errors: float = 0.0
    server_errors: float = 0.0
    #: Cumulative bucket counts by upper bound (``le``), ``inf`` included.
    buckets: Buckets = field(default_factory=dict)
    latency_sum_ms: float | None = None
    latency_count: float | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    memory_bytes: float | None = None
    provisioned_concurrency: float | None = None
    ready_replicas: int | None = None

    def minus(self, earlier: EntitySample) -> EntitySample:
        """The counts since ``earlier`` (cumulative counters); a reset counts from zero."""

        def delta(now: float, before: float) -> float:
            return now - before if now >= before else now

        buckets = {le: delta(n, earlier.buckets.get(le, 0.0)) for le, n in self.buckets.items()}
        latency_sum = latency_count = None
        if self.latency_sum_ms is not None:
            latency_sum = delta(self.latency_sum_ms, earlier.latency_sum_ms or 0.0)
        if self.latency_count is not None:
            latency_count = delta(self.latency_count, earlier.latency_count or 0.0)
        return replace(
            self,
            requests=delta(self.requests, earlier.requests),
            client_errors=delta(self.client_errors, earlier.client_errors),
            server_errors=delta(self.server_errors, earlier.server_errors),
            buckets=buckets,
            latency_sum_ms=latency_sum,
            latency_count=latency_count,
        )


@dataclass(frozen=True)
class MetricsExport:
    """A parsed export: which series it had and the figures per served entity.

    The key ``""`` holds endpoint-wide figures (samples without a served-entity label).
    """

    dialect: Dialect
    entities: dict[str, EntitySample]


# -- parsing -----------------------------------------------------------------------------------


def parse_export(text: str, endpoint: str | None = None) -> MetricsExport:
    """Read a Prometheus (or OpenMetrics) text export.

    Args:
        text: The export.
        endpoint: Keep only samples whose ``endpoint`` label (where there is one) is this.

    Raises:
        CVDeployError: the text is not Prometheus exposition format.
    """
    samples = list(_samples(text))
    names = {name for name, _, _ in samples}
    if names & {"request_count_total", "request_latency_ms_bucket", "cpu_usage_percentage"}:
        dialect: Dialect = "databricks"
    elif any(n.startswith("cvdeploy_endpoint_") for n in names):
        dialect = "cvdeploy"
    else:
        return MetricsExport("none", {})
    builders: dict[str, dict[str, Any]] = {}
    for name, labels, value in samples:
        if endpoint is not None and labels.get("endpoint", endpoint) != endpoint:
            continue
        if math.isnan(value):
            continue
        entity = next((labels[k] for k in _ENTITY_LABELS if labels.get(k)), "")
        into = builders.setdefault(entity, {"buckets": {}})
        if dialect == "databricks":
            _databricks_sample(into, name, labels, value)
        else:
            _cvdeploy_sample(into, name, labels, value)
    return MetricsExport(dialect, {k: EntitySample(**v) for k, v in builders.items()})


def _samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    try:
        if text.rstrip().endswith("# EOF"):
            from prometheus_client.openmetrics.parser import (
                text_string_to_metric_families as openmetrics,
            )

            families = list(openmetrics(text))  # type: ignore[no-untyped-call]
        else:
            from prometheus_client.parser import text_string_to_metric_families

            families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise CVDeployError(
            f"the endpoint's metrics export is not Prometheus text ({exc}); is the URL a "
            "Databricks workspace?"
        ) from None
    for family in families:
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def _add(into: dict[str, Any], key: str, value: float) -> None:
    into[key] = (into.get(key) or 0.0) + value


def _databricks_sample(
    into: dict[str, Any], name: str, labels: Mapping[str, str], v: float
) -> None:
    simple = {
        "request_count_total": "requests",
        "request_4xx_count_total": "client_errors",
        "request_5xx_count_total": "server_errors",
        "cpu_usage_percentage": "cpu_percent",
        "mem_usage_percentage": "memory_percent",
        "provisioned_concurrent_requests_total": "provisioned_concurrency",
        "request_latency_ms_sum": "latency_sum_ms",
        "request_latency_ms_count": "latency_count",
    }
    if name in simple:
        _add(into, simple[name], v)
    elif name == "request_latency_ms_bucket" and "le" in labels:
        le = float(labels["le"])
        into["buckets"][le] = into["buckets"].get(le, 0.0) + v


def _cvdeploy_sample(into: dict[str, Any], name: str, labels: Mapping[str, str], v: float) -> None:
    if name == "cvdeploy_endpoint_requests_total":
        _add(into, "requests", v)
        status = labels.get("status", "")
        if status.startswith("5"):
            _add(into, "server_errors", v)
        elif status.startswith("4"):
            _add(into, "client_errors", v)
    elif name == "cvdeploy_endpoint_request_duration_seconds_bucket" and "le" in labels:
        le = float(labels["le"]) * 1e3
        into["buckets"][le] = into["buckets"].get(le, 0.0) + v
    elif name == "cvdeploy_endpoint_request_duration_seconds_sum":
        _add(into, "latency_sum_ms", v * 1e3)
    elif name == "cvdeploy_endpoint_request_duration_seconds_count":
        _add(into, "latency_count", v)
    elif name == "cvdeploy_endpoint_cpu_percent":
        _add(into, "cpu_percent", v)
    elif name == "cvdeploy_endpoint_memory_bytes":
        _add(into, "memory_bytes", v)
    elif name == "cvdeploy_endpoint_replicas" and labels.get("state") == "ready":
        into["ready_replicas"] = int(into.get("ready_replicas") or 0) + int(v)


# -- percentiles -------------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile (0-1) of cumulative histogram buckets, as Prometheus computes it.

    Linear interpolation inside the bucket that holds the rank; the lowest bucket starts at 0;
    a rank in the ``+Inf`` bucket gives the highest finite bound. None with no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    ordered = sorted(buckets.items())
    if not ordered:
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def latency_summary(sample: EntitySample) -> dict[str, float] | None:
    """p50/p95/p99 from the buckets and the mean from sum/count (ms); None with no requests."""
    p50, p95, p99 = (histogram_quantile(q, sample.buckets) for q in (0.5, 0.95, 0.99))
    if p50 is None or p95 is None or p99 is None:
        return None
    summary = {"p50": p50, "p95": p95, "p99": p99}
    if sample.latency_sum_ms is not None and sample.latency_count:
        summary["mean"] = sample.latency_sum_ms / sample.latency_count
    return summary


def merge_samples(samples: Sequence[EntitySample]) -> EntitySample:
    """Several served entities' figures as one (counts and buckets added)."""
    buckets: Buckets = {}
    for s in samples:
        for le, n in s.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + n
    sums = [s.latency_sum_ms for s in samples if s.latency_sum_ms is not None]
    counts = [s.latency_count for s in samples if s.latency_count is not None]
    return EntitySample(
        requests=sum(s.requests for s in samples),
        client_errors=sum(s.client_errors for s in samples),
        server_errors=sum(s.server_errors for s in samples),
        buckets=buckets,
        latency_sum_ms=sum(sums) if sums else None,
        latency_count=sum(counts) if counts else None,
    )
