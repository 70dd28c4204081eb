"""The Deployment, Service and HPA that ``cvdeploy build`` writes: valid, and true to the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_support import build, load_yaml, validate_k8s

from cvdeploy.errors import ConfigError

SEED_SCALING = {"deployment": {"scaling": {"min_replicas": 2, "max_replicas": 7, "target_cpu": 55}}}


def _objects(out: Path) -> dict[str, dict[str, Any]]:
    return {
        name: load_yaml(out / "k8s" / f"{name}.yaml") for name in ("deployment", "service", "hpa")
    }


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


@pytest.mark.parametrize("bake", [True, False])
def test_objects_pass_strict_kubernetes_validation(tmp_path: Path, bake: bool) -> None:
    result = build(tmp_path, SEED_SCALING, bake=bake)
    for document in _objects(result.out).values():
        validate_k8s(document)


def test_the_validator_rejects_a_misspelt_field(tmp_path: Path) -> None:
    # Proves the strict check has teeth: the same Deployment with one unknown field fails.
    deployment = _objects(build(tmp_path).out)["deployment"]
    deployment["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(deployment)


def test_hpa_follows_the_seed_scaling_section(tmp_path: Path) -> None:
    objects = _objects(build(tmp_path, SEED_SCALING).out)
    hpa = objects["hpa"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 7)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 55},
            },
        }
    ]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["deployment"]["metadata"]["name"],
    }
    assert objects["deployment"]["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("instance_type", "cpu", "memory", "gpus"),
    [
        ("Standard_DS3_v2", "4", "14336Mi", None),  # the seed's default
        ("m5.2xlarge", "8", "32768Mi", None),
        ("cpu-16", "16", "32768Mi", None),
        ("g4dn.xlarge", "4", "16384Mi", "1"),
    ],
)
def test_resources_follow_the_instance_type(
    tmp_path: Path, instance_type: str, cpu: str, memory: str, gpus: str | None
) -> None:
    config = {"deployment": {"endpoint": {"instance_type": instance_type}}}
    resources = _container(_objects(build(tmp_path, config).out)["deployment"])["resources"]
    expected = {"cpu": cpu, "memory": memory}
    if gpus is not None:
        expected["nvidia.com/gpu"] = gpus
    assert resources == {"requests": expected, "limits": expected}


def test_threads_and_workers_follow_the_server_section(tmp_path: Path) -> None:
    config = {
        "deployment": {
            "server": {"port": 9100, "workers": 2},
            "endpoint": {"instance_type": "cpu-8"},
        }
    }
    result = build(tmp_path, config)
    container = _container(_objects(result.out)["deployment"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    # 8 vCPU shared by 2 workers: 4 intra-op threads each, set where the image and pod agree.
    assert env["CVDEPLOY_DEPLOYMENT__SERVER__INTRA_OP_THREADS"] == "4"
    assert env["OMP_NUM_THREADS"] == "4"
    assert container["ports"] == [{"name": "http", "containerPort": 9100, "protocol": "TCP"}]
    args = container["args"]
    assert args[args.index("--port") + 1] == "9100"
    assert args[args.index("--workers") + 1] == "2"
    assert args[args.index("--host") + 1] == "0.0.0.0"


def test_probes_use_the_kserve_v2_health_routes(tmp_path: Path) -> None:
    container = _container(_objects(build(tmp_path).out)["deployment"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_service_maps_port_80_to_the_named_container_port(tmp_path: Path) -> None:
    objects = _objects(build(tmp_path).out)
    spec = objects["service"]["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = objects["deployment"]["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()
    assert objects["deployment"]["spec"]["selector"]["matchLabels"] == spec["selector"]


def test_every_object_carries_the_recommended_labels(tmp_path: Path) -> None:
    for document in _objects(build(tmp_path).out).values():
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "digits-classifier"
        assert labels["app.kubernetes.io/managed-by"] == "cvdeploy"
        assert labels["app.kubernetes.io/version"].startswith("sha256-")


def test_pods_run_as_non_root_with_a_read_only_root(tmp_path: Path) -> None:
    deployment = _objects(build(tmp_path).out)["deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = _container(deployment)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The one writable path is /tmp, where $CVDEPLOY_HOME points.
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(deployment)["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]


def test_mount_mode_reads_the_model_from_a_claim(tmp_path: Path) -> None:
    result = build(tmp_path, bake=False)
    deployment = _objects(result.out)["deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "digits-classifier-models", "readOnly": True},
    } in pod["volumes"]
    assert {
        "name": "models",
        "mountPath": "/models/digits_classifier",
        "readOnly": True,
    } in _container(deployment)["volumeMounts"]
    assert not (result.out / "model").exists()


def test_namespace_and_name_options(tmp_path: Path) -> None:
    result = build(tmp_path, namespace="vision", name="Digits_Prod")
    for document in _objects(result.out).values():
        assert document["metadata"]["namespace"] == "vision"
        assert document["metadata"]["name"] == "digits-prod"


def test_port_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port is 0"):
        build(tmp_path, {"deployment": {"server": {"port": 0}}})


def test_token_comes_from_a_secret_and_is_never_baked(tmp_path: Path) -> None:
    result = build(tmp_path, {"deployment": {"server": {"token": "s3cret-token"}}})
    container = _container(_objects(result.out)["deployment"])
    assert {
        "name": "CVDEPLOY_DEPLOYMENT__SERVER__TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "digits-classifier-token", "key": "token"}},
    } in container["env"]
    for path in result.out.rglob("*"):
        if path.is_file() and path.suffix != ".onnx":
            assert "s3cret-token" not in path.read_text("utf-8"), path
