"""``cvdeploy monitor`` and ``cvdeploy alerts`` against a real server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cvdeploy import ModelServer
from cvdeploy.cli.app import app
from cvdeploy.demo import CLASSIFIER, demo_file, sample_images

runner = CliRunner()


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False) as s:
        png = sample_images("digit_*")[0].read_bytes()
        with httpx.Client(base_url=s.url, timeout=30) as http:
            for _ in range(5):
                http.post(f"/v1/models/{s.name}/predict", content=png,
                          headers={"content-type": "image/png"})  # fmt: skip
        yield s


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cvdeploy.yaml"
    path.write_text(
        "monitoring:\n  alerts:\n    - {metric: latency, threshold: 0.001}\n"
        "    - {metric: error_rate, threshold: 0.5}\n",
        encoding="utf-8",
    )
    return path


def test_monitor_once_prints_the_figures(server: ModelServer) -> None:
    result = runner.invoke(app, ["monitor", server.url, "--once"])
    assert result.exit_code == 0, result.output
    assert "throughput" in result.output
    assert "latency p50 / p95 / p99" in result.output
    as_json = runner.invoke(app, ["monitor", server.url, "--json"])
    assert json.loads(as_json.output)["requests"] >= 5


def test_alerts_lists_each_rule_and_fails_while_one_fires(
    server: ModelServer, config: Path
) -> None:
    result = runner.invoke(app, ["alerts", server.url, "--config", str(config), "--json"])
    assert result.exit_code == 1, result.output  # latency > 0.001 ms fires
    rules = {r["metric"]: r for r in json.loads(result.output)["rules"]}
    assert rules["latency"]["state"] == "firing"
    assert rules["error_rate"]["state"] == "ok"
    table = runner.invoke(app, ["alerts", server.url, "--config", str(config)])
    assert "firing" in table.output


def test_an_unreachable_target_exits_2() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = runner.invoke(app, ["monitor", f"http://127.0.0.1:{port}", "--once"])
    assert result.exit_code == 2
    assert "cannot be reached" in result.output
