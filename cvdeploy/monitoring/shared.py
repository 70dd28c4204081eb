"""Figures across worker processes: ``cvdeploy serve --workers 4`` answers for all four.

Workers share one port, so whichever answers ``/monitoring`` knows only its own requests.
With ``CVDEPLOY_MONITORING_DIR`` set (the launcher sets it, as it sets Prometheus'
multiprocess directory), every worker keeps per-second aggregates of its requests (counts by
status class and a log-bucketed latency histogram, 5 % wide buckets), writes them to
``worker-PID.json`` in that folder every second, and answers ``/monitoring`` with the merge of
every live worker's file and its own. Percentiles are then exact to a bucket (about 5 %)
rather than to the request, and at most a second old for the other workers.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cvdeploy.monitoring.window import figures

__all__ = ["ENV_MONITORING_DIR", "SecondAggregates", "merged_summary", "read_workers"]

ENV_MONITORING_DIR = "CVDEPLOY_MONITORING_DIR"

_BASE_S = 5e-5  # 0.05 ms, the smallest latency told apart
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)
_STALE_S = 5.0  # a file not rewritten for this long belongs to a worker that is gone


def bucket_of(seconds: float) -> int:
    if seconds <= _BASE_S:
        return 0
    return int(math.log(seconds / _BASE_S) / _LOG_GROWTH) + 1


def bucket_value(bucket: int) -> float:
    """The geometric middle of a bucket, in seconds."""
    if bucket <= 0:
        return _BASE_S
    return float(_BASE_S * _GROWTH ** (bucket - 0.5))


class SecondAggregates:
    """Per-second request counts and latency histograms of one process, for ``horizon_s``."""

    def __init__(self, horizon_s: float = 300.0) -> None:
        self.horizon_s = horizon_s
        # second -> [requests, 5xx, 4xx, Counter(bucket -> n)]
        self._seconds: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    def record(self, at: float, seconds: float, status: int) -> None:
        second = int(at)
        with self._lock:
            entry = self._seconds.get(second)
            if entry is None:
                entry = self._seconds[second] = [0, 0, 0, Counter()]
                self._trim(second)
            entry[0] += 1
            if status >= 500:
                entry[1] += 1
            elif status >= 400:
                entry[2] += 1
            entry[3][bucket_of(seconds)] += 1

    def _trim(self, now: int) -> None:
        oldest = now - int(self.horizon_s) - 1
        for second in [s for s in self._seconds if s < oldest]:
            del self._seconds[second]

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                str(second): [n, e5, e4, {str(b): c for b, c in hist.items()}]
                for second, (n, e5, e4, hist) in self._seconds.items()
            }


def write_worker(folder: Path, state: dict[str, Any]) -> None:
    """Replace this worker's file atomically (readers never see half a file)."""
    target = folder / f"worker-{os.getpid()}.json"
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, target)


def read_workers(folder: Path, skip_pid: int | None = None) -> list[dict[str, Any]]:
    """Every other live worker's last state."""
    now = time.time()
    states = []
    for path in folder.glob("worker-*.json"):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced, or gone
        if state.get("pid") == skip_pid or now - float(state.get("updated", 0)) > _STALE_S:
            continue
        states.append(state)
    return states


def merged_summary(
    aggregates: list[dict[str, Any]], now: float, window_s: float, span_s: float | None = None
) -> dict[str, Any]:
    """The figures of :func:`cvdeploy.monitoring.window.summarize`, from per-second aggregates."""
    start = now - window_s
    count = e5 = e4 = 0
    histogram: Counter[int] = Counter()
    for seconds in aggregates:
        for second, (n, five, four, hist) in seconds.items():
            if int(second) + 1 <= start:
                continue
            count += n
            e5 += five
            e4 += four
            for bucket, c in hist.items():
                histogram[int(bucket)] += c
    latency: dict[str, float] | None = None
    if count:
        ordered = sorted(histogram.items())

        def percentile(q: float) -> float:
            rank = q * count
            seen = 0
            for bucket, c in ordered:
                seen += c
                if seen >= rank:
                    return bucket_value(bucket) * 1e3
            return bucket_value(ordered[-1][0]) * 1e3

        mean = sum(bucket_value(b) * c for b, c in ordered) / count * 1e3
        latency = {"p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99),
                   "mean": mean}  # fmt: skip
    return figures(window_s, span_s, count, e5, e4, latency)
