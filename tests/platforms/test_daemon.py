"""The platform daemon: runtime file, discovery, detached start and stop.

The real platform is not started here; a fake one (``http.server`` answering ``/health`` with
its pid, writing the runtime file through the real helpers) stands in for it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import cvdeploy
from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.platforms.local import daemon

# Stands in for ``python -m cvdeploy.cli up --host H --port P``: binds, announces itself with
# the real write_runtime_file, and clears it on SIGTERM as run_platform does.
FAKE_PLATFORM = """
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from cvdeploy.platforms.local.daemon import clear_runtime_file, write_runtime_file

args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def bye(*_):
    raise SystemExit(0)

server = HTTPServer((host, port), Health)
signal.signal(signal.SIGTERM, bye)
write_runtime_file(f"http://{host}:{port}", host, port)
print("fake platform up", flush=True)
try:
    server.serve_forever()
finally:
    clear_runtime_file()
"""


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CVDEPLOY_HOME", str(tmp_path))
    monkeypatch.delenv("CVDEPLOY_URL", raising=False)
    yield tmp_path
    # Whatever a test started must not outlive it.
    for process in daemon._spawned:
        if process.poll() is None:
            process.kill()
        process.wait()
    daemon._spawned.clear()


class FakeHealth:
    """A real HTTP server in a thread whose ``/health`` reports ``pid``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"status": "ok", "pid": owner.pid}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def health() -> Iterator[FakeHealth]:
    fake = FakeHealth()
    yield fake
    fake.close()


def write_for(pid: int, url: str = "http://127.0.0.1:9", started_at: float | None = None) -> None:
    payload = {
        "pid": pid,
        "url": url,
        "host": "127.0.0.1",
        "port": 9,
        "started_at": time.time() if started_at is None else started_at,
        "version": cvdeploy.__version__,
    }
    daemon.runtime_file().write_text(json.dumps(payload))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def sleeper(*, ignore_term: bool = False) -> subprocess.Popen[str]:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    # Only once it printed is the SIGTERM handler in place.
    assert process.stdout.readline().strip() == "ready"
    return process


def reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


# -- runtime file --------------------------------------------------------------------------------


def test_runtime_file_round_trip_is_private(home: Path):
    daemon.write_runtime_file("http://127.0.0.1:8080", "127.0.0.1", 8080)
    data = daemon.read_runtime_file()
    assert data is not None
    assert data["pid"] == os.getpid()
    assert (data["url"], data["host"], data["port"]) == ("http://127.0.0.1:8080", "127.0.0.1", 8080)
    assert data["version"] == cvdeploy.__version__
    assert abs(data["started_at"] - time.time()) < 60
    assert stat.S_IMODE((home / "platform.json").stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir()] == ["platform.json"]


def test_rewriting_the_runtime_file_replaces_it(home: Path):
    daemon.write_runtime_file("http://127.0.0.1:8080", "127.0.0.1", 8080)
    daemon.write_runtime_file("http://127.0.0.1:9090", "127.0.0.1", 9090)
    data = daemon.read_runtime_file()
    assert data is not None
    assert data["port"] == 9090
    assert [p.name for p in home.iterdir()] == ["platform.json"]


def test_clear_runtime_file_removes_only_our_own(home: Path):
    write_for(os.getpid() + 1)
    daemon.clear_runtime_file()
    assert (home / "platform.json").exists()
    daemon.write_runtime_file("http://127.0.0.1:8080", "127.0.0.1", 8080)
    daemon.clear_runtime_file()
    assert not (home / "platform.json").exists()
    daemon.clear_runtime_file()  # nothing there: no error


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_unreadable_runtime_file_reads_as_none(home: Path, content: str):
    (home / "platform.json").write_text(content)
    assert daemon.read_runtime_file() is None
    assert daemon.discover() is None


# -- discover ------------------------------------------------------------------------------------


def test_discover_without_runtime_file_is_none():
    assert daemon.discover() is None


def test_discover_finds_the_platform_whose_health_reports_its_pid(health: FakeHealth):
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    assert daemon.discover() == health.url


def test_discover_removes_the_file_of_a_dead_pid(home: Path, health: FakeHealth):
    write_for(dead_pid(), health.url)
    assert daemon.discover() is None
    assert not (home / "platform.json").exists()


def test_discover_ignores_a_server_reporting_another_pid(home: Path, health: FakeHealth):
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    health.pid = os.getpid() + 1
    assert daemon.discover() is None
    assert (home / "platform.json").exists()


def test_discover_ignores_a_health_error_but_keeps_the_file(home: Path, health: FakeHealth):
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    health.status = 503
    assert daemon.discover() is None
    assert (home / "platform.json").exists()


def test_discover_with_nothing_listening_keeps_the_file_of_a_live_pid(home: Path):
    health = FakeHealth()
    health.close()  # the port is now closed
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    assert daemon.discover(timeout=0.5) is None
    assert (home / "platform.json").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_reused_pid_is_not_the_platform(home: Path):
    # The file predates the live process that now has its pid: the platform is gone.
    process = sleeper()
    try:
        write_for(process.pid, started_at=time.time() - 3600)
        assert daemon.discover() is None
        assert not (home / "platform.json").exists()
        write_for(process.pid, started_at=time.time() - 3600)
        assert daemon.stop() is False
        assert process.poll() is None
    finally:
        reap(process)


