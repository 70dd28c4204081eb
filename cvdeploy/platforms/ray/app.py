"""The Ray Serve application of one endpoint: a deployment per served entity and a router.

Imported only where Ray is installed (:mod:`cvdeploy.platforms.ray.platform` imports it
lazily). Each served entity is a deployment that loads its registered model in the
constructor and batches single images across concurrent requests with ``@serve.batch``; the
router is the ingress: it serves ``POST /serving-endpoints/{name}/invocations`` (the gateway's
route), splits traffic by smooth weighted round robin, and counts requests, errors and latency
per served entity so the platform's ``stats`` reads the same figures the local platform gives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from cvdeploy.errors import CVDeployError, InputError
from cvdeploy.monitoring.window import RequestWindow, summarize
from cvdeploy.platforms.base import EndpointCoreConfig
from cvdeploy.platforms.ray.spec import (
    ROUTER_NAME,
    SmoothWeightedRoundRobin,
    batch_settings,
    deployment_options,
    route_weights,
)

__all__ = ["ModelReplica", "Router", "build_app"]

_PARAM_KEYS = ("conf", "iou", "max_det", "top_k")


class ModelReplica:
    """One replica of a served entity: the registered model, batched per image."""

    def __init__(
        self,
        model: str,
        version: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        registry_home: str | None,
        registry_uri: str | None,
    ) -> None:
        from cvdeploy.registry import Registry
        from cvdeploy.runtime import load_model

        registry = Registry(registry_uri, home=registry_home)
        card = registry.card(model, version)
        path = registry.model_path(model, version)
        # One intra-op thread: replicas share the node's cores with each other and with Ray.
        self.model = load_model(path, card.task, labels=card.labels, intra_op_threads=1)
        self.entity = f"{model}-{version}"
        # The spec's batching replaces the decorator's placeholders, per deployment.
        batched: Any = self.predict_one
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def score(self, images: list[bytes], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Predictions for a request's images, each batched with other requests' images."""
        from cvdeploy.runtime import decode_image

        predict = self.model.default_params.merged(
            {k: v for k, v in params.items() if k in _PARAM_KEYS}
        )
        # Decode here, per request, so one bad image fails its own request, not a batch.
        prepared = [self.model.preprocess(decode_image(blob)) for blob in images]
        results = await asyncio.gather(*(self.predict_one((item, predict)) for item in prepared))
        return list(results)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def predict_one(self, items: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        """A batch of ``(prepared image, params)``: one model call per distinct params."""
        out: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[Any, list[int]] = {}
        for i, (_, params) in enumerate(items):
            groups.setdefault(params, []).append(i)
        for params, indices in groups.items():
            results = self.model.predict_prepared([items[i][0] for i in indices], params)
            for i, result in zip(indices, results, strict=True):
                out[i] = result.to_dict()
        return [item if item is not None else {} for item in out]


class Router:
    """The endpoint's ingress: traffic split, HTTP route, and per-entity request figures."""

    def __init__(
        self,
        endpoint: str,
        config: dict[str, Any],
        pending: dict[str, Any] | None,
        created_ms: int,
        entities: dict[str, DeploymentHandle[Any]],
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.pending = pending
        self.created_ms = created_ms
        self.updated_ms = int(time.time() * 1000)
        self.entities = entities
        core = EndpointCoreConfig.parse(config)
        self.picker = SmoothWeightedRoundRobin(route_weights(core))
        self.windows = {name: RequestWindow() for name in entities}

    def describe(self) -> dict[str, Any]:
        """The config this application serves, the one it is switching to (or None), and when
        it was created and last updated."""
        return {
            "config": self.config,
            "pending": self.pending,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }

    def stats(self, window_s: float = 60.0) -> dict[str, Any]:
        """Request figures per served entity and overall, over the last ``window_s`` seconds."""
        core = EndpointCoreConfig.parse(self.config)
        entities: dict[str, Any] = {}
        recent: list[tuple[float, int]] = []
        for route in core.routes:
            entity = next(e for e in core.served_entities if e.name == route.served_model_name)
            window = self.windows[entity.name]
            recent.extend(window.recent(window_s))
            entities[entity.name] = {
                "model": entity.entity_name,
                "version": entity.entity_version,
                "traffic_percentage": route.traffic_percentage,
                "instance_type": entity.instance_type,
                "last_minute": window.summary(window_s),
                "requests_total": window.total,
                "errors_total": window.errors,
            }
        return {"overall": summarize(recent, window_s), "served_entities": entities}

    async def __call__(self, request: Request) -> Response:
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/invocations"):
            return _error(404, "NOT_FOUND", f"use POST {_prefix(self.endpoint)}/invocations")
        try:
            payload = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, "BAD_REQUEST", f"the body is not JSON: {exc}")
        from cvdeploy.serving.protocols.mlflow import extract_images

        try:
            images, params = extract_images(payload)
        except InputError as exc:
            return _error(exc.status_code, exc.error_code, exc.public_message())
        name = self.picker.pick()
        started = time.perf_counter()
        status = 200
        try:
            predictions = await self.entities[name].score.remote(images, dict(params))
        except CVDeployError as exc:
            status = exc.status_code
            return _error(status, exc.error_code, exc.public_message(), name)
        except Exception as exc:  # a replica died or failed: the request fails, Serve heals
            status = 503
            return _error(status, "TEMPORARILY_UNAVAILABLE", f"{type(exc).__name__}: {exc}", name)
        finally:
            self.windows[name].record(time.perf_counter() - started, status)
        body = json.dumps({"predictions": predictions}).encode()
        return Response(body, media_type="application/json", headers={"served-model-name": name})


def _prefix(endpoint: str) -> str:
    return f"/serving-endpoints/{endpoint}"


def _error(status: int, code: str, message: str, entity: str | None = None) -> Response:
    headers = {"served-model-name": entity} if entity else None
    body = json.dumps({"error_code": code, "message": message}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def build_app(
    endpoint: str,
    config: EndpointCoreConfig,
    created_ms: int,
    registry_home: str | None,
    registry_uri: str | None,
    pending: EndpointCoreConfig | None = None,
) -> Any:
    """The Serve application of ``config``: one deployment per served entity, router ingress.

    With ``pending``, the application is the first half of a safe switch: the router keeps
    ``config``'s routes while ``pending``'s served entities start beside the current ones
    (an entity in both takes ``pending``'s settings); once that runs, the platform deploys
    ``pending`` alone. A pending entity that never starts leaves the current config serving.
    """
    replica: Any = serve.deployment(ModelReplica)
    router: Any = serve.deployment(Router)
    entities = {e.name: e for e in config.served_entities}
    if pending is not None:
        entities.update({e.name: e for e in pending.served_entities})
    bound: dict[str, Any] = {}
    for entity in entities.values():
        batch = batch_settings(entity)
        bound[entity.name] = replica.options(**deployment_options(entity)).bind(
            entity.entity_name,
            entity.entity_version,
            batch.max_batch_size,
            batch.batch_wait_timeout_s,
            registry_home,
            registry_uri,
        )
    return router.options(
        name=ROUTER_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0.1}
    ).bind(
        endpoint,
        config.to_json(),
        pending.to_json() if pending is not None else None,
        created_ms,
        bound,
    )
