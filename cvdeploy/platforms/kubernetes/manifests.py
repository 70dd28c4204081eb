"""Kubernetes objects for one model: Deployment, Service and HorizontalPodAutoscaler.

Plain dicts, rendered with ``yaml.safe_dump``: nothing to install beyond PyYAML, and the output
is what ``kubectl apply -f`` reads. Where each value comes from:

- replicas, HPA bounds: ``deployment.scaling.min_replicas`` / ``max_replicas``;
- HPA CPU target: ``deployment.scaling.target_cpu`` (percent of the CPU request);
- CPU and memory requests = limits: ``deployment.endpoint.instance_type`` through
  :func:`cvdeploy.platforms.instance_types.lookup`;
- container port, workers: ``deployment.server.port`` / ``workers``;
- probes: cvdeploy's KServe v2 health routes.
"""

from __future__ import annotations

from typing import Any

import yaml

from cvdeploy.platforms.kubernetes.dockerfile import HEALTH_PATH, LIVE_PATH, USER_ID
from cvdeploy.platforms.kubernetes.plan import MODELS_DIR, BuildPlan

__all__ = [
    "SERVICE_PORT",
    "container",
    "deployment",
    "dump_all",
    "horizontal_pod_autoscaler",
    "pod_volumes",
    "service",
]

#: The Service's port; it forwards to the container's named port ``http``.
SERVICE_PORT = 80


def _metadata(plan: BuildPlan, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": plan.namespace, "labels": dict(plan.labels)}


def _probe(path: str, *, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def container(plan: BuildPlan, name: str = "cvdeploy") -> dict[str, Any]:
    """The serving container, shared by the Deployment and the InferenceService."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plan.env.items()]
    if plan.token_required:
        env.append(
            {
                "name": "CVDEPLOY_DEPLOYMENT__SERVER__TOKEN",
                "valueFrom": {"secretKeyRef": {"name": f"{plan.app}-token", "key": "token"}},
            }
        )
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if not plan.bake:
        mounts.append(
            {"name": "models", "mountPath": f"{MODELS_DIR}/{plan.served.name}", "readOnly": True}
        )
    return {
        "name": name,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        # The image's CMD, spelt out so the manifest alone says what runs.
        "command": plan.serve_args[:1],
        "args": plan.serve_args[1:],
        "ports": [{"name": "http", "containerPort": plan.port, "protocol": "TCP"}],
        "env": env,
        "resources": plan.resources.as_k8s(),
        # A model takes seconds to load and warm: the startup probe holds the others off
        # (up to 5 minutes) so a slow load is not killed as a dead process.
        "startupProbe": _probe(HEALTH_PATH, period=5, failures=60),
        "readinessProbe": _probe(HEALTH_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVE_PATH, period=10, failures=3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "allowPrivilegeEscalation": False,
            # The server writes only under /tmp (an emptyDir), so the image can be read-only.
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def pod_volumes(plan: BuildPlan) -> list[dict[str, Any]]:
    """``/tmp`` as an emptyDir (Prometheus multiprocess files, $CVDEPLOY_HOME), plus models."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if not plan.bake:
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": f"{plan.app}-models", "readOnly": True},
            }
        )
    return volumes


def deployment(plan: BuildPlan) -> dict[str, Any]:
    """The Deployment: ``scaling.min_replicas`` pods of the serving container."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(plan, plan.app),
        "spec": {
            "replicas": plan.min_replicas,
            "selector": {"matchLabels": dict(plan.selector)},
            # New pods must be ready before old ones go: the rollout never drops capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": dict(plan.labels)},
                "spec": {
                    "automountServiceAccountToken": False,
                    # Longer than the server's drain of in-flight requests on SIGTERM.
                    "terminationGracePeriodSeconds": 30
                    + int(plan.serve_config["deployment"]["server"]["timeout"]),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": USER_ID,
                        "fsGroup": USER_ID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container(plan)],
                    "volumes": pod_volumes(plan),
                },
            },
        },
    }


def service(plan: BuildPlan) -> dict[str, Any]:
    """A ClusterIP Service: port 80 to the pods' ``http`` port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(plan, plan.app),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(plan.selector),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def horizontal_pod_autoscaler(plan: BuildPlan) -> dict[str, Any]:
    """``autoscaling/v2`` HPA from ``deployment.scaling``: CPU utilisation of the request."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(plan, plan.app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.app},
            "minReplicas": plan.min_replicas,
            "maxReplicas": plan.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": plan.target_cpu},
                    },
                }
            ],
        },
    }


def dump_all(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream, keys in the order written (kubectl's)."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
