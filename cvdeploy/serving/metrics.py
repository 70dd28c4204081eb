"""Prometheus metrics of the serving core: the one metrics module later layers extend.

Every series carries ``model`` and ``version`` labels (request series add ``route`` and
``status``), so one dashboard can tell versions apart behind a traffic split.

Each app owns a :class:`CollectorRegistry`, so several servers in one process (tests, the
in-process ``ModelServer``) never share counters. With several worker processes, Prometheus'
multiprocess mode is used when ``PROMETHEUS_MULTIPROC_DIR`` is set (the worker launcher sets it
before ``prometheus_client`` is imported) and ``/metrics`` aggregates every worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]

# Latency buckets from 1 ms to 30 s: CV requests span sub-millisecond classifiers to
# multi-second batches of large images.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """The serving app's Prometheus series, bound to one model name and version."""

    def __init__(self, model: str, version: str = "1") -> None:
        self.model = model
        self.version = version
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode samples go to files and the registry is built at scrape time.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if self.multiprocess else self.registry
        labels = ("model", "version")
        self.requests = Counter(
            "cvdeploy_requests",
            "Requests handled, by route and HTTP status.",
            (*labels, "route", "status"),
            registry=registry,
        )
        self.request_latency = Histogram(
            "cvdeploy_request_latency_seconds",
            "Time from request received to response ready, by route.",
            (*labels, "route"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "cvdeploy_images", "Images (batch items) predicted.", labels, registry=registry
        )
        self.queue_time = Histogram(
            "cvdeploy_queue_time_seconds",
            "Time an item waited in the batch queue.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_time = Histogram(
            "cvdeploy_inference_time_seconds",
            "Time of one batched model call including post-processing.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "cvdeploy_batch_size",
            "Items per model call.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "cvdeploy_queue_depth",
            "Items waiting for the model.",
            labels,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache = Counter(
            "cvdeploy_cache",
            "Result-cache lookups by outcome (hit or miss).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.errors = Counter(
            "cvdeploy_errors",
            "Failed requests by error type.",
            (*labels, "type"),
            registry=registry,
        )
        self._images = self.images.labels(model, version)
        self._queue = self.queue_time.labels(model, version)
        self._inference = self.inference_time.labels(model, version)
        self._batch = self.batch_size.labels(model, version)
        self._hits = self.cache.labels(model, version, "hit")
        self._misses = self.cache.labels(model, version, "miss")
        self.depth = self.queue_depth.labels(model, version)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(self.model, self.version, route, str(status)).inc()
        self.request_latency.labels(self.model, self.version, route).observe(seconds)

    def observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self._batch.observe(size)
        self._inference.observe(seconds)
        self._images.inc(size)
        for wait in waits:
            self._queue.observe(wait)

    def observe_error(self, error_type: str) -> None:
        self.errors.labels(self.model, self.version, error_type).inc()

    def observe_cache(self, hit: bool) -> None:
        (self._hits if hit else self._misses).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (all workers in multiprocess mode)."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
