"""Seed 001's ModelServer in registry mode against a running platform, plus gateway policies."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from platform_support import DEMO, digit_b64, fast_options

from cvdeploy import ModelServer
from cvdeploy.errors import ConfigError, ModelNotFoundError
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.local.server import PlatformServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(platform_home: Path) -> Iterator[PlatformServer]:
    with PlatformServer(fast_options(platform_home)) as running:
        yield running


def test_seed_methods_canary_monitor_predict_rollback(server: PlatformServer) -> None:
    ms = ModelServer(workspace_url=server.url, token="your-token", model_name="cv_model")
    assert ms.create_endpoint("seed", "Standard_DS3_v2", 1, 2) == "seed"
    one = ms.predict(DEMO / "images" / "digit_8.png")
    assert one["classes"][0]["label"] == "8"

    ms.update_endpoint("seed", "2", traffic_percentage=20)
    labels = ms.predict([DEMO / "images" / f"digit_{n}.png" for n in range(10)])
    assert [p["classes"][0]["label"] for p in labels] == [str(n) for n in range(10)]
    seen: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30) as http:
        for _ in range(50):
            answer = http.post(
                f"{server.url}/serving-endpoints/seed/invocations",
                json={"inputs": [digit_b64(1)]},
            )
            seen[answer.headers["served-model-name"]] += 1
    assert seen == {"cv_model-1": 40, "cv_model-2": 10}

    metrics = ms.monitor_endpoint("seed")
    assert metrics["state"] == "READY"
    assert metrics["traffic"] == {"cv_model-1": 80, "cv_model-2": 20}
    assert metrics["requests"] >= 50
    assert metrics["latency_ms"]["p95"] > 0
    assert metrics["error_rate"] == 0
    assert metrics["versions"]["cv_model-2"]["replicas"] == 1
    # Standard_DS3_v2 sets the replicas' size (docs/platform.md has the table).
    with PlatformClient(server.url) as client:
        entity = client.get_endpoint("seed").config.served_entities[0]  # type: ignore[union-attr]
    assert entity.instance_type == "Standard_DS3_v2"
    assert entity.scale_to_zero_enabled is True

    ms.rollback_endpoint("seed")
    assert ms.monitor_endpoint("seed")["traffic"] == {"cv_model-1": 100}
    with pytest.raises(ConfigError, match="0% traffic"):
        ms.update_endpoint("seed", "2", traffic_percentage=0)
    # Running the script again re-applies instead of failing on the existing name.
    assert ms.create_endpoint("seed", min_instances=1, max_instances=1) == "seed"
    ms.delete_endpoint("seed")
    with pytest.raises(ModelNotFoundError):
        ms.monitor_endpoint("seed")


def test_unknown_instance_type_and_model_are_refused(server: PlatformServer) -> None:
    ms = ModelServer(workspace_url=server.url, model_name="cv_model")
    with pytest.raises(ConfigError, match="Standard_DS3_v2"):
        ms.create_endpoint("nope", instance_type="Huge_Box_v9")
    with pytest.raises(ModelNotFoundError):
        ModelServer(workspace_url=server.url, model_name="ghost").create_endpoint("nope")


def test_fallback_entity_serves_while_the_primary_has_no_replica(
    server: PlatformServer,
) -> None:
    spec = {
        "name": "guarded",
        "config": {
            "served_entities": [
                {"entity_name": "cv_model", "entity_version": "2", "name": "primary"},
                {"entity_name": "cv_model", "entity_version": "1", "name": "backup"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "primary", "traffic_percentage": 100},
                    {"served_model_name": "backup", "traffic_percentage": 0},
                ]
            },
            "fallback_served_entity": "backup",
            "rate_limits": [{"calls": 1000, "renewal_period": "minute"}],
        },
    }
    with PlatformClient(server.url) as client:
        client.create_endpoint(spec)
        client.wait_not_updating("guarded", timeout=90)
    runtime = server.platform.runtime("guarded")
    assert runtime is not None
    primary = runtime.entities["primary"].replicas
    with httpx.Client(timeout=30) as http:

        def served_by() -> str:
            answer = http.post(
                f"{server.url}/serving-endpoints/guarded/invocations",
                json={"inputs": [digit_b64(2)]},
            )
            assert answer.status_code == 200, answer.text
            return answer.headers["served-model-name"]

        assert served_by() == "primary"
        primary.ready()[0].kill()
        # Until the primary restarts (backoff + start-up), the fallback answers.
        deadline = time.monotonic() + 1.0
        fallback_answers = 0
        while time.monotonic() < deadline:
            fallback_answers += served_by() == "backup"
        assert fallback_answers > 0
        deadline = time.monotonic() + 60
        while not primary.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served_by() == "primary"


def test_rate_limit_answers_429_with_retry_after(server: PlatformServer) -> None:
    spec = {
        "name": "limited",
        "rate_limits": [{"calls": 3, "key": "endpoint", "renewal_period": "minute"}],
        "config": {"served_entities": [{"entity_name": "cv_model", "entity_version": "1"}]},
    }
    with PlatformClient(server.url) as client:
        client.create_endpoint(spec)
        client.wait_not_updating("limited", timeout=90)
    with httpx.Client(timeout=30) as http:
        codes = [
            http.post(
                f"{server.url}/serving-endpoints/limited/invocations",
                json={"inputs": [digit_b64(0)]},
            )
            for _ in range(5)
        ]
    assert [c.status_code for c in codes] == [200, 200, 200, 429, 429]
    assert codes[-1].json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert int(codes[-1].headers["retry-after"]) >= 1


def test_model_monitor_watches_an_endpoint(server: PlatformServer) -> None:
    from cvdeploy import ModelMonitor

    ms = ModelServer(workspace_url=server.url, model_name="cv_model")
    ms.create_endpoint("watched", min_instances=1, max_instances=1)
    with httpx.Client(timeout=30) as http:
        for digit in range(10):
            answer = http.post(
                f"{server.url}/serving-endpoints/watched/invocations",
                json={"inputs": [digit_b64(digit)]},
            )
            assert answer.status_code == 200
    for target in (ms, "watched"):
        monitor = ModelMonitor(
            target,
            platform_url=server.url,
            history=False,
            sinks=[],
            cost_per_hour={"Standard_DS3_v2": 0.5},
        )
        metrics = monitor.get_metrics()
        # Replica-hours accrue on the platform's control-loop ticks, which a busy machine can
        # delay past the first look.
        deadline = time.monotonic() + 15
        while not metrics.get("replica_hours") and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = monitor.get_metrics()
        monitor.stop()
        assert metrics["status"] == "ok", metrics
        assert metrics["kind"] == "endpoint"
        assert metrics["source"] == "endpoint:watched"
        assert metrics["requests"] == 10
        assert metrics["latency_ms"]["p95"] > 0
        assert metrics["replicas"] == 1
        assert metrics["resources"]["rss_bytes"] > 0
        version = metrics["versions"]["cv_model-1"]
        assert version["requests"] == 10
        drift_states = {"starting", "collecting_reference", "insufficient_data", "ok"}
        assert version["drift"]["status"] in drift_states, version["drift"]
        assert metrics["replica_hours"] > 0
        # Both figures are rounded to 1e-6 h, which is most of a few seconds' worth.
        expected = 0.5 * metrics["replica_hours"]
        assert metrics["cost"]["estimate"] == pytest.approx(expected, abs=2e-6)
    assert ms.monitor_endpoint("watched")["cost"]["replica_hours"] > 0
    ms.delete_endpoint("watched")
