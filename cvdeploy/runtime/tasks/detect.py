"""Object detection post-processing: decode the head, filter, NMS, map boxes to the image.

Work is ordered so the expensive steps see the fewest rows: the confidence filter runs first on
the best class score of each anchor (one reduction over the contiguous class axis), boxes are
converted only for survivors, NMS sees at most ``MAX_CANDIDATES`` of them and stops at
``max_det``, and only the kept boxes are mapped back to original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.preprocess import ImageTransform, Preprocessor
from cvdeploy.runtime.results import DetectionResult
from cvdeploy.runtime.tasks.base import Task
from cvdeploy.runtime.tasks.layouts import DetectionHead
from cvdeploy.runtime.tasks.nms import nms, top_candidates

__all__ = ["MAX_CANDIDATES", "DetectionTask"]

#: Candidates kept for NMS, as Ultralytics' ``max_nms``.
MAX_CANDIDATES: Final = 30_000

_Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes xyxy (n,4), scores (n,), ids (n,)


class DetectionTask(Task):
    name = "detection"

    def __init__(
        self, preprocessor: Preprocessor, labels: Sequence[str], head: DetectionHead
    ) -> None:
        super().__init__(preprocessor, labels)
        self.head = head

    def postprocess(
        self, outputs: Sequence[np.ndarray], index: int, meta: object, params: PredictParams
    ) -> DetectionResult:
        layout = self.head.layout
        if layout == "end2end4":
            boxes, scores, class_ids = self._end2end4(outputs, index, params)
        elif layout == "end2end":
            boxes, scores, class_ids = _end2end(outputs[0][index], params)
        else:
            boxes, scores, class_ids = _anchors(outputs[0][index], layout, params)
        transform = meta if isinstance(meta, ImageTransform) else None
        if transform is None:
            height, width = self.preprocessor.input_size
            transform = ImageTransform.identity(width, height)
        boxes = transform.boxes_to_original(boxes.astype(np.float32))
        return DetectionResult(
            boxes=boxes,
            scores=scores.astype(np.float32, copy=False),
            class_ids=class_ids.astype(np.int64, copy=False),
            labels=self.names_for(class_ids),
            image_size=transform.image_size,
        )

    def _end2end4(
        self, outputs: Sequence[np.ndarray], index: int, params: PredictParams
    ) -> _Decoded:
        head = self.head
        boxes = outputs[head.boxes_index][index]
        scores = outputs[head.scores_index][index].reshape(-1)
        classes = outputs[head.classes_index][index].reshape(-1)
        if head.count_index >= 0:
            count = int(np.asarray(outputs[head.count_index][index]).reshape(-1)[0])
            count = max(0, min(count, len(scores)))
            boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
        return _filter_sorted(boxes, scores, classes, params)


def _anchors(raw: np.ndarray, layout: str, params: PredictParams) -> _Decoded:
    """Decode one image's ``v8`` / ``v8t`` / ``v5`` output and run class-aware NMS."""
    conf = params.conf
    if layout == "v8":  # (4+nc, N): the class axis is the slow one, the reduction stays contiguous
        class_scores = raw[4:]
        best = class_scores.max(axis=0)
        keep = np.flatnonzero(best > conf)
        scores = best[keep]
        class_ids = class_scores[:, keep].argmax(axis=0)
        cxcywh = raw[:4, keep].T
    elif layout == "v8t":  # (N, 4+nc)
        best = raw[:, 4:].max(axis=1)
        keep = np.flatnonzero(best > conf)
        rows = raw[keep]
        scores = best[keep]
        class_ids = rows[:, 4:].argmax(axis=1)
        cxcywh = rows[:, :4]
    else:  # v5 (N, 5+nc): score = objectness * class probability, never above objectness
        keep = np.flatnonzero(raw[:, 4] > conf)
        rows = raw[keep]
        combined = rows[:, 5:] * rows[:, 4:5]
        class_ids = combined.argmax(axis=1)
        scores = combined[np.arange(len(rows)), class_ids]
        passed = scores > conf
        scores, class_ids, cxcywh = scores[passed], class_ids[passed], rows[passed, :4]
    if len(scores) == 0:
        return _empty()
    top = top_candidates(scores, MAX_CANDIDATES)
    if top is not None:
        scores, class_ids, cxcywh = scores[top], class_ids[top], cxcywh[top]
    boxes = _xywh_to_xyxy(cxcywh)
    kept = nms(boxes, scores, params.iou, class_ids=class_ids, max_det=params.max_det)
    return boxes[kept], scores[kept], class_ids[kept]


def _end2end(raw: np.ndarray, params: PredictParams) -> _Decoded:
    """``(k, 6)`` rows of x1, y1, x2, y2, score, class: NMS already ran inside the graph."""
    return _filter_sorted(raw[:, :4], raw[:, 4], raw[:, 5], params)


def _filter_sorted(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, params: PredictParams
) -> _Decoded:
    keep = np.flatnonzero(scores > params.conf)
    if keep.size == 0:
        return _empty()
    order = keep[np.argsort(-scores[keep], kind="stable")][: params.max_det]
    class_ids = np.rint(classes[order]).astype(np.int64)  # float class columns are common
    return boxes[order].astype(np.float32), scores[order], class_ids


def _xywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    xy = cxcywh[:, :2].astype(np.float32)
    half = cxcywh[:, 2:4].astype(np.float32) * 0.5
    return np.concatenate([xy - half, xy + half], axis=1)


def _empty() -> _Decoded:
    return (
        np.empty((0, 4), dtype=np.float32),
        np.empty(0, dtype=np.float32),
        np.empty(0, dtype=np.int64),
    )
