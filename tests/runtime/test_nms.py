"""NMS against two references: a plain-Python greedy NMS and ONNX's NonMaxSuppression operator."""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cvdeploy.runtime.tasks import nms as nms_module
from cvdeploy.runtime.tasks.nms import nms, top_candidates

NUM_CLASSES = 4


def _iou(a: list[float], b: list[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    boxes: list[list[float]], scores: list[float], classes: list[int], threshold: float
) -> list[int]:
    """Textbook greedy NMS, one class at a time, merged by score."""
    kept: list[int] = []
    for cls in sorted(set(classes)):
        order = sorted(
            (i for i in range(len(boxes)) if classes[i] == cls), key=lambda i: -scores[i]
        )
        chosen: list[int] = []
        for i in order:
            if all(_iou(boxes[i], boxes[j]) <= threshold for j in chosen):
                chosen.append(i)
        kept += chosen
    return sorted(kept, key=lambda i: -scores[i])


@functools.lru_cache(maxsize=1)
def _onnx_nms_session() -> ort.InferenceSession:
    node = helper.make_node(
        "NonMaxSuppression",
        ["boxes", "scores", "max_out", "iou", "score_threshold"],
        ["selected"],
        center_point_box=0,
    )
    graph = helper.make_graph(
        [node],
        "nms_reference",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, NUM_CLASSES, "n"]),
            helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["k", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnx_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float
) -> set[int]:
    """Indices ONNX Runtime's NonMaxSuppression keeps; each box scores only in its own class."""
    per_class = np.full((1, NUM_CLASSES, len(boxes)), -1.0, dtype=np.float32)
    per_class[0, classes, np.arange(len(boxes))] = scores
    (selected,) = _onnx_nms_session().run(
        None,
        {
            # ONNX corners are [y1, x1, y2, x2]; IoU does not care about the axis order.
            "boxes": boxes[None, :, [1, 0, 3, 2]].astype(np.float32),
            "scores": per_class,
            "max_out": np.array([len(boxes)], dtype=np.int64),
            "iou": np.array([threshold], dtype=np.float32),
            "score_threshold": np.array([0.0], dtype=np.float32),
        },
    )
    return {int(i) for i in selected[:, 2]}


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    b = boxes.astype(np.float64)
    width = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    height = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou: np.ndarray = inter / (area[:, None] + area[None, :] - inter)
    return iou


@st.composite
def detections(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Random boxes from a drawn seed: hypothesis explores count, crowding and threshold."""
    count = draw(st.integers(0, 60))
    canvas = draw(st.sampled_from([20, 100, 400]))  # small canvas = heavy overlap
    threshold = draw(st.sampled_from([0.1, 0.3, 0.45, 0.5, 0.7, 0.9]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Quarter-pixel coordinates are exact in float32, so every reference sees the same boxes.
    xy = rng.integers(0, canvas * 4, (count, 2)) / 4
    wh = rng.integers(2, 160, (count, 2)) / 4
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.permutation(10_000)[:count] + 1).astype(np.float32) / 10_000  # unique
    classes = rng.integers(0, NUM_CLASSES, count)
    # IoU exactly at the threshold is legitimately decided either way by rounding: avoid it.
    same_class = classes[:, None] == classes[None, :]
    assume(not np.any(same_class & (np.abs(_iou_matrix(boxes) - threshold) < 1e-5)))
    return boxes, scores, classes, threshold


@settings(max_examples=200, deadline=None)
@given(detections())
def test_nms_matches_python_reference_and_onnx_operator(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> None:
    boxes, scores, classes, threshold = case
    expected = reference_nms(boxes.tolist(), scores.tolist(), classes.tolist(), threshold)
    # Small blocks exercise the block-against-kept step that large inputs go through.
    for block in (3, 16, nms_module.BLOCK):
        with mock.patch.object(nms_module, "BLOCK", block):
            assert nms(boxes, scores, threshold, class_ids=classes).tolist() == expected
    if len(boxes):
        assert set(expected) == onnx_nms(boxes, scores, classes, threshold)


@settings(max_examples=60, deadline=None)
@given(detections(), st.integers(1, 10))
def test_max_det_keeps_the_best_prefix_of_the_full_result(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, float], max_det: int
) -> None:
    boxes, scores, classes, threshold = case
    full = nms(boxes, scores, threshold, class_ids=classes)
    for block in (3, nms_module.BLOCK):
        with mock.patch.object(nms_module, "BLOCK", block):
            capped = nms(boxes, scores, threshold, class_ids=classes, max_det=max_det)
        assert capped.tolist() == full[:max_det].tolist()


def test_thousands_of_crowded_boxes_match_the_reference() -> None:
    rng = np.random.default_rng(7)
    xy = rng.integers(0, 400, (1500, 2)) / 4
    boxes = np.concatenate([xy, xy + rng.integers(8, 80, (1500, 2)) / 4], axis=1)
    scores = (rng.permutation(1500) + 1).astype(np.float32) / 1500
    classes = rng.integers(0, 3, 1500)
    kept = nms(boxes.astype(np.float32), scores, 0.5, class_ids=classes)
    assert set(kept.tolist()) == onnx_nms(boxes, scores, classes, 0.5)


def test_empty_input_keeps_nothing() -> None:
    assert nms(np.empty((0, 4), np.float32), np.empty(0, np.float32), 0.5).tolist() == []


def test_overlapping_boxes_of_different_classes_are_both_kept() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5, class_ids=np.array([0, 1])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_iou_threshold_one_suppresses_nothing() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 1.0).tolist() == [1, 2, 0]


def test_zero_area_boxes_never_suppress_or_get_suppressed() -> None:
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.1).tolist() == [0, 1, 2]


def test_equal_scores_keep_input_order() -> None:
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], np.float32)
    assert nms(boxes, np.full(3, 0.5, np.float32), 0.5).tolist() == [0, 1, 2]


def test_top_candidates_picks_the_best_scores_only_when_over_the_limit() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7], np.float32)
    assert top_candidates(scores, 4) is None
    chosen = top_candidates(scores, 2)
    assert chosen is not None
    assert sorted(chosen.tolist()) == [1, 3]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nms_accepts_any_float_dtype(dtype: type) -> None:
    boxes: np.ndarray = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], dtype=dtype)
    assert nms(boxes, np.array([0.9, 0.8], dtype=dtype), 0.5).tolist() == [0]
