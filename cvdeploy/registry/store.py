"""``Registry``: model versions, aliases and verified artifacts over the MLflow Model Registry.

MLflow is imported inside the methods (never at ``import cvdeploy``): it costs most of a second
and only the registry, the pipeline and the platform need it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from cvdeploy.errors import ConfigError
from cvdeploy.registry.card import ModelCard, read_card, reference_sample, write_model_folder
from cvdeploy.registry.errors import RegistryError, RegistryNotFoundError, UnsafePathError
from cvdeploy.registry.paths import (
    artifacts_dir,
    cvdeploy_home,
    default_registry_uri,
    safe_join,
)
from cvdeploy.registry.records import ModelVersion, RegisteredModel

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["ALIASES", "REGISTRY_URI_ENV", "Registry"]

#: The aliases cvdeploy's CLI and pipeline use; any alias MLflow accepts works.
ALIASES = ("champion", "candidate")
#: The environment variable that names the registry when no URI is given.
REGISTRY_URI_ENV = "CVDEPLOY_REGISTRY_URI"
EXPERIMENT = "cvdeploy-registry"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# MLflow's own rule for metric keys.
_METRIC = re.compile(r"^[A-Za-z0-9_\-. /]{1,250}$")


class Registry:
    """The model registry.

    Args:
        uri: any MLflow registry URI (``http(s)://`` tracking server, ``databricks``,
            ``databricks-uc`` for Unity Catalog, ``sqlite:///...``); default:
            ``$CVDEPLOY_REGISTRY_URI``, else the SQLite file ``$CVDEPLOY_HOME/mlflow.db`` with
            artifacts under ``$CVDEPLOY_HOME/artifacts``.
        home: the state folder (default ``$CVDEPLOY_HOME`` or ``~/.cvdeploy``); also holds the
            download cache for remote artifact stores.
    """

    def __init__(self, uri: str | None = None, *, home: str | Path | None = None) -> None:
        self.home = Path(home).expanduser().resolve() if home else cvdeploy_home().resolve()
        uri = uri or os.environ.get(REGISTRY_URI_ENV) or None
        self.uri = uri or default_registry_uri(self.home)
        self._local = uri is None
        self._client: MlflowClient | None = None

    def __repr__(self) -> str:
        return f"Registry(uri={self.uri!r})"

    @property
    def tracking_uri(self) -> str:
        """Where runs (registration, pipeline) are recorded: the registry's own store, except
        for Unity Catalog, whose runs live in the workspace's tracking server."""
        if self.uri == "databricks-uc" or self.uri.startswith("databricks-uc://"):
            return "databricks" + self.uri[len("databricks-uc") :]
        return self.uri

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self._local:
                self.home.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.uri)
        return self._client

    # -- writing -------------------------------------------------------------------------

    def register(
        self,
        path: str | Path,
        name: str,
        task: str | None = None,
        labels: Sequence[str] | str | Path | None = None,
        reference_images: str | Path | None = None,
        source_commit: str | None = None,
        description: str | None = None,
        eval_data: str | Path | None = None,
    ) -> ModelVersion:
        """Validate the ONNX at ``path`` and register it as a new version of ``name``.

        ``eval_data`` (a labelled image set) is recorded with the version as its evaluation
        data: the pipeline uses it when neither the call nor the config names one.

        Raises:
            ModelLoadError: the file is not a usable model.
            ConfigError: a bad name or argument.
        """
        from cvdeploy.runtime import load_model

        _check_name(name)
        eval_data_path = None if eval_data is None else Path(eval_data).expanduser().resolve()
        if eval_data_path is not None and not eval_data_path.exists():
            raise ConfigError(f"eval_data {str(eval_data)!r} does not exist")
        onnx_path = Path(path).expanduser()
        model = load_model(onnx_path, task, labels=labels, warmup=False, intra_op_threads=1)
        images = reference_sample(Path(reference_images)) if reference_images else []
        card = ModelCard(
            name=name,
            task=model.task,
            labels=list(model.labels),
            input_size=list(model.input_size),
            sha256=model.sha256,
            source_commit=source_commit,
            description=description,
        )
        client = self.client
        run = client.create_run(self.experiment_id(), run_name=f"register-{name}")
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory(prefix="cvdeploy-register-") as staging:
            folder = Path(staging) / "model"
            write_model_folder(folder, onnx_path, card, images)
            client.log_artifacts(run_id, str(folder), "model")
        client.log_param(run_id, "task", card.task)
        client.set_terminated(run_id)
        tags = {"task": card.task, "sha256": card.sha256, "format": "onnx"}
        tags["input_size"] = "x".join(str(v) for v in card.input_size)
        if source_commit:
            tags["source_commit"] = source_commit
        if images:
            tags["reference_images"] = str(len(images))
        if eval_data_path is not None:
            tags["eval_data"] = str(eval_data_path)
        self._ensure_model(name)
        entity = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/model",
            run_id=run_id,
            tags=tags,
            description=description,
        )
        return ModelVersion.from_mlflow(entity)

    def set_alias(self, name: str, alias: str, version: str | int) -> ModelVersion:
        """Point ``alias`` (e.g. ``champion``) at ``version``."""
        if not _NAME.match(alias) or alias.isdigit() or alias.lower() == "latest":
            raise ConfigError(f"alias {alias!r} is not valid; use e.g. 'champion' or 'candidate'")
        found = self.get_version(name, str(version))
        self.client.set_registered_model_alias(name, alias, found.version)
        return self.get_version(name, found.version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.get_version(name, alias)
        self.client.delete_registered_model_alias(name, alias)

    def set_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        found = self.get_version(name, str(version))
        self.client.set_model_version_tag(name, found.version, key, value)

    def log_metrics(
        self, name: str, version: str | int, metrics: Mapping[str, float]
    ) -> dict[str, float]:
        """Record evaluation figures (accuracy, mAP, latency...) on a version; returns them all.

        They live on the version's MLflow run, where MLflow's UI and ``mlflow.search_runs``
        show them beside the registration.

        Raises:
            ConfigError: a name or value is not a finite number.
        """
        found = self.get_version(name, str(version))
        if found.run_id is None:
            raise RegistryError(f"{name} version {found.version} has no run to record metrics on")
        for key, value in metrics.items():
            if not _METRIC.match(key):
                raise ConfigError(
                    f"metric name {key!r} is not valid; use letters, digits, '_', '-', '.', '/'"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"metric {key!r} must be a finite number, got {value!r}")
            self.client.log_metric(found.run_id, key, float(value))
        return self.metrics(name, found.version)

    def metrics(self, name: str, version: str | int = "latest") -> dict[str, float]:
        """The latest value of every metric recorded on a version."""
        found = self.get_version(name, str(version))
        if found.run_id is None:
            return {}
        return dict(sorted(self.client.get_run(found.run_id).data.metrics.items()))

    def delete_version(self, name: str, version: str | int) -> None:
        found = self.get_version(name, str(version))
        self.client.delete_model_version(name, found.version)

    def delete_model(self, name: str) -> None:
        self._registered(name)
        self.client.delete_registered_model(name)

    # -- reading -------------------------------------------------------------------------

    def list_models(self) -> list[RegisteredModel]:
        models = []
        for entity in self.client.search_registered_models(max_results=1000):
            latest = [int(v.version) for v in entity.latest_versions or []]
            models.append(
                RegisteredModel(
                    name=entity.name,
                    description=entity.description or "",
                    latest_version=str(max(latest)) if latest else None,
                    aliases={k: str(v) for k, v in (entity.aliases or {}).items()},
                    updated_ms=int(entity.last_updated_timestamp or 0),
                )
            )
        return sorted(models, key=lambda m: m.name)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        model = self._registered(name)
        found = self.client.search_model_versions(f"name = '{name}'", max_results=10000)
        versions = sorted(
            (ModelVersion.from_mlflow(v) for v in found), key=lambda v: int(v.version)
        )
        # MLflow's version search leaves aliases out; the registered model has them all.
        by_version: dict[str, list[str]] = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        return [
            dataclasses.replace(v, aliases=sorted(by_version[v.version]))
            if not v.aliases and v.version in by_version
            else v
            for v in versions
        ]

    def get_version(self, name: str, version_or_alias: str | int = "latest") -> ModelVersion:
        """A version by number, alias, or ``latest``.

        Raises:
            RegistryNotFoundError: no such model, version or alias.
        """
        from mlflow.exceptions import MlflowException

        key = str(version_or_alias)
        if key == "latest":
            versions = self.versions(name)
            if not versions:
                raise RegistryNotFoundError(f"model {name!r} has no versions")
            return versions[-1]
        self._registered(name)
        try:
            if key.isdigit():
                entity = self.client.get_model_version(name, key)
            else:
                entity = self.client.get_model_version_by_alias(name, key)
        except MlflowException:
            what = "version" if key.isdigit() else "alias"
            raise RegistryNotFoundError(
                f"model {name!r} has no {what} {key!r}; `cvdeploy models show {name}` lists them"
            ) from None
        return ModelVersion.from_mlflow(entity)

    def card(self, name: str, version_or_alias: str | int = "latest") -> ModelCard:
        return read_card(self._model_dir(self.get_version(name, version_or_alias)))

    def model_path(self, name: str, version_or_alias: str | int = "latest") -> Path:
        """The verified local ONNX file of a version.

        Raises:
            RegistryNotFoundError: no such model or version.
            RegistryError: the file's sha256 differs from the one recorded at registration.
            UnsafePathError: the card points outside the version's folder.
        """
        from cvdeploy.runtime.onnx import file_sha256

        found = self.get_version(name, version_or_alias)
        model_dir = self._model_dir(found)
        card = read_card(model_dir)
        onnx = safe_join(model_dir, card.onnx)
        expected = found.sha256 or card.sha256
        if not onnx.is_file():
            raise RegistryError(f"{name} version {found.version}: the model file is missing")
        actual = file_sha256(onnx)
        if actual != expected:
            raise RegistryError(
                f"{name} version {found.version}: the model file's sha256 is {actual[:12]}..., "
                f"registered as {str(expected)[:12]}...; the artifact was modified, re-register it"
            )
        return onnx

    def model_folder(self, name: str, version_or_alias: str | int = "latest") -> Path:
        """The version's whole MLflow model folder on local disk (what the pipeline scans)."""
        return self._model_dir(self.get_version(name, version_or_alias))

    def reference_images(self, name: str, version_or_alias: str | int = "latest") -> list[Path]:
        """The reference images stored with a version (the drift reference), confined to it.

        Raises:
            UnsafePathError: the card points outside the version's folder.
        """
        found = self.get_version(name, version_or_alias)
        model_dir = self._model_dir(found)
        card = read_card(model_dir)
        return [p for rel in card.reference_images if (p := safe_join(model_dir, rel)).is_file()]

    # -- helpers -------------------------------------------------------------------------

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        """The id of MLflow experiment ``name``, created on first use.

        In the default store its artifacts go under ``$CVDEPLOY_HOME/artifacts`` (MLflow would
        otherwise write them to ``./mlruns`` in whatever folder the process runs from).
        """
        client = self.client
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = artifacts_dir(self.home).as_uri() if self._local else None
        return str(client.create_experiment(name, artifact_location=location))

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)

    def _registered(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        _check_name(name)
        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryNotFoundError(
                f"no registered model named {name!r}; `cvdeploy models list` shows them"
            ) from None

    def _model_dir(self, version: ModelVersion) -> Path:
        """The version's MLflow model folder on local disk (downloaded once if remote)."""
        parsed = urlparse(version.source)
        if parsed.scheme in ("", "file"):
            folder = Path(unquote(parsed.path))
            store = artifacts_dir(self.home)
            # In the default store a version's source is ours to vouch for: a database row
            # pointing anywhere else (edited, or restored from another machine) is refused.
            if self._local and not folder.resolve().is_relative_to(store):
                raise UnsafePathError(
                    f"{version.name} version {version.version}: its source {version.source} "
                    f"is outside the artifact store {store}"
                )
            return folder
        cache = self.home / "cache" / version.name / version.version
        if not (cache / "MLmodel").is_file():
            from mlflow.artifacts import download_artifacts

            staging = Path(tempfile.mkdtemp(prefix="download-", dir=self.home))
            try:
                download_artifacts(artifact_uri=version.source, dst_path=str(staging))
                cache.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(cache, ignore_errors=True)
                inner = next((p for p in staging.iterdir() if p.is_dir()), staging)
                inner.rename(cache)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return cache


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"model name {name!r} is not valid: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (e.g. cv_model)"
        )
