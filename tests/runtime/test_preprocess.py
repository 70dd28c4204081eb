from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvdeploy.errors import InvalidParameterError
from cvdeploy.runtime.preprocess import (
    ImageTransform,
    Normalization,
    Preprocessor,
    letterbox_geometry,
    resize_rgb,
    round_up,
)

PAD = 114 / 255


def _image(height: int, width: int, value: int = 200) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


# --- letterbox arithmetic -------------------------------------------------------------------


def test_letterbox_geometry_of_a_vga_frame_into_640_matches_ultralytics() -> None:
    # Ultralytics: r = 1.0, new_unpad = (640, 480), dh = 160 -> top 80, bottom 80.
    assert letterbox_geometry(480, 640, (640, 640), 32, "full") == ((640, 480), (0, 80), (640, 640))


def test_letterbox_stride_padding_gives_the_minimum_stride_multiple() -> None:
    (new_w, new_h), (left, top), out = letterbox_geometry(720, 1280, (640, 640), 32, "stride")
    assert (new_w, new_h) == (640, 360)
    assert out == (384, 640)
    assert (left, top) == (0, 12)


def test_letterbox_odd_padding_puts_the_extra_pixel_at_the_bottom() -> None:
    # dh = 640 - 427 = 213: Ultralytics rounds top = round(106.4) = 106, bottom = 107.
    _, (_, top), _ = letterbox_geometry(427, 640, (640, 640), 32, "full")
    assert top == 106


def test_extreme_aspect_ratio_keeps_at_least_one_pixel() -> None:
    (new_w, new_h), _, _ = letterbox_geometry(1, 10_000, (64, 64), 32, "full")
    assert new_h == 1
    assert new_w == 64


def test_round_up_to_stride() -> None:
    assert [round_up(v, 32) for v in (1, 32, 33, 650)] == [32, 32, 64, 672]


# --- boxes map back exactly -----------------------------------------------------------------


@st.composite
def _case(draw: st.DrawFn) -> tuple[int, int, tuple[int, int], str, tuple[float, ...]]:
    height = draw(st.integers(1, 3000))
    width = draw(st.integers(1, 3000))
    target = draw(st.sampled_from([(640, 640), (320, 320), (480, 640), (640, 384), (64, 96)]))
    pad = draw(st.sampled_from(["full", "stride"]))
    x1 = draw(st.floats(0, width, allow_nan=False))
    x2 = draw(st.floats(x1, width, allow_nan=False))
    y1 = draw(st.floats(0, height, allow_nan=False))
    y2 = draw(st.floats(y1, height, allow_nan=False))
    return height, width, target, pad, (x1, y1, x2, y2)


@settings(max_examples=300, deadline=None)
@given(_case())
def test_a_box_letterboxed_and_mapped_back_is_unchanged(
    case: tuple[int, int, tuple[int, int], str, tuple[float, ...]],
) -> None:
    height, width, target, pad, box = case
    (new_w, new_h), (left, top), (out_h, out_w) = letterbox_geometry(
        height,
        width,
        target,
        32,
        pad,  # type: ignore[arg-type]
    )
    transform = ImageTransform((width, height), (new_w / width, new_h / height), (left, top))
    x1, y1, x2, y2 = box
    sx, sy = transform.scale
    forward = np.array([[x1 * sx + left, y1 * sy + top, x2 * sx + left, y2 * sy + top]])
    # The mapped box lies inside the resized region of the input.
    assert forward[0, 0] >= left - 1e-6
    assert forward[0, 2] <= left + new_w + 1e-6
    assert out_w <= target[1]
    assert out_h <= target[0]
    back = transform.boxes_to_original(forward.astype(np.float64))
    np.testing.assert_allclose(back[0], box, atol=1e-3)


def test_boxes_outside_the_image_are_clipped_to_it() -> None:
    transform = ImageTransform((64, 48), (1.0, 1.0), (0.0, 8.0))
    boxes = np.array([[-10.0, 0.0, 80.0, 64.0]], dtype=np.float32)
    assert transform.boxes_to_original(boxes).tolist() == [[0.0, 0.0, 64.0, 48.0]]


@pytest.mark.parametrize(
    ("height", "width", "target", "pad"),
    [
        (480, 640, (640, 640), "full"),
        (720, 1280, (640, 640), "stride"),
        (300, 100, (64, 96), "full"),
        (37, 53, (320, 320), "full"),
        (1000, 333, (640, 384), "stride"),
    ],
)
def test_letterbox_meta_matches_where_the_pixels_actually_land(
    height: int, width: int, target: tuple[int, int], pad: str
) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = width // 4, height // 3, width * 3 // 4, height * 2 // 3
    image[y1:y2, x1:x2] = 255
    prep = Preprocessor(target, normalization=Normalization(pad=pad))  # type: ignore[arg-type]
    tensor, meta = prep(image)
    assert isinstance(meta, ImageTransform)
    bright = np.argwhere(tensor[0] > 0.75)
    found = np.array(
        [[bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]],
        dtype=np.float64,
    )
    back = meta.boxes_to_original(found)[0]
    tolerance = 1.5 / min(meta.scale) + 1
    np.testing.assert_allclose(back, [x1, y1, x2, y2], atol=tolerance)


# --- tensor values --------------------------------------------------------------------------


def test_letterbox_tensor_is_chw_float32_scaled_with_grey_padding() -> None:
    tensor, meta = Preprocessor((64, 64))(_image(32, 64, 255))
    assert tensor.shape == (3, 64, 64)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert meta == ImageTransform((64, 32), (1.0, 1.0), (0, 16))
    np.testing.assert_allclose(tensor[:, :16], PAD, rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 48:], PAD, rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 16:48], 1.0)


