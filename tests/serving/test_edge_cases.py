"""Edge cases found in review: each once answered wrongly (a 500, a 400 for a valid request,
a stalled event loop or a server that would not start)."""

from __future__ import annotations

import base64
import concurrent.futures
import struct
import time

import httpx
import model_factory
import orjson
from conftest import encode, solid

from cvdeploy import ModelServer


def test_fixed_batch_model_serves_concurrent_requests(models_dir):
    path = model_factory.make_classifier_model(models_dir / "fixed1.onnx", num_classes=3, batch=1)
    image = encode(solid((255, 0, 0)))
    with ModelServer("classification", path, port=0, access_log=False) as server:
        url = f"{server.url}/v1/models/{server.name}/predict"

        def call(_):
            return httpx.post(
                url, content=image, headers={"content-type": "image/jpeg"}
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(call, range(24)))
        config = httpx.get(f"{server.url}/v2/models/{server.name}/config").json()
    assert statuses == [200] * 24
    assert config["max_batch_size"] == 1


def test_single_channel_model_starts_and_serves(models_dir):
    path = model_factory.make_classifier_model(models_dir / "grey.onnx", num_classes=3, channels=1)
    with ModelServer("classification", path, port=0, access_log=False) as server:
        response = httpx.post(
            f"{server.url}/v1/models/{server.name}/predict",
            content=encode(solid((200, 200, 200))),
            headers={"content-type": "image/jpeg"},
        )
    assert response.status_code == 200, response.text


def test_v2_bytes_shape_over_the_image_limit_is_refused_before_splitting(classifier, client):
    # Millions of empty BYTES elements: refused from the declared shape, in well under a second.
    count = 2_000_000
    raw = struct.pack("<I", 0) * count
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    started = time.monotonic()
    response = client.post(
        f"{classifier.url}/v2/models/{classifier.name}/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 413
    assert "limit is 4" in response.json()["error"]
    assert time.monotonic() - started < 5


def test_v2_empty_uint8_image_is_400(classifier, client):
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 0, 5, 3], "data": []}]}
    response = client.post(f"{classifier.url}/v2/models/{classifier.name}/infer", json=body)
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


def test_v2_request_with_no_images_is_400(classifier, client):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}
    response = client.post(f"{classifier.url}/v2/models/{classifier.name}/infer", json=body)
    assert response.status_code == 400
    assert "holds no images" in response.json()["error"]


def test_v2_bytes_nested_deeper_than_the_shape_is_400(classifier, client):
    image = base64.b64encode(encode(solid((0, 0, 255)))).decode()
    depth = 980  # deeper than Python's recursion limit allows a recursive flatten to go
    data = "[" * depth + f'"{image}"' + "]" * depth
    body = f'{{"inputs": [{{"name": "image", "datatype": "BYTES", "shape": [1], "data": {data}}}]}}'
    response = client.post(
        f"{classifier.url}/v2/models/{classifier.name}/infer",
        content=body.encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_non_ascii_request_id_is_replaced(classifier, client):
    response = client.get(
        f"{classifier.url}/v2/health/live", headers={"x-request-id": "abc\xe9".encode("latin-1")}
    )
    assert response.headers["x-request-id"] != "abc\xe9"
    assert response.headers["x-request-id"].isascii()


def test_served_engine_is_tuned_once(classifier_path):
    with ModelServer("classification", classifier_path, port=0, access_log=False) as server:
        engine = server._server.engine  # type: ignore[union-attr]
        first = dict(engine.tuned_batch_sizes)
        engine._tune(engine.model)  # a second call must not re-measure
        assert engine.tuned_batch_sizes == first
