"""Tiny synthetic ONNX models for tests, built with ``onnx.helper`` in milliseconds.

Detector fakes emit a *constant* output (an initializer expanded over the batch dimension of
the input), so a test says exactly which boxes come out. Classifiers are real, if trivial:
global average pool -> linear layer (-> softmax), so the colour of an image picks the class.

Every builder writes ``path`` and returns it as a ``Path``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what every onnxruntime >= 1.14 reads

# (cx, cy, w, h, class_id, score) in input pixels
Box = tuple[float, float, float, float, int, float]


def ultralytics_metadata(
    task: str = "detect",
    names: Sequence[str] | None = None,
    imgsz: int | Sequence[int] = 64,
    stride: int = 32,
    **extra: object,
) -> dict[str, str]:
    """Metadata spelled as Ultralytics' exporter writes it: ``str()`` of Python objects."""
    size = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
    meta: dict[str, object] = {
        "description": "Ultralytics YOLOv8n model (test fake)",
        "author": "Ultralytics",
        "version": "8.3.0",
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "stride": stride,
        "task": task,
        "batch": 1,
        "imgsz": size,
        "names": dict(enumerate(names or ["person", "bicycle", "car"])),
        "args": {"batch": 1, "half": False, "dynamic": True, "nms": False},
        "channels": 3,
    }
    meta.update(extra)
    return {k: str(v) for k, v in meta.items()}


def _image_input(
    imgsz: int | tuple[int, int],
    channels: int = 3,
    nhwc: bool = False,
    batch: int | None = None,
    dynamic_hw: bool = False,
    elem_type: int = TensorProto.FLOAT,
) -> onnx.ValueInfoProto:
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    b: int | str = "batch" if batch is None else batch
    h: int | str = "height" if dynamic_hw else height
    w: int | str = "width" if dynamic_hw else width
    shape = [b, h, w, channels] if nhwc else [b, channels, h, w]
    return helper.make_tensor_value_info("images", elem_type, shape)


def _save(
    path: str | Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Iterable[onnx.TensorProto],
    metadata: Mapping[str, str] | None,
) -> Path:
    graph = helper.make_graph(nodes, "cvdeploy_test", inputs, outputs, list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cvdeploy-tests"
    )
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    out = Path(path)
    onnx.save(model, str(out))
    return out


