"""The MLflow ``python_function`` loader predicts like cvdeploy's server."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, IMAGES

from cvdeploy.errors import InputError, ModelLoadError
from cvdeploy.registry import Registry
from cvdeploy.registry.pyfunc import _load_pyfunc


@pytest.fixture(scope="module")
def data_path(registry: Registry) -> Path:
    version = registry.register(DIGITS, "digits_pyfunc")
    return Path(version.source.removeprefix("file://")) / "data"


@pytest.fixture(scope="module")
def model(data_path: Path):
    return _load_pyfunc(str(data_path))


def _b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def _top(prediction: dict) -> str:
    return prediction["classes"][0]["label"]


def test_predicts_a_digit_from_base64(model):
    predictions = model.predict([_b64("digit_3.png"), _b64("digit_7.png")])
    assert [_top(p) for p in predictions] == ["3", "7"]
    assert predictions[0]["task"] == "classification"


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": [_b64("digit_5.png")]},
        {"inputs": {"image": [_b64("digit_5.png")]}},
        {"dataframe_split": {"columns": ["image"], "data": [[_b64("digit_5.png")]]}},
        {"dataframe_records": [{"image": _b64("digit_5.png")}]},
        {"image": [_b64("digit_5.png")]},
        _b64("digit_5.png"),
        (IMAGES / "digit_5.png").read_bytes(),
        [(IMAGES / "digit_5.png").read_bytes()],
        # What MLflow's scoring server hands over for tensor input: base64 text as bytes.
        {"image": np.array([_b64("digit_5.png").encode()], dtype=object)},
        np.array([_b64("digit_5.png").encode()]),
    ],
    ids=[
        "instances",
        "inputs",
        "split",
        "records",
        "columnar",
        "str",
        "bytes",
        "bytes-list",
        "tensor-dict",
        "tensor",
    ],
)
def test_accepts_every_mlflow_input_shape(model, payload):
    assert _top(model.predict(payload)[0]) == "5"


def test_params_reach_the_model(model):
    predictions = model.predict([_b64("digit_3.png")], params={"top_k": 2})
    assert len(predictions[0]["classes"]) == 2


def test_unreadable_input_is_an_input_error(model):
    with pytest.raises(InputError):
        model.predict(42)
    with pytest.raises(InputError):
        model.predict({"instances": ["not base64 !!"]})


def test_tampered_artifact_is_refused_at_load(registry: Registry, tmp_path: Path):
    version = registry.register(DIGITS, "digits_tampered")
    data = Path(version.source.removeprefix("file://")) / "data"
    onnx = data / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1])
    with pytest.raises(ModelLoadError, match="sha256"):
        _load_pyfunc(str(data))


def test_card_path_outside_is_refused_at_load(registry: Registry):
    version = registry.register(DIGITS, "digits_escape")
    data = Path(version.source.removeprefix("file://")) / "data"
    card = json.loads((data / "model_card.json").read_text())
    card["onnx"] = "../../../../../etc/passwd"
    (data / "model_card.json").write_text(json.dumps(card))
    from cvdeploy.registry import UnsafePathError

    with pytest.raises(UnsafePathError):
        _load_pyfunc(str(data))
