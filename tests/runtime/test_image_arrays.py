from __future__ import annotations

import numpy as np
import pytest
from image_samples import gradient
from PIL import Image

from cvdeploy.errors import InvalidImageError
from cvdeploy.runtime import as_rgb_array

RGB = gradient()


def test_rgb_uint8_array_passes_through_without_a_copy() -> None:
    assert as_rgb_array(RGB) is RGB


def test_non_contiguous_rgb_array_becomes_contiguous() -> None:
    view = RGB[:, ::-1]
    out = as_rgb_array(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 1)])
def test_grey_arrays_are_replicated_to_three_channels(shape: tuple[int, ...]) -> None:
    grey = RGB[:, :, 0].reshape(shape)
    out = as_rgb_array(grey)
    assert out.shape == (48, 64, 3)
    assert out.flags.c_contiguous
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], RGB[:, :, 0])


def test_rgba_array_drops_alpha() -> None:
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(as_rgb_array(rgba), RGB)


def test_uint16_array_is_scaled_to_eight_bits() -> None:
    out = as_rgb_array(np.array([[0, 257, 65535]], dtype=np.uint16))
    assert out[0, :, 0].tolist() == [0, 1, 255]


def test_float_array_is_refused_with_a_pointer_to_prepare_tensor() -> None:
    with pytest.raises(InvalidImageError, match="prepare_tensor"):
        as_rgb_array(RGB.astype(np.float32))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 2), (2, 3, 5), (1, 2, 3, 3)])
def test_arrays_of_other_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidImageError, match="shape"):
        as_rgb_array(np.zeros(shape, np.uint8))


def test_empty_array_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="no pixels"):
        as_rgb_array(np.zeros((0, 5, 3), np.uint8))


def test_non_image_objects_are_refused() -> None:
    with pytest.raises(InvalidImageError, match="list"):
        as_rgb_array([[1, 2, 3]])  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "YCbCr", "HSV"])
def test_pil_images_of_every_common_mode_become_rgb(mode: str) -> None:
    pil = Image.fromarray(RGB).convert(mode)
    out = as_rgb_array(pil)
    assert out.shape == (48, 64, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(pil.convert("RGB")))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_pil_sixteen_bit_images_are_scaled(mode: str) -> None:
    pil = Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16)).convert(mode)
    assert as_rgb_array(pil)[0, :, 0].tolist() == [0, 1, 255]


def test_pil_mode_i_with_eight_bit_values_is_kept() -> None:
    pil = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    assert as_rgb_array(pil)[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # normalised floats
        ([-5.0, 10.4, 255.0], [0, 10, 255]),  # 8-bit range, clipped
        ([0.0, 257.0, 65535.0], [0, 1, 255]),  # 16-bit range
    ],
)
def test_pil_float_images_are_mapped_by_their_range(
    values: list[float], expected: list[int]
) -> None:
    pil = Image.fromarray(np.array([values], dtype=np.float32), mode="F")
    assert as_rgb_array(pil)[0, :, 0].tolist() == expected
