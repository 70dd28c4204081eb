"""Ray Serve backend: endpoints as Serve applications on a Ray cluster (extra ``ray``).

Importing this package does not import Ray; :class:`RayPlatform` does, and says which extra
to install when Ray is missing.
"""

from __future__ import annotations

from cvdeploy.platforms.ray.platform import RayPlatform

__all__ = ["RayPlatform"]
