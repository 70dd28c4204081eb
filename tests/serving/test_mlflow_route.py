"""MLflow / Databricks scoring routes over a real server."""

from __future__ import annotations

import base64

from conftest import encode, solid


def b64(color):
    return base64.b64encode(encode(solid(color))).decode()


def test_dataframe_split_invocations(classifier, client):
    rows = [[b64((255, 0, 0))], [b64((0, 0, 255))]]
    body = {"dataframe_split": {"columns": ["image"], "data": rows}}
    response = client.post(f"{classifier.url}/invocations", json=body)
    assert response.status_code == 200, response.text
    labels = [p["classes"][0]["label"] for p in response.json()["predictions"]]
    assert labels == ["red", "blue"]


def test_serving_endpoints_route_uses_the_model_name(classifier, client):
    body = {"inputs": [b64((0, 255, 0))], "params": {"top_k": 1}}
    url = f"{classifier.url}/serving-endpoints/{classifier.name}/invocations"
    prediction = client.post(url, json=body).json()["predictions"][0]
    assert [c["label"] for c in prediction["classes"]] == ["green"]
    missing = client.post(f"{classifier.url}/serving-endpoints/other/invocations", json=body)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_ping_health_and_version(classifier, client):
    assert client.get(f"{classifier.url}/ping").status_code == 200
    assert client.get(f"{classifier.url}/health").status_code == 200
    assert client.get(f"{classifier.url}/version").text


def test_metrics_are_labelled_by_model_version_route_and_status(classifier, client):
    client.post(f"{classifier.url}/invocations", json={"instances": [b64((255, 0, 0))]})
    text = client.get(f"{classifier.url}/metrics").text
    assert (
        'cvdeploy_requests_total{model="colors",route="/invocations",status="200",version="1"}'
        in text
    )
    for series in (
        "cvdeploy_request_latency_seconds_bucket",
        "cvdeploy_queue_time_seconds_bucket",
        "cvdeploy_inference_time_seconds_bucket",
        "cvdeploy_batch_size_bucket",
    ):
        assert series in text
