"""The local platform as a background daemon, found through a runtime file (like a Ray head).

A running platform announces itself in ``$CVDEPLOY_HOME/platform.json``::

    {"pid": 4242, "url": "http://127.0.0.1:8080", "host": "127.0.0.1", "port": 8080,
     "started_at": 1763900000.0, "version": "0.1.0"}

The file alone proves nothing (the process may have died, or its pid been reused), so
:func:`discover` trusts it only when that pid is alive *and* ``GET {url}/health`` answers with
the same pid. :func:`start_detached` spawns ``cvdeploy up`` in its own session under a file lock,
so two scripts starting at once share one daemon; :func:`stop` ends it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cvdeploy._version import __version__
from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.registry.paths import cvdeploy_home

__all__ = [
    "DEFAULT_URL",
    "clear_runtime_file",
    "default_log_path",
    "discover",
    "ensure_running",
    "platform_url",
    "read_runtime_file",
    "runtime_file",
    "start_detached",
    "stop",
    "write_runtime_file",
]

DEFAULT_URL = "http://127.0.0.1:8080"

# Popen objects of daemons this process started: holding them keeps Python from warning that
# a child "is still running" when the object is collected, which is the whole point here.
_spawned: list[subprocess.Popen[bytes]] = []


def runtime_file() -> Path:
    """``$CVDEPLOY_HOME/platform.json``."""
    return cvdeploy_home() / "platform.json"


def default_log_path() -> Path:
    """Where a detached platform writes its output: ``$CVDEPLOY_HOME/logs/platform.log``."""
    return cvdeploy_home() / "logs" / "platform.log"


def write_runtime_file(url: str, host: str, port: int) -> None:
    """Announce this process as the platform serving ``url`` (atomic, mode 0600)."""
    path = runtime_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "pid": os.getpid(),
        "url": url,
        "host": host,
        "port": port,
        "started_at": time.time(),
        "version": __version__,
    }
    # mkstemp creates the file 0600; os.replace makes readers see the old or the new file,
    # never half of one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".platform.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_runtime_file() -> dict[str, Any] | None:
    """The runtime file's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(runtime_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear_runtime_file() -> None:
    """Remove the runtime file if this process wrote it (a newer platform's file stays)."""
    data = read_runtime_file()
    if data is not None and data.get("pid") == os.getpid():
        runtime_file().unlink(missing_ok=True)


def discover(timeout: float = 1.0) -> str | None:
    """The URL of the running platform, or None; removes a runtime file whose owner is gone.

    Args:
        timeout: Seconds to wait for ``/health``.
    """
    data = read_runtime_file()
    if data is None:
        return None
    pid, url = data.get("pid"), data.get("url")
    if not isinstance(pid, int) or not isinstance(url, str) or not _owner_alive(data):
        _remove_if_pid(pid)
        return None
    return url if _health_pid(url, timeout) == pid else None


def platform_url(explicit: str | None = None) -> str:
    """The platform to talk to: ``explicit``, ``$CVDEPLOY_URL``, a discovered one, the default."""
    chosen = explicit or os.environ.get("CVDEPLOY_URL") or discover() or DEFAULT_URL
    return chosen.rstrip("/")


def start_detached(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    config_path: Path | None = None,
    timeout: float = 60.0,
    log_path: Path | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
) -> str:
    """Start ``cvdeploy up`` in the background unless a platform runs; return its URL.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 is refused, as the URL must be known before it starts.
        config_path: Config YAML passed as ``--config``.
        timeout: Seconds to wait for ``/health`` to answer.
        log_path: File the daemon's output is appended to (default :func:`default_log_path`).
        ssl_certfile: TLS certificate passed as ``--ssl-certfile``.
        ssl_keyfile: TLS key passed as ``--ssl-keyfile``.
        log_level: Passed as ``--log-level``.

    Raises:
        ConfigError: ``port`` is 0.
        CVDeployError: the daemon exited or did not answer in time (the message has the
            last lines of its log).
    """
    if port == 0:
        raise ConfigError(
            "--port 0 cannot be used with --detach: clients find the platform by a URL known "
            "before it starts; give a free port such as 8080"
        )
    log = log_path or default_log_path()
    with _platform_lock():
        # Checked under the lock: a second caller waits here and then finds the first daemon.
        found = discover()
        if found is not None:
            return found
        command = [sys.executable, "-m", "cvdeploy.cli", "up", "--host", host, "--port", str(port)]
        if config_path is not None:
            command += ["--config", str(config_path)]
        if ssl_certfile is not None:
            command += ["--ssl-certfile", ssl_certfile]
        if ssl_keyfile is not None:
            command += ["--ssl-keyfile", ssl_keyfile]
        command += ["--log-level", log_level]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # A new session: Ctrl-C in the starting shell or notebook must not reach the daemon.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        _spawned.append(process)
        return _wait_until_up(process, log, timeout)


