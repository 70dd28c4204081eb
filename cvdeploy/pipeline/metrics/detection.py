"""COCO-style detection metrics in plain numpy: the numbers pycocotools' ``COCOeval`` prints.

A gate written as "mAP@.5:.95 >= 0.42" is only meaningful if the figure is the one everybody
quotes, so this module re-implements ``COCOeval`` for ``iouType="bbox"``, area range "all" and
``maxDets=100`` rule for rule (tests compare ``stats[0:3]`` with pycocotools to 1e-9):

* per image and class, detections are sorted by score (mergesort, so ties keep input order) and
  only the top ``max_dets`` are kept — per image *and class*, as ``evaluateImg`` does;
* each detection, best score first, takes the still unmatched ground truth with the highest IoU
  that is at least the threshold (``min(t, 1 - 1e-10)``); equal IoUs go to the *later* box, as
  COCOeval's ``<`` comparison does;
* per class, the detections of all images are merged with a mergesort on score, precision is made
  monotone from the right and read at the 101 recall thresholds with
  ``searchsorted(side="left")``; recall levels never reached count as precision 0;
* classes without ground truth are left out of the means (COCOeval marks them -1).

IoU is the continuous one (no ``+1`` on widths), computed in the same order of operations as
pycocotools' C code so that exact ties at a threshold fall the same way. Ground truth is never
"crowd" or ignored, and its area is ``w*h``, so the "all" range keeps every box.

On top of COCO, ``precision``/``recall``/``f1`` follow Ultralytics: at IoU 0.5, at the one
confidence threshold that maximises the mean F1 over classes with ground truth. Ultralytics reads
smoothed curves on a 1000-point grid; here every distinct detection score is tried exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cvdeploy.errors import InputError

__all__ = ["IOU_THRESHOLDS", "RECALL_THRESHOLDS", "box_iou", "detection_metrics"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]

# Spelled exactly as pycocotools' ``Params.setDetParams`` so the floats are bit-identical.
IOU_THRESHOLDS: FloatArray = np.linspace(
    0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True
)
RECALL_THRESHOLDS: FloatArray = np.linspace(
    0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True
)
_MATCH_THRESHOLDS: FloatArray = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
_IOU50 = 0
_IOU75 = int(np.flatnonzero(IOU_THRESHOLDS == 0.75)[0])


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` (n,4) with every box in ``b`` (m,4), both xyxy; shape (n, m).

    Boxes that only touch, or have zero width or height, have IoU 0 (as in pycocotools).
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    union = np.where(overlap, area_a[:, None] + area_b[None, :] - inter, 1.0)
    return np.where(overlap, inter / union, 0.0)


def _match(ious: FloatArray) -> BoolArray:
    """COCOeval's greedy matching at every IoU threshold; ``ious`` rows are sorted detections.

    Returns a (T, D) array: True where detection ``d`` matched a ground truth at threshold ``t``.
    """
    n_dets, n_gts = ious.shape
    tp = np.zeros((len(_MATCH_THRESHOLDS), n_dets), dtype=np.bool_)
    matched = np.zeros((len(_MATCH_THRESHOLDS), n_gts), dtype=np.bool_)
    last = n_gts - 1
    # The matching is sequential (a detection can only take what better ones left), but one that
    # overlaps nothing at the lowest threshold can be skipped outright.
    for d in np.flatnonzero(ious.max(axis=1) >= _MATCH_THRESHOLDS[0]):
        row = ious[d]
        candidate = (row[None, :] >= _MATCH_THRESHOLDS[:, None]) & ~matched
        hit = candidate.any(axis=1)
        # Highest IoU wins, and among equals the last box, hence argmax on the reversed row.
        best = last - np.argmax(np.where(candidate, row, -1.0)[:, ::-1], axis=1)
        tp[hit, d] = True
        matched[hit, best[hit]] = True
    return tp


def _interpolated_precision(tp: BoolArray, n_gt: int) -> FloatArray:
    """COCOeval's ``accumulate`` for one class: (T, R) precision at the recall thresholds."""
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
    recall = tp_sum / n_gt
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    # Monotone from the right: each precision becomes the best precision at any higher recall.
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((tp.shape[0], len(RECALL_THRESHOLDS)))
    for t in range(tp.shape[0]):
        idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        reached = idx < tp.shape[1]
        out[t, reached] = precision[t, idx[reached]]
    return out


def _array(value: Any, what: str, image: int, shape: tuple[int, ...]) -> NDArray[Any]:
    """One per-image input as an array of ``shape`` (-1 for the box count), empty allowed."""
    array = np.asarray(value)
    if array.size == 0:
        return np.zeros(tuple(0 if s == -1 else s for s in shape), dtype=array.dtype)
    if array.ndim != len(shape) or any(
        s not in (-1, n) for s, n in zip(shape, array.shape, strict=True)
    ):
        want = "(n, 4)" if len(shape) == 2 else "(n,)"
        raise InputError(f"{what}[{image}] has shape {array.shape}; expected {want}")
    return array


