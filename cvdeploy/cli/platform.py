"""``cvdeploy up`` and ``down``: the local platform's lifecycle.

``up`` serves the platform in the foreground (or as a daemon with ``--detach``); ``down`` stops
it. The ``endpoints`` commands that talk to it are in :mod:`cvdeploy.cli.endpoints`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cvdeploy.cli.output import console, err_console, fail
from cvdeploy.errors import ConfigError, CVDeployError

__all__ = ["down", "up"]


def up(
    host: Annotated[str, typer.Option(help="Interface to bind (non-loopback needs tokens).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the control plane and gateway.")] = 8080,
    config: Annotated[Path | None, typer.Option(help="Platform config YAML.")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; stop with `down`.")
    ] = False,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    timeout: Annotated[float, typer.Option(help="Seconds --detach waits for it to start.")] = 60,
) -> None:
    """Start the platform: the serving-endpoints API and the gateway on one URL."""
    from cvdeploy.platforms.local import daemon

    if detach:
        try:
            url = daemon.start_detached(
                host,
                port,
                config_path=config,
                timeout=timeout,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                log_level=log_level,
            )
        except CVDeployError as exc:
            raise fail(exc) from None
        log = escape(str(daemon.default_log_path()))
        err_console.print(
            f"platform running at [bold]{escape(url)}[/]; log: {log}; stop it with `cvdeploy down`",
            soft_wrap=True,
        )
        # The URL alone on stdout, for `URL=$(cvdeploy up --detach)`.
        sys.stdout.write(url + "\n")
        return
    from cvdeploy.platforms.local.server import run_platform

    running = daemon.discover()
    if running is not None:
        # One platform per $CVDEPLOY_HOME: a second would share its state and runtime file.
        raise fail(
            ConfigError(f"a platform is already running at {running}; stop it with `cvdeploy down`")
        )
    try:
        run_platform(
            host,
            port,
            config_path=config,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            log_level=log_level,
        )
    except CVDeployError as exc:
        raise fail(exc) from None


def down(
    timeout: Annotated[float, typer.Option(help="Seconds before SIGTERM becomes SIGKILL.")] = 30,
) -> None:
    """Stop the platform started by `cvdeploy up` (in the background or another terminal)."""
    from cvdeploy.platforms.local import daemon

    running = daemon.read_runtime_file() or {}
    try:
        stopped = daemon.stop(timeout)
    except CVDeployError as exc:
        raise fail(exc) from None
    if stopped:
        console.print(f"stopped the platform at {escape(str(running.get('url', '?')))}")
    else:
        console.print("no platform is running")
