"""Detector output layouts: detection rule, decoding, and boxes back in original pixels."""

from __future__ import annotations

from pathlib import Path

import model_factory as mf
import numpy as np
import pytest

from cvdeploy.errors import ConfigError, ModelLoadError
from cvdeploy.runtime import DetectionResult, PredictParams, load_model
from cvdeploy.runtime.preprocess import ImageTransform, Preprocessor
from cvdeploy.runtime.tasks import detect
from cvdeploy.runtime.tasks.detect import DetectionTask
from cvdeploy.runtime.tasks.layouts import DetectionHead, OutputInfo, resolve_head

NAMES = ["person", "bicycle", "car"]
# A 64x48 image letterboxed into 64x64: scale 1, 8 px of padding on top.
IMAGE = np.zeros((48, 64, 3), np.uint8)


def _out(*shape: int, name: str = "output0", dtype: str = "float32") -> OutputInfo:
    return OutputInfo(name, shape, dtype)


def _detect(result: object) -> DetectionResult:
    assert isinstance(result, DetectionResult)
    return result


# --- the layout rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "classes", "expected"),
    [
        ((1, 84, 8400), 80, DetectionHead("v8", 80)),
        ((1, 8400, 84), 80, DetectionHead("v8t", 80)),
        ((1, 25200, 85), 80, DetectionHead("v5", 80)),
        ((1, 300, 6), 80, DetectionHead("end2end", None)),
        ((1, 8400, 6), 2, DetectionHead("v8t", 2)),  # labels settle a 6-wide output
        ((1, 25200, 6), 1, DetectionHead("v5", 1)),
    ],
)
def test_known_class_count_picks_the_layout(
    shape: tuple[int, ...], classes: int, expected: DetectionHead
) -> None:
    assert resolve_head([_out(*shape)], {}, classes, (640, 640)) == expected


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 84, 8400), DetectionHead("v8", 80)),
        ((1, 8400, 84), DetectionHead("v8t", 80)),  # N == anchors of strides 8/16/32 at 640
        ((1, 25200, 85), DetectionHead("v5", 80)),  # N == 3 x anchors
        ((1, 300, 6), DetectionHead("end2end", None)),
        ((1, 1000, 12), DetectionHead("v5", 7)),  # channels-last default
    ],
)
def test_unknown_class_count_falls_back_to_shape_rules(
    shape: tuple[int, ...], expected: DetectionHead
) -> None:
    assert resolve_head([_out(*shape)], {}, None, (640, 640)) == expected


def test_ultralytics_metadata_with_nms_means_end2end_even_for_two_classes() -> None:
    meta = mf.ultralytics_metadata(names=["a", "b"], args={"nms": True, "batch": 1})
    assert resolve_head([_out(1, 300, 6)], meta, 2, (640, 640)).layout == "end2end"


def test_ultralytics_models_are_never_read_as_transposed_or_v5() -> None:
    meta = mf.ultralytics_metadata(names=["a", "b"])
    assert resolve_head([_out(1, 300, 6)], meta, 2, (640, 640)).layout == "end2end"


def test_four_outputs_with_a_box_tensor_are_efficient_nms() -> None:
    outputs = [
        _out(1, 1, name="num_dets", dtype="int32"),
        _out(1, 100, 4, name="det_boxes"),
        _out(1, 100, name="det_scores"),
        _out(1, 100, name="det_classes", dtype="int32"),
    ]
    head = resolve_head(outputs, {}, None, (640, 640))
    assert head == DetectionHead("end2end4", None, 0, 1, 2, 3)


def test_efficient_nms_outputs_are_matched_by_dtype_when_names_say_nothing() -> None:
    outputs = [
        _out(1, 100, name="a", dtype="int64"),
        _out(1, 100, 4, name="b"),
        _out(1, 1, name="c", dtype="int32"),
        _out(1, 100, name="d"),
    ]
    head = resolve_head(outputs, {}, None, (640, 640))
    assert (head.scores_index, head.classes_index, head.count_index) == (3, 0, 2)


