"""The ASGI app serving one model version over every protocol cvdeploy speaks."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cvdeploy import __version__
from cvdeploy.errors import (
    CVDeployError,
    InferenceError,
    InputError,
    ModelNotFoundError,
)
from cvdeploy.serving.engine import InferenceEngine
from cvdeploy.serving.http import (
    ASGIApp,
    JSONResponse,
    Receive,
    RequestContextMiddleware,
    Scope,
    Send,
    error_response,
)
from cvdeploy.serving.metrics import CONTENT_TYPE_LATEST
from cvdeploy.serving.protocols.images import image_router
from cvdeploy.serving.protocols.mlflow import mlflow_router
from cvdeploy.serving.protocols.v2 import v2_router
from cvdeploy.serving.settings import ServeSettings

__all__ = ["create_app"]

logger = logging.getLogger("cvdeploy.server")

#: Paths that never need the query token: probes, metrics and docs.
_OPEN_PATHS = (
    "/v2/health/",
    "/ping",
    "/health",
    "/version",
    "/metrics",
    "/monitoring",
    "/docs",
    "/openapi.json",
    "/redoc",
)


def create_app(
    settings: ServeSettings | None = None,
    *,
    engine: InferenceEngine | None = None,
    access_log: bool = True,
    load_in_background: bool = True,
) -> FastAPI:
    """Build the serving app for ``settings`` (or around an existing ``engine``).

    The model loads when the app starts (its lifespan); readiness is false until it is warm.
    With ``load_in_background=False`` the lifespan waits for the model, so the server accepts
    no connection before it can answer (what worker processes sharing a port need: otherwise
    a request can reach a worker that is still loading and get a 503).
    """
    if engine is None:
        if settings is None:
            raise TypeError("create_app needs settings or an engine")
        engine = InferenceEngine(settings)
    eng = engine

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await eng.start(load_in_background=load_in_background)
        try:
            yield
        finally:
            await eng.stop(drain_timeout=eng.settings.timeout)

    app = FastAPI(
        title="cvdeploy model server",
        version=__version__,
        description=(
            f"Serves model `{eng.name}` version {eng.version} over the image API, "
            "KServe v2 / Triton and MLflow / Databricks scoring."
        ),
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.engine = eng
    _add_error_handlers(app, eng)
    app.include_router(image_router(eng))
    app.include_router(v2_router(eng))
    app.include_router(mlflow_router(eng))

    async def metrics() -> Response:
        return Response(eng.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics")

    async def monitoring(window_s: float = 60.0) -> JSONResponse:
        if not 0 < window_s <= eng.recorder.horizon_s:
            raise InputError(
                f"window_s must be in (0, {eng.recorder.horizon_s:g}] seconds, got {window_s:g}"
            )
        # psutil and the percentiles take a moment: keep them off the event loop.
        return JSONResponse(await asyncio.to_thread(eng.recorder.snapshot, window_s))

    app.add_api_route(
        "/monitoring", monitoring, methods=["GET"], summary="Live figures for ModelMonitor"
    )

    def observe(route: str, status: int, seconds: float) -> None:
        eng.metrics.observe_request(route, status, seconds)
        eng.recorder.observe_request(route, status, seconds)

    if eng.settings.token:
        app.add_middleware(TokenMiddleware, token=eng.settings.token)
    app.add_middleware(RequestContextMiddleware, observe=observe, access_log=access_log)
    return app


class TokenMiddleware:
    """The optional query token of a single-model server (``?token=`` or a Bearer header)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(_OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.token):
            response = JSONResponse(
                {
                    "error": "missing or wrong token; send ?token=... or Authorization: Bearer",
                    "error_code": "UNAUTHENTICATED",
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _request_id(request: Request) -> str | None:
    state: dict[str, Any] = request.scope.get("state", {})
    value = state.get("request_id")
    return value if isinstance(value, str) else None


def _add_error_handlers(app: FastAPI, engine: InferenceEngine) -> None:
    async def on_cvdeploy_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, CVDeployError):  # pragma: no cover - registered for the tree
            raise exc
        request_id = _request_id(request)
        engine.metrics.observe_error(type(exc).__name__)
        engine.recorder.observe_error(
            type(exc).__name__, exc.status_code, exc.public_message(), request_id
        )
        if exc.status_code >= 500 and isinstance(exc, InferenceError):
            logger.error(
                "inference failed (request %s): %s", request_id, exc, exc_info=exc.__cause__
            )
        return error_response(exc, request_id)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # pragma: no cover
            raise exc
        if exc.status_code == 404:
            error: CVDeployError = ModelNotFoundError(
                f"no route {request.url.path}; see /docs for the API"
            )
        else:
            error = InputError(str(exc.detail))
            error.status_code = exc.status_code
        response = error_response(error, _request_id(request))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        detail = exc.errors() if isinstance(exc, RequestValidationError) else []
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}" for item in detail
        ]
        error = InputError("invalid request: " + "; ".join(parts))
        return error_response(error, _request_id(request))

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        logger.info("client went away mid-request (request %s)", _request_id(request))
        return Response(status_code=499)

    app.add_exception_handler(CVDeployError, on_cvdeploy_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
