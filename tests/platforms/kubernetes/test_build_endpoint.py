"""``cvdeploy build --endpoint``: a platform endpoint's served entities become images and pods.

The endpoint spec is read over the platform's REST API, here from a fake of its wire protocol
(``GET /api/2.0/serving-endpoints/{name}`` answering the JSON the platform sends) behind the
real :class:`PlatformClient`; the model files come from a real registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from kubernetes_support import load_yaml, validate_k8s, validate_kserve
from typer.testing import CliRunner

import cvdeploy.cli.build as build_cli
from cvdeploy.config import Config
from cvdeploy.platforms.base import EndpointCoreConfig
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.kubernetes import plan_for_endpoint

app = typer.Typer()
app.command()(build_cli.build)
app.command("version")(lambda: None)
runner = CliRunner()

TWO_WAY = {
    "served_entities": [
        {
            "entity_name": "cv_model",
            "entity_version": "1",
            "min_replicas": 2,
            "max_replicas": 4,
            "instance_type": "cpu-2",
        },
        {
            "entity_name": "cv_model",
            "entity_version": "2",
            "max_replicas": 2,
            "batching": {"max_batch_size": 4},
        },
    ],
    "traffic_config": {
        "routes": [
            {"served_model_name": "cv_model-1", "traffic_percentage": 90},
            {"served_model_name": "cv_model-2", "traffic_percentage": 10},
        ]
    },
}


def _fake_platform(endpoints: dict[str, dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        prefix = "/api/2.0/serving-endpoints/"
        name = request.url.path.removeprefix(prefix)
        if request.method == "GET" and name in endpoints:
            body = {
                "name": name,
                "config": endpoints[name],
                "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
                "creator": "local",
                "creation_timestamp": 1,
                "last_updated_timestamp": 2,
            }
            return httpx.Response(200, json=body)
        return httpx.Response(
            404,
            json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no endpoint {name}"},
        )

    return httpx.MockTransport(handle)


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch, platform_home: Path) -> None:
    transport = _fake_platform(
        {"shop": TWO_WAY, "solo": {"served_entities": [TWO_WAY["served_entities"][1]]}}
    )

    def connect(url: str | None, token: str | None) -> PlatformClient:
        return PlatformClient("http://platform.test", token, transport=transport)

    monkeypatch.setattr(build_cli, "_connect", connect)


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["build", *args])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_two_way_split_gives_two_images_and_a_kserve_canary(tmp_path: Path, platform: None) -> None:
    out = tmp_path / "ctx"
    code, stdout, stderr = _run(
        "--endpoint", "shop", "--out", str(out), "--image", "reg:5000/shop:x"
    )
    assert code == 0, stdout + stderr
    for entity in ("shop-cv-model-1", "shop-cv-model-2"):
        assert (out / entity / "Dockerfile").is_file()
        assert f"docker build -t reg:5000/shop:cv_model-{entity[-1]}" in stdout
        for kind in ("deployment", "hpa"):
            validate_k8s(load_yaml(out / "k8s" / f"{entity}-{kind}.yaml"))
    first = load_yaml(out / "k8s" / "shop-cv-model-1-deployment.yaml")
    (container,) = first["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4096Mi"}
    # Every pod answers under the endpoint's name, as the platform's gateway does.
    assert container["args"][2:4] == ["--name", "shop"]
    assert first["spec"]["replicas"] == 2
    hpa = load_yaml(out / "k8s" / "shop-cv-model-1-hpa.yaml")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    baked = (out / "shop-cv-model-2" / "config" / "cvdeploy.yaml").read_text()
    assert "max_batch_size: 4" in baked

    service = load_yaml(out / "k8s" / "service.yaml")
    validate_k8s(service)
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/part-of": "shop",
        "app.kubernetes.io/component": "predictor",
    }
    assert first["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shop"
    assert "not by the routes' percentages" in stderr

    stable = load_yaml(out / "kserve" / "1-stable.yaml")
    canary = load_yaml(out / "kserve" / "2-canary.yaml")
    for document in (stable, canary):
        validate_kserve(document)
        assert document["metadata"]["name"] == "shop"
    assert "canaryTrafficPercent" not in stable["spec"]["predictor"]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["metadata"]["labels"]["app.kubernetes.io/version"] == "2"


def test_one_entity_gives_one_inference_service(tmp_path: Path, platform: None) -> None:
    out = tmp_path / "ctx"
    code, stdout, _ = _run("--endpoint", "solo", "--out", str(out))
    assert code == 0, stdout
    assert sorted(p.name for p in (out / "kserve").iterdir()) == ["inferenceservice.yaml"]
    validate_kserve(load_yaml(out / "kserve" / "inferenceservice.yaml"))


def test_an_unknown_endpoint_is_a_clear_error(tmp_path: Path, platform: None) -> None:
    code, _, stderr = _run("--endpoint", "nope", "--out", str(tmp_path / "ctx"))
    assert code == 2
    assert "no endpoint nope" in stderr
    assert not (tmp_path / "ctx").exists()


def test_name_and_canary_options_are_for_one_model(tmp_path: Path, platform: None) -> None:
    code, _, stderr = _run("--endpoint", "shop", "--canary-percent", "5", "--out", str(tmp_path))
    assert code == 2
    assert "come from the endpoint" in stderr


def test_three_routed_entities_write_no_inference_service(platform_home: Path) -> None:
    core = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"name": f"v{i}", "entity_name": "cv_model", "entity_version": "1"}
                for i in range(3)
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "v0", "traffic_percentage": 50},
                    {"served_model_name": "v1", "traffic_percentage": 30},
                    {"served_model_name": "v2", "traffic_percentage": 20},
                ]
            },
        }
    )
    built = plan_for_endpoint("three", core, Config())
    assert built.kserve_pair is None
    assert any("no InferenceService" in note for note in built.notes)


def test_scale_to_zero_entity_keeps_one_replica(platform_home: Path) -> None:
    core = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {
                    "entity_name": "cv_model",
                    "entity_version": "1",
                    "min_replicas": 0,
                    "scale_to_zero_enabled": True,
                }
            ]
        }
    )
    built = plan_for_endpoint("idle", core, Config())
    (plan,) = built.plans
    assert (plan.min_replicas, plan.max_replicas) == (1, 1)
    assert any("scales to zero" in note for note in built.notes)
    assert json.dumps(built.traffic) == '{"idle-cv-model-1": 100}'
