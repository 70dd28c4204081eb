"""Cheap per-image and per-prediction features for drift detection.

These run off the hot path, on a sample of requests, over the image the server already decoded.
Every pixel statistic is taken on a *strided* copy of the image (every ``k``-th row and column,
``k`` the smallest integer that brings the longer side to at most :data:`ANALYSIS_SIDE` pixels),
so the cost does not grow with the upload: a 640x480 image is read at 214x160, a 4K one at
256x144. Means and standard deviations of a regular subsample of tens of thousands of pixels
estimate the full-image values to well under one grey level; sharpness is *defined* at that
scale (see :func:`image_features`). Measured on the 2-core dev machine: 0.31 ms per 640x480
image and 0.33 ms per 1280x720 one, median (``benchmarks/drift.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from cvdeploy.errors import CVDeployError, InvalidImageError

__all__ = ["ANALYSIS_SIDE", "FEATURE_KINDS", "image_features", "prediction_features"]

#: The longer side, in pixels, of the strided copy every pixel statistic is computed on.
ANALYSIS_SIDE = 256

#: How each feature is compared: continuous features by PSI over quantile bins *and* a KS test;
#: categorical ones (a class id is a label, not a quantity) by PSI over category frequencies.
FEATURE_KINDS: dict[str, Literal["continuous", "categorical"]] = {
    "brightness": "continuous",
    "contrast": "continuous",
    "saturation": "continuous",
    "sharpness": "continuous",
    "width": "continuous",
    "height": "continuous",
    "aspect": "continuous",
    "mean_r": "continuous",
    "mean_g": "continuous",
    "mean_b": "continuous",
    "top_class": "categorical",
    "confidence": "continuous",
    "detections": "continuous",
    "box_area": "continuous",
}

# ITU-R BT.601 luma weights, the ones JPEG's Y channel uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _planes(image: np.ndarray) -> np.ndarray:
    """The strided copy as contiguous uint8 planes: shape (3, h, w), or (1, h, w) for grayscale."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"drift features need a numpy array, got {type(image).__name__}; "
            "pass the decoded HWC uint8 image"
        )
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f"drift features need a uint8 image, got dtype {image.dtype}; "
            "pass the decoded image before normalisation"
        )
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        # RGBA: transparency says nothing about the scene the model sees, so alpha is dropped.
        pixels = image[:, :, :1] if image.shape[2] == 1 else image[:, :, :3]
    elif image.ndim == 2:
        pixels = image[:, :, None]
    else:
        raise InvalidImageError(
            f"drift features need an HW or HWC image with 1, 3 or 4 channels, got shape "
            f"{image.shape}"
        )
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise InvalidImageError(f"drift features need a non-empty image, got shape {image.shape}")
    stride = -(-max(height, width) // ANALYSIS_SIDE)  # ceil division
    # Planar layout: reductions across interleaved channels (axis=2) cost ~10x more in numpy.
    return np.ascontiguousarray(pixels[::stride, ::stride].transpose(2, 0, 1))


def _laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour 3x3 Laplacian over the interior; 0 below 3x3 pixels."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    centre = luma[1:-1, 1:-1]
    laplacian = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * centre
    return float(laplacian.var(dtype=np.float64))


def image_features(image: np.ndarray) -> dict[str, float]:
    """Cheap appearance and geometry features of one decoded image.

    Args:
        image: HWC uint8 RGB (RGBA's alpha is ignored), HW or HW1 uint8 grayscale; any size.

    Returns:
        ``brightness`` (mean BT.601 luma, 0-255), ``contrast`` (standard deviation of luma),
        ``saturation`` (mean HSV saturation ``(max - min) / max``, 0-1; 0 for grayscale),
        ``sharpness`` (variance of the 3x3 Laplacian of luma, measured on the strided copy whose
        longer side is at most :data:`ANALYSIS_SIDE` px, so it is comparable across image sizes
        only at that scale; 0 for images under 3x3), ``width``, ``height``, ``aspect`` (width /
        height) and ``mean_r``, ``mean_g``, ``mean_b``.

    Raises:
        InvalidImageError: not a uint8 array of a supported shape, or empty.
    """
    planes = _planes(image)
    height, width = image.shape[:2]
    if planes.shape[0] == 1:
        luma = planes[0].astype(np.float32)
        means = [float(luma.mean(dtype=np.float64))] * 3
        saturation = 0.0
    else:
        red, green, blue = planes.astype(np.float32)
        luma = _LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue
        means = [float(p.mean(dtype=np.float64)) for p in (red, green, blue)]
        high = np.maximum(np.maximum(planes[0], planes[1]), planes[2]).astype(np.float32)
        low = np.minimum(np.minimum(planes[0], planes[1]), planes[2]).astype(np.float32)
        # Black pixels have no hue: their saturation is 0 by the HSV convention, not 0/0.
        chroma = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
        saturation = float(chroma.mean(dtype=np.float64))
    return {
        "brightness": float(luma.mean(dtype=np.float64)),
        "contrast": float(luma.std(dtype=np.float64)),
        "saturation": saturation,
        "sharpness": _laplacian_variance(luma),
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
        "mean_r": means[0],
        "mean_g": means[1],
        "mean_b": means[2],
    }


def prediction_features(prediction: Mapping[str, Any]) -> dict[str, float]:
    """Features of one serving result, as ``DetectionResult``/``ClassificationResult.to_dict``.

    Classification gives ``top_class`` (the best class id as a float; categorical, so it is
    compared by the distribution of its values, PSI on category frequencies, never by KS) and
    ``confidence`` (the best score). Detection gives ``detections`` (the count), ``confidence``
    (the mean score, 0 with no detections) and ``box_area`` (the mean box area as a fraction of
    the image area, 0 with no detections).

    Raises:
        CVDeployError: the mapping is not one of the two result shapes.
    """
    try:
        task = prediction["task"]
        if task == "classification":
            classes = prediction["classes"]
            if not classes:
                raise CVDeployError("a classification result with no classes has no top class")
            # Results are sorted best first, but a max costs nothing and trusts nothing.
            best = max(classes, key=lambda c: float(c["score"]))
            return {"top_class": float(best["class_id"]), "confidence": float(best["score"])}
        if task == "detection":
            detections = prediction["detections"]
            area = float(prediction["image"]["width"]) * float(prediction["image"]["height"])
            if area <= 0:
                raise CVDeployError(f"a detection result with image size {prediction['image']}")
            if not detections:
                return {"detections": 0.0, "confidence": 0.0, "box_area": 0.0}
            scores = [float(d["score"]) for d in detections]
            areas = [
                max(float(x2) - float(x1), 0.0) * max(float(y2) - float(y1), 0.0) / area
                for x1, y1, x2, y2 in (d["box"] for d in detections)
            ]
            return {
                "detections": float(len(detections)),
                "confidence": sum(scores) / len(scores),
                "box_area": sum(areas) / len(areas),
            }
    except (KeyError, TypeError, ValueError) as exc:
        raise CVDeployError(f"not a serving result ({type(exc).__name__}: {exc})") from exc
    raise CVDeployError(f"unknown result task {task!r}; expected 'classification' or 'detection'")
