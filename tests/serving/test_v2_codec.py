"""KServe v2 tensor codec: JSON and Triton binary tensors, every malformed case a clear 400."""

from __future__ import annotations

import base64
import struct

import numpy as np
import orjson
import pytest

from cvdeploy.errors import InputError, PayloadTooLargeError
from cvdeploy.serving.protocols.v2_codec import encode_response, output, parse_request

LIMIT = 1 << 20


def json_request(inputs, **extra):
    return orjson.dumps({"inputs": inputs, **extra})


def binary_request(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), str(len(head))


def test_json_fp32_tensor_is_parsed_with_its_shape():
    body = json_request(
        [{"name": "x", "datatype": "FP32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]}]
    )
    request = parse_request(body, None, LIMIT)
    (tensor,) = request.inputs
    assert tensor.data.shape == (1, 2, 2)
    assert tensor.data.dtype == np.float32


def test_nested_json_data_is_accepted():
    body = json_request(
        [{"name": "x", "datatype": "UINT8", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]
    )
    assert parse_request(body, None, LIMIT).inputs[0].data.tolist() == [[1, 2], [3, 4]]


def test_json_bytes_are_base64_images():
    payload = base64.b64encode(b"\x89PNG fake").decode()
    body = json_request([{"name": "images", "datatype": "BYTES", "shape": [1], "data": [payload]}])
    assert parse_request(body, None, LIMIT).inputs[0].data == [b"\x89PNG fake"]


def test_binary_bytes_tensor_is_split_by_length_prefixes():
    items = [b"first image", b"second"]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, length = binary_request(header, raw)
    assert parse_request(body, length, LIMIT).inputs[0].data == items


def test_binary_fp32_tensor_round_trips():
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 3, 2, 2],
                "parameters": {"binary_data_size": array.nbytes},
            }
        ]
    }
    body, length = binary_request(header, array.tobytes())
    np.testing.assert_array_equal(parse_request(body, length, LIMIT).inputs[0].data, array)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}], "holds 4"),
        ([{"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}], "not a v2 datatype"),
        ([{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}], "non-negative"),
        ([{"name": "x", "datatype": "FP32", "shape": [1]}], "neither 'data'"),
        ([{"datatype": "FP32", "shape": [1], "data": [1]}], "needs a 'name'"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}], "float32"),
        ([{"name": "x", "datatype": "UINT8", "shape": [2], "data": [[1, 2], [3]]}], "regular"),
        ([{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["!!!"]}], "base64"),
        ([], "non-empty 'inputs'"),
    ],
)
def test_malformed_json_tensor_is_a_clear_input_error(inputs, message):
    with pytest.raises(InputError, match=message):
        parse_request(json_request(inputs), None, LIMIT)


def test_binary_size_mismatch_names_the_expected_byte_count():
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [4],
                "parameters": {"binary_data_size": 8},
            }
        ]
    }
    body, length = binary_request(header, b"\0" * 8)
    with pytest.raises(InputError, match="needs 16 bytes, got 8"):
        parse_request(body, length, LIMIT)


def test_binary_size_past_the_body_is_rejected():
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "UINT8",
                "shape": [100],
                "parameters": {"binary_data_size": 100},
            }
        ]
    }
    body, length = binary_request(header, b"\0" * 10)
    with pytest.raises(InputError, match="only 10 binary bytes"):
        parse_request(body, length, LIMIT)


def test_trailing_unaccounted_binary_bytes_are_rejected():
    body, length = binary_request(
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]}, b"junk"
    )
    with pytest.raises(InputError, match="no input's"):
        parse_request(body, length, LIMIT)


def test_bad_header_length_is_rejected():
    with pytest.raises(InputError, match="Inference-Header-Content-Length"):
        parse_request(b"{}", "9999", LIMIT)
    with pytest.raises(InputError, match="integer"):
        parse_request(b"{}", "abc", LIMIT)


def test_invalid_json_is_rejected():
    with pytest.raises(InputError, match="not valid JSON"):
        parse_request(b"{nope", None, LIMIT)


def test_oversized_json_tensor_is_refused_before_parsing():
    inputs = [{"name": "x", "datatype": "FP32", "shape": [10_000_000], "data": [0]}]
    with pytest.raises(PayloadTooLargeError):
        parse_request(json_request(inputs), None, LIMIT)


def _request(outputs=None, binary=False):
    return parse_request(
        json_request(
            [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}],
            **({"outputs": outputs} if outputs is not None else {}),
            parameters={"binary_data_output": binary},
        ),
        None,
        LIMIT,
    )


def test_response_is_json_unless_binary_is_asked_for():
    outs = [output("scores", np.array([[0.5, 0.25]], dtype=np.float32), (1, 2))]
    body, length = encode_response("m", "1", outs, _request())
    assert length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5, 0.25]


def test_binary_response_puts_raw_bytes_after_the_header():
    scores = np.array([[0.5, 0.25]], dtype=np.float32)
    labels = [b"cat", b"dog"]
    outs = [output("scores", scores, (1, 2)), output("labels", labels, (1, 2))]
    body, length = encode_response("m", "1", outs, _request(binary=True))
    header = orjson.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [8, 14]
    np.testing.assert_array_equal(np.frombuffer(body[length : length + 8], np.float32), [0.5, 0.25])
    assert body[length + 8 :] == b"\x03\0\0\0cat\x03\0\0\0dog"


def test_unknown_requested_output_lists_the_real_ones():
    outs = [output("scores", np.zeros((1, 1), np.float32), (1, 1))]
    with pytest.raises(InputError, match="this model has scores"):
        encode_response("m", "1", outs, _request(outputs=[{"name": "nope"}]))
