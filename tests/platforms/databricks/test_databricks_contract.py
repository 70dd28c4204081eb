"""The backend against the fake Databricks workspace (``tests/fakes``), written from the SDK and
Databricks' docs rather than from cvdeploy: seed 001's calls, the metrics export, failures."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fakes.databricks_workspace import FakeWorkspace

from cvdeploy.errors import (
    ConfigError,
    ModelLoadError,
    NotAvailableError,
    PermissionDeniedError,
    RateLimitedError,
)
from cvdeploy.platforms.databricks import DatabricksPlatform
from cvdeploy.platforms.endpoints import EndpointManager

pytest.importorskip("databricks.sdk")

pytestmark = pytest.mark.slow  # each update waits out the 2 s poll floor

MODEL = "main.vision.cv_model"


@pytest.fixture
def ws() -> Iterator[FakeWorkspace]:
    with FakeWorkspace(token="dapi-test", update_delay_s=0.3, concurrency_quota=200) as workspace:
        yield workspace


def _manager(ws: FakeWorkspace, version: str = "1") -> EndpointManager:
    return EndpointManager(
        MODEL, version, workspace_url=ws.url, token=ws.token, platform="databricks", timeout=60
    )


def _api_calls(ws: FakeWorkspace) -> list[tuple[str, str, int]]:
    return [r for r in ws.requests if r[1].startswith("/api/")]


def test_seed_defaults_create_canary_monitor_delete(ws: FakeWorkspace) -> None:
    manager = _manager(ws)
    # Seed 001's defaults: Standard_DS3_v2, 1 to 5 instances, scale to zero.
    assert manager.create_endpoint("cv-endpoint", "Standard_DS3_v2", 1, 5, True) == "cv-endpoint"
    info = manager.get_endpoint("cv-endpoint")
    assert info.state.ready == "READY"
    assert info.config is not None
    entity = info.config.served_entities[0]
    assert entity.name == "cv_model-1"  # Unity Catalog: the model's last name part
    assert entity.replica_bounds == (1, 5)
    assert entity.scale_to_zero_enabled is True

    manager.update_endpoint("cv-endpoint", "2", traffic_percentage=20)
    info = manager.get_endpoint("cv-endpoint")
    assert info.config is not None
    assert {r.served_model_name: r.traffic_percentage for r in info.config.routes} == {
        "cv_model-1": 80,
        "cv_model-2": 20,
    }
    assert info.config.served_entities[1].replica_bounds == (1, 5)  # copied from the primary

    slow_tail = [10.0] * 76 + [200.0] * 4
    ws.record_traffic("cv-endpoint", "cv_model-1", requests=80, errors_4xx=4,
                      latencies_ms=slow_tail, cpu_percent=35.0, mem_percent=50.0)  # fmt: skip
    ws.record_traffic("cv-endpoint", "cv_model-2", requests=20, errors_5xx=2,
                      latencies_ms=[30.0] * 20)  # fmt: skip
    report = manager.monitor_endpoint("cv-endpoint")
    assert report["state"] == "READY"
    assert report["requests"] == 100
    assert report["error_rate"] == 0.02
    assert report["traffic"] == {"cv_model-1": 80, "cv_model-2": 20}
    canary = report["versions"]["cv_model-2"]
    assert (canary["requests"], canary["error_rate"]) == (20, 0.1)
    assert 25.0 <= canary["latency_ms"]["p95"] <= 50.0  # inside the fake's 25-50 ms bucket
    champion = report["versions"]["cv_model-1"]
    assert champion["latency_ms"]["p50"] <= 10.0
    assert champion["replicas"] >= 1

    with pytest.raises(NotAvailableError, match="no config revisions"):
        manager.rollback_endpoint("cv-endpoint")
    manager.delete_endpoint("cv-endpoint")
    with DatabricksPlatform(ws.url, ws.token) as platform:
        assert "cv-endpoint" not in [e.name for e in platform.list_endpoints()]


def test_rollout_totals_come_from_last_minute_counts(ws: FakeWorkspace) -> None:
    with DatabricksPlatform(ws.url, ws.token, min_poll_s=0.2) as platform:
        platform.create_endpoint(
            {
                "name": "totals",
                "config": {"served_entities": [{"entity_name": MODEL, "entity_version": "1"}]},
            }
        )
        platform.wait_not_updating("totals", timeout=30)
        ws.record_traffic("totals", "cv_model-1", requests=30, errors_5xx=3, latencies_ms=[20.0])
        stats = platform.stats("totals")
        assert stats["metrics_source"] == "databricks"
        figures = stats["served_entities"]["cv_model-1"]
        assert (figures["requests_total"], figures["errors_total"]) == (30, 3)
        assert figures["last_minute"]["basis"] == "last_minute"
        # Seen again within the minute: the same minute is not counted twice.
        again = platform.stats("totals")["served_entities"]["cv_model-1"]
        assert again["requests_total"] == 30
        platform.delete_endpoint("totals")


def test_failed_update_reports_the_build_log_and_old_config_serves(ws: FakeWorkspace) -> None:
    manager = _manager(ws)
    manager.create_endpoint("cv-fails", "Small", 1, 1, False)
    ws.fail_next_update(reason="ERROR: Could not install onnxruntime==0.0.1")
    with pytest.raises(ModelLoadError) as failure:
        manager.update_endpoint("cv-fails", "2", traffic_percentage=100)
    message = str(failure.value)
    assert "served entity 'cv_model-2'" in message
    assert "Could not install onnxruntime==0.0.1" in message
    assert "the previous config, if any, keeps serving" in message
    info = manager.get_endpoint("cv-fails")
    assert info.state.ready == "READY"
    assert info.state.config_update == "UPDATE_FAILED"
    assert info.config is not None
    assert [e.entity_version for e in info.config.served_entities] == ["1"]
    manager.delete_endpoint("cv-fails")


def test_quota_is_reported_quickly_without_hammering(ws: FakeWorkspace) -> None:
    started = time.monotonic()
    with DatabricksPlatform(ws.url, ws.token, timeout=3) as platform:
        big = [
            {"entity_name": MODEL, "entity_version": str(v), "workload_size": "Large",
             "min_replicas": 1, "max_replicas": 2}
            for v in (1, 2)
        ]  # fmt: skip
        # cvdeploy's spec names them catalog_schema_model-N; Databricks gets model-N.
        routes = [{"served_model_name": f"cv_model-{v}", "traffic_percentage": 50} for v in (1, 2)]
        with pytest.raises(RateLimitedError, match="quota"):
            platform.create_endpoint(
                {
                    "name": "big",
                    "config": {"served_entities": big, "traffic_config": {"routes": routes}},
                }
            )
    assert time.monotonic() - started < 10
    posts = [s for m, p, s in _api_calls(ws) if m == "POST"]
    assert 1 <= len(posts) <= 4, posts


def test_wrong_token_is_refused_with_the_reason(ws: FakeWorkspace) -> None:
    with (
        DatabricksPlatform(ws.url, "dapi-wrong") as platform,
        pytest.raises(PermissionDeniedError, match="the token was refused: Invalid access token"),
    ):
        platform.list_endpoints()


def test_refused_names_and_fields_make_no_request(ws: FakeWorkspace) -> None:
    with DatabricksPlatform(ws.url, ws.token) as platform:
        with pytest.raises(ConfigError, match="at most 63"):
            platform.create_endpoint(
                {"name": "x" * 64, "config": {"served_entities": [{"entity_name": MODEL,
                                                                    "entity_version": "1"}]}}
            )  # fmt: skip
        with pytest.raises(ConfigError, match="rate limit of 5 calls per second"):
            platform.create_endpoint(
                {
                    "name": "limited",
                    "config": {
                        "served_entities": [{"entity_name": MODEL, "entity_version": "1"}],
                        "rate_limits": [{"calls": 5, "renewal_period": "second"}],
                    },
                }
            )
    assert _api_calls(ws) == []
