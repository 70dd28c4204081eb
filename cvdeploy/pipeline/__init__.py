"""The deployment pipeline: security, compatibility, resources, performance, evaluation, gates
and a gradual rollout with automatic rollback (seed 001's ``DeploymentPipeline``).

Importing this package is cheap: the stages import ONNX, MLflow and the platform client when a
pipeline runs them.
"""

from __future__ import annotations

from cvdeploy.pipeline.deploy import DeploymentRolledBackError
from cvdeploy.pipeline.pipeline import STATUSES, DeploymentPipeline
from cvdeploy.pipeline.stages import Check, StageResult

__all__ = ["STATUSES", "Check", "DeploymentPipeline", "DeploymentRolledBackError", "StageResult"]
