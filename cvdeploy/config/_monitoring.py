"""The monitoring section: what ``ModelMonitor`` collects and when it alerts (both seeds' keys).

Units follow DESIGN: latency in milliseconds (p95 over the window), cpu and memory in percent,
error_rate as a fraction.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator, model_validator

from cvdeploy.config._fields import Section, invalid

__all__ = [
    "KNOWN_METRICS",
    "AlertRule",
    "AlertThresholds",
    "DriftConfig",
    "MetricName",
    "MonitoringConfig",
    "PayloadLogConfig",
]

MetricName = Literal[
    "latency",
    "throughput",
    "error_rate",
    "cpu",
    "memory",
    "gpu",
    "gpu_memory",
    "queue_depth",
    "concurrency",
    "drift",
]
#: Metric names that ``monitoring.metrics`` and ``monitoring.alerts[].metric`` accept.
KNOWN_METRICS: tuple[str, ...] = get_args(MetricName)


class AlertThresholds(Section):
    """Resource and latency alert levels (seed 000)."""

    cpu: float = Field(default=80, gt=0, le=100, description="CPU use, percent.")
    memory: float = Field(default=80, gt=0, le=100, description="Memory use, percent.")
    latency: float = Field(
        default=1000, gt=0, le=3_600_000, description="p95 latency over the window, milliseconds."
    )


_PERCENT_METRICS = frozenset({"cpu", "memory", "gpu", "gpu_memory"})


class AlertRule(Section):
    """One alert (seed 001): fire when ``metric`` crosses ``threshold``."""

    metric: MetricName = Field(description="Metric watched; see KNOWN_METRICS.")
    threshold: float = Field(
        ge=0,
        le=1e12,
        description="Level in the metric's unit: latency p95 milliseconds, error_rate a "
        "fraction (0.01 = 1%), cpu/memory/gpu percent, throughput requests per second.",
    )
    comparison: Literal[">", ">=", "<", "<="] = Field(
        default=">", description="Fires when `value comparison threshold` holds."
    )
    for_s: float = Field(
        default=0, ge=0, le=86_400, description="Seconds the condition must hold before firing."
    )
    severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="Label for routing the alert."
    )

    @model_validator(mode="after")
    def _unit(self) -> AlertRule:
        if self.metric == "error_rate" and self.threshold > 1:
            raise invalid(
                "error_rate is a fraction: write {fixed} for {value}%",
                field="threshold",
                value=self.threshold,
                fixed=round(self.threshold / 100, 6),
            )
        if self.metric in _PERCENT_METRICS and self.threshold > 100:
            raise invalid(
                "{metric} is a percent: must be <= 100",
                field="threshold",
                value=self.threshold,
                metric=self.metric,
            )
        return self


class DriftConfig(Section):
    """Image data drift: which requests are sampled and when a feature counts as drifted."""

    enabled: bool = Field(default=True, description="Sample requests for drift detection.")
    sample_rate: float = Field(
        default=0.1, gt=0, le=1, description="Share of requests whose image is profiled."
    )
    max_samples_per_s: float = Field(
        default=20, gt=0, le=100_000, description="Most images profiled per second (per process)."
    )
    window: int = Field(
        default=500, ge=50, le=100_000, description="Recent samples compared with the reference."
    )
    min_window: int = Field(
        default=200, ge=20, le=100_000, description="Samples needed before any verdict."
    )
    reference_requests: int = Field(
        default=200,
        ge=20,
        le=100_000,
        description="Without registered reference images, the first N samples are the reference.",
    )
    psi_threshold: float = Field(
        default=0.2, gt=0, le=10, description="PSI above which a feature may have drifted."
    )
    ks_pvalue: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="KS test level (Bonferroni-corrected over the features compared).",
    )

    @model_validator(mode="after")
    def _window_holds_min(self) -> DriftConfig:
        if self.min_window > self.window:
            raise invalid(
                "min_window ({value}) is larger than window ({window}); lower it",
                field="min_window",
                value=self.min_window,
                window=self.window,
            )
        return self


class PayloadLogConfig(Section):
    """Payload logging (inference tables): a sampled record per request in a bounded store.

    Off by default: a record holds a hash of the user's image, its predictions and, with
    ``store_images``, the image itself.
    """

    enabled: bool = Field(
        default=False, description="Write sampled request records (opt in: user data)."
    )
    sample_rate: float = Field(
        default=0.05, gt=0, le=1, description="Share of images that get a record."
    )
    max_records_per_s: float = Field(
        default=20, gt=0, le=100_000, description="Most records written per second (per process)."
    )
    path: str | None = Field(
        default=None, description="SQLite file; null means $CVDEPLOY_HOME/payloads.db."
    )
    max_rows: int = Field(
        default=100_000, ge=1, le=100_000_000, description="Records kept; the oldest are deleted."
    )
    store_images: bool = Field(
        default=False, description="Also store the encoded image bytes (up to max_image_bytes)."
    )
    max_image_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1,
        le=1024 * 1024 * 1024,
        description="Largest image stored with store_images; larger ones get a record without "
        "the bytes.",
    )


def _default_metrics() -> list[MetricName]:
    return ["latency", "throughput", "error_rate"]


def _default_alerts() -> list[AlertRule]:
    return [
        AlertRule(metric="error_rate", threshold=0.01),
        AlertRule(metric="latency", threshold=100),
    ]


class MonitoringConfig(Section):
    """What ``ModelMonitor`` collects and alerts on (both seeds' keys in one section)."""

    metrics_interval: float = Field(
        default=60, gt=0, le=86_400, description="Seconds between metric snapshots."
    )
    alert_thresholds: AlertThresholds = Field(
        default_factory=AlertThresholds, description="cpu/memory percent, latency p95 ms."
    )
    metrics: list[MetricName] = Field(
        default_factory=_default_metrics,
        max_length=len(KNOWN_METRICS),
        description="Metrics to collect and report.",
    )
    alerts: list[AlertRule] = Field(
        default_factory=_default_alerts, max_length=1000, description="Alert rules."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Image data drift.")
    cost_per_hour: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict,
        description="Price of one replica-hour by instance type, for cost estimates.",
    )
    payload_log: PayloadLogConfig = Field(
        default_factory=PayloadLogConfig, description="Sampled request records (inference tables)."
    )

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, metrics: list[MetricName]) -> list[MetricName]:
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise invalid(
                "lists {names} more than once; list each metric once", names=", ".join(repeated)
            )
        return metrics
