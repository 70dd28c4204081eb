"""Alert sinks against a real HTTP server on loopback: delivery, retries, down and slow hooks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.monitoring.alerts import AlertEvent, AlertRule, AlertState, evaluate
from cvdeploy.monitoring.sinks import (
    AlertmanagerSink,
    LogSink,
    Sink,
    WebhookSink,
    sink_from_url,
)

FAST: dict[str, Any] = {"backoff_s": 0.01, "timeout_s": 2.0}


class Receiver(ThreadingHTTPServer):
    """A webhook on loopback that records posts and answers from a script."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, Any]] = []
        self.statuses: list[int] = []  # answered in order; 200 once used up
        self.delay_s = 0.0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def bodies(self) -> list[Any]:
        with self.lock:
            return [body for _, body in self.posts]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        with self.server.lock:
            self.server.posts.append((self.path, body))
            status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.server.gate.wait(10)
        time.sleep(self.server.delay_s)
        try:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError):  # the sink gave up waiting: expected
            pass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.gate.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def events(at: float = 1_700_000_000.0) -> tuple[AlertEvent, AlertEvent]:
    """A real firing and resolved pair from the state machine."""
    rules = [AlertRule("latency", 100, severity="critical", description="p95 too slow")]
    labels = {"endpoint": "cv_endpoint", "version": "2"}
    states: dict[str, AlertState] = {}
    states, fired = evaluate(rules, {"latency": 250.0}, states, at, labels)
    _, resolved = evaluate(rules, {"latency": 20.0}, states, at + 90, labels)
    return fired[0], resolved[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- webhook ---------------------------------------------------------------------------------


def test_webhook_posts_the_event_json(receiver: Receiver) -> None:
    fired, resolved = events()
    sink = WebhookSink(receiver.url + "/hook", headers={"x-token": "t"}, **FAST)
    sink.send(fired)
    sink.send(resolved)
    sink.close(timeout=5)
    assert [path for path, _ in receiver.posts] == ["/hook", "/hook"]
    first, second = receiver.bodies()
    assert first == fired.to_dict()
    assert first["alertname"] == "latency_p95_high"
    assert first["status"] == "firing"
    assert first["labels"]["endpoint"] == "cv_endpoint"
    assert first["message"] == "latency p95 is 250 ms, above 100 ms"
    assert second["status"] == "resolved"
    assert second["fingerprint"] == first["fingerprint"]
    assert sink.stats() == {"sent": 2, "failed": 0, "dropped": 0, "queued": 0, "attempts": 2}


def test_webhook_retries_5xx_until_delivered(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    sink = WebhookSink(receiver.url, retries=3, **FAST)
    sink.send(events()[0])
    sink.close(timeout=5)
    assert len(receiver.posts) == 3
    assert (sink.sent, sink.failed, sink.attempts) == (1, 0, 3)


def test_webhook_does_not_retry_a_client_error(receiver: Receiver) -> None:
    receiver.statuses = [400]
    sink = WebhookSink(receiver.url, retries=3, **FAST)
    sink.send(events()[0])
    sink.close(timeout=5)
    assert len(receiver.posts) == 1
    assert (sink.sent, sink.failed) == (0, 1)


def test_webhook_gives_up_after_the_retries(receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    sink = WebhookSink(receiver.url, retries=2, **FAST)
    sink.send(events()[0])
    sink.close(timeout=5)
    assert len(receiver.posts) == 3
    assert (sink.sent, sink.failed) == (0, 1)


def test_down_webhook_never_blocks_or_raises(caplog: pytest.LogCaptureFixture) -> None:
    sink = WebhookSink(f"http://127.0.0.1:{closed_port()}/hook", retries=2, **FAST)
    fired, resolved = events()
    started = time.perf_counter()
    sink.send(fired)
    sink.send(resolved)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05
    wait_until(lambda: sink.failed == 2)
    assert sink.attempts == 6  # 1 + 2 retries for each event, in the background
    assert sink.sent == 0
    assert "giving up" in caplog.text
    sink.close(timeout=1)


def test_slow_webhook_does_not_block_send(receiver: Receiver) -> None:
    receiver.delay_s = 1.0
    sink = WebhookSink(receiver.url, timeout_s=0.1, retries=1, backoff_s=0.01)
    started = time.perf_counter()
    for event in events():
        sink.send(event)
    assert time.perf_counter() - started < 0.05
    wait_until(lambda: sink.failed == 2)
    assert sink.attempts == 4
    sink.close(timeout=1)


def test_full_queue_drops_the_oldest(receiver: Receiver) -> None:
    receiver.gate.clear()  # the webhook holds the first post until released
    sink = WebhookSink(receiver.url, max_queue=2, **FAST)
    base = events()[0]
    batch = [replace(base, message=f"event {index}") for index in range(4)]
    sink.send(batch[0])
    wait_until(lambda: len(receiver.posts) == 1)  # the worker is now stuck on event 0
    for event in batch[1:]:
        sink.send(event)
    assert sink.stats()["queued"] == 2
    assert sink.dropped == 1
    receiver.gate.set()
    sink.close(timeout=5)
    assert [body["message"] for body in receiver.bodies()] == ["event 0", "event 2", "event 3"]
    assert (sink.sent, sink.dropped) == (3, 1)


def test_close_times_out_on_a_stuck_webhook_and_drops_the_rest(receiver: Receiver) -> None:
    receiver.gate.clear()
    sink = WebhookSink(receiver.url, timeout_s=2.0, retries=0)
    fired, resolved = events()
    sink.send(fired)
    wait_until(lambda: len(receiver.posts) == 1)
    sink.send(resolved)
    started = time.perf_counter()
    sink.close(timeout=0.1)
    assert time.perf_counter() - started < 1.0
    receiver.gate.set()
    wait_until(lambda: sink.sent + sink.failed == 1)
    wait_until(lambda: sink.dropped == 1)
    sink.send(fired)  # after close: dropped, never raised
    assert sink.dropped == 2


def test_bad_webhook_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http"):
        WebhookSink("ftp://example.com/hook")


# -- Alertmanager ----------------------------------------------------------------------------


def _parse(stamp: str) -> float:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_alertmanager_payload_shape(receiver: Receiver) -> None:
    fired, resolved = events(at=1_700_000_000.0)
    sink = AlertmanagerSink(receiver.url, generator_url="http://dash/", **FAST)
    sink.send(fired)
    sink.send(resolved)
    sink.close(timeout=5)
    assert [path for path, _ in receiver.posts] == ["/api/v2/alerts"] * 2
    first, second = receiver.bodies()
    assert isinstance(first, list)
    assert len(first) == 1
    alert = first[0]
    assert set(alert) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert alert["labels"] == {
        "alertname": "latency_p95_high",
        "severity": "critical",
        "metric": "latency",
        "endpoint": "cv_endpoint",
        "version": "2",
    }
    assert alert["annotations"]["summary"] == "latency p95 is 250 ms, above 100 ms"
    assert alert["annotations"]["description"] == "p95 too slow"
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z"
    # A firing alert is valid for four re-send intervals, so Alertmanager keeps it active.
    assert _parse(alert["endsAt"]) > time.time() + 60
    assert alert["generatorURL"] == "http://dash/"
    (done,) = second
    assert done["labels"] == alert["labels"]
    assert done["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert done["endsAt"] == "2023-11-14T22:14:50.000Z"


def test_alertmanager_resends_firing_alerts_until_resolved(receiver: Receiver) -> None:
    fired, resolved = events()
    sink = AlertmanagerSink(receiver.url + "/api/v2/alerts", resend_s=0.05, **FAST)
    sink.send(fired)
    wait_until(lambda: len(receiver.posts) >= 3)
    sink.send(resolved)
    wait_until(lambda: sink.sent == 2)
    time.sleep(0.15)
    sink.close(timeout=5)
    bodies = receiver.bodies()
    assert all(path == "/api/v2/alerts" for path, _ in receiver.posts)
    assert all(body[0]["labels"]["alertname"] == "latency_p95_high" for body in bodies)
    assert "endsAt" in bodies[-1][0]
    assert _parse(bodies[-1][0]["endsAt"]) == resolved.at  # nothing re-sent once resolved
    assert sink.sent == 2  # re-sends are refreshes, not new deliveries


def test_alertmanager_without_resend_leaves_ends_at_to_alertmanager() -> None:
    sink = AlertmanagerSink("http://am:9093/", resend_s=None)
    fired, resolved = events()
    assert "endsAt" not in sink.alert(fired)
    assert "endsAt" in sink.alert(resolved)
    assert sink.target == "http://am:9093/api/v2/alerts"


# -- log and factory -------------------------------------------------------------------------


def test_log_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cvdeploy.alerts")
    sink = LogSink()
    fired, resolved = events()
    sink.send(fired)
    sink.send(resolved)
    sink.close()
    records = [r for r in caplog.records if r.name == "cvdeploy.alerts"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "latency_p95_high firing: latency p95 is 250 ms, above 100 ms" in records[0].message
    assert records[1].alert["status"] == "resolved"  # type: ignore[attr-defined]


def test_sink_from_url() -> None:
    assert isinstance(sink_from_url("log"), LogSink)
    hook = sink_from_url("https://hooks.example.com/alerts", retries=5)
    assert isinstance(hook, WebhookSink)
    assert not isinstance(hook, AlertmanagerSink)
    assert hook.url == "https://hooks.example.com/alerts"
    manager = sink_from_url("alertmanager+http://am:9093")
    assert isinstance(manager, AlertmanagerSink)
    assert manager.target == "http://am:9093/api/v2/alerts"
    for sink in (hook, manager, LogSink()):
        assert isinstance(sink, Sink)
    with pytest.raises(ConfigError, match="alertmanager"):
        sink_from_url("slack://channel")
