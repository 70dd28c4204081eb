"""``ModelMonitor``: live figures from a server under load, history, unreachable servers, alerts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cvdeploy import ModelMonitor, ModelServer
from cvdeploy.demo import CLASSIFIER, demo_file, sample_images
from cvdeploy.errors import ConfigError, NotAvailableError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def busy_server() -> Iterator[ModelServer]:
    png = sample_images("digit_*")[0].read_bytes()
    stop = threading.Event()
    with ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False) as server:

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    http.post(f"/v1/models/{server.name}/predict", content=png,
                              headers={"content-type": "image/png"})  # fmt: skip

        worker = threading.Thread(target=load)
        worker.start()
        try:
            yield server
        finally:
            stop.set()
            worker.join()


def test_live_figures_and_history_for_a_server_under_load(
    busy_server: ModelServer, tmp_path: Path
) -> None:
    history = tmp_path / "monitoring.db"
    with ModelMonitor(busy_server, metrics_interval=0.5, history=str(history), sinks=[]) as mon:
        time.sleep(1.6)
        metrics = mon.get_metrics()
    assert metrics["status"] == "ok"
    assert metrics["kind"] == "server"
    assert metrics["requests"] > 0
    assert metrics["throughput_rps"] > 0
    assert metrics["latency_ms"]["p95"] >= metrics["latency_ms"]["p50"] > 0
    assert metrics["error_rate"] == 0
    assert metrics["resources"]["cpu_percent"] > 0
    assert metrics["metrics"] == {
        "latency": metrics["latency_ms"]["p95"],
        "throughput": metrics["throughput_rps"],
        "error_rate": 0.0,
    }
    # A 1 ms classifier breaches no latency or error rule; the busy machine may trip seed 000's
    # `cpu: 80`, which is right.
    assert {a["metric"] for a in metrics["alerts"]} <= {"cpu", "memory"}
    stored = mon.read_history()
    assert len(stored) >= 2
    assert stored[-1]["requests"] >= stored[0]["requests"]


def test_an_unreachable_server_is_reported_and_recovered(tmp_path: Path) -> None:
    port = _free_port()
    monitor = ModelMonitor(f"http://127.0.0.1:{port}", history=False, sinks=[])
    down = monitor.get_metrics()
    assert down["status"] == "unreachable"
    assert "cannot be reached" in down["error"]
    assert down["alerts"] == []
    server = ModelServer("classification", demo_file(CLASSIFIER), port=port, access_log=False)
    with server:
        up = monitor.get_metrics()
    assert up["status"] == "ok"
    assert up["requests"] == 0
    monitor.stop()


def test_a_server_that_is_not_started_is_refused() -> None:
    with pytest.raises(ConfigError, match="start the server first"):
        ModelMonitor(ModelServer("classification", demo_file(CLASSIFIER)), history=False)
    with pytest.raises(ConfigError, match="takes a ModelServer"):
        ModelMonitor(42, history=False)


class FakeSource:
    """Figures set by the test, as a server's /monitoring would report them."""

    kind = "server"
    name = "fake"

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.down = False

    def fetch(self, window_s: float) -> dict[str, Any]:
        if self.down:
            raise NotAvailableError("the model server at fake cannot be reached")
        return dict(self.figures)

    def close(self) -> None:
        pass


def _figures(p95: float, error_rate: float) -> dict[str, Any]:
    return {
        "requests": 100,
        "throughput_rps": 10.0,
        "error_rate": error_rate,
        "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95, "mean": p95 / 2},
        "resources": {"cpu_percent": 10.0, "memory_percent": 20.0},
        "drift": {"status": "ok"},
    }


def test_injected_latency_and_errors_fire_the_seed_001_alerts_and_resolve() -> None:
    now = [1000.0]
    source = FakeSource()
    monitor = ModelMonitor(
        source,
        alerts=[
            {"metric": "error_rate", "threshold": 0.01},
            {"metric": "latency", "threshold": 100},
        ],
        history=False,
        sinks=[],
        clock=lambda: now[0],
    )
    source.figures = _figures(p95=40, error_rate=0.0)
    assert monitor.get_metrics()["alerts"] == []
    source.figures = _figures(p95=250, error_rate=0.05)  # injected latency and errors
    now[0] += 60
    firing = {a["metric"] for a in monitor.get_metrics()["alerts"]}
    assert firing == {"latency", "error_rate"}
    source.down = True  # no figures: alerts hold their state, nothing resolves by accident
    now[0] += 60
    assert {a["metric"] for a in monitor.get_metrics()["alerts"]} == firing
    source.down = False
    source.figures = _figures(p95=40, error_rate=0.0)  # the injection stops
    now[0] += 60
    assert monitor.get_metrics()["alerts"] == []
    events = [(e["alertname"], e["status"]) for e in monitor.alerts.history()]
    assert sum(1 for _, status in events if status == "firing") == 2
    assert sum(1 for _, status in events if status == "resolved") == 2


def test_a_cpu_alert_from_a_fake_sampler_waits_for_its_duration() -> None:
    now = [0.0]
    cpu = [50.0]
    source = FakeSource()
    source.figures = _figures(p95=10, error_rate=0.0)
    monitor = ModelMonitor(
        source,
        alert_thresholds={"cpu": 80, "memory": 80, "latency": 1000},
        alerts=[{"metric": "cpu", "threshold": 80, "for_s": 30, "severity": "critical"}],
        history=False,
        sinks=[],
        resource_sampler=lambda: {"cpu_percent": cpu[0]},
        clock=lambda: now[0],
    )
    assert monitor.get_metrics()["alerts"] == []
    cpu[0] = 95.0
    now[0] = 10
    alerts = monitor.get_metrics()["alerts"]
    assert [a["metric"] for a in alerts] == ["cpu"]  # seed 000's rule fires at once
    now[0] = 45  # the 30 s rule has held long enough
    critical = [a for a in monitor.get_metrics()["alerts"] if a["severity"] == "critical"]
    assert len(critical) == 1
    cpu[0] = 40.0
    now[0] = 50
    assert monitor.get_metrics()["alerts"] == []
