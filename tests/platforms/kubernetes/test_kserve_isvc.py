"""The KServe InferenceService: valid against KServe's own CRD schema, v2, canary, replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kubernetes_support import build, load_yaml, validate_kserve

from cvdeploy.errors import ConfigError

SCALING = {"deployment": {"scaling": {"min_replicas": 2, "max_replicas": 6, "target_cpu": 65}}}


def _isvc(out: Path) -> dict[str, Any]:
    return load_yaml(out / "kserve" / "inferenceservice.yaml")


@pytest.mark.parametrize(
    "options",
    [{}, {"canary_percent": 10}, {"bake": False}, {"namespace": "vision"}],
    ids=["default", "canary", "mounted", "namespace"],
)
def test_inference_service_matches_the_kserve_crd(tmp_path: Path, options: dict[str, Any]) -> None:
    validate_kserve(_isvc(build(tmp_path, SCALING, **options).out))


def test_with_a_token_secret_it_still_matches_the_crd(tmp_path: Path) -> None:
    config = {"deployment": {"server": {"token": "t0ken-value"}}}
    validate_kserve(_isvc(build(tmp_path, config).out))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "predictor", "canaryTrafficPercnt"), 10),  # misspelt field
        (("spec", "predictor", "minReplicas"), "two"),  # wrong type
        (("spec", "predictor", "scaleMetric"), "gpu"),  # not in the enum
        (("spec", "predictor", "containers", 0, "resources", "limits", "cpu"), "four"),
    ],
)
def test_the_crd_schema_rejects_bad_manifests(
    tmp_path: Path, path: tuple[str | int, ...], value: Any
) -> None:
    # The schema check has teeth: one wrong field in an otherwise valid manifest fails it.
    document = _isvc(build(tmp_path).out)
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(document)


def test_predictor_is_a_v2_custom_container_with_scaling_from_config(tmp_path: Path) -> None:
    document = _isvc(build(tmp_path, SCALING).out)
    assert document["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = document["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 65)
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    # KServe reads a custom predictor's protocol from its first container's PROTOCOL variable.
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert container["command"] == ["cvdeploy"]
    assert container["args"][0] == "serve"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "canaryTrafficPercent" not in predictor
    # The cluster's default deployment mode applies (KServe cannot switch it later).
    assert "annotations" not in document["metadata"]


def test_canary_percent_sets_canary_traffic(tmp_path: Path) -> None:
    document = _isvc(build(tmp_path, canary_percent=10).out)
    assert document["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "annotations" not in document["metadata"]


@pytest.mark.parametrize("percent", [0, 100, 150, -5])
def test_canary_percent_outside_1_to_99_is_refused(tmp_path: Path, percent: int) -> None:
    with pytest.raises(ConfigError, match="between 1 and 99"):
        build(tmp_path, canary_percent=percent)


def test_inference_service_and_deployment_run_the_same_container(tmp_path: Path) -> None:
    out = build(tmp_path, SCALING).out
    (kserve,) = _isvc(out)["spec"]["predictor"]["containers"]
    (plain,) = load_yaml(out / "k8s" / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    for key in ("image", "command", "args", "ports", "resources", "securityContext"):
        assert kserve[key] == plain[key], key