@pytest.mark.parametrize(
    ("requested", "shape", "expected"),
    [
        ("v8", (1, 7, 84), DetectionHead("v8", 3)),
        ("yolov8", (1, 84, 7), DetectionHead("v8t", 3)),
        ("v5", (1, 84, 6), DetectionHead("v5", 1)),
        ("end2end", (1, 100, 6), DetectionHead("end2end", None)),
        ("nms", (1, 100, 6), DetectionHead("end2end", None)),
    ],
)
def test_explicit_output_layout_wins(
    requested: str, shape: tuple[int, ...], expected: DetectionHead
) -> None:
    assert resolve_head([_out(*shape)], {}, None, (64, 64), requested) == expected


def test_unknown_output_layout_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'v8', 'v5', 'end2end'"):
        resolve_head([_out(1, 7, 84)], {}, None, (64, 64), "yolov99")


def test_requested_layout_that_does_not_fit_says_so() -> None:
    with pytest.raises(ModelLoadError, match="end2end"):
        resolve_head([_out(1, 7, 84)], {}, None, (64, 64), "end2end")
    with pytest.raises(ModelLoadError, match="3 classes"):
        resolve_head([_out(1, 9, 84)], {}, 3, (64, 64), "v8")


def test_labels_that_fit_no_layout_fail_with_the_expected_shapes() -> None:
    with pytest.raises(ModelLoadError, match=r"does not fit 5 classes.*\[batch, 9, anchors\]"):
        resolve_head([_out(1, 84, 8400)], {}, 5, (640, 640))


def test_a_two_dimensional_output_is_not_a_detector() -> None:
    with pytest.raises(ModelLoadError, match="3-D"):
        resolve_head([_out(1, 10)], {}, None, (64, 64))


# --- decoding one image of a batch ----------------------------------------------------------


def _task(head: DetectionHead, names: list[str] = NAMES) -> DetectionTask:
    return DetectionTask(Preprocessor((64, 64)), names, head)


def test_v8_decoding_picks_the_requested_batch_item() -> None:
    first = mf.yolov8_output([(32, 32, 16, 16, 0, 0.9)], anchors=84)
    second = mf.yolov8_output([(16, 16, 8, 8, 2, 0.6)], anchors=84)
    outputs = [np.stack([first, second])]
    meta = ImageTransform.identity(64, 64)
    task = _task(DetectionHead("v8", 3))
    a = _detect(task.postprocess(outputs, 0, meta, PredictParams()))
    b = _detect(task.postprocess(outputs, 1, meta, PredictParams()))
    assert a.boxes.tolist() == [[24, 24, 40, 40]]
    assert a.labels == ["person"]
    assert b.boxes.tolist() == [[12, 12, 20, 20]]
    assert b.labels == ["car"]


def test_conf_is_a_strict_lower_bound() -> None:
    out = mf.yolov8_output([(32, 32, 16, 16, 0, 0.5), (10, 10, 4, 4, 1, 0.51)], anchors=84)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams(conf=0.5))
    )
    assert result.scores.tolist() == pytest.approx([0.51])


def test_nms_is_class_aware_and_results_are_best_first() -> None:
    boxes = [
        (32, 32, 20, 20, 0, 0.7),
        (33, 33, 20, 20, 0, 0.9),  # suppresses the first (same class, IoU ~0.82)
        (32, 32, 20, 20, 1, 0.8),  # other class: kept
    ]
    out = mf.yolov8_output(boxes, anchors=84)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert result.scores.tolist() == pytest.approx([0.9, 0.8])
    assert result.class_ids.tolist() == [0, 1]


def test_max_det_caps_the_number_of_detections() -> None:
    boxes = [(8 * i + 4, 8, 4, 4, 0, 0.3 + 0.05 * i) for i in range(8)]
    out = mf.yolov8_output(boxes, anchors=84)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams(max_det=3))
    )
    assert len(result) == 3
    assert result.scores.tolist() == pytest.approx([0.65, 0.6, 0.55])


def test_candidates_are_capped_before_nms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "MAX_CANDIDATES", 2)
    boxes = [(8 * i + 4, 8, 4, 4, 0, 0.3 + 0.05 * i) for i in range(5)]
    out = mf.yolov8_output(boxes, anchors=84)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert result.scores.tolist() == pytest.approx([0.5, 0.45])


