"""``ModelMonitor``: seed 000's monitor, reading a server or an endpoint, with alerts and history.

::

    monitor = ModelMonitor(model=server, **config.get_monitoring_config())
    monitor.start()                 # a snapshot every metrics_interval seconds, in the background
    metrics = monitor.get_metrics()  # live figures, read now

``model`` is a started file-mode ``ModelServer`` (its ``/monitoring``), a registry-mode one (the
endpoint it last created or updated), the URL of a model server, or the name of an endpoint
of the local platform. Units follow DESIGN's "Decisions": latency in milliseconds (the alert
value is the p95 over the window), cpu and memory in percent, error_rate a fraction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from cvdeploy.config import MonitoringConfig, validate_section
from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.monitoring.alerts import AlertManager, rules_from_config
from cvdeploy.monitoring.cost import cost_estimate
from cvdeploy.monitoring.history import MetricsHistory
from cvdeploy.monitoring.sinks import Sink, sink_from_url
from cvdeploy.monitoring.sources import EndpointSource, ServerSource, Source

__all__ = ["ModelMonitor", "alert_values"]

logger = logging.getLogger("cvdeploy.monitoring")


def alert_values(snapshot: Mapping[str, Any]) -> dict[str, float | None]:
    """The value of every alertable metric in a snapshot (None when it has none)."""
    latency = snapshot.get("latency_ms") or {}
    resources = snapshot.get("resources") or {}
    drift = (snapshot.get("drift") or {}).get("status")
    return {
        "latency": latency.get("p95"),
        "throughput": snapshot.get("throughput_rps"),
        "error_rate": snapshot.get("error_rate"),
        "cpu": resources.get("cpu_percent"),
        "memory": resources.get("memory_percent"),
        "gpu": resources.get("gpu_utilization"),
        "gpu_memory": resources.get("gpu_memory_percent"),
        "queue_depth": snapshot.get("queue_depth"),
        "concurrency": snapshot.get("concurrency"),
        "drift": None if drift not in ("ok", "drift") else float(drift == "drift"),
    }


class ModelMonitor:
    """Watches one model server or endpoint: live figures, alerts and a bounded history.

    Args:
        model: A ``ModelServer``, a server URL (``http://...``), an endpoint name, or any
            object with the :class:`~cvdeploy.monitoring.sources.Source` methods.
        metrics_interval: Seconds between background snapshots (and the default window).
        alert_thresholds: Seed 000's ``{cpu, memory, latency}`` levels.
        metrics: Seed 001's metric names reported under ``"metrics"``.
        alerts: Seed 001's ``[{metric, threshold, ...}]`` rules.
        drift: The config's drift section; drift is sampled by the server, so this is only
            validated here (``cvdeploy serve`` and ``ModelServer`` read it from the config).
        cost_per_hour: Price of a replica-hour by instance type (endpoint cost estimates).
        token: Bearer token for the server or platform.
        window_s: Seconds the figures cover; default ``metrics_interval`` within [10, 300].
        sinks: Where alerts go: ``Sink`` objects or URLs (``"log"``, ``https://hook``,
            ``alertmanager+http://am:9093``); default the log.
        history: A SQLite path for snapshots, True for ``$CVDEPLOY_HOME/monitoring.db``, or
            False for none.
        platform_url: The platform serving an endpoint name (default: the local one).
        resource_sampler: Replaces the source's CPU/memory figures (tests pass a fake).
        clock: Seconds since the epoch, for alert timing.
    """

    def __init__(
        self,
        model: Any,
        metrics_interval: float = 60,
        alert_thresholds: Mapping[str, Any] | None = None,
        metrics: Sequence[str] | None = None,
        alerts: Sequence[Mapping[str, Any]] | None = None,
        drift: Mapping[str, Any] | None = None,
        cost_per_hour: Mapping[str, float] | None = None,
        *,
        token: str | None = None,
        window_s: float | None = None,
        sinks: Sequence[Sink | str] | None = None,
        history: str | bool = True,
        platform_url: str | None = None,
        resource_sampler: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        section: dict[str, Any] = {"metrics_interval": metrics_interval}
        for key, value in (
            ("alert_thresholds", alert_thresholds),
            ("metrics", metrics),
            ("alerts", alerts),
            ("drift", drift),
            ("cost_per_hour", cost_per_hour),
        ):
            if value is not None:
                section[key] = value
        self.config = validate_section(MonitoringConfig, section, name="monitoring")
        self.metrics_interval = float(self.config.metrics_interval)
        self.window_s = float(window_s or min(300.0, max(10.0, self.metrics_interval)))
        self.source: Source = _source(model, token, platform_url)
        chosen = ["log"] if sinks is None else list(sinks)
        self.alerts = AlertManager(
            rules_from_config(self.config),
            [sink_from_url(s) if isinstance(s, str) else s for s in chosen],
            labels={"source": self.source.name},
        )
        self.history: MetricsHistory | None = None
        if history:
            if history is True:
                from cvdeploy.registry.paths import cvdeploy_home

                path: str = str(cvdeploy_home() / "monitoring.db")
            else:
                path = str(history)
            self.history = MetricsHistory(path)
        self._resource_sampler = resource_sampler
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> ModelMonitor:
        """Take a snapshot every ``metrics_interval`` seconds on a background thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cvdeploy-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling and deliver the alerts still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.alerts.close(timeout)
        self.source.close()

    def __enter__(self) -> ModelMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                snapshot = self.get_metrics()
                if self.history is not None:
                    self.history.append(self.source.name, snapshot, at=snapshot["time"])
            except Exception:  # the monitor must outlive any one bad sample
                logger.exception("monitoring %s: snapshot failed", self.source.name)
            self._stop.wait(max(0.0, self.metrics_interval - (time.monotonic() - started)))

    # -- reading ------------------------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        """The figures now (read at call time), with the alerts they leave active.

        Keys: ``source``, ``kind``, ``status`` (``ok`` or ``unreachable`` with ``error``),
        ``time``, ``window_s``, ``requests``, ``throughput_rps``, ``latency_ms`` (``p50``,
        ``p95``, ``p99``, ``mean``), ``error_rate``, ``client_error_rate``, ``errors``,
        ``resources`` (``cpu_percent``, ``memory_percent``, ``rss_bytes``, GPU figures or
        None), ``batch``, ``drift``, ``metrics`` (the configured metric names and their
        values), ``alerts`` (active ones); an endpoint adds ``versions``, ``replicas`` and
        ``cost`` (replica-hours and, with ``cost_per_hour`` prices, an estimate).
        """
        now = self._clock()
        try:
            figures = self.source.fetch(self.window_s)
            status, error = "ok", None
        except CVDeployError as exc:
            figures, status, error = {}, "unreachable", str(exc)
            logger.warning("monitoring %s: %s", self.source.name, exc)
        if self._resource_sampler is not None and status == "ok":
            figures["resources"] = {**figures.get("resources", {}), **self._resource_sampler()}
        snapshot: dict[str, Any] = {
            "source": self.source.name,
            "kind": self.source.kind,
            "status": status,
            "time": now,
            "window_s": self.window_s,
            **figures,
        }
        if error is not None:
            snapshot["error"] = error
        if "versions" in snapshot:
            snapshot["cost"] = cost_estimate(snapshot["versions"], self.config.cost_per_hour)
        values = alert_values(snapshot) if status == "ok" else {}
        self.alerts.evaluate(values, now)
        snapshot["metrics"] = {name: values.get(name) for name in self.config.metrics}
        snapshot["alerts"] = self.alerts.active()
        with self._lock:
            self._last = snapshot
        return snapshot

    @property
    def last(self) -> dict[str, Any] | None:
        """The most recent snapshot (background or ``get_metrics``), without reading again."""
        with self._lock:
            return self._last

    def read_history(self, limit: int = 100) -> list[dict[str, Any]]:
        """Stored snapshots of this source, oldest first."""
        if self.history is None:
            return []
        return self.history.read(self.source.name, limit)


def _source(model: Any, token: str | None, platform_url: str | None) -> Source:
    from cvdeploy.serving.model_server import ModelServer

    if all(hasattr(model, a) for a in ("fetch", "kind", "name", "close")):
        source: Source = model  # a Source of one's own (tests inject figures this way)
        return source
    if isinstance(model, ModelServer):
        if model._endpoints is not None:  # registry mode: the endpoint it manages
            manager = model._endpoints
            if manager.last_endpoint is None:
                raise ConfigError(
                    "this ModelServer has created no endpoint yet; call create_endpoint first, "
                    "or pass the endpoint's name as model="
                )
            return EndpointSource(manager.last_endpoint, manager.url, token or manager.token)
        if not model.running:
            raise ConfigError(
                "start the server first (server.start()): ModelMonitor reads its /monitoring"
            )
        return ServerSource(model.url, token or model.settings.token)
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        return ServerSource(model, token)
    if isinstance(model, str) and model:
        from cvdeploy.platforms.local.daemon import platform_url as discover

        return EndpointSource(model, discover(platform_url), token)
    raise ConfigError(
        f"ModelMonitor(model=...) takes a ModelServer, a server URL or an endpoint name; "
        f"got {type(model).__name__}"
    )
