"""A real Prometheus server scrapes a model server and the platform gateway (issue 5, point 8).

Needs the ``prometheus`` binary (Debian: ``apt-get install prometheus``); skipped without it.
Prometheus scrapes every second; the test polls its HTTP API until both targets are up and
the request counters cvdeploy exposes have reached what the test sent.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_support import DIGITS, digit_b64, fast_options

from cvdeploy import ModelServer
from cvdeploy.demo import CLASSIFIER, demo_file, sample_images
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.registry import Registry

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
POLL_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _hostport(url: str) -> str:
    return httpx.URL(url).netloc.decode()


def _config(targets: dict[str, str]) -> str:
    jobs = "".join(
        f"  - job_name: {job}\n"
        f"    metrics_path: /metrics\n"
        f"    static_configs:\n"
        f"      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    return f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"


@contextlib.contextmanager
def _prometheus(tmp_path: Path, targets: dict[str, str]) -> Iterator[str]:
    """Prometheus scraping ``targets`` (job -> host:port), stopped (and killed if need be)."""
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(_config(targets))
    url = f"http://127.0.0.1:{_free_port()}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={_hostport(url)}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield url
        except BaseException:
            print(log_path.read_text(errors="replace")[-4000:])  # shown by pytest on failure
            raise
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _poll(what: str, check: Callable[[], Any]) -> Any:
    """``check()`` until it returns something truthy, or fail after POLL_TIMEOUT_S."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        # ValueError: Prometheus answers with an empty body while it starts.
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            last = check()
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"{what}: not seen within {POLL_TIMEOUT_S:g} s (last answer: {last!r})")


def _query(http: httpx.Client, prometheus: str, promql: str) -> float | None:
    body = http.get(f"{prometheus}/api/v1/query", params={"query": promql}).json()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _at_least(http: httpx.Client, prometheus: str, promql: str, minimum: float) -> float | None:
    value = _query(http, prometheus, promql)
    return value if value is not None and value >= minimum else None


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False) as s:
        yield s


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformServer]:
    """The local platform with ``cv_model`` version 1 registered and an endpoint ``digits``."""
    home = tmp_path / "cvdeploy-home"
    monkeypatch.setenv("CVDEPLOY_HOME", str(home))
    Registry(home=home).register(DIGITS, "cv_model")
    spec = {
        "name": "digits",
        "config": {
            "served_entities": [
                {"entity_name": "cv_model", "entity_version": "1", "min_replicas": 1}
            ],
            "traffic_config": {"routes": [{"served_model_name": "cv_model-1",
                                           "traffic_percentage": 100}]},
        },
    }  # fmt: skip
    with PlatformServer(fast_options(home)) as server, PlatformClient(server.url) as client:
        client.create_endpoint(spec)
        assert client.wait_not_updating("digits", timeout=90).state.ready == "READY"
        yield server


@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no `prometheus` binary on PATH (Debian/Ubuntu: apt-get install prometheus)",
)
def test_prometheus_scrapes_the_model_server_and_the_platform_gateway(
    tmp_path: Path, model_server: ModelServer, platform: PlatformServer
) -> None:
    png = sample_images("digit_*")[0].read_bytes()
    predict = f"{model_server.url}/v1/models/{model_server.name}/predict"
    invocations = f"{platform.url}/serving-endpoints/digits/invocations"
    # Prometheus' own scrapes of /metrics are counted too: select the predict route.
    route = 'route="/v1/models/{name}/predict"'
    predict_route = f'{route}, status="200"'
    targets = {"model_server": _hostport(model_server.url), "gateway": _hostport(platform.url)}
    with _prometheus(tmp_path, targets) as prometheus, httpx.Client(timeout=30) as http:
        for _ in range(12):
            answer = http.post(predict, content=png, headers={"content-type": "image/png"})
            assert answer.status_code == 200, answer.text
        for digit in range(5):
            answer = http.post(invocations, json={"inputs": [digit_b64(digit)]})
            assert answer.status_code == 200, answer.text

        def all_up() -> dict[str, str] | None:
            active = http.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health if health == dict.fromkeys(targets, "up") else None

        _poll("both targets up", all_up)
        served = _poll(
            "the model server's request counter",
            lambda: _at_least(
                http, prometheus, f"sum(cvdeploy_requests_total{{{predict_route}}})", 12
            ),
        )
        gateway = _poll(
            "the gateway's request counter",
            lambda: _at_least(
                http, prometheus, 'sum(cvdeploy_endpoint_requests_total{endpoint="digits"})', 5
            ),
        )
        latency = _poll(
            "the model server's latency histogram",
            lambda: _at_least(
                http, prometheus, f"sum(cvdeploy_request_latency_seconds_count{{{route}}})", 12
            ),
        )
        replicas = _poll(
            "the gateway's replica gauge",
            lambda: _at_least(
                http, prometheus, 'sum(cvdeploy_endpoint_replicas{endpoint="digits"})', 1
            ),
        )
    assert served == 12
    assert gateway == 5
    assert latency == 12
    assert replicas >= 1
