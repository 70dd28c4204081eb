"""Slow, hanging and disconnecting clients must not hold up anyone else or flood the log.

Raw sockets play the hostile clients against a real loopback server while httpx plays the good
ones. The server runs in a thread of this process, so its loggers can be watched directly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import encode, solid

from cvdeploy import ModelServer

pytestmark = pytest.mark.slow

WATCHED_LOGGERS = ("cvdeploy", "uvicorn", "uvicorn.error", "asyncio")
#: One line per request by design (and not a disconnect message), so it is not counted.
ACCESS_LOGGER = "cvdeploy.access"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def snapshot(self) -> list[logging.LogRecord]:
        with self._lock_records:
            return list(self.records)


@pytest.fixture
def server_log() -> Iterator[_Records]:
    """Every record of the server's loggers (at INFO, as `cvdeploy serve` logs) during a test."""
    handler = _Records()
    saved = []
    for name in WATCHED_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for log, level in saved:
            log.removeHandler(handler)
            log.setLevel(level)


def assert_quiet(records: list[logging.LogRecord], disconnects: int) -> None:
    """No traceback, nothing at ERROR, and at most one line per disconnecting client."""
    for record in records:
        text = record.getMessage()
        assert record.exc_info is None, (record.name, text)
        assert "Traceback" not in text, text
        assert record.levelno < logging.ERROR, (record.name, text)
    lines = [r for r in records if r.name != ACCESS_LOGGER]
    assert len(lines) <= disconnects, [f"{r.name}: {r.getMessage()}" for r in lines[:20]]


