"""Every way a request can be wrong, over real loopback servers and every protocol it applies to.

The contract (DESIGN "Security and reliability defaults", docs/serving.md "Limits and errors"):
each case gets its status code and the one JSON error body ``{"error", "error_code", "message",
"request_id"}`` whose message says what was wrong, never a traceback or a server-side file path,
and the server answers a good request right afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import resource
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import model_factory
import numpy as np
import psutil
import pytest
import tritonclient.http as triton
from conftest import encode, solid
from tritonclient.utils import InferenceServerException

import cvdeploy
from cvdeploy import ModelServer
from cvdeploy.errors import ModelLoadError

PACKAGE_DIR = str(Path(cvdeploy.__file__).resolve().parent)
TIGHT_LIMIT = 64 * 1024  # body and v2 tensor limit of the `tight` server below
MB = 2**20


# -- helpers -------------------------------------------------------------------------------------


def image_url(server: ModelServer, name: str | None = None) -> str:
    return f"{server.url}/v1/models/{name or server.name}/predict"


def v2_url(server: ModelServer, name: str | None = None) -> str:
    return f"{server.url}/v2/models/{name or server.name}/infer"


def mlflow_url(server: ModelServer) -> str:
    return f"{server.url}/invocations"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def good_jpeg(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encode(solid(color))


def assert_clean(text: str) -> None:
    """No traceback, no source location and no server-side path in what left the server."""
    assert "Traceback" not in text
    assert 'File "' not in text
    assert ".py" not in text
    assert "site-packages" not in text
    assert PACKAGE_DIR not in text
    assert "/tmp/" not in text  # where the test models live
    assert "onnxruntime_src" not in text


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, object]:
    """The response is ``status`` with the one JSON error body, mentioning every word."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "error_code", "message", "request_id"}, body
    assert body["message"] == body["error"]
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["error_code"], str)
    assert body["error_code"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert_clean(response.text)
    message = body["error"].lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {body['error']!r}"
    return body


def assert_triton_error(exc: InferenceServerException, status: int, *words: str) -> None:
    assert str(exc.status()) == str(status), (exc.status(), exc.message())
    message = exc.message() or ""
    assert_clean(message)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


def assert_serves(server: ModelServer, image: bytes | None = None) -> None:
    """A good request right after the bad one is answered normally."""
    response = httpx.post(
        image_url(server),
        content=image or good_jpeg(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"]


@contextlib.contextmanager
def triton_client(server: ModelServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def bytes_input(*images: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def v2_json_bytes(*images: bytes, parameters: dict[str, object] | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [b64(i) for i in images],
            }
        ]
    }
    if parameters is not None:
        body["parameters"] = parameters
    return body


def png_claiming(width: int, height: int) -> bytes:
    """A small, complete PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real baseline JPEG with its SOF0 frame header patched to claim ``width`` x ``height``."""
    data = bytearray(encode(solid((90, 90, 90), size=(16, 16))))
    sof = data.index(b"\xff\xc0")
    # FFC0, length (2), precision (1), height (2), width (2)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def zeros_bomb(inflated: int, encoding: str = "gzip") -> bytes:
    """``inflated`` bytes of zeros, gzip- or deflate-compressed (about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    zeros = bytes(MB)
    parts = [compressor.compress(zeros) for _ in range(inflated // MB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    """A generator body, so httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def raw_exchange(server: ModelServer, head: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``head`` (headers, maybe part of a body) on a raw socket; the status and body back."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        head_bytes, _, rest = received.partition(b"\r\n\r\n")
        match = re.search(rb"content-length:\s*(\d+)", head_bytes, re.IGNORECASE)
        length = int(match.group(1)) if match else 0
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
    status = int(head_bytes.split(b" ", 2)[1])
    return status, rest


def concurrently(count: int, call) -> list[httpx.Response]:
    """Run ``call(i)`` from ``count`` threads released at the same moment."""
    barrier = threading.Barrier(count)
    results: list[httpx.Response | BaseException | None] = [None] * count

    def worker(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = call(i)
        except BaseException as exc:  # reported below, not lost in a thread
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    errors = [r for r in results if not isinstance(r, httpx.Response)]
    assert not errors, errors
    return [r for r in results if isinstance(r, httpx.Response)]


# -- servers with special settings --------------------------------------------------------------


@pytest.fixture(scope="module")
def tight(classifier_path: Path) -> Iterator[ModelServer]:
    """Small body and tensor limits, so every protocol's byte limit is cheap to pass."""
    limits = {"max_body_bytes": TIGHT_LIMIT, "max_v2_tensor_bytes": TIGHT_LIMIT}
    server = ModelServer("classification", classifier_path, port=0, access_log=False, limits=limits)
    with server:
        yield server


@pytest.fixture(scope="module")
def queue_of_one(slow_path: Path) -> Iterator[ModelServer]:
    batching = {"max_batch_size": 1, "max_queue_size": 1}
    server = ModelServer("classification", slow_path, port=0, access_log=False, batching=batching)
    with server:
        yield server


@pytest.fixture(scope="module")
def short_deadline(slow_path: Path) -> Iterator[ModelServer]:
    batching = {"max_batch_size": 2}
    server = ModelServer(
        "classification", slow_path, port=0, access_log=False, timeout=0.05, batching=batching
    )
    with server:
        yield server


# -- empty, non-image and truncated bodies --------------------------------------------------------


def test_empty_body_is_400_on_every_protocol(classifier, client):
    for url, headers in (
        (image_url(classifier), {"content-type": "image/jpeg"}),
        (image_url(classifier), {}),
        (v2_url(classifier), {"content-type": "application/json"}),
        (mlflow_url(classifier), {"content-type": "application/json"}),
    ):
        assert_error(client.post(url, content=b"", headers=headers), 400, "empty")
    assert_serves(classifier)


def test_non_image_bytes_are_400_naming_the_problem(classifier, client):
    junk = b"this is a text file, not a picture\n" * 20
    response = client.post(
        image_url(classifier), content=junk, headers={"content-type": "image/png"}
    )
    assert_error(response, 400, "not a recognised image")
    files = [("file", ("notes.jpg", junk, "image/jpeg"))]
    assert_error(client.post(image_url(classifier), files=files), 400, "not a recognised image")
    response = client.post(image_url(classifier), json={"images": [b64(junk)]})
    assert_error(response, 400, "not a recognised image")
    response = client.post(v2_url(classifier), json=v2_json_bytes(junk))
    assert_error(response, 400, "not a recognised image")
    response = client.post(mlflow_url(classifier), json={"instances": [b64(junk)]})
    assert_error(response, 400, "not a recognised image")
    with triton_client(classifier) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(classifier.name, [bytes_input(junk)])
    assert_triton_error(info.value, 400, "not a recognised image")
    assert_serves(classifier)


@pytest.mark.parametrize("keep", [0.5, 0.05], ids=["half", "header-only"])
def test_truncated_jpeg_is_400(classifier, client, keep):
    rng = np.random.default_rng(1)
    full = encode(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), quality=90)
    cut = full[: int(len(full) * keep)]
    response = client.post(
        image_url(classifier), content=cut, headers={"content-type": "image/jpeg"}
    )
    assert_error(response, 400, "truncated")
    assert_error(client.post(v2_url(classifier), json=v2_json_bytes(cut)), 400, "truncated")
    response = client.post(mlflow_url(classifier), json={"instances": [b64(cut)]})
    assert_error(response, 400, "truncated")
    assert_serves(classifier, full)


def test_truncated_png_is_400(classifier, client):
    rng = np.random.default_rng(2)
    full = encode(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), "PNG")
    response = client.post(
        image_url(classifier), content=full[: len(full) // 2], headers={"content-type": "image/png"}
    )
    assert_error(response, 400, "truncated png")
    assert_serves(classifier)


# -- decompression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bomb", [png_claiming(30000, 30000), jpeg_claiming(30000, 30000)], ids=["png", "jpeg"]
)
def test_image_header_claiming_30000x30000_is_413_fast_and_allocates_nothing(classifier, bomb):
    process = psutil.Process()
    rss_before = process.memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        responses = [
            client.post(image_url(classifier), content=bomb, headers={"content-type": "image/png"}),
            client.post(image_url(classifier), files=[("file", ("bomb", bomb, "image/png"))]),
            client.post(v2_url(classifier), json=v2_json_bytes(bomb)),
            client.post(mlflow_url(classifier), json={"instances": [b64(bomb)]}),
        ]
    with triton_client(classifier) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(classifier.name, [bytes_input(bomb)])
    elapsed = time.perf_counter() - started
    for response in responses:
        assert_error(response, 413, "30000x30000", "pixels")
    assert_triton_error(info.value, 413, "30000x30000")
    assert elapsed < 1.0, f"five refusals took {elapsed:.2f} s"
    assert process.memory_info().rss - rss_before < 50 * MB
    if sys.platform.startswith("linux"):
        peak_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * 1024
        assert peak_growth < 50 * MB, f"peak RSS grew by {peak_growth / MB:.0f} MiB"
    assert_serves(classifier)


@pytest.mark.parametrize(
    ("encoding", "server_name", "inflated"),
    [("gzip", "detector", 80 * MB), ("deflate", "tight", 4 * MB)],
    ids=["gzip-64MiB-limit", "deflate-64KiB-limit"],
)
def test_compressed_body_bomb_on_v2_is_413(request, client, encoding, server_name, inflated):
    # ~1000:1 zeros; the v2 limit (64 MiB by default) applies to the inflated size.
    server = request.getfixturevalue(server_name)
    bomb = zeros_bomb(inflated, encoding)
    started = time.perf_counter()
    response = client.post(
        v2_url(server),
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert_error(response, 413, "inflated")
    assert time.perf_counter() - started < 5.0
    assert_serves(server)


def test_compressed_body_bomb_on_image_and_mlflow_routes_is_413(tight, client):
    bomb = zeros_bomb(16 * MB)
    for url, content_type in ((image_url(tight), "image/png"), (mlflow_url(tight), "")):
        headers = {"content-encoding": "gzip"}
        if content_type:
            headers["content-type"] = content_type
        assert_error(client.post(url, content=bomb, headers=headers), 413, "inflated")
    assert_serves(tight)


def test_invalid_gzip_and_unknown_content_encoding(tight, client):
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = client.post(v2_url(tight), content=b"not gzip at all", headers=headers)
    assert_error(response, 400, "gzip")
    headers["content-encoding"] = "br"
    response = client.post(v2_url(tight), content=b"{}", headers=headers)
    assert_error(response, 415, "content-encoding", "br")
    assert_serves(tight)


def test_truncated_or_trailing_compressed_body_is_400(tight, client):
    body = json.dumps(v2_json_bytes(good_jpeg())).encode()
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    whole = gzip.compress(body)
    assert client.post(v2_url(tight), content=whole, headers=headers).status_code == 200
    cases = [
        (whole[: len(whole) // 2], "truncated"),
        (whole[:-4], "truncated"),
        (whole + b"trailing junk", "after the end"),
        (gzip.compress(body[:10]) + gzip.compress(body[10:]), "after the end"),
    ]
    for content, words in cases:
        assert_error(client.post(v2_url(tight), content=content, headers=headers), 400, words)
    headers["content-encoding"] = "deflate"
    response = client.post(v2_url(tight), content=zlib.compress(body) + b"\0", headers=headers)
    assert_error(response, 400, "after the end")
    response = client.post(v2_url(tight), content=b"", headers=headers)
    assert_error(response, 400, "empty")
    assert_serves(tight)


# -- byte and count limits ------------------------------------------------------------------------


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
@pytest.mark.parametrize("protocol", ["image", "v2", "mlflow"])
def test_body_over_the_byte_limit_is_413(tight, client, protocol, transfer):
    url = {"image": image_url(tight), "v2": v2_url(tight), "mlflow": mlflow_url(tight)}[protocol]
    content_type = "image/jpeg" if protocol == "image" else "application/json"
    body = os.urandom(4 * TIGHT_LIMIT)
    request = client.build_request(
        "POST",
        url,
        content=body if transfer == "content-length" else chunks(body),
        headers={"content-type": content_type},
    )
    if transfer == "chunked":
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
    else:
        assert request.headers["content-length"] == str(len(body))
    assert_error(client.send(request), 413, "limit")
    assert_serves(tight)


def test_declared_content_length_over_the_limit_is_refused_before_the_body_is_sent(detector):
    # 10 GiB announced, nothing sent: the answer must come from the header alone. The v2
    # route's limit is the larger v2 tensor limit (64 MiB), the others' 256 KiB.
    for path in (
        f"/v1/models/{detector.name}/predict",
        f"/v2/models/{detector.name}/infer",
        "/invocations",
    ):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 * 2**30}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        status, body = raw_exchange(detector, head)
        assert status == 413, body
        assert time.perf_counter() - started < 2.0
        payload = json.loads(body)
        assert payload["error_code"] == "PAYLOAD_TOO_LARGE"
        assert str(10 * 2**30) in payload["error"]
    assert_serves(detector)


def test_one_image_over_the_byte_limit_inside_a_v2_request_is_413(detector, client):
    # The v2 body limit is larger than the image limit; the image itself is still refused.
    big = os.urandom(300 * 1024)
    assert_error(client.post(v2_url(detector), json=v2_json_bytes(big)), 413, "bytes")
    assert_serves(detector)


def test_too_many_images_is_413_on_every_protocol(classifier, client):
    image = good_jpeg()
    five = [image] * 5  # the classifier fixture allows 4
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(five)]
    assert_error(client.post(image_url(classifier), files=files), 413, "5 images", "limit is 4")
    response = client.post(image_url(classifier), json={"images": [b64(i) for i in five]})
    assert_error(response, 413, "5 images", "limit is 4")
    response = client.post(mlflow_url(classifier), json={"instances": [b64(i) for i in five]})
    assert_error(response, 413, "5 images", "limit is 4")
    response = client.post(
        mlflow_url(classifier),
        json={"dataframe_split": {"columns": ["image"], "data": [[b64(i)] for i in five]}},
    )
    assert_error(response, 413, "5 images")
    assert_error(client.post(v2_url(classifier), json=v2_json_bytes(*five)), 413, "5 images")
    with triton_client(classifier) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(classifier.name, [bytes_input(*five)])
    assert_triton_error(info.value, 413, "5 images")
    # Exactly the limit is fine.
    assert client.post(image_url(classifier), files=files[:4]).status_code == 200


def test_too_many_images_as_a_v2_uint8_batch_is_413(classifier):
    tensor = triton.InferInput("images", [5, 8, 8, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((5, 8, 8, 3), np.uint8))
    with triton_client(classifier) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(classifier.name, [tensor])
    assert_triton_error(info.value, 413, "5 images")
    assert_serves(classifier)


# -- unknown model, route and method --------------------------------------------------------------


def test_unknown_model_is_404_naming_the_served_model(classifier, client):
    image = good_jpeg()
    responses = [
        client.post(
            image_url(classifier, "nosuch"), content=image, headers={"content-type": "image/jpeg"}
        ),
        client.get(f"{classifier.url}/v1/models/nosuch"),
        client.post(v2_url(classifier, "nosuch"), json=v2_json_bytes(image)),
        client.get(f"{classifier.url}/v2/models/nosuch"),
        client.post(f"{classifier.url}/v2/models/{classifier.name}/versions/9/infer", json={}),
        client.post(
            f"{classifier.url}/serving-endpoints/nosuch/invocations",
            json={"instances": [b64(image)]},
        ),
    ]
    for response in responses:
        body = assert_error(response, 404, repr(classifier.name))
        assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    with triton_client(classifier) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer("nosuch", [bytes_input(image)])
    assert_triton_error(info.value, 404, "nosuch", classifier.name)
    assert_serves(classifier)


def test_unknown_route_is_a_json_404(classifier, client):
    for response in (
        client.get(f"{classifier.url}/no/such/route"),
        client.post(f"{classifier.url}/v3/models/x/infer", json={}),
    ):
        assert_error(response, 404, "no route")
    assert_serves(classifier)


def test_wrong_method_is_a_json_405(classifier, client):
    for response in (
        client.get(image_url(classifier)),
        client.put(v2_url(classifier), json={}),
        client.delete(mlflow_url(classifier)),
        client.post(f"{classifier.url}/v2/health/ready"),
    ):
        assert_error(response, 405, "method not allowed")
        assert response.headers["allow"]
    assert_serves(classifier)


# -- v2 tensors -----------------------------------------------------------------------------------


def test_v2_tensor_with_the_wrong_shape_is_400(classifier, client):
    with triton_client(classifier) as tc:
        for shape in ([1, 3, 16, 16], [3, 32], [1, 1, 3, 32, 32]):
            tensor = triton.InferInput("images", shape, "FP32")
            tensor.set_data_from_numpy(np.zeros(shape, np.float32))
            with pytest.raises(InferenceServerException) as info:
                tc.infer(classifier.name, [tensor])
            assert_triton_error(info.value, 400, "shape")
        tensor = triton.InferInput("image", [1, 2], "BYTES")
        tensor.set_data_from_numpy(np.array([[good_jpeg(), good_jpeg()]], dtype=object))
        with pytest.raises(InferenceServerException) as info:
            tc.infer(classifier.name, [tensor])
        assert_triton_error(info.value, 400, "[B]", "[1, 2]")
    bad_shape = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, -3], "data": []}]}
    assert_error(client.post(v2_url(classifier), json=bad_shape), 400, "shape")
    assert_serves(classifier)


def test_v2_tensor_with_the_wrong_datatype_is_400(classifier, client):
    with triton_client(classifier) as tc:
        tensor = triton.InferInput("images", [1, 3, 32, 32], "INT32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.int32))
        with pytest.raises(InferenceServerException) as info:
            tc.infer(classifier.name, [tensor])
        assert_triton_error(info.value, 400, "datatype", "INT32")
    not_a_type = {"inputs": [{"name": "images", "datatype": "FP99", "shape": [1], "data": [0]}]}
    assert_error(client.post(v2_url(classifier), json=not_a_type), 400, "datatype", "FP99")
    strings = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}
    assert_error(client.post(v2_url(classifier), json=strings), 400, "float32")
    assert_serves(classifier)


def test_v2_tensor_with_the_wrong_byte_count_is_400(classifier, client):
    shape = [1, 3, 32, 32]

    def binary(declared: int, sent: int) -> httpx.Response:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": shape,
                        "parameters": {"binary_data_size": declared},
                    }
                ]
            }
        ).encode()
        return client.post(
            v2_url(classifier),
            content=header + bytes(sent),
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
        )

    needed = 3 * 32 * 32 * 4
    assert_error(binary(needed - 4, needed - 4), 400, f"needs {needed} bytes")
    assert_error(binary(needed, needed - 4), 400, "binary_data_size")
    assert_error(binary(needed, needed + 4), 400, "binary bytes")
    json_count = {"inputs": [{"name": "images", "datatype": "FP32", "shape": shape, "data": [0.0]}]}
    assert_error(client.post(v2_url(classifier), json=json_count), 400, "3072 elements")
    header_length = client.post(
        v2_url(classifier),
        content=b"{}",
        headers={"inference-header-content-length": "999"},
    )
    assert_error(header_length, 400, "inference-header-content-length")
    assert_serves(classifier)


