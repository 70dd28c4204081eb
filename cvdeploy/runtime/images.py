"""Turn request bytes into an ``(H, W, 3)`` uint8 RGB array, safely and fast.

Order of work in :func:`decode_image`, cheapest check first:

1. byte limit (before anything is parsed);
2. the width and height the header declares, read by our own few-byte parsers for PNG, GIF,
   BMP, WebP and TIFF and by libjpeg-turbo's header reader for JPEG, so a decompression bomb is
   refused in microseconds without allocating and without Pillow ever seeing it (Pillow's own
   bomb check warns, and warnings are errors in our tests and noise in a server log);
3. a completeness check where the container makes it cheap (PNG ends with IEND, RIFF and BMP
   declare their length), so a truncated upload is refused even when some other library in
   the process has set Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES``;
4. decode: JPEG with simplejpeg (libjpeg-turbo, ~1.4x faster than Pillow here, and strict about
   truncation), everything else with Pillow; the first frame of an animation;
5. EXIF orientation, applied as numpy flips/transposes (one copy at most).

Alpha is dropped, not composited: the colour channels are kept as stored, which is what
``cv2.imread`` and Ultralytics do, so a model sees what it was trained on.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from cvdeploy.errors import InvalidImageError, PayloadTooLargeError

__all__ = ["ImageLimits", "apply_orientation", "as_rgb_array", "decode_image"]

_EXIF_ORIENTATION: Final = 0x0112
# Where an EXIF APP1 segment can sit in a JPEG: it precedes the image data and is at most 64 KiB,
# usually right after SOI; scanning further only costs time on large files.
_EXIF_SEARCH_BYTES: Final = 256 * 1024
_BIT_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PIXEL: Final = np.dtype((np.void, 3))


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Upper bounds on one encoded image; both are checked before any pixel is decoded."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000


_DEFAULT_LIMITS: Final = ImageLimits()


def decode_image(
    data: bytes | bytearray | memoryview, limits: ImageLimits = _DEFAULT_LIMITS
) -> np.ndarray:
    """Decode an encoded still image to a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    The array may be read-only (Pillow hands out its buffer without a copy); copy it before
    drawing on it.

    Raises:
        PayloadTooLargeError: more than ``limits.max_bytes`` bytes or ``limits.max_pixels``
            declared pixels.
        InvalidImageError: empty, unrecognised, truncated or corrupt data.
    """
    if not data:
        raise InvalidImageError("empty image: the request contained no bytes")
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes"
        )
    view = data if isinstance(data, bytes) else bytes(data)
    if view.startswith(b"\xff\xd8\xff"):
        fast = _decode_jpeg(view, limits)
        if fast is not None:
            return fast
    else:
        size = _sniff_size(view)
        if size is not None:
            _check_pixels(size[0], size[1], limits)
        _check_complete(view)
    return _decode_with_pillow(view, limits)


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Convert a PIL image (any mode) or an array to ``(H, W, 3)`` uint8 RGB, C-contiguous.

    Arrays may be ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8
    or uint16 (scaled down by 257). EXIF orientation is not applied to PIL images here: a
    caller holding a PIL image has usually transposed it already (:func:`decode_image` does).
    A converted array may be read-only; an RGB uint8 array comes back as is.

    Raises:
        InvalidImageError: an array of another shape or dtype.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"expected a PIL image or a numpy array, got {type(image).__name__}"
        )
    arr = image
    if arr.dtype == np.uint16 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 2):
        arr = _sixteen_to_eight(arr)
    elif arr.dtype != np.uint8:
        raise InvalidImageError(
            f"expected a uint8 (or uint16) image array, got dtype {arr.dtype}; "
            "a preprocessed float tensor goes to Model.prepare_tensor instead"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(
            f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"image array has no pixels: shape {arr.shape}")
    if arr.shape[2] == 1:
        return _grey_to_rgb(arr[:, :, 0])
    if arr.shape[2] == 4:
        # Pillow's C converter: ~3x faster than numpy's strided copy of a 3-of-4-channel view.
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("RGB"))
    return np.ascontiguousarray(arr)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) the way ``PIL.ImageOps.exif_transpose`` does."""
    if orientation not in range(2, 9):
        return image
    pixels = image
    rgb = image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
    if rgb:
        # One 3-byte element per pixel: numpy's strided copy then moves whole pixels instead of
        # looping over a 3-long channel axis, which halves the cost of a flip or transpose.
        pixels = image.view(_PIXEL).reshape(image.shape[:2])
    if orientation == 2:
        out = pixels[:, ::-1]
    elif orientation == 3:
        out = pixels[::-1, ::-1]
    elif orientation == 4:
        out = pixels[::-1]
    elif orientation == 5:
        out = pixels.swapaxes(0, 1)
    elif orientation == 6:
        out = pixels.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        out = pixels[::-1, ::-1].swapaxes(0, 1)
    else:
        out = pixels.swapaxes(0, 1)[::-1]
    out = np.ascontiguousarray(out)
    if rgb:
        return out.view(np.uint8).reshape(*out.shape, 3)
    return out


# --- JPEG -----------------------------------------------------------------------------------


