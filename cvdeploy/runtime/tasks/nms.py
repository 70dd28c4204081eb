"""Exact greedy non-maximum suppression in numpy, class-aware through the coordinate-offset trick.

Boxes are offset by ``class_id * span`` so boxes of different classes can never overlap, then
visited in score order. Rather than one numpy round-trip per kept box against every remaining
candidate (O(kept x n) Python-level steps), candidates are taken in score-ordered blocks of
``BLOCK``: a block is first checked against everything already kept in one vectorised IoU
matrix, then the greedy pass inside the block reads a precomputed block x block overlap matrix,
so the Python loop only tests a flag per box. The result is identical to textbook greedy NMS;
on 8,400 low-confidence YOLO candidates with ``max_det=300`` it is ~10x faster than the
per-kept-box loop.

Greedy NMS keeps boxes in score order, so stopping at ``max_det`` keeps gives exactly the first
``max_det`` boxes of the full result. The overlap test is ``intersection > iou * union``: the
same as ``IoU > iou`` for boxes with area, and a zero-area box (union 0) is never suppressed, as
in torchvision and ONNX's ``NonMaxSuppression``.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["BLOCK", "nms", "top_candidates"]

#: Candidates per vectorised step: big enough to amortise numpy calls, small enough that the
#: block x block matrices stay in cache.
BLOCK: Final = 256


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
    max_det: int | None = None,
) -> np.ndarray:
    """Indices of the boxes to keep, best score first.

    Args:
        boxes: ``(n, 4)`` xyxy.
        scores: ``(n,)``.
        iou_threshold: a box whose IoU with a kept box of its class exceeds this is dropped.
        class_ids: ``(n,)``; when given, boxes of different classes never suppress each other.
        max_det: stop after this many kept boxes.
    """
    count = len(scores)
    if count == 0:
        return np.empty(0, dtype=np.int64)
    limit = count if max_det is None else min(max_det, count)
    order = np.argsort(-scores, kind="stable")
    # float64: the class offsets push coordinates to ~1e5, where float32 steps are ~0.01 px.
    coords = boxes[order].astype(np.float64)
    if class_ids is not None and count > 1:
        span = float(coords.max() - coords.min()) + 1.0
        coords += (class_ids[order].astype(np.float64) * span)[:, None]
    areas = _areas(coords)

    keep: list[int] = []
    kept = np.empty((0, 4))
    kept_areas = np.empty(0)
    for start in range(0, count, BLOCK):
        block = coords[start : start + BLOCK]
        block_areas = areas[start : start + BLOCK]
        alive = np.arange(len(block))
        if keep:
            hit = _overlaps(kept, kept_areas, block, block_areas, iou_threshold).any(axis=0)
            alive = alive[~hit]
        block, block_areas = block[alive], block_areas[alive]
        over = _overlaps(block, block_areas, block, block_areas, iou_threshold)
        suppressed = np.zeros(len(alive), dtype=bool)
        chosen: list[int] = []
        for i in range(len(alive)):
            if suppressed[i]:
                continue
            chosen.append(i)
            if len(keep) + len(chosen) >= limit:
                break
            suppressed |= over[i]  # marks only later boxes that matter; earlier ones are decided
        keep.extend((start + alive[chosen]).tolist())
        if len(keep) >= limit:
            break
        kept = np.concatenate([kept, block[chosen]])
        kept_areas = np.concatenate([kept_areas, block_areas[chosen]])
    return order[np.asarray(keep, dtype=np.int64)]


def _areas(coords: np.ndarray) -> np.ndarray:
    width = np.maximum(coords[:, 2] - coords[:, 0], 0.0)
    height = np.maximum(coords[:, 3] - coords[:, 1], 0.0)
    areas: np.ndarray = width * height
    return areas


def _overlaps(
    a: np.ndarray, a_areas: np.ndarray, b: np.ndarray, b_areas: np.ndarray, threshold: float
) -> np.ndarray:
    """``(len(a), len(b))`` bool: IoU(a_i, b_j) > threshold."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(width, 0.0, out=width)
    np.maximum(height, 0.0, out=height)
    inter = width * height
    union = a_areas[:, None] + b_areas[None, :] - inter
    result: np.ndarray = inter > threshold * union
    return result


def top_candidates(scores: np.ndarray, limit: int) -> np.ndarray | None:
    """Indices of the ``limit`` best scores (unordered), or None when all of them fit.

    ``argpartition`` is O(n): a low ``conf`` on a large model can leave tens of thousands of
    candidates, and NMS cost grows with them while the result barely changes.
    """
    if len(scores) <= limit:
        return None
    return np.argpartition(-scores, limit - 1)[:limit]
