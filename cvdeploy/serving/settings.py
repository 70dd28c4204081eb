"""Everything one serving process needs to know, in one JSON-serialisable object.

Worker processes (``workers > 1``) are started by uvicorn from an import string, so the
settings travel to them through the ``CVDEPLOY_SERVE_SETTINGS`` environment variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cvdeploy.errors import ConfigError

__all__ = ["SETTINGS_ENV", "BatchingSettings", "LimitsSettings", "ServeSettings"]

SETTINGS_ENV = "CVDEPLOY_SERVE_SETTINGS"


@dataclass(frozen=True)
class BatchingSettings:
    enabled: bool = True
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256


@dataclass(frozen=True)
class LimitsSettings:
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 64
    max_v2_tensor_bytes: int = 64 * 2**20


def _build(cls: type[Any], value: object, what: str) -> Any:
    """Build a settings dataclass from a mapping, naming unknown keys."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"{what}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    return cls(**value)


@dataclass(frozen=True)
class ServeSettings:
    """How to load and serve one model version."""

    model_path: str
    task: str | None = None
    name: str | None = None
    version: str = "1"
    timeout: float = 60.0
    workers: int = 1
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    cache_size: int = 0
    token: str | None = None
    intra_op_threads: int | None = None
    #: Keyword arguments for ``cvdeploy.runtime.load_model`` (labels, thresholds, providers...).
    model_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        batching: object = None,
        limits: object = None,
        **kwargs: Any,
    ) -> ServeSettings:
        return cls(
            batching=_build(BatchingSettings, batching, "batching"),
            limits=_build(LimitsSettings, limits, "limits"),
            **kwargs,
        )

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return os.path.splitext(os.path.basename(self.model_path))[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

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
