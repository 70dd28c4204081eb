"""A KServe ``InferenceService`` whose predictor is the cvdeploy image (a custom container).

Why a custom container rather than KServe's ``model.modelFormat: onnx`` route: that route hands
the file to Triton or another runtime, which knows nothing of cvdeploy's image decoding,
letterboxing, NMS and labelled detections. The cvdeploy server already speaks the Open
Inference Protocol (v2), which KServe's router and clients expect.

KServe reads a custom container's protocol from its ``PROTOCOL`` environment variable
(``CustomPredictor.GetProtocol`` in kserve's ``pkg/apis/serving/v1beta1/predictor_custom.go``);
``protocolVersion`` exists only on the ``model`` route. ``canaryTrafficPercent`` sends that share
to the revision being applied and the rest to the last rolled-out one, so apply the stable
version first, then this manifest with ``--canary-percent``. KServe splits revisions only in
Serverless (Knative) mode, its default; in RawDeployment mode the percentage has no effect.
"""

from __future__ import annotations

from typing import Any

from cvdeploy.platforms.kubernetes.manifests import container, pod_volumes
from cvdeploy.platforms.kubernetes.plan import BuildPlan

__all__ = ["API_VERSION", "inference_service"]

API_VERSION = "serving.kserve.io/v1beta1"


def inference_service(
    plan: BuildPlan, *, name: str | None = None, canary_percent: int | None = None
) -> dict[str, Any]:
    """The ``InferenceService`` of ``plan``: v2 protocol, replicas and CPU target from scaling.

    Args:
        name: The service's name; default ``plan.app`` (an endpoint build names it after the
            endpoint, so its stable and canary manifests are two revisions of one service).
        canary_percent: ``canaryTrafficPercent``; default ``plan.canary_percent``.
    """
    # KServe names the predictor container itself; its probes and port are cvdeploy's.
    main = container(plan, name="kserve-container")
    main["env"] = [{"name": "PROTOCOL", "value": "v2"}, *main["env"]]
    canary = plan.canary_percent if canary_percent is None else canary_percent
    predictor: dict[str, Any] = {
        "minReplicas": plan.min_replicas,
        "maxReplicas": plan.max_replicas,
        "scaleMetric": "cpu",
        "scaleTarget": plan.target_cpu,
        "timeout": int(plan.serve_config["deployment"]["server"]["timeout"]),
    }
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    predictor["automountServiceAccountToken"] = False
    predictor["containers"] = [main]
    predictor["volumes"] = pod_volumes(plan)
    labels = dict(plan.labels)
    labels["app.kubernetes.io/name"] = name or plan.app
    # No deploymentMode annotation: the cluster's default applies. KServe cannot switch the
    # mode of an existing service, and a canary needs Serverless, so a stable version built
    # without a canary must not pin RawDeployment.
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": name or plan.app, "namespace": plan.namespace, "labels": labels},
        "spec": {"predictor": predictor},
    }
