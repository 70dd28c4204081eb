from __future__ import annotations

import math

import numpy as np
import pytest

from cvdeploy.errors import InvalidParameterError
from cvdeploy.runtime import PredictParams


def test_defaults() -> None:
    assert PredictParams() == PredictParams(conf=0.25, iou=0.45, max_det=300, top_k=5)


def test_query_string_values_are_parsed() -> None:
    merged = PredictParams().merged({"conf": "0.5", "iou": " 0.3 ", "max_det": "10", "top_k": "1"})
    assert merged == PredictParams(conf=0.5, iou=0.3, max_det=10, top_k=1)
    assert isinstance(merged.conf, float)
    assert isinstance(merged.max_det, int)


def test_numbers_are_accepted_including_numpy_and_integral_floats() -> None:
    merged = PredictParams().merged({"conf": 1, "max_det": 10.0, "top_k": np.int64(3)})
    assert merged == PredictParams(conf=1.0, max_det=10, top_k=3)


def test_empty_overrides_return_the_same_object() -> None:
    params = PredictParams()
    assert params.merged({}) is params


def test_params_are_hashable_for_caches() -> None:
    assert hash(PredictParams()) == hash(PredictParams())


def test_unknown_key_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidParameterError, match=r"'confidence'.*conf, iou, max_det, top_k"):
        PredictParams().merged({"confidence": 0.5})


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("conf", "abc", "a number between 0 and 1"),
        ("conf", 1.5, "a number between 0 and 1"),
        ("conf", "-0.1", "a number between 0 and 1"),
        ("conf", math.nan, "a number between 0 and 1"),
        ("conf", "nan", "a number between 0 and 1"),
        ("iou", 2, "a number between 0 and 1"),
        ("max_det", 0, "an integer between 1 and 10000"),
        ("max_det", 10_001, "an integer between 1 and 10000"),
        ("max_det", "1.5", "an integer between 1 and 10000"),
        ("max_det", 2.5, "an integer between 1 and 10000"),
        ("max_det", True, "an integer between 1 and 10000"),
        ("top_k", 0, "an integer >= 1"),
        ("top_k", None, "an integer >= 1"),
        ("top_k", [1], "an integer >= 1"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_range(
    key: str, value: object, allowed: str
) -> None:
    with pytest.raises(InvalidParameterError) as info:
        PredictParams().merged({key: value})
    message = str(info.value)
    assert repr(key) in message
    assert allowed in message
    assert repr(value) in message or str(value) in message


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidParameterError, match="'iou'"):
        PredictParams(iou=-1)