def _decode_jpeg(data: bytes, limits: ImageLimits) -> np.ndarray | None:
    """libjpeg-turbo path; None hands the file to Pillow (an exotic JPEG simplejpeg refuses)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow gives the more useful message for a broken header
    _check_pixels(width, height, limits)
    try:
        # strict=True turns libjpeg's "premature end" warning into an error: no grey half image.
        pixels: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise InvalidImageError(f"truncated JPEG: {exc}") from None
        # Recoverable oddities (extraneous bytes, odd markers) that Pillow and browsers accept.
        return None
    return apply_orientation(pixels, _jpeg_orientation(data))


def _jpeg_orientation(data: bytes) -> int:
    # Most JPEGs from scanners and servers carry no EXIF: skip Pillow's parser (~20 us) then.
    if data.find(b"Exif\x00\x00", 0, _EXIF_SEARCH_BYTES) < 0:
        return 1
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "MPO")) as im:
            return _orientation(im)
    except Exception:  # a broken EXIF block must not fail an image whose pixels decoded fine
        return 1


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF is common in the wild; the pixels are still good
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --- everything else through Pillow ------------------------------------------------------------


def _decode_with_pillow(data: bytes, limits: ImageLimits) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"not a recognised image format (first bytes {data[:16]!r}); "
            "send a JPEG, PNG, WebP, BMP, GIF or TIFF file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only where warnings are errors (tests); formats
        # we do not sniff can reach Pillow's check before ours.
        raise PayloadTooLargeError(f"image has too many pixels: {exc}") from None
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ValueError...
        raise InvalidImageError(f"corrupt image header: {exc}") from None
    with im:
        fmt = im.format or "image"
        _check_pixels(im.size[0], im.size[1], limits)
        if fmt in ("JPEG", "MPO") and data.rfind(b"\xff\xd9") < 0:
            raise InvalidImageError("truncated JPEG: the file has no end-of-image marker")
        try:
            im.load()  # the first frame of an animation
            rgb = _pil_to_rgb(im)
        except OSError as exc:
            if "truncated" in str(exc):
                raise InvalidImageError(f"truncated {fmt}: {exc}") from None
            raise InvalidImageError(f"corrupt {fmt}: {exc}") from None
        except Exception as exc:
            raise InvalidImageError(f"corrupt {fmt}: {exc}") from None
        return apply_orientation(rgb, _orientation(im))


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in _BIT_MODES or mode in ("I", "F"):
        grey = np.asarray(im)
        grey8 = _sixteen_to_eight(grey) if mode in _BIT_MODES else _wide_to_eight(grey, mode)
        return _grey_to_rgb(grey8)
    # convert("RGB") drops alpha (RGBA, LA, PA, palette transparency) and handles L, 1, P,
    # CMYK, YCbCr, LAB, HSV; Pillow picks the exact conversion for each.
    return np.asarray(im.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    # Pillow replicates a channel ~2.5x faster than numpy's copy of a broadcast (H, W, 3) view.
    return np.asarray(Image.fromarray(np.ascontiguousarray(grey)).convert("RGB"))


def _wide_to_eight(values: np.ndarray, mode: str) -> np.ndarray:
    # Mode "I" is how Pillow opens most 16-bit data, "F" float TIFFs; neither says its range,
    # so the values do: floats up to 1.0 are normalised, anything above 255 is 16-bit.
    high = float(values.max()) if values.size else 0.0
    scaled = values.astype(np.float64)
    if high > 255:
        scaled /= 257.0
    elif mode == "F" and high <= 1.0:
        scaled *= 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    # Division by 257 maps 0..65535 onto 0..255 exactly at both ends (65535 / 257 == 255).
    scaled = (arr.astype(np.uint32) + 128) // 257
    return scaled.astype(np.uint8)


# --- header parsing -------------------------------------------------------------------------


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image header declares an empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise PayloadTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels} pixels"
        )


def _sniff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of PNG, GIF, BMP, WebP and TIFF; None when unknown."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data.startswith(b"BM") and len(data) >= 26:
            header_size = struct.unpack("<I", data[14:18])[0]
            if header_size == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return abs(int(width)), abs(int(height))  # negative height = top-down rows
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except struct.error:
        return None  # too short to hold the header; Pillow reports the real problem
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    found: dict[int, int] = {}
    for i in range(min(count, 256)):
        start = offset + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[start : start + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = order + ("H" if kind == 3 else "I")
            found[tag] = struct.unpack(fmt, data[start + 8 : start + 8 + struct.calcsize(fmt)])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _check_complete(data: bytes) -> None:
    """Refuse truncated PNG, WebP and BMP from their own framing, whatever Pillow is set to."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        # Within the last 64 KiB rather than at the very end: some writers append trailing data.
        if data.rfind(b"IEND", max(0, len(data) - 65536)) < 0:
            raise InvalidImageError("truncated PNG: the file ends before its IEND chunk")
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 8:
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if len(data) < declared:
            raise InvalidImageError(
                f"truncated WebP: the header declares {declared} bytes, got {len(data)}"
            )
    elif data.startswith(b"BM") and len(data) >= 6:
        declared = struct.unpack("<I", data[2:6])[0]
        # Some writers leave the size field 0; only a positive claim can be checked.
        if declared and len(data) < declared:
            raise InvalidImageError(
                f"truncated BMP: the header declares {declared} bytes, got {len(data)}"
            )