def wait_until_quiet(handler: _Records, settle: float = 0.3, limit: float = 5.0) -> None:
    """Wait until the server has logged nothing new for ``settle`` seconds."""
    deadline = time.monotonic() + limit
    count = -1
    while time.monotonic() < deadline:
        now = len(handler.snapshot())
        if now == count:
            return
        count = now
        time.sleep(settle)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request_head(server: ModelServer, length: int, content_type: str = "image/jpeg") -> bytes:
    return (
        f"POST /v1/models/{server.name}/predict HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def target(classifier_path: Path) -> Iterator[ModelServer]:
    """A server of its own, so its log and statistics belong to these tests alone."""
    server = ModelServer("classification", classifier_path, port=0, access_log=False)
    with server:
        yield server


@pytest.fixture(scope="module")
def one_at_a_time(slow_path: Path) -> Iterator[ModelServer]:
    """A slow model that runs one image per call, so requests queue behind each other."""
    server = ModelServer(
        "classification", slow_path, port=0, access_log=False, batching={"max_batch_size": 1}
    )
    with server:
        yield server


def test_200_slow_and_disconnecting_clients_do_not_hold_up_good_ones(target, server_log):
    image = encode(solid((220, 20, 20), size=(64, 48)))
    head = request_head(target, len(image))
    half = head + image[: len(image) // 2]
    full = head + image
    partial_headers = head[: len(head) // 2]

    def hang_mid_body(sock: socket.socket) -> bool:
        sock.sendall(half)
        return True  # keep open until the end

    def hang_mid_headers(sock: socket.socket) -> bool:
        sock.sendall(partial_headers)
        return True

    def close_mid_body(sock: socket.socket) -> bool:
        sock.sendall(half)
        sock.close()
        return False

    def reset_mid_body(sock: socket.socket) -> bool:
        sock.sendall(half)
        reset(sock)
        return False

    def close_before_response(sock: socket.socket) -> bool:
        sock.sendall(full)
        sock.close()
        return False

    def reset_before_response(sock: socket.socket) -> bool:
        sock.sendall(full)
        reset(sock)
        return False

    kinds: list[Callable[[socket.socket], bool]] = [
        hang_mid_body,
        hang_mid_body,
        hang_mid_headers,
        close_mid_body,
        reset_mid_body,
        close_before_response,
        reset_before_response,
        close_mid_body,
    ]
    count = 200
    hanging: list[socket.socket] = []
    opened: list[socket.socket] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def hostile() -> None:
        try:
            for i in range(count):
                sock = socket.create_connection(("127.0.0.1", target.port), timeout=5)
                opened.append(sock)
                if kinds[i % len(kinds)](sock):
                    hanging.append(sock)
                if i % 20 == 19:
                    time.sleep(0.01)  # in waves, so good requests interleave with them
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    latencies: list[float] = []
    attacker = threading.Thread(target=hostile, name="hostile-clients")
    try:
        with httpx.Client(timeout=10) as client:

            def good_request() -> None:
                started = time.perf_counter()
                response = client.post(
                    f"{target.url}/v1/models/{target.name}/predict",
                    content=image,
                    headers={"content-type": "image/jpeg"},
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                assert response.json()["predictions"][0]["classes"][0]["label"] == "red"

            attacker.start()
            while not done.is_set():
                good_request()
            attacker.join(10)
            assert not failures, failures
            assert len(hanging) == count // len(kinds) * 3
            # Every hanging client still holds its connection: the server keeps serving.
            for _ in range(20):
                good_request()
            assert client.get(f"{target.url}/v2/health/ready").status_code == 200
    finally:
        attacker.join(10)
        for i, sock in enumerate(opened):
            with contextlib.suppress(OSError):
                if i % 2:
                    reset(sock)
                else:
                    sock.close()
    assert len(latencies) >= 21
    assert max(latencies) < 2.0, sorted(latencies)[-5:]

    wait_until_quiet(server_log)
    disconnects = count  # every hostile client goes away once, one way or another
    assert_quiet(server_log.snapshot(), disconnects)
    # After the storm the server answers normally.
    response = httpx.post(
        f"{target.url}/v1/models/{target.name}/predict",
        content=image,
        headers={"content-type": "image/jpeg"},
        timeout=10,
    )
    assert response.status_code == 200


def _queue_behind(server: ModelServer, images: int) -> tuple[threading.Thread, list[int]]:
    """Start a request of ``images`` images in a thread; it keeps the model busy for a while."""
    files = [
        ("file", (f"{i}.png", encode(solid((i * 9, 80, 80), size=(32, 32)), "PNG"), "image/png"))
        for i in range(images)
    ]
    statuses: list[int] = []

    def run() -> None:
        response = httpx.post(
            f"{server.url}/v1/models/{server.name}/predict", files=files, timeout=60
        )
        statuses.append(response.status_code)

    thread = threading.Thread(target=run, name="long-request")
    thread.start()
    return thread, statuses


def _wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
def test_client_leaving_while_queued_is_skipped_and_the_server_lives(
    one_at_a_time, server_log, close
):
    engine = one_at_a_time._server.engine  # type: ignore[union-attr]
    stats = engine.batcher.stats
    submitted, completed = stats.submitted, stats.completed
    long_images = 24
    long_request, statuses = _queue_behind(one_at_a_time, long_images)
    try:
        _wait_for(lambda: stats.submitted >= submitted + long_images)
        image = encode(solid((1, 200, 1), size=(32, 32)))
        sock = socket.create_connection(("127.0.0.1", one_at_a_time.port), timeout=5)
        try:
            sock.sendall(request_head(one_at_a_time, len(image)) + image)
            _wait_for(lambda: stats.submitted == submitted + long_images + 1)
            # Queued behind the long request, then the client goes away.
            assert stats.completed < completed + long_images, "the long request ended too soon"
            time.sleep(0.05)
        finally:
            close(sock)
    finally:
        long_request.join(60)
    assert statuses == [200]
    _wait_for(lambda: engine.batcher.queue_size == 0)
    time.sleep(0.05)
    # The long request's images ran; the departed client's image did not.
    assert stats.completed - completed == long_images
    assert stats.submitted - submitted == long_images + 1
    wait_until_quiet(server_log, settle=0.1)
    assert_quiet(server_log.snapshot(), disconnects=1)
    response = httpx.post(
        f"{one_at_a_time.url}/v1/models/{one_at_a_time.name}/predict",
        content=image,
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 200


def test_client_leaving_while_its_images_run_does_not_break_the_server(one_at_a_time, server_log):
    engine = one_at_a_time._server.engine  # type: ignore[union-attr]
    stats = engine.batcher.stats
    submitted, completed = stats.submitted, stats.completed
    images = 12
    files = [encode(solid((i * 9, 10, 200), size=(32, 32)), "PNG") for i in range(images)]
    boundary = "hostile-boundary"
    parts = [
        (
            f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename={i}.png\r\n"
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", one_at_a_time.port), timeout=5)
    try:
        sock.sendall(
            request_head(one_at_a_time, len(body), f"multipart/form-data; boundary={boundary}")
            + body
        )
        _wait_for(lambda: stats.submitted >= submitted + images)
        _wait_for(lambda: stats.completed > completed)  # its images are running
    finally:
        reset(sock)
    _wait_for(lambda: engine.batcher.queue_size == 0)
    wait_until_quiet(server_log, settle=0.1)
    assert_quiet(server_log.snapshot(), disconnects=1)
    response = httpx.post(
        f"{one_at_a_time.url}/v1/models/{one_at_a_time.name}/predict",
        content=files[0],
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["classes"]
