"""``FakeWorkspace``: the Databricks Model Serving REST API on 127.0.0.1, in a thread.

Paths and bodies are those of ``databricks.sdk.service.serving.ServingEndpointsAPI``; see
``tests/fakes/README.md`` for every behaviour and the source it was checked against.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from .config import check_endpoint_name, parse_config
from .endpoints import Endpoint
from .errors import ApiError, error_body
from .metrics import TrafficLog, render
from .scoring import ModelStore

__all__ = ["FakeWorkspace"]

_API = "/api/2.0/serving-endpoints"
_NAME = r"(?P<name>[^/]+)"
_SERVED = r"(?P<served>[^/]+)"
_SERVED_MODEL = f"{_API}/{_NAME}/served-models/{_SERVED}"
Reply = tuple[int, Any, dict[str, str]]
_WORKSPACE_ID = "1234567890123456"


class FakeWorkspace:
    """A Databricks workspace's Model Serving API, for contract tests.

    Args:
        token: the only accepted personal access token.
        registry_uri: the MLflow tracking URI whose registered models the endpoints serve;
            without one, deployments succeed but queries answer 503.
        clock: seconds since the epoch (default ``time.time``); drives update completion,
            the metrics window and the rate limit.
        update_delay_s: how long a config update stays ``IN_PROGRESS``.
        rate_limit_per_s: requests per second (all routes) before 429 ``REQUEST_LIMIT_EXCEEDED``.
        concurrency_quota: the most provisioned concurrency one config may ask for in total.
        seed: seeds the traffic-split draw.
    """

    def __init__(
        self,
        token: str = "dapi-test",
        registry_uri: str | None = None,
        clock: Callable[[], float] | None = None,
        update_delay_s: float = 0.5,
        rate_limit_per_s: int | None = None,
        concurrency_quota: int | None = 200,
        seed: int = 0,
        creator: str = "fake-user@example.com",
    ) -> None:
        self.token = token
        self.url = ""
        self.requests: list[tuple[str, str, int]] = []
        self.update_delay_s = update_delay_s
        self.rate_limit_per_s = rate_limit_per_s
        self.concurrency_quota = concurrency_quota
        self.creator = creator
        self._clock = clock or time.time
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._endpoints: dict[str, Endpoint] = {}
        self._fail_next: str | None = None
        self._recent: deque[float] = deque()
        self.traffic = TrafficLog()
        self.models = ModelStore(registry_uri)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Reply]]] = [
            ("GET", re.compile(f"^{_API}$"), self._list),
            ("POST", re.compile(f"^{_API}$"), self._create),
            ("GET", re.compile(f"^{_API}/{_NAME}$"), self._get),
            ("DELETE", re.compile(f"^{_API}/{_NAME}$"), self._delete),
            ("PUT", re.compile(f"^{_API}/{_NAME}/config$"), self._update_config),
            ("GET", re.compile(f"^{_API}/{_NAME}/metrics$"), self._metrics),
            ("GET", re.compile(f"^{_SERVED_MODEL}/build-logs$"), self._build),
            ("GET", re.compile(f"^{_SERVED_MODEL}/logs$"), self._logs),
            ("POST", re.compile(f"^/serving-endpoints/{_NAME}/invocations$"), self._query),
        ]

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> FakeWorkspace:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self.models.close()

    async def _start(self) -> int:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1])

    # -- test controls -------------------------------------------------------------------

    def fail_next_update(self, reason: str = "Container build failed.") -> None:
        """Make the next create or update_config end ``UPDATE_FAILED`` with ``reason`` logged."""
        with self._lock:
            self._fail_next = reason

    def record_traffic(
        self,
        endpoint: str,
        served_entity: str,
        *,
        requests: int,
        errors_4xx: int = 0,
        errors_5xx: int = 0,
        latencies_ms: Sequence[float] = (),
        cpu_percent: float | None = None,
        mem_percent: float | None = None,
    ) -> None:
        """Feed the metrics export as if ``requests`` had reached ``served_entity`` just now."""
        self.traffic.record(
            endpoint,
            served_entity,
            self._clock(),
            requests=requests,
            errors_4xx=errors_4xx,
            errors_5xx=errors_5xx,
            latencies_ms=tuple(float(v) for v in latencies_ms),
            cpu_percent=cpu_percent,
            mem_percent=mem_percent,
        )

    # -- HTTP ----------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        loop = asyncio.get_running_loop()
        status, payload, headers = await loop.run_in_executor(
            None, self._handle, request.method, request.path, auth, body
        )
        self.requests.append((request.method, request.path, status))
        if isinstance(payload, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            return web.Response(status=status, body=payload.encode(), headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    def _handle(self, method: str, path: str, auth: str, body: bytes) -> Reply:
        try:
            if method == "GET" and path == "/.well-known/databricks-config":
                # The SDK's unauthenticated discovery probe (databricks.sdk.oauth.HostMetadata).
                return 200, {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": _WORKSPACE_ID}, {}
            self._authenticate(auth)
            self._throttle()
            for verb, pattern, handler in self._routes:
                match = pattern.match(path)
                if match and verb == method:
                    return handler(body=body, **match.groupdict())
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        except ApiError as exc:
            return exc.status, error_body(exc.error_code, exc.message), exc.headers

    def _authenticate(self, auth: str) -> None:
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or not token:
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Credential was not sent or was of an unsupported type for this API.",
            )
        if token != self.token:
            raise ApiError(403, "PERMISSION_DENIED", "Invalid access token.")

    def _throttle(self) -> None:
        if self.rate_limit_per_s is None:
            return
        now = self._clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit_per_s:
                raise ApiError(
                    429,
                    "REQUEST_LIMIT_EXCEEDED",
                    f"Too many requests: the limit is {self.rate_limit_per_s} per second.",
                    {"Retry-After": "1"},
                )
            self._recent.append(now)

    # -- control plane -------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise ApiError.no_endpoint(name)
        endpoint.advance(self._clock(), self.update_delay_s, self._build_step)
        return endpoint

    def _build_step(self, config: Any) -> None:
        self.models.build([(e.entity_name, e.entity_version) for e in config.served_entities])

    def _list(self, body: bytes) -> Reply:
        with self._lock:
            names = sorted(self._endpoints)
            items = [self._endpoint(name).summary() for name in names]
        # Databricks omits an empty repeated field.
        return 200, ({"endpoints": items} if items else {}), {}

    def _create(self, body: bytes) -> Reply:
        request = _json_object(body)
        name = check_endpoint_name(request.get("name"))
        config = request.get("config")
        if not isinstance(config, dict):
            raise ApiError.invalid("config is required to serve a custom model.")
        now = self._clock()
        with self._lock:
            if name in self._endpoints:
                raise ApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists."
                )
            parsed = parse_config(
                config, creator=self.creator, now_ms=int(now * 1000), quota=self.concurrency_quota
            )
            endpoint = Endpoint(name=name, creator=self.creator, created=now, last_updated=now)
            endpoint.start_update(parsed, now, self._take_failure())
            self._endpoints[name] = endpoint
            return 200, endpoint.detailed(), {}

    def _get(self, body: bytes, name: str) -> Reply:
        with self._lock:
            return 200, self._endpoint(name).detailed(), {}

    def _delete(self, body: bytes, name: str) -> Reply:
        with self._lock:
            self._endpoint(name)
            del self._endpoints[name]
        self.traffic.forget(name)
        return 200, {}, {}

    def _update_config(self, body: bytes, name: str) -> Reply:
        request = _json_object(body)
        now = self._clock()
        with self._lock:
            endpoint = self._endpoint(name)
            if endpoint.updating:
                raise ApiError(
                    409,
                    "RESOURCE_CONFLICT",
                    f"Endpoint '{name}' has an update in progress (config version "
                    f"{endpoint.pending.version if endpoint.pending else '?'}); wait for "
                    "state.config_update to leave IN_PROGRESS before updating it again.",
                )
            parsed = parse_config(
                request, creator=self.creator, now_ms=int(now * 1000), quota=self.concurrency_quota
            )
            endpoint.start_update(parsed, now, self._take_failure())
            return 200, endpoint.detailed(), {}

    def _take_failure(self) -> str | None:
        reason, self._fail_next = self._fail_next, None
        return reason

    def _build(self, body: bytes, name: str, served: str) -> Reply:
        with self._lock:
            endpoint = self._endpoint(name)
            if served not in endpoint.build_logs:
                raise _no_served(name, served)
            return 200, {"logs": endpoint.build_logs[served]}, {}

    def _logs(self, body: bytes, name: str, served: str) -> Reply:
        with self._lock:
            endpoint = self._endpoint(name)
            if not endpoint.known_served_name(served):
                raise _no_served(name, served)
            lines = endpoint.server_logs.get(served, [])
            return 200, {"logs": "".join(f"{line}\n" for line in lines)}, {}

    def _metrics(self, body: bytes, name: str) -> Reply:
        now = self._clock()
        with self._lock:
            endpoint = self._endpoint(name)
            config = endpoint.config
            rows = []
            for served in config.names() if config else []:
                figures = self.traffic.figures(name, served, now)
                low, high = config.concurrency[served] if config else (0, 0)
                rows.append((served, figures, high if figures.requests else low))
        return 200, render(rows), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}

    # -- data plane ----------------------------------------------------------------------

    def _query(self, body: bytes, name: str) -> Reply:
        with self._lock:
            endpoint = self._endpoint(name)
            config = endpoint.config
            if config is None:
                # A choice (see README): not-ready endpoints answer 404, never retried by the SDK.
                raise ApiError.not_found(
                    f"Endpoint '{name}' is not ready (state.ready is NOT_READY); wait for "
                    "READY before querying it."
                )
            routes = [r for r in config.routes if r.traffic_percentage]
            route = self._random.choices(routes, [r.traffic_percentage for r in routes])[0]
            served = route.served_model_name or ""
            entity = config.entity(served)
        if entity is None:
            raise ApiError(500, "INTERNAL_ERROR", f"route to unknown served entity {served!r}")
        start = time.perf_counter()
        status = 200
        try:
            answer = self.models.score(entity.entity_name or "", entity.entity_version or "", body)
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000
            self.traffic.record(
                name,
                served,
                self._clock(),
                requests=1,
                errors_4xx=int(400 <= status < 500),
                errors_5xx=int(status >= 500),
                latencies_ms=(elapsed_ms,),
            )
            with self._lock:
                endpoint.server_logs.setdefault(served, []).append(
                    f"POST /invocations {status} {elapsed_ms:.1f}ms"
                )
        return 200, answer, {"served-model-name": served}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "MALFORMED_REQUEST", f"Could not parse request body: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "The request body must be a JSON object.")
    return value


def _no_served(name: str, served: str) -> ApiError:
    return ApiError.not_found(f"Served model '{served}' does not exist in endpoint '{name}'.")
