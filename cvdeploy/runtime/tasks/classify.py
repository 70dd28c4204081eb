"""Image classification: probabilities (softmax when the model emits logits) and top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.results import ClassificationResult
from cvdeploy.runtime.tasks.base import Task

__all__ = ["ClassificationTask", "to_probabilities"]

_SUM_TOLERANCE = 1e-3


class ClassificationTask(Task):
    name = "classification"

    def postprocess(
        self, outputs: Sequence[np.ndarray], index: int, meta: object, params: PredictParams
    ) -> ClassificationResult:
        del meta  # classification results do not depend on where the pixels came from
        probs = to_probabilities(outputs[0][index].reshape(-1))
        k = min(params.top_k, probs.size)
        if k < probs.size:
            top = np.argpartition(-probs, k - 1)[:k]
            top = top[np.argsort(-probs[top], kind="stable")]
        else:
            top = np.argsort(-probs, kind="stable")
        class_ids = top.astype(np.int64)
        return ClassificationResult(class_ids, probs[top], self.names_for(class_ids))


def to_probabilities(row: np.ndarray) -> np.ndarray:
    """The row as float32 probabilities; a softmax unless it already is a distribution.

    Ultralytics classifiers end in a softmax, torchvision ones emit logits: both are common, and
    telling them apart by the values avoids a per-model setting.
    """
    values = row.astype(np.float32, copy=False)
    if (
        values.size
        and float(values.min()) >= 0.0
        and float(values.max()) <= 1.0
        and abs(float(values.sum(dtype=np.float64)) - 1.0) < _SUM_TOLERANCE
    ):
        return values
    shifted = np.exp(values - values.max())  # max-shift: no overflow for large logits
    shifted /= shifted.sum(dtype=np.float64)
    probs: np.ndarray = shifted.astype(np.float32, copy=False)
    return probs
