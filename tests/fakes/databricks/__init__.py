"""A fake Databricks workspace (Model Serving REST API), independent of cvdeploy's own code.

Built from ``databricks-sdk``'s request/response dataclasses and error mapping, and serving
the real MLflow models of a registry, so cvdeploy's Databricks backend can be contract-tested
without a workspace. Nothing here imports ``cvdeploy``.
"""

from __future__ import annotations

from .server import FakeWorkspace

__all__ = ["FakeWorkspace"]
