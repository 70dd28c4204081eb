"""Registry errors, rooted in :class:`cvdeploy.errors.CVDeployError`::

    CVDeployError
    └── RegistryError (409)             the store holds something unusable (digest mismatch)
        ├── RegistryNotFoundError (404) unknown model, version or alias
        └── UnsafePathError (400)       an artifact path that would leave the store

They live here rather than in :mod:`cvdeploy.errors` because only the registry raises them and
the core error module must not grow with each layer.
"""

from __future__ import annotations

from cvdeploy.errors import CVDeployError

__all__ = ["RegistryError", "RegistryNotFoundError", "UnsafePathError"]


class RegistryError(CVDeployError):
    status_code = 409
    error_code = "INVALID_STATE"


class RegistryNotFoundError(RegistryError):
    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class UnsafePathError(RegistryError):
    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"
