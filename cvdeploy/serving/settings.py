"""Everything one serving process needs to know, in one JSON-serialisable object.

Worker processes (``workers > 1``) are started by uvicorn from an import string, so the
settings travel to them through the ``CVDEPLOY_SERVE_SETTINGS`` environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from cvdeploy.config import (
    BatchingConfig,
    DriftConfig,
    LimitsConfig,
    PayloadLogConfig,
    validate_section,
)
from cvdeploy.errors import ConfigError

__all__ = ["SETTINGS_ENV", "ServeSettings"]

SETTINGS_ENV = "CVDEPLOY_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    """How to load and serve one model version."""

    model_path: str
    task: str | None = None
    name: str | None = None
    version: str = "1"
    timeout: float = 60.0
    workers: int = 1
    # The config file's own section models: one set of defaults and bounds, one set of messages.
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cache_size: int = 0
    token: str | None = None
    intra_op_threads: int | None = None
    #: Keyword arguments for ``cvdeploy.runtime.load_model`` (labels, thresholds, providers...).
    model_options: dict[str, Any] = field(default_factory=dict)
    #: Image drift sampling (the config's ``deployment.monitoring.drift``).
    drift: DriftConfig = field(default_factory=DriftConfig)
    #: Registered reference images, the drift reference (else the first requests are).
    reference_images: list[str] = field(default_factory=list)
    #: Sampled request records (the config's ``deployment.monitoring.payload_log``).
    payload_log: PayloadLogConfig = field(default_factory=PayloadLogConfig)

    @classmethod
    def create(
        cls,
        *,
        batching: object = None,
        limits: object = None,
        drift: object = None,
        payload_log: object = None,
        **kwargs: Any,
    ) -> ServeSettings:
        return cls(
            batching=validate_section(BatchingConfig, batching, name="batching"),
            limits=validate_section(LimitsConfig, limits, name="limits"),
            drift=validate_section(DriftConfig, drift, name="monitoring.drift"),
            payload_log=validate_section(
                PayloadLogConfig, payload_log, name="monitoring.payload_log"
            ),
            **kwargs,
        )

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return os.path.splitext(os.path.basename(self.model_path))[0]

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["batching"] = self.batching.model_dump()
        data["limits"] = self.limits.model_dump()
        data["drift"] = self.drift.model_dump()
        data["payload_log"] = self.payload_log.model_dump()
        return json.dumps(data, default=os.fspath)  # Path values (a labels file) as strings

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        data = json.loads(text)
        return cls.create(**data)

    @classmethod
    def from_env(cls) -> ServeSettings:
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise ConfigError(f"{SETTINGS_ENV} is not set; start workers through cvdeploy")
        return cls.from_json(text)
