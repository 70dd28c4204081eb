"""Endpoints as Ray Serve applications: the :class:`~cvdeploy.platforms.base.Platform` on Ray.

An endpoint is a Serve application of the same name (:mod:`cvdeploy.platforms.ray.app`) at the
gateway's prefix ``/serving-endpoints/{name}``; create and update are ``serve.run`` of the
application built from the spec (an update in place is Serve's rolling, zero-downtime
redeploy), state comes from ``serve.status()``, the config and the request figures from the
router deployment, and queries go over HTTP to Serve's proxy. Ray is imported lazily so that
cvdeploy without the ``ray`` extra says which extra to install.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from cvdeploy.errors import (
    ConflictError,
    NotAvailableError,
    OverloadedError,
)
from cvdeploy.monitoring.window import summarize
from cvdeploy.platforms.base import (
    ConfigUpdate,
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    EndpointState,
    Platform,
    check_endpoint_name,
    poll_until_ready,
)
from cvdeploy.platforms.ray.spec import ROUTER_NAME, route_prefix

__all__ = ["RayPlatform", "import_ray"]

_INSTALL = "pip install 'cvdeploy[ray]'"
# Serve's application states that mean an update is under way or has failed.
_UPDATING = ("DEPLOYING", "NOT_STARTED", "DELETING")
_FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``.

    Raises:
        NotAvailableError: Ray Serve is not installed; the message names the extra.
    """
    try:
        ray = importlib.import_module("ray")
        serve = importlib.import_module("ray.serve")
    except ImportError as exc:
        raise NotAvailableError(
            f"the Ray Serve backend needs Ray Serve, which is not installed ({exc}); "
            f"install it with {_INSTALL}"
        ) from None
    return ray, serve


