"""Encoded test images built in memory (imported by the runtime tests)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image | np.ndarray, fmt: str, **options: object) -> bytes:
    """``image`` saved as ``fmt`` into bytes."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    pil.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB image with no symmetry, so any flip or rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(1, width - 1)
    green = y * 255 // max(1, height - 1)
    blue = (x * 7 + y * 13) % 256
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` RGB, and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    )


def tiff_header_only(width: int, height: int, big_endian: bool = False) -> bytes:
    """A TIFF whose first IFD claims ``width`` x ``height`` 8-bit grey, and no pixels."""
    order = ">" if big_endian else "<"
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        packed = (
            struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
        )
        ifd += struct.pack(order + "HHI", tag, kind, count) + packed
    ifd += struct.pack(order + "I", 0)
    magic = b"MM\x00*" if big_endian else b"II*\x00"
    return magic + struct.pack(order + "I", 8) + ifd
