"""Per-task pre/post-processing: one module per kind of model, one ABC in ``base.py``."""

from __future__ import annotations

from cvdeploy.runtime.tasks.base import Task
from cvdeploy.runtime.tasks.classify import ClassificationTask
from cvdeploy.runtime.tasks.detect import DetectionTask

__all__ = ["ClassificationTask", "DetectionTask", "Task"]
