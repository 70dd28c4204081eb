"""Typed prediction results, held as numpy arrays and turned into JSON-ready dicts on demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

__all__ = ["ClassificationResult", "Detection", "DetectionResult", "Result"]

_BOX_DECIMALS = 2  # hundredths of a pixel: below any annotation's precision
_SCORE_DECIMALS = 5


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object; ``box`` is ``(x1, y1, x2, y2)`` in original-image pixels."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    label: str


@dataclass(frozen=True, slots=True, eq=False)
class DetectionResult:
    """Detections for one image, best score first.

    Attributes:
        boxes: ``(n, 4)`` float32 xyxy in original-image pixels, clipped to the image.
        scores: ``(n,)`` float32.
        class_ids: ``(n,)`` int64.
        labels: ``n`` class names.
        image_size: ``(width, height)`` of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def detections(self) -> list[Detection]:
        return [
            Detection((box[0], box[1], box[2], box[3]), score, class_id, label)
            for box, score, class_id, label in zip(
                self.boxes.tolist(),
                self.scores.tolist(),
                self.class_ids.tolist(),
                self.labels,
                strict=True,
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        # float64 before rounding, so float32 noise (0.30000001) does not leak into the JSON.
        boxes = np.round(self.boxes.astype(np.float64), _BOX_DECIMALS).tolist()
        scores = np.round(self.scores.astype(np.float64), _SCORE_DECIMALS).tolist()
        width, height = self.image_size
        return {
            "task": "detection",
            "image": {"width": width, "height": height},
            "detections": [
                {"box": box, "score": score, "class_id": class_id, "label": label}
                for box, score, class_id, label in zip(
                    boxes, scores, self.class_ids.tolist(), self.labels, strict=True
                )
            ],
        }


@dataclass(frozen=True, slots=True, eq=False)
class ClassificationResult:
    """The top-k classes of one image, best first; ``scores`` are probabilities."""

    class_ids: np.ndarray
    scores: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_id(self) -> int:
        return int(self.class_ids[0])

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return float(self.scores[0])

    def to_dict(self) -> dict[str, Any]:
        scores = np.round(self.scores.astype(np.float64), _SCORE_DECIMALS).tolist()
        return {
            "task": "classification",
            "classes": [
                {"class_id": class_id, "label": label, "score": score}
                for class_id, label, score in zip(
                    self.class_ids.tolist(), self.labels, scores, strict=True
                )
            ],
        }


Result: TypeAlias = DetectionResult | ClassificationResult
