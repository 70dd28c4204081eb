"""Small pieces every protocol router shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from cvdeploy.errors import ModelNotFoundError

if TYPE_CHECKING:
    from cvdeploy.serving.engine import InferenceEngine

__all__ = ["RESERVED_QUERY_KEYS", "check_model", "query_params"]

#: Query keys that are not prediction parameters (the optional query token).
RESERVED_QUERY_KEYS = frozenset({"token"})


def check_model(engine: InferenceEngine, name: str, version: str | None = None) -> None:
    """404 with the names that do exist when a request names another model or version."""
    if name != engine.name:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; this server serves {engine.name!r}"
        )
    if version is not None and version != engine.version:
        raise ModelNotFoundError(
            f"version {version!r} of model {name!r} is not served here; "
            f"this server serves version {engine.version!r}"
        )


def query_params(request: Request) -> dict[str, object]:
    """Prediction parameters from the query string (validated later by the runtime)."""
    return {k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY_KEYS}
