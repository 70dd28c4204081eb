"""Databricks' error bodies: ``{"error_code": ..., "message": ...}`` with the matching status.

The codes are the ones ``databricks.sdk.errors`` maps (``platform.ERROR_CODE_MAPPING`` first,
then ``STATUS_CODE_MAPPING`` by status), so the SDK raises the same exception class it would
against a workspace.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """An error the fake answers with; ``headers`` carries ``Retry-After`` for 429/503."""

    def __init__(
        self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = dict(headers or {})

    @classmethod
    def invalid(cls, message: str) -> ApiError:
        return cls(400, "INVALID_PARAMETER_VALUE", message)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BAD_REQUEST", message)

    @classmethod
    def no_endpoint(cls, name: str) -> ApiError:
        # The wording of a real workspace's answer (seen in public bug reports).
        return cls(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")

    @classmethod
    def not_found(cls, message: str) -> ApiError:
        return cls(404, "RESOURCE_DOES_NOT_EXIST", message)


def error_body(error_code: str, message: str) -> dict[str, Any]:
    return {"error_code": error_code, "message": message}
