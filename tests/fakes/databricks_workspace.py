"""``from fakes.databricks_workspace import FakeWorkspace``: the fake Databricks workspace.

The implementation lives in the ``fakes.databricks`` package (one module per concept).
"""

from __future__ import annotations

from fakes.databricks import FakeWorkspace

__all__ = ["FakeWorkspace"]