def _boxes(value: Any, what: str, image: int) -> FloatArray:
    boxes = _array(value, what, image, (-1, 4)).astype(np.float64)
    if not np.all(np.isfinite(boxes)):
        raise InputError(f"{what}[{image}] holds NaN or infinite coordinates")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise InputError(
            f"{what}[{image}] has a box with x2 < x1 or y2 < y1; boxes must be xyxy pixels "
            "(convert xywh or cxcywh first)"
        )
    return boxes


def _classes(value: Any, what: str, image: int, n_classes: int) -> IntArray:
    array = _array(value, what, image, (-1,))
    if array.size and (
        array.dtype.kind not in "iu"
        and not (array.dtype.kind == "f" and np.all(array == np.round(array)))
    ):
        raise InputError(f"{what}[{image}] must hold integer class indices, got {array.dtype}")
    classes = array.astype(np.int64)
    bad = classes[(classes < 0) | (classes >= n_classes)]
    if bad.size:
        raise InputError(
            f"{what}[{image}] holds class index {int(bad[0])}, outside 0..{n_classes - 1}; "
            "pass every class of the model in `names`"
        )
    return classes


def _collect(
    pred_boxes: Sequence[Any],
    pred_scores: Sequence[Any],
    pred_classes: Sequence[Any],
    gt_boxes: Sequence[Any],
    gt_classes: Sequence[Any],
    n_classes: int,
    max_dets: int,
) -> tuple[list[FloatArray], list[BoolArray], IntArray]:
    """Match every image; per class, the merged sorted scores, (T, n) true positives, gt count."""
    score_parts: list[list[FloatArray]] = [[] for _ in range(n_classes)]
    tp_parts: list[list[BoolArray]] = [[] for _ in range(n_classes)]
    n_gt = np.zeros(n_classes, dtype=np.int64)
    for i in range(len(pred_boxes)):
        boxes = _boxes(pred_boxes[i], "pred_boxes", i)
        scores = _array(pred_scores[i], "pred_scores", i, (-1,)).astype(np.float64)
        classes = _classes(pred_classes[i], "pred_classes", i, n_classes)
        truth = _boxes(gt_boxes[i], "gt_boxes", i)
        truth_classes = _classes(gt_classes[i], "gt_classes", i, n_classes)
        if not len(boxes) == len(scores) == len(classes):
            raise InputError(
                f"image {i} has {len(boxes)} pred_boxes, {len(scores)} pred_scores and "
                f"{len(classes)} pred_classes; pass one score and one class per box"
            )
        if len(truth) != len(truth_classes):
            raise InputError(
                f"image {i} has {len(truth)} gt_boxes but {len(truth_classes)} gt_classes"
            )
        if not np.all(np.isfinite(scores)):
            raise InputError(f"pred_scores[{i}] holds NaN or infinite scores")
        n_gt += np.bincount(truth_classes, minlength=n_classes)
        for c in np.unique(classes):
            dets = np.flatnonzero(classes == c)
            dets = dets[np.argsort(-scores[dets], kind="mergesort")[:max_dets]]
            gts = np.flatnonzero(truth_classes == c)
            if gts.size:
                tp = _match(box_iou(boxes[dets], truth[gts]))
            else:
                tp = np.zeros((len(IOU_THRESHOLDS), dets.size), dtype=np.bool_)
            score_parts[c].append(scores[dets])
            tp_parts[c].append(tp)
    merged_scores: list[FloatArray] = []
    merged_tp: list[BoolArray] = []
    for c in range(n_classes):
        if not score_parts[c]:
            merged_scores.append(np.zeros(0))
            merged_tp.append(np.zeros((len(IOU_THRESHOLDS), 0), dtype=np.bool_))
            continue
        scores = np.concatenate(score_parts[c])
        order = np.argsort(-scores, kind="mergesort")
        merged_scores.append(scores[order])
        merged_tp.append(np.concatenate(tp_parts[c], axis=1)[:, order])
    return merged_scores, merged_tp, n_gt


def _best_f1(
    scores: list[FloatArray], tp50: list[BoolArray], n_gt: IntArray, evaluated: list[int]
) -> tuple[float | None, dict[int, tuple[float, float, float, int]]]:
    """The confidence threshold with the highest mean F1 over ``evaluated`` classes.

    Returns the threshold (None when those classes have no detections) and, per class, the
    precision, recall, F1 and number of detections kept at it.
    """
    pooled = [scores[c] for c in evaluated if scores[c].size]
    if not pooled:
        return None, dict.fromkeys(range(len(scores)), (0.0, 0.0, 0.0, 0))
    thresholds = np.unique(np.concatenate(pooled))[::-1]
    mean_f1 = np.zeros(len(thresholds))
    for c in evaluated:
        kept = np.searchsorted(-scores[c], -thresholds, side="right")
        tps = np.concatenate(([0], np.cumsum(tp50[c])))[kept]
        mean_f1 += 2 * tps / (kept + n_gt[c])
    # argmax takes the first maximum, i.e. the highest threshold among equally good ones.
    best = float(thresholds[int(np.argmax(mean_f1))])
    figures: dict[int, tuple[float, float, float, int]] = {}
    for c in range(len(scores)):
        kept_c = int(np.searchsorted(-scores[c], -best, side="right"))
        tp_c = float(tp50[c][:kept_c].sum())
        precision = tp_c / kept_c if kept_c else 0.0
        recall = tp_c / n_gt[c] if n_gt[c] else 0.0
        f1 = 2 * tp_c / (kept_c + n_gt[c]) if kept_c + n_gt[c] else 0.0
        figures[c] = (precision, recall, f1, kept_c)
    return best, figures


