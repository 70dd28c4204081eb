"""The endpoint metrics export (``GET /api/2.0/serving-endpoints/{name}/metrics``).

Metric names and meanings are those of Databricks' "Track and export serving endpoint health
metrics" page: ``cpu_usage_percentage`` and ``mem_usage_percentage`` (averages over the last
minute), ``provisioned_concurrent_requests_total``, ``request_count_total``,
``request_4xx_count_total`` and ``request_5xx_count_total`` (counts over the LAST MINUTE,
exported as gauges, not cumulative counters) and the ``request_latency_ms`` histogram.
The label set of the real export is not publicly specified; this fake labels every series
with ``served_entity_name`` (an assumption to revisit against a workspace).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["LATENCY_BUCKETS_MS", "WINDOW_S", "TrafficLog", "render"]

WINDOW_S = 60.0
LATENCY_BUCKETS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


@dataclass
class _Sample:
    at: float
    requests: int
    errors_4xx: int
    errors_5xx: int
    latencies_ms: tuple[float, ...]
    cpu_percent: float | None
    mem_percent: float | None


@dataclass
class EntityFigures:
    """One served entity's figures over the last minute."""

    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    latencies_ms: tuple[float, ...] = ()
    cpu_percent: float = 0.0
    mem_percent: float = 0.0


class TrafficLog:
    """Traffic per (endpoint, served entity), kept for one window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, str], deque[_Sample]] = {}

    def record(
        self,
        endpoint: str,
        served_entity: str,
        at: float,
        *,
        requests: int,
        errors_4xx: int = 0,
        errors_5xx: int = 0,
        latencies_ms: tuple[float, ...] = (),
        cpu_percent: float | None = None,
        mem_percent: float | None = None,
    ) -> None:
        sample = _Sample(
            at, requests, errors_4xx, errors_5xx, latencies_ms, cpu_percent, mem_percent
        )
        with self._lock:
            self._samples.setdefault((endpoint, served_entity), deque()).append(sample)

    def forget(self, endpoint: str) -> None:
        with self._lock:
            for key in [k for k in self._samples if k[0] == endpoint]:
                del self._samples[key]

    def figures(self, endpoint: str, served_entity: str, now: float) -> EntityFigures:
        with self._lock:
            samples = self._samples.get((endpoint, served_entity), deque())
            while samples and samples[0].at <= now - WINDOW_S:
                samples.popleft()
            recent = list(samples)
        out = EntityFigures(
            requests=sum(s.requests for s in recent),
            errors_4xx=sum(s.errors_4xx for s in recent),
            errors_5xx=sum(s.errors_5xx for s in recent),
            latencies_ms=tuple(v for s in recent for v in s.latencies_ms),
        )
        cpu = [s.cpu_percent for s in recent if s.cpu_percent is not None]
        mem = [s.mem_percent for s in recent if s.mem_percent is not None]
        out.cpu_percent = sum(cpu) / len(cpu) if cpu else 0.0
        out.mem_percent = sum(mem) / len(mem) if mem else 0.0
        return out


_HELP = {
    "cpu_usage_percentage": "Average CPU utilization across replicas over the last minute.",
    "mem_usage_percentage": "Average memory utilization across replicas over the last minute.",
    "provisioned_concurrent_requests_total": "Provisioned concurrency.",
    "request_count_total": "Requests over the last minute.",
    "request_4xx_count_total": "Requests answered 4xx over the last minute.",
    "request_5xx_count_total": "Requests answered 5xx over the last minute.",
}


def render(rows: list[tuple[str, EntityFigures, int]]) -> str:
    """Prometheus text for ``(served entity name, figures, provisioned concurrency)`` rows."""
    lines: list[str] = []
    for metric, help_text in _HELP.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{_labels(name)} {_gauge(metric, f, c)}" for name, f, c in rows]
    lines += [
        "# HELP request_latency_ms Request latency in milliseconds over the last minute.",
        "# TYPE request_latency_ms histogram",
    ]
    for name, figures, _ in rows:
        values = figures.latencies_ms
        for bound in LATENCY_BUCKETS_MS:
            count = sum(1 for v in values if v <= bound)
            lines.append(f"request_latency_ms_bucket{_labels(name, le=str(bound))} {count}")
        lines.append(f"request_latency_ms_bucket{_labels(name, le='+Inf')} {len(values)}")
        lines.append(f"request_latency_ms_sum{_labels(name)} {float(sum(values))}")
        lines.append(f"request_latency_ms_count{_labels(name)} {len(values)}")
    return "\n".join(lines) + "\n"


def _gauge(metric: str, figures: EntityFigures, concurrency: int) -> float:
    values = {
        "cpu_usage_percentage": figures.cpu_percent,
        "mem_usage_percentage": figures.mem_percent,
        "provisioned_concurrent_requests_total": float(concurrency),
        "request_count_total": float(figures.requests),
        "request_4xx_count_total": float(figures.errors_4xx),
        "request_5xx_count_total": float(figures.errors_5xx),
    }
    return values[metric]


def _labels(served_entity: str, le: str | None = None) -> str:
    escaped = served_entity.replace("\\", "\\\\").replace('"', '\\"')
    extra = f',le="{le}"' if le is not None else ""
    return f'{{served_entity_name="{escaped}"{extra}}}'
