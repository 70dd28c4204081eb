"""Containers and Kubernetes: ``cvdeploy build`` writes a Dockerfile and manifests for a model.

- :mod:`~cvdeploy.platforms.kubernetes.plan`: every value the files carry, decided once;
- :mod:`~cvdeploy.platforms.kubernetes.requirements`: the pinned dependency closure;
- :mod:`~cvdeploy.platforms.kubernetes.dockerfile`: the image;
- :mod:`~cvdeploy.platforms.kubernetes.manifests`: Deployment, Service, HPA;
- :mod:`~cvdeploy.platforms.kubernetes.kserve`: the KServe ``InferenceService``;
- :mod:`~cvdeploy.platforms.kubernetes.endpoint`: a whole platform endpoint, entity by entity;
- :mod:`~cvdeploy.platforms.kubernetes.context`: writes them all to a folder.

Nothing here talks to a cluster or a container engine: the output is files to review and apply.
"""

from __future__ import annotations

from cvdeploy.platforms.kubernetes.context import BuildResult, write_build, write_endpoint_build
from cvdeploy.platforms.kubernetes.endpoint import EndpointBuildPlan, plan_for_endpoint
from cvdeploy.platforms.kubernetes.plan import BuildPlan, plan_for_model

__all__ = [
    "BuildPlan",
    "BuildResult",
    "EndpointBuildPlan",
    "plan_for_endpoint",
    "plan_for_model",
    "write_build",
    "write_endpoint_build",
]
