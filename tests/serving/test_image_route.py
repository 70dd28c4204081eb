"""POST /v1/models/{name}/predict over a real loopback server."""

from __future__ import annotations

import base64

import pytest
from conftest import encode, solid


def predict_url(server):
    return f"{server.url}/v1/models/{server.name}/predict"


def test_multipart_upload_returns_one_prediction_per_file(classifier, client):
    files = [
        ("file", ("r.png", encode(solid((255, 0, 0)), "PNG"), "image/png")),
        ("file", ("g.jpg", encode(solid((0, 255, 0))), "image/jpeg")),
        ("other", ("b.png", encode(solid((0, 0, 255)), "PNG"), "image/png")),
    ]
    response = client.post(predict_url(classifier), files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "colors"
    labels = [p["classes"][0]["label"] for p in body["predictions"]]
    assert labels == ["red", "green", "blue"]
    assert response.headers["x-request-id"]


def test_raw_image_body_is_one_image(classifier, client):
    response = client.post(
        predict_url(classifier),
        content=encode(solid((0, 0, 255)), "PNG"),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["classes"][0]["label"] == "blue"


def test_json_base64_images_with_parameters(classifier, client):
    images = [base64.b64encode(encode(solid((255, 0, 0)))).decode()]
    response = client.post(
        predict_url(classifier), json={"images": images, "parameters": {"top_k": 2}}
    )
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]["classes"]) == 2


def test_top_k_as_query_parameter(classifier, client):
    response = client.post(
        predict_url(classifier) + "?top_k=1",
        content=encode(solid((0, 255, 0))),
        headers={"content-type": "image/jpeg"},
    )
    assert [c["label"] for c in response.json()["predictions"][0]["classes"]] == ["green"]


def test_detections_are_in_original_image_pixels(detector, client):
    # The fake detector always finds a box centred at (20, 20) in its 64x64 input. A 128x128
    # image is letterboxed at scale 0.5 with no padding, so the box maps to (24, 24)-(56, 56).
    image = encode(solid((10, 10, 10), size=(128, 128)), "PNG")
    response = client.post(
        predict_url(detector), content=image, headers={"content-type": "image/png"}
    )
    prediction = response.json()["predictions"][0]
    assert prediction["image"] == {"width": 128, "height": 128}
    first = prediction["detections"][0]
    assert first["label"] == "circle"
    assert first["box"] == pytest.approx([24.0, 24.0, 56.0, 56.0], abs=0.01)


def test_confidence_threshold_filters_detections(detector, client):
    image = encode(solid((10, 10, 10), size=(64, 64)), "PNG")
    headers = {"content-type": "image/png"}
    everything = client.post(predict_url(detector), content=image, headers=headers).json()
    confident = client.post(
        predict_url(detector) + "?conf=0.8", content=image, headers=headers
    ).json()
    assert len(everything["predictions"][0]["detections"]) == 2
    assert [d["label"] for d in confident["predictions"][0]["detections"]] == ["circle"]


def test_describe_model(detector, client):
    info = client.get(f"{detector.url}/v1/models/{detector.name}").json()
    assert info["task"] == "detection"
    assert info["labels"] == ["circle", "square", "triangle"]
    assert client.get(f"{detector.url}/v1/models").json()["models"][0]["name"] == detector.name


def test_openapi_documents_every_protocol(detector, client):
    paths = client.get(f"{detector.url}/openapi.json").json()["paths"]
    for path in (
        "/v1/models/{name}/predict",
        "/v2/models/{name}/infer",
        "/invocations",
        "/metrics",
    ):
        assert path in paths
    assert client.get(f"{detector.url}/docs").status_code == 200
