"""The compatibility stage: load, opset, task, labels, input size and batch sizes."""

from __future__ import annotations

from pathlib import Path

import model_factory as mf
import pipeline_models as pm
import pytest

from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file
from cvdeploy.pipeline.compatibility import check_compatibility
from cvdeploy.pipeline.stages import StageResult

DIGITS = [str(i) for i in range(10)]
SHAPES = ["circle", "square", "triangle"]


def check(stage: StageResult, name: str) -> tuple[bool | None, str]:
    found = [c for c in stage.checks if c.name == name]
    assert len(found) == 1, f"{name} not in {[c.name for c in stage.checks]}"
    return found[0].passed, found[0].detail


@pytest.mark.parametrize(
    ("name", "task", "labels", "size"),
    [
        (CLASSIFIER, "classification", DIGITS, [32, 32]),
        (DETECTOR, "detection", SHAPES, [320, 320]),
    ],
)
def test_demo_models_pass_every_check(
    name: str, task: str, labels: list[str], size: list[int]
) -> None:
    stage = check_compatibility(
        demo_file(name), task=task, labels=labels, input_size=size, intra_op_threads=1
    )
    assert stage.name == "compatibility"
    assert stage.status == "passed", stage.reasons
    assert [c.name for c in stage.checks] == [
        "opset",
        "load",
        "task",
        "labels",
        "input_size",
        "batch_1",
        "batch_max",
    ]
    assert all(c.passed is True for c in stage.checks)
    assert check(stage, "load")[1] == "loaded on CPUExecutionProvider"
    assert stage.figures == {"opset": 17.0, "max_batch_tested": 8.0}


def test_unchecked_card_fields_are_not_applicable(tmp_path: Path) -> None:
    stage = check_compatibility(mf.make_classifier_model(tmp_path / "m.onnx"), intra_op_threads=1)
    assert stage.status == "passed", stage.reasons
    for name in ("task", "labels", "input_size"):
        assert check(stage, name)[0] is None


def test_classifier_registered_as_detection_fails_the_task_check() -> None:
    stage = check_compatibility(demo_file(CLASSIFIER), task="detection", intra_op_threads=1)
    passed, detail = check(stage, "task")
    assert passed is False
    assert "outputs do not match the task" in detail
    assert "load as 'classification', not 'detection'" in detail
    assert "loading it as 'detection' fails" in detail


def test_detector_registered_as_classification_fails_the_task_check(tmp_path: Path) -> None:
    # Its [b, 7, 84] output would load as a 588-class classifier: nonsense, caught here.
    path = mf.make_yolov8_model(tmp_path / "det.onnx", imgsz=64)
    stage = check_compatibility(path, task="classification", intra_op_threads=1)
    passed, detail = check(stage, "task")
    assert passed is False
    assert "load as 'detection', not 'classification'" in detail
    assert "results would be meaningless" in detail


def test_unsupported_task_name_fails_the_task_check() -> None:
    stage = check_compatibility(demo_file(CLASSIFIER), task="segmentation", intra_op_threads=1)
    passed, detail = check(stage, "task")
    assert passed is False
    assert "not supported" in detail


def test_label_count_mismatch_fails() -> None:
    stage = check_compatibility(demo_file(DETECTOR), labels=["circle", "square"])
    passed, detail = check(stage, "labels")
    assert passed is False
    assert "2 labels given but the model outputs 3 classes" in detail


def test_end2end_detector_label_count_is_not_applicable(tmp_path: Path) -> None:
    path = mf.make_end2end_model(tmp_path / "e2e.onnx")
    stage = check_compatibility(path, task="detection", labels=["a", "b"], intra_op_threads=1)
    assert stage.status == "passed", stage.reasons
    assert check(stage, "labels")[0] is None


def test_input_size_mismatch_fails() -> None:
    stage = check_compatibility(demo_file(CLASSIFIER), input_size=[64, 64], intra_op_threads=1)
    passed, detail = check(stage, "input_size")
    assert passed is False
    assert "takes [32, 32]" in detail
    assert "says [64, 64]" in detail


def test_fixed_batch_smaller_than_max_batch_fails(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "fixed.onnx", batch=2)
    stage = check_compatibility(path, max_batch_size=8, intra_op_threads=1)
    assert check(stage, "batch_1")[0] is True  # padded to the fixed 2
    passed, detail = check(stage, "batch_max")
    assert passed is False
    assert "fixed at 2, smaller than max_batch_size 8" in detail
    assert stage.figures["max_batch_tested"] == 1.0


def test_fixed_batch_equal_to_max_batch_passes(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "fixed.onnx", batch=4)
    stage = check_compatibility(path, max_batch_size=4, intra_op_threads=1)
    assert stage.status == "passed", stage.reasons
    assert stage.figures["max_batch_tested"] == 4.0


def test_model_that_fails_on_real_images_fails_the_batch_checks(tmp_path: Path) -> None:
    path = mf.make_failing_model(tmp_path / "failing.onnx")
    stage = check_compatibility(path, intra_op_threads=1)
    passed, detail = check(stage, "batch_1")
    assert passed is False
    assert "a batch of 1 failed" in detail


def test_file_that_does_not_load_fails_and_skips_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("not a model\n")
    stage = check_compatibility(path)
    assert check(stage, "load")[0] is False
    assert "does not load" in check(stage, "load")[1]
    assert check(stage, "batch_max") == (None, "not run: the model did not load")


def test_opset_older_than_7_fails(tmp_path: Path) -> None:
    stage = check_compatibility(pm.make_old_opset_model(tmp_path / "old.onnx"))
    passed, detail = check(stage, "opset")
    assert passed is False
    assert "opset 6 is too old" in detail
