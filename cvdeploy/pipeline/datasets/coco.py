"""COCO JSON (detection): ``images``/``annotations``/``categories``.

``iscrowd`` annotations are skipped (COCO's own evaluation ignores detections matched to them,
which a plain box list cannot express) and counted, for the images kept after ``max_images``, in
:meth:`~cvdeploy.pipeline.datasets.base.EvalDataset.describe`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.pipeline.datasets.base import (
    DetectionSample,
    EvalDataError,
    EvalDataset,
    content_hash,
    first,
    image_header,
    relative_name,
)

__all__ = ["load_coco"]


def load_coco(json_file: Path, max_images: int | None) -> EvalDataset:
    """Load a COCO detection JSON; images are looked up beside it or in its ``images/``."""
    try:
        data = json.loads(json_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise EvalDataError(f"cannot read COCO JSON {json_file}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise EvalDataError(
            f"{json_file} is not a COCO detection file: it needs lists images, annotations and "
            "categories"
        )
    root = json_file.parent
    names, index = _coco_categories(data["categories"], json_file)
    images = _coco_images(data["images"], json_file)
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    classes: dict[int, list[int]] = {i: [] for i in images}
    crowd: dict[Any, int] = dict.fromkeys(images, 0)
    for ann in data["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"{json_file}: annotation id {ann_id}"
        if not isinstance(ann, dict):
            raise EvalDataError(f"{where}: not an object")
        if not isinstance(ann.get("image_id"), int | str) or ann["image_id"] not in images:
            raise EvalDataError(f"{where}: unknown image_id {ann.get('image_id')!r}")
        if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in index:
            raise EvalDataError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise EvalDataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise EvalDataError(f"{where}: bbox width and height must be positive, got {bbox}")
        if ann.get("iscrowd", 0):
            crowd[ann["image_id"]] += 1
            continue
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
        classes[ann["image_id"]].append(index[ann["category_id"]])
    ordered = sorted(images.items(), key=lambda item: item[1][0])
    ordered = first(ordered, max_images)
    samples: list[DetectionSample] = []
    files: list[Path] = [json_file]
    for image_id, (file_name, declared) in ordered:
        path = _coco_file(root, file_name, json_file, image_id)
        width, height, transposed = image_header(path)
        sizes = {(width, height), (height, width) if transposed else (width, height)}
        if declared is not None and declared not in sizes:
            raise EvalDataError(
                f"{json_file}: image id {image_id} ({file_name}) is declared {declared[0]}x"
                f"{declared[1]} but the file is {width}x{height}; the boxes would not line up"
            )
        # The declared size is what the boxes were drawn on (it differs from the served size
        # only for an EXIF-rotated file, where either may be meant).
        if declared is not None:
            width, height = declared
        elif transposed:
            width, height = height, width
        samples.append(
            DetectionSample(
                path,
                np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 4),
                np.asarray(classes[image_id], dtype=np.int64),
                width,
                height,
            )
        )
        files.append(path)
    digest = content_hash((relative_name(f, root), f) for f in files)
    background = sum(1 for s in samples if len(s.boxes) == 0)
    skipped = sum(crowd[image_id] for image_id, _ in ordered)  # of the images kept only
    return EvalDataset(
        "detection", "coco", json_file, names, samples, digest, skipped, background=background
    )


def _coco_categories(raw: list[Any], json_file: Path) -> tuple[list[str], dict[Any, int]]:
    by_id: dict[int, str] = {}
    for cat in raw:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise EvalDataError(f"{json_file}: category {cat!r} needs an integer id and a name")
        if cat["id"] in by_id:
            raise EvalDataError(f"{json_file}: category id {cat['id']} appears twice")
        by_id[cat["id"]] = str(cat["name"])
    if not by_id:
        raise EvalDataError(f"{json_file}: categories is empty; the model's classes must be listed")
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {cat_id: n for n, cat_id in enumerate(ids)}


def _coco_images(raw: list[Any], json_file: Path) -> dict[Any, tuple[str, tuple[int, int] | None]]:
    images: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    for img in raw:
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("id"), int | str)
            or not img.get("file_name")
        ):
            raise EvalDataError(f"{json_file}: image entry {img!r} needs an id and a file_name")
        if img["id"] in images:
            raise EvalDataError(f"{json_file}: image id {img['id']} appears twice")
        w, h = img.get("width"), img.get("height")
        declared = (w, h) if isinstance(w, int) and isinstance(h, int) else None
        images[img["id"]] = (str(img["file_name"]), declared)
    if not images:
        raise EvalDataError(f"{json_file}: images is empty; there is nothing to evaluate")
    return images


def _coco_file(root: Path, file_name: str, json_file: Path, image_id: Any) -> Path:
    for candidate in (root / file_name, root / "images" / file_name):
        if candidate.is_file():
            return candidate
    raise EvalDataError(
        f"{json_file}: image id {image_id} file {file_name} not found (looked in {root} and "
        f"{root / 'images'})"
    )
