"""Evaluation metrics of the deployment pipeline, in plain numpy.

``classification_metrics`` gives scikit-learn's figures and ``detection_metrics`` pycocotools'
COCO mAP, without either library at run time: the evaluation stage runs in a serving install,
and the tests pin both functions to the reference implementations.
"""

from __future__ import annotations

from cvdeploy.pipeline.metrics.classification import classification_metrics
from cvdeploy.pipeline.metrics.detection import box_iou, detection_metrics

__all__ = ["box_iou", "classification_metrics", "detection_metrics"]