def ensure_running(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    config_path: Path | None = None,
    timeout: float = 60.0,
    log_path: Path | None = None,
) -> str:
    """The running platform's URL, starting a daemon first if none runs."""
    return discover() or start_detached(
        host, port, config_path=config_path, timeout=timeout, log_path=log_path
    )


def stop(timeout: float = 30.0) -> bool:
    """Stop the running platform: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns:
        True if a platform was running, False if there was nothing to stop.

    Raises:
        CVDeployError: the platform runs in this very process, or belongs to another user.
    """
    data = read_runtime_file()
    if data is None:
        return False
    pid = data.get("pid")
    if not isinstance(pid, int) or not _owner_alive(data):
        _remove_if_pid(pid)
        return False
    if pid == os.getpid():
        raise CVDeployError("the platform runs in this process; stop it there (Ctrl-C)")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _remove_if_pid(pid)
        return False
    except PermissionError:
        raise CVDeployError(
            f"the platform (pid {pid}) belongs to another user; stop it as that user"
        ) from None
    if not _wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, 5.0)
    # A killed daemon cannot clear its own file.
    _remove_if_pid(pid)
    return True


# -- internals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _platform_lock() -> Iterator[None]:
    path = cvdeploy_home() / "platform.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _wait_until_up(process: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise CVDeployError(
                f"the platform exited with code {code} while starting; "
                f"the end of {log}:\n{_tail(log)}"
            )
        data = read_runtime_file()
        if data is not None and data.get("pid") == process.pid:
            url = discover()
            if url is not None:
                return url
        if time.monotonic() >= deadline:
            # A daemon that never answered is broken; leaving it would hold the port.
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5.0)
            raise CVDeployError(
                f"the platform did not answer /health within {timeout:g}s and was stopped; "
                f"the end of {log}:\n{_tail(log)}"
            )
        time.sleep(0.2)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _remove_if_pid(pid: object) -> None:
    # Re-read: a platform that started meanwhile has written a new file that must stay.
    data = read_runtime_file()
    if data is None or data.get("pid") == pid:
        runtime_file().unlink(missing_ok=True)


def _health_pid(url: str, timeout: float) -> int | None:
    """The pid ``GET {url}/health`` reports, or None when it does not answer 200."""
    # No proxies: the platform is on this machine, and an HTTP(S)_PROXY must not intercept it.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        # The probe sends no secret and trusts only the pid it gets back, so a self-signed
        # certificate (``up --ssl-certfile``) must not hide a running platform.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            if response.status != 200:
                return None
            body = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    pid = body.get("pid") if isinstance(body, dict) else None
    return pid if isinstance(pid, int) else None


def _owner_alive(data: dict[str, Any]) -> bool:
    """Whether the process that wrote ``data`` still runs (not merely a process with its pid)."""
    pid = data.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    started_at = data.get("started_at")
    start = _process_start_time(pid)
    # The platform writes the file after it starts, so a process that started later reuses
    # the pid of a dead platform. Slack covers /proc/stat's one-second boot time.
    return not (
        isinstance(started_at, int | float) and start is not None and start > started_at + 2
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    # A child of ours that exited stays a zombie until reaped, and kill(0) still succeeds.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        reaped = 0
    if reaped == pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _process_start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), on Linux; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        # Fields after the command name (which may hold spaces); starttime is field 22.
        ticks = int(stat.rsplit(")", 1)[-1].split()[19])
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
