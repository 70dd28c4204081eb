"""databricks-sdk's exceptions become cvdeploy's, keeping Databricks' message."""

from __future__ import annotations

import pytest

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
from cvdeploy.platforms.databricks.errors import databricks_errors, from_sdk_error

errors = pytest.importorskip("databricks.sdk.errors")
requests = pytest.importorskip("requests")

URL = "https://adb-1.2.azuredatabricks.net"


def _map(exc: BaseException, creating: bool = False) -> CVDeployError:
    mapped = from_sdk_error(exc, URL, "get endpoint 'digits'", creating=creating)
    assert mapped is not None
    return mapped


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (errors.NotFound("Endpoint 'digits' does not exist"), EndpointNotFoundError),
        (errors.ResourceDoesNotExist("Endpoint 'digits' does not exist"), EndpointNotFoundError),
        (
            errors.ResourceAlreadyExists("Endpoint 'digits' already exists"),
            EndpointAlreadyExistsError,
        ),
        (errors.AlreadyExists("Endpoint 'digits' already exists"), EndpointAlreadyExistsError),
        (errors.ResourceConflict("An update is already in progress"), ConflictError),
        (errors.PermissionDenied("User lacks CAN_MANAGE"), PermissionDeniedError),
        (errors.Unauthenticated("Invalid access token"), UnauthenticatedError),
        (errors.InvalidParameterValue("workload_size 'Huge' is invalid"), ConfigError),
        (errors.BadRequest("Malformed request"), ConfigError),
        (errors.ResourceExhausted("Endpoint quota reached"), RateLimitedError),
        (errors.TooManyRequests("Too many requests"), RateLimitedError),
        (errors.TemporarilyUnavailable("Try again"), OverloadedError),
        (errors.DeadlineExceeded("Took too long"), DeadlineExceededError),
        (errors.NotImplemented("Not on this cloud"), NotAvailableError),
        (errors.InternalError("Boom"), CVDeployError),
    ],
)
def test_each_sdk_error_maps_to_its_class_keeping_the_message(
    raised: Exception, expected: type[CVDeployError]
) -> None:
    mapped = _map(raised)
    assert type(mapped) is expected
    assert str(raised) in mapped.message
    assert URL in mapped.message


def test_a_missing_model_on_create_is_a_model_error() -> None:
    mapped = _map(errors.NotFound("Model version 'm' 9 not found"), creating=True)
    assert type(mapped) is ModelNotFoundError


def test_quota_says_it_is_a_quota_and_rate_limit_says_rate_limit() -> None:
    quota = _map(errors.ResourceExhausted("Max endpoints per workspace reached"))
    assert "quota" in quota.message
    coded = _map(errors.DatabricksError("Too many endpoints", error_code="QUOTA_EXCEEDED"))
    assert isinstance(coded, RateLimitedError)
    assert "quota" in coded.message
    limited = _map(errors.TooManyRequests("slow down", retry_after_secs=7))
    assert isinstance(limited, RateLimitedError)
    assert "rate limit" in limited.message
    assert limited.retry_after == 7


def test_connection_refused_says_the_workspace_cannot_be_reached() -> None:
    mapped = _map(requests.ConnectionError("[Errno 111] Connection refused"))
    assert isinstance(mapped, NotAvailableError)
    assert f"cannot reach the Databricks workspace at {URL}" in mapped.message


def test_sdk_timeout_after_retries_maps_its_cause() -> None:
    try:
        try:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        except requests.ConnectionError as cause:
            raise TimeoutError("Timed out after 0:00:03") from cause
    except TimeoutError as exc:
        mapped = _map(exc)
    assert isinstance(mapped, NotAvailableError)
    assert "cannot reach the Databricks workspace" in mapped.message
    assert "gave up after retrying (Timed out after 0:00:03)" in mapped.message


def test_sdk_timeout_after_throttling_is_a_rate_limit() -> None:
    try:
        try:
            raise errors.ResourceExhausted("QPS quota exceeded")
        except errors.ResourceExhausted as cause:
            raise TimeoutError("Timed out after 0:00:30") from cause
    except TimeoutError as exc:
        mapped = _map(exc)
    assert isinstance(mapped, RateLimitedError)
    assert "QPS quota exceeded" in mapped.message


def test_http_timeout_is_a_deadline() -> None:
    assert isinstance(_map(requests.ReadTimeout("read timed out")), DeadlineExceededError)


def test_missing_credentials_are_unauthenticated() -> None:
    mapped = _map(ValueError("default auth: cannot configure default credentials"))
    assert isinstance(mapped, UnauthenticatedError)
    assert "DATABRICKS_TOKEN" in mapped.message


def test_other_exceptions_are_not_mapped_and_pass_through() -> None:
    assert from_sdk_error(KeyError("bug"), URL, "x") is None
    with pytest.raises(KeyError), databricks_errors(URL, "x"):
        raise KeyError("bug")
    with pytest.raises(ConfigError, match="already cvdeploy's"), databricks_errors(URL, "x"):
        raise ConfigError("already cvdeploy's")


def test_the_context_manager_raises_the_mapped_error() -> None:
    with (
        pytest.raises(PermissionDeniedError, match=r"delete endpoint 'digits'.*CAN MANAGE"),
        databricks_errors(URL, "delete endpoint 'digits'"),
    ):
        raise errors.PermissionDenied("no")
