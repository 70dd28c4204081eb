"""Classification metrics with scikit-learn's semantics, in plain numpy.

The evaluation stage must not pull scikit-learn into a serving install, yet its figures have to be
the ones a data scientist gets from ``sklearn.metrics`` on the same labels, or the gate thresholds
people copy from notebooks would mean something else here. So every number follows
``precision_recall_fscore_support(labels=range(len(names)), zero_division=0)``: a class with no
predictions has precision 0, a class with no support has recall 0, and the macro mean runs over
*every* class in ``names``, present or not (tests compare against scikit-learn itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cvdeploy.errors import InputError

__all__ = ["classification_metrics"]


def _labels(values: ArrayLike, what: str, n_classes: int) -> NDArray[np.int64]:
    """Validate one label vector: 1-D, integral, every value a class index."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{what} must be a 1-D sequence of class indices, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    integral = array.dtype.kind in "iub" or (
        array.dtype.kind == "f" and bool(np.all(np.isfinite(array) & (array == np.round(array))))
    )
    if not integral:
        raise InputError(
            f"{what} must hold integer class indices (0..{n_classes - 1}), got dtype "
            f"{array.dtype}; map class names to their index in `names` first"
        )
    labels = array.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise InputError(
            f"{what} holds class index {int(bad[0])}, outside 0..{n_classes - 1} "
            f"({n_classes} names); pass every class of the model in `names`"
        )
    return labels


def _ratio(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> NDArray[np.float64]:
    """``numerator / denominator`` with 0 where the denominator is 0 (``zero_division=0``)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro and support-weighted precision/recall/F1, per-class figures, confusion.

    Args:
        y_true: the true class index of each sample.
        y_pred: the predicted class index of each sample.
        names: the class names, index ``i`` naming class ``i``.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` (macro over all of ``names``),
        ``precision_weighted``, ``recall_weighted``, ``f1_weighted``, ``per_class``
        (``{name: {precision, recall, f1, support}}``), ``confusion_matrix`` (rows are the true
        class, columns the predicted one) and ``count``.

    Raises:
        InputError: lengths differ, no samples, or a label is not a class index.
    """
    n_classes = len(names)
    if n_classes == 0:
        raise InputError("names is empty; pass the class names of the model")
    if len(set(names)) != n_classes:
        raise InputError("names holds a class name twice; each class needs a distinct name")
    truth = _labels(y_true, "y_true", n_classes)
    pred = _labels(y_pred, "y_pred", n_classes)
    if truth.shape != pred.shape:
        raise InputError(
            f"y_true has {truth.size} labels but y_pred has {pred.size}; pass one prediction "
            "per sample"
        )
    if truth.size == 0:
        raise InputError("no samples to evaluate; the evaluation set is empty")

    confusion = np.bincount(truth * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    # scikit-learn >= 1.3 computes F1 from counts (2tp / (2tp + fp + fn)), not from p and r.
    f1 = _ratio(2 * tp, support + predicted)
    count = int(truth.size)

    def weighted(values: NDArray[np.float64]) -> float:
        return float(np.average(values, weights=support))

    return {
        "accuracy": float(tp.sum() / count),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "precision_weighted": weighted(precision),
        "recall_weighted": weighted(recall),
        "f1_weighted": weighted(f1),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": confusion.tolist(),
        "count": count,
    }
