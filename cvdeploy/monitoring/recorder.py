"""What one serving process knows about itself, exact and live: ``GET /monitoring``.

The serving app feeds a :class:`ServingRecorder` from the hooks it already has (the request
observer, the error handler, the batcher's observer), at the cost of a deque append per
request; ``snapshot()`` turns that into the figures ``ModelMonitor.get_metrics()`` reports:
requests, throughput, exact latency percentiles, error rate and errors by type with recent
samples, batch sizes and queue time, CPU and memory, and the drift verdict.

With several uvicorn workers each worker has its own recorder, and ``/monitoring`` answers for
the worker that took the request; the Prometheus ``/metrics`` sums all workers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from cvdeploy.monitoring.resources import ResourceSampler
from cvdeploy.monitoring.window import RequestWindow, summarize

__all__ = ["INFERENCE_ROUTES", "DriftSource", "ServingRecorder"]

#: Route templates whose requests are inference (health checks and scrapes are not counted).
INFERENCE_ROUTES = ("/infer", "/predict", "/invocations")


class DriftSource(Protocol):
    """What the recorder needs of the drift sampler (see :mod:`cvdeploy.monitoring.sampler`)."""

    def report_dict(self) -> dict[str, Any]: ...


class ServingRecorder:
    """Requests, errors and batches of one serving process over the last ``horizon_s`` seconds.

    Args:
        model: Served model name (reported with every snapshot).
        version: Served version.
        horizon_s: Longest window a snapshot can cover.
        max_error_samples: Recent errors kept with their messages.
        resources: CPU/memory sampler (default: this process and its children).
        clock: Monotonic seconds; tests pass a fake.
    """

    def __init__(
        self,
        model: str,
        version: str,
        *,
        horizon_s: float = 300.0,
        max_error_samples: int = 50,
        resources: ResourceSampler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.version = version
        self.horizon_s = horizon_s
        self._clock = clock
        self.started = clock()
        self.requests = RequestWindow(horizon_s=horizon_s, clock=clock)
        # (time, batch size) and (time, queue wait seconds), appended from the runner thread;
        # deque appends are atomic, so the hot path takes no lock.
        self._batches: deque[tuple[float, int]] = deque(maxlen=50_000)
        self._waits: deque[tuple[float, float]] = deque(maxlen=50_000)
        self._lock = threading.Lock()
        self.errors_by_type: Counter[str] = Counter()
        self.errors_by_status: Counter[int] = Counter()
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=max_error_samples)
        self.resources = resources or ResourceSampler()
        self.drift: DriftSource | None = None

    # -- hooks (hot path) ---------------------------------------------------------------------

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        if route.endswith(INFERENCE_ROUTES):
            self.requests.record(seconds, status)

    def observe_batch(self, size: int, waits: Sequence[float]) -> None:
        now = self._clock()
        self._batches.append((now, size))
        for wait in waits:
            self._waits.append((now, wait))

    def observe_error(
        self, error_type: str, status: int, message: str, request_id: str | None = None
    ) -> None:
        """Count an error answered to a client; the message is the public one (no internals)."""
        with self._lock:
            self.errors_by_type[error_type] += 1
            self.errors_by_status[status] += 1
            self.recent_errors.append(
                {
                    "time": time.time(),
                    "type": error_type,
                    "status": status,
                    "message": message[:500],
                    "request_id": request_id,
                }
            )

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, window_s: float = 60.0) -> dict[str, Any]:
        """Every figure over the last ``window_s`` seconds (at most ``horizon_s``)."""
        window_s = max(0.001, min(window_s, self.horizon_s))
        now = self._clock()
        start = now - window_s
        figures = summarize(self.requests.recent(window_s), window_s)
        sizes = [size for t, size in list(self._batches) if t >= start]
        waits = np.array([w for t, w in list(self._waits) if t >= start], dtype=np.float64)
        with self._lock:
            errors = {
                "total": sum(self.errors_by_type.values()),
                "by_type": dict(self.errors_by_type),
                "by_status": {str(k): v for k, v in self.errors_by_status.items()},
                "recent": list(self.recent_errors)[-10:],
            }
        return {
            "model": self.model,
            "version": self.version,
            "uptime_s": round(now - self.started, 3),
            **figures,
            "errors": errors,
            "batch": {
                "batches": len(sizes),
                "mean_size": round(sum(sizes) / len(sizes), 3) if sizes else None,
                "queue_ms": None
                if not waits.size
                else {
                    "p50": round(float(np.percentile(waits, 50)) * 1e3, 3),
                    "p95": round(float(np.percentile(waits, 95)) * 1e3, 3),
                },
            },
            "resources": self.resources.sample(),
            "drift": self.drift.report_dict() if self.drift is not None else {"status": "off"},
        }
