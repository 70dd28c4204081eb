"""The model registry: versions, aliases and verified artifacts on the MLflow Model Registry.

State lives in ``$CVDEPLOY_HOME`` (default ``~/.cvdeploy``): ``mlflow.db`` (SQLite) and
``artifacts/``; any MLflow URI may be passed instead. Importing this package does not import
MLflow; the first registry call does.
"""

from __future__ import annotations

from cvdeploy.registry.card import ModelCard
from cvdeploy.registry.errors import RegistryError, RegistryNotFoundError, UnsafePathError
from cvdeploy.registry.paths import default_registry_uri, safe_join
from cvdeploy.registry.records import ModelVersion, RegisteredModel
from cvdeploy.registry.store import ALIASES, Registry

__all__ = [
    "ALIASES",
    "ModelCard",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "RegistryError",
    "RegistryNotFoundError",
    "UnsafePathError",
    "default_registry_uri",
    "safe_join",
]