# -- JSON, base64, content type -------------------------------------------------------------------


def test_invalid_json_is_400_on_every_protocol(classifier, client):
    headers = {"content-type": "application/json"}
    for url in (image_url(classifier), v2_url(classifier), mlflow_url(classifier)):
        for body in (b'{"images": [', b"\xff\xfe not utf-8", b"[1, 2,]"):
            assert_error(client.post(url, content=body, headers=headers), 400, "json")
    assert_serves(classifier)


def test_json_of_the_wrong_shape_is_400(classifier, client):
    cases = [
        (image_url(classifier), [1, 2, 3], "object"),
        (image_url(classifier), {"pictures": []}, "images"),
        (image_url(classifier), {"images": []}, "non-empty"),
        (image_url(classifier), {"images": [b64(good_jpeg())], "parameters": [1]}, "parameters"),
        (v2_url(classifier), {"inputs": []}, "inputs"),
        (v2_url(classifier), {"inputs": [{"name": "image"}]}, "datatype"),
        (mlflow_url(classifier), {"rows": []}, "dataframe_split"),
        (mlflow_url(classifier), {"instances": [], "inputs": []}, "exactly one"),
    ]
    for url, body, word in cases:
        assert_error(client.post(url, json=body), 400, word)
    assert_serves(classifier)


