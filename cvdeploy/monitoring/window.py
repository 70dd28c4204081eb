"""An exact sliding window of requests: the figures ``get_metrics()`` and ``monitor_endpoint`` give.

Prometheus histograms answer percentiles only to a bucket's width; a window of the last few
minutes of requests answers them exactly, at the cost of a deque append per request and a sort
when asked. Used by the serving core (per process) and the platform's gateway (per served
entity).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["RequestWindow", "figures", "summarize"]


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


def summarize(
    recent: list[tuple[float, int]], window_s: float, span_s: float | None = None
) -> dict[str, Any]:
    """The figures of :meth:`RequestWindow.summary` for ``(seconds, status)`` pairs."""
    count = len(recent)
    latency: dict[str, float] | None = None
    if count:
        latencies = np.fromiter((s for s, _ in recent), dtype=np.float64, count=count) * 1e3
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        latency = {"p50": p50, "p95": p95, "p99": p99, "mean": latencies.mean()}
    return figures(
        window_s,
        span_s,
        count,
        sum(1 for _, status in recent if status >= 500),
        sum(1 for _, status in recent if 400 <= status < 500),
        latency,
    )


def figures(
    window_s: float,
    span_s: float | None,
    requests: int,
    server_errors: int,
    client_errors: int,
    latency_ms: dict[str, float] | None,
) -> dict[str, Any]:
    """The one shape of request figures, however they were counted.

    ``span_s`` is how much of the window was observed (a server up for 4 s of a 60 s window
    has served at its rate over 4 s, not over 60).
    """
    span = min(window_s, span_s) if span_s else window_s
    return {
        "window_s": window_s,
        "requests": requests,
        "throughput_rps": round(requests / span, 3) if span > 0 else 0.0,
        "error_rate": round(server_errors / requests, 4) if requests else 0.0,
        "client_error_rate": round(client_errors / requests, 4) if requests else 0.0,
        "latency_ms": None
        if latency_ms is None
        else {k: round(float(v), 3) for k, v in latency_ms.items()},
    }
