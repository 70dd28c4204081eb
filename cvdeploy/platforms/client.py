"""A synchronous client of cvdeploy's control plane (Databricks' serving-endpoints REST API).

The paths and bodies are Databricks' (``/api/2.0/serving-endpoints``), so this client also
documents what the platform speaks; ``rollback``, ``revisions``, ``stats`` and ``logs`` of a
served model are cvdeploy extensions under the same prefix.

An error answer ``{"error_code": ..., "message": ...}`` comes back as the class of
:mod:`cvdeploy.errors` (or its leaves elsewhere in cvdeploy) with that ``error_code``, carrying
the server's message, so callers catch the same classes in-process and over HTTP.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from cvdeploy._version import __version__
from cvdeploy.errors import (
    ConfigError,
    CVDeployError,
    DeadlineExceededError,
    ModelNotFoundError,
    NotAvailableError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
)
from cvdeploy.platforms.base import (
    ConflictError,
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    Platform,
    poll_until_ready,
)

__all__ = ["PlatformClient", "error_from_response"]

_API = "/api/2.0/serving-endpoints"
_ENDPOINT_PATHS = (f"{_API}/", "/serving-endpoints/")

_M = TypeVar("_M", bound=BaseModel)

# The class for an answer whose error_code names no class, or several.
_BY_STATUS: dict[int, type[CVDeployError]] = {
    400: ConfigError,
    401: UnauthenticatedError,
    403: PermissionDeniedError,
    404: ModelNotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitedError,
    501: NotAvailableError,
    503: OverloadedError,
    504: DeadlineExceededError,
}


class PlatformClient(Platform):
    """Manage and query endpoints on a cvdeploy platform.

    Args:
        url: The platform's base URL, e.g. ``http://127.0.0.1:8080``.
        token: A cvdeploy token, sent as ``Authorization: Bearer``.
        timeout: Seconds any one HTTP request may take.
        verify: TLS verification: True, False or a CA bundle path.
        transport: An httpx transport instead of the network (tests use ``MockTransport``).
    """

    kind = "cvdeploy"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": f"cvdeploy/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(verify, str):
            # httpx deprecates a CA path for ``verify``; a context built from it is the same.
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def __enter__(self) -> PlatformClient:
        return self

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # Endpoints (Databricks API)

    def create_endpoint(self, spec: EndpointSpec | Mapping[str, Any]) -> EndpointInfo:
        """Create an endpoint; it starts with ``config_update`` IN_PROGRESS."""
        return self._endpoint(self._call("POST", _API, json=_body(spec)))

    def get_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint's config, pending config and state."""
        return self._endpoint(self._call("GET", _path(name)))

    def list_endpoints(self) -> list[EndpointInfo]:
        """Every endpoint."""
        data = self._call("GET", _API)
        # Databricks leaves the key out when there are no endpoints.
        return [self._endpoint(item) for item in _list(data, "endpoints")]

    def update_config(
        self, name: str, config: EndpointCoreConfig | Mapping[str, Any]
    ) -> EndpointInfo:
        """Start a zero-downtime switch to ``config``."""
        return self._endpoint(self._call("PUT", _path(name, "config"), json=_body(config)))

    def delete_endpoint(self, name: str) -> None:
        """Stop serving and forget the endpoint."""
        self._request("DELETE", _path(name))

    # cvdeploy extensions

    def rollback(self, name: str, to_revision: int | None = None) -> EndpointInfo:
        """Switch back to an earlier revision (default: the one before the current)."""
        body = {} if to_revision is None else {"to_revision": to_revision}
        return self._endpoint(self._call("POST", _path(name, "rollback"), json=body))

    def revisions(self, name: str) -> list[dict[str, Any]]:
        """The endpoint's config revisions, as the platform lists them."""
        return [
            dict(item) for item in _list(self._call("GET", _path(name, "revisions")), "revisions")
        ]

    def stats(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """The endpoint's live statistics over the last ``window_s`` seconds (at most 300)."""
        return self._call("GET", f"{_path(name, 'stats')}?window_s={window_s:g}")

    def metrics(self, name: str) -> str:
        """The endpoint's metrics in Prometheus text format."""
        return self._request("GET", _path(name, "metrics")).text

    def logs(self, name: str, served_model_name: str) -> str:
        """The recent log of a served model's replicas."""
        data = self._call("GET", _path(name, "served-models", served_model_name, "logs"))
        logs = data.get("logs", "")
        return logs if isinstance(logs, str) else str(logs)

    # Scoring

    def query(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Score an MLflow/Databricks body (``dataframe_split``, ``inputs``, ...)."""
        return self._call("POST", _invocations(name), json=dict(payload))

    def health(self) -> dict[str, Any]:
        """The platform's health; raises when it does not answer or answers with an error."""
        response = self._request("GET", "/health")
        try:
            data = response.json()
        except ValueError:
            # A plain-text health check (MLflow's "\n") still means the server is up.
            return {"status": response.text.strip() or "ok"}
        return data if isinstance(data, dict) else {"status": data}

    # Waiting

    def wait_not_updating(
        self,
        name: str,
        timeout: float = 300,
        poll_s: float = 0.25,
        on_poll: Callable[[EndpointInfo], None] | None = None,
    ) -> EndpointInfo:
        """Poll until the endpoint's config update is over and it is ready to serve.

        Args:
            name: The endpoint.
            timeout: Seconds to wait in all.
            poll_s: Seconds between polls.
            on_poll: Called with every state seen, e.g. to print progress.

        Raises:
            ModelLoadError: The update failed (the previous config, if any, keeps serving).
            DeadlineExceededError: Still updating or not ready after ``timeout`` seconds.
        """

        def fetch() -> tuple[EndpointInfo, dict[str, Any]]:
            data = self._call("GET", _path(name))
            return self._endpoint(data), data

        return poll_until_ready(
            name,
            fetch,
            timeout=timeout,
            poll_s=poll_s,
            on_poll=on_poll,
            failure=lambda data: _failure_message(name, data),
            hint="wait longer with a larger timeout, or see `cvdeploy endpoints logs` for why "
            "its replicas do not start",
        )

    # Plumbing

    def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        response = self._request(method, path, json=json)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise CVDeployError(
                f"{method} {path} on {self.url} answered {response.status_code} without a JSON "
                "object; is that URL a cvdeploy platform?"
            )
        return data

    def _request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if _certificate_problem(exc):
                raise CVDeployError(
                    f"the platform at {self.url} answered, but its TLS certificate could not be "
                    f"verified ({exc}); pass its CA file (--ca-file, CVDEPLOY_CA_FILE)"
                ) from None
            raise NotAvailableError(
                f"no cvdeploy platform answers at {self.url}; start one with `cvdeploy up`"
            ) from None
        except httpx.TimeoutException:
            raise DeadlineExceededError(
                f"{method} {path} on {self.url} got no answer within {self.timeout:g} s; "
                "retry, or raise the client's timeout"
            ) from None
        except httpx.TransportError as exc:
            raise CVDeployError(
                f"{method} {path} on {self.url} failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.is_success:
            return response
        raise error_from_response(response)

    def _endpoint(self, data: Any) -> EndpointInfo:
        return _model(EndpointInfo, data, self.url)


def _certificate_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def error_from_response(response: httpx.Response) -> CVDeployError:
    """The cvdeploy error an error answer stands for, carrying the server's message."""
    status = response.status_code
    path = response.request.url.path
    code, message = None, None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("error_code") if isinstance(data.get("error_code"), str) else None
        # "error" is what MLflow's scoring server (and older cvdeploy replicas) send instead.
        for key in ("message", "error"):
            if isinstance(data.get(key), str):
                message = data[key]
                break
    if message is None:
        text = response.text.strip()[:200]
        message = f"{response.request.method} {path} answered HTTP {status}" + (
            f": {text}" if text else ""
        )
    cls = _error_class(code, status, path.startswith(_ENDPOINT_PATHS))
    if issubclass(cls, OverloadedError):
        return cls(message, retry_after=_retry_after(response))
    return cls(message)


def _error_class(code: str | None, status: int, endpoint_path: bool) -> type[CVDeployError]:
    fallback = _BY_STATUS.get(status, CVDeployError)
    if code is None:
        return fallback
    if code == "RESOURCE_DOES_NOT_EXIST":
        return EndpointNotFoundError if endpoint_path else ModelNotFoundError
    if code == "RESOURCE_ALREADY_EXISTS":
        return EndpointAlreadyExistsError
    candidates = [cls for cls in _error_classes() if cls.error_code == code]
    if len(candidates) == 1:
        return candidates[0]
    # Several classes share the code (INVALID_PARAMETER_VALUE, INTERNAL_ERROR): the status
    # decides, preferring the class the server's own handler would have raised for it.
    if fallback in candidates:
        return fallback
    same_status = [cls for cls in candidates if cls.status_code == status]
    return same_status[0] if same_status else fallback


def _error_classes() -> Iterator[type[CVDeployError]]:
    # Walked on each error rather than cached, so leaves imported later (registry, tokens)
    # count; classes defined outside cvdeploy (tests, plugins) do not.
    stack = [CVDeployError]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("cvdeploy."):
            yield cls
        stack.extend(cls.__subclasses__())


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:  # an HTTP date; cvdeploy's servers send seconds
        return 1.0


def _failure_message(name: str, data: Mapping[str, Any]) -> str:
    state = data.get("state")
    detail = state.get("message") if isinstance(state, dict) else None
    reason = f": {detail}" if isinstance(detail, str) and detail else ""
    return (
        f"endpoint '{name}': the config update failed{reason}; the previous config, if any, "
        "keeps serving. See `cvdeploy endpoints logs` for the replicas' output"
    )


def _path(name: str, *parts: str) -> str:
    return "/".join([_API, *(quote(p, safe="") for p in (name, *parts))])


def _invocations(name: str) -> str:
    return f"/serving-endpoints/{quote(name, safe='')}/invocations"


def _body(value: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    # A plain mapping goes as given: the server validates it and names any problem.
    return dict(value)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise CVDeployError(f"the platform's '{key}' is not a list; is it a cvdeploy platform?")
    return items


def _model(model: type[_M], data: Any, url: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CVDeployError(
            f"the platform at {url} sent a {model.__name__} this client cannot read "
            f"({exc.error_count()} problems); upgrade the client to the platform's cvdeploy "
            "version"
        ) from None
