"""Helpers for the pipeline tests (tests/pipeline and the seed example): a degraded model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cvdeploy.demo import CLASSIFIER, demo_file

__all__ = ["degraded_classifier"]


def degraded_classifier(path: Path, swapped_classes: int = 4) -> Path:
    """The demo classifier with the output rows of ``swapped_classes`` classes rotated.

    Images of those classes are then predicted as another class: accuracy falls to about
    ``1 - swapped_classes / 10`` while the model stays a valid, fast, well-formed classifier,
    which is what a bad training run looks like to the pipeline.
    """
    model = onnx.load(str(demo_file(CLASSIFIER)))
    last = model.graph.node[-1]  # the final Gemm: weight (10, hidden), bias (10,)
    names = set(last.input[1:3])
    for tensor in model.graph.initializer:
        if tensor.name in names:
            array = numpy_helper.to_array(tensor).copy()
            rows = list(range(swapped_classes))
            array[rows] = array[np.roll(rows, 1)]
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, str(path))
    return path
