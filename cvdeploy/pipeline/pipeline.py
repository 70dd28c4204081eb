"""``DeploymentPipeline``: seed 001's CI/CD pipeline over the registry and the platform.

One run takes a registered version through every stage in order, stopping at the first that
fails::

    security -> compatibility -> resources -> performance -> evaluation -> gates -> deploy

and returns a plain dict (``status`` is ``deployed``, ``rejected``, ``rolled_back`` or
``failed``). Every stage is recorded in an MLflow run of ``experiment_name``, with the Markdown
and HTML report as artifacts. A deployment that succeeds moves the registry's ``champion`` alias;
a rejected or rolled-back one leaves the champion serving.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cvdeploy.config import Config
from cvdeploy.config._cicd import CICDConfig
from cvdeploy.config.loader import validate_section
from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.stages import StageResult, timed_stage
from cvdeploy.platforms.base import check_endpoint_name

__all__ = ["STATUSES", "DeploymentPipeline"]

logger = logging.getLogger("cvdeploy.pipeline")

#: Every ``status`` a run can end with.
STATUSES = ("deployed", "rejected", "rolled_back", "failed")
EVAL_DATA_TAG = "eval_data"
EVAL_HASH_TAG = "eval_data_sha256"
EVALUATED_ON_TAG = "evaluated_on"

Event = Callable[[str, str, str], None]  # (stage, "start" | status, detail)


class DeploymentPipeline:
    """Validate, evaluate, gate and roll out versions of one registered model.

    Args:
        workspace_url: The platform: None for the embedded local platform (started on demand),
            or the URL of a running ``cvdeploy up``.
        token: Bearer token for the platform.
        model_name: The registered model whose versions the pipeline judges.
        experiment_name: MLflow experiment that holds one run per pipeline run.
        config: A :class:`Config`, a path to one, or None to discover it; ``ci_cd`` gives the
            defaults (thresholds, evaluation data, rollout steps and limits).
        eval_data: Labelled images to evaluate on; overrides ``ci_cd.eval_data`` and the data
            registered with the version.
        model_version: The candidate: a version number or alias. Default: the ``candidate``
            alias when set, else the latest version.
        registry_uri: MLflow URI of the registry; default: ``$CVDEPLOY_REGISTRY_URI``, else
            Unity Catalog (``databricks-uc``) on Databricks, else the local one in
            ``$CVDEPLOY_HOME``.
        report_dir: Where the report is written; default: a folder per run under
            ``$CVDEPLOY_HOME/pipeline/``.
        on_event: Called with ``(stage, "start" | status, detail)`` as stages run (the CLI's
            progress view).
        timeout: Seconds to wait for an endpoint to become ready.
        platform: ``"local"``, ``"databricks"`` or ``"ray"``; default: decided by
            ``workspace_url`` (see :mod:`cvdeploy.platforms.connect`).
    """

    def __init__(
        self,
        workspace_url: str | None = None,
        token: str | None = None,
        model_name: str = "",
        experiment_name: str = "cvdeploy-pipeline",
        *,
        config: Config | str | Path | None = None,
        eval_data: str | Path | None = None,
        model_version: str | int | None = None,
        registry_uri: str | None = None,
        report_dir: str | Path | None = None,
        on_event: Event | None = None,
        timeout: float = 600.0,
        platform: str | None = None,
    ) -> None:
        if not model_name:
            raise ConfigError("DeploymentPipeline needs model_name (a registered model)")
        if not experiment_name:
            raise ConfigError("experiment_name must not be empty")
        from cvdeploy.registry import Registry

        self.workspace_url = workspace_url
        self.token = token
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.config = config if isinstance(config, Config) else Config(config)
        self.eval_data = eval_data
        self.model_version = None if model_version is None else str(model_version)
        self.registry = Registry(_registry_uri(registry_uri, workspace_url, token, platform))
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.timeout = timeout
        self.platform = platform
        self._on_event = on_event
        self.last_rollout: dict[str, Any] | None = None
        #: The result of the run in progress or the last one (complete once it returns); what
        #: an interrupted run had recorded, for the CLI to point at its report.
        self.last_result: dict[str, Any] = {}
        self._endpoints: Any = None

    def __repr__(self) -> str:
        return (
            f"DeploymentPipeline(model_name={self.model_name!r}, "
            f"experiment_name={self.experiment_name!r}, workspace_url={self.workspace_url!r})"
        )

    # -- the seed's methods -------------------------------------------------------------------

    def run_pipeline(
        self,
        metrics_threshold: Mapping[str, float] | None = None,
        endpoint_name: str | None = None,
    ) -> dict[str, Any]:
        """Run every stage on the candidate and deploy it if it passes.

        Args:
            metrics_threshold: Minimum evaluation metrics (``accuracy``, ``precision``,
                ``recall``, ``f1``, ``map50``...); default: ``ci_cd.metrics_threshold``.
            endpoint_name: Endpoint to deploy to; default ``ci_cd.endpoint_name``, else
                ``"{model_name}-endpoint"``.

        Returns:
            ``status``, ``model_name``, ``model_version``, ``champion_version``, ``endpoint``,
            ``metrics``, ``gates`` (name, value, threshold, verdict), ``stages``, ``rollout``,
            ``timings``, ``reasons``, ``eval_data``, ``run_id`` and ``report`` (a folder).

        Raises:
            ConfigError: a threshold names a metric the evaluation does not produce (the message
                lists the valid ones), or another argument is invalid. Faults while the stages
                run (a platform that fails, unreadable data) end the run as ``failed`` instead,
                recorded with the reason.
        """
        from cvdeploy.pipeline.run import PipelineRunner

        ci_cd = self.config.ci_cd
        from_defaults = metrics_threshold is None and "metrics_threshold" not in (
            ci_cd.model_fields_set
        )
        thresholds = _validated_thresholds(
            ci_cd.metrics_threshold if metrics_threshold is None else metrics_threshold
        )
        endpoint = endpoint_name or ci_cd.endpoint_name or f"{self.model_name}-endpoint"
        check_endpoint_name(endpoint)
        self._check_rollout_resolution()
        runner = PipelineRunner(self, thresholds, from_defaults, endpoint)
        self.last_result = runner.result
        return runner.run()

    def evaluate_model(self, model_version: str | int) -> dict[str, float]:
        """Evaluate a version on the evaluation data; returns its top-level metrics.

        Also records them on the version in the registry, with the data's content hash.
        """
        from cvdeploy.pipeline.gates import gated_metrics

        dataset = self.load_eval_data(str(model_version))
        metrics = self.evaluate_on(str(model_version), dataset)
        return gated_metrics(metrics)

    def deploy_model(self, model_version: str | int, endpoint_name: str) -> str:
        """Serve ``model_version`` at ``endpoint_name``: create the endpoint, or roll the
        version out gradually with automatic rollback; returns the endpoint name.

        The rollout's report is kept in :attr:`last_rollout`.

        Raises:
            DeploymentRolledBackError: the rollout breached a limit and was rolled back.
        """
        from cvdeploy.pipeline.deploy import deploy

        check_endpoint_name(endpoint_name)
        report = deploy(self, str(model_version), endpoint_name)
        self.last_rollout = report
        if report["status"] == "rolled_back":
            from cvdeploy.pipeline.deploy import DeploymentRolledBackError

            raise DeploymentRolledBackError(report.get("reason") or "rolled back")
        return endpoint_name

    # Seed 001 documents these two with a leading underscore; both spellings work.
    _evaluate_model = evaluate_model
    _deploy_model = deploy_model

    def submit(
        self,
        path: str | Path,
        *,
        task: str | None = None,
        labels: Any = None,
        source_commit: str | None = None,
        description: str | None = None,
    ) -> tuple[str | None, StageResult]:
        """Security-check a model file, then register it and point ``candidate`` at it.

        The check runs before registration, so an unsafe file (a pickle, an ONNX whose external
        data escapes its folder, a custom-op domain) never enters the registry. A file already
        registered (same sha256) is not registered again: that version becomes the candidate,
        so re-running a CI job does not pile up identical versions. The evaluation data is
        checked first too, and recorded with a new version.

        Returns:
            ``(version, security stage)``; the version is None when the file was refused (the
            stage's ``reasons`` say why).

        Raises:
            ConfigError: the file does not exist, or there is no usable evaluation data.
        """
        from cvdeploy._hashing import file_sha256
        from cvdeploy.pipeline.datasets import load_eval_data
        from cvdeploy.pipeline.security import assess_security
        from cvdeploy.registry import RegistryNotFoundError

        model_file = Path(path).expanduser()
        if not model_file.is_file():
            raise ConfigError(f"model file not found: {model_file}")
        source = self.eval_data or self.ci_cd.eval_data
        if source is None:
            raise ConfigError(
                f"no evaluation data for a new version of {self.model_name}: pass eval_data= "
                "(or --eval-data), or set ci_cd.eval_data in the config"
            )
        load_eval_data(source, max_images=1)  # a missing or malformed set fails before anything
        security = self.ci_cd.security
        max_mb = self.ci_cd.resources.max_model_mb
        with self.stage("security") as stage:
            produced = assess_security(
                model_file,
                allow_pickle=security.allow_pickle,
                max_model_bytes=None if max_mb is None else int(max_mb * 1e6),
                allowed_op_domains=security.allowed_op_domains,
            )
            stage.checks.extend(produced.checks)
            stage.figures.update(produced.figures)
        if not stage.passed:
            return None, stage
        digest = file_sha256(model_file)
        try:
            known = [v for v in self.registry.versions(self.model_name) if v.sha256 == digest]
        except RegistryNotFoundError:
            known = []
        if known:
            version = known[-1].version
            self.emit("registry", "passed", f"already registered as version {version}")
        else:
            registered = self.registry.register(
                model_file,
                self.model_name,
                task=task,
                labels=labels,
                source_commit=source_commit,
                description=description,
                eval_data=source,
            )
            version = registered.version
            self.emit("registry", "passed", f"registered as version {version}")
        self.registry.set_alias(self.model_name, "candidate", version)
        self.model_version = version
        return version, stage

    # -- building blocks the runner and the CLI share -------------------------------------------

    @property
    def ci_cd(self) -> CICDConfig:
        return self.config.ci_cd

    def resolve_candidate(self) -> str:
        """The version to judge: the given one, else the ``candidate`` alias, else the latest."""
        from cvdeploy.registry import RegistryNotFoundError

        if self.model_version is not None:
            return self.registry.get_version(self.model_name, self.model_version).version
        try:
            return self.registry.get_version(self.model_name, "candidate").version
        except RegistryNotFoundError:
            return self.registry.get_version(self.model_name, "latest").version

    def champion_version(self) -> str | None:
        from cvdeploy.registry import RegistryNotFoundError

        try:
            return self.registry.get_version(self.model_name, "champion").version
        except RegistryNotFoundError:
            return None

    def load_eval_data(self, version: str) -> Any:
        """The evaluation set: the argument, else ``ci_cd.eval_data``, else the version's.

        Raises:
            ConfigError: none of the three is set.
        """
        from cvdeploy.pipeline.datasets import load_eval_data

        source: str | Path | None = self.eval_data or self.ci_cd.eval_data
        if source is None:
            source = self.registry.get_version(self.model_name, version).tags.get(EVAL_DATA_TAG)
        if source is None:
            raise ConfigError(
                f"no evaluation data for {self.model_name} version {version}: pass eval_data= "
                "(or --eval-data), set ci_cd.eval_data in the config, or register the version "
                "with --eval-data"
            )
        card = self.registry.card(self.model_name, version)
        evaluation = self.ci_cd.evaluation
        return load_eval_data(source, card.task, max_images=evaluation.max_images)

    def evaluate_on(self, version: str, dataset: Any) -> dict[str, Any]:
        """Full metrics of ``version`` on ``dataset``; recorded on the version when new."""
        from cvdeploy.pipeline.evaluate import evaluate_model
        from cvdeploy.pipeline.gates import gated_metrics
        from cvdeploy.runtime import load_model

        path = self.registry.model_path(self.model_name, version)
        card = self.registry.card(self.model_name, version)
        model = load_model(path, card.task, labels=card.labels, warmup=False)
        evaluation = self.ci_cd.evaluation
        metrics = evaluate_model(model, dataset, conf=evaluation.conf, iou=evaluation.iou)
        self.registry.log_metrics(self.model_name, version, gated_metrics(metrics))
        self.registry.set_tag(self.model_name, version, EVAL_HASH_TAG, dataset.sha256)
        # Where the figures came from; the registered `eval_data` tag is left as registered.
        self.registry.set_tag(self.model_name, version, EVALUATED_ON_TAG, str(dataset.source))
        return metrics

    def endpoints(self) -> Any:
        """The :class:`EndpointManager` the deploy stage drives (one per pipeline)."""
        if self._endpoints is None:
            from cvdeploy.platforms.endpoints import EndpointManager

            self._endpoints = EndpointManager(
                self.model_name,
                workspace_url=self.workspace_url,
                token=self.token,
                config=self.config,
                timeout=self.timeout,
                platform=self.platform,
            )
        return self._endpoints

    def emit(self, stage: str, status: str, detail: str = "") -> None:
        logger.info("%s: %s %s", stage, status, detail)
        if self._on_event is not None:
            self._on_event(stage, status, detail)

    def _check_rollout_resolution(self) -> None:
        """Databricks reports endpoint figures per minute: a shorter rollout window would judge
        each step on the previous minute's traffic, so it is refused before anything runs."""
        from cvdeploy.platforms.connect import resolve_platform

        window = self.ci_cd.rollout.window_s
        if resolve_platform(self.workspace_url, self.platform) == "databricks" and window < 60:
            raise ConfigError(
                f"ci_cd.rollout.window_s is {window:g} s, but Databricks reports endpoint "
                "figures per minute; set it to at least 60 for a rollout on Databricks"
            )

    @contextmanager
    def stage(self, name: str) -> Iterator[StageResult]:
        """``with pipeline.stage("security") as stage:`` announces, times and reports a stage."""
        self.emit(name, "start")
        with timed_stage(name) as result:
            yield result
        detail = "; ".join(result.reasons) or result.skipped or f"{result.seconds:.2f} s"
        self.emit(name, result.status, detail)


def _registry_uri(
    uri: str | None, workspace_url: str | None, token: str | None, platform: str | None
) -> str | None:
    """The registry a pipeline on this platform reads: on Databricks, Unity Catalog."""
    from cvdeploy.platforms.connect import resolve_platform
    from cvdeploy.registry.store import REGISTRY_URI_ENV

    if uri or os.environ.get(REGISTRY_URI_ENV):
        return uri
    if resolve_platform(workspace_url, platform) != "databricks" or workspace_url is None:
        return None
    # MLflow's Databricks stores find the workspace through these (or ~/.databrickscfg).
    os.environ.setdefault("DATABRICKS_HOST", workspace_url)
    if token:
        os.environ.setdefault("DATABRICKS_TOKEN", token)
    return "databricks-uc"


def _validated_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(thresholds, Mapping):
        raise ConfigError(
            "metrics_threshold must be a mapping of metric name to minimum, e.g. {'accuracy': 0.9}"
        )
    section = validate_section(CICDConfig, {"metrics_threshold": dict(thresholds)}, name="ci_cd")
    for name, value in section.metrics_threshold.items():
        if not math.isfinite(value):
            raise ConfigError(f"metrics_threshold.{name} must be a finite number")
    return dict(section.metrics_threshold)