def test_invalid_base64_is_400_on_every_protocol(classifier, client):
    for bad in ("not base64!!", "@@@@", 12345):
        response = client.post(image_url(classifier), json={"images": [bad]})
        assert_error(response, 400, "images[0]", "base64")
        response = client.post(
            v2_url(classifier),
            json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [bad]}]},
        )
        assert_error(response, 400, "base64")
        response = client.post(mlflow_url(classifier), json={"instances": [bad]})
        assert_error(response, 400, "instances[0]", "base64")
        response = client.post(
            mlflow_url(classifier),
            json={"dataframe_split": {"columns": ["image"], "data": [[bad]]}},
        )
        assert_error(response, 400, "base64")
    assert_serves(classifier)


def test_unsupported_content_type_is_415(classifier, client):
    image = good_jpeg()
    for url, content_type in (
        (image_url(classifier), "text/plain"),
        (image_url(classifier), "application/xml"),
        (image_url(classifier), "application/x-www-form-urlencoded"),
        (mlflow_url(classifier), "text/csv"),
        (mlflow_url(classifier), "image/jpeg"),
    ):
        response = client.post(url, content=image, headers={"content-type": content_type})
        assert_error(response, 415, content_type)
    assert_serves(classifier)


# -- parameters -----------------------------------------------------------------------------------


