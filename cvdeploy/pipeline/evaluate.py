"""Score a loaded model on an evaluation set: classification or detection metrics.

Images are decoded the way the server decodes them (:func:`cvdeploy.runtime.decode_image`, EXIF
orientation included), so the figures describe what the endpoint will answer. Detection runs with
a low score floor (``conf``, COCO's convention) so mAP sees the whole precision-recall curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cvdeploy.pipeline.datasets import (
    ClassificationSample,
    DetectionSample,
    EvalDataError,
    EvalDataset,
)
from cvdeploy.pipeline.metrics import classification_metrics, detection_metrics
from cvdeploy.runtime import ClassificationResult, DetectionResult, Model, PredictParams
from cvdeploy.runtime.images import decode_image

__all__ = ["class_mapping", "evaluate_model"]

_CHUNK = 32  # images decoded and inferred at a time: bounded memory on any set size


def class_mapping(dataset_names: Sequence[str], model_labels: Sequence[str]) -> np.ndarray:
    """Index ``i`` of the dataset's classes -> the model's class id, matched by name.

    Raises:
        EvalDataError: a dataset class the model does not know (listed, with the model's).
    """
    if list(dataset_names) == list(model_labels):
        return np.arange(len(model_labels), dtype=np.int64)
    lookup = {name: i for i, name in enumerate(model_labels)}
    missing = [name for name in dataset_names if name not in lookup]
    if missing:
        raise EvalDataError(
            f"the evaluation set has classes the model does not know: {', '.join(missing[:10])}"
            f"; the model's classes are: {', '.join(list(model_labels)[:20])}"
        )
    return np.array([lookup[name] for name in dataset_names], dtype=np.int64)


def evaluate_model(
    model: Model,
    dataset: EvalDataset,
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The dataset's metrics for ``model`` (see :mod:`cvdeploy.pipeline.metrics` for the keys).

    Raises:
        EvalDataError: the set's task differs from the model's, a class is unknown to the
            model, or an image cannot be decoded (named).
    """
    if dataset.task != model.task:
        raise EvalDataError(
            f"the evaluation set is for {dataset.task} but the model is a {model.task} model"
        )
    mapping = class_mapping(dataset.names, model.labels)
    if dataset.task == "classification":
        params = PredictParams(top_k=1)
    else:
        params = PredictParams(conf=conf, iou=iou, max_det=300)
    results = _predict_all(model, dataset, params, on_progress)
    if dataset.task == "classification":
        truth = [mapping[s.label] for s in dataset.samples if isinstance(s, ClassificationSample)]
        predicted = [r.class_id for r in results if isinstance(r, ClassificationResult)]
        return classification_metrics(truth, predicted, model.labels)
    samples = [s for s in dataset.samples if isinstance(s, DetectionSample)]
    detections = [r for r in results if isinstance(r, DetectionResult)]
    return detection_metrics(
        [r.boxes.astype(np.float64) for r in detections],
        [r.scores.astype(np.float64) for r in detections],
        [r.class_ids for r in detections],
        [s.boxes for s in samples],
        [mapping[s.classes] if len(s.classes) else s.classes for s in samples],
        model.labels,
    )


def _predict_all(
    model: Model,
    dataset: EvalDataset,
    params: PredictParams,
    on_progress: Callable[[int, int], None] | None,
) -> list[Any]:
    results: list[Any] = []
    total = len(dataset.samples)
    for start in range(0, total, _CHUNK):
        chunk = dataset.samples[start : start + _CHUNK]
        images = []
        for sample in chunk:
            try:
                images.append(decode_image(sample.path.read_bytes()))
            except Exception as exc:  # decode errors carry no path; add it
                raise EvalDataError(f"{sample.path}: cannot be read as an image ({exc})") from None
        results.extend(model.predict(images, params))
        if on_progress is not None:
            on_progress(min(start + _CHUNK, total), total)
    return results
