"""Running the platform: ``cvdeploy up`` in the foreground, or on a thread for tests and scripts.

Security defaults (DESIGN "Security and reliability defaults"): the platform binds 127.0.0.1;
binding any other interface is refused until a token exists, and then every call needs one.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from cvdeploy.config import Config
from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.platforms.local.api import create_platform_app
from cvdeploy.platforms.local.controller import LocalPlatform, PlatformOptions
from cvdeploy.platforms.local.state import PlatformState
from cvdeploy.registry import Registry
from cvdeploy.registry.paths import cvdeploy_home

__all__ = ["PlatformServer", "is_loopback", "platform_options", "run_platform"]

DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def platform_options(config_path: str | Path | None = None, **overrides: Any) -> PlatformOptions:
    """Options from the config file (discovered as everywhere else) and ``$CVDEPLOY_HOME``."""
    config = Config(config_path)
    deployment = config.deployment
    options = PlatformOptions(
        home=cvdeploy_home(),
        scaling=deployment.scaling,
        request_timeout_s=float(deployment.server.timeout),
        max_body_bytes=int(deployment.limits.max_body_bytes),
        drift=deployment.monitoring.drift,
    )
    return replace(options, **overrides)


def _build_app(
    host: str,
    options: PlatformOptions,
    *,
    access_log: bool = True,
    on_started: Any = None,
    on_stopped: Any = None,
) -> Any:
    home = options.home
    home.mkdir(parents=True, exist_ok=True)
    state = PlatformState(home / "platform.db")
    loopback = is_loopback(host)
    if not loopback and not state.tokens_exist():
        raise ConfigError(
            f"refusing to listen on {host} without tokens: anyone who can reach it could manage "
            "your endpoints. Create one with `cvdeploy tokens create --scope manage`, or listen "
            "on 127.0.0.1"
        )
    registry = Registry(options.registry_uri, home=home)
    platform = LocalPlatform(state, registry, options)
    return create_platform_app(
        platform,
        require_tokens=not loopback,
        access_log=access_log,
        on_started=on_started,
        on_stopped=on_stopped,
    )


def _uvicorn_config(app: Any, host: str, port: int, log_level: str, **ssl: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=75,
        backlog=2048,
        server_header=False,
        **{k: v for k, v in ssl.items() if v is not None},
    )


def run_platform(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    config_path: Path | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the platform in the foreground until SIGINT/SIGTERM (``cvdeploy up``).

    Raises:
        ConfigError: ``host`` is not loopback and no token exists; or one TLS file is missing.
    """
    from cvdeploy.platforms.local import daemon
    from cvdeploy.serving.logs import configure_logging

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
    configure_logging(log_level)
    options = platform_options(config_path)
    scheme = "https" if ssl_certfile else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"{scheme}://{shown}:{port}"
    app = _build_app(
        host,
        options,
        on_started=lambda: daemon.write_runtime_file(url, host, port),
        on_stopped=daemon.clear_runtime_file,
    )
    config = _uvicorn_config(
        app, host, port, log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
    )
    uvicorn.Server(config).run()


class PlatformServer:
    """The platform on a daemon thread of this process: for tests, benchmarks and notebooks.

    Args:
        options: Where state lives and how replicas run (``platform_options()`` for defaults).
        host: Interface to bind. port: 0 picks a free one (see :attr:`url` after ``start``).
    """

    def __init__(
        self,
        options: PlatformOptions,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
    ) -> None:
        self.host = host
        self.app = _build_app(host, options, access_log=False)
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, port, log_level))
        self._thread = threading.Thread(target=self._server.run, name="cvdeploy-platform",
                                        daemon=True)  # fmt: skip
        self.port = port

    @property
    def platform(self) -> LocalPlatform:
        platform: LocalPlatform = self.app.state.platform
        return platform

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> PlatformServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise CVDeployError("the platform failed to start; see the log")
            if time.monotonic() > deadline:
                raise CVDeployError(f"the platform did not start within {timeout:g} s")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> PlatformServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
