"""The gateway: one port in front of every endpoint's replicas.

A request to ``/serving-endpoints/{name}/...`` is checked against the endpoint's rate limit,
sent to a served entity chosen by the traffic split (smooth weighted round-robin, so a 10 %
canary gets exactly every tenth request), then to the ready replica of that entity with the
fewest requests in flight. Inference is idempotent, so a request whose replica fails at the
connection level (refused, reset, died mid-request) is retried once on another replica, and
the failing replica's circuit breaker counts it. With no healthy replica the endpoint's
fallback entity serves; while an entity is scaled to zero (or restarting) the request waits,
bounded, for its first replica, and its waiting is what makes the autoscaler start one.

Paths under the endpoint::

    POST invocations                          MLflow / Databricks scoring, split by traffic
    POST served-models/{entity}/invocations   one served entity, bypassing the split
    ...  v2/...                               KServe v2 / Triton; /versions/{v}/ pins a version
    ...  v1/models/...                        image upload API
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from cvdeploy.errors import (
    CVDeployError,
    DeadlineExceededError,
    InputError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitedError,
)
from cvdeploy.platforms.local.controller import EndpointRuntime, EntityRuntime, LocalPlatform
from cvdeploy.platforms.local.replicas import Replica
from cvdeploy.platforms.local.routing import pick_replica
from cvdeploy.serving.http import Receive, Scope, Send, error_response, read_body

__all__ = ["Gateway"]

logger = logging.getLogger("cvdeploy.gateway")

# Request headers a replica needs; hop-by-hop ones (connection, host, ...) are not forwarded.
_FORWARD_REQUEST = (
    "content-type",
    "content-encoding",
    "accept",
    "inference-header-content-length",
)
_FORWARD_RESPONSE = ("content-type", "inference-header-content-length", "retry-after")
_POLL_S = 0.02


@dataclass
class _Upstream:
    status: int
    content: bytes
    headers: dict[str, str]


class _Failed(Exception):
    """A replica failed at the connection level; the request may be retried elsewhere."""


class Gateway:
    """Routes endpoint requests to replicas; one instance per platform app."""

    def __init__(self, platform: LocalPlatform) -> None:
        self.platform = platform
        self._session: aiohttp.ClientSession | None = None
        self._turn = 0

    def _client(self) -> aiohttp.ClientSession:
        # aiohttp's client, not httpx's: measured on two cores, it proxies a request for a
        # fifth of the CPU (0.2 ms vs 1.0 ms), which is most of the gateway's cost.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(
                    total=self.platform.options.request_timeout_s, sock_connect=5.0
                ),
                auto_decompress=False,  # bodies pass through as the replica encoded them
                # The client's own content-type, or none: never one aiohttp guesses.
                skip_auto_headers=("User-Agent", "Content-Type"),
                trust_env=False,  # never send replica traffic through a proxy from the env
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry for ``/serving-endpoints/...``, called without FastAPI's routing and
        middleware stack in between (they cost a third of the gateway's time per request)."""
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except CVDeployError as exc:
            response = error_response(exc, scope.get("state", {}).get("request_id"))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        _, _, name, rest = [*str(request.scope["path"]).split("/", 3), "", ""][:4]
        if request.method not in ("GET", "POST"):
            error = InputError(f"{request.method} is not allowed here; use GET or POST")
            error.status_code = 405
            raise error
        if not name or not rest:
            raise ModelNotFoundError(
                f"no route {request.scope['path']}; use /serving-endpoints/NAME/invocations"
            )
        runtime = self.platform.runtime(name)
        if runtime is None:
            await self.platform.get(name)  # 404 for an unknown endpoint
            reason = self.platform.unavailable.get(name)
            if reason is not None:
                raise OverloadedError(reason, retry_after=30)
            raise OverloadedError(
                f"endpoint '{name}' is not ready yet (its first replicas are starting); "
                "retry shortly",
                retry_after=2,
            )
        path, pinned = self._target(runtime, rest)
        limiter = runtime.limiter
        if limiter is not None and not limiter.try_acquire():
            self.platform.metrics.rejected.labels(name, "rate_limit").inc()
            raise RateLimitedError(
                f"endpoint '{name}' is over its rate limit; slow down",
                retry_after=limiter.retry_after_s(),
            )
        options = self.platform.options
        body = await read_body(request, options.max_body_bytes, timeout=options.request_timeout_s)
        headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
        request_id = request.scope.get("state", {}).get("request_id")
        if request_id:
            headers["x-request-id"] = request_id
        url_tail = path + (f"?{request.url.query}" if request.url.query else "")
        return await self._forward(runtime, pinned, request.method, url_tail, body, headers)

    def _target(self, runtime: EndpointRuntime, rest: str) -> tuple[str, EntityRuntime | None]:
        """The replica path for ``rest`` and the pinned served entity, if the path pins one."""
        parts = rest.split("/")
        if rest == "invocations":
            return "/invocations", None
        if len(parts) == 3 and parts[0] == "served-models" and parts[2] == "invocations":
            entity = runtime.entities.get(parts[1])
            if entity is None:
                raise ModelNotFoundError(
                    f"endpoint '{runtime.name}' has no served entity '{parts[1]}'; it serves "
                    + ", ".join(runtime.entities)
                )
            return "/invocations", entity
        if parts[0] == "v2" or rest.startswith("v1/models"):
            pinned = None
            if len(parts) >= 5 and parts[:2] == ["v2", "models"] and parts[3] == "versions":
                pinned = runtime.by_version(parts[4])
                if pinned is None:
                    raise ModelNotFoundError(
                        f"endpoint '{runtime.name}' serves no version '{parts[4]}'; it serves "
                        + ", ".join(e.entity.entity_version for e in runtime.entities.values())
                    )
            return "/" + rest, pinned
        raise ModelNotFoundError(
            f"no route /serving-endpoints/{runtime.name}/{rest}; use invocations, "
            "served-models/{entity}/invocations, v2/... or v1/models/..."
        )

    async def _forward(
        self,
        runtime: EndpointRuntime,
        pinned: EntityRuntime | None,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> Response:
        platform = self.platform
        started = time.perf_counter()
        deadline = started + platform.options.request_timeout_s
        entity = pinned or runtime.entities[runtime.router.pick() or next(iter(runtime.entities))]
        tried: set[int] = set()
        for attempt in (1, 2):
            entity, replica = await self._replica(runtime, entity, pinned is not None, tried,
                                                  deadline)  # fmt: skip
            try:
                upstream = await self._send(entity, replica, method, path, body, headers, deadline)
            except _Failed as exc:
                tried.add(id(replica))
                if attempt == 2:
                    self._record(runtime, entity, 502, started)
                    raise OverloadedError(
                        f"endpoint '{runtime.name}': two replicas failed this request ({exc}); "
                        "retry",
                        retry_after=1,
                    ) from None
                platform.metrics.retries.labels(runtime.name).inc()
                logger.warning(
                    "endpoint %s: replica %s of %s failed (%s); retrying on another replica",
                    runtime.name, replica.index, entity.name, exc,
                )  # fmt: skip
                continue
            current = platform.runtime(runtime.name)
            if (
                upstream.status == 503
                and attempt == 1
                and not pinned
                and current is not None
                and current is not runtime
            ):
                # The config switched while this request was in flight and the old replica,
                # draining, turned it away: the new runtime takes it (inference is idempotent),
                # so a switch under load fails no request.
                platform.metrics.retries.labels(runtime.name).inc()
                runtime = current
                entity = runtime.entities[runtime.router.pick() or next(iter(runtime.entities))]
                continue
            self._record(runtime, entity, upstream.status, started)
            upstream.headers["served-model-name"] = entity.name
            return Response(upstream.content, status_code=upstream.status, headers=upstream.headers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        entity: EntityRuntime,
        replica: Replica,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> _Upstream:
        breaker = entity.breaker(replica)
        replica.in_flight += 1
        entity.last_request_at = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=max(0.001, deadline - time.perf_counter()))
        try:
            async with self._client().request(
                method, replica.url + path, data=body, headers=headers, timeout=timeout
            ) as response:
                content = await response.read()
                upstream = _Upstream(
                    response.status,
                    content,
                    {k: v for k in _FORWARD_RESPONSE if (v := response.headers.get(k)) is not None},
                )
        except (asyncio.TimeoutError, TimeoutError):
            breaker.record_failure()  # a hung replica is taken out of rotation like a dead one
            raise DeadlineExceededError(
                f"the replica did not answer within {self.platform.options.request_timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            # Refused, reset, or the process died mid-request: safe to retry (idempotent).
            breaker.record_failure()
            raise _Failed(type(exc).__name__) from None
        finally:
            replica.in_flight -= 1
        breaker.record_success()
        return upstream

    async def _replica(
        self,
        runtime: EndpointRuntime,
        entity: EntityRuntime,
        pinned: bool,
        tried: set[int],
        deadline: float,
    ) -> tuple[EntityRuntime, Replica]:
        """A healthy replica of ``entity`` (or of the fallback), waiting for one if need be."""
        cold_deadline = min(
            deadline, time.perf_counter() + self.platform.options.cold_start_timeout_s
        )
        queued = False
        try:
            while True:
                found = self._healthy(entity, tried)
                if found is not None:
                    return entity, found
                fallback = runtime.fallback
                if not pinned and fallback is not None and fallback is not entity:
                    found = self._healthy(fallback, tried)
                    if found is not None:
                        return fallback, found
                if not queued:
                    # Counted as waiting: at zero replicas this is what starts the first one.
                    entity.queued += 1
                    queued = True
                    entity.last_request_at = time.monotonic()
                    self.platform.wake()
                if time.perf_counter() >= cold_deadline:
                    self.platform.metrics.rejected.labels(runtime.name, "no_replica").inc()
                    raise OverloadedError(
                        f"endpoint '{runtime.name}': served entity '{entity.name}' has no ready "
                        f"replica after {self.platform.options.cold_start_timeout_s:g} s; see "
                        f"`cvdeploy endpoints logs {runtime.name} {entity.name}`",
                        retry_after=5,
                    )
                await asyncio.sleep(_POLL_S)
        finally:
            if queued:
                entity.queued -= 1

    def _healthy(self, entity: EntityRuntime, tried: set[int]) -> Replica | None:
        candidates = [r for r in entity.candidates() if id(r) not in tried]
        while candidates:
            self._turn += 1
            chosen = pick_replica(candidates, lambda r: r.in_flight, offset=self._turn)
            if chosen is None:
                return None
            # Asked only of the chosen one: in half-open, allow() starts the one trial request.
            if entity.breaker(chosen).allow():
                return chosen
            candidates.remove(chosen)
        return None

    def _record(
        self, runtime: EndpointRuntime, entity: EntityRuntime, status: int, started: float
    ) -> None:
        seconds = time.perf_counter() - started
        entity.window.record(seconds, status)
        e = entity.entity
        metrics = self.platform.metrics
        metrics.requests.labels(runtime.name, entity.name, e.entity_name, e.entity_version,
                                str(status)).inc()  # fmt: skip
        metrics.latency.labels(runtime.name, entity.name, e.entity_name, e.entity_version).observe(
            seconds
        )
