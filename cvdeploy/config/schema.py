"""The schema of a cvdeploy config: one pydantic model per section, both seed layouts in one tree.

::

    model:              cvdeploy's own: which model file to serve and how to pre/post-process
    deployment:
      server:           seed 000 (host, port, workers, timeout) + cvdeploy's serving options
      monitoring:       seed 000 (metrics_interval, alert_thresholds) + seed 001 (metrics, alerts)
      scaling:          seed 000 (min/max_replicas, target_cpu) + the autoscaler's knobs
      endpoint:         seed 001 (the defaults of ``ModelServer.create_endpoint``)
      batching, limits: cvdeploy's own
      ci_cd:            seed 001 (the defaults of ``DeploymentPipeline.run_pipeline``)
    monitoring:, ci_cd: also accepted at the top level and merged into ``deployment.*``

Every default is the value the seeds show, so ``Config()`` with no file behaves like the seeds.
Units follow DESIGN: latency in milliseconds (p95 over the window), cpu and memory in percent,
error_rate as a fraction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from cvdeploy.config._cicd import (
    CICDConfig,
    EvaluationConfig,
    PerformanceConfig,
    ResourcesConfig,
    RolloutConfig,
    SecurityConfig,
)
from cvdeploy.config._fields import (
    Section,
    byte_size,
    invalid,
    lower,
    no_zero_floor,
)
from cvdeploy.config._merge import hoist_sections
from cvdeploy.config._model import ModelConfig, NormalizationConfig
from cvdeploy.config._monitoring import (
    KNOWN_METRICS,
    AlertRule,
    AlertThresholds,
    DriftConfig,
    MonitoringConfig,
    PayloadLogConfig,
)

__all__ = [
    "KNOWN_METRICS",
    "AlertRule",
    "AlertThresholds",
    "BatchingConfig",
    "CICDConfig",
    "DriftConfig",
    "DeploymentConfig",
    "EndpointConfig",
    "EvaluationConfig",
    "LimitsConfig",
    "ModelConfig",
    "MonitoringConfig",
    "NormalizationConfig",
    "PerformanceConfig",
    "ResourcesConfig",
    "RolloutConfig",
    "SecurityConfig",
    "PayloadLogConfig",
    "RootConfig",
    "ScalingConfig",
    "ServerConfig",
]

KiB = 1024
MiB = 1024 * KiB

# Quality metrics that are fractions: a CI gate of 90 instead of 0.9 is a typo, not a wish.


# ---------------------------------------------------------------------------------- deployment


class ServerConfig(Section):
    """The HTTP server (seed 000's ``deployment.server`` plus cvdeploy's options)."""

    host: str = Field(default="0.0.0.0", min_length=1, description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 = any free port.")
    workers: int = Field(default=4, ge=1, le=512, description="Inference workers (model sessions).")
    timeout: float = Field(
        default=60, gt=0, le=86_400, description="Seconds a request may take before it gets a 504."
    )
    cache_size: int = Field(
        default=0, ge=0, le=10_000_000, description="Results kept in an LRU cache; 0 = cache off."
    )
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug", "trace"], BeforeValidator(lower)
    ] = Field(default="info", description="Server log level.")
    access_log: bool = Field(default=True, description="Log one line per request.")
    intra_op_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="ONNX Runtime threads per session; None = cores/workers.",
    )
    token: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description="Optional query token: when set, requests must send it as a bearer token.",
    )


class ScalingConfig(Section):
    """Autoscaling of replicas (seed 000 plus the local platform's autoscaler)."""

    min_replicas: Annotated[int, BeforeValidator(no_zero_floor)] = Field(
        default=1, ge=1, le=1000, description="Replicas kept while traffic flows."
    )
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most replicas under load.")
    target_cpu: float = Field(
        default=70, gt=0, le=100, description="CPU percent per replica to aim at."
    )
    target_concurrency: float = Field(
        default=4, gt=0, le=100_000, description="In-flight requests per replica to aim at."
    )
    scale_to_zero: bool = Field(
        default=False, description="Drop to zero replicas after idle_timeout_s."
    )
    idle_timeout_s: float = Field(
        default=300,
        ge=0,
        le=604_800,
        description="Seconds without requests before scaling to zero.",
    )
    upscale_delay_s: float = Field(
        default=3,
        ge=0,
        le=86_400,
        description="Seconds load must stay high before adding replicas (ignores one burst).",
    )
    downscale_delay_s: float = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Seconds load must stay low before removing replicas.",
    )

    @model_validator(mode="after")
    def _max_at_least_min(self) -> ScalingConfig:
        if self.max_replicas < self.min_replicas:
            raise invalid(
                "max_replicas ({max}) is less than min_replicas ({min}); raise max_replicas "
                "or lower min_replicas",
                field="max_replicas",
                max=self.max_replicas,
                min=self.min_replicas,
            )
        return self


