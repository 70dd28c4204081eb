"""What every platform shares: the endpoint spec, the platform errors and the ``Platform`` seam.

The spec mirrors the JSON of Databricks' serving-endpoints REST API field for field
(``name``, ``config.served_entities[]``, ``config.traffic_config.routes[]``), so the same body
drives the local platform, the Databricks backend and ``databricks-sdk`` pointed at cvdeploy.
What Databricks has no field for lives in clearly named extensions on a served entity:
``min_replicas``, ``max_replicas`` and ``batching``.

Platform errors are leaves of the tree in :mod:`cvdeploy.errors` (``ConfigError`` for an
invalid spec, ``ConflictError``, ``UnauthenticatedError`` and ``PermissionDeniedError`` are
defined there)::

    ModelNotFoundError (404)
    └── EndpointNotFoundError (404)    RESOURCE_DOES_NOT_EXIST
    ConflictError (409)
    └── EndpointAlreadyExistsError     RESOURCE_ALREADY_EXISTS
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cvdeploy.config import BatchingConfig
from cvdeploy.errors import (
    ConfigError,
    ConflictError,
    ModelNotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from cvdeploy.platforms.concurrency import replicas_from_concurrency

__all__ = [
    "ConfigUpdate",
    "ConflictError",
    "EndpointAlreadyExistsError",
    "EndpointCoreConfig",
    "EndpointInfo",
    "EndpointNotFoundError",
    "EndpointSpec",
    "EndpointState",
    "PermissionDeniedError",
    "Platform",
    "RateLimit",
    "Route",
    "ServedEntity",
    "TrafficConfig",
    "UnauthenticatedError",
    "WorkloadSize",
    "WorkloadType",
    "check_endpoint_name",
    "entity_name_for",
    "poll_until_ready",
]

WorkloadSize = Literal["Small", "Medium", "Large"]
WorkloadType = Literal["CPU", "GPU_SMALL", "GPU_MEDIUM", "GPU_LARGE", "MULTIGPU_MEDIUM"]
ConfigUpdate = Literal["NOT_UPDATING", "IN_PROGRESS", "UPDATE_FAILED"]

# Databricks' rule for endpoint and served-entity names.
_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"


class EndpointAlreadyExistsError(ConflictError):
    error_code = "RESOURCE_ALREADY_EXISTS"


class EndpointNotFoundError(ModelNotFoundError):
    """No endpoint (or revision) of that name (HTTP 404, RESOURCE_DOES_NOT_EXIST)."""


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("cvdeploy", message)


class _Spec(BaseModel):
    # A misspelt key (``max_replica``) must fail loudly, not be dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


def poll_until_ready(
    name: str,
    fetch: Callable[[], tuple[EndpointInfo, Any]],
    *,
    timeout: float,
    poll_s: float,
    on_poll: Callable[[EndpointInfo], None] | None,
    failure: Callable[[Any], str],
    where: str = "",
    hint: str,
) -> EndpointInfo:
    """The one wait every :class:`Platform` does: poll ``fetch()`` (the endpoint and the
    platform's raw answer) until the config update is over and the endpoint is ready.

    Raises:
        ModelLoadError: UPDATE_FAILED; the message is ``failure(raw answer)``.
        DeadlineExceededError: not ready after ``timeout`` seconds; the message ends with
            ``hint`` (where to look next on this platform).
    """
    import time

    from cvdeploy.errors import DeadlineExceededError, ModelLoadError

    deadline = time.monotonic() + timeout
    while True:
        info, raw = fetch()
        if on_poll is not None:
            on_poll(info)
        state = info.state
        if state.config_update == "UPDATE_FAILED":
            raise ModelLoadError(failure(raw))
        if state.config_update == "NOT_UPDATING" and state.ready == "READY":
            return info
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"endpoint '{name}'{where} is not ready after {timeout:g} s (config_update "
                f"{state.config_update}, ready {state.ready}); {hint}"
            )
        time.sleep(min(poll_s, remaining))


def check_endpoint_name(name: str) -> str:
    """``name`` if Databricks (and so cvdeploy) accepts it as an endpoint name.

    Raises:
        ConfigError: it is not 1-63 letters, digits, ``-`` or ``_``.
    """
    if not isinstance(name, str) or not re.match(_NAME_PATTERN, name):
        raise ConfigError(
            f"endpoint name {name!r} is not valid: use 1 to 63 letters, digits, '-' or '_' "
            "(e.g. cv_endpoint)"
        )
    return name


def entity_name_for(model: str, version: str) -> str:
    """The default served-entity name of ``(model, version)``: Databricks' rule, where a Unity
    Catalog name ``catalog.schema.model`` version 3 gives ``model-3``."""
    return f"{model.rsplit('.', 1)[-1]}-{version}"


class ServedEntity(_Spec):
    """One model version served by an endpoint (Databricks ``served_entities[]``)."""

    name: str = Field(
        default="",
        pattern=r"^$|" + _NAME_PATTERN,
        description="Unique within the endpoint; default '{entity_name}-{entity_version}'.",
    )
    entity_name: str = Field(min_length=1, max_length=255, description="Registered model name.")
    entity_version: str = Field(min_length=1, max_length=64, description="Model version.")
    workload_size: WorkloadSize = Field(default="Small", description="Concurrency per replica.")
    workload_type: WorkloadType = Field(default="CPU", description="Compute kind.")
    scale_to_zero_enabled: bool = Field(default=False, description="Drop to 0 replicas idle.")
    # cvdeploy extensions (Databricks sizes replicas from workload_size alone).
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Replicas kept while busy.")
    max_replicas: int | None = Field(
        default=None, ge=1, le=1000, description="Most replicas; default max(min_replicas, 1)."
    )
    batching: dict[str, Any] | None = Field(
        default=None, description="Dynamic batching, as the config's `batching` section."
    )
    instance_type: str | None = Field(
        default=None,
        max_length=128,
        description="Sets each replica's threads and memory limit (docs/platform.md's table).",
    )

    @model_validator(mode="before")
    @classmethod
    def _provisioned_concurrency(cls, data: Any) -> Any:
        # Databricks sizes an entity by provisioned concurrency (databricks-sdk sends that, not
        # replicas); it becomes cvdeploy's replicas of the workload size that divides it.
        keys = ("min_provisioned_concurrency", "max_provisioned_concurrency")
        if not isinstance(data, Mapping) or not any(k in data for k in keys):
            return data
        data = dict(data)
        low, high = (data.pop(k, None) for k in keys)
        if "min_replicas" in data or "max_replicas" in data:
            raise _problem(
                "give replica bounds (min_replicas/max_replicas) or Databricks' provisioned "
                "concurrency, not both"
            )
        bounds: list[int | None] = []
        for key, value in zip(keys, (low, high), strict=True):
            if value is None:
                bounds.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _problem(f"{key} must be a whole number of requests >= 0, got {value!r}")
            bounds.append(value)
        low_n = bounds[0] if bounds[0] is not None else 0
        high_n = bounds[1] if bounds[1] is not None else max(low_n, 4)
        if low_n > high_n:
            raise _problem(f"{keys[0]} ({low_n}) is greater than {keys[1]} ({high_n})")
        size, low_r, high_r = replicas_from_concurrency(
            low_n, high_n, data.get("workload_size"), bool(data.get("scale_to_zero_enabled"))
        )
        data.update(workload_size=size, min_replicas=low_r, max_replicas=high_r)
        return data

    @field_validator("entity_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # Databricks sends versions as strings; accept the integer people type.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("batching")
    @classmethod
    def _valid_batching(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            return BatchingConfig.model_validate(value).model_dump(mode="json")
        except ValidationError as exc:
            raise _problem(_render(exc, None)) from None

    @model_validator(mode="after")
    def _defaults_and_bounds(self) -> ServedEntity:
        if not self.name:
            derived = entity_name_for(self.entity_name, self.entity_version)
            if not re.match(_NAME_PATTERN, derived):
                raise _problem(
                    f"the default served entity name '{derived}' is not valid (letters, digits, "
                    "'-' and '_', at most 63); set 'name' on this served entity"
                )
            object.__setattr__(self, "name", derived)
        if self.min_replicas == 0 and not self.scale_to_zero_enabled:
            raise _problem(
                f"served entity '{self.name}': min_replicas 0 needs scale_to_zero_enabled: true"
            )
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise _problem(
                f"served entity '{self.name}': min_replicas ({self.min_replicas}) is greater "
                f"than max_replicas ({self.max_replicas}); lower min_replicas or raise "
                "max_replicas"
            )
        return self

    @property
    def replica_bounds(self) -> tuple[int, int]:
        """``(min_replicas, max_replicas)`` with the default maximum filled in."""
        top = self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 1)
        return self.min_replicas, top


class Route(_Spec):
    """A share of the traffic (Databricks ``traffic_config.routes[]``)."""

    served_model_name: str = Field(
        validation_alias=AliasChoices("served_model_name", "served_entity_name"),
        description="The served entity that gets this share ('served_entity_name' accepted).",
    )
    traffic_percentage: int = Field(ge=0, le=100, description="Percent of requests, 0-100.")

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            a, b = data.get("served_model_name"), data.get("served_entity_name")
            if a is not None and b is not None and a != b:
                raise _problem(
                    f"route gives served_model_name '{a}' and served_entity_name '{b}'; "
                    "give one of them"
                )
        return data


class TrafficConfig(_Spec):
    routes: list[Route] = Field(min_length=1, description="Shares summing to 100.")

    @model_validator(mode="after")
    def _sums_to_100(self) -> TrafficConfig:
        total = sum(r.traffic_percentage for r in self.routes)
        if total != 100:
            raise _problem(f"traffic routes sum to {total}, not 100; make the percentages add up")
        names = [r.served_model_name for r in self.routes]
        if len(set(names)) != len(names):
            raise _problem(f"traffic routes name a served entity twice: {', '.join(names)}")
        return self


class RateLimit(_Spec):
    """A request budget for the endpoint (Databricks ``rate_limits[]``); over it -> 429."""

    calls: int = Field(ge=1, le=10_000_000, description="Requests allowed per renewal period.")
    renewal_period: Literal["second", "minute"] = Field(
        default="minute", description="The period the budget renews over."
    )
    key: Literal["endpoint"] = Field(
        default="endpoint", description="What the budget is counted per (the whole endpoint)."
    )

    @property
    def period_s(self) -> float:
        return 1.0 if self.renewal_period == "second" else 60.0


class EndpointCoreConfig(_Spec):
    """The body of ``PUT /api/2.0/serving-endpoints/{name}/config`` (and ``config`` on create)."""

    served_entities: list[ServedEntity] = Field(min_length=1, max_length=15)
    traffic_config: TrafficConfig | None = Field(
        default=None, description="Optional with one served entity (it gets 100%)."
    )
    # cvdeploy extensions, kept in the config so every revision (and a rollback) carries them.
    fallback_served_entity: str | None = Field(
        default=None,
        description="Served entity that takes requests while a routed one has no healthy replica.",
    )
    rate_limits: list[RateLimit] = Field(
        default_factory=list, max_length=1, description="Endpoint request budget (429 over it)."
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_repeated_name(cls, data: Any) -> Any:
        # Databricks' EndpointCoreConfigInput repeats the endpoint's name inside the config.
        if isinstance(data, Mapping) and "name" in data:
            data = {k: v for k, v in data.items() if k != "name"}
        return data

    @model_validator(mode="after")
    def _routes_match_entities(self) -> EndpointCoreConfig:
        names = [e.name for e in self.served_entities]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _problem(
                f"served entity names must be unique; {', '.join(dupes)} appears more than once "
                "(set a distinct 'name' on each)"
            )
        if self.traffic_config is None:
            if len(names) > 1:
                raise _problem(
                    f"traffic_config is required with {len(names)} served entities "
                    f"({', '.join(names)}); give routes whose percentages sum to 100"
                )
            only = Route(served_model_name=names[0], traffic_percentage=100)
            object.__setattr__(self, "traffic_config", TrafficConfig(routes=[only]))
            self._check_fallback(names)
            return self
        for route in self.traffic_config.routes:
            if route.served_model_name not in names:
                raise _problem(
                    f"route names '{route.served_model_name}' but served entities are: "
                    f"{', '.join(names)}"
                )
        self._check_fallback(names)
        return self

    def _check_fallback(self, names: list[str]) -> None:
        if self.fallback_served_entity is not None and self.fallback_served_entity not in names:
            raise _problem(
                f"fallback_served_entity names '{self.fallback_served_entity}' but served "
                f"entities are: {', '.join(names)}"
            )

    @property
    def routes(self) -> list[Route]:
        """The routes, always present after validation."""
        return list(self.traffic_config.routes) if self.traffic_config is not None else []

    @classmethod
    def parse(cls, data: Any) -> EndpointCoreConfig:
        """Validate a JSON body; any problem is a :class:`ConfigError` (400) naming it."""
        return _parse(cls, data, "config")

    def to_json(self) -> dict[str, Any]:
        """The Databricks JSON of this config (defaults filled in)."""
        return self.model_dump(mode="json", by_alias=True)


class EndpointSpec(_Spec):
    """The body of ``POST /api/2.0/serving-endpoints``."""

    name: str = Field(pattern=_NAME_PATTERN, description="Letters, digits, '-' and '_'.")
    config: EndpointCoreConfig

    @model_validator(mode="before")
    @classmethod
    def _rate_limits_into_config(cls, data: Any) -> Any:
        # Databricks takes rate_limits beside config on create; cvdeploy keeps them in the
        # config so each revision (and a rollback) carries its own.
        if isinstance(data, Mapping) and "rate_limits" in data:
            data = dict(data)
            limits = data.pop("rate_limits")
            config = data.get("config")
            if isinstance(config, Mapping) and limits:
                data["config"] = {**config, "rate_limits": limits}
        return data

    @classmethod
    def parse(cls, data: Any) -> EndpointSpec:
        """Validate a JSON body; any problem is a :class:`ConfigError` (400) naming it."""
        return _parse(cls, data, "endpoint")


def _render(exc: ValidationError, prefix: str | None) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        parts = err["loc"] if prefix is None else (prefix, *err["loc"])
        where = ".".join(str(p) for p in parts)
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], data: Any, prefix: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {prefix}: {_render(exc, prefix)}") from None


class EndpointState(BaseModel):
    """Databricks ``state``: whether the endpoint serves, and whether a config is pending."""

    ready: Literal["READY", "NOT_READY"] = "NOT_READY"
    config_update: ConfigUpdate = "NOT_UPDATING"


class EndpointInfo(BaseModel):
    """What ``GET /api/2.0/serving-endpoints/{name}`` returns."""

    name: str
    config: EndpointCoreConfig | None = None
    pending_config: EndpointCoreConfig | None = None
    state: EndpointState = Field(default_factory=EndpointState)
    creator: str = "local"
    creation_timestamp: int = Field(description="Milliseconds since the epoch.")
    last_updated_timestamp: int = Field(description="Milliseconds since the epoch.")


class Platform(abc.ABC):
    """Where endpoints run, as the endpoint manager, the pipeline and the CLI see it.

    One implementation per place: :class:`~cvdeploy.platforms.client.PlatformClient` (a
    cvdeploy control plane: the embedded local platform or a ``cvdeploy up``) and the
    Databricks backend (``databricks-sdk``); :func:`cvdeploy.platforms.connect.connect` picks
    one. Every method raises :class:`EndpointNotFoundError` for an unknown endpoint and
    :class:`ConflictError` when an update is already in progress. Instances are context
    managers that release their connections on exit.
    """

    #: What the platform is, for messages: "cvdeploy", "databricks", ...
    kind: str = "platform"

    def __enter__(self) -> Platform:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional: not every backend holds connections
        """Release connections."""

    @abc.abstractmethod
    def create_endpoint(self, spec: EndpointSpec | Mapping[str, Any]) -> EndpointInfo:
        """Create the endpoint and start serving it; returns at once with ``config_update``
        IN_PROGRESS. Raises :class:`EndpointAlreadyExistsError` for a taken name."""

    @abc.abstractmethod
    def get_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint's current config, pending config and state."""

    @abc.abstractmethod
    def list_endpoints(self) -> list[EndpointInfo]:
        """Every endpoint."""

    @abc.abstractmethod
    def update_config(
        self, name: str, config: EndpointCoreConfig | Mapping[str, Any]
    ) -> EndpointInfo:
        """Start a zero-downtime switch to ``config``; the old config serves until it is ready."""

    @abc.abstractmethod
    def delete_endpoint(self, name: str) -> None:
        """Stop serving and forget the endpoint."""

    @abc.abstractmethod
    def wait_not_updating(
        self,
        name: str,
        timeout: float = 300,
        poll_s: float = 0.25,
        on_poll: Any = None,
    ) -> EndpointInfo:
        """Poll until the config update is over and the endpoint is ready.

        Raises:
            ModelLoadError: the update failed (the previous config keeps serving); the message
                carries the platform's reason (build logs, load error).
            DeadlineExceededError: not ready after ``timeout`` seconds.
        """

    @abc.abstractmethod
    def stats(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """Live figures: ``state``, ``overall`` and per served entity ``last_minute``
        (requests, error_rate, latency_ms), ``requests_total`` and ``errors_total``."""

    @abc.abstractmethod
    def metrics(self, name: str) -> str:
        """The endpoint's metrics in Prometheus text format."""

    @abc.abstractmethod
    def logs(self, name: str, served_model_name: str) -> str:
        """The recent log of a served model."""

    @abc.abstractmethod
    def query(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Score ``payload`` (an MLflow/Databricks scoring body) on the endpoint's traffic split;
        returns ``{"predictions": ...}``."""

    def predict_images(
        self,
        name: str,
        images: Any,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Score encoded images (JPEG, PNG, ...) sent base64 in ``inputs``; returns
        ``{"predictions": [...]}``."""
        import base64

        from cvdeploy.errors import InputError

        if not images:
            raise InputError("predict_images needs at least one image")
        inputs = [base64.b64encode(bytes(image)).decode("ascii") for image in images]
        body: dict[str, Any] = {"inputs": inputs}
        if params:
            body["params"] = dict(params)
        return self.query(name, body)

    def rollback(self, name: str, to_revision: int | None = None) -> EndpointInfo:
        """Switch back to an earlier config revision, where the platform keeps them."""
        from cvdeploy.errors import NotAvailableError

        raise NotAvailableError(
            f"{self.kind} keeps no config revisions to roll back to; update the endpoint to the "
            "previous version instead (ModelServer.update_endpoint)"
        )

    def revisions(self, name: str) -> list[dict[str, Any]]:
        """The endpoint's config revisions, where the platform keeps them."""
        from cvdeploy.errors import NotAvailableError

        raise NotAvailableError(f"{self.kind} keeps no config revisions")
