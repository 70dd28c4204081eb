"""The public API is curated: this list changes only on purpose."""

from __future__ import annotations

import subprocess
import sys

import cvdeploy

EXPECTED = {
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
    "RateLimitedError",
    "PredictParams",
    "RequestTimeoutError",
    "UnauthenticatedError",
    "UnsupportedMediaTypeError",
    "__version__",
    "load_model",
}


def test_all_is_the_curated_list():
    assert set(cvdeploy.__all__) == EXPECTED


def test_every_public_name_resolves():
    for name in cvdeploy.__all__:
        assert getattr(cvdeploy, name) is not None


def test_import_has_no_side_effects_and_stays_light():
    code = (
        "import logging, sys, threading; import cvdeploy; "
        "assert not logging.getLogger().handlers; "
        "assert threading.active_count() == 1; "
        "heavy = {'onnxruntime', 'fastapi', 'uvicorn', 'mlflow'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_error_maps_to_an_http_status():
    for name in cvdeploy.__all__:
        obj = getattr(cvdeploy, name)
        if isinstance(obj, type) and issubclass(obj, cvdeploy.CVDeployError):
            assert 400 <= obj.status_code < 600
