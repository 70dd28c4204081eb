"""Plain records the registry returns, so callers never handle MLflow's entity classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ModelVersion", "RegisteredModel"]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: str
    source: str
    status: str
    created_ms: int
    description: str = ""
    run_id: str | None = None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        return self.tags.get("task")

    @property
    def sha256(self) -> str | None:
        return self.tags.get("sha256")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mlflow(cls, entity: Any) -> ModelVersion:
        return cls(
            name=str(entity.name),
            version=str(entity.version),
            source=str(entity.source),
            status=str(entity.status),
            created_ms=int(entity.creation_timestamp or 0),
            description=str(entity.description or ""),
            run_id=entity.run_id or None,
            aliases=sorted(getattr(entity, "aliases", None) or []),
            tags=dict(entity.tags or {}),
        )


@dataclass(frozen=True)
class RegisteredModel:
    """A named model: its latest version and its aliases (alias -> version)."""

    name: str
    description: str
    latest_version: str | None
    aliases: dict[str, str]
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
