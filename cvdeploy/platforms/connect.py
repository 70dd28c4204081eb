"""Pick the platform a ``workspace_url`` (or an explicit ``platform=``) names.

===================  =============================================================
``platform``         where endpoints run
===================  =============================================================
None / ``"auto"``    decided by the URL: none -> the embedded local platform; a
                     Databricks workspace host -> ``databricks``; ``ray://`` ->
                     ``ray``; any other ``http(s)://`` -> a cvdeploy control plane
``"local"``          the embedded platform (started on demand) or the ``cvdeploy up``
                     at the URL given; ``"cvdeploy"`` is the same
``"databricks"``     Databricks Model Serving through ``databricks-sdk`` (extra
                     ``databricks``); explicit, it also takes a plain
                     ``http://127.0.0.1:PORT``, which is how tests aim it at a fake
``"ray"``            Ray Serve (extra ``ray``): ``ray://host:10001``, or none for a local
                     cluster
===================  =============================================================

``$CVDEPLOY_PLATFORM`` sets the default of ``platform`` (so a script written for one platform
runs unchanged on another).
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlparse

from cvdeploy.errors import ConfigError, NotAvailableError
from cvdeploy.platforms.base import Platform

__all__ = [
    "PLATFORMS",
    "PLATFORM_ENV",
    "PlatformName",
    "connect",
    "is_databricks_host",
    "resolve_platform",
]

PlatformName = Literal["local", "databricks", "ray"]
PLATFORMS: tuple[str, ...] = ("auto", "local", "cvdeploy", "databricks", "ray")
PLATFORM_ENV = "CVDEPLOY_PLATFORM"
_DATABRICKS_SUFFIXES = (".cloud.databricks.com", ".azuredatabricks.net", ".gcp.databricks.com")


def is_databricks_host(url: str) -> bool:
    """Whether ``url`` is a Databricks workspace (by its host name)."""
    host = urlparse(url if "://" in url else f"https://{url}").hostname or ""
    return host.endswith(_DATABRICKS_SUFFIXES)


def resolve_platform(url: str | None, platform: str | None = None) -> PlatformName:
    """The platform ``url`` and ``platform`` name together.

    Raises:
        ConfigError: an unknown platform name, or one that needs a URL it was not given.
    """
    platform = platform or os.environ.get(PLATFORM_ENV) or None
    name = (platform or "auto").strip().lower()
    if name not in PLATFORMS:
        raise ConfigError(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    if name == "cvdeploy":
        name = "local"
    if name == "auto":
        if url is None:
            return "local"
        if url.startswith("ray://"):
            return "ray"
        return "databricks" if is_databricks_host(url) else "local"
    if name == "databricks" and not url:
        raise ConfigError(
            "platform='databricks' needs workspace_url (https://<workspace>.cloud.databricks.com)"
        )
    return name  # type: ignore[return-value]


def local_url(url: str | None) -> str:
    """The base URL of a cvdeploy control plane: ``url``, or the local daemon (started)."""
    if url is not None:
        return url
    from cvdeploy.platforms.local.daemon import ensure_running

    # CVDEPLOY_PORT moves the embedded platform off 8080 (tests, busy machines).
    return ensure_running(port=int(os.environ.get("CVDEPLOY_PORT", "8080")))


def connect(
    url: str | None,
    token: str | None = None,
    *,
    platform: str | None = None,
    timeout: float = 60.0,
) -> Platform:
    """A connected :class:`Platform` for ``url`` (see the table above); close it when done.

    Raises:
        ConfigError: an unknown platform name.
        NotAvailableError: the platform's extra is not installed, or the platform is not in
            this build; the message says what to install.
    """
    kind = resolve_platform(url, platform)
    if kind == "databricks" and url:
        try:
            from cvdeploy.platforms.databricks import DatabricksPlatform
        except ImportError as exc:
            raise NotAvailableError(
                f"the Databricks backend needs databricks-sdk ({exc}); "
                "pip install 'cvdeploy[databricks]'"
            ) from None
        return DatabricksPlatform(url, token, timeout=timeout)
    if kind == "ray":
        from cvdeploy.platforms.ray import RayPlatform

        return RayPlatform(url or None, token, timeout=timeout)
    from cvdeploy.platforms.client import PlatformClient

    return PlatformClient(local_url(url), token, timeout=timeout)
