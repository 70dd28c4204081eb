"""Build a whole platform endpoint: one image and Deployment per served entity, one Service.

An endpoint on the local platform (or Databricks' API shape) serves registered model versions
(served entities) with a traffic split. On Kubernetes each served entity becomes its own image
and Deployment + HPA (its replica bounds, instance type and batching); one Service selects the
pods of every entity through ``app.kubernetes.io/part-of``. Every pod serves under the
endpoint's name, as the platform's gateway does, so ``/v2/models/<endpoint>/infer`` works
whichever pod answers.

A plain Service spreads requests over ready pods, not by percentage. The exact split is KServe's
``canaryTrafficPercent``, which splits two revisions of one InferenceService: the stable entity
(the larger share) is written as ``kserve/1-stable.yaml`` and the canary (the smaller share) as
``kserve/2-canary.yaml`` with its percentage. More than two entities with traffic cannot be
said in KServe; then no InferenceService is written and the build says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.config import Config
from cvdeploy.platforms.kubernetes.manifests import SERVICE_PORT
from cvdeploy.platforms.kubernetes.plan import BuildPlan, k8s_name, label_value, make_plan

if TYPE_CHECKING:
    from cvdeploy.platforms.base import EndpointCoreConfig

__all__ = ["EndpointBuildPlan", "endpoint_service", "plan_for_endpoint"]


@dataclass(frozen=True)
class EndpointBuildPlan:
    """One :class:`BuildPlan` per served entity, plus what they share."""

    endpoint: str
    #: The endpoint's Kubernetes name (the Service and the InferenceService).
    app: str
    namespace: str
    plans: tuple[BuildPlan, ...]
    #: Percent of traffic per served entity (by its plan's ``app``), from the routes.
    traffic: dict[str, int]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kserve_pair(self) -> tuple[BuildPlan, BuildPlan | None] | None:
        """``(stable, canary)`` for KServe, canary None with one routed entity; None if > 2."""
        routed = [p for p in self.plans if self.traffic.get(p.app, 0) > 0]
        if len(routed) > 2:
            return None
        # The larger share is the rolled-out revision; on a tie, the later entity is the canary.
        ordered = sorted(routed, key=lambda p: -self.traffic[p.app])
        if len(ordered) == 1:
            return ordered[0], None
        return ordered[0], ordered[1]


def plan_for_endpoint(
    endpoint: str,
    core: EndpointCoreConfig,
    config: Config,
    *,
    image: str | None = None,
    namespace: str = "default",
    bake: bool = True,
    wheel: Path | None = None,
    registry_uri: str | None = None,
) -> EndpointBuildPlan:
    """The plans for every served entity of ``endpoint`` (its current config ``core``).

    Args:
        image: An image repository; each entity's image is ``<image>:<entity name>``.

    Raises:
        RegistryError: A served version is missing from the registry or fails its check.
        ConfigError: As :func:`~cvdeploy.platforms.kubernetes.plan.plan_for_model`.
    """
    from cvdeploy.registry import Registry

    registry = Registry(registry_uri)
    app = k8s_name(endpoint)
    routes = {route.served_model_name: route.traffic_percentage for route in core.routes}
    repository = _repository(image) if image else None
    plans: list[BuildPlan] = []
    traffic: dict[str, int] = {}
    notes: list[str] = []
    for entity in core.served_entities:
        low, high = entity.replica_bounds
        if low == 0:
            notes.append(
                f"served entity {entity.name} scales to zero on the platform; a Deployment and "
                "HPA keep at least one replica (scale to zero needs KServe's Serverless mode)"
            )
        entity_app = k8s_name(f"{endpoint}-{entity.name}")
        plan = make_plan(
            config,
            source=registry.model_path(entity.entity_name, entity.entity_version),
            # Every pod answers under the endpoint's name, as the platform's gateway does.
            served_name=endpoint,
            version=entity.entity_version,
            app=entity_app,
            image=f"{repository}:{label_value(entity.name)}" if repository else None,
            namespace=namespace,
            bake=bake,
            replicas=(max(1, low), max(1, high)),
            wheel=wheel,
            instance_type=entity.instance_type,
            batching=entity.batching,
            part_of=app,
        )
        plans.append(plan)
        traffic[entity_app] = routes.get(entity.name, 0)
        notes.extend(n for n in plan.notes if n not in notes)
    built = EndpointBuildPlan(endpoint, app, k8s_name(namespace), tuple(plans), traffic)
    if built.kserve_pair is None:
        notes.append(
            "more than two served entities get traffic; KServe splits only a stable and a canary "
            "revision, so no InferenceService was written"
        )
    if len(plans) > 1:
        notes.append(
            "the Service spreads requests over ready pods, not by the routes' percentages; use "
            "the KServe manifests for the exact split"
        )
    return EndpointBuildPlan(
        built.endpoint, app, built.namespace, built.plans, traffic, tuple(notes)
    )


def endpoint_service(built: EndpointBuildPlan) -> dict[str, Any]:
    """A ClusterIP Service over the pods of every served entity of the endpoint."""
    selector = {"app.kubernetes.io/part-of": built.app, "app.kubernetes.io/component": "predictor"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": built.app,
            "namespace": built.namespace,
            "labels": {
                "app.kubernetes.io/name": built.app,
                **selector,
                "app.kubernetes.io/managed-by": "cvdeploy",
            },
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def _repository(image: str) -> str:
    """``image`` without its tag: ``reg:5000/vision/det:1`` gives ``reg:5000/vision/det``."""
    head, slash, last = image.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}"