class EndpointConfig(Section):
    """Defaults of ``ModelServer.create_endpoint`` (seed 001)."""

    instance_type: str = Field(
        default="Standard_DS3_v2",
        min_length=1,
        max_length=128,
        description="Instance type or size.",
    )
    min_instances: Annotated[int, BeforeValidator(no_zero_floor)] = Field(
        default=1, ge=1, le=1000, description="Instances kept while traffic flows."
    )
    max_instances: int = Field(default=5, ge=1, le=1000, description="Most instances under load.")
    scale_to_zero: bool = Field(default=True, description="Drop to zero instances when idle.")

    @model_validator(mode="after")
    def _max_at_least_min(self) -> EndpointConfig:
        if self.max_instances < self.min_instances:
            raise invalid(
                "max_instances ({max}) is less than min_instances ({min}); raise max_instances "
                "or lower min_instances",
                field="max_instances",
                max=self.max_instances,
                min=self.min_instances,
            )
        return self


class BatchingConfig(Section):
    """The adaptive dynamic batcher in front of each model session."""

    enabled: bool = Field(default=True, description="Batch concurrent requests together.")
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="Most images per model call.")
    max_queue_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=10_000,
        description="Most milliseconds a request waits for others to join its batch "
        "(never waits when the model is idle).",
    )
    max_queue_size: int = Field(
        default=256, ge=1, le=1_000_000, description="Queued images before requests get a 503."
    )
    tune_batch_size: bool = Field(
        default=True,
        description="Time the model at start-up and cap batches at the smallest size that is "
        "as fast per image as the best one up to max_batch_size.",
    )


ByteSize = Annotated[int, BeforeValidator(byte_size)]


class LimitsConfig(Section):
    """Bounds on what one request may carry (exceeding one is a 413, never a crash)."""

    max_body_bytes: ByteSize = Field(
        default=20 * MiB, ge=KiB, le=1 << 40, description="Request body size; accepts '20MiB'."
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, le=1 << 40, description="Pixels per decoded image (bomb guard)."
    )
    max_images_per_request: int = Field(
        default=64, ge=1, le=100_000, description="Images in one request."
    )
    max_v2_tensor_bytes: ByteSize = Field(
        default=64 * MiB, ge=KiB, le=1 << 40, description="Bytes of one v2 (KServe) input tensor."
    )


class DeploymentConfig(Section):
    """The ``deployment:`` section of both seeds, plus cvdeploy's batching and limits."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server.")
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig, description="Metrics and alerts."
    )
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Autoscaling.")
    endpoint: EndpointConfig = Field(
        default_factory=EndpointConfig, description="create_endpoint defaults."
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Dynamic batching."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request bounds.")
    ci_cd: CICDConfig = Field(default_factory=CICDConfig, description="Pipeline gates, rollout.")


#: Top-level sections that are merged into ``deployment.*`` (DESIGN lists both places).
class RootConfig(Section):
    """A whole cvdeploy config document."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to serve.")
    deployment: DeploymentConfig = Field(
        default_factory=DeploymentConfig, description="Serving, scaling, monitoring, CI/CD."
    )

    @model_validator(mode="before")
    @classmethod
    def _hoist(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        merged, problems = hoist_sections(data)
        if problems:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
        return merged
