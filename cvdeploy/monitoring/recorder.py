"""What one serving process knows about itself, exact and live: ``GET /monitoring``.

The serving app feeds a :class:`ServingRecorder` from the hooks it already has (the request
observer, the error handler, the batcher's observer), at the cost of a deque append per
request; ``snapshot()`` turns that into the figures ``ModelMonitor.get_metrics()`` reports:
requests, throughput, exact latency percentiles, error rate and errors by type with recent
samples, batch sizes and queue time, CPU and memory, and the drift verdict.

With several uvicorn workers (``CVDEPLOY_MONITORING_DIR`` set by the launcher) each worker also
keeps per-second aggregates and shares them through that folder, so ``/monitoring`` answers for
all workers whichever one takes the request (:mod:`cvdeploy.monitoring.shared`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from cvdeploy.monitoring.resources import ResourceSampler
from cvdeploy.monitoring.shared import (
    ENV_MONITORING_DIR,
    SecondAggregates,
    merged_summary,
    read_workers,
    write_worker,
)
from cvdeploy.monitoring.window import RequestWindow, summarize

__all__ = ["INFERENCE_ROUTES", "DriftSource", "ServingRecorder"]

#: Route templates whose requests are inference (health checks and scrapes are not counted).
INFERENCE_ROUTES = ("/infer", "/predict", "/invocations")


class DriftSource(Protocol):
    """What the recorder needs of the drift sampler (see :mod:`cvdeploy.monitoring.sampler`)."""

    def report_dict(self) -> dict[str, Any]: ...


class PayloadSource(Protocol):
    """What the recorder needs of the payload logger (see :mod:`cvdeploy.monitoring.payloads`)."""

    def stats(self) -> dict[str, Any]: ...


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
        self.drift: DriftSource | None = None
        self.payloads: PayloadSource | None = None
        folder = os.environ.get(ENV_MONITORING_DIR)
        self.shared_dir = Path(folder) if folder else None
        self._aggregates: SecondAggregates | None = None
        self._batch_seconds: dict[int, list[int]] = {}
        if self.shared_dir is not None:
            self._aggregates = SecondAggregates(horizon_s)
            # The supervisor and every worker it started.
            resources = resources or ResourceSampler(pids=_worker_family)
            threading.Thread(target=self._share, name="cvdeploy-monitoring", daemon=True).start()
        self.resources = resources or ResourceSampler()

    # -- hooks (hot path) ---------------------------------------------------------------------

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        if route.endswith(INFERENCE_ROUTES):
            self.requests.record(seconds, status)
            if self._aggregates is not None:
                self._aggregates.record(time.time(), seconds, status)

    def observe_batch(self, size: int, waits: Sequence[float]) -> None:
        now = self._clock()
        self._batches.append((now, size))
        for wait in waits:
            self._waits.append((now, wait))
        if self._aggregates is not None:
            second = self._batch_seconds.setdefault(int(time.time()), [0, 0])
            second[0] += 1
            second[1] += size

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

    # -- sharing across workers ----------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        assert self._aggregates is not None
        cutoff = int(time.time() - self.horizon_s)
        for second in [s for s in self._batch_seconds if s < cutoff]:
            self._batch_seconds.pop(second, None)
        with self._lock:
            errors = {
                "by_type": dict(self.errors_by_type),
                "by_status": {str(k): v for k, v in self.errors_by_status.items()},
                "recent": list(self.recent_errors)[-10:],
            }
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            "seconds": self._aggregates.to_json(),
            "batches": {str(s): v for s, v in list(self._batch_seconds.items())},
            "errors": errors,
            "drift": self.drift.report_dict() if self.drift is not None else None,
        }

    def _share(self) -> None:
        assert self.shared_dir is not None
        while True:
            try:
                write_worker(self.shared_dir, self._state())
            except OSError:  # the folder went away with the server; nothing to share into
                return
            time.sleep(1.0)

    def _merged(self, window_s: float) -> dict[str, Any]:
        assert self.shared_dir is not None
        states = [self._state(), *read_workers(self.shared_dir, skip_pid=os.getpid())]
        now = time.time()
        uptime = self._clock() - self.started
        figures = merged_summary([s["seconds"] for s in states], now, window_s, uptime)
        by_type: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        recent: list[dict[str, Any]] = []
        batches = sizes = 0
        for state in states:
            by_type.update(state["errors"]["by_type"])
            by_status.update(state["errors"]["by_status"])
            recent.extend(state["errors"]["recent"])
            for second, (count, total) in state["batches"].items():
                if int(second) + 1 > now - window_s:
                    batches += count
                    sizes += total
        figures["workers"] = len(states)
        # Each worker profiles its own sample; the one that has seen the most speaks for all
        # (the kernel spreads connections unevenly, so some workers may have seen none).
        reports = [s["drift"] for s in states if s.get("drift")]
        figures["drift"] = (
            max(reports, key=lambda r: (r.get("observed", 0), r.get("sampled", 0)))
            if reports
            else {"status": "off"}
        )
        figures["errors"] = {
            "total": sum(by_type.values()),
            "by_type": dict(by_type),
            "by_status": dict(by_status),
            "recent": sorted(recent, key=lambda e: e["time"])[-10:],
        }
        figures["batch"] = {
            "batches": batches,
            "mean_size": round(sizes / batches, 3) if batches else None,
            "queue_ms": None,  # per-request waits stay per worker
        }
        return figures

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, window_s: float = 60.0) -> dict[str, Any]:
        """Every figure over the last ``window_s`` seconds (at most ``horizon_s``)."""
        window_s = max(0.001, min(window_s, self.horizon_s))
        if self.shared_dir is not None:
            return {
                "model": self.model,
                "version": self.version,
                "uptime_s": round(self._clock() - self.started, 3),
                **self._merged(window_s),
                "resources": self.resources.sample(),
                "payload_log": self._payload_stats(),
            }
        now = self._clock()
        start = now - window_s
        figures = summarize(self.requests.recent(window_s), window_s, now - self.started)
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
            "payload_log": self._payload_stats(),
        }

    def _payload_stats(self) -> dict[str, Any]:
        return self.payloads.stats() if self.payloads is not None else {"status": "off"}


def _worker_family() -> list[int]:
    """The uvicorn supervisor (this worker's parent) and all its workers."""
    try:
        parent = psutil.Process(os.getppid())
        return [parent.pid, *(c.pid for c in parent.children(recursive=True))]
    except psutil.Error:
        return [os.getpid()]
