from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from image_samples import encode, gradient, png_header_only, tiff_header_only
from PIL import Image, ImageFile, ImageOps

from cvdeploy.errors import InvalidImageError, PayloadTooLargeError
from cvdeploy.runtime import ImageLimits, decode_image
from cvdeploy.runtime.images import apply_orientation

RGB = gradient()


def _pillow_reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _with_orientation(orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    options: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        options["quality"] = 95
    return encode(RGB, fmt, **options)


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    out = decode_image(encode(RGB, fmt))
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_lossless_webp_decodes_exactly() -> None:
    np.testing.assert_array_equal(decode_image(encode(RGB, "WEBP", lossless=True)), RGB)


def test_jpeg_decodes_to_contiguous_rgb_close_to_the_source() -> None:
    out = decode_image(encode(RGB, "JPEG", quality=95))
    assert out.shape == RGB.shape
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    # Red and green are smooth ramps; blue has sharp wraps that chroma subsampling blurs.
    assert np.abs(out[:, :, :2].astype(int) - RGB[:, :, :2].astype(int)).mean() < 3


def test_jpeg_fast_path_matches_pillow_decode() -> None:
    data = encode(gradient(120, 160), "JPEG", quality=90)
    diff = np.abs(decode_image(data).astype(int) - _pillow_reference(data).astype(int))
    assert diff.max() <= 2


def test_grey_jpeg_becomes_three_equal_channels() -> None:
    out = decode_image(encode(RGB[:, :, 0], "JPEG"))
    assert out.shape == (*RGB.shape[:2], 3)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    solid = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    data = encode(Image.fromarray(solid).convert("CMYK"), "JPEG", quality=95)
    assert np.abs(decode_image(data).astype(int) - solid).max() <= 3


def test_jpeg_with_recoverable_corruption_still_decodes() -> None:
    data = encode(RGB, "JPEG")
    # Extraneous bytes before EOI: libjpeg warns, Pillow and browsers show the image.
    noisy = data[:-2] + b"\x00\x00" + data[-2:]
    assert decode_image(noisy).shape == RGB.shape


def test_animated_gif_gives_its_first_frame() -> None:
    first = Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8))
    second = Image.fromarray(np.full((8, 8, 3), (0, 0, 255), np.uint8))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second])
    out = decode_image(buffer.getvalue())
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_bytearray_and_memoryview_are_accepted() -> None:
    data = encode(RGB, "PNG")
    np.testing.assert_array_equal(decode_image(bytearray(data)), RGB)
    np.testing.assert_array_equal(decode_image(memoryview(data)), RGB)


# --- modes ----------------------------------------------------------------------------------


