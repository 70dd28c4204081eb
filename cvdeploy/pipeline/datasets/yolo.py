"""YOLO (detection), Ultralytics' convention.

A dataset YAML (``path``, ``val`` or ``test``, ``names``), or a folder holding
``data.yaml``/``dataset.yaml`` (used as the YAML; when it has no ``val``/``test`` key,
``images/val`` or else ``images`` beside it is read). The label of ``.../images/x.jpg`` is
``.../labels/x.txt``. A missing label file is an error, an empty one an explicit background
image: a forgotten label would otherwise silently count every detection on that image as a false
positive. Segment lines (class then an even number of at least six coordinates) are accepted as
the box around the polygon, as Ultralytics does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvdeploy.pipeline.datasets.base import (
    DetectionSample,
    EvalDataError,
    EvalDataset,
    content_hash,
    first,
    image_size,
    relative_name,
    walk_images,
)

__all__ = ["COORD_TOLERANCE", "YAML_NAMES", "load_yolo_yaml"]

YAML_NAMES = ("data.yaml", "dataset.yaml")
# Label files are written with 6 decimals by most tools; a box a hair past the edge is rounding.
COORD_TOLERANCE = 1e-3


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EvalDataError(f"cannot read dataset YAML {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalDataError(f"dataset YAML {path} must be a mapping with path, val and names")
    return data


def _yolo_names(raw: Any, yaml_file: Path) -> list[str]:
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    if isinstance(raw, dict) and raw:
        try:
            by_id = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise EvalDataError(f"{yaml_file}: names keys must be class ids 0..n-1") from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise EvalDataError(
                f"{yaml_file}: names ids must be 0..{len(by_id) - 1} without gaps, got "
                f"{sorted(by_id)}"
            )
        return [by_id[i] for i in range(len(by_id))]
    raise EvalDataError(
        f"{yaml_file} needs names: as a list ([cat, dog]) or a mapping ({{0: cat, 1: dog}})"
    )


def load_yolo_yaml(yaml_file: Path, source: Path, max_images: int | None) -> EvalDataset:
    """Load the split ``yaml_file`` names; ``source`` is what the user gave (YAML or folder)."""
    data = _read_yaml(yaml_file)
    names = _yolo_names(data.get("names"), yaml_file)
    root = Path(str(data["path"])) if data.get("path") else Path(".")
    root = (yaml_file.parent / root).resolve()
    split = data.get("val") or data.get("test")
    if split is None:
        fallback = next((d for d in ("images/val", "images") if (root / d).is_dir()), None)
        if fallback is None:
            raise EvalDataError(
                f"{yaml_file} has no val: or test: key and {root} has no images/ folder; add "
                "val: images/val (a folder of images or a .txt list of image paths)"
            )
        split = fallback
    entries = split if isinstance(split, list) else [split]
    images: list[Path] = []
    files: list[Path] = [yaml_file]
    for entry in entries:
        target = root / str(entry)
        if target.is_dir():
            images.extend(walk_images(target))
        elif target.is_file() and target.suffix.lower() == ".txt":
            images.extend(_read_image_list(target))
            files.append(target)
        else:
            raise EvalDataError(
                f"{yaml_file}: split {entry!r} resolves to {target}, which is neither a folder of "
                "images nor a .txt list of image paths"
            )
    images = sorted(set(images))
    if not images:
        raise EvalDataError(f"{yaml_file}: split {split!r} holds no images")
    images = first(images, max_images)
    samples: list[DetectionSample] = []
    for image in images:
        label = _label_path(image)
        samples.append(_read_yolo_label(image, label, len(names)))
        files.extend((image, label))
    digest = content_hash((relative_name(f, root), f) for f in files)
    background = sum(1 for s in samples if len(s.boxes) == 0)
    return EvalDataset("detection", "yolo", source, names, samples, digest, background=background)


def _read_image_list(listing: Path) -> list[Path]:
    images = []
    for number, line in enumerate(_read_text(listing, "image list").splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        # Relative entries are relative to the list's folder (Ultralytics does so for "./x").
        image = (listing.parent / entry).resolve()
        if not image.is_file():
            raise EvalDataError(f"{listing}:{number}: image {entry} not found (looked at {image})")
        images.append(image)
    return images


def _read_text(path: Path, what: str) -> str:
    """A label or list file as text; UTF-8 is what Ultralytics writes and reads."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalDataError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise EvalDataError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image)
    marker = f"{os.sep}images{os.sep}"
    if marker not in text:
        raise EvalDataError(
            f"image {image} is not under an images/ folder, so its label file cannot be found; "
            "YOLO labels for .../images/x.jpg live in .../labels/x.txt"
        )
    head, tail = text.rsplit(marker, 1)
    return Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")


def _read_yolo_label(image: Path, label: Path, classes: int) -> DetectionSample:
    if not label.is_file():
        raise EvalDataError(
            f"image {image} has no label file (expected {label}); write an empty file there if "
            "the image has no objects"
        )
    width, height = image_size(image)
    boxes: list[list[float]] = []
    ids: list[int] = []
    for number, line in enumerate(_read_text(label, "label file").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{number}"
        cls, box = _parse_yolo_line(fields, classes, where)
        cx, cy, w, h = box
        x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
        y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
        boxes.append([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)])
        ids.append(cls)
    return DetectionSample(
        image,
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(ids, dtype=np.int64),
        width,
        height,
    )


def _parse_yolo_line(
    fields: Sequence[str], classes: int, where: str
) -> tuple[int, tuple[float, float, float, float]]:
    """One label line -> (class id, normalised cx, cy, w, h), or an error naming ``where``."""
    is_segment = len(fields) >= 7 and len(fields) % 2 == 1
    if len(fields) != 5 and not is_segment:
        raise EvalDataError(
            f"{where}: expected 5 fields 'class cx cy w h' (or a segment: class then x y pairs), "
            f"got {len(fields)}"
        )
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError as exc:
        raise EvalDataError(f"{where}: not a number ({exc})") from exc
    if not all(math.isfinite(v) for v in (cls_value, *values)):
        raise EvalDataError(f"{where}: values must be finite numbers")
    if cls_value != int(cls_value) or not 0 <= cls_value < classes:
        raise EvalDataError(
            f"{where}: class id {fields[0]} is not an integer in 0..{classes - 1} (the dataset "
            f"has {classes} names)"
        )
    if any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in values):
        raise EvalDataError(
            f"{where}: coordinates must be normalised to 0..1, got {' '.join(fields[1:])}"
        )
    values = [min(max(v, 0.0), 1.0) for v in values]
    if is_segment:
        xs, ys = values[0::2], values[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        box = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    else:
        box = (values[0], values[1], values[2], values[3])
    if box[2] <= 0 or box[3] <= 0:
        raise EvalDataError(
            f"{where}: box width and height must be positive, got {box[2]:g} x {box[3]:g}"
        )
    return int(cls_value), box
