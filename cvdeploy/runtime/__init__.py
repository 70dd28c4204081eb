"""Load a model file, pre/post-process, run it: the serving hot path.

Data flows ``bytes -> decode_image -> Model.preprocess -> (batch) -> Model.infer ->
Model.postprocess -> Result.to_dict()``; :meth:`Model.predict` chains the stages for scripts.
"""

from __future__ import annotations

from cvdeploy.runtime.images import ImageLimits, as_rgb_array, decode_image
from cvdeploy.runtime.loader import load_model
from cvdeploy.runtime.model import Model
from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.preprocess import Prepared
from cvdeploy.runtime.providers import default_intra_op_threads, select_providers
from cvdeploy.runtime.results import ClassificationResult, Detection, DetectionResult, Result

__all__ = [
    "ClassificationResult",
    "Detection",
    "DetectionResult",
    "ImageLimits",
    "Model",
    "Prepared",
    "PredictParams",
    "Result",
    "as_rgb_array",
    "decode_image",
    "default_intra_op_threads",
    "load_model",
    "select_providers",
]
