"""HTTP plumbing shared by every protocol: bounded body reads, JSON, errors, request ids."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cvdeploy.errors import (
    CVDeployError,
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "JSONResponse",
    "RequestContextMiddleware",
    "b64decode",
    "error_response",
    "parse_json",
    "read_body",
]

access_logger = logging.getLogger("cvdeploy.access")
logger = logging.getLogger("cvdeploy.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class JSONResponse(Response):
    """A JSON response rendered by orjson (numpy arrays and scalars included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(error: CVDeployError, request_id: str | None = None) -> JSONResponse:
    """The one error body: ``{"error": message, "error_code": ..., "request_id": ...}``.

    ``error_code`` follows Databricks' names so ``databricks-sdk`` maps it to its exceptions.
    """
    body: dict[str, Any] = {"error": error.public_message(), "error_code": error.error_code}
    if request_id:
        body["request_id"] = request_id
    headers: dict[str, str] = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse(body, status_code=error.status_code, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body, refusing (413) as soon as it passes ``limit`` bytes.

    The declared Content-Length is checked first so an honest oversized upload is refused
    before a byte of it is read. Compressed bodies (gzip/deflate, as ``tritonclient`` can send)
    are inflated with the same limit applied to the inflated size (no zip bombs).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        return _inflate(body, encoding, limit)
    raise UnsupportedMediaTypeError(
        f"content-encoding {encoding!r} is not supported; use gzip, deflate or none"
    )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 31 if encoding == "gzip" else 15
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"the inflated request body exceeds the {limit}-byte limit")
    return data


def parse_json(body: bytes) -> Any:
    if not body:
        raise InputError("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None


def b64decode(text: object, what: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding or a data: URL prefix."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, structured access log and request metrics.

    Written against raw ASGI rather than ``BaseHTTPMiddleware`` because that wrapper costs a
    task and a memory stream per request, which shows on a sub-millisecond model.
    """

    def __init__(
        self,
        app: ASGIApp,
        observe: Callable[[str, int, float], None] | None = None,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.observe = observe
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = 499  # nginx's code for "client closed request"
            logger.info("client disconnected before the request was read (id %s)", request_id)
        except Exception as exc:
            # The last line of defence: one log record with the traceback, and a 500 body
            # with the request id but no details, instead of Starlette re-raising to uvicorn.
            logger.error("unhandled error (request %s)", request_id, exc_info=exc)
            if not response_started:
                error = CVDeployError(
                    f"internal server error; quote request id {request_id} when reporting it"
                )
                await error_response(error, request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            if self.observe is not None:
                self.observe(route, status, elapsed)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            # Accept a caller's id only if it is short and printable: it ends up in logs.
            if 0 < len(text) <= 128 and text.isprintable():
                return text
    return None


def _route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics have bounded label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
