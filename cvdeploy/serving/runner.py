"""Running the serving app under uvicorn: blocking, in a background thread, or as N workers.

* :func:`serve_forever` is what ``cvdeploy serve`` calls: one process, or ``workers`` uvicorn
  worker processes sharing the port (uvicorn binds once and forks), which is how the seed's
  ``workers: 4`` is honoured.
* :class:`ThreadedServer` runs one uvicorn server on a thread of the calling process, so an
  in-process ``ModelServer.start()`` returns at once and shares the model it already loaded.
* :class:`ProcessServer` starts ``serve_forever`` in a child process (for ``workers > 1`` from
  ``ModelServer``) and stops it with SIGTERM, which uvicorn turns into a graceful drain.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import uvicorn

from cvdeploy.errors import CVDeployError, ModelLoadError
from cvdeploy.monitoring.shared import ENV_MONITORING_DIR
from cvdeploy.serving.engine import InferenceEngine
from cvdeploy.serving.settings import SETTINGS_ENV, ServeSettings

__all__ = ["ProcessServer", "ThreadedServer", "serve_forever", "uvicorn_options", "wait_ready"]


def uvicorn_options(settings: ServeSettings, log_level: str = "info") -> dict[str, Any]:
    """uvicorn settings tuned for serving: uvloop + httptools when present, graceful drain."""
    return {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "log_config": None,
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": max(1, int(settings.timeout)),
        "timeout_keep_alive": 75,  # longer than common load-balancer idle timeouts (60 s)
        "backlog": 2048,
        "server_header": False,
    }


def app_from_env() -> Any:
    """uvicorn factory for worker processes: settings come from ``CVDEPLOY_SERVE_SETTINGS``."""
    from cvdeploy.serving.app import create_app
    from cvdeploy.serving.logs import configure_logging

    settings = ServeSettings.from_env()
    configure_logging(os.environ.get("CVDEPLOY_LOG_LEVEL", "info"))
    # Workers share one listening socket: one still loading must not take connections.
    return create_app(settings, load_in_background=False)


def serve_forever(settings: ServeSettings, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM, in this process (workers == 1) or in worker processes."""
    from cvdeploy.serving.app import create_app
    from cvdeploy.serving.logs import configure_logging

    configure_logging(log_level)
    options = uvicorn_options(settings, log_level)
    # Load once before binding: a bad model file ends the command with its error instead of
    # leaving a server that is never ready. One worker keeps this engine; several workers
    # each load their own copy after the fork.
    engine = InferenceEngine(settings)
    engine.load()
    if settings.workers <= 1:
        uvicorn.run(create_app(engine=engine), host=host, port=port, **options)
        return
    del engine
    os.environ[SETTINGS_ENV] = settings.to_json()
    os.environ["CVDEPLOY_LOG_LEVEL"] = log_level
    with (
        tempfile.TemporaryDirectory(prefix="cvdeploy-prom-") as prom_dir,
        tempfile.TemporaryDirectory(prefix="cvdeploy-monitoring-") as monitoring_dir,
    ):
        # Every worker writes its samples here; /metrics on any worker sums them all, and
        # /monitoring merges every worker's figures.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
        os.environ[ENV_MONITORING_DIR] = monitoring_dir
        uvicorn.run(
            "cvdeploy.serving.runner:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=settings.workers,
            **options,
        )


def wait_ready(url: str, timeout: float, alive: Any = None) -> None:
    """Poll ``/v2/health/ready`` until it answers 200, or raise with the reason."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise ModelLoadError("the server process exited during start-up; see its log")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/v2/health/ready").status_code == 200:
                    return
            time.sleep(0.05)
    raise CVDeployError(f"the server at {url} was not ready after {timeout:g} s")


class ThreadedServer:
    """One uvicorn server on a daemon thread of this process."""

    def __init__(
        self,
        settings: ServeSettings,
        engine: InferenceEngine,
        host: str,
        port: int,
        access_log: bool = True,
    ) -> None:
        from cvdeploy.serving.app import create_app

        self.engine = engine
        app = create_app(engine=engine, access_log=access_log)
        config = uvicorn.Config(app, host=host, port=port, **uvicorn_options(settings))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="cvdeploy-server", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # surfaced to start() instead of dying silently
            self._error = exc

    def start(self, timeout: float) -> int:
        """Start serving; returns the bound port once the app is ready."""
        self._thread.start()
        try:
            return self._wait_started(timeout)
        except BaseException:
            self.stop(timeout=5)  # never leave a half-started server holding the port
            raise

    def _wait_started(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or self._server.should_exit:
                reason = (
                    "see the log (port in use?)"
                    if self._error is None or isinstance(self._error, SystemExit)
                    else str(self._error)
                )
                raise CVDeployError(f"the server failed to start: {reason}")
            if time.monotonic() > deadline:
                raise CVDeployError(f"the server did not start within {timeout:g} s")
            time.sleep(0.01)
        while not self.engine.ready:
            if self.engine.load_error is not None:
                raise self.engine.load_error
            if time.monotonic() > deadline:
                raise CVDeployError(f"the model was not ready within {timeout:g} s")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else 0

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


class ProcessServer:
    """``serve_forever`` in a child process, for several workers."""

    def __init__(self, settings: ServeSettings, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> int:
        env = dict(os.environ)
        env[SETTINGS_ENV] = self.settings.to_json()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cvdeploy.cli",
                "serve-settings",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            env=env,
        )
        process = self._process
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        try:
            wait_ready(f"http://{host}:{self.port}", timeout, alive=lambda: process.poll() is None)
        except BaseException:
            self.stop()
            raise
        return self.port

    def stop(self, timeout: float = 30.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
