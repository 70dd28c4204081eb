"""Evaluation of the demo models on the demo sets, against the reference implementations.

The acceptance point "mAP figures agree with the reference implementation on the demo detection
set": the detector's own predictions on the shipped shapes set are scored by cvdeploy and by
pycocotools' COCOeval, and the figures must agree to 1e-9.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file, eval_set
from cvdeploy.pipeline.datasets import EvalDataError, load_eval_data
from cvdeploy.pipeline.evaluate import class_mapping, evaluate_model
from cvdeploy.runtime import PredictParams, decode_image, load_model


@pytest.fixture(scope="module")
def shapes():
    return load_eval_data(eval_set("shapes"))


@pytest.fixture(scope="module")
def detector():
    return load_model(demo_file(DETECTOR), warmup=False)


def test_demo_detector_map_agrees_with_pycocotools_on_the_demo_set(shapes, detector):
    ours = evaluate_model(detector, shapes, conf=0.001, iou=0.6)
    # The same predictions, scored by COCOeval.
    params = PredictParams(conf=0.001, iou=0.6, max_det=300)
    images, annotations, results = [], [], []
    for i, sample in enumerate(shapes.samples, start=1):
        images.append({"id": i, "width": sample.width, "height": sample.height})
        for box, cls in zip(sample.boxes, sample.classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        result = detector.predict([decode_image(sample.path.read_bytes())], params)[0]
        for box, score, cls in zip(result.boxes, result.scores, result.class_ids, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": i,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(shapes.names)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert ours["map50_95"] == pytest.approx(evaluation.stats[0], abs=1e-9)
    assert ours["map50"] == pytest.approx(evaluation.stats[1], abs=1e-9)
    assert ours["map75"] == pytest.approx(evaluation.stats[2], abs=1e-9)
    assert ours["map50"] > 0.8  # the card's claim, on the shipped subset
    assert 0 < ours["precision"] <= 1
    assert 0 < ours["recall"] <= 1


def test_demo_classifier_metrics_agree_with_scikit_learn():
    digits = load_eval_data(eval_set("digits"))
    model = load_model(demo_file(CLASSIFIER), warmup=False)
    ours = evaluate_model(model, digits)
    truth = [s.label for s in digits.samples]
    predicted = [
        r.class_id
        for r in model.predict([decode_image(s.path.read_bytes()) for s in digits.samples])
    ]
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="macro", zero_division=0
    )
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((precision, recall, f1))
    assert ours["accuracy"] > 0.99  # the card's held-out figure is 0.9972
    assert np.asarray(ours["confusion_matrix"]).sum() == len(digits)


def test_a_set_for_the_other_task_is_refused(shapes):
    model = load_model(demo_file(CLASSIFIER), warmup=False)
    with pytest.raises(EvalDataError, match="for detection but the model is a classification"):
        evaluate_model(model, shapes)


def test_dataset_classes_are_matched_to_the_model_by_name():
    assert class_mapping(["b", "a"], ["a", "b", "c"]).tolist() == [1, 0]
    with pytest.raises(EvalDataError, match="classes the model does not know: dog"):
        class_mapping(["cat", "dog"], ["cat", "bird"])


def test_an_unreadable_image_is_named(tmp_path):
    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / label / "ok.png")
    (tmp_path / "1" / "broken.png").write_bytes(b"not a png")
    model = load_model(demo_file(CLASSIFIER), warmup=False)
    labels = [str(i) for i in range(10)]
    data = load_eval_data(tmp_path)
    assert data.names == ["0", "1"]
    assert model.labels == labels
    with pytest.raises(EvalDataError, match=r"broken\.png: cannot be read as an image"):
        evaluate_model(model, data)
