"""What every evaluation layout loads into, and the helpers the layouts share.

Every problem is an :class:`EvalDataError` naming the file (and line) and what is wrong, found
before any inference runs. Image sizes come from the file header (no decode) with the EXIF
orientation applied, because the server applies it before the model sees the pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from cvdeploy.errors import ConfigError

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassificationSample",
    "DetectionSample",
    "EvalDataError",
    "EvalDataset",
    "Format",
    "Task",
    "content_hash",
    "first",
    "image_header",
    "image_size",
    "relative_name",
    "walk_images",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112

Task = Literal["classification", "detection"]
Format = Literal["imagefolder", "yolo", "coco"]


class EvalDataError(ConfigError):
    """The evaluation data is missing or malformed; the message names the file and the fault."""


@dataclass(frozen=True)
class ClassificationSample:
    path: Path
    label: int


@dataclass(frozen=True, eq=False)
class DetectionSample:
    """One image's ground truth: ``boxes`` ``(n, 4)`` float64 xyxy in original-image pixels."""

    path: Path
    boxes: np.ndarray
    classes: np.ndarray  # (n,) int64
    width: int
    height: int


@dataclass
class EvalDataset:
    """A loaded evaluation set; ``names[i]`` is the class the samples call ``i``.

    ``sha256`` covers every image and label/annotation file used (after ``max_images``), keyed
    by its path relative to the dataset root: renaming, editing or adding a file changes it,
    moving the whole folder does not; ImageFolder also hashes its class list. ``skipped_crowd``
    counts the COCO ``iscrowd`` annotations of the kept images.
    """

    task: Task
    format: Format
    source: Path
    names: list[str]
    samples: list[ClassificationSample] | list[DetectionSample]
    sha256: str
    skipped_crowd: int = 0
    background: int = 0

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``ImageFolder of 360 images in 10 classes``."""
        images, classes = _count(len(self.samples), "image"), _count(len(self.names), "class")
        if self.format == "imagefolder":
            return f"ImageFolder of {images} in {classes}"
        boxes = sum(len(s.boxes) for s in self.samples if isinstance(s, DetectionSample))
        kind = "YOLO set" if self.format == "yolo" else "COCO JSON"
        text = f"{kind} of {images}, {_count(boxes, 'box')} in {classes}"
        extras = []
        if self.background:
            extras.append(f"{_count(self.background, 'background image')}")
        if self.skipped_crowd:
            extras.append(f"{_count(self.skipped_crowd, 'crowd annotation')} skipped")
        return text + (f" ({', '.join(extras)})" if extras else "")


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith(("s", "x")) else "s")
    return f"{n} {noun if n == 1 else plural}"


def content_hash(files: Iterable[tuple[str, Path]], *, classes: Sequence[str] = ()) -> str:
    """sha256 over ``classes`` (in index order) then ``(relative name, file bytes)`` pairs sorted
    by name.

    ``classes`` is for layouts whose class list lives in no hashed file (ImageFolder: the folder
    names, where an added empty class folder shifts the indices). Each name and each content is
    preceded by its length (8 bytes, big-endian), and the class list by its count, so no two
    different inputs can produce the same byte stream.
    """
    digest = hashlib.sha256()
    if classes:
        digest.update(b"classes")
        digest.update(len(classes).to_bytes(8, "big"))
        for class_name in classes:
            encoded = class_name.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
    for name, path in sorted(files, key=lambda item: item[0]):
        encoded = name.encode("utf-8")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EvalDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def walk_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, hidden names skipped), sorted.

    Directory symlinks are followed, as torchvision's ImageFolder does (datasets are often
    assembled from links), but a link that resolves to ``folder`` itself, one of its ancestors, or
    a folder this walk has already entered is not: ``cat/loop -> ..`` would otherwise repeat every
    image until the path is too long, and two links to one folder would count its images twice.
    """
    top = folder.resolve()
    visited = {top}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for name in dirnames:
            if name.startswith("."):
                continue
            real = (Path(dirpath) / name).resolve()
            if real in visited or top.is_relative_to(real):
                continue
            visited.add(real)
            kept.append(name)
        dirnames[:] = kept
        found.extend(Path(dirpath) / f for f in filenames if _is_image(Path(f)))
    return sorted(found)


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form: the name :func:`content_hash` keys on."""
    return Path(os.path.relpath(path, root)).as_posix()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the server will see it: header only, EXIF orientation applied."""
    width, height, transposed = image_header(path)
    return (height, width) if transposed else (width, height)


def image_header(path: Path) -> tuple[int, int, bool]:
    """Stored (width, height) and whether the EXIF orientation turns it by 90 degrees."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # malformed EXIF: the server ignores it too
                orientation = 1
    except OSError as exc:
        raise EvalDataError(f"{path} is not a readable image: {exc}") from exc
    # Orientations 5-8 rotate by 90 degrees, so the served image is transposed.
    return width, height, orientation in (5, 6, 7, 8)


def first(items: list[Any], max_images: int | None) -> list[Any]:
    """The first ``max_images`` of ``items`` (all of them when there is no limit)."""
    return items if max_images is None else items[:max_images]
