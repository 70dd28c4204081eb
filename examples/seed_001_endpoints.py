"""Seed 001's "Endpoint Management" snippet, with only the import and the workspace changed.

With no ``CVDEPLOY_WORKSPACE_URL`` the snippet runs on the embedded local platform, which
``ModelServer`` starts on demand as a daemon (stop it with ``cvdeploy down``); with the URL of a
running ``cvdeploy up`` it runs there; with ``CVDEPLOY_PLATFORM=databricks`` and a workspace URL,
on Databricks Model Serving. The seed assumes a registered ``cv_model``: the set-up lines
register the demo digits classifier under that name (with its evaluation set, which
``seed_001_pipeline.py`` uses) when the registry has none.

    python examples/seed_001_endpoints.py
"""

import os

from cvdeploy import ModelServer
from cvdeploy.demo import CLASSIFIER, demo_file, eval_set
from cvdeploy.registry import Registry, RegistryNotFoundError

# -- set-up (not in the seed): a registered model to serve --------------------------------------
registry = Registry()
try:
    registry.get_version("cv_model", "1")
except RegistryNotFoundError:
    registry.register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
workspace_url = os.environ.get("CVDEPLOY_WORKSPACE_URL")  # None: the embedded platform

# -- the seed's snippet --------------------------------------------------------------------------
# fmt: off
# Initialize server
server = ModelServer(
    workspace_url=workspace_url,
    token=os.environ.get("CVDEPLOY_TOKEN", "your-token"),
    model_name="cv_model"
)

# Create endpoint
endpoint_name = server.create_endpoint(
    endpoint_name="cv_endpoint",
    instance_type="Standard_DS3_v2",
    min_instances=1,
    max_instances=5
)

# Monitor endpoint
metrics = server.monitor_endpoint(endpoint_name)
print("Endpoint metrics:", metrics)
# fmt: on