def test_grey_png_becomes_three_equal_channels() -> None:
    out = decode_image(encode(RGB[:, :, 1], "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], RGB[:, :, 1])


def test_palette_png_is_expanded_to_rgb() -> None:
    pil = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(pil.convert("RGB"))
    np.testing.assert_array_equal(decode_image(encode(pil, "PNG")), expected)


def test_rgba_png_drops_alpha_keeping_stored_colour() -> None:
    rgba = np.dstack([RGB, np.zeros(RGB.shape[:2], np.uint8)])  # fully transparent
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG")), RGB)


def test_grey_alpha_png_drops_alpha() -> None:
    pil = Image.fromarray(RGB[:, :, 0]).convert("LA")
    out = decode_image(encode(pil, "PNG"))
    np.testing.assert_array_equal(out[:, :, 1], RGB[:, :, 0])


def test_one_bit_png_is_black_and_white() -> None:
    pil = Image.fromarray(RGB[:, :, 0]).convert("1")
    out = decode_image(encode(pil, "PNG"))
    assert set(np.unique(out)) <= {0, 255}


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits() -> None:
    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert out[0, :, 0].tolist() == [0, 1, 156, 255]


# --- EXIF orientation -----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    data = _with_orientation(orientation)
    out = decode_image(data)
    expected = _pillow_reference(data)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    assert out.flags.c_contiguous


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applies_to_png_too(orientation: int) -> None:
    data = _with_orientation(orientation, "PNG")
    np.testing.assert_array_equal(decode_image(data), _pillow_reference(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_equals_pillow_transpose(orientation: int) -> None:
    pil = Image.fromarray(RGB)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(apply_orientation(RGB, orientation), expected)


def test_invalid_orientation_value_is_ignored() -> None:
    np.testing.assert_array_equal(apply_orientation(RGB, 42), RGB)


# --- bad input ------------------------------------------------------------------------------


def test_empty_bytes_are_an_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")


def test_non_image_bytes_name_the_first_bytes() -> None:
    with pytest.raises(InvalidImageError, match=r"not a recognised image format.*hello"):
        decode_image(b"hello, this is not an image at all")


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.1])
def test_truncated_jpeg_is_rejected(keep: float) -> None:
    data = encode(gradient(120, 160), "JPEG", quality=90)
    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        decode_image(data[: int(len(data) * keep)])


def test_jpeg_missing_only_its_end_marker_is_rejected() -> None:
    data = encode(RGB, "JPEG")
    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        decode_image(data[:-2])


def test_jpeg_cut_inside_its_header_is_invalid() -> None:
    data = encode(RGB, "JPEG")
    with pytest.raises(InvalidImageError):
        decode_image(data[:100])


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png_is_rejected(keep: float) -> None:
    data = encode(gradient(120, 160), "PNG")
    with pytest.raises(InvalidImageError, match="truncated PNG"):
        decode_image(data[: int(len(data) * keep)])


def test_truncation_is_caught_even_when_pillow_is_told_to_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    png = encode(gradient(120, 160), "PNG")
    jpeg = encode(gradient(120, 160), "JPEG")
    with pytest.raises(InvalidImageError, match="truncated PNG"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        decode_image(jpeg[: len(jpeg) // 2])


def test_truncated_webp_is_rejected() -> None:
    data = encode(RGB, "WEBP", lossless=True)
    with pytest.raises(InvalidImageError, match="truncated WebP"):
        decode_image(data[: len(data) // 2])


def test_truncated_bmp_is_rejected() -> None:
    data = encode(RGB, "BMP")
    with pytest.raises(InvalidImageError, match="truncated BMP"):
        decode_image(data[: len(data) // 2])


def test_corrupt_png_body_is_invalid() -> None:
    data = bytearray(encode(gradient(64, 64), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with pytest.raises(InvalidImageError):
        decode_image(bytes(data))


# --- limits ---------------------------------------------------------------------------------


def test_payload_over_the_byte_limit_is_too_large() -> None:
    data = encode(RGB, "PNG")
    with pytest.raises(PayloadTooLargeError, match=f"{len(data)} bytes"):
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))


def test_png_with_trailing_bytes_after_iend_still_decodes() -> None:
    data = encode(RGB, "PNG") + b"\x00" * 100
    np.testing.assert_array_equal(decode_image(data), RGB)


@pytest.mark.parametrize("side", [7_000, 10_000, 13_000])
def test_png_headers_in_every_pillow_bomb_band_are_too_large(side: int) -> None:
    # 49 MP is under Pillow's warning level, 100 MP in its warning band, 169 MP near its error.
    with pytest.raises(PayloadTooLargeError, match=f"{side}x{side}"):
        decode_image(png_header_only(side, side))


def test_png_header_claiming_30000_square_is_rejected_without_allocating() -> None:
    bomb = png_header_only(30_000, 30_000)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match="30000x30000"):
            decode_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # a decoded frame would be 2.7 GB


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": True})],
)
def test_pixel_limit_applies_to_every_sniffed_format(fmt: str, options: dict[str, object]) -> None:
    data = encode(RGB, fmt, **options)
    with pytest.raises(PayloadTooLargeError, match="64x48"):
        decode_image(data, ImageLimits(max_pixels=64 * 48 - 1))
    assert decode_image(data, ImageLimits(max_pixels=64 * 48)).shape == RGB.shape


def test_lossy_webp_header_size_is_read() -> None:
    data = encode(RGB, "WEBP", quality=80)
    with pytest.raises(PayloadTooLargeError, match="64x48"):
        decode_image(data, ImageLimits(max_pixels=100))


def test_pixel_limit_applies_to_formats_read_only_by_pillow() -> None:
    data = encode(RGB, "TIFF")
    with pytest.raises(PayloadTooLargeError, match="64x48"):
        decode_image(data, ImageLimits(max_pixels=100))


@pytest.mark.parametrize("side", [10_000, 60_000])
def test_tiff_header_claiming_too_many_pixels_is_too_large(side: int) -> None:
    # 10000^2 is in the band where Pillow would warn, 60000^2 where it would raise.
    with pytest.raises(PayloadTooLargeError, match=f"{side}x{side}"):
        decode_image(tiff_header_only(side, side))


def test_big_endian_tiff_header_size_is_read() -> None:
    with pytest.raises(PayloadTooLargeError, match="12000x11000"):
        decode_image(tiff_header_only(12_000, 11_000, big_endian=True))