class RayPlatform(Platform):
    """Endpoints on a Ray cluster, served by Ray Serve.

    Args:
        url: ``ray://host:10001`` (Ray Client), ``auto`` (the cluster this machine belongs
            to), or None for a local cluster started in this process (``num_cpus`` cores).
        token: sent as ``Authorization: Bearer`` on queries, for a proxy behind an
            authenticating gateway; Ray's own cluster authentication is configured by Ray.
        timeout: seconds for one query, and for one call to the router.
        http_host: where queries reach Serve's HTTP proxy: default 127.0.0.1, or the host of a
            ``ray://`` URL (where Serve starts here, its proxy then listens on 0.0.0.0).
        http_port: Serve's HTTP port (8000 is Serve's default); where Serve already runs, the
            port it runs on wins.
        num_cpus: CPUs of a local cluster started here (default 2).
        registry_home: the cvdeploy registry the replicas load models from (default: this
            process's ``CVDEPLOY_HOME``); every node must see it (a shared file system).
        registry_uri: an MLflow registry URI instead (``$CVDEPLOY_REGISTRY_URI``).
        log_to_driver: print the replicas' logs in this process (Ray's default).
    """

    kind = "ray"

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        http_host: str | None = None,
        http_port: int = 8000,
        num_cpus: int | None = None,
        registry_home: str | None = None,
        registry_uri: str | None = None,
        log_to_driver: bool = True,
    ) -> None:
        self._ray, self._serve = import_ray()
        self.url = url
        self.timeout = timeout
        self.http_host = http_host or _url_host(url) or "127.0.0.1"
        self.http_port = http_port
        self.num_cpus = num_cpus
        self.log_to_driver = log_to_driver
        self._registry_home = registry_home
        self._registry_uri = registry_uri or os.environ.get("CVDEPLOY_REGISTRY_URI") or None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = self._client()
        self._lock = threading.Lock()
        self._connected = False
        # Configs submitted by this process and not yet running: get_endpoint's pending_config.
        self._pending: dict[str, EndpointCoreConfig] = {}
        # Switches whose second half this client submitted, by the router state it answered.
        self._finishing: dict[str, dict[str, Any]] = {}

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Join (or start) the Ray cluster and start Serve's proxy; idempotent."""
        with self._lock:
            if self._connected:
                return
            if not self._ray.is_initialized():
                local = self.url in (None, "", "local")
                kwargs: dict[str, Any] = {
                    "logging_level": logging.WARNING,
                    "log_to_driver": self.log_to_driver,
                }
                if local:
                    kwargs.update(num_cpus=self.num_cpus or 2, include_dashboard=False)
                else:
                    kwargs["address"] = self.url
                try:
                    self._ray.init(**kwargs)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise NotAvailableError(
                        f"cannot reach the Ray cluster at {self.url}: {exc}; check the address "
                        "(ray://HOST:10001) and that the head node is running"
                    ) from None
            listen = "127.0.0.1" if self.http_host in ("127.0.0.1", "localhost") else "0.0.0.0"
            self._serve.start(http_options={"host": listen, "port": self.http_port})
            running = _proxy_port()
            if running is not None and running != self.http_port:
                # Serve was already running (another client started it): use its port.
                self.http_port = running
                self._http.close()
                self._http = self._client()
            self._connected = True

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://{self.http_host}:{self.http_port}",
            headers=self._headers,
            timeout=self.timeout,
        )

    def close(self) -> None:
        """Release the HTTP connections; the cluster and its applications keep running."""
        self._http.close()

    def shutdown(self) -> None:
        """Stop Serve (every application) and disconnect from Ray."""
        if self._ray.is_initialized():
            self._serve.shutdown()
            self._ray.shutdown()
        self._connected = False

    # -- endpoints ----------------------------------------------------------------------------

    def create_endpoint(self, spec: EndpointSpec | Mapping[str, Any]) -> EndpointInfo:
        spec = spec if isinstance(spec, EndpointSpec) else EndpointSpec.parse(spec)
        self.connect()
        if spec.name in self._apps():
            raise EndpointAlreadyExistsError(
                f"endpoint '{spec.name}' already exists; update its config or delete it first"
            )
        now = _now_ms()
        self._deploy(spec.name, spec.config, now)
        return self.get_endpoint(spec.name)

    def update_config(
        self, name: str, config: EndpointCoreConfig | Mapping[str, Any]
    ) -> EndpointInfo:
        core = EndpointCoreConfig.parse(config) if isinstance(config, Mapping) else config
        info = self.get_endpoint(name)
        if info.state.config_update == "IN_PROGRESS":
            raise ConflictError(
                f"endpoint '{name}' is already being updated; wait for it (wait_not_updating) "
                "and try again"
            )
        described = self._describe(name)
        if described is None:
            raise ConflictError(
                f"endpoint '{name}' has no running router to switch from; wait for it "
                "(wait_not_updating), or delete and create it again"
            )
        serving = EndpointCoreConfig.parse(described["config"])
        # First half of the switch: the new entities start beside the serving ones, the router
        # keeps the serving routes; get_endpoint deploys the rest once that is running.
        self._deploy(name, serving, int(described["created_ms"]), pending=core)
        return self.get_endpoint(name)

    def get_endpoint(self, name: str) -> EndpointInfo:
        check_endpoint_name(name)
        self.connect()
        app = self._apps().get(name)
        if app is None:
            raise EndpointNotFoundError(f"endpoint '{name}' does not exist on the Ray cluster")
        status = str(app.status.value if hasattr(app.status, "value") else app.status)
        router = app.deployments.get(ROUTER_NAME)
        answering = router is not None and _running(router) > 0
        described = self._describe(name) if answering else None
        config = EndpointCoreConfig.parse(described["config"]) if described else None
        switching = (
            EndpointCoreConfig.parse(described["pending"])
            if described and described.get("pending")
            else None
        )
        update: ConfigUpdate
        if status == "RUNNING" and switching is not None and described is not None:
            # The new entities run: second half of the switch, the router takes the new
            # routes and the entities only the old config had are removed.
            update = "IN_PROGRESS"
            if self._finishing.get(name) != described:
                self._finishing[name] = described
                self._deploy(name, switching, int(described["created_ms"]))
        elif status == "RUNNING":
            update = "NOT_UPDATING"
            self._pending.pop(name, None)
            self._finishing.pop(name, None)
        elif status in _FAILED:
            update = "UPDATE_FAILED"
        else:
            update = "IN_PROGRESS"
        pending = (switching or self._pending.get(name)) if update != "NOT_UPDATING" else None
        now = _now_ms()
        return EndpointInfo(
            name=name,
            config=config,
            pending_config=pending,
            state=EndpointState(
                ready="READY" if answering and status != "DELETING" else "NOT_READY",
                config_update=update,
            ),
            creator="ray",
            creation_timestamp=int(described["created_ms"]) if described else now,
            last_updated_timestamp=int(described["updated_ms"]) if described else now,
        )

    def list_endpoints(self) -> list[EndpointInfo]:
        self.connect()
        names = [name for name, app in self._apps().items() if ROUTER_NAME in app.deployments]
        return [self.get_endpoint(name) for name in sorted(names)]

    def delete_endpoint(self, name: str) -> None:
        self.get_endpoint(name)
        self._serve.delete(name, _blocking=True)
        self._pending.pop(name, None)
        self._finishing.pop(name, None)

    def wait_not_updating(
        self,
        name: str,
        timeout: float = 300,
        poll_s: float = 0.25,
        on_poll: Callable[[EndpointInfo], None] | None = None,
    ) -> EndpointInfo:
        return poll_until_ready(
            name,
            lambda: (self.get_endpoint(name), None),
            timeout=timeout,
            poll_s=poll_s,
            on_poll=on_poll,
            failure=lambda _: (
                f"endpoint '{name}' failed to deploy on Ray Serve: {self._failure(name)}"
            ),
            where=" on Ray Serve",
            hint="wait longer, or see `serve status` for why its replicas do not start",
        )

    # -- figures and queries ------------------------------------------------------------------

    def stats(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        info = self.get_endpoint(name)
        figures: dict[str, Any] = {"overall": summarize([], window_s), "served_entities": {}}
        if info.state.ready == "READY":
            figures = self._router_call(name, "stats", window_s)
        app = self._apps()[name]
        for entity, data in figures["served_entities"].items():
            deployment = app.deployments.get(entity)
            data["ready_replicas"] = _running(deployment) if deployment is not None else 0
            data["replicas"] = _replica_states(deployment) if deployment is not None else {}
        return {
            "name": name,
            "state": info.state.model_dump(),
            "overall": figures["overall"],
            "revision": None,
            "served_entities": figures["served_entities"],
        }

    def metrics(self, name: str) -> str:
        data = self.stats(name)
        lines = [
            "# HELP cvdeploy_endpoint_requests_total Requests the router sent to a served entity.",
            "# TYPE cvdeploy_endpoint_requests_total counter",
        ]
        errors = [
            "# HELP cvdeploy_endpoint_errors_total Requests that failed (HTTP 5xx).",
            "# TYPE cvdeploy_endpoint_errors_total counter",
        ]
        ready = [
            "# HELP cvdeploy_endpoint_ready_replicas Running Serve replicas of a served entity.",
            "# TYPE cvdeploy_endpoint_ready_replicas gauge",
        ]
        for entity, figures in data["served_entities"].items():
            labels = f'endpoint="{name}",served_entity="{entity}"'
            total, failed = figures["requests_total"], figures["errors_total"]
            running = figures["ready_replicas"]
            lines.append(f"cvdeploy_endpoint_requests_total{{{labels}}} {total}")
            errors.append(f"cvdeploy_endpoint_errors_total{{{labels}}} {failed}")
            ready.append(f"cvdeploy_endpoint_ready_replicas{{{labels}}} {running}")
        return "\n".join([*lines, *errors, *ready]) + "\n"

    def logs(self, name: str, served_model_name: str) -> str:
        self.get_endpoint(name)
        raise NotAvailableError(
            "the Ray backend does not collect replica logs; read them where Ray writes them "
            "(the dashboard's Serve page, or /tmp/ray/session_latest/logs/serve/ on each node "
            f"for deployment '{served_model_name}' of application '{name}')"
        )

    def query(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        from cvdeploy.platforms.client import error_from_response

        self.connect()
        check_endpoint_name(name)
        try:
            response = self._http.post(f"{route_prefix(name)}/invocations", json=dict(payload))
        except httpx.HTTPError as exc:
            raise NotAvailableError(
                f"Ray Serve's proxy at {self._http.base_url} did not answer: {exc}; check "
                "http_host/http_port"
            ) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        data: dict[str, Any] = response.json()
        return data

    # -- plumbing -----------------------------------------------------------------------------

    def _apps(self) -> dict[str, Any]:
        apps: dict[str, Any] = dict(self._serve.status().applications)
        return apps

    def _deploy(
        self,
        name: str,
        config: EndpointCoreConfig,
        created_ms: int,
        pending: EndpointCoreConfig | None = None,
    ) -> None:
        from cvdeploy.platforms.ray.app import build_app
        from cvdeploy.registry import Registry

        registry = Registry(self._registry_uri, home=self._registry_home)
        for entity in (pending or config).served_entities:
            # A missing version fails here, with the registry's 404, not in a replica.
            registry.get_version(entity.entity_name, entity.entity_version)
        app = build_app(
            name, config, created_ms, str(registry.home), self._registry_uri, pending=pending
        )
        self._pending[name] = pending or config
        api = importlib.import_module("ray.serve.api")
        # serve.run waits for the application to run; _run(_blocking=False) returns once it is
        # submitted, as create/update promise (wait_not_updating polls serve.status()).
        api._run(app, _blocking=False, name=name, route_prefix=route_prefix(name))

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            described: dict[str, Any] = self._router_call(name, "describe")
        except OverloadedError:
            return None
        return described

    def _router_call(self, name: str, method: str, *args: Any) -> Any:
        try:
            handle = self._serve.get_app_handle(name)
            return getattr(handle, method).remote(*args).result(timeout_s=self.timeout)
        except Exception as exc:  # Ray raises its own types for a missing or dead replica
            raise OverloadedError(
                f"the router of endpoint '{name}' did not answer {method}: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _failure(self, name: str) -> str:
        app = self._apps().get(name)
        if app is None:
            return "the application is gone"
        parts = [str(app.message)] if app.message else []
        for deployment, status in app.deployments.items():
            if status.message:
                parts.append(f"{deployment}: {status.message}")
        return "; ".join(parts) or str(app.status)


def _url_host(url: str | None) -> str | None:
    if not url or "://" not in url:
        return None
    return urlsplit(url).hostname


def _proxy_port() -> int | None:
    """The HTTP port of the Serve instance this process is connected to, where Ray says."""
    try:
        context = importlib.import_module("ray.serve.context")
        return int(context._get_global_client().http_config.port)
    except Exception:  # a private API: without it, the configured port is used
        return None


def _running(deployment: Any) -> int:
    return int(_replica_states(deployment).get("RUNNING", 0))


def _replica_states(deployment: Any) -> dict[str, int]:
    states = getattr(deployment, "replica_states", None) or {}
    return {str(getattr(k, "value", k)): int(v) for k, v in states.items()}


def _now_ms() -> int:
    return int(time.time() * 1000)
