"""The platform's one base URL: the Databricks serving-endpoints API and the gateway.

Like a Databricks workspace host, the same server answers the control plane
(``/api/2.0/serving-endpoints...``, same paths and JSON) and the data plane
(``/serving-endpoints/{name}/invocations`` and the image and v2 routes under it), so
``databricks-sdk``'s ``WorkspaceClient(host=...)`` drives it unchanged.

cvdeploy's extensions sit beside Databricks' paths: ``POST .../{name}/rollback``,
``GET .../{name}/revisions``, ``GET .../{name}/stats`` and ``GET /health``.

Auth (DESIGN "Decisions"): once any token exists, or whenever the platform listens beyond
loopback, every call needs ``Authorization: Bearer <token>``; reads and queries need the
``query`` scope, changes need ``manage``. The token id is what the audit log records as "who".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from cvdeploy import __version__
from cvdeploy.errors import ConfigError, CVDeployError, InputError, ModelNotFoundError
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointInfo, EndpointSpec
from cvdeploy.platforms.local.controller import LocalPlatform
from cvdeploy.platforms.local.gateway import Gateway
from cvdeploy.platforms.local.state import PlatformState
from cvdeploy.platforms.local.tokens import Scope as TokenScope
from cvdeploy.serving.http import (
    ASGIApp,
    JSONResponse,
    Receive,
    RequestContextMiddleware,
    Scope,
    Send,
    error_response,
    parse_json,
    read_body,
)
from cvdeploy.serving.metrics import CONTENT_TYPE_LATEST

__all__ = ["PlatformApp", "create_platform_app"]

logger = logging.getLogger("cvdeploy.platform")

_API = "/api/2.0/serving-endpoints"
_CONTROL_BODY_LIMIT = 1024 * 1024
#: Paths anyone may call: the liveness probe, the API docs, and the metadata probe that
#: databricks-sdk sends before its first call (answered 404: not a Databricks workspace).
_OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/redoc", "/.well-known/databricks-config")


def create_platform_app(
    platform: LocalPlatform,
    *,
    require_tokens: bool = False,
    access_log: bool = True,
    on_started: Any = None,
    on_stopped: Any = None,
) -> PlatformApp:
    """The platform's ASGI app around ``platform`` (started and stopped by the app's lifespan).

    Args:
        platform: The controller; its replicas start when the app starts.
        require_tokens: Always require a token (the platform listens beyond loopback).
        on_started: Called once the platform is up (the daemon writes its runtime file).
        on_stopped: Called after the platform stopped.
    """
    gateway = Gateway(platform)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await platform.close()
            await gateway.aclose()
            if on_stopped is not None:
                on_stopped()

    app = FastAPI(
        title="cvdeploy platform",
        version=__version__,
        description="Databricks-compatible serving endpoints on this machine, and their gateway.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.platform = platform
    _add_error_handlers(app)
    _add_control_plane(app, platform)

    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "pid": os.getpid(), "version": __version__})

    async def metrics() -> Response:
        return Response(platform.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def host_metadata(request: Request) -> JSONResponse:
        # databricks-sdk asks every host for this, unauthenticated, when a client is built;
        # without an answer it logs a warning on every connection. Tokens are the only auth
        # here, so the OIDC endpoint is never used.
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"oidc_endpoint": f"{base}/oidc", "workspace_id": "cvdeploy"})

    app.add_api_route("/health", health, methods=["GET"], summary="Liveness of the platform")
    app.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics")
    app.add_api_route(
        "/.well-known/databricks-config",
        host_metadata,
        methods=["GET"],
        summary="Host metadata databricks-sdk probes for (cvdeploy)",
    )
    # The data plane skips FastAPI: auth and request ids wrap a plain dispatch by path prefix.
    dispatch = _Dispatch(gateway, app)
    auth = AuthMiddleware(dispatch, state=platform.state, require_tokens=require_tokens)
    return PlatformApp(app, RequestContextMiddleware(auth, access_log=access_log))


class _Dispatch:
    """``/serving-endpoints/...`` to the gateway, everything else to the control plane."""

    def __init__(self, gateway: Gateway, api: FastAPI) -> None:
        self.gateway = gateway
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope["path"]).startswith("/serving-endpoints/"):
            await self.gateway(scope, receive, send)
        else:
            await self.api(scope, receive, send)


class PlatformApp:
    """The platform's ASGI app; ``api`` is the FastAPI control plane (its lifespan runs all)."""

    def __init__(self, api: FastAPI, asgi: ASGIApp) -> None:
        self.api = api
        self.state = api.state
        self._asgi = asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)


def _author(request: Request) -> str:
    value = request.scope.get("state", {}).get("author")
    return value if isinstance(value, str) else "local"


async def _json_body(request: Request) -> Any:
    body = await read_body(request, _CONTROL_BODY_LIMIT, timeout=30.0)
    if not body.strip():
        return {}
    return parse_json(body)


def _info_json(info: EndpointInfo) -> dict[str, Any]:
    return info.model_dump(mode="json", exclude_none=True)