def test_left_and_right_padding_for_a_tall_image() -> None:
    tensor, _ = Preprocessor((64, 64))(_image(64, 32, 0))
    np.testing.assert_allclose(tensor[:, :, :16], PAD, rtol=1e-6)
    np.testing.assert_allclose(tensor[:, :, 48:], PAD, rtol=1e-6)
    assert float(tensor[:, :, 16:48].max()) == 0.0


def test_nhwc_layout_puts_channels_last() -> None:
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = 255
    tensor, _ = Preprocessor((64, 64), layout="NHWC")(image)
    assert tensor.shape == (64, 64, 3)
    np.testing.assert_allclose(tensor[20, 20], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(tensor[0, 0], [PAD] * 3, rtol=1e-6)


def test_bgr_channel_order_swaps_red_and_blue() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    tensor, _ = Preprocessor((8, 8), normalization=Normalization(channel_order="bgr"))(image)
    assert float(tensor[2].min()) == 1.0
    assert float(tensor[0].max()) == 0.0


def test_mean_and_std_are_applied_after_scale_including_padding() -> None:
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    tensor, _ = Preprocessor((8, 8), normalization=norm)(_image(4, 8, 255))
    np.testing.assert_allclose(tensor[:, 4, 0], [2.0, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 0, 0], (PAD - 0.5) / np.array([0.25, 0.5, 1.0]), rtol=1e-5)


def test_single_channel_model_gets_luma() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 1] = 255
    tensor, _ = Preprocessor((8, 8), channels=1)(image)
    assert tensor.shape == (1, 8, 8)
    np.testing.assert_allclose(tensor, 0.587, rtol=1e-5)


def test_float16_models_get_float16_tensors() -> None:
    tensor, _ = Preprocessor((8, 8), dtype=np.float16)(_image(8, 8))
    assert tensor.dtype == np.float16


def test_stretch_resizes_both_axes_independently() -> None:
    norm = Normalization(resize="stretch")
    tensor, meta = Preprocessor((32, 32), normalization=norm)(_image(100, 50))
    assert tensor.shape == (3, 32, 32)
    assert meta == ImageTransform((50, 100), (32 / 50, 32 / 100), (0.0, 0.0))


def test_center_crop_keeps_the_middle_of_the_long_side() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :50] = (255, 0, 0)  # left quarter red: outside the centre square
    image[:, 50:150] = (0, 0, 255)
    norm = Normalization(resize="center_crop")
    tensor, meta = Preprocessor((32, 32), normalization=norm)(image)
    assert isinstance(meta, ImageTransform)
    assert meta.scale == (0.32, 0.32)
    assert meta.pad == pytest.approx((-16.0, 0.0))
    # The resampling filter may blend the one column at the crop edge; inside it, no red.
    assert float(tensor[0, :, 1:].max()) < 0.05
    assert float(tensor[2, :, 1:].min()) > 0.95


def test_resize_skips_work_when_the_size_already_matches() -> None:
    image = _image(10, 20)
    assert resize_rgb(image, (20, 10)) is image


def test_downscale_by_an_integer_factor_averages_boxes() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[::2, ::2] = 255  # one bright pixel per 2x2 block
    out = resize_rgb(image, (2, 2))
    np.testing.assert_allclose(out.astype(float), 64, atol=1)


# --- prepare_tensor -------------------------------------------------------------------------


def test_prepare_tensor_accepts_chw_and_leading_batch_of_one() -> None:
    prep = Preprocessor((16, 16))
    for tensor in (np.zeros((3, 16, 16), np.float32), np.zeros((1, 3, 16, 16), np.float64)):
        out, meta = prep.prepare_tensor(tensor, (16, 16))
        assert out.shape == (3, 16, 16)
        assert out.dtype == np.float32
        assert meta == ImageTransform.identity(16, 16)


def test_prepare_tensor_with_dynamic_size_accepts_any_size() -> None:
    out, meta = Preprocessor((16, 16)).prepare_tensor(
        np.zeros((3, 20, 30), np.float32), (None, None)
    )
    assert out.shape == (3, 20, 30)
    assert isinstance(meta, ImageTransform)
    assert meta.image_size == (30, 20)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((16, 16), "shape"),
        ((4, 16, 16), "C=3"),
        ((3, 16, 17), r"\(16, 16\)"),
        ((2, 3, 16, 16), "shape"),
    ],
)
def test_prepare_tensor_refuses_the_wrong_shape(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        Preprocessor((16, 16)).prepare_tensor(np.zeros(shape, np.float32), (16, 16))


def test_prepare_tensor_refuses_integer_tensors() -> None:
    with pytest.raises(InvalidParameterError, match="uint8"):
        Preprocessor((16, 16)).prepare_tensor(np.zeros((3, 16, 16), np.uint8), (16, 16))


def test_prepare_tensor_for_nhwc_models_expects_channels_last() -> None:
    prep = Preprocessor((16, 16), layout="NHWC")
    assert prep.prepare_tensor(np.zeros((16, 16, 3), np.float32), (16, 16)).tensor.shape == (
        16,
        16,
        3,
    )
    with pytest.raises(InvalidParameterError, match=r"\(H, W, C\)"):
        prep.prepare_tensor(np.zeros((3, 16, 16), np.float32), (16, 16))


def test_none_normalization_values_mean_from_metadata(tmp_path):
    # The config file's model.normalization section has every key, set to None by default.
    import model_factory as mf

    from cvdeploy.runtime import load_model

    unset = {"scale": None, "mean": None, "std": None, "channel_order": None, "resize": None}
    model = load_model(mf.make_classifier_model(tmp_path / "c.onnx"), normalization=unset)
    assert model.task == "classification"
