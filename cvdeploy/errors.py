"""The one exception tree of cvdeploy.

Every error a user can meet derives from :class:`CVDeployError` and carries the HTTP status it
maps to, so the servers need exactly one error handler::

    CVDeployError (500)
    ├── ConfigError (400)               bad config file, key, value or argument combination
    ├── ModelLoadError (500)            model file missing, not ONNX, corrupt, unsupported layout
    ├── NotAvailableError (501)         a feature that exists in the API but not yet in this build
    ├── InputError (400)                the request is wrong; the client must change it
    │   ├── InvalidImageError (400)     empty, truncated or non-image bytes
    │   ├── InvalidParameterError (400) conf/iou/max_det/top_k out of bounds
    │   ├── PayloadTooLargeError (413)  too many bytes, pixels or images
    │   ├── RequestTimeoutError (408)   the body did not arrive in time (slow or stalled client)
    │   ├── UnsupportedMediaTypeError (415)
    │   └── ModelNotFoundError (404)
    ├── UnauthenticatedError (401)      missing, unknown or revoked token
    ├── PermissionDeniedError (403)     a token without the scope the action needs
    ├── ConflictError (409)             busy resource, e.g. an update already in progress
    ├── OverloadedError (503)           queue full; carries ``retry_after`` seconds
    │   └── RateLimitedError (429)      an endpoint's rate limit is used up
    ├── DeadlineExceededError (504)     the request's deadline passed before it ran
    └── InferenceError (500)            the model failed while running; details go to the log

Messages are written for the person who has to fix the problem: they name the bad value and say
what to do instead. They never contain a traceback or a server-side file path when they are
sent over HTTP (the handler uses :meth:`CVDeployError.public_message`).
"""

from __future__ import annotations

__all__ = [
    "CVDeployError",
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "InferenceError",
    "InputError",
    "InvalidImageError",
    "InvalidParameterError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotAvailableError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "UnauthenticatedError",
    "UnsupportedMediaTypeError",
]


class CVDeployError(Exception):
    """Root of every cvdeploy error; ``status_code`` is the HTTP status it maps to."""

    status_code: int = 500
    #: A stable machine-readable code, in the style of Databricks' ``error_code``.
    error_code: str = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def public_message(self) -> str:
        """The text that may leave the process in an HTTP response."""
        return self.message


class ConfigError(CVDeployError):
    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"


class ModelLoadError(CVDeployError):
    status_code = 500
    error_code = "MODEL_LOAD_FAILED"


class NotAvailableError(CVDeployError):
    status_code = 501
    error_code = "NOT_IMPLEMENTED"


class InputError(CVDeployError):
    status_code = 400
    error_code = "BAD_REQUEST"


class InvalidImageError(InputError):
    error_code = "INVALID_IMAGE"


class InvalidParameterError(InputError):
    error_code = "INVALID_PARAMETER_VALUE"


class PayloadTooLargeError(InputError):
    status_code = 413
    error_code = "PAYLOAD_TOO_LARGE"


class RequestTimeoutError(InputError):
    status_code = 408
    error_code = "REQUEST_TIMEOUT"


class UnsupportedMediaTypeError(InputError):
    status_code = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class ModelNotFoundError(InputError):
    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class UnauthenticatedError(CVDeployError):
    status_code = 401
    error_code = "UNAUTHENTICATED"


class PermissionDeniedError(CVDeployError):
    status_code = 403
    error_code = "PERMISSION_DENIED"


class ConflictError(CVDeployError):
    """The resource is busy, e.g. a config update is already in progress (HTTP 409)."""

    status_code = 409
    error_code = "RESOURCE_CONFLICT"


class OverloadedError(CVDeployError):
    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(OverloadedError):
    """Too many requests for the endpoint's rate limit (HTTP 429, Databricks' code)."""

    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class DeadlineExceededError(CVDeployError):
    status_code = 504
    error_code = "DEADLINE_EXCEEDED"


class InferenceError(CVDeployError):
    """The model raised while running.

    ``message`` keeps the (path-free) summary of the runtime's error for logs and in-process
    callers; over HTTP the client gets only a generic sentence and the request id, since node
    names and tensor shapes describe the server's internals, not the client's mistake.
    """

    status_code = 500
    error_code = "INTERNAL_ERROR"

    def public_message(self) -> str:
        return "the model failed while running this request; the server log has the details"
