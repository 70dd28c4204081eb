"""Databricks Model Serving as a :class:`~cvdeploy.platforms.base.Platform`, over databricks-sdk.

Every call goes through ``WorkspaceClient.serving_endpoints``; the spec is converted by
:mod:`.mapping`, errors by :mod:`.errors`, the metrics export by :mod:`.metrics`. The same
code runs against cvdeploy's own control plane, which speaks the same REST API.

No retry storms: the SDK's own retries (connection failures, 429, 503) stop after
``retry_timeout_s`` (default the smaller of ``timeout`` and 30 s), ``wait_not_updating`` polls
at most every 2 s, and the SDK's one-off host-metadata probe at connection gets one second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlparse

from cvdeploy._version import __version__
from cvdeploy.errors import (
    ConfigError,
    CVDeployError,
    InputError,
)
from cvdeploy.platforms.base import (
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    Platform,
    poll_until_ready,
)
from cvdeploy.platforms.databricks.errors import databricks_errors
from cvdeploy.platforms.databricks.mapping import (
    DatabricksConfig,
    config_to_databricks,
    info_from_databricks,
    spec_to_databricks,
    validate_endpoint_name,
)
from cvdeploy.platforms.databricks.metrics import parse_export
from cvdeploy.platforms.databricks.stats import StatsTracker

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ServingEndpointDetailed

__all__ = ["BuildLogSource", "DatabricksPlatform", "failure_message"]

#: The scoring body keys passed through to ``/serving-endpoints/{name}/invocations``.
QUERY_KEYS = ("inputs", "dataframe_split", "dataframe_records", "instances", "params")
_FAILED = ("DEPLOYMENT_FAILED", "DEPLOYMENT_ABORTED")
_LOG_LINES = 20
_LOG_CHARS = 2000


class DatabricksPlatform(Platform):
    """Manage and query Databricks Model Serving endpoints.

    Args:
        url: The workspace URL, e.g. ``https://adb-123.4.azuredatabricks.net`` (or any URL
            that speaks the API, such as a ``cvdeploy up``).
        token: A personal access token; None lets databricks-sdk find credentials (env
            ``DATABRICKS_TOKEN``, ``~/.databrickscfg``, OAuth).
        timeout: Seconds one HTTP request may take.
        retry_timeout_s: Seconds the SDK keeps retrying a failing request (connection
            refused, 429, 503); default the smaller of ``timeout`` and 30.
        min_poll_s: The shortest interval ``wait_not_updating`` polls at.
        clock: The clock the once-a-minute totals rule reads (tests pass a fake one).
    """

    kind = "databricks"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retry_timeout_s: float | None = None,
        min_poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"workspace_url {url!r} is not an http(s) URL; give the workspace's address, "
                "e.g. https://adb-1234567890123456.7.azuredatabricks.net"
            )
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        bound = min(timeout, 30.0) if retry_timeout_s is None else retry_timeout_s
        self.retry_timeout_s = max(1, math.ceil(bound))
        self.min_poll_s = min_poll_s
        self._token = token
        self._ws: WorkspaceClient | None = None
        self._tracker = StatsTracker(clock)
        # The configs this object sent, to name the entities of a failed update whose pending
        # config the server no longer shows.
        self._sent: dict[str, DatabricksConfig] = {}

    # -- connection ---------------------------------------------------------------------------

    @property
    def workspace(self) -> WorkspaceClient:
        """The SDK client, built on first use (building it talks to the workspace)."""
        if self._ws is None:
            with databricks_errors(self.url, "connect"):
                self._ws = self._connect()
        return self._ws

    def _connect(self) -> WorkspaceClient:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        options: dict[str, Any] = {
            "host": self.url,
            # Config() probes the host's metadata once; one second is enough to learn nothing
            # from an unreachable host, and a personal access token needs none of it.
            "retry_timeout_seconds": 1,
            "http_timeout_seconds": min(self.timeout, 10.0),
            "product": "cvdeploy",
            "product_version": __version__,
        }
        if self._token:
            options.update(token=self._token, auth_type="pat")
        config = Config(**options)
        config.retry_timeout_seconds = self.retry_timeout_s
        config.http_timeout_seconds = self.timeout
        return WorkspaceClient(config=config)

    def close(self) -> None:
        """Close the SDK's HTTP session (the SDK itself has no close)."""
        if self._ws is None:
            return
        inner = getattr(self._ws.api_client, "_api_client", None)
        session = getattr(inner, "_session", None)
        if session is not None:
            session.close()
        self._ws = None

    def __enter__(self) -> DatabricksPlatform:
        return self

    # -- endpoints ----------------------------------------------------------------------------

    def create_endpoint(self, spec: EndpointSpec | Mapping[str, Any]) -> EndpointInfo:
        """Create the endpoint (returns at once, ``config_update`` IN_PROGRESS).

        Raises:
            ConfigError: a bad name or a field Databricks cannot take, before any call.
            EndpointAlreadyExistsError: the name is taken.
        """
        from databricks.sdk.service.serving import EndpointCoreConfigInput, RateLimit

        if not isinstance(spec, EndpointSpec):
            validate_endpoint_name(spec.get("name"))  # type: ignore[arg-type]
            spec = EndpointSpec.parse(spec)
        name, body = spec_to_databricks(spec)
        config = EndpointCoreConfigInput.from_dict({"name": name, **body.config})
        limits = [RateLimit.from_dict(r) for r in body.rate_limits] or None
        with databricks_errors(self.url, f"create endpoint '{name}'", creating=True):
            waiter = self.workspace.serving_endpoints.create(
                name=name, config=config, rate_limits=limits
            )
        self._sent[name] = body
        # The SDK annotates Wait.response as the builtin any().
        response = cast("ServingEndpointDetailed | None", waiter.response)
        if response is None or response.name is None:
            return self.get_endpoint(name)
        return info_from_databricks(response.as_dict())

    def get_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint's config, pending config and state."""
        return info_from_databricks(self._detailed(name))

    def list_endpoints(self) -> list[EndpointInfo]:
        """Every endpoint, read in full (one ``get`` each: the list has no traffic split).

        Endpoints cvdeploy cannot describe (external or foundation models) are listed with
        their state and no config.
        """
        with databricks_errors(self.url, "list endpoints"):
            names = [e.name for e in self.workspace.serving_endpoints.list() if e.name]
        infos = []
        for name in names:
            try:
                data = self._detailed(name)
            except EndpointNotFoundError:
                continue  # deleted since it was listed
            try:
                infos.append(info_from_databricks(data))
            except CVDeployError:
                bare = {k: v for k, v in data.items() if k not in ("config", "pending_config")}
                infos.append(info_from_databricks(bare))
        return infos

    def update_config(
        self, name: str, config: EndpointCoreConfig | Mapping[str, Any]
    ) -> EndpointInfo:
        """Start switching to ``config``; the old config serves until the new one is ready.

        Rate limits in ``config`` are set with the endpoint's rate-limits API afterwards; a
        config without them leaves the endpoint's as they are.
        """
        from databricks.sdk.service.serving import RateLimit, ServedEntityInput, TrafficConfig

        validate_endpoint_name(name)
        if not isinstance(config, EndpointCoreConfig):
            config = EndpointCoreConfig.parse(config)
        body = config_to_databricks(config)
        entities = [ServedEntityInput.from_dict(e) for e in body.config["served_entities"]]
        traffic = TrafficConfig.from_dict(body.config["traffic_config"])
        endpoints = self.workspace.serving_endpoints
        with databricks_errors(self.url, f"update endpoint '{name}'"):
            waiter = endpoints.update_config(
                name=name, served_entities=entities, traffic_config=traffic
            )
        self._sent[name] = body
        if body.rate_limits:
            limits = [RateLimit.from_dict(r) for r in body.rate_limits]
            with databricks_errors(self.url, f"set the rate limits of endpoint '{name}'"):
                endpoints.put(name=name, rate_limits=limits)
        # The SDK annotates Wait.response as the builtin any().
        response = cast("ServingEndpointDetailed | None", waiter.response)
        if response is None or response.name is None:
            return self.get_endpoint(name)
        return info_from_databricks(response.as_dict())

    def delete_endpoint(self, name: str) -> None:
        """Stop serving and delete the endpoint."""
        validate_endpoint_name(name)
        with databricks_errors(self.url, f"delete endpoint '{name}'"):
            self.workspace.serving_endpoints.delete(name=name)
        self._sent.pop(name, None)

    # -- waiting ------------------------------------------------------------------------------

    def wait_not_updating(
        self,
        name: str,
        timeout: float = 300,
        poll_s: float = 0.25,
        on_poll: Callable[[EndpointInfo], None] | None = None,
    ) -> EndpointInfo:
        """Poll ``get`` (at most every ``min_poll_s``) until the update is over and it serves.

        Raises:
            ModelLoadError: UPDATE_FAILED (or cancelled); the message has the failed served
                entities' state and the tail of their build logs. The old config keeps serving.
            DeadlineExceededError: still updating after ``timeout`` seconds.
        """

        def fetch() -> tuple[EndpointInfo, dict[str, Any]]:
            data = self._detailed(name)
            return info_from_databricks(data), data

        return poll_until_ready(
            name,
            fetch,
            timeout=timeout,
            poll_s=max(poll_s, self.min_poll_s),
            on_poll=on_poll,
            failure=lambda data: failure_message(name, data, self._sent.get(name), self),
            where=" on Databricks",
            hint="wait longer, or read its build logs (DatabricksPlatform.build_logs)",
        )

    # -- observing ----------------------------------------------------------------------------

    def stats(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """Live figures from the metrics export (one-minute resolution on Databricks)."""
        data = self._detailed(name)
        info = info_from_databricks(data)
        export = parse_export(self.metrics(name), endpoint=name)
        deployed = {
            str(e.get("name")): (e.get("state") or {}).get("deployment") == "DEPLOYMENT_READY"
            for e in (data.get("config") or {}).get("served_entities") or []
        }
        return self._tracker.stats(info, export, window_s, deployed)

    def metrics(self, name: str) -> str:
        """The endpoint's metrics export (Prometheus text)."""
        validate_endpoint_name(name)
        with databricks_errors(self.url, f"export the metrics of endpoint '{name}'"):
            exported = self.workspace.serving_endpoints.export_metrics(name=name)
            contents = exported.contents
            if contents is None:
                return ""
            try:
                raw = contents.read()
            finally:
                contents.close()
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)

    def logs(self, name: str, served_model_name: str) -> str:
        """The served entity's recent server log."""
        validate_endpoint_name(name)
        action = f"read the logs of '{served_model_name}' on endpoint '{name}'"
        with databricks_errors(self.url, action):
            return self.workspace.serving_endpoints.logs(
                name=name, served_model_name=served_model_name
            ).logs

    def build_logs(self, name: str, served_model_name: str) -> str:
        """The served entity's container build log (why an update failed)."""
        validate_endpoint_name(name)
        action = f"read the build logs of '{served_model_name}' on endpoint '{name}'"
        with databricks_errors(self.url, action):
            return self.workspace.serving_endpoints.build_logs(
                name=name, served_model_name=served_model_name
            ).logs

    # -- scoring ------------------------------------------------------------------------------

    def query(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Score a Databricks/MLflow body (``inputs``, ``dataframe_split``, ``dataframe_records``,
        ``instances``, with optional ``params``) on the endpoint's traffic split."""
        from databricks.sdk.service.serving import DataframeSplitInput

        validate_endpoint_name(name)
        unknown = sorted(set(payload) - set(QUERY_KEYS))
        if unknown or not set(payload) & set(QUERY_KEYS[:4]):
            raise InputError(
                f"a query body needs one of {', '.join(QUERY_KEYS[:4])} (plus optional params); "
                f"got {', '.join(sorted(payload)) or 'nothing'}"
            )
        endpoints = self.workspace.serving_endpoints
        with databricks_errors(self.url, f"query endpoint '{name}'"):
            if "params" in payload:
                # The SDK's query() has no MLflow `params`; the same POST carries them.
                answer = self.workspace.api_client.do(
                    "POST",
                    f"/serving-endpoints/{name}/invocations",
                    body=dict(payload),
                    headers={"Accept": "application/json", "Content-Type": "application/json"},
                )
                return dict(answer) if isinstance(answer, dict) else {"predictions": answer}
            split = payload.get("dataframe_split")
            response = endpoints.query(
                name=name,
                inputs=payload.get("inputs"),
                dataframe_split=None if split is None else DataframeSplitInput.from_dict(split),
                dataframe_records=payload.get("dataframe_records"),
                instances=payload.get("instances"),
            )
        return response.as_dict()

    # -- plumbing -----------------------------------------------------------------------------

    def _detailed(self, name: str) -> dict[str, Any]:
        validate_endpoint_name(name)
        with databricks_errors(self.url, f"get endpoint '{name}'"):
            # The raw JSON, not the SDK's dataclass: the dataclass drops fields it does not
            # know, such as the replica bounds a cvdeploy control plane answers with.
            data = self.workspace.api_client.do(
                "GET",
                f"/api/2.0/serving-endpoints/{name}",
                headers={"Accept": "application/json"},
            )
        return dict(data) if isinstance(data, dict) else {}


class BuildLogSource(Protocol):
    """What :func:`failure_message` reads build logs from (a :class:`DatabricksPlatform`)."""

    def build_logs(self, name: str, served_model_name: str) -> str: ...


def failure_message(
    name: str,
    data: Mapping[str, Any],
    sent: DatabricksConfig | None,
    source: BuildLogSource,
) -> str:
    """Why endpoint ``name``'s update failed: the failed served entities' state messages and the
    tail of their build logs.

    The failed entities are those of ``pending_config`` in a failed state (all of them if none
    says), else those of the config this object ``sent`` that the serving config lacks.
    """
    pending = (data.get("pending_config") or {}).get("served_entities") or []
    failed = [e for e in pending if (e.get("state") or {}).get("deployment") in _FAILED]
    if not failed:
        failed = list(pending)
    if not failed and sent is not None:
        serving = {e.get("name") for e in (data.get("config") or {}).get("served_entities") or []}
        failed = [e for e in sent.config["served_entities"] if e["name"] not in serving]
    parts = [
        f"endpoint '{name}': the config update failed; the previous config, if any, keeps serving"
    ]
    for entity in failed[:3]:
        entity_name = str(entity.get("name"))
        said = (entity.get("state") or {}).get("deployment_state_message")
        parts.append(f"served entity '{entity_name}'" + (f": {said}" if said else ""))
        try:
            logs = source.build_logs(name, entity_name)
        except CVDeployError as exc:
            parts.append(f"(its build logs could not be read: {exc.message})")
            continue
        tail = "\n".join(logs.strip().splitlines()[-_LOG_LINES:])[-_LOG_CHARS:]
        parts.append(f"build logs of '{entity_name}' (last lines):\n{tail}" if tail else "")
    if not failed:
        parts.append("Databricks named no failed served entity; see the endpoint's events")
    return "; ".join(p for p in parts if p)
