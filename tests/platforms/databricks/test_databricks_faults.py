"""Faults of a workspace: unreachable, throttling, a failed update; each bounded, each explained.

The servers here answer only the few routes each fault needs, in Databricks' JSON; the full
fake workspace lives in ``tests/fakes``.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cvdeploy.errors import ConfigError, ModelLoadError, NotAvailableError, RateLimitedError
from cvdeploy.platforms.connect import connect
from cvdeploy.platforms.databricks import DatabricksPlatform
from cvdeploy.platforms.databricks.client import failure_message
from cvdeploy.platforms.databricks.mapping import DatabricksConfig

pytest.importorskip("databricks.sdk")

Answer = tuple[int, dict[str, str], Any]
Route = Callable[[str, str], Answer]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, time.monotonic()))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, headers, body = self.server.route(self.command, self.path)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route: Route) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.route = route
        self.seen: list[tuple[str, str, float]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def api_calls(self) -> list[tuple[str, str, float]]:
        return [s for s in self.seen if s[1].startswith("/api/")]


@pytest.fixture
def serve() -> Iterator[Callable[[Route], _Server]]:
    started: list[_Server] = []

    def start(route: Route) -> _Server:
        server = _Server(route)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # waits out the SDK's bounded retries (a few seconds)
def test_unreachable_workspace_fails_fast_and_says_so() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with (
        DatabricksPlatform(url, "dapi-token", timeout=3) as platform,
        pytest.raises(NotAvailableError) as failure,
    ):
        platform.list_endpoints()
    took = time.monotonic() - started
    assert f"cannot reach the Databricks workspace at {url}" in str(failure.value)
    assert "connection refused" in str(failure.value)
    # One second for the SDK's metadata probe, three for the call's retries, and their sleeps.
    assert took < 10, took


@pytest.mark.slow  # waits out the SDK's bounded retries (a few seconds)
def test_a_workspace_that_drops_connections_gets_few_attempts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        attempts = 0
        stop = threading.Event()

        def drop() -> None:
            nonlocal attempts
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                attempts += 1
                conn.close()

        dropper = threading.Thread(target=drop, daemon=True)
        dropper.start()
        try:
            with (
                DatabricksPlatform(url, "dapi-token", timeout=3) as platform,
                pytest.raises(NotAvailableError, match="cannot reach the Databricks workspace"),
            ):
                platform.get_endpoint("digits")
        finally:
            stop.set()
            dropper.join()
    # The probe and the call together, retried with growing sleeps: no storm.
    assert 2 <= attempts <= 6, attempts


@pytest.mark.slow  # waits out the SDK's bounded retries (a few seconds)
def test_quota_throttling_is_retried_within_the_bound_then_reported(
    serve: Callable[[Route], _Server],
) -> None:
    def throttled(method: str, path: str) -> Answer:
        body = {"error_code": "RESOURCE_EXHAUSTED", "message": "Endpoint creation quota exceeded"}
        return 429, {"Retry-After": "1"}, body

    server = serve(throttled)
    started = time.monotonic()
    with (
        DatabricksPlatform(server.url, "dapi-token", timeout=3) as platform,
        pytest.raises(RateLimitedError) as failure,
    ):
        platform.create_endpoint(
            {
                "name": "digits",
                "config": {"served_entities": [{"entity_name": "m", "entity_version": "1"}]},
            }
        )
    assert "quota" in str(failure.value)
    assert "Endpoint creation quota exceeded" in str(failure.value)
    assert time.monotonic() - started < 10
    assert 1 <= len(server.api_calls()) <= 4, server.api_calls()


def _endpoint(update: str, pending: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "digits",
        "creation_timestamp": 1,
        "last_updated_timestamp": 2,
        "config": {
            "served_entities": [
                {
                    "name": "cv_model-1",
                    "entity_name": "cv_model",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "state": {"deployment": "DEPLOYMENT_READY"},
                }
            ],
            "traffic_config": {
                "routes": [{"served_model_name": "cv_model-1", "traffic_percentage": 100}]
            },
        },
        "state": {"ready": "READY", "config_update": update},
    }
    if pending is not None:
        body["pending_config"] = {"served_entities": pending}
    return body


_FAILED_ENTITY = {
    "name": "cv_model-2",
    "entity_name": "cv_model",
    "entity_version": "2",
    "workload_size": "Small",
    "state": {
        "deployment": "DEPLOYMENT_FAILED",
        "deployment_state_message": "Container image build failed",
    },
}
_BUILD_LOG = (
    "\n".join(f"step {n}" for n in range(40)) + "\nERROR: No matching distribution for onnx==99"
)


def test_update_failed_surfaces_build_logs_and_polls_gently(
    serve: Callable[[Route], _Server],
) -> None:
    polls = {"n": 0}

    def workspace(method: str, path: str) -> Answer:
        if path.endswith("/served-models/cv_model-2/build-logs"):
            return 200, {}, {"logs": _BUILD_LOG}
        if path == "/api/2.0/serving-endpoints/digits":
            polls["n"] += 1
            if polls["n"] < 3:
                return 200, {}, _endpoint("IN_PROGRESS", [{**_FAILED_ENTITY, "state": {}}])
            return 200, {}, _endpoint("UPDATE_FAILED", [_FAILED_ENTITY])
        return 404, {}, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no route {path}"}

    server = serve(workspace)
    with (
        DatabricksPlatform(server.url, "dapi-token", min_poll_s=0.3) as platform,
        pytest.raises(ModelLoadError) as failure,
    ):
        platform.wait_not_updating("digits", timeout=30, poll_s=0.01)
    message = str(failure.value)
    assert "the previous config, if any, keeps serving" in message
    assert "served entity 'cv_model-2': Container image build failed" in message
    assert "ERROR: No matching distribution for onnx==99" in message
    assert "step 0\n" not in message  # only the tail of the log
    gets = [t for m, p, t in server.api_calls() if p == "/api/2.0/serving-endpoints/digits"]
    assert len(gets) == 3
    # poll_s=0.01 was asked; the platform's floor keeps the polls apart.
    assert min(b - a for a, b in itertools.pairwise(gets)) >= 0.3


def test_default_poll_interval_is_at_least_two_seconds() -> None:
    assert DatabricksPlatform("https://adb-1.2.azuredatabricks.net", "t").min_poll_s >= 2.0


def test_retry_bound_follows_the_timeout() -> None:
    assert DatabricksPlatform("https://adb-1.2.azuredatabricks.net", "t").retry_timeout_s == 30
    assert DatabricksPlatform("https://x.cloud.databricks.com", "t", timeout=5).retry_timeout_s == 5


class _Logs:
    def __init__(self, logs: dict[str, str]) -> None:
        self.logs = logs
        self.asked: list[str] = []

    def build_logs(self, name: str, served_model_name: str) -> str:
        self.asked.append(served_model_name)
        if served_model_name not in self.logs:
            raise NotAvailableError("no build logs kept")
        return self.logs[served_model_name]


def test_failure_names_the_entities_this_client_sent_when_pending_is_gone() -> None:
    # cvdeploy's control plane clears pending_config on failure; the sent config names them.
    sent = DatabricksConfig(
        config={
            "served_entities": [
                {"name": "cv_model-1", "entity_name": "cv_model", "entity_version": "1"},
                {"name": "cv_broken-1", "entity_name": "cv_broken", "entity_version": "1"},
            ]
        }
    )
    source = _Logs({"cv_broken-1": "onnxruntime: INVALID_PROTOBUF"})
    message = failure_message("digits", _endpoint("UPDATE_FAILED"), sent, source)
    assert source.asked == ["cv_broken-1"]
    assert "INVALID_PROTOBUF" in message


def test_failure_without_build_logs_says_they_could_not_be_read() -> None:
    message = failure_message(
        "digits", _endpoint("UPDATE_FAILED", [_FAILED_ENTITY]), None, _Logs({})
    )
    assert "its build logs could not be read: no build logs kept" in message


def test_unsupported_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        DatabricksPlatform("adb-1.2.azuredatabricks.net", "t")


def test_connect_picks_the_backend_by_host_and_talks_to_nobody_yet() -> None:
    # Building the SDK client probes the host, so it waits for the first call.
    with connect("https://adb-1234567890123456.7.azuredatabricks.net", "dapi-token") as platform:
        assert isinstance(platform, DatabricksPlatform)
        assert platform.kind == "databricks"
    with connect("http://127.0.0.1:9", "t", platform="databricks") as explicit:
        assert isinstance(explicit, DatabricksPlatform)
