"""Where ``ModelMonitor`` reads its figures: a serving process, or an endpoint of a platform.

Both answer :meth:`fetch` with one snapshot shape, so the monitor, its alerts and its history
never care which it watches:

``requests``, ``throughput_rps``, ``error_rate``, ``client_error_rate``, ``latency_ms``
(``p50``/``p95``/``p99``/``mean``), ``errors``, ``batch``, ``resources`` (``cpu_percent`` of the
machine, ``memory_percent``, ``rss_bytes``, GPU figures) and ``drift``; an endpoint adds
``versions`` (the same figures per served version) and ``replicas``.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import psutil

from cvdeploy.errors import CVDeployError, NotAvailableError
from cvdeploy.monitoring.resources import gpu_sample

__all__ = ["EndpointSource", "ServerSource", "Source"]


class Source(Protocol):
    kind: str
    name: str

    def fetch(self, window_s: float) -> dict[str, Any]:
        """One snapshot; raises :class:`CVDeployError` when the source cannot be reached."""
        ...

    def close(self) -> None: ...


def _client(token: str | None, timeout: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(timeout=timeout, headers=headers, trust_env=False)


def _get_json(client: httpx.Client, url: str, what: str) -> dict[str, Any]:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise NotAvailableError(f"{what} at {url} cannot be reached: {exc}") from None
    if response.status_code != 200:
        raise CVDeployError(f"{what} at {url} answered HTTP {response.status_code}")
    data = response.json()
    if not isinstance(data, dict):
        raise CVDeployError(f"{what} at {url} did not answer with a JSON object")
    return data


class ServerSource:
    """A serving process (``cvdeploy serve``, ``ModelServer.start()``) and its ``/monitoring``."""

    kind = "server"

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = self.url
        self._http = _client(token, timeout)

    def fetch(self, window_s: float) -> dict[str, Any]:
        return _get_json(
            self._http, f"{self.url}/monitoring?window_s={window_s:g}", "the model server"
        )

    def close(self) -> None:
        self._http.close()


class EndpointSource:
    """An endpoint of a cvdeploy platform: the gateway's figures plus each replica's."""

    kind = "endpoint"

    def __init__(
        self, endpoint: str, platform_url: str, token: str | None = None, timeout: float = 10.0
    ) -> None:
        from cvdeploy.platforms.client import PlatformClient

        self.endpoint = endpoint
        self.url = platform_url.rstrip("/")
        self.name = f"endpoint:{endpoint}"
        # The platform's own client (its error mapping included); plain httpx for replicas.
        self._platform = PlatformClient(self.url, token, timeout=timeout)
        self._http = _client(token, timeout)
        self._cores = psutil.cpu_count() or 1

    def fetch(self, window_s: float) -> dict[str, Any]:
        stats = self._platform.stats(self.endpoint, window_s)
        versions: dict[str, Any] = {}
        cpu = 0.0
        rss = 0
        replicas = 0
        drifted: list[str] = []
        for name, entity in stats.get("served_entities", {}).items():
            running = entity.get("replicas", [])
            replicas += len(running)
            cpu += sum(r.get("cpu_percent") or 0.0 for r in running)
            rss += sum(r.get("rss_bytes") or 0 for r in running)
            drift = self._replica_drift(running, window_s)
            if drift.get("status") == "drift":
                drifted.append(name)
            versions[name] = {
                "model": entity.get("model"),
                "version": entity.get("version"),
                "traffic_percentage": entity.get("traffic_percentage"),
                "replicas": entity.get("ready_replicas", 0),
                "instance_type": entity.get("instance_type"),
                "replica_hours": entity.get("replica_hours", 0.0),
                **entity.get("last_minute", {}),
                "drift": drift,
            }
        overall = stats.get("overall", {})
        memory = psutil.virtual_memory()
        return {
            **overall,
            "state": stats.get("state"),
            "revision": stats.get("revision"),
            "replicas": replicas,
            "replica_hours": round(sum(v["replica_hours"] for v in versions.values()), 6),
            "resources": {
                # Replica CPU is per process (100 = one core); the machine share is comparable
                # with a server's figure and with the seed's `cpu: 80`.
                "cpu_percent": round(min(100.0, cpu / self._cores), 2),
                "memory_percent": round(float(memory.percent), 2),
                "rss_bytes": rss,
                "cores": self._cores,
                **gpu_sample(),
            },
            "drift": {
                "status": "drift" if drifted else _combined_status(versions),
                "drifted_versions": drifted,
            },
            "versions": versions,
        }

    def _replica_drift(self, replicas: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
        # Each replica profiles its own sample of requests; the first ready one speaks for the
        # version (the gateway spreads requests evenly, so their windows look alike).
        for replica in replicas:
            if replica.get("state") != "ready" or not replica.get("url"):
                continue
            try:
                figures = _get_json(
                    self._http, f"{replica['url']}/monitoring?window_s={window_s:g}", "a replica"
                )
            except CVDeployError:
                continue
            drift = figures.get("drift")
            return drift if isinstance(drift, dict) else {"status": "off"}
        return {"status": "no_replica"}

    def close(self) -> None:
        self._platform.close()
        self._http.close()


def _combined_status(versions: dict[str, Any]) -> str:
    statuses = {v["drift"].get("status") for v in versions.values()}
    if not statuses:
        return "no_replica"
    return "ok" if statuses == {"ok"} else sorted(statuses)[0]
