"""Scoring as Databricks Model Serving does it: MLflow's own scoring server on the pyfunc model.

A served entity ``entity_name`` / ``entity_version`` is the MLflow model
``models:/{entity_name}/{entity_version}`` of the registry; it is resolved with an
``MlflowClient`` of that registry (never the process-wide URIs), downloaded, loaded with
``mlflow.pyfunc.load_model`` and scored through ``mlflow.pyfunc.scoring_server.invocations``,
the code path behind ``/invocations`` of an MLflow model server (schema enforcement and the
``dataframe_split`` / ``dataframe_records`` / ``instances`` / ``inputs`` parsing included).
Nothing cvdeploy-specific happens here.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import ApiError

__all__ = ["ModelStore"]


class ModelStore:
    """Loaded models of one registry, cached by ``(entity_name, entity_version)``."""

    def __init__(self, registry_uri: str | None) -> None:
        self.registry_uri = registry_uri
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-databricks-models-")
        if registry_uri is not None:
            _import_mlflow()

    def close(self) -> None:
        self._tmp.cleanup()

    def load(self, entity_name: str, entity_version: str) -> Any:
        """The ``PyFuncModel``; raises what MLflow raises when it cannot be loaded."""
        key = (entity_name, entity_version)
        with self._lock:
            if key in self._models:
                return self._models[key]
            if self.registry_uri is None:
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    "This fake workspace has no model registry, so it cannot score: start it "
                    "with FakeWorkspace(registry_uri=<MLflow tracking URI>).",
                    {"Retry-After": "1"},
                )
            import mlflow.artifacts
            import mlflow.pyfunc
            from mlflow.tracking import MlflowClient

            # models:/NAME/VERSION resolved with an explicit client: MLflow's models:/ artifact
            # repository reads the process-wide registry URI, which a test must not set.
            client = MlflowClient(tracking_uri=self.registry_uri, registry_uri=self.registry_uri)
            source = client.get_model_version_download_uri(entity_name, entity_version)
            target = Path(self._tmp.name) / f"{len(self._models)}"
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, tracking_uri=self.registry_uri, dst_path=str(target)
            )
            model = mlflow.pyfunc.load_model(local)
            self._models[key] = model
            return model

    def build(self, entities: list[tuple[str, str]]) -> None:
        """The deployment's build step: every model must load (no registry: nothing to check)."""
        if self.registry_uri is None:
            return
        for name, version in entities:
            self.load(name, version)

    def score(self, entity_name: str, entity_version: str, body: bytes) -> dict[str, Any]:
        """``{"predictions": ...}`` for a JSON request body; ApiError for a refused one."""
        model = self.load(entity_name, entity_version)
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server as _scoring

        scoring_server: Any = _scoring  # MLflow's scoring module is untyped
        try:
            answer = scoring_server.invocations(
                body, "application/json", model, model.metadata.get_input_schema()
            )
        except MlflowException as exc:
            failure: Any = exc
            raise ApiError(
                failure.get_http_status_code(), str(exc.error_code), exc.message
            ) from exc
        if answer.status != 200:
            raise ApiError.bad_request(str(answer.response))
        result: dict[str, Any] = json.loads(answer.response)
        return result


def _import_mlflow() -> None:
    """Import MLflow's pyfunc modules once, in the caller's thread.

    Importing ``mlflow.pyfunc`` emits a UserWarning about its own type hints; done here, under
    ``catch_warnings``, it neither becomes an error under ``-W error`` nor races the server
    thread's warning filters.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import mlflow.artifacts
        import mlflow.pyfunc
        import mlflow.pyfunc.scoring_server  # noqa: F401