def test_unknown_query_parameter_is_400_naming_it(detector, client):
    image = good_jpeg()
    response = client.post(
        image_url(detector) + "?confidence=0.5",
        content=image,
        headers={"content-type": "image/jpeg"},
    )
    assert_error(response, 400, "confidence", "conf")
    response = client.post(
        image_url(detector), json={"images": [b64(image)], "parameters": {"thresh": 0.1}}
    )
    assert_error(response, 400, "thresh")
    response = client.post(mlflow_url(detector) + "?nms=1", json={"instances": [b64(image)]})
    assert_error(response, 400, "nms")
    response = client.post(
        mlflow_url(detector), json={"instances": [b64(image)], "params": {"x": 1}}
    )
    assert_error(response, 400, "'x'")
    assert_serves(detector)


def test_unknown_v2_parameter_is_400_naming_it(detector, client):
    image = good_jpeg()
    with triton_client(detector) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(detector.name, [bytes_input(image)], parameters={"confidence": 0.5})
    assert_triton_error(info.value, 400, "confidence")
    response = client.post(v2_url(detector), json=v2_json_bytes(image, parameters={"nms": 1}))
    assert_error(response, 400, "nms")
    # The protocol's own parameters are not model parameters and are accepted.
    with triton_client(detector) as tc:
        result = tc.infer(detector.name, [bytes_input(image)], priority=1, timeout=10_000_000)
        assert result.as_numpy("num_detections") is not None
    assert_serves(detector)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("conf", "1.5"),
        ("conf", "-0.1"),
        ("conf", "nan"),
        ("conf", "high"),
        ("iou", "2"),
        ("max_det", "0"),
        ("max_det", "2.5"),
        ("top_k", "0"),
    ],
)
def test_out_of_range_parameter_is_400_naming_it(detector, client, name, value):
    image = good_jpeg()
    response = client.post(
        image_url(detector) + f"?{name}={value}",
        content=image,
        headers={"content-type": "image/jpeg"},
    )
    assert_error(response, 400, repr(name))
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_out_of_range_conf_is_400_on_every_protocol(detector, client):
    image = good_jpeg()
    response = client.post(
        image_url(detector), json={"images": [b64(image)], "parameters": {"conf": 7}}
    )
    assert_error(response, 400, "'conf'", "between 0 and 1")
    response = client.post(v2_url(detector), json=v2_json_bytes(image, parameters={"conf": -1}))
    assert_error(response, 400, "'conf'")
    response = client.post(
        mlflow_url(detector), json={"instances": [b64(image)], "params": {"conf": 2}}
    )
    assert_error(response, 400, "'conf'")
    with triton_client(detector) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(detector.name, [bytes_input(image)], parameters={"conf": 1.01})
    assert_triton_error(info.value, 400, "'conf'")
    for value in (True, "0.5x", None, [0.5]):
        response = client.post(
            image_url(detector), json={"images": [b64(image)], "parameters": {"conf": value}}
        )
        assert_error(response, 400, "'conf'")
    assert_serves(detector)


