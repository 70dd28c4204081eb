"""Every MLflow scoring input format yields the same images."""

from __future__ import annotations

import base64

import pytest

from cvdeploy.errors import InputError
from cvdeploy.serving.protocols.mlflow import extract_images

A = base64.b64encode(b"image-a").decode()
B = base64.b64encode(b"image-b").decode()


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["image"], "data": [[A], [B]]}},
        {"dataframe_split": {"columns": ["id", "image"], "data": [[1, A], [2, B]]}},
        {"dataframe_records": [{"image": A}, {"image": B}]},
        {"dataframe_records": [{"id": 1, "b64": A}, {"id": 2, "b64": B}]},
        {"instances": [A, B]},
        {"instances": [{"b64": A}, {"b64": B}]},
        {"inputs": {"image": [A, B]}},
        {"inputs": [A, B]},
    ],
)
def test_every_format_gives_the_images_in_order(payload):
    images, params = extract_images(payload)
    assert images == [b"image-a", b"image-b"]
    assert params == {}


def test_params_travel_with_the_request():
    _, params = extract_images({"instances": [A], "params": {"conf": 0.5}})
    assert params == {"conf": 0.5}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([A], "JSON object"),
        ({"instances": [A], "inputs": [A]}, "exactly one"),
        ({"columns": ["image"]}, "exactly one"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[A, B]]}}, "no image column"),
        ({"dataframe_split": {"columns": ["image"], "data": [[A, B]]}}, "2 values for 1"),
        ({"instances": []}, "holds no images"),
        ({"instances": ["not base64!"]}, "not valid base64"),
        ({"instances": [A], "params": [1]}, "'params' must be"),
    ],
)
def test_malformed_requests_say_what_is_wrong(payload, message):
    with pytest.raises(InputError, match=message):
        extract_images(payload)
