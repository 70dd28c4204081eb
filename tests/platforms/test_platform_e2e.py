"""The local platform end to end: real replica processes behind the real gateway.

One platform serves the whole module (replica start-up costs seconds on two cores); the tests
run in file order and each leaves the endpoints it needs in a known state.
"""

from __future__ import annotations

import base64
import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_support import DIGITS, digit_b64, fast_options

from cvdeploy.errors import (
    ConfigError,
    ConflictError,
    CVDeployError,
    ModelLoadError,
    ModelNotFoundError,
)
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.registry import Registry

pytestmark = pytest.mark.slow


def _spec(name: str, *versions: tuple[str, int], **extra: Any) -> dict[str, Any]:
    entities = [
        {"entity_name": "cv_model", "entity_version": v, "min_replicas": 1, **extra}
        for v, _ in versions
    ]
    routes = [
        {"served_model_name": f"cv_model-{v}", "traffic_percentage": pct} for v, pct in versions
    ]
    return {"name": name, "config": {"served_entities": entities,
                                     "traffic_config": {"routes": routes}}}  # fmt: skip


@pytest.fixture(scope="module")
def server(platform_home: Path) -> Iterator[PlatformServer]:
    with PlatformServer(fast_options(platform_home)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: PlatformServer) -> Iterator[PlatformClient]:
    with PlatformClient(server.url) as c:
        yield c


def _invoke(http: httpx.Client, url: str, name: str, digit: int = 3) -> httpx.Response:
    return http.post(
        f"{url}/serving-endpoints/{name}/invocations", json={"inputs": [digit_b64(digit)]}
    )


def test_create_query_and_read_back(server: PlatformServer, client: PlatformClient) -> None:
    info = client.create_endpoint(_spec("digits", ("1", 100)))
    assert info.state.config_update == "IN_PROGRESS"
    ready = client.wait_not_updating("digits", timeout=90)
    assert ready.state.ready == "READY"
    assert ready.config is not None
    assert ready.config.served_entities[0].name == "cv_model-1"
    with httpx.Client(timeout=30) as http:
        answer = _invoke(http, server.url, "digits", 7)
        assert answer.status_code == 200, answer.text
        assert answer.headers["served-model-name"] == "cv_model-1"
        assert answer.json()["predictions"][0]["classes"][0]["label"] == "7"
        # The image and v2 routes under the endpoint reach the same replicas.
        png = base64.b64decode(digit_b64(4))
        upload = http.post(
            f"{server.url}/serving-endpoints/digits/v1/models/digits/predict",
            files={"file": ("d.png", png, "image/png")},
        )
        assert upload.status_code == 200, upload.text
        assert http.get(f"{server.url}/serving-endpoints/digits/v2/health/ready").status_code == 200
    assert [e.name for e in client.list_endpoints()] == ["digits"]
    assert "cvdeploy_endpoint_requests_total" in client.metrics("digits")
    assert "starting" in client.logs("digits", "cv_model-1")


def test_bad_requests_are_refused_with_reasons(
    server: PlatformServer, client: PlatformClient
) -> None:
    with pytest.raises(ModelNotFoundError, match="nope"):
        client.get_endpoint("nope")
    bad_sum = _spec("x", ("1", 60), ("2", 30))
    with pytest.raises(ConfigError, match="sum to 90"):
        client.create_endpoint(bad_sum)
    missing = _spec("x", ("1", 100))
    missing["config"]["traffic_config"]["routes"][0]["served_model_name"] = "ghost"
    with pytest.raises(ConfigError, match="ghost"):
        client.create_endpoint(missing)
    with pytest.raises(ConfigError, match="min_replicas"):
        client.create_endpoint(_spec("x", ("1", 100), min_replicas=3, max_replicas=2))
    with pytest.raises(ModelNotFoundError):
        client.create_endpoint(_spec("x", ("9", 100)))
    with pytest.raises(ConflictError):
        client.create_endpoint(_spec("digits", ("1", 100)))
    with httpx.Client(timeout=10) as http:
        for path in ("/serving-endpoints/digits/../../etc/passwd",
                     "/serving-endpoints/digits/admin",
                     "/serving-endpoints/nope/invocations"):  # fmt: skip
            got = http.post(server.url + path, json={})
            assert got.status_code == 404, (path, got.text)
            assert got.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        garbage = http.post(
            f"{server.url}/serving-endpoints/digits/invocations", content=b"{not json"
        )
        assert garbage.status_code == 400
        assert [e.name for e in client.list_endpoints()] == ["digits"]