# -- overload and deadlines -----------------------------------------------------------------------


def test_full_queue_is_503_with_retry_after_and_the_rest_succeed(queue_of_one):
    # Enough work that the queue outlives the 0.05 s deadline even on a fast, idle machine
    # (the slow model takes ~7 ms per batch of two there).
    count = 40
    images = [encode(solid((i * 6, 40, 60), size=(32, 32))) for i in range(count)]

    def post(i: int) -> httpx.Response:
        return httpx.post(
            image_url(queue_of_one),
            content=images[i],
            headers={"content-type": "image/jpeg"},
            timeout=30,
        )

    responses = concurrently(12, post)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, statuses
    assert 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            body = assert_error(response, 503, "queue is full")
            assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
            assert int(response.headers["retry-after"]) >= 1
        else:
            assert response.json()["predictions"][0]["classes"]
    assert_serves(queue_of_one)


def test_passed_deadline_is_504_and_the_server_keeps_serving(short_deadline):
    engine = short_deadline._server.engine  # type: ignore[union-attr]
    # Enough work that the queue outlives the 0.05 s deadline even on a fast, idle machine
    # (the slow model takes ~7 ms per batch of two there).
    count = 40
    images = [encode(solid((i * 6, 40, 60), size=(32, 32))) for i in range(count)]

    def post(i: int) -> httpx.Response:
        return httpx.post(
            image_url(short_deadline),
            content=images[i],
            headers={"content-type": "image/jpeg"},
            timeout=30,
        )

    responses = concurrently(count, post)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 504}, statuses
    assert 504 in statuses, statuses
    for response in responses:
        if response.status_code == 504:
            body = assert_error(response, 504, "0.05 s request timeout")
            assert body["error_code"] == "DEADLINE_EXCEEDED"
    # The late requests' work is dropped; once the queue drains, a lone request is answered.
    deadline = time.monotonic() + 10
    while engine.batcher.queue_size and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(20):
        response = httpx.post(
            image_url(short_deadline),
            content=images[0],
            headers={"content-type": "image/jpeg"},
            timeout=30,
        )
        if response.status_code == 200:
            break
        assert_error(response, 504)
    assert response.status_code == 200


