"""Seed 001's endpoint management behind ``ModelServer(model_name=...)``.

:class:`EndpointManager` turns the seed's calls into Databricks-shaped requests to a
:class:`~cvdeploy.platforms.base.Platform`: Databricks Model Serving for a workspace URL, the
``cvdeploy up`` at any other URL, or, with none given, the embedded local platform, started on
demand as a detached daemon that outlives the script (DESIGN "Decisions").

``create_endpoint`` on a name that already exists switches that endpoint to this model version
(like ``kubectl apply``), so a script that creates its endpoint can be run again.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cvdeploy.config import Config
from cvdeploy.errors import DeadlineExceededError, InputError
from cvdeploy.monitoring.cost import cost_estimate
from cvdeploy.platforms.base import (
    EndpointAlreadyExistsError,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    Platform,
)
from cvdeploy.platforms.connect import connect, is_databricks_host, local_url, resolve_platform
from cvdeploy.platforms.instance_types import lookup
from cvdeploy.platforms.traffic import entity_name_for, next_config

# is_databricks_host lives in cvdeploy.platforms.connect; re-exported for older imports.
__all__ = ["EndpointManager", "is_databricks_host"]


class EndpointManager:
    """Create, update, watch, roll back and query endpoints serving one registered model.

    Args:
        model_name: The registered model the endpoints serve.
        model_version: The version ``create_endpoint`` serves.
        workspace_url: The platform's base URL; None starts (or finds) the local daemon.
        token: Bearer token for the platform.
        config: Defaults for ``create_endpoint`` (the ``deployment.endpoint`` section).
        timeout: Seconds to wait for an endpoint to become ready.
        platform: ``"local"``, ``"databricks"`` or ``"ray"``; default: decided by
            ``workspace_url`` (see :mod:`cvdeploy.platforms.connect`).
    """

    def __init__(
        self,
        model_name: str,
        model_version: str = "1",
        *,
        workspace_url: str | None = None,
        token: str | None = None,
        config: Config | None = None,
        timeout: float = 600.0,
        platform: str | None = None,
    ) -> None:
        self.platform = resolve_platform(workspace_url, platform)
        self.model_name = model_name
        self.model_version = str(model_version)
        self.workspace_url = workspace_url
        self.token = token
        self.timeout = timeout
        self._config = config
        self._url: str | None = None
        self.last_endpoint: str | None = None

    @property
    def url(self) -> str:
        """The platform's base URL (starting the local daemon on first use if none was given)."""
        if self._url is None:
            self._url = (
                local_url(self.workspace_url) if self.platform == "local" else self.workspace_url
            ) or ""
        return self._url

    def connect(self) -> Platform:
        """A new connection to the platform; use it as a context manager."""
        return connect(self.url, self.token, platform=self.platform)

    @contextmanager
    def _client(self) -> Iterator[Platform]:
        # A client per call: ModelServer has no close() a seed script would call, and an httpx
        # client left to the garbage collector leaks its sockets.
        with self.connect() as client:
            yield client

    # -- the seed's methods -------------------------------------------------------------------

    def create_endpoint(
        self,
        endpoint_name: str,
        instance_type: str | None = None,
        min_instances: int | None = None,
        max_instances: int | None = None,
        scale_to_zero: bool | None = None,
    ) -> str:
        """Serve this model version at ``endpoint_name`` and wait until it is ready.

        Defaults come from the config's ``deployment.endpoint`` section (the seed's values:
        Standard_DS3_v2, 1 to 5 instances, scale to zero).
        """
        defaults = (self._config or Config()).deployment.endpoint
        instance = lookup(instance_type or defaults.instance_type)
        low = defaults.min_instances if min_instances is None else min_instances
        high = defaults.max_instances if max_instances is None else max_instances
        to_zero = defaults.scale_to_zero if scale_to_zero is None else scale_to_zero
        entity = {
            "entity_name": self.model_name,
            "entity_version": self.model_version,
            "workload_type": instance.workload_type,
            "workload_size": instance.workload_size,
            "instance_type": instance.name,
            "scale_to_zero_enabled": bool(to_zero),
            "min_replicas": low,
            "max_replicas": high,
        }
        spec = EndpointSpec.parse({"name": endpoint_name, "config": {"served_entities": [entity]}})
        with self._client() as client:
            try:
                client.create_endpoint(spec)
            except EndpointAlreadyExistsError:
                client.update_config(endpoint_name, spec.config)
            self._wait(client, endpoint_name, f"starting endpoint '{endpoint_name}'")
        self.last_endpoint = endpoint_name
        return endpoint_name

    def update_endpoint(
        self, endpoint_name: str, new_model_version: str | int, traffic_percentage: int = 100
    ) -> None:
        """Give ``new_model_version`` ``traffic_percentage`` percent; under 100 the version
        serving most of the traffic keeps the rest (a canary)."""
        with self._client() as client:
            current = client.get_endpoint(endpoint_name)
            if current.config is None:
                raise EndpointNotFoundError(
                    f"endpoint '{endpoint_name}' has never served a config; wait for its creation"
                )
            config = next_config(
                current.config, self.model_name, str(new_model_version), traffic_percentage
            )
            client.update_config(endpoint_name, config)
            what = f"switching '{endpoint_name}' to version {new_model_version}"
            self._wait(client, endpoint_name, what)
        self.last_endpoint = endpoint_name

    def monitor_endpoint(self, endpoint_name: str, window_s: float = 60.0) -> dict[str, Any]:
        """State, versions, replicas, traffic, latency, throughput and error rate.

        Latency is in milliseconds and ``error_rate`` a fraction (DESIGN "Decisions"); figures
        cover the last ``window_s`` seconds (at most 300).
        """
        with self._client() as client:
            stats = client.stats(endpoint_name, window_s)
        versions: dict[str, Any] = {}
        for name, entity in stats.get("served_entities", {}).items():
            window = entity.get("last_minute", {})
            versions[name] = {
                "model": entity.get("model"),
                "version": entity.get("version"),
                "traffic_percentage": entity.get("traffic_percentage"),
                "replicas": entity.get("ready_replicas", 0),
                "requests": window.get("requests", 0),
                "throughput_rps": window.get("throughput_rps", 0.0),
                "error_rate": window.get("error_rate", 0.0),
                "latency_ms": window.get("latency_ms"),
                "autoscaler": entity.get("autoscaler"),
                "instance_type": entity.get("instance_type"),
                "replica_hours": entity.get("replica_hours", 0.0),
            }
        overall = stats.get("overall", {})
        state = stats.get("state", {})
        prices = (self._config or Config()).monitoring.cost_per_hour
        return {
            "endpoint": endpoint_name,
            "state": state.get("ready"),
            "config_update": state.get("config_update"),
            "revision": stats.get("revision"),
            "window_s": overall.get("window_s", window_s),
            "requests": overall.get("requests", 0),
            "throughput_rps": overall.get("throughput_rps", 0.0),
            "error_rate": overall.get("error_rate", 0.0),
            "latency_ms": overall.get("latency_ms"),
            "replicas": sum(v["replicas"] for v in versions.values()),
            "traffic": {n: v["traffic_percentage"] for n, v in versions.items()},
            "versions": versions,
            "cost": cost_estimate(versions, prices),
        }

    def rollback_endpoint(self, endpoint_name: str, to_revision: int | None = None) -> None:
        """Re-apply the previous revision (or ``to_revision``) and wait until it serves."""
        with self._client() as client:
            client.rollback(endpoint_name, to_revision)
            self._wait(client, endpoint_name, f"rolling back '{endpoint_name}'")
        self.last_endpoint = endpoint_name

    def delete_endpoint(self, endpoint_name: str) -> None:
        with self._client() as client:
            client.delete_endpoint(endpoint_name)
        if self.last_endpoint == endpoint_name:
            self.last_endpoint = None

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo:
        with self._client() as client:
            return client.get_endpoint(endpoint_name)

    def predict(
        self, x: Any, endpoint_name: str | None = None, **params: Any
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Score images on the endpoint this object last created or updated (or the named one).

        ``x`` is one image (path, encoded bytes, HWC uint8 array or PIL image) or a list; one
        image gives one prediction dict, a list gives a list.
        """
        name = endpoint_name or self.last_endpoint
        if name is None:
            raise InputError(
                "no endpoint to query: call create_endpoint first, or pass endpoint_name"
            )
        single = not isinstance(x, (list, tuple))
        images = [_encode(item) for item in ([x] if single else list(x))]
        with self._client() as client:
            predictions = client.predict_images(name, images, params or None)["predictions"]
        return predictions[0] if single else list(predictions)

    # -- helpers ------------------------------------------------------------------------------

    def _wait(self, client: Platform, endpoint_name: str, what: str) -> EndpointInfo:
        with _progress(what) as show:
            try:
                return client.wait_not_updating(endpoint_name, timeout=self.timeout, on_poll=show)
            except DeadlineExceededError as exc:
                raise DeadlineExceededError(
                    f"{what}: not ready after {self.timeout:g} s ({exc}); see "
                    f"`cvdeploy endpoints logs {endpoint_name} "
                    f"{entity_name_for(self.model_name, self.model_version)}`"
                ) from None


@contextmanager
def _progress(what: str) -> Iterator[Any]:
    """A spinner on an interactive terminal; nothing in scripts, CI and notebooks' logs."""
    started = time.monotonic()
    if not sys.stderr.isatty():
        yield lambda info: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"{what}...") as status:

        def show(info: EndpointInfo) -> None:
            elapsed = time.monotonic() - started
            status.update(f"{what}: {info.state.config_update.lower()} ({elapsed:.0f} s)")

        yield show


def _encode(item: Any) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        path = Path(os.fspath(item))
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        return path.read_bytes()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    from PIL import Image

    if isinstance(item, Image.Image):
        image = item
    else:
        import numpy as np

        array = np.asarray(item)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise InputError(
                f"cannot send an array of shape {array.shape} and dtype {array.dtype}; give "
                "HWC uint8 images, paths or encoded bytes"
            )
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
