"""Load the labelled images the evaluation stage scores a model on.

Three layouts are read, detected from what is at the path the user gives
(:mod:`~cvdeploy.pipeline.datasets.loader`):

* **ImageFolder** (classification), torchvision's convention: one subfolder of images per class
  (:mod:`~cvdeploy.pipeline.datasets.imagefolder`).
* **YOLO** (detection), Ultralytics' convention: a dataset YAML, or a folder holding
  ``data.yaml``/``dataset.yaml`` with ``images/`` and ``labels/``; a missing label file is an
  error, an empty one a background image (:mod:`~cvdeploy.pipeline.datasets.yolo`).
* **COCO JSON** (detection): ``images``/``annotations``/``categories``, ``iscrowd`` annotations
  skipped and counted (:mod:`~cvdeploy.pipeline.datasets.coco`).

Every problem is an :class:`EvalDataError` naming the file (and line) and what is wrong, found
before any inference runs; image sizes come from the file header with the EXIF orientation
applied, as the server sees them (:mod:`~cvdeploy.pipeline.datasets.base`).
"""

from __future__ import annotations

from cvdeploy.pipeline.datasets.base import (
    IMAGE_SUFFIXES,
    ClassificationSample,
    DetectionSample,
    EvalDataError,
    EvalDataset,
    content_hash,
)
from cvdeploy.pipeline.datasets.loader import load_eval_data

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassificationSample",
    "DetectionSample",
    "EvalDataError",
    "EvalDataset",
    "content_hash",
    "load_eval_data",
]