# -- models that cannot load or fail ------------------------------------------------------------


def _not_onnx(path: Path) -> Path:
    path.write_text("name,score\ncat,0.9\n")
    return path


def _truncated_onnx(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(3).bytes(4096))
    return path


def _empty(path: Path) -> Path:
    path.touch()
    return path


def _torch_checkpoint(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("notes.onnx", lambda p, src: _not_onnx(p)),
        ("truncated.onnx", _truncated_onnx),
        ("noise.onnx", lambda p, src: _random_bytes(p)),
        ("empty.onnx", lambda p, src: _empty(p)),
        ("weights.pt", lambda p, src: _torch_checkpoint(p)),
        ("tabular.onnx", lambda p, src: model_factory.make_non_image_model(p)),
        ("two_inputs.onnx", lambda p, src: model_factory.make_two_input_model(p)),
    ],
)
def test_unusable_model_file_raises_model_load_error_naming_the_file(
    tmp_path, classifier_path, filename, make
):
    path = make(tmp_path / filename, classifier_path)
    server = ModelServer("classification", path, port=0, access_log=False)
    with pytest.raises(ModelLoadError) as info:
        server.start()
    assert filename in str(info.value)
    assert "Traceback" not in str(info.value)
    assert not server.running
    server.stop()  # harmless after a failed start


