"""HTTP plumbing shared by every protocol: bounded body reads, JSON, errors, request ids."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import itertools
import logging
import sys
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
    RequestTimeoutError,
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

#: How long a request may run after its body is read before the middleware starts watching for
#: the client going away; fast requests never pay for the watcher task.
_DISCONNECT_WATCH_AFTER = 0.01

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
    """The one error body: ``{"error": message, "error_code": ..., "message": ..., "request_id"}``.

    ``error_code`` and ``message`` follow Databricks' error JSON so ``databricks-sdk`` maps the
    response to its exceptions with the text; ``error`` is what MLflow's scoring server sends.
    """
    text = error.public_message()
    body: dict[str, Any] = {"error": text, "error_code": error.error_code, "message": text}
    if request_id:
        body["request_id"] = request_id
    headers: dict[str, str] = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse(body, status_code=error.status_code, headers=headers)


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """Read the whole body, refusing (413) as soon as it passes ``limit`` bytes.

    The declared Content-Length is checked first so an honest oversized upload is refused
    before a byte of it is read. A body that has not fully arrived within ``timeout`` seconds
    is a 408, so a stalled client cannot hold a request open forever. Compressed bodies
    (gzip/deflate, as ``tritonclient`` can send) are inflated with the same limit applied to
    the inflated size (no zip bombs).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
        )
    try:
        if sys.version_info >= (3, 11):
            # A timer handle rather than wait_for's extra task: this is on every request.
            async with asyncio.timeout(timeout):
                body = await _read_stream(request, limit)
        else:  # pragma: no cover - Python 3.10
            body = await asyncio.wait_for(_read_stream(request, limit), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout:g} s; send it faster or in one go"
        ) from None
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity") or not body:
        return body
    if encoding in ("gzip", "deflate"):
        if len(body) < _INFLATE_INLINE_BYTES:
            return _inflate(body, encoding, limit)
        # Inflating tens of megabytes takes a while: keep the event loop serving others.
        return await asyncio.to_thread(_inflate, body, encoding, limit)
    raise UnsupportedMediaTypeError(
        f"content-encoding {encoding!r} is not supported; use gzip, deflate or none"
    )


async def _read_stream(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


#: Compressed bodies below this size are inflated inline (cheaper than a thread hop).
_INFLATE_INLINE_BYTES = 256 * 1024


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 31 if encoding == "gzip" else 15
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"the inflated request body exceeds the {limit}-byte limit")
    # Without these checks a cut-off upload would be served from its first part, and anything
    # after the stream's end (a second gzip member, garbage) would be dropped without a word.
    if not inflater.eof:
        raise InputError(f"the {encoding} body is truncated: its compressed stream never ends")
    if inflater.unused_data:
        raise InputError(
            f"the body has {len(inflater.unused_data)} bytes after the end of its {encoding} "
            "stream; send exactly one compressed stream"
        )
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


#: The id of the request being handled, for code below the HTTP layer (payload records).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cvdeploy_request_id", default=None
)


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
        request_id = _incoming_request_id(scope) or _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        # The engine runs in this request's task: payload records pick the id up from here.
        current_request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = watch.responded = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        watch = _DisconnectWatch(receive)

        try:
            try:
                await self.app(scope, watch.receive, send_with_id)
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
        except asyncio.CancelledError:
            if not watch.consume_cancel():
                raise
            status = 499
            logger.info("client disconnected before its response was sent (id %s)", request_id)
        finally:
            watch.close()
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


class _DisconnectWatch:
    """Cancels a request when its client goes away after sending the whole body.

    Once the body is read nothing listens to the connection until the response is sent, so a
    client that disconnects while its request waits in the batcher's queue would still have
    its images run. After the body is complete (and only for requests still running
    ``_DISCONNECT_WATCH_AFTER`` later, so fast requests pay no task), a watcher waits for
    ``http.disconnect`` and cancels the request's task; the batcher then skips its queued work.
    """

    __slots__ = ("_handle", "_receive", "_task", "_watcher", "gone", "responded")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False
        self.responded = False

    async def receive(self) -> Message:
        message = await self._receive()
        if (
            self._handle is None
            and self._task is not None
            and message["type"] == "http.request"
            and not message.get("more_body")
        ):
            self._handle = self._task.get_loop().call_later(_DISCONNECT_WATCH_AFTER, self._start)
        return message

    def _start(self) -> None:
        if self._task is not None and not self.responded:
            self._watcher = self._task.get_loop().create_task(self._watch())

    async def _watch(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded and self._task:
            self.gone = True
            self._task.cancel()

    def consume_cancel(self) -> bool:
        """True (and the cancellation undone) when it was this watcher's doing."""
        if not self.gone or self._task is None:
            return False
        if sys.version_info >= (3, 11):
            self._task.uncancel()
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


# A random per-process prefix and a counter: unique like a uuid4 in practice, without a
# getrandom() syscall per request.
_ID_PREFIX = uuid.uuid4().hex[:8]
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            # Accept a caller's id only if it is short and printable: it ends up in logs.
            if 0 < len(text) <= 128 and text.isascii() and text.isprintable():
                return text
    return None


def _route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics have bounded label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
