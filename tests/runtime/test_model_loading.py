"""load_model: every way a model file can be wrong, and what a loaded model tells you."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import model_factory as mf
import numpy as np
import pytest

from cvdeploy.errors import ConfigError, InferenceError, InvalidParameterError, ModelLoadError
from cvdeploy.runtime import ClassificationResult, DetectionResult, Model, PredictParams, load_model

RED = np.full((40, 50, 3), (255, 0, 0), np.uint8)


# --- bad files --------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError, match=f"not found: {path}"):
        load_model(path)


def test_text_file_renamed_onnx_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n")
    with pytest.raises(ModelLoadError, match=rf"{path} is a text file.*these are my notes"):
        load_model(path)


def test_corrupt_bytes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError, match=f"cannot load ONNX model {path}"):
        load_model(path)


def test_truncated_model_is_named(tmp_path: Path) -> None:
    good = mf.make_classifier_model(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=str(path)):
        load_model(path)


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=f"empty: {path}"):
        load_model(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


def test_pytorch_checkpoint_points_to_export(tmp_path: Path) -> None:
    path = tmp_path / "yolov8n.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02")
    with pytest.raises(ModelLoadError, match="export it to ONNX"):
        load_model(path)


def test_model_without_an_image_input(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no image-like input"):
        load_model(mf.make_non_image_model(tmp_path / "vec.onnx"))


def test_model_with_two_inputs(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="2 inputs"):
        load_model(mf.make_two_input_model(tmp_path / "two.onnx"), task="classification")


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_unsupported_task_in_metadata(tmp_path: Path, task: str) -> None:
    meta = mf.ultralytics_metadata(task=task)
    path = mf.make_yolov8_model(tmp_path / "m.onnx", metadata=meta)
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(path)


def test_unsupported_task_argument(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="segmentation models are not supported"):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), task="segment")


def test_segmentation_outputs_without_metadata_are_recognised(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="segmentation"):
        load_model(mf.make_segmentation_like_model(tmp_path / "seg.onnx"))


def test_unknown_task_argument_lists_the_accepted_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'detection'"):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), task="tracking")


def test_dynamic_input_without_imgsz_asks_for_input_size(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "dyn.onnx", dynamic_hw=True)
    with pytest.raises(ModelLoadError, match="pass input_size"):
        load_model(path)


def test_input_size_that_contradicts_a_fixed_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fixed at 64"):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), input_size=640)


@pytest.mark.parametrize("size", [0, (64,), "64", (64.0, 64)])
def test_malformed_input_size(tmp_path: Path, size: object) -> None:
    with pytest.raises(ConfigError, match="input_size"):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), input_size=size)  # type: ignore[arg-type]


def test_bad_default_thresholds_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'conf'"):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), conf=2.0)


def test_unknown_normalization_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'mena'.*mean"):
        load_model(mf.make_classifier_model(tmp_path / "c.onnx"), normalization={"mena": [0.5]})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"channel_order": "rbg"}, "rgb, bgr"),
        ({"std": [1, 0, 1]}, "must not contain 0"),
        ({"mean": [0.1, 0.2]}, "3 channel"),
        ({"mean": "abc"}, "list of numbers"),
        ({"scale": -1}, "> 0"),
        ({"resize": "crop"}, "center_crop"),
        ({"pad": "stride"}, "dynamic height/width"),
    ],
)
def test_bad_normalization_values(tmp_path: Path, config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), normalization=config)


def test_unavailable_provider_fails_before_opening_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'cuda'"):
        load_model(tmp_path / "whatever.onnx", providers=["cuda"])


# --- what a model tells you ----------------------------------------------------------------


def test_loaded_model_describes_itself(tmp_path: Path) -> None:
    meta = mf.ultralytics_metadata(names=["a", "b", "c"], imgsz=64)
    path = mf.make_yolov8_model(tmp_path / "shapes.onnx", metadata=meta)
    model = load_model(path, conf=0.4, max_det=50)
    assert isinstance(model, Model)
    assert model.path == path
    assert model.name == "shapes"
    assert model.task == "detection"
    assert model.labels == ["a", "b", "c"]
    assert model.input_name == "images"
    assert model.input_shape == (None, 3, 64, 64)
    assert model.input_size == (64, 64)
    assert model.layout == "NCHW"
    assert model.max_batch_size is None
    assert model.output_names == ["output0"]
    assert model.providers == ["CPUExecutionProvider"]
    assert model.metadata["task"] == "detect"
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.default_params == PredictParams(conf=0.4, max_det=50)
    assert "shapes" in repr(model)


def test_name_argument_wins_over_the_file_stem(tmp_path: Path) -> None:
    assert load_model(mf.make_classifier_model(tmp_path / "c.onnx"), name="digits").name == "digits"


@pytest.mark.parametrize("alias", ["yolo", "detect", "detection"])
def test_detection_task_aliases(tmp_path: Path, alias: str) -> None:
    assert load_model(mf.make_yolov8_model(tmp_path / "m.onnx"), task=alias).task == "detection"


@pytest.mark.parametrize("alias", ["classify", "classification", "classifier"])
def test_classification_task_aliases(tmp_path: Path, alias: str) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx"), task=alias)
    assert model.task == "classification"


def test_task_is_inferred_from_the_outputs_without_metadata(tmp_path: Path) -> None:
    assert load_model(mf.make_classifier_model(tmp_path / "c.onnx")).task == "classification"
    assert load_model(mf.make_yolov8_model(tmp_path / "d.onnx")).task == "detection"


def test_input_size_comes_from_metadata_for_dynamic_inputs(tmp_path: Path) -> None:
    meta = mf.ultralytics_metadata(imgsz=[96, 128])
    path = mf.make_yolov8_model(tmp_path / "dyn.onnx", metadata=meta, dynamic_hw=True)
    assert load_model(path).input_size == (96, 128)


def test_input_size_argument_is_rounded_up_to_the_stride_for_detectors(tmp_path: Path) -> None:
    path = mf.make_yolov8_model(tmp_path / "dyn.onnx", dynamic_hw=True)
    assert load_model(path, input_size=(100, 64)).input_size == (128, 64)


def test_classifier_input_size_is_not_stride_rounded(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "c.onnx", dynamic_hw=True)
    assert load_model(path, input_size=40).input_size == (40, 40)


def test_normalization_from_metadata_and_config_override(tmp_path: Path) -> None:
    meta = {"cvdeploy.mean": "[0.5, 0.5, 0.5]", "cvdeploy.std": "[0.5, 0.5, 0.5]"}
    path = mf.make_classifier_model(tmp_path / "c.onnx", metadata=meta)
    white = np.full((32, 32, 3), 255, np.uint8)
    assert float(load_model(path).preprocess(white).tensor.max()) == pytest.approx(1.0)
    overridden = load_model(path, normalization={"mean": 0.0, "std": 1.0})
    assert float(overridden.preprocess(white).tensor.max()) == pytest.approx(1.0)
    assert float(overridden.preprocess(np.zeros_like(white)).tensor.min()) == 0.0


def test_mean_and_std_in_pixel_units_imply_no_scaling(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "c.onnx")
    model = load_model(path, normalization={"mean": [128, 128, 128], "std": [64, 64, 64]})
    white = np.full((32, 32, 3), 255, np.uint8)
    assert float(model.preprocess(white).tensor.max()) == pytest.approx((255 - 128) / 64)


# --- running ------------------------------------------------------------------------------


def test_inference_failure_is_an_inference_error_without_paths(tmp_path: Path) -> None:
    model = load_model(mf.make_failing_model(tmp_path / "fail.onnx"))  # the zero warm-up passes
    with pytest.raises(InferenceError) as info:
        model.predict([RED])
    message = str(info.value)
    assert "'fail'" in message
    assert "Reshape" in message
    assert "/" not in message.replace("{-1,5}", "")
    # The full runtime error travels as the cause; the server logs it once, with a request id.
    assert info.value.__cause__ is not None


def test_prepare_tensor_results_are_in_input_pixels(tmp_path: Path) -> None:
    model = load_model(mf.make_yolov8_model(tmp_path / "m.onnx"))
    prepared = model.prepare_tensor(np.zeros((3, 64, 64), np.float32))
    result = model.postprocess(model.infer(prepared.tensor[None]), 0, prepared.meta)
    assert isinstance(result, DetectionResult)
    assert result.image_size == (64, 64)
    assert result.boxes.tolist() == [[24, 24, 40, 40]]


def test_prepare_tensor_refuses_a_wrong_size(tmp_path: Path) -> None:
    model = load_model(mf.make_yolov8_model(tmp_path / "m.onnx"))
    with pytest.raises(InvalidParameterError, match=r"\(64, 64\)"):
        model.prepare_tensor(np.zeros((3, 32, 32), np.float32))


def test_infer_casts_float64_batches(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3))
    outputs = model.infer(np.zeros((2, 3, 32, 32), np.float64))
    assert outputs[0].shape == (2, 3)


def test_batch_larger_than_a_fixed_batch_is_refused(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", batch=2))
    with pytest.raises(InvalidParameterError, match="fixed batch size 2"):
        model.infer(np.zeros((3, 3, 32, 32), np.float32))
    assert model.infer(np.zeros((1, 3, 32, 32), np.float32))[0].shape == (1, 10)


def test_predict_batches_in_chunks_and_keeps_order(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3))
    blue = np.full((20, 30, 3), (0, 0, 255), np.uint8)
    images = [RED, blue] * 40  # more than one chunk of 32
    labels = [r.class_id for r in model.predict(images) if isinstance(r, ClassificationResult)]
    assert labels == [0, 2] * 40


def test_predict_accepts_grey_and_rgba_arrays(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3))
    results = model.predict([np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8)])
    assert len(results) == 2


def test_concurrent_predictions_are_consistent(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3))
    blue = np.full((20, 30, 3), (0, 0, 255), np.uint8)
    seen: list[int] = []
    lock = threading.Lock()

    def work(image: np.ndarray) -> None:
        for _ in range(20):
            result = model.predict([image])[0]
            assert isinstance(result, ClassificationResult)
            with lock:
                seen.append(result.class_id)

    threads = [threading.Thread(target=work, args=(img,)) for img in (RED, blue) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(seen)) == [0, 2]
    assert len(seen) == 160


def test_warmup_accepts_several_batch_sizes(tmp_path: Path) -> None:
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx"), warmup=False)
    model.warmup([1, 4])


def test_auto_spinning_keeps_a_latency_twin_for_small_cpu_models(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "c.onnx")
    twin = load_model(path, intra_op_threads=2)
    assert twin._latency_session is not None
    image = np.zeros((1, 3, 32, 32), np.float32)
    image[:, 0] = 1.0
    np.testing.assert_allclose(twin.infer(image)[0], twin.infer(image, latency=True)[0])
    # One thread has no worker threads to spin; an explicit setting means one session.
    assert load_model(path, intra_op_threads=1)._latency_session is None
    assert load_model(path, intra_op_threads=2, intra_op_spinning=True)._latency_session is None
    assert load_model(path, intra_op_threads=2, intra_op_spinning=False)._latency_session is None


def test_unknown_spinning_setting_is_a_config_error(tmp_path: Path) -> None:
    from cvdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="intra_op_spinning"):
        load_model(mf.make_classifier_model(tmp_path / "c.onnx"), intra_op_spinning="sometimes")
