"""A real MLflow tracking server (``mlflow server``) started by a test, and its fixture.

Import the fixture into a test module (``from fakes.mlflow_server import mlflow_server``);
it is module-scoped: one server per module, killed (its whole process group) at the end.
The server needs flask, flask-cors and pandas next to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["MlflowServer", "mlflow_server"]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and local artifacts under ``root``."""

    def __init__(self, root: Path, startup_timeout_s: float = 90.0) -> None:
        self.root = root
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self.startup_s = 0.0
        self.log_path = root / "mlflow-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MlflowServer:
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        start = time.monotonic()
        with self.log_path.open("wb") as log:
            # Its own session, so closing kills uvicorn and the job runner it spawns too.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_healthy(start)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - start
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_healthy(self, start: float) -> None:
        process = self._process
        while time.monotonic() - start < self.startup_timeout_s:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"mlflow server not healthy after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # The group is the session this server was started in; children may outlive the parent.
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A running MLflow tracking server for the module; skipped if its extras are missing."""
    for module in ("flask", "flask_cors", "pandas"):
        pytest.importorskip(module, reason=f"mlflow server needs {module} (dev extra)")
    with MlflowServer(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server
