"""The ``ci_cd`` section: what ``DeploymentPipeline`` checks and how it rolls a version out.

Seed 001 shows ``metrics_threshold``; the rest are cvdeploy's own, each with a default that lets
the seed's three-line pipeline run. Units follow DESIGN: latency in milliseconds (p95), error
rate as a fraction, sizes in megabytes, durations in seconds.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from cvdeploy.config._fields import Section, fspath, invalid

__all__ = [
    "FRACTION_METRICS",
    "CICDConfig",
    "EvaluationConfig",
    "PerformanceConfig",
    "ResourcesConfig",
    "RolloutConfig",
    "SecurityConfig",
]

#: Quality metrics that are fractions: a threshold of 90 for one of them is a typo for 0.9.
FRACTION_METRICS = frozenset(
    {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "map",
        "map50",
        "map75",
        "map50_95",
        "top1",
        "top5",
    }
)
# Databricks' rule for endpoint names, as cvdeploy.platforms.base checks it.
_ENDPOINT_NAME = r"^[A-Za-z0-9_-]{1,63}$"


def _default_thresholds() -> dict[str, float]:
    return {"accuracy": 0.9, "precision": 0.9, "recall": 0.9}


class SecurityConfig(Section):
    """The security assessment of a candidate's files."""

    allow_pickle: bool = Field(
        default=False,
        description="Accept pickle-based files (.pt, .pkl...) after a picklescan scan; they "
        "can run code when loaded, so the default refuses them.",
    )
    allowed_op_domains: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=100,
        description="Custom-operator domains accepted besides ONNX's own and com.microsoft.",
    )


class ResourcesConfig(Section):
    """Limits on what loading the model costs; null means measured and reported only."""

    max_model_mb: float | None = Field(
        default=None, gt=0, le=1e7, description="Model file plus external data, megabytes."
    )
    max_load_s: float | None = Field(
        default=None, gt=0, le=86_400, description="Seconds to load and warm up the model."
    )
    max_memory_mb: float | None = Field(
        default=None,
        gt=0,
        le=1e7,
        description="Peak resident memory of a process that loads and runs the model, megabytes "
        "(what a container's memory limit applies to).",
    )


class PerformanceConfig(Section):
    """The offline performance test: latency and throughput at each batch size."""

    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [1, 8],
        min_length=1,
        max_length=16,
        description="Batch sizes timed (sizes above a model's fixed batch are skipped).",
    )
    duration_s: float = Field(
        default=2.0, gt=0, le=3600, description="Seconds of timed inference per batch size."
    )
    max_latency_p95_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="Limit on batch-1 p95 latency, ms."
    )
    min_images_per_s: float | None = Field(
        default=None, gt=0, le=1e9, description="Minimum best throughput, images per second."
    )


class EvaluationConfig(Section):
    """How the candidate is scored on the evaluation data."""

    max_images: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate on the first N images only."
    )
    conf: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="Detection score floor for mAP (low, as COCO evaluation expects).",
    )
    iou: float = Field(default=0.6, gt=0, le=1, description="Detection NMS IoU for evaluation.")


class RolloutConfig(Section):
    """How each step of a gradual rollout is judged."""

    window_s: float = Field(
        default=60, gt=0, le=86_400, description="Seconds each step watches the candidate."
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        le=10_000_000,
        description="Candidate requests a step needs to pass; fewer is not a pass.",
    )
    step_timeout_s: float = Field(
        default=600,
        gt=0,
        le=86_400,
        description="Seconds a step may wait for min_requests before it counts as idle.",
    )
    allow_idle_promotion: bool = Field(
        default=False,
        description="Promote an idle step (too few requests) instead of rolling back.",
    )
    max_error_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Candidate's 5xx fraction that rolls back; null: the monitoring alert on "
        "error_rate, else 0.01.",
    )
    max_latency_ms: float | None = Field(
        default=None,
        gt=0,
        le=3_600_000,
        description="Candidate's p95 latency that rolls back, ms; null: the monitoring alert "
        "on latency, else not checked.",
    )

    @model_validator(mode="after")
    def _timeout_covers_the_window(self) -> RolloutConfig:
        if self.step_timeout_s < self.window_s:
            raise invalid(
                "is shorter than window_s ({window}), so no step could pass; make it at least "
                "window_s",
                field="step_timeout_s",
                value=self.step_timeout_s,
                window=self.window_s,
            )
        return self


class CICDConfig(Section):
    """Defaults of ``DeploymentPipeline.run_pipeline`` (seed 001's ``ci_cd``)."""

    metrics_threshold: dict[Annotated[str, Field(min_length=1)], float] = Field(
        default_factory=_default_thresholds,
        max_length=100,
        description="Minimum evaluation metric a new version needs to be deployed "
        "(accuracy, precision, recall, f1, map50... as fractions).",
    )
    eval_data: Annotated[str | None, BeforeValidator(fspath)] = Field(
        default=None,
        min_length=1,
        description="Labelled images to evaluate on: an ImageFolder, a YOLO dataset YAML or "
        "folder, or a COCO JSON.",
    )
    endpoint_name: str | None = Field(
        default=None,
        pattern=_ENDPOINT_NAME,
        description="Endpoint run_pipeline deploys to when none is given; null: "
        "'{model_name}-endpoint'.",
    )
    max_regression: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="How far below the champion a thresholded metric may fall (absolute, 0.01 "
        "= one point).",
    )
    rollout_steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=100,
        description="Traffic percentages of a gradual rollout: increasing, ending at 100.",
    )
    security: SecurityConfig = Field(
        default_factory=SecurityConfig, description="Security assessment."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="Resource requirements."
    )
    performance: PerformanceConfig = Field(
        default_factory=PerformanceConfig, description="Performance test."
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="Evaluation settings."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Rollout step judgement."
    )

    @field_validator("metrics_threshold")
    @classmethod
    def _fractions(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for name, value in thresholds.items():
            if not math.isfinite(value):
                raise invalid("{name} must be a finite number", name=name)
            if name.lower() in FRACTION_METRICS and not 0 <= value <= 1:
                raise invalid(
                    "{name} is a fraction: must be between 0 and 1 (write 0.9 for 90%)",
                    field=name,
                    value=value,
                    name=name,
                )
        return thresholds

    @field_validator("rollout_steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] != 100:
            raise invalid("must be increasing percentages ending at 100, e.g. [10, 50, 100]")
        return steps
