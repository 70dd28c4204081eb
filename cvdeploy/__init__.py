"""cvdeploy: a computer-vision model from a file to a fast, monitored HTTP endpoint.

The public API is the names in ``__all__``. Heavy modules (ONNX Runtime, FastAPI) are imported
on first use of a name that needs them, so ``import cvdeploy`` is quick and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvdeploy._version import __version__
from cvdeploy.errors import (
    ConfigError,
    ConflictError,
    CVDeployError,
    DeadlineExceededError,
    InferenceError,
    InputError,
    InvalidImageError,
    InvalidParameterError,
    ModelLoadError,
    ModelNotFoundError,
    NotAvailableError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeoutError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
)

if TYPE_CHECKING:
    from cvdeploy.config import Config
    from cvdeploy.monitoring.monitor import ModelMonitor
    from cvdeploy.pipeline import DeploymentPipeline
    from cvdeploy.runtime import (
        ClassificationResult,
        Detection,
        DetectionResult,
        Model,
        PredictParams,
        load_model,
    )
    from cvdeploy.serving.model_server import ModelServer

__all__ = [
    "CVDeployError",
    "ClassificationResult",
    "Config",
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "DeploymentPipeline",
    "Detection",
    "DetectionResult",
    "InferenceError",
    "InputError",
    "InvalidImageError",
    "InvalidParameterError",
    "Model",
    "ModelLoadError",
    "ModelMonitor",
    "ModelNotFoundError",
    "ModelServer",
    "NotAvailableError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PredictParams",
    "RateLimitedError",
    "RequestTimeoutError",
    "UnauthenticatedError",
    "UnsupportedMediaTypeError",
    "__version__",
    "load_model",
]

_LAZY = {
    "Config": "cvdeploy.config",
    "ModelServer": "cvdeploy.serving.model_server",
    "DeploymentPipeline": "cvdeploy.pipeline",
    "ModelMonitor": "cvdeploy.monitoring.monitor",
    "ClassificationResult": "cvdeploy.runtime",
    "Detection": "cvdeploy.runtime",
    "DetectionResult": "cvdeploy.runtime",
    "Model": "cvdeploy.runtime",
    "PredictParams": "cvdeploy.runtime",
    "load_model": "cvdeploy.runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cvdeploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