def _add_control_plane(app: FastAPI, platform: LocalPlatform) -> None:
    async def create(request: Request) -> JSONResponse:
        spec = EndpointSpec.parse(await _json_body(request))
        return JSONResponse(_info_json(await platform.create(spec, _author(request))))

    async def list_endpoints() -> JSONResponse:
        return JSONResponse({"endpoints": [_info_json(i) for i in await platform.list()]})

    async def get(name: str) -> JSONResponse:
        return JSONResponse(_info_json(await platform.get(name)))

    async def update_config(name: str, request: Request) -> JSONResponse:
        body = await _json_body(request)
        if isinstance(body, dict):
            body.pop("name", None)  # databricks-sdk repeats the path's name in the body
        config = EndpointCoreConfig.parse(body)
        return JSONResponse(_info_json(await platform.update(name, config, _author(request))))

    async def delete(name: str, request: Request) -> JSONResponse:
        await platform.delete(name, _author(request))
        return JSONResponse({})

    async def rollback(name: str, request: Request) -> JSONResponse:
        body = await _json_body(request)
        target = body.get("to_revision") if isinstance(body, dict) else None
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)):
            raise ConfigError(f"to_revision must be a revision number, got {target!r}")
        info = await platform.rollback(name, target, _author(request))
        return JSONResponse(_info_json(info))

    async def revisions(name: str) -> JSONResponse:
        found = await asyncio.to_thread(platform.state.revisions, name)
        return JSONResponse(
            {
                "revisions": [
                    {
                        "number": r.number,
                        "status": r.status,
                        "author": r.author,
                        "created_at": r.created_at,
                        "rollback_of": r.rollback_of,
                        "config": r.config.to_json(),
                    }
                    for r in found
                ]
            }
        )

    async def stats(name: str, window_s: float = 60.0) -> JSONResponse:
        if not 0 < window_s <= 300:
            raise ConfigError(f"window_s must be in (0, 300] seconds, got {window_s:g}")
        return JSONResponse(await platform.stats(name, window_s))

    async def metrics(name: str) -> Response:
        await platform.get(name)
        return PlainTextResponse(platform.metrics.render(name), media_type=CONTENT_TYPE_LATEST)

    async def logs(name: str, served_model: str) -> JSONResponse:
        text = await asyncio.to_thread(platform.logs, name, served_model)
        return JSONResponse({"logs": text})

    add = app.add_api_route
    add(_API, create, methods=["POST"], summary="Create a serving endpoint")
    add(_API, list_endpoints, methods=["GET"], summary="List serving endpoints")
    add(f"{_API}/{{name}}", get, methods=["GET"], summary="Get a serving endpoint")
    add(f"{_API}/{{name}}", delete, methods=["DELETE"], summary="Delete a serving endpoint")
    add(f"{_API}/{{name}}/config", update_config, methods=["PUT"], summary="Update the config")
    add(f"{_API}/{{name}}/rollback", rollback, methods=["POST"], summary="Roll back (cvdeploy)")
    add(f"{_API}/{{name}}/revisions", revisions, methods=["GET"], summary="Revisions (cvdeploy)")
    add(f"{_API}/{{name}}/stats", stats, methods=["GET"], summary="Live figures (cvdeploy)")
    add(f"{_API}/{{name}}/metrics", metrics, methods=["GET"], summary="Prometheus metrics")
    for kind in ("logs", "build-logs"):
        add(
            f"{_API}/{{name}}/served-models/{{served_model}}/{kind}",
            logs,
            methods=["GET"],
            summary=f"Replica {kind} of a served model",
        )


class AuthMiddleware:
    """Bearer tokens with scopes: ``query`` to read and query, ``manage`` to change."""

    def __init__(self, app: ASGIApp, state: PlatformState, require_tokens: bool) -> None:
        self.app = app
        self.state = state
        self.require_tokens = require_tokens
        # Whether tokens exist is read from SQLite at most once a second, not per request;
        # `cvdeploy tokens create` in another process is seen within that second.
        self._checked_at = -1.0
        self._tokens_exist = False

    def _tokens_required(self) -> bool:
        if self.require_tokens:
            return True
        now = time.monotonic()
        if now - self._checked_at > 1.0:
            self._tokens_exist = self.state.tokens_exist()
            self._checked_at = now
        return self._tokens_exist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path in _OPEN_PATHS or not self._tokens_required():
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        writes = path.startswith("/api/") and method not in ("GET", "HEAD")
        needed: TokenScope = "manage" if writes else "query"
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        secret = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        try:
            author = await asyncio.to_thread(self.state.check_token, secret, needed)
        except CVDeployError as exc:
            response = error_response(exc)
            if exc.status_code == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["author"] = author
        await self.app(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    async def on_cvdeploy_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, CVDeployError):  # pragma: no cover - registered for the tree
            raise exc
        if exc.status_code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc, request.scope.get("state", {}).get("request_id"))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # pragma: no cover
            raise exc
        if exc.status_code == 404:
            error: CVDeployError = ModelNotFoundError(f"no route {request.url.path}")
        else:
            error = InputError(f"{request.method} {request.url.path}: {exc.detail}")
            error.status_code = exc.status_code
        return error_response(error)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        detail = exc.errors() if isinstance(exc, RequestValidationError) else []
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}" for item in detail
        ]
        return error_response(InputError("invalid request: " + "; ".join(parts)))

    app.add_exception_handler(CVDeployError, on_cvdeploy_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