def test_canary_split_is_exact_and_rollback_restores(
    server: PlatformServer, client: PlatformClient
) -> None:
    client.update_config("digits", _spec("digits", ("1", 90), ("2", 10))["config"])
    with pytest.raises(ConflictError):  # one update at a time
        client.update_config("digits", _spec("digits", ("1", 100))["config"])
    client.wait_not_updating("digits", timeout=90)
    counts: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30) as http:
        for _ in range(1000):
            answer = _invoke(http, server.url, "digits")
            assert answer.status_code == 200
            counts[answer.headers["served-model-name"]] += 1
    assert 70 <= counts["cv_model-2"] <= 130, counts
    stats = client.stats("digits")
    assert stats["served_entities"]["cv_model-2"]["traffic_percentage"] == 10

    client.rollback("digits")
    info = client.wait_not_updating("digits", timeout=90)
    assert info.config is not None
    assert [e.name for e in info.config.served_entities] == ["cv_model-1"]
    numbers = [r["number"] for r in client.revisions("digits")]
    assert numbers == [1, 2, 3]
    with httpx.Client(timeout=30) as http:
        names = {
            _invoke(http, server.url, "digits").headers["served-model-name"] for _ in range(20)
        }
    assert names == {"cv_model-1"}


def test_failed_update_keeps_the_old_version_serving(
    server: PlatformServer, client: PlatformClient, platform_home: Path
) -> None:
    registry = Registry(home=platform_home)
    broken = registry.register(DIGITS, "cv_broken")
    registry.model_path("cv_broken", broken.version).write_bytes(b"not an onnx model")
    config = {"served_entities": [{"entity_name": "cv_broken", "entity_version": broken.version}]}
    client.update_config("digits", config)
    with pytest.raises(ModelLoadError):
        client.wait_not_updating("digits", timeout=90)
    info = client.get_endpoint("digits")
    assert info.state.config_update == "UPDATE_FAILED"
    assert info.config is not None
    assert info.config.served_entities[0].entity_name == "cv_model"
    with httpx.Client(timeout=30) as http:
        assert _invoke(http, server.url, "digits").status_code == 200


def test_a_killed_replica_loses_no_request(server: PlatformServer, client: PlatformClient) -> None:
    client.create_endpoint(_spec("pair", ("1", 100), min_replicas=2, max_replicas=2))
    client.wait_not_updating("pair", timeout=90)
    runtime = server.platform.runtime("pair")
    assert runtime is not None
    replicas = runtime.entities["cv_model-1"].replicas
    statuses: collections.Counter[int] = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                statuses[_invoke(http, server.url, "pair").status_code] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    replicas.ready()[0].kill()
    time.sleep(2.0)
    stop.set()
    for w in workers:
        w.join()
    assert statuses[200] > 50
    assert set(statuses) == {200}, statuses
    deadline = time.monotonic() + 60
    while len(replicas.ready()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(replicas.ready()) == 2  # restarted
    client.delete_endpoint("pair")


def test_version_switch_under_load_fails_no_request(
    server: PlatformServer, client: PlatformClient
) -> None:
    client.create_endpoint(_spec("switch", ("1", 100)))
    client.wait_not_updating("switch", timeout=90)
    statuses: collections.Counter[int] = collections.Counter()
    versions: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                answer = _invoke(http, server.url, "switch")
                statuses[answer.status_code] += 1
                versions[answer.headers.get("served-model-name", "?")] += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        client.update_config("switch", _spec("switch", ("2", 100))["config"])
        client.wait_not_updating("switch", timeout=90)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert set(statuses) == {200}, statuses
    assert versions["cv_model-1"] > 0
    assert versions["cv_model-2"] > 0
    client.delete_endpoint("switch")


def test_scale_to_zero_and_back(server: PlatformServer, client: PlatformClient) -> None:
    client.create_endpoint(
        _spec("sleepy", ("1", 100), min_replicas=0, max_replicas=1, scale_to_zero_enabled=True)
    )
    client.wait_not_updating("sleepy", timeout=90)
    runtime = server.platform.runtime("sleepy")
    assert runtime is not None
    replicas = runtime.entities["cv_model-1"].replicas
    deadline = time.monotonic() + 30
    while replicas.count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert replicas.count == 0
    assert client.get_endpoint("sleepy").state.ready == "READY"
    with httpx.Client(timeout=60) as http:
        started = time.perf_counter()
        answer = _invoke(http, server.url, "sleepy", 5)
        cold = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["classes"][0]["label"] == "5"
    assert replicas.count == 1
    assert cold < 30


def test_restart_keeps_endpoints_and_revisions(
    server: PlatformServer, client: PlatformClient, platform_home: Path
) -> None:
    before = client.revisions("digits")
    server.stop()
    with (
        PlatformServer(fast_options(platform_home)) as again,
        PlatformClient(again.url) as fresh,
    ):
        assert fresh.revisions("digits") == before
        deadline = time.monotonic() + 60
        while fresh.get_endpoint("digits").state.ready != "READY":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with httpx.Client(timeout=30) as http:
            assert _invoke(http, again.url, "digits").status_code == 200
        fresh.delete_endpoint("digits")
        with pytest.raises(CVDeployError):
            fresh.get_endpoint("digits")
