from __future__ import annotations

import numpy as np
import pytest

from cvdeploy.errors import CVDeployError, InvalidImageError
from cvdeploy.monitoring.features import (
    ANALYSIS_SIDE,
    FEATURE_KINDS,
    image_features,
    prediction_features,
)

IMAGE_FEATURES = {
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "width",
    "height",
    "aspect",
    "mean_r",
    "mean_g",
    "mean_b",
}


def checkerboard(height: int, width: int, cell: int = 2) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    board = (((y // cell) + (x // cell)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def box_blur(image: np.ndarray, size: int = 5) -> np.ndarray:
    padded = np.pad(image.astype(np.float64), ((size // 2,) * 2, (size // 2,) * 2, (0, 0)), "edge")
    out = np.zeros(image.shape, dtype=np.float64)
    for dy in range(size):
        for dx in range(size):
            out += padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return (out / size**2).round().astype(np.uint8)


def test_mid_grey_image_has_mid_brightness_and_no_contrast() -> None:
    features = image_features(np.full((480, 640, 3), 128, dtype=np.uint8))
    assert set(features) == IMAGE_FEATURES
    assert features["brightness"] == pytest.approx(128, abs=0.5)
    assert features["contrast"] == pytest.approx(0, abs=1e-6)
    assert features["saturation"] == 0
    assert features["sharpness"] == 0
    assert features["mean_r"] == features["mean_g"] == features["mean_b"] == pytest.approx(128)


def test_brightness_uses_bt601_luma_weights() -> None:
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[..., 0] = 200
    features = image_features(red)
    assert features["brightness"] == pytest.approx(0.299 * 200, rel=1e-5)
    assert features["mean_r"] == pytest.approx(200)
    assert features["mean_g"] == features["mean_b"] == 0
    assert features["saturation"] == pytest.approx(1.0)


def test_black_pixels_have_zero_saturation_not_nan() -> None:
    features = image_features(np.zeros((8, 8, 3), dtype=np.uint8))
    assert features["saturation"] == 0
    assert all(np.isfinite(v) for v in features.values())


def test_half_saturated_colour() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[...] = (200, 100, 100)
    assert image_features(image)["saturation"] == pytest.approx(0.5)


def test_checkerboard_is_sharper_than_its_blurred_copy() -> None:
    board = checkerboard(120, 160)
    sharp = image_features(board)
    blurred = image_features(box_blur(board))
    assert sharp["sharpness"] > 10 * blurred["sharpness"]
    assert sharp["brightness"] == pytest.approx(blurred["brightness"], abs=3)


def test_contrast_is_the_std_of_luma() -> None:
    features = image_features(checkerboard(64, 64))
    assert features["contrast"] == pytest.approx(127.5, abs=0.5)


def test_size_and_aspect() -> None:
    features = image_features(np.zeros((480, 640, 3), dtype=np.uint8))
    assert (features["width"], features["height"]) == (640, 480)
    assert features["aspect"] == pytest.approx(640 / 480)


def test_large_image_is_measured_on_a_strided_copy_with_full_size_reported() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    features = image_features(image)
    assert (features["width"], features["height"]) == (1920, 1080)
    # A subsample of uniform noise still has its mean at ~127.5 and its std at ~73.9.
    assert features["mean_g"] == pytest.approx(127.5, abs=1.5)
    assert ANALYSIS_SIDE == 256


def test_grayscale_accepted_in_hw_and_hw1_layouts() -> None:
    gray = np.full((30, 40), 90, dtype=np.uint8)
    flat = image_features(gray)
    assert flat["brightness"] == pytest.approx(90)
    assert flat["saturation"] == 0
    assert flat["mean_r"] == flat["mean_g"] == flat["mean_b"] == pytest.approx(90)
    assert image_features(gray[:, :, None]) == flat


def test_rgba_ignores_alpha() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = np.zeros((20, 30, 1), dtype=np.uint8)
    assert image_features(np.concatenate([rgb, alpha], axis=2)) == image_features(rgb)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (2, 2, 3), (1, 500, 3)])
def test_tiny_images_have_zero_sharpness(shape: tuple[int, ...]) -> None:
    features = image_features(np.full(shape, 7, dtype=np.uint8))
    assert features["sharpness"] == 0
    assert features["brightness"] == pytest.approx(7)
    assert all(np.isfinite(v) for v in features.values())


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 3), dtype=np.uint16),
        np.zeros((1, 10, 10, 3), dtype=np.uint8),
        np.zeros((10, 10, 2), dtype=np.uint8),
        np.zeros((10,), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
    ids=["float", "uint16", "4d", "two-channels", "1d", "empty"],
)
def test_unsupported_arrays_raise_invalid_image(image: np.ndarray) -> None:
    with pytest.raises(InvalidImageError):
        image_features(image)


def test_non_array_raises_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match="numpy array"):
        image_features([[1, 2], [3, 4]])  # type: ignore[arg-type]


def test_classification_prediction_features() -> None:
    prediction = {
        "task": "classification",
        "classes": [
            {"class_id": 3, "label": "cat", "score": 0.7},
            {"class_id": 1, "label": "dog", "score": 0.2},
        ],
    }
    assert prediction_features(prediction) == {"top_class": 3.0, "confidence": 0.7}


def test_detection_prediction_features() -> None:
    prediction = {
        "task": "detection",
        "image": {"width": 100, "height": 50},
        "detections": [
            {"box": [0, 0, 50, 25], "score": 0.9, "class_id": 0, "label": "a"},
            {"box": [10, 10, 20, 20], "score": 0.5, "class_id": 1, "label": "b"},
        ],
    }
    features = prediction_features(prediction)
    assert features["detections"] == 2
    assert features["confidence"] == pytest.approx(0.7)
    assert features["box_area"] == pytest.approx((0.25 + 100 / 5000) / 2)


def test_detection_with_no_detections() -> None:
    prediction = {"task": "detection", "image": {"width": 640, "height": 480}, "detections": []}
    assert prediction_features(prediction) == {
        "detections": 0.0,
        "confidence": 0.0,
        "box_area": 0.0,
    }


@pytest.mark.parametrize(
    "prediction",
    [
        {"task": "segmentation"},
        {"classes": []},
        {"task": "classification", "classes": []},
        {"task": "detection", "image": {"width": 0, "height": 10}, "detections": []},
        {"task": "detection", "detections": [{"box": [1, 2]}], "image": {"width": 1, "height": 1}},
    ],
    ids=["unknown-task", "no-task", "no-classes", "empty-image", "bad-box"],
)
def test_malformed_predictions_raise(prediction: dict[str, object]) -> None:
    with pytest.raises(CVDeployError):
        prediction_features(prediction)


def test_feature_kinds_cover_every_feature_and_only_top_class_is_categorical() -> None:
    assert IMAGE_FEATURES | {"top_class", "confidence", "detections", "box_area"} == set(
        FEATURE_KINDS
    )
    assert [name for name, kind in FEATURE_KINDS.items() if kind == "categorical"] == ["top_class"]
