"""``databricks-sdk`` exceptions as cvdeploy's, with Databricks' own message kept.

==================================================  ==========================================
``databricks.sdk.errors`` (or transport)            cvdeploy
==================================================  ==========================================
``NotFound``                                        ``EndpointNotFoundError`` (a missing model
                                                    on create: ``ModelNotFoundError``)
``ResourceAlreadyExists`` / ``AlreadyExists``       ``EndpointAlreadyExistsError``
``ResourceConflict`` / ``Aborted``                  ``ConflictError``
``PermissionDenied``                                ``PermissionDeniedError``
``Unauthenticated``; no credentials at all          ``UnauthenticatedError``
``BadRequest`` / ``InvalidParameterValue``          ``ConfigError``
``ResourceExhausted``, ``QUOTA_EXCEEDED``           ``RateLimitedError`` (says: a quota)
``TooManyRequests`` / ``RequestLimitExceeded``      ``RateLimitedError`` (says: a rate limit)
``TemporarilyUnavailable``                          ``OverloadedError``
``DeadlineExceeded``, an HTTP timeout               ``DeadlineExceededError``
``NotImplemented``                                  ``NotAvailableError``
connection refused / DNS / TLS                      ``NotAvailableError`` ("cannot reach the
                                                    Databricks workspace at URL")
anything else from Databricks                       ``CVDeployError``
==================================================  ==========================================

The SDK retries connection failures, 429 and 503 itself until its ``retry_timeout_seconds``
runs out and then raises ``TimeoutError`` from the last failure; that failure is what is
mapped, with how long it was retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cvdeploy.errors import (
    ConfigError,
    ConflictError,
    CVDeployError,
    DeadlineExceededError,
    ModelNotFoundError,
    NotAvailableError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
)
from cvdeploy.platforms.base import EndpointAlreadyExistsError, EndpointNotFoundError

__all__ = ["databricks_errors", "from_sdk_error"]

_QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"})


def from_sdk_error(
    exc: BaseException, url: str, action: str, *, creating: bool = False
) -> CVDeployError | None:
    """The cvdeploy error ``exc`` (raised by ``databricks-sdk`` while doing ``action`` on the
    workspace at ``url``) stands for; None for an exception that is not the SDK's or the
    network's (a bug, to be raised as it is).

    Args:
        exc: What the SDK raised.
        url: The workspace's URL, for messages.
        action: What was being done, e.g. ``"get endpoint 'x'"``.
        creating: Whether the call created an endpoint (a 404 then means a missing model).
    """
    import requests
    from databricks.sdk.errors.base import DatabricksError

    if isinstance(exc, TimeoutError) and not isinstance(exc, DatabricksError):
        cause = exc.__cause__
        retried = f"; gave up after retrying ({exc})"
        if cause is None:
            return DeadlineExceededError(f"{action} on {url} timed out ({exc})")
        mapped = from_sdk_error(cause, url, action, creating=creating)
        if mapped is None:
            return None
        mapped.message = mapped.message + retried
        mapped.args = (mapped.message,)
        return mapped
    if isinstance(exc, requests.exceptions.SSLError):
        return NotAvailableError(
            f"cannot reach the Databricks workspace at {url}: its TLS certificate could not be "
            f"verified ({_first_line(exc)}); check the URL, or set REQUESTS_CA_BUNDLE"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return DeadlineExceededError(
            f"{action} on the Databricks workspace at {url} got no answer in time; retry, or "
            "raise the timeout"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return NotAvailableError(
            f"cannot reach the Databricks workspace at {url} ({_network_reason(exc)}); check "
            "workspace_url and the network"
        )
    if isinstance(exc, ValueError) and "credentials" in str(exc):
        # Config() without a token and no other way to authenticate (env, profile, OAuth).
        return UnauthenticatedError(
            f"no credentials for the Databricks workspace at {url}: {_first_line(exc)}; pass "
            "token= (a personal access token) or set DATABRICKS_TOKEN"
        )
    if not isinstance(exc, DatabricksError):
        return None
    return _from_databricks(exc, url, action, creating)


def _from_databricks(exc: BaseException, url: str, action: str, creating: bool) -> CVDeployError:
    from databricks.sdk import errors

    said = str(exc) or type(exc).__name__
    # The SDK appends its config dump ("Config: host=..., auth_type=pat, ...") to auth errors.
    said = said.split(" Config: host=", 1)[0].strip()
    code = str(getattr(exc, "error_code", "") or "")
    where = f"{action} on the Databricks workspace at {url}"
    retry_after = float(getattr(exc, "retry_after_secs", None) or 1.0)
    if isinstance(exc, errors.NotFound):
        cls = ModelNotFoundError if creating else EndpointNotFoundError
        return cls(f"{where}: not found: {said}")
    if isinstance(exc, (errors.ResourceAlreadyExists, errors.AlreadyExists)):
        return EndpointAlreadyExistsError(f"{where}: already exists: {said}")
    if isinstance(exc, errors.ResourceConflict):
        return ConflictError(
            f"{where}: conflict: {said}; wait for the endpoint's current update to finish, "
            "then retry"
        )
    if isinstance(exc, errors.Unauthenticated):
        return UnauthenticatedError(
            f"{where}: the token was refused: {said}; check token= (a personal access token "
            "of this workspace, not expired)"
        )
    if isinstance(exc, errors.PermissionDenied) and "token" in said.lower():
        # Databricks answers an unknown or expired token with 403 "Invalid access token".
        return PermissionDeniedError(
            f"{where}: the token was refused: {said}; check token= (a personal access token "
            "of this workspace, not expired)"
        )
    if isinstance(exc, errors.PermissionDenied):
        return PermissionDeniedError(
            f"{where}: permission denied: {said}; the token's user needs CAN MANAGE on the "
            "endpoint (CAN QUERY to query it) or the right to create endpoints"
        )
    if isinstance(exc, errors.ResourceExhausted) or code in _QUOTA_CODES:
        return RateLimitedError(
            f"{where}: a Databricks quota is used up: {said}; free capacity (delete unused "
            "endpoints) or ask the workspace admin to raise the quota",
            retry_after=retry_after,
        )
    if isinstance(exc, errors.TooManyRequests):
        return RateLimitedError(
            f"{where}: over Databricks' rate limit: {said}; slow down and retry",
            retry_after=retry_after,
        )
    if isinstance(exc, errors.BadRequest):
        return ConfigError(f"{where}: Databricks refused the request: {said}")
    if isinstance(exc, errors.TemporarilyUnavailable):
        return OverloadedError(f"{where}: temporarily unavailable: {said}", retry_after)
    if isinstance(exc, errors.DeadlineExceeded):
        return DeadlineExceededError(f"{where}: deadline exceeded: {said}")
    if isinstance(exc, errors.NotImplemented):
        return NotAvailableError(f"{where}: not available on this workspace: {said}")
    return CVDeployError(f"{where} failed: {said}")


@contextmanager
def databricks_errors(url: str, action: str, *, creating: bool = False) -> Iterator[None]:
    """Raise what the SDK raises inside as cvdeploy's error (see :func:`from_sdk_error`)."""
    try:
        yield
    except CVDeployError:
        raise
    except Exception as exc:
        mapped = from_sdk_error(exc, url, action, creating=creating)
        if mapped is None:
            raise
        raise mapped from None


# What requests' long connection errors mean, in the words a user searches for.
_NETWORK_REASONS = (
    ("Connection refused", "connection refused: nothing listens there"),
    ("Name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("Temporary failure in name resolution", "host name not found"),
    ("Remote end closed connection", "the server closed the connection"),
    ("Connection reset", "the connection was reset"),
    ("Connection aborted", "the connection was aborted"),
)


def _network_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in _NETWORK_REASONS:
        if needle in text:
            return reason
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
