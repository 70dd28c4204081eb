"""The runtime's public names change only on purpose: the serving layer codes against them."""

from __future__ import annotations

import cvdeploy.runtime

EXPECTED = {
    "ClassificationResult",
    "Detection",
    "DetectionResult",
    "ImageLimits",
    "Model",
    "Prepared",
    "PredictParams",
    "Result",
    "as_rgb_array",
    "decode_image",
    "default_intra_op_threads",
    "load_model",
    "select_providers",
}


def test_all_is_the_curated_list() -> None:
    assert set(cvdeploy.runtime.__all__) == EXPECTED


def test_every_public_name_resolves() -> None:
    for name in cvdeploy.runtime.__all__:
        assert getattr(cvdeploy.runtime, name) is not None


def test_image_limits_defaults() -> None:
    limits = cvdeploy.runtime.ImageLimits()
    assert (limits.max_bytes, limits.max_pixels) == (20 * 2**20, 40_000_000)
