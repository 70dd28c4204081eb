"""Databricks Model Serving backend (extra ``databricks``: ``pip install 'cvdeploy[databricks]'``).

:class:`DatabricksPlatform` implements :class:`~cvdeploy.platforms.base.Platform` over
``databricks-sdk``; :func:`cvdeploy.platforms.connect.connect` picks it for a Databricks
workspace URL or ``platform="databricks"``. The SDK is imported when the platform first talks
to the workspace, never at package import. ``docs/databricks.md`` maps the seed's arguments.
"""

from __future__ import annotations

from cvdeploy.platforms.databricks.client import DatabricksPlatform

__all__ = ["DatabricksPlatform"]
