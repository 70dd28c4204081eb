"""KServe v2 / Triton HTTP against a real server, driven by the official tritonclient."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import encode, solid
from tritonclient.utils import InferenceServerException


@pytest.fixture
def triton_client(detector):
    client = triton.InferenceServerClient(detector.url.removeprefix("http://"))
    yield client
    client.close()


def bytes_input(*images: bytes, name: str = "image") -> triton.InferInput:
    tensor = triton.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def test_health_and_metadata(triton_client, detector):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(detector.name)
    assert triton_client.is_model_ready(detector.name, "1")
    metadata = triton_client.get_model_metadata(detector.name)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert {o["name"] for o in metadata["outputs"]} == {
        "num_detections",
        "boxes",
        "scores",
        "class_ids",
        "labels",
    }
    server = triton_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    config = triton_client.get_model_config(detector.name)
    assert config["max_batch_size"] == 8


def test_binary_bytes_batch_returns_padded_detections(triton_client, detector):
    images = [encode(solid((0, 0, 0), size=(64, 64))), encode(solid((9, 9, 9), size=(128, 64)))]
    result = triton_client.infer(detector.name, [bytes_input(*images)])
    counts = result.as_numpy("num_detections")
    boxes = result.as_numpy("boxes")
    labels = result.as_numpy("labels")
    assert counts.tolist() == [2, 2]
    assert boxes.shape == (2, 2, 4)
    assert labels[0].tolist() == [b"circle", b"triangle"]
    # The 64x64 image maps 1:1: the first box is centred at (20, 20) with size 16.
    np.testing.assert_allclose(boxes[0, 0], [12, 12, 28, 28], atol=0.01)


def test_json_outputs_when_asked_without_binary(triton_client, detector):
    outputs = [triton.InferRequestedOutput("scores", binary_data=False)]
    result = triton_client.infer(
        detector.name, [bytes_input(encode(solid((0, 0, 0), size=(64, 64))))], outputs=outputs
    )
    assert result.as_numpy("scores").shape == (1, 2)
    assert result.get_output("boxes") is None


def test_uint8_hwc_images(triton_client, detector):
    tensor = triton.InferInput("pixels", [2, 64, 64, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    result = triton_client.infer(detector.name, [tensor])
    assert result.as_numpy("num_detections").tolist() == [2, 2]


def test_fp32_preprocessed_tensor(triton_client, detector):
    tensor = triton.InferInput("images", [1, 3, 64, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 64, 64), dtype=np.float32))
    result = triton_client.infer(detector.name, [tensor])
    # Without letterbox metadata boxes stay in input pixels.
    np.testing.assert_allclose(result.as_numpy("boxes")[0, 0], [12, 12, 28, 28], atol=0.01)


def test_request_parameters_reach_the_model(triton_client, detector):
    result = triton_client.infer(
        detector.name,
        [bytes_input(encode(solid((0, 0, 0), size=(64, 64))))],
        parameters={"conf": 0.8},
    )
    assert result.as_numpy("num_detections").tolist() == [1]


def test_versioned_route_and_stats(triton_client, detector):
    triton_client.infer(
        detector.name, [bytes_input(encode(solid((0, 0, 0), size=(64, 64))))], model_version="1"
    )
    stats = triton_client.get_inference_statistics(detector.name)["model_stats"][0]
    assert stats["inference_count"] >= 1
    assert stats["inference_stats"]["success"]["count"] >= 1


def test_unknown_model_and_version_are_404(triton_client, detector):
    with pytest.raises(InferenceServerException, match="not served here"):
        triton_client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="version '7'"):
        triton_client.get_model_metadata(detector.name, "7")


def test_json_request_with_base64_bytes(detector, client):
    data = base64.b64encode(encode(solid((0, 0, 0), size=(64, 64)))).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}
    response = client.post(f"{detector.url}/v2/models/{detector.name}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["num_detections"]["data"] == [2]
    assert outputs["labels"]["data"] == ["circle", "triangle"]


def test_classifier_outputs(classifier):
    client = triton.InferenceServerClient(classifier.url.removeprefix("http://"))
    try:
        result = client.infer(classifier.name, [bytes_input(encode(solid((0, 255, 0))))])
    finally:
        client.close()
    assert result.as_numpy("labels")[0][0] == b"green"
    assert result.as_numpy("class_ids").shape == (1, 3)


def test_triton_timeout_parameter_shortens_the_deadline(triton_client, detector):
    image = bytes_input(encode(solid((0, 0, 0), size=(64, 64))))
    with pytest.raises(InferenceServerException, match="request timeout"):
        triton_client.infer(detector.name, [image], timeout=0)
    # The default deadline still applies to the next request.
    assert triton_client.infer(detector.name, [image]).as_numpy("num_detections").tolist() == [2]