def detection_metrics(
    pred_boxes: Sequence[NDArray[Any]],
    pred_scores: Sequence[NDArray[Any]],
    pred_classes: Sequence[NDArray[Any]],
    gt_boxes: Sequence[NDArray[Any]],
    gt_classes: Sequence[NDArray[Any]],
    names: Sequence[str],
    *,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO mAP (as pycocotools' ``COCOeval`` bbox) plus Ultralytics-style P/R/F1.

    Every argument but ``names`` has one entry per image; boxes are (n, 4) xyxy pixels, classes
    are indices into ``names``.

    Returns:
        ``map50_95`` (also ``map``), ``map50``, ``map75``; ``precision``, ``recall``, ``f1`` and
        ``conf_threshold`` (macro over classes with ground truth, at IoU 0.5 and the threshold
        that maximises the mean F1; the threshold is None if those classes have no detections);
        ``per_class`` ``{name: {ap50, ap50_95, precision, recall, support}}`` (the AP values and
        recall are None for a class without ground truth, its precision None unless it has
        detections at the threshold — then they are all false positives); ``pr_curve``
        ``{name: {"recall": [...101], "precision": [...101]}}`` at IoU 0.5 for classes with
        ground truth; ``images``, ``instances`` and ``detections`` (kept after ``max_dets``).

    Raises:
        InputError: inconsistent lengths or shapes, bad boxes or class indices, or no ground
            truth at all (mAP is undefined; COCOeval would print -1).
    """
    n_classes = len(names)
    if n_classes == 0:
        raise InputError("names is empty; pass the class names of the model")
    if len(set(names)) != n_classes:
        raise InputError("names holds a class name twice; each class needs a distinct name")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be a positive integer, got {max_dets!r}")
    lengths = {len(x) for x in (pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes)}
    if len(lengths) != 1:
        raise InputError(
            "pred_boxes, pred_scores, pred_classes, gt_boxes and gt_classes must have one entry "
            f"per image, got lengths {len(pred_boxes)}, {len(pred_scores)}, {len(pred_classes)}, "
            f"{len(gt_boxes)}, {len(gt_classes)}"
        )
    scores, tps, n_gt = _collect(
        pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes, n_classes, max_dets
    )
    evaluated = [c for c in range(n_classes) if n_gt[c] > 0]
    if not evaluated:
        raise InputError(
            "the ground truth has no boxes in any image, so mAP is undefined; evaluate on a "
            "labelled set with at least one object"
        )
    # (T, R, K) over the evaluated classes, averaged as COCOeval's summarize does.
    precision = np.stack([_interpolated_precision(tps[c], int(n_gt[c])) for c in evaluated], 2)
    conf, at_conf = _best_f1(scores, [tp[_IOU50] for tp in tps], n_gt, evaluated)

    per_class: dict[str, dict[str, Any]] = {}
    pr_curve: dict[str, dict[str, list[float]]] = {}
    for c, name in enumerate(names):
        p, r, _, kept = at_conf[c]
        if n_gt[c] == 0:
            per_class[name] = {
                "ap50": None,
                "ap50_95": None,
                "precision": p if kept else None,
                "recall": None,
                "support": 0,
            }
            continue
        k = evaluated.index(c)
        per_class[name] = {
            "ap50": float(precision[_IOU50, :, k].mean()),
            "ap50_95": float(precision[:, :, k].mean()),
            "precision": p,
            "recall": r,
            "support": int(n_gt[c]),
        }
        pr_curve[name] = {
            "recall": RECALL_THRESHOLDS.tolist(),
            "precision": precision[_IOU50, :, k].tolist(),
        }
    macro = np.array([at_conf[c][:3] for c in evaluated]).mean(axis=0)
    map50_95 = float(precision.mean())
    return {
        "map50_95": map50_95,
        "map": map50_95,
        "map50": float(precision[_IOU50].mean()),
        "map75": float(precision[_IOU75].mean()),
        "precision": float(macro[0]),
        "recall": float(macro[1]),
        "f1": float(macro[2]),
        "conf_threshold": conf,
        "per_class": per_class,
        "pr_curve": pr_curve,
        "images": len(pred_boxes),
        "instances": int(n_gt.sum()),
        "detections": int(sum(s.size for s in scores)),
    }
