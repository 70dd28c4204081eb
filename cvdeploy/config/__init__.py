"""Configuration: YAML file + environment + keyword overrides -> validated pydantic models.

>>> config = Config()                                   # ./cvdeploy.yaml, ... or the defaults
>>> config = Config("deploy.yaml", deployment__server__port=9000)
>>> server = ModelServer(model_type="yolo",
...                      model_path=config.get_model_config()["weights_path"],
...                      **config.get_deployment_config())

Precedence: keyword overrides > ``CVDEPLOY_<SECTION>__<KEY>`` environment variables > the file >
built-in defaults (the seeds' values). See ``docs/configuration.md`` for every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cvdeploy.config.loader import ENV_CONFIG, ENV_PREFIX, load, validate_section
from cvdeploy.config.schema import (
    KNOWN_METRICS,
    AlertRule,
    AlertThresholds,
    BatchingConfig,
    CICDConfig,
    DeploymentConfig,
    DriftConfig,
    EndpointConfig,
    LimitsConfig,
    ModelConfig,
    MonitoringConfig,
    NormalizationConfig,
    PayloadLogConfig,
    RootConfig,
    ScalingConfig,
    ServerConfig,
)

__all__ = [
    "ENV_CONFIG",
    "ENV_PREFIX",
    "KNOWN_METRICS",
    "AlertRule",
    "AlertThresholds",
    "BatchingConfig",
    "CICDConfig",
    "DriftConfig",
    "Config",
    "DeploymentConfig",
    "EndpointConfig",
    "LimitsConfig",
    "ModelConfig",
    "MonitoringConfig",
    "NormalizationConfig",
    "PayloadLogConfig",
    "RootConfig",
    "ScalingConfig",
    "ServerConfig",
    "validate_section",
]


class Config:
    """A validated cvdeploy configuration (both seed layouts).

    Args:
        path: The YAML file to read. When None: ``$CVDEPLOY_CONFIG``, else ``./cvdeploy.yaml``,
            else ``./config/deployment_config.yaml``, else the built-in defaults.
        **overrides: Settings that win over the file and the environment, as nested mappings
            (``deployment={"server": {"port": 9000}}``) or ``__``-joined keys
            (``deployment__server__port=9000``).

    Raises:
        ConfigError: The file is missing, is not valid YAML, or any value is invalid; the
            message lists every problem with its dotted key path and the fix.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **overrides: Any) -> None:
        self._root, self._path = load(path, overrides, os.environ)

    @property
    def path(self) -> Path | None:
        """The file that was read, or None when the built-in defaults apply."""
        return self._path

    @property
    def root(self) -> RootConfig:
        """The whole validated document."""
        return self._root

    @property
    def model(self) -> ModelConfig:
        return self._root.model

    @property
    def deployment(self) -> DeploymentConfig:
        return self._root.deployment

    @property
    def monitoring(self) -> MonitoringConfig:
        """``deployment.monitoring`` merged with a top-level ``monitoring:``."""
        return self._root.deployment.monitoring

    @property
    def ci_cd(self) -> CICDConfig:
        """``deployment.ci_cd`` merged with a top-level ``ci_cd:``."""
        return self._root.deployment.ci_cd

    def get_model_config(self) -> dict[str, Any]:
        """The ``model:`` section as a plain dict (``weights_path``, ``model_type``, ...)."""
        return self.model.model_dump()

    def get_deployment_config(self) -> dict[str, Any]:
        """Keyword arguments for ``ModelServer``: the server keys plus batching/limits/scaling
        and the server-side drift sampling and payload logging (``monitoring.drift``,
        ``monitoring.payload_log``).

        Exactly ``host, port, workers, timeout, cache_size, log_level, access_log,
        intra_op_threads, token, batching, limits, scaling, drift, payload_log``.
        """
        deployment = self.deployment
        return {
            **deployment.server.model_dump(),
            "batching": deployment.batching.model_dump(),
            "limits": deployment.limits.model_dump(),
            "scaling": deployment.scaling.model_dump(),
            "drift": deployment.monitoring.drift.model_dump(),
            "payload_log": deployment.monitoring.payload_log.model_dump(),
        }

    def get_monitoring_config(self) -> dict[str, Any]:
        """Keyword arguments for ``ModelMonitor``.

        ``metrics_interval``, ``alert_thresholds``, ``metrics`` and ``alerts``, from
        ``deployment.monitoring`` merged with a top-level ``monitoring:``. Payload logging
        (``payload_log``) is a server setting, in :meth:`get_deployment_config` only.
        """
        return self.monitoring.model_dump(exclude={"payload_log"})

    def get_endpoint_config(self) -> dict[str, Any]:
        """Defaults for ``ModelServer.create_endpoint`` (instance type, instance bounds)."""
        return self.deployment.endpoint.model_dump()

    def get_ci_cd_config(self) -> dict[str, Any]:
        """Defaults for ``DeploymentPipeline``: the whole ``ci_cd`` section as a plain dict."""
        return self.ci_cd.model_dump()

    def to_dict(self) -> dict[str, Any]:
        """The whole configuration with every default filled in.

        The layout is canonical: ``monitoring`` and ``ci_cd`` appear under ``deployment``.
        """
        return self._root.model_dump()

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML; reading it back gives the same configuration."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __repr__(self) -> str:
        return f"Config(path={str(self._path) if self._path else None!r})"