def make_constant_output_model(
    path: str | Path,
    outputs: Mapping[str, np.ndarray],
    *,
    imgsz: int | tuple[int, int] = 64,
    channels: int = 3,
    nhwc: bool = False,
    batch: int | None = None,
    dynamic_hw: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """A model whose every output ``name`` is ``outputs[name]`` (no batch dim) for each item."""
    nodes = [
        helper.make_node("Shape", ["images"], ["input_shape"]),
        helper.make_node(
            "Slice", ["input_shape", "zero", "one"], ["batch_dim"], name="batch_of_input"
        ),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    infos = []
    dtypes = {
        np.dtype(np.float32): TensorProto.FLOAT,
        np.dtype(np.float16): TensorProto.FLOAT16,
        np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.int64): TensorProto.INT64,
    }
    for name, value in outputs.items():
        arr = np.asarray(value)
        inits.append(numpy_helper.from_array(arr[None], f"{name}_value"))
        inits.append(numpy_helper.from_array(np.array(arr.shape, dtype=np.int64), f"{name}_dims"))
        nodes.append(
            helper.make_node("Concat", ["batch_dim", f"{name}_dims"], [f"{name}_shape"], axis=0)
        )
        nodes.append(helper.make_node("Expand", [f"{name}_value", f"{name}_shape"], [name]))
        b: int | str = "batch" if batch is None else batch
        infos.append(helper.make_tensor_value_info(name, dtypes[arr.dtype], [b, *arr.shape]))
    inputs = [_image_input(imgsz, channels, nhwc, batch, dynamic_hw)]
    return _save(path, nodes, inputs, infos, inits, metadata)


def yolov8_output(boxes: Sequence[Box], num_classes: int = 3, anchors: int = 84) -> np.ndarray:
    """``(4+nc, anchors)``: the given boxes in the first anchors, zero scores elsewhere."""
    out = np.zeros((4 + num_classes, anchors), dtype=np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


def yolov5_output(
    boxes: Sequence[tuple[float, float, float, float, int, float, float]],
    num_classes: int = 3,
    anchors: int = 252,
) -> np.ndarray:
    """``(anchors, 5+nc)``; each box is (cx, cy, w, h, class_id, objectness, class_prob)."""
    out = np.zeros((anchors, 5 + num_classes), dtype=np.float32)
    for i, (cx, cy, w, h, cls, obj, prob) in enumerate(boxes):
        out[i, :5] = (cx, cy, w, h, obj)
        out[i, 5 + cls] = prob
    return out


def end2end_output(
    boxes: Sequence[tuple[float, float, float, float, float, int]], max_det: int = 300
) -> np.ndarray:
    """``(max_det, 6)`` rows of x1, y1, x2, y2, score, class; zero rows after the given ones."""
    out = np.zeros((max_det, 6), dtype=np.float32)
    for i, (x1, y1, x2, y2, score, cls) in enumerate(boxes):
        out[i] = (x1, y1, x2, y2, score, cls)
    return out


def make_yolov8_model(
    path: str | Path,
    boxes: Sequence[Box] = ((32, 32, 16, 16, 0, 0.9),),
    *,
    num_classes: int = 3,
    imgsz: int | tuple[int, int] = 64,
    anchors: int | None = None,
    transposed: bool = False,
    metadata: Mapping[str, str] | None = None,
    **input_kwargs: object,
) -> Path:
    """Ultralytics YOLOv8/11 layout ``[b, 4+nc, N]`` (or ``[b, N, 4+nc]`` when transposed).

    ``anchors`` defaults to the real count for ``imgsz`` (strides 8, 16, 32).
    """
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    count = anchors or sum((height // s) * (width // s) for s in (8, 16, 32))
    out = yolov8_output(boxes, num_classes, count)
    if transposed:
        out = np.ascontiguousarray(out.T)
    return make_constant_output_model(
        path,
        {"output0": out},
        imgsz=imgsz,
        metadata=metadata,
        **input_kwargs,  # type: ignore[arg-type]
    )


def make_yolov5_model(
    path: str | Path,
    boxes: Sequence[tuple[float, float, float, float, int, float, float]] = (
        (32, 32, 16, 16, 0, 0.9, 0.9),
    ),
    *,
    num_classes: int = 3,
    imgsz: int = 64,
    anchors: int | None = None,
    metadata: Mapping[str, str] | None = None,
    **input_kwargs: object,
) -> Path:
    """YOLOv5 layout ``[b, N, 5+nc]``; N defaults to 3 anchors per cell of strides 8/16/32."""
    count = anchors or 3 * sum((imgsz // s) ** 2 for s in (8, 16, 32))
    out = yolov5_output(boxes, num_classes, count)
    return make_constant_output_model(
        path,
        {"output0": out},
        imgsz=imgsz,
        metadata=metadata,
        **input_kwargs,  # type: ignore[arg-type]
    )


def make_end2end_model(
    path: str | Path,
    boxes: Sequence[tuple[float, float, float, float, float, int]] = ((8, 8, 24, 24, 0.9, 1),),
    *,
    max_det: int = 300,
    imgsz: int = 64,
    multi_output: bool = False,
    metadata: Mapping[str, str] | None = None,
    **input_kwargs: object,
) -> Path:
    """NMS inside the graph: ``[b, max_det, 6]``, or with ``multi_output`` the TensorRT
    EfficientNMS four (``num_dets [b,1]``, ``det_boxes [b,k,4]``, ``det_scores [b,k]``,
    ``det_classes [b,k]``)."""
    rows = end2end_output(boxes, max_det)
    if multi_output:
        outputs = {
            "num_dets": np.array([len(boxes)], dtype=np.int32),
            "det_boxes": rows[:, :4].copy(),
            "det_scores": rows[:, 4].copy(),
            "det_classes": rows[:, 5].astype(np.int32),
        }
    else:
        outputs = {"output0": rows}
    return make_constant_output_model(
        path,
        outputs,
        imgsz=imgsz,
        metadata=metadata,
        **input_kwargs,  # type: ignore[arg-type]
    )


def make_classifier_model(
    path: str | Path,
    num_classes: int = 10,
    imgsz: int | tuple[int, int] = 32,
    *,
    logits: bool = True,
    weights: np.ndarray | None = None,
    channels: int = 3,
    nhwc: bool = False,
    batch: int | None = None,
    dynamic_hw: bool = False,
    float16_input: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Mean colour per channel -> ``weights`` (channels x classes) -> logits (or softmax).

    The default weights make class ``i`` prefer channel ``i % channels``: a pure red image is
    class 0, pure green class 1, pure blue class 2.
    """
    if weights is None:
        weights = np.zeros((channels, num_classes), dtype=np.float32)
        for i in range(num_classes):
            weights[i % channels, i] = 10.0 / (1 + i // channels)
    nodes = []
    source = "images"
    if float16_input:
        nodes.append(helper.make_node("Cast", ["images"], ["images32"], to=TensorProto.FLOAT))
        source = "images32"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
    ]
    out_name = "logits" if logits else "probs"
    if logits:
        nodes.append(helper.make_node("Identity", ["scores"], [out_name]))
    else:
        nodes.append(helper.make_node("Softmax", ["scores"], [out_name], axis=1))
    inits = [numpy_helper.from_array(np.asarray(weights, dtype=np.float32), "weights")]
    b: int | str = "batch" if batch is None else batch
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [b, num_classes])]
    elem_type = TensorProto.FLOAT16 if float16_input else TensorProto.FLOAT
    inputs = [_image_input(imgsz, channels, nhwc, batch, dynamic_hw, elem_type)]
    return _save(path, nodes, inputs, outputs, inits, metadata)


def make_failing_model(path: str | Path, imgsz: int = 32, num_classes: int = 4) -> Path:
    """A classifier that loads and survives a zero warm-up but fails on any real image.

    A Reshape takes its target from the data: ``[-1, 1 + 4 * ceil(max(x))]``. All-zero input
    gives ``[-1, 1]`` (fine); any pixel > 0 gives ``[-1, 5]``, which 3*imgsz*imgsz elements do
    not divide into, so ONNX Runtime fails inside ``run`` rather than at load.
    """
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Ceil", ["peak"], ["peak_up"]),
        helper.make_node("Mul", ["peak_up", "four"], ["scaled"]),
        helper.make_node("Add", ["scaled", "onef"], ["width_f"]),
        helper.make_node("Cast", ["width_f"], ["width_i"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["width_i", "axes0"], ["width_1d"]),
        helper.make_node("Concat", ["minus_one", "width_1d"], ["target"], axis=0),
        helper.make_node("Reshape", ["images", "target"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zerof"], ["nothing"]),
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["raw"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(4.0, dtype=np.float32), "four"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "onef"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zerof"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.ones((3, num_classes), dtype=np.float32), "weights"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])]
    return _save(path, nodes, [_image_input(imgsz)], outputs, inits, None)


def make_segmentation_like_model(path: str | Path, imgsz: int = 64) -> Path:
    """Two outputs like an Ultralytics segmenter (``[b, 4+nc+32, N]`` and mask prototypes)."""
    return make_constant_output_model(
        path,
        {
            "output0": np.zeros((4 + 3 + 32, 84), dtype=np.float32),
            "output1": np.zeros((32, 16, 16), dtype=np.float32),
        },
        imgsz=imgsz,
    )


def make_two_input_model(path: str | Path, imgsz: int = 32) -> Path:
    """An image input plus a second one (like RT-DETR's ``orig_target_sizes``)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Add", ["flat", "extra"], ["out"]),
    ]
    inputs = [
        _image_input(imgsz),
        helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 3]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])]
    return _save(path, nodes, inputs, outputs, [], None)


def make_non_image_model(path: str | Path) -> Path:
    """A model whose only input is a flat vector: nothing to feed an image into."""
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])]
    return _save(path, nodes, inputs, outputs, [], None)
