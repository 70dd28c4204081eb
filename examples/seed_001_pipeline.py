"""Seed 001's "Basic Deployment" snippet, with only the import and the workspace changed.

The pipeline takes the latest version of ``cv_model`` (or the one the ``candidate`` alias
names) through security, compatibility, resource and performance checks, evaluates it, applies
the seed's thresholds and deploys it to ``cv_model-endpoint``: created on the first run, rolled
out gradually (with automatic rollback) once a champion serves there. With no
``CVDEPLOY_WORKSPACE_URL`` it runs on the embedded local platform (``cvdeploy down`` stops it).

The set-up lines register the demo digits classifier as ``cv_model`` with its evaluation set
(the held-out digits that ship with cvdeploy) when the registry has no such model.

    python examples/seed_001_pipeline.py
"""

import os

from cvdeploy import DeploymentPipeline
from cvdeploy.demo import CLASSIFIER, demo_file, eval_set
from cvdeploy.registry import Registry, RegistryNotFoundError

# -- set-up (not in the seed): a registered model with its evaluation data -----------------------
registry = Registry()
try:
    registry.get_version("cv_model", "1")
except RegistryNotFoundError:
    registry.register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
workspace_url = os.environ.get("CVDEPLOY_WORKSPACE_URL")  # None: the embedded platform

# -- the seed's snippet --------------------------------------------------------------------------
# fmt: off
# Initialize pipeline
pipeline = DeploymentPipeline(
    workspace_url=workspace_url,
    token=os.environ.get("CVDEPLOY_TOKEN", "your-token"),
    model_name="cv_model",
    experiment_name="cv_experiment"
)

# Define metrics threshold
metrics_threshold = {
    "accuracy": 0.9,
    "precision": 0.9,
    "recall": 0.9,
    "f1": 0.9
}

# Run deployment pipeline
result = pipeline.run_pipeline(metrics_threshold)
# fmt: on

# -- what happened (not in the seed) -------------------------------------------------------------
print(f"{result['status']}: cv_model version {result['model_version']} -> {result['endpoint']}")
for gate in result["gates"]:
    print(f"  {gate['name']}: {gate['detail']}")
for reason in result["reasons"]:
    print(f"  reason: {reason}")
print(f"report: {result['report']}/report.html")
