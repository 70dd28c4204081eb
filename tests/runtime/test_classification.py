from __future__ import annotations

from pathlib import Path

import model_factory as mf
import numpy as np
import pytest

from cvdeploy.runtime import ClassificationResult, PredictParams, load_model
from cvdeploy.runtime.preprocess import Preprocessor
from cvdeploy.runtime.tasks.classify import ClassificationTask, to_probabilities

RED = np.full((40, 50, 3), (255, 0, 0), np.uint8)
BLUE = np.full((40, 50, 3), (0, 0, 255), np.uint8)


def _classify(result: object) -> ClassificationResult:
    assert isinstance(result, ClassificationResult)
    return result


def test_logits_get_a_softmax() -> None:
    probs = to_probabilities(np.array([1.0, 2.0, 3.0], np.float32))
    expected = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert probs.dtype == np.float32


def test_probabilities_are_kept_as_they_are() -> None:
    row = np.array([0.1, 0.7, 0.2], np.float32)
    np.testing.assert_array_equal(to_probabilities(row), row)


def test_values_in_unit_range_that_do_not_sum_to_one_are_logits() -> None:
    row = np.array([0.9, 0.8, 0.7], np.float32)
    assert to_probabilities(row).sum() == pytest.approx(1.0)
    assert to_probabilities(row)[0] < 0.9


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = to_probabilities(np.array([1000.0, 999.0, -1000.0], np.float32))
    assert np.isfinite(probs).all()
    assert probs[0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_top_k_is_best_first_and_clipped_to_the_class_count() -> None:
    task = ClassificationTask(Preprocessor((8, 8)), ["a", "b", "c"])
    outputs = [np.array([[0.2, 0.5, 0.3]], np.float32)]
    top2 = _classify(task.postprocess(outputs, 0, None, PredictParams(top_k=2)))
    assert top2.labels == ["b", "c"]
    assert top2.class_ids.dtype == np.int64
    everything = _classify(task.postprocess(outputs, 0, None, PredictParams(top_k=10)))
    assert everything.class_ids.tolist() == [1, 2, 0]


def test_trailing_unit_dimensions_are_flattened() -> None:
    task = ClassificationTask(Preprocessor((8, 8)), ["a", "b"])
    result = _classify(
        task.postprocess([np.array([[[[0.0]], [[5.0]]]], np.float32)], 0, None, PredictParams())
    )
    assert result.label == "b"


def test_result_properties_and_dict() -> None:
    result = ClassificationResult(
        class_ids=np.array([3, 1], np.int64),
        scores=np.array([0.912345678, 0.05], np.float32),
        labels=["cat", "dog"],
    )
    assert (result.class_id, result.label) == (3, "cat")
    assert result.score == pytest.approx(0.912345678)
    assert len(result) == 2
    assert result.to_dict() == {
        "task": "classification",
        "classes": [
            {"class_id": 3, "label": "cat", "score": 0.91235},
            {"class_id": 1, "label": "dog", "score": 0.05},
        ],
    }


@pytest.mark.parametrize("logits", [True, False])
def test_classifier_model_end_to_end(tmp_path: Path, logits: bool) -> None:
    path = mf.make_classifier_model(tmp_path / "cls.onnx", num_classes=3, logits=logits)
    model = load_model(path, labels=["red", "green", "blue"], top_k=2)
    assert model.task == "classification"
    red, blue = model.predict([RED, BLUE])
    assert _classify(red).label == "red"
    assert _classify(blue).label == "blue"
    assert len(_classify(red)) == 2
    assert float(_classify(red).scores.sum()) <= 1.0 + 1e-6


def test_classifier_labels_come_from_ultralytics_metadata(tmp_path: Path) -> None:
    meta = mf.ultralytics_metadata(task="classify", names=["r", "g", "b"], imgsz=32)
    path = mf.make_classifier_model(tmp_path / "cls.onnx", num_classes=3, metadata=meta)
    model = load_model(path)
    assert model.labels == ["r", "g", "b"]
    assert _classify(model.predict([RED])[0]).label == "r"


def test_classifier_without_names_gets_generic_labels(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "cls.onnx", num_classes=4))
    assert model.labels == ["class_0", "class_1", "class_2", "class_3"]


def test_nhwc_classifier(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3, nhwc=True))
    assert model.layout == "NHWC"
    assert _classify(model.predict([BLUE])[0]).class_id == 2


def test_single_channel_classifier_gets_grey_input(tmp_path: Path) -> None:
    weights = np.array([[1.0, -1.0]], np.float32)  # bright -> class 0, dark -> class 1
    path = mf.make_classifier_model(tmp_path / "g.onnx", num_classes=2, channels=1, weights=weights)
    model = load_model(path)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert _classify(model.predict([white])[0]).class_id == 0


def test_classifier_default_resize_is_center_crop(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3))
    # A wide image: left half red, right half blue; the centre crop sees both halves equally.
    image = np.concatenate([RED, BLUE], axis=1)
    tensor = model.preprocess(image).tensor
    assert tensor.shape == (3, 32, 32)
    assert float(tensor[0, :, :14].min()) > 0.9
    assert float(tensor[2, :, 18:].min()) > 0.9


def test_float16_input_model_gets_float16_tensors(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "h.onnx", num_classes=3, float16_input=True)
    model = load_model(path)
    assert model.preprocess(RED).tensor.dtype == np.float16
    assert _classify(model.predict([RED])[0]).class_id == 0