def test_model_file_that_is_missing_raises_model_load_error_naming_it(tmp_path):
    with pytest.raises(ModelLoadError, match=r"gone\.onnx"):
        ModelServer("classification", tmp_path / "gone.onnx", port=0)


def test_failing_model_is_500_with_request_id_and_no_details(failing, client):
    image = encode(solid((120, 130, 140)))
    responses = [
        client.post(image_url(failing), content=image, headers={"content-type": "image/jpeg"}),
        client.post(v2_url(failing), json=v2_json_bytes(image)),
        client.post(mlflow_url(failing), json={"instances": [b64(image)]}),
        client.post(
            image_url(failing),
            content=image,
            headers={"content-type": "image/jpeg", "x-request-id": "trace-me-42"},
        ),
    ]
    for response in responses:
        body = assert_error(response, 500)
        assert body["error_code"] == "INTERNAL_ERROR"
        assert body["request_id"]
        assert "failed" in str(body["error"])
    assert responses[-1].headers["x-request-id"] == "trace-me-42"
    assert responses[-1].json()["request_id"] == "trace-me-42"
    with triton_client(failing) as tc, pytest.raises(InferenceServerException) as info:
        tc.infer(failing.name, [bytes_input(image)])
    assert_triton_error(info.value, 500, "failed")
    # The model still runs what it can (an all-black image), so the server is alive and well.
    assert_serves(failing, encode(solid((0, 0, 0))))
