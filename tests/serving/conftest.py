"""Real servers on loopback for the protocol tests: uvicorn on a thread via ModelServer."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import model_factory
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cvdeploy import ModelServer

DETECTOR_LABELS = ["circle", "square", "triangle"]
# Two boxes in 64x64 input pixels: (cx, cy, w, h, class, score).
DETECTOR_BOXES = ((20, 20, 16, 16, 0, 0.9), (44, 40, 20, 12, 2, 0.6))


def make_slow_model(path: Path, channels: int = 192, layers: int = 2) -> Path:
    """A real classifier that takes tens of milliseconds per image (convolutions on 32x32).

    Used to fill the queue and pass deadlines without any sleep or mock in the server.
    """
    rng = np.random.default_rng(0)
    nodes = []
    inits = []
    source, cin = "images", 3
    for i in range(layers):
        w = rng.standard_normal((channels, cin, 3, 3)).astype(np.float32) * 0.01
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [source, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        source, cin = f"c{i}", channels
    inits.append(numpy_helper.from_array(np.ones((channels, 4), np.float32), "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"task": "classify", "imgsz": "[32, 32]"})
    onnx.save(model, str(path))
    return path


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> np.ndarray:
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    image[:] = color
    return image


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def classifier_path(models_dir: Path) -> Path:
    return model_factory.make_classifier_model(
        models_dir / "colors.onnx",
        num_classes=3,
        metadata={"task": "classify", "names": "{0: 'red', 1: 'green', 2: 'blue'}"},
    )


@pytest.fixture(scope="session")
def detector_path(models_dir: Path) -> Path:
    return model_factory.make_yolov8_model(
        models_dir / "shapes.onnx",
        DETECTOR_BOXES,
        num_classes=3,
        imgsz=64,
        metadata=model_factory.ultralytics_metadata(names=DETECTOR_LABELS, imgsz=64),
    )


@pytest.fixture(scope="session")
def failing_path(models_dir: Path) -> Path:
    return model_factory.make_failing_model(models_dir / "failing.onnx")


@pytest.fixture(scope="session")
def slow_path(models_dir: Path) -> Path:
    return make_slow_model(models_dir / "slow.onnx")


def _serve(path: Path, model_type: str | None, **kwargs: object) -> Iterator[ModelServer]:
    server = ModelServer(model_type, path, port=0, access_log=False, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


@pytest.fixture(scope="session")
def classifier(classifier_path: Path) -> Iterator[ModelServer]:
    yield from _serve(classifier_path, "classification", limits={"max_images_per_request": 4})


@pytest.fixture(scope="session")
def detector(detector_path: Path) -> Iterator[ModelServer]:
    yield from _serve(detector_path, "yolo", limits={"max_body_bytes": 256 * 1024})


@pytest.fixture(scope="session")
def failing(failing_path: Path) -> Iterator[ModelServer]:
    yield from _serve(failing_path, "classification")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c
