"""The seam between a model session and what its outputs mean: one Task per model kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.preprocess import Prepared, Preprocessor
from cvdeploy.runtime.results import Result

__all__ = ["Task", "TaskName"]

TaskName = Literal["detection", "classification"]


class Task(ABC):
    """Pre- and post-processing for one kind of model; stateless, so safe across threads."""

    name: ClassVar[TaskName]

    def __init__(self, preprocessor: Preprocessor, labels: Sequence[str]) -> None:
        self.preprocessor = preprocessor
        self.labels = list(labels)
        # An object array turns "ids -> names" into one fancy-indexing call per image.
        self._label_array = np.array(self.labels, dtype=object)

    def preprocess(self, image: np.ndarray) -> Prepared:
        return self.preprocessor(image)

    @abstractmethod
    def postprocess(
        self, outputs: Sequence[np.ndarray], index: int, meta: object, params: PredictParams
    ) -> Result:
        """The result for item ``index`` of a batch's raw outputs."""

    def names_for(self, class_ids: np.ndarray) -> list[str]:
        if class_ids.size == 0:
            return []
        if int(class_ids.max()) < len(self.labels) and int(class_ids.min()) >= 0:
            names: list[str] = self._label_array[class_ids].tolist()
            return names
        # A model that emits ids beyond its label list still gets a usable name.
        return [
            self.labels[i] if 0 <= i < len(self.labels) else f"class_{i}"
            for i in class_ids.tolist()
        ]