def test_v5_score_is_objectness_times_class_probability() -> None:
    out = mf.yolov5_output([(32, 32, 16, 16, 1, 0.8, 0.5), (10, 10, 4, 4, 0, 0.2, 1.0)], anchors=20)
    result = _detect(
        _task(DetectionHead("v5", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert result.scores.tolist() == pytest.approx([0.4])
    assert result.class_ids.tolist() == [1]


def test_v8_transposed_decodes_like_v8() -> None:
    out = mf.yolov8_output([(32, 32, 16, 16, 2, 0.9)], anchors=84).T
    result = _detect(
        _task(DetectionHead("v8t", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert result.boxes.tolist() == [[24, 24, 40, 40]]
    assert result.labels == ["car"]


def test_end2end_rows_are_filtered_sorted_and_capped_without_nms() -> None:
    rows = mf.end2end_output(
        [(0, 0, 10, 10, 0.6, 0), (0, 0, 10, 10, 0.9, 0), (5, 5, 9, 9, 0.1, 1)], max_det=10
    )
    result = _detect(
        _task(DetectionHead("end2end", None)).postprocess([rows[None]], 0, None, PredictParams())
    )
    assert result.scores.tolist() == pytest.approx(
        [0.9, 0.6]
    )  # overlapping: NMS is the graph's job
    capped = _task(DetectionHead("end2end", None)).postprocess(
        [rows[None]], 0, None, PredictParams(max_det=1)
    )
    assert len(_detect(capped)) == 1


def test_class_ids_beyond_the_labels_get_generic_names() -> None:
    rows = mf.end2end_output([(0, 0, 10, 10, 0.9, 7)], max_det=5)
    result = _detect(
        _task(DetectionHead("end2end", None)).postprocess([rows[None]], 0, None, PredictParams())
    )
    assert result.labels == ["class_7"]


def test_float16_outputs_decode() -> None:
    out = mf.yolov8_output([(32, 32, 16, 16, 0, 0.9)], anchors=84).astype(np.float16)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert result.boxes.dtype == np.float32
    assert result.scores.dtype == np.float32
    assert result.boxes.tolist() == [[24, 24, 40, 40]]


def test_no_detections_gives_an_empty_result_with_typed_arrays() -> None:
    out = mf.yolov8_output([], anchors=84)
    result = _detect(
        _task(DetectionHead("v8", 3)).postprocess([out[None]], 0, None, PredictParams())
    )
    assert len(result) == 0
    assert result.boxes.shape == (0, 4)
    assert result.class_ids.dtype == np.int64
    assert result.to_dict()["detections"] == []


# --- end to end through ONNX Runtime ------------------------------------------------------


def _predict(path: Path, image: np.ndarray = IMAGE, **kwargs: object) -> DetectionResult:
    model = load_model(path, **kwargs)  # type: ignore[arg-type]
    return _detect(model.predict([image])[0])


def test_ultralytics_v8_model_maps_boxes_to_original_pixels(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(
        tmp_path / "v8.onnx",
        [(32, 32, 16, 16, 1, 0.9), (60, 60, 10, 10, 0, 0.8)],
        metadata=mf.ultralytics_metadata(names=NAMES),
    )
    result = _predict(path)
    # letterbox of 64x48 into 64x64 adds 8 rows on top; the second box is clipped at the bottom
    assert result.boxes.tolist() == [[24, 16, 40, 32], [55, 47, 64, 48]]
    assert result.labels == ["bicycle", "person"]
    assert result.image_size == (64, 48)


def test_v8_model_without_metadata_names_classes_generically(tmp_path: Path) -> None:
    result = _predict(mf.make_yolov8_model(tmp_path / "v8.onnx"))
    assert result.labels == ["class_0"]


def test_transposed_v8_model_with_labels_argument(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "v8t.onnx", [(32, 32, 16, 16, 2, 0.9)], transposed=True)
    model = load_model(path, labels=NAMES)
    assert model.output_layout == "v8t"
    assert _detect(model.predict([IMAGE])[0]).labels == ["car"]


def test_yolov5_model_end_to_end(tmp_path: Path) -> None:
    path = mf.make_yolov5_model(tmp_path / "v5.onnx", [(32, 32, 16, 16, 2, 0.9, 0.5)])
    model = load_model(path, labels=NAMES)
    assert model.output_layout == "v5"
    result = _detect(model.predict([IMAGE])[0])
    assert result.scores.tolist() == pytest.approx([0.45])
    assert result.boxes.tolist() == [[24, 16, 40, 32]]


@pytest.mark.parametrize("multi_output", [False, True])
def test_end2end_models_end_to_end(tmp_path: Path, multi_output: bool) -> None:
    path = mf.make_end2end_model(
        tmp_path / "e2e.onnx",
        [(8, 8, 24, 24, 0.9, 1), (0, 0, 4, 4, 0.2, 0)],
        multi_output=multi_output,
    )
    model = load_model(path, labels=NAMES)
    assert model.output_layout == ("end2end4" if multi_output else "end2end")
    result = _detect(model.predict([IMAGE])[0])
    assert result.boxes.tolist() == [[8, 0, 24, 16]]
    assert result.labels == ["bicycle"]


def test_fixed_batch_model_pads_a_short_batch(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "b2.onnx", batch=2)
    model = load_model(path)
    assert model.max_batch_size == 2
    results = model.predict([IMAGE, IMAGE, IMAGE])
    assert [len(_detect(r)) for r in results] == [1, 1, 1]


def test_nhwc_detector_is_fed_channels_last(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "nhwc.onnx", nhwc=True)
    model = load_model(path)
    assert model.layout == "NHWC"
    assert model.preprocess(IMAGE).tensor.shape == (64, 64, 3)
    assert len(_detect(model.predict([IMAGE])[0])) == 1


def test_dynamic_size_detector_with_stride_padding(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(
        tmp_path / "dyn.onnx",
        metadata=mf.ultralytics_metadata(names=NAMES, imgsz=64),
        dynamic_hw=True,
    )
    model = load_model(path, normalization={"pad": "stride"})
    assert model.preprocess(IMAGE).tensor.shape == (3, 64, 64)
    wide = np.zeros((20, 64, 3), np.uint8)
    assert model.preprocess(wide).tensor.shape == (3, 32, 64)
    result = _detect(model.predict([wide])[0])
    assert result.image_size == (64, 20)


def test_user_labels_that_do_not_fit_the_detector_fail_at_load(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "v8.onnx")
    with pytest.raises(ModelLoadError, match="does not fit 5 classes"):
        load_model(path, labels=["a", "b", "c", "d", "e"])


def test_metadata_names_that_do_not_fit_are_padded_from_the_graph(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(
        tmp_path / "v8.onnx", [(32, 32, 16, 16, 2, 0.9)], metadata={"names": "{0: 'only'}"}
    )
    model = load_model(path)
    assert model.labels == ["only", "class_1", "class_2"]


def test_output_layout_argument_overrides_detection(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(
        tmp_path / "v8.onnx",
        [(32, 32, 16, 16, 1, 0.9)],
        num_classes=2,
        anchors=100,
        transposed=True,
    )
    # [1, 100, 6] with no labels reads as end2end; forced to v8 it is [anchors, 4+2].
    assert load_model(path).output_layout == "end2end"
    model = load_model(path, output_layout="v8")
    assert model.output_layout == "v8t"
    assert _detect(model.predict([IMAGE])[0]).class_ids.tolist() == [1]


def test_detection_result_to_dict_is_json_ready_and_rounded() -> None:
    result = DetectionResult(
        boxes=np.array([[1.23456, 2.0, 3.0, 4.98765]], np.float32),
        scores=np.array([0.3], np.float32),
        class_ids=np.array([2], np.int64),
        labels=["car"],
        image_size=(640, 480),
    )
    assert result.to_dict() == {
        "task": "detection",
        "image": {"width": 640, "height": 480},
        "detections": [
            {"box": [1.23, 2.0, 3.0, 4.99], "score": 0.3, "class_id": 2, "label": "car"}
        ],
    }
    (detection,) = result.detections
    assert detection.box == pytest.approx((1.23456, 2.0, 3.0, 4.98765))
    assert type(detection.class_id) is int
    assert type(detection.score) is float
