"""COCO mAP against pycocotools' COCOeval, on random and adversarial cases, plus a hand case."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvdeploy.errors import InputError
from cvdeploy.pipeline.metrics import box_iou, detection_metrics

TOLERANCE = 1e-9

# One case: per image (pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes), as arrays.
Case = tuple[
    list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]
]


def coco_stats(case: Case, n_classes: int) -> np.ndarray:
    """stats[0:3] (mAP .5:.95, .5, .75) from pycocotools for the same inputs."""
    pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes = case
    images, annotations, results = [], [], []
    for i in range(len(pred_boxes)):
        images.append({"id": i + 1, "width": 1000, "height": 1000})
        for box, cls in zip(gt_boxes[i], gt_classes[i], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    # COCOeval treats a match with gt id 0 as "unmatched": ids start at 1.
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for box, score, cls in zip(pred_boxes[i], pred_scores[i], pred_classes[i], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    if not results:  # loadRes cannot take an empty list; no detections means AP 0 everywhere.
        return np.zeros(3)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:3])


def ours(case: Case, n_classes: int, **kwargs: Any) -> dict[str, Any]:
    return detection_metrics(*case, [f"c{c}" for c in range(n_classes)], **kwargs)


def assert_matches_coco(case: Case, n_classes: int) -> float:
    got = ours(case, n_classes)
    want = coco_stats(case, n_classes)
    mine = np.array([got["map50_95"], got["map50"], got["map75"]])
    diff = float(np.max(np.abs(mine - want)))
    assert diff <= TOLERANCE, (mine, want)
    assert got["map"] == got["map50_95"]
    return diff


def xyxy(*boxes: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def image(
    preds: list[tuple[tuple[float, float, float, float], float, int]],
    gts: list[tuple[tuple[float, float, float, float], int]],
) -> tuple[np.ndarray, ...]:
    return (
        xyxy(*[p[0] for p in preds]),
        np.array([p[1] for p in preds], dtype=np.float64),
        np.array([p[2] for p in preds], dtype=np.int64),
        xyxy(*[g[0] for g in gts]),
        np.array([g[1] for g in gts], dtype=np.int64),
    )


def case_of(*images: tuple[np.ndarray, ...]) -> Case:
    return tuple(list(column) for column in zip(*images, strict=True))  # type: ignore[return-value]


def random_case(rng: np.random.Generator, n_images: int, n_classes: int, n_dets: int) -> Case:
    """Boxes on a quarter-pixel grid (exact in binary, so IoU ties at thresholds really occur),
    detections made of jittered copies of ground truth, duplicates and pure noise, scores on a
    coarse grid so that ties are common."""
    columns: list[list[np.ndarray]] = [[], [], [], [], []]
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 8))
        xy = rng.integers(0, 400, size=(n_gt, 2)) / 4
        wh = rng.integers(1, 200, size=(n_gt, 2)) / 4
        gt = np.hstack([xy, xy + wh])
        gt_cls = rng.integers(0, n_classes, n_gt)
        k = int(rng.integers(0, n_dets + 1))
        source = rng.integers(0, max(n_gt, 1), k)
        jitter = rng.integers(-12, 13, size=(k, 4)) / 4
        noise = np.hstack([rng.integers(0, 400, (k, 2)) / 4, rng.integers(1, 200, (k, 2)) / 4])
        noise[:, 2:] += noise[:, :2]
        use_gt = (rng.random(k) < 0.7) & (n_gt > 0)
        boxes = np.where(use_gt[:, None], gt[source] + jitter if n_gt else noise, noise)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        classes = np.where(
            use_gt & (rng.random(k) < 0.9),
            gt_cls[source] if n_gt else 0,
            rng.integers(0, n_classes, k),
        )
        scores = rng.integers(0, 20, k) / 20
        dup = rng.random(k) < 0.1
        boxes = np.vstack([boxes, boxes[dup]])
        scores = np.concatenate([scores, scores[dup]])
        classes = np.concatenate([classes, classes[dup]])
        for column, value in zip(columns, (boxes, scores, classes, gt, gt_cls), strict=True):
            column.append(value)
    return tuple(columns)  # type: ignore[return-value]


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    case = random_case(rng, int(rng.integers(1, 9)), int(rng.integers(1, 5)), 40)
    if sum(len(g) for g in case[3]) == 0:  # COCOeval prints -1; we refuse to make up a figure
        with pytest.raises(InputError, match="no boxes"):
            ours(case, 4)
        return
    assert_matches_coco(case, 4)


def test_large_random_case_matches_pycocotools() -> None:
    rng = np.random.default_rng(1234)
    assert_matches_coco(random_case(rng, 30, 5, 250), 5)


def test_float_boxes_match_pycocotools() -> None:
    """Arbitrary float coordinates: pycocotools adds x + w, we read x2; still within 1e-9."""
    rng = np.random.default_rng(7)
    case = random_case(rng, 10, 3, 60)
    noisy = (
        [b + rng.uniform(0, 0.3, b.shape) for b in case[0]],
        [s + rng.uniform(0, 1e-3, s.shape) for s in case[1]],
        case[2],
        [b * 1.0037 for b in case[3]],
        case[4],
    )
    for boxes in noisy[0]:
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    assert_matches_coco(noisy, 3)  # type: ignore[arg-type]


box_strategy = st.tuples(
    st.integers(0, 20), st.integers(0, 20), st.integers(0, 12), st.integers(0, 12)
).map(lambda b: (b[0] / 2, b[1] / 2, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
image_strategy = st.tuples(
    st.lists(st.tuples(box_strategy, st.sampled_from([0.1, 0.5, 0.5, 0.9]), st.integers(0, 1))),
    st.lists(st.tuples(box_strategy, st.integers(0, 1)), max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(image_strategy, min_size=1, max_size=4))
def test_hypothesis_cases_match_pycocotools(images: list[Any]) -> None:
    """Small crowded scenes on a half-pixel grid: ties in score and IoU, zero-area boxes."""
    case = case_of(*(image(preds, gts) for preds, gts in images))
    if sum(len(g) for g in case[3]) == 0:
        return
    assert_matches_coco(case, 2)


def test_hand_computed_two_images() -> None:
    """Image 1: gt G1 (0,0,10,10), detection a = G1 (IoU 1), score 0.9.
    Image 2: gt G2 (0,0,10,10), detection b (0,0,10,6.25) (IoU 0.625), score 0.8, and
    detection c (20,20,30,30) (IoU 0), score 0.7.

    Sorted by score: a, b, c; 2 ground-truth boxes.
    * IoU 0.50, 0.55, 0.60: TP TP FP -> recall .5 1 1, precision 1 1 2/3 -> AP 1.
    * IoU 0.65 ... 0.95 (7 thresholds): TP FP FP -> recall stays .5; precision 1 at the 51
      recall thresholds 0.00 ... 0.50 and 0 at the 50 above -> AP 51/101.
    mAP50 = 1, mAP75 = 51/101, mAP50:95 = (3 * 1 + 7 * 51/101) / 10 = 66/101.
    Best mean F1 over thresholds 0.9, 0.8, 0.7 (F1 2/3, 1, 0.8): 0.8, with P = R = F1 = 1.
    """
    case = case_of(
        image([((0, 0, 10, 10), 0.9, 0)], [((0, 0, 10, 10), 0)]),
        image([((0, 0, 10, 6.25), 0.8, 0), ((20, 20, 30, 30), 0.7, 0)], [((0, 0, 10, 10), 0)]),
    )
    got = detection_metrics(*case, ["cat"])
    # COCOeval divides by tp + fp + eps, so "1" is 1 - 2e-16.
    assert got["map50"] == pytest.approx(1.0, abs=1e-12)
    assert got["map75"] == pytest.approx(51 / 101, abs=1e-12)
    assert got["map50_95"] == pytest.approx(66 / 101, abs=1e-12)
    assert got["conf_threshold"] == 0.8
    assert (got["precision"], got["recall"], got["f1"]) == (1.0, 1.0, 1.0)
    assert got["per_class"]["cat"]["support"] == 2
    assert got["images"] == 2
    assert got["instances"] == 2
    assert_matches_coco(case, 1)


def test_score_ties_keep_input_order() -> None:
    """Equal scores: the earlier detection is matched first (mergesort), in image and merge."""
    gt = [((0, 0, 10, 10), 0)]
    case = case_of(
        image([((0, 0, 10, 4), 0.5, 0), ((0, 0, 10, 10), 0.5, 0)], gt),
        image([((50, 50, 60, 60), 0.5, 0), ((0, 0, 10, 10), 0.5, 0)], gt),
        image([((0, 0, 10, 10), 0.5, 0)], gt),
    )
    assert_matches_coco(case, 1)


def test_duplicates_count_as_false_positives() -> None:
    box = (5, 5, 25, 25)
    case = case_of(image([(box, 0.9, 0), (box, 0.9, 0), (box, 0.8, 0)], [(box, 0)]))
    got = ours(case, 1)
    assert got["map50"] == pytest.approx(1.0, abs=1e-12)  # the first is the only TP, best rank
    # The duplicate at 0.9 cannot be thresholded away from its twin: P 1/2, R 1 at 0.9.
    assert got["conf_threshold"] == 0.9
    assert (got["precision"], got["recall"]) == (0.5, 1.0)
    assert_matches_coco(case, 1)


def test_equal_iou_goes_to_the_later_ground_truth() -> None:
    """A detection between two overlapping gts (IoU 9/11 with both) takes the *later* one, as
    COCOeval's ``<`` comparison does; the next detection, a copy of the earlier gt, then matches
    it at IoU 1 (taking the first would leave it only the later gt, at IoU 2/3)."""
    gts = [((0, 0, 10, 10), 0), ((2, 0, 12, 10), 0)]
    preds = [((1, 0, 11, 10), 0.9, 0), ((0, 0, 10, 10), 0.8, 0)]
    case = case_of(image(preds, gts))
    got = ours(case, 1)
    # Both are TPs up to IoU 0.80 (7 thresholds); at 0.85-0.95 the first is a FP: AP 25.5/101.
    assert got["map75"] == pytest.approx(1.0, abs=1e-12)
    assert got["map50_95"] == pytest.approx((7 + 3 * 25.5 / 101) / 10, abs=1e-12)
    assert_matches_coco(case, 1)


def test_iou_exactly_at_thresholds() -> None:
    # IoU 0.5, 0.75 and 0.55 exactly (areas on a binary grid).
    preds = [((0, 0, 10, 5), 0.9, 0), ((20, 0, 30, 7.5), 0.8, 0), ((40, 0, 50, 5.5), 0.7, 0)]
    gts = [((0, 0, 10, 10), 0), ((20, 0, 30, 10), 0), ((40, 0, 50, 10), 0)]
    assert box_iou(xyxy(preds[0][0]), xyxy(gts[0][0]))[0, 0] == 0.5
    assert_matches_coco(case_of(image(preds, gts)), 1)


def test_empty_and_false_positive_only_images() -> None:
    case = case_of(
        image([], []),
        image([((0, 0, 5, 5), 0.99, 0), ((1, 1, 6, 6), 0.98, 1)], []),
        image([((0, 0, 10, 10), 0.5, 0)], [((0, 0, 10, 10), 0), ((30, 30, 40, 40), 1)]),
        image([], [((0, 0, 3, 3), 1)]),
    )
    got = ours(case, 2)
    assert got["images"] == 4
    assert got["instances"] == 3
    assert_matches_coco(case, 2)


def test_class_without_ground_truth_is_left_out_of_the_mean() -> None:
    case = case_of(
        image(
            [((0, 0, 10, 10), 0.9, 0), ((0, 0, 10, 10), 0.95, 1), ((50, 50, 60, 60), 0.9, 2)],
            [((0, 0, 10, 10), 0)],
        )
    )
    got = detection_metrics(*case, ["a", "b", "c", "d"])
    assert got["map50_95"] == pytest.approx(1.0, abs=1e-12)
    assert set(got["pr_curve"]) == {"a"}
    assert got["per_class"]["b"] == {
        "ap50": None,
        "ap50_95": None,
        "precision": 0.0,
        "recall": None,
        "support": 0,
    }
    assert got["per_class"]["d"]["precision"] is None  # no detections at all
    assert got["precision"] == got["recall"] == 1.0  # macro over classes with ground truth
    assert_matches_coco(case, 4)


def test_more_than_max_dets_per_image() -> None:
    """150 detections of one class on one image: only the best 100 count, per image and class
    (a second class keeps its own 100)."""
    rng = np.random.default_rng(3)
    gt = [((float(x), 0.0, float(x) + 8, 8.0), 0) for x in range(0, 600, 10)]
    gt += [((float(x), 100.0, float(x) + 8, 108.0), 1) for x in range(0, 300, 10)]
    preds = []
    for _ in range(150):
        x = float(rng.integers(0, 60) * 10)
        preds.append(((x, 0.0, x + 8, 8.0), float(rng.integers(0, 50) / 50), 0))
    for _ in range(120):
        x = float(rng.integers(0, 30) * 10)
        preds.append(((x, 100.0, x + 8, 108.0), float(rng.integers(0, 50) / 50), 1))
    case = case_of(image(preds, gt), image(preds[:30], gt[:5]))
    got = ours(case, 2)
    assert got["detections"] == 100 + 100 + 30
    assert_matches_coco(case, 2)
    assert ours(case, 2, max_dets=1000)["detections"] == 270 + 30


def test_tiny_and_degenerate_boxes() -> None:
    preds = [
        ((1, 1, 1.25, 1.25), 0.9, 0),
        ((1, 1, 1.25, 1.5), 0.8, 0),
        ((3, 3, 3, 4), 0.7, 0),  # zero width: IoU 0 with everything
        ((0.5, 0.5, 0.75, 0.75), 0.6, 0),
    ]
    gts = [((1, 1, 1.25, 1.25), 0), ((3, 3, 3, 4), 0), ((0.5, 0.5, 0.75, 0.625), 0)]
    assert_matches_coco(case_of(image(preds, gts)), 1)


def test_pr_curve_is_101_monotone_points() -> None:
    rng = np.random.default_rng(11)
    case = random_case(rng, 6, 3, 30)
    got = ours(case, 3)
    for curve in got["pr_curve"].values():
        assert len(curve["recall"]) == len(curve["precision"]) == 101
        assert curve["recall"][0] == 0.0
        assert curve["recall"][-1] == 1.0
        assert np.all(np.diff(curve["precision"]) <= 0)
    for name, figures in got["per_class"].items():
        if figures["support"]:
            assert figures["ap50"] == pytest.approx(np.mean(got["pr_curve"][name]["precision"]))


def reference_prf(case: Case, n_classes: int, threshold: float) -> tuple[float, float, float]:
    """Macro P/R/F1 at IoU 0.5 for the detections scoring >= threshold, by plain loops."""
    pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes = case
    tp = np.zeros(n_classes)
    kept = np.zeros(n_classes)
    n_gt = np.zeros(n_classes)
    for i in range(len(pred_boxes)):
        for c in range(n_classes):
            gts = [b for b, k in zip(gt_boxes[i], gt_classes[i], strict=True) if k == c]
            n_gt[c] += len(gts)
            dets = [
                (s, b)
                for b, s, k in zip(pred_boxes[i], pred_scores[i], pred_classes[i], strict=True)
                if k == c
            ]
            dets = sorted(dets, key=lambda d: -d[0])[:100]
            used = [False] * len(gts)
            for score, box in dets:
                if score < threshold:
                    continue
                kept[c] += 1
                best, match = 0.5, -1
                for g, gt in enumerate(gts):
                    iou = box_iou(box[None], gt[None])[0, 0]
                    if not used[g] and iou >= best:
                        best, match = iou, g
                if match >= 0:
                    used[match] = True
                    tp[c] += 1
    classes = n_gt > 0
    precision = np.divide(tp, kept, out=np.zeros(n_classes), where=kept > 0)
    recall = tp / np.maximum(n_gt, 1)
    f1 = 2 * tp / np.maximum(kept + n_gt, 1)
    return (
        float(precision[classes].mean()),
        float(recall[classes].mean()),
        float(f1[classes].mean()),
    )


@pytest.mark.parametrize("seed", range(5))
def test_conf_threshold_maximises_mean_f1(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    case = random_case(rng, 5, 3, 25)
    if sum(len(g) for g in case[3]) == 0:
        pytest.skip("no ground truth drawn")
    got = ours(case, 3)
    candidates = np.unique(np.concatenate(case[1]))
    f1s = [reference_prf(case, 3, float(t))[2] for t in candidates]
    assert got["f1"] == pytest.approx(max(f1s), abs=1e-12)
    p, r, f1 = reference_prf(case, 3, got["conf_threshold"])
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f1), abs=1e-12)


def test_box_iou() -> None:
    a = xyxy((0, 0, 10, 10), (0, 0, 0, 10))
    b = xyxy((0, 0, 10, 10), (10, 0, 20, 10), (5, 0, 15, 10))
    np.testing.assert_array_equal(box_iou(a, b), [[1.0, 0.0, 1 / 3], [0.0, 0.0, 0.0]])
    assert box_iou(xyxy(), b).shape == (0, 3)


def test_no_detections_gives_zero() -> None:
    case = case_of(image([], [((0, 0, 1, 1), 0)]))
    got = ours(case, 1)
    assert got["map50_95"] == got["map50"] == got["f1"] == 0.0
    assert got["conf_threshold"] is None
    assert got["pr_curve"]["c0"]["precision"] == [0.0] * 101


def test_no_ground_truth_is_an_error() -> None:
    case = case_of(image([((0, 0, 1, 1), 0.5, 0)], []))
    with pytest.raises(InputError, match="no boxes"):
        ours(case, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c[1].__setitem__(0, np.array([0.5, 0.4])), "one score and one class"),
        (lambda c: c[2].__setitem__(0, np.array([7])), "class index 7"),
        (lambda c: c[0].__setitem__(0, xyxy((5, 0, 1, 1))), "x2 < x1"),
        (lambda c: c[3].__setitem__(0, xyxy((0, 0, np.nan, 1))), "NaN"),
        (lambda c: c[4].pop(), "one entry per image"),
        (lambda c: c[0].__setitem__(0, np.zeros((1, 5))), r"expected \(n, 4\)"),
    ],
)
def test_bad_inputs_name_the_problem(change: Any, message: str) -> None:
    case = case_of(image([((0, 0, 1, 1), 0.5, 0)], [((0, 0, 1, 1), 0)]))
    change(case)
    with pytest.raises(InputError, match=message):
        ours(case, 1)


def test_names_and_max_dets_are_checked() -> None:
    case = case_of(image([], [((0, 0, 1, 1), 0)]))
    with pytest.raises(InputError, match="twice"):
        detection_metrics(*case, ["a", "a"])
    with pytest.raises(InputError, match="max_dets"):
        detection_metrics(*case, ["a"], max_dets=0)