# -- platform_url --------------------------------------------------------------------------------


def test_platform_url_precedence(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(daemon, "discover", lambda timeout=1.0: None)
    assert daemon.platform_url() == daemon.DEFAULT_URL == "http://127.0.0.1:8080"
    monkeypatch.setattr(daemon, "discover", lambda timeout=1.0: "http://127.0.0.1:7000")
    assert daemon.platform_url() == "http://127.0.0.1:7000"
    monkeypatch.setenv("CVDEPLOY_URL", "http://env:1/")
    assert daemon.platform_url() == "http://env:1"
    assert daemon.platform_url("https://explicit:2") == "https://explicit:2"


def test_platform_url_uses_a_discovered_platform(health: FakeHealth):
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    assert daemon.platform_url() == health.url


# -- stop ----------------------------------------------------------------------------------------


def test_stop_with_nothing_running_is_false():
    assert daemon.stop() is False


def test_stop_of_a_dead_pid_is_false_and_removes_the_file(home: Path):
    write_for(dead_pid())
    assert daemon.stop() is False
    assert not (home / "platform.json").exists()


def test_stop_terminates_the_platform_and_removes_the_file(home: Path):
    process = sleeper()
    try:
        write_for(process.pid)
        assert daemon.stop(timeout=10) is True
        assert process.poll() is not None
        assert not (home / "platform.json").exists()
    finally:
        reap(process)


def test_stop_kills_a_platform_that_ignores_sigterm(home: Path):
    process = sleeper(ignore_term=True)
    try:
        write_for(process.pid)
        assert daemon.stop(timeout=0.3) is True
        assert process.poll() is not None
        assert not (home / "platform.json").exists()
    finally:
        reap(process)


def test_stop_refuses_to_signal_this_process(home: Path):
    daemon.write_runtime_file("http://127.0.0.1:9", "127.0.0.1", 9)
    with pytest.raises(CVDeployError, match="this process"):
        daemon.stop()


# -- start_detached ------------------------------------------------------------------------------


def free_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Run FAKE_PLATFORM instead of ``cvdeploy up``; records the commands start_detached built."""
    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def fake_popen(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        commands.append(command)
        assert kwargs["start_new_session"] is True
        assert kwargs["stdin"] is subprocess.DEVNULL
        return real_popen([sys.executable, "-c", FAKE_PLATFORM, *command[3:]], **kwargs)

    monkeypatch.setattr(daemon.subprocess, "Popen", fake_popen)
    return commands


def test_start_detached_refuses_port_zero():
    with pytest.raises(ConfigError, match="--port 0"):
        daemon.start_detached(port=0)


def test_start_detached_returns_a_running_platform_without_spawning(
    health: FakeHealth, spawned: list[list[str]]
):
    daemon.write_runtime_file(health.url, "127.0.0.1", health.port)
    assert daemon.start_detached(port=health.port) == health.url
    assert daemon.ensure_running() == health.url
    assert spawned == []


def test_start_detached_spawns_waits_and_stop_ends_it(home: Path, spawned: list[list[str]]):
    port = free_port()
    url = daemon.start_detached(port=port, config_path=Path("cfg.yaml"), timeout=30)
    assert url == f"http://127.0.0.1:{port}"
    up = [sys.executable, "-m", "cvdeploy.cli", "up", "--host", "127.0.0.1", "--port", str(port)]
    assert spawned == [[*up, "--config", "cfg.yaml", "--log-level", "info"]]
    assert daemon.discover() == url
    assert "fake platform up" in (home / "logs" / "platform.log").read_text()
    assert daemon.stop(timeout=10) is True
    assert daemon.discover() is None
    assert not (home / "platform.json").exists()


def test_concurrent_starts_share_one_daemon(spawned: list[list[str]]):
    port = free_port()
    urls: list[str] = []

    def start() -> None:
        urls.append(daemon.ensure_running(port=port, timeout=30))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert urls == [f"http://127.0.0.1:{port}"] * 3
    assert len(spawned) == 1
    assert daemon.stop(timeout=10) is True


def test_start_detached_reports_the_log_of_a_daemon_that_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real_popen = subprocess.Popen
    crash = "import sys; print('port 8080 is taken'); sys.exit(3)"

    def fake_popen(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return real_popen([sys.executable, "-c", crash], **kwargs)

    monkeypatch.setattr(daemon.subprocess, "Popen", fake_popen)
    log = tmp_path / "custom.log"
    with pytest.raises(CVDeployError, match="exited with code 3") as caught:
        daemon.start_detached(log_path=log, timeout=30)
    assert "port 8080 is taken" in str(caught.value)
    assert "port 8080 is taken" in log.read_text()


def test_start_detached_stops_a_daemon_that_never_answers(monkeypatch: pytest.MonkeyPatch):
    real_popen = subprocess.Popen
    hang = "import time; print('loading forever', flush=True); time.sleep(60)"

    def fake_popen(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return real_popen([sys.executable, "-c", hang], **kwargs)

    monkeypatch.setattr(daemon.subprocess, "Popen", fake_popen)
    with pytest.raises(CVDeployError, match=r"did not answer /health within 0\.5s"):
        daemon.start_detached(timeout=0.5)
    (process,) = daemon._spawned
    assert process.wait(10) == -signal.SIGTERM
