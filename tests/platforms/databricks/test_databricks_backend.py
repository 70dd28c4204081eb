"""The Databricks backend against cvdeploy's own control plane, which speaks the same API.

The seed 001 calls go through ``EndpointManager(platform="databricks")``, so every request is
databricks-sdk's; the platform requires tokens, as a workspace does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import DEMO, DIGITS, digit_b64, fast_options

from cvdeploy.errors import ConfigError, ModelLoadError, NotAvailableError, UnauthenticatedError
from cvdeploy.platforms.base import EndpointAlreadyExistsError, EndpointNotFoundError
from cvdeploy.platforms.databricks import DatabricksPlatform
from cvdeploy.platforms.endpoints import EndpointManager
from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.platforms.local.state import PlatformState
from cvdeploy.registry import Registry

pytest.importorskip("databricks.sdk")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def control_plane(platform_home: Path) -> Iterator[tuple[str, str]]:
    manage = PlatformState(platform_home / "platform.db").create_token("manage", "dbx test")
    with PlatformServer(fast_options(platform_home)) as server:
        yield server.url, manage


def _manager(control_plane: tuple[str, str], version: str = "1") -> EndpointManager:
    url, token = control_plane
    return EndpointManager(
        "cv_model", version, workspace_url=url, token=token, platform="databricks", timeout=120
    )


def test_seed_calls_create_canary_monitor_predict_delete(control_plane: tuple[str, str]) -> None:
    manager = _manager(control_plane)
    assert manager.platform == "databricks"
    with manager.connect() as platform:
        assert isinstance(platform, DatabricksPlatform)

    assert manager.create_endpoint("dbx-seed", "Small", 1, 1, False) == "dbx-seed"
    first = manager.predict(DEMO / "images" / "digit_6.png")
    assert isinstance(first, dict)
    assert first["classes"][0]["label"] == "6"

    manager.update_endpoint("dbx-seed", "2", traffic_percentage=20)
    info = manager.get_endpoint("dbx-seed")
    assert info.config is not None
    assert {r.served_model_name: r.traffic_percentage for r in info.config.routes} == {
        "cv_model-1": 80,
        "cv_model-2": 20,
    }

    images = [DEMO / "images" / f"digit_{n}.png" for n in range(10)]
    answers = manager.predict(images)
    assert isinstance(answers, list)
    assert [a["classes"][0]["label"] for a in answers] == [str(n) for n in range(10)]

    # cvdeploy's control plane exports its gateway's cumulative counters; the backend reads
    # them (the first look covers the counters' whole life).
    report = manager.monitor_endpoint("dbx-seed")
    assert report["state"] == "READY"
    assert report["config_update"] == "NOT_UPDATING"
    assert report["traffic"] == {"cv_model-1": 80, "cv_model-2": 20}
    assert report["requests"] >= 2  # one single-image request, one of ten images
    assert report["error_rate"] == 0.0
    assert report["latency_ms"]["p95"] > 0
    assert sum(v["requests"] for v in report["versions"].values()) == report["requests"]
    assert report["replicas"] == 2

    with pytest.raises(NotAvailableError, match="no config revisions"):
        manager.rollback_endpoint("dbx-seed")

    manager.delete_endpoint("dbx-seed")
    with pytest.raises(EndpointNotFoundError, match="dbx-seed"):
        manager.get_endpoint("dbx-seed")


def test_platform_methods_query_metrics_logs_and_totals(control_plane: tuple[str, str]) -> None:
    url, token = control_plane
    with DatabricksPlatform(url, token, min_poll_s=0.5) as platform:
        spec = {
            "name": "dbx-direct",
            "config": {"served_entities": [{"entity_name": "cv_model", "entity_version": "1"}]},
        }
        created = platform.create_endpoint(spec)
        assert created.name == "dbx-direct"
        with pytest.raises(EndpointAlreadyExistsError):
            platform.create_endpoint(spec)
        ready = platform.wait_not_updating("dbx-direct", timeout=120)
        assert ready.state.ready == "READY"
        assert "dbx-direct" in [e.name for e in platform.list_endpoints()]

        split = {"columns": ["image"], "data": [[digit_b64(2)]]}
        answer = platform.query("dbx-direct", {"dataframe_split": split})
        assert answer["predictions"][0]["classes"][0]["label"] == "2"
        with_params = platform.query(
            "dbx-direct", {"inputs": [digit_b64(4)], "params": {"top_k": 1}}
        )
        assert len(with_params["predictions"][0]["classes"]) == 1

        before = platform.stats("dbx-direct")
        entity = before["served_entities"]["cv_model-1"]
        assert before["metrics_source"] == "cvdeploy"
        platform.predict_images("dbx-direct", [(DEMO / "images" / "digit_1.png").read_bytes()])
        after = platform.stats("dbx-direct")["served_entities"]["cv_model-1"]
        # cvdeploy's counters are cumulative, so the totals are exact and the window is the
        # time since the previous look.
        assert after["requests_total"] == entity["requests_total"] + 1
        assert after["last_minute"]["basis"] == "since_last_look"
        assert after["last_minute"]["requests"] == 1

        assert "cvdeploy_endpoint_requests_total" in platform.metrics("dbx-direct")
        assert "starting" in platform.logs("dbx-direct", "cv_model-1")
        platform.delete_endpoint("dbx-direct")


def test_failed_update_surfaces_build_logs_and_old_config_serves(
    control_plane: tuple[str, str], platform_home: Path
) -> None:
    registry = Registry(home=platform_home)
    broken = registry.register(DIGITS, "cv_broken")
    registry.model_path("cv_broken", broken.version).write_bytes(b"not an onnx model")
    url, token = control_plane
    with DatabricksPlatform(url, token, min_poll_s=0.5) as platform:
        platform.create_endpoint(
            {
                "name": "dbx-fails",
                "config": {"served_entities": [{"entity_name": "cv_model", "entity_version": "1"}]},
            }
        )
        platform.wait_not_updating("dbx-fails", timeout=120)
        platform.update_config(
            "dbx-fails",
            {"served_entities": [{"entity_name": "cv_broken", "entity_version": broken.version}]},
        )
        with pytest.raises(ModelLoadError) as failure:
            platform.wait_not_updating("dbx-fails", timeout=120)
        message = str(failure.value)
        assert "the previous config, if any, keeps serving" in message
        assert f"cv_broken-{broken.version}" in message
        assert "build logs" in message
        # The old version still answers.
        answer = platform.query("dbx-fails", {"inputs": [digit_b64(7)]})
        assert answer["predictions"][0]["classes"][0]["label"] == "7"
        platform.delete_endpoint("dbx-fails")


def test_wrong_token_is_refused_quickly(control_plane: tuple[str, str]) -> None:
    url, _ = control_plane
    started = time.monotonic()
    with (
        DatabricksPlatform(url, "cvd_0000000000000000_wrong") as platform,
        pytest.raises(UnauthenticatedError, match="the token was refused") as refused,
    ):
        platform.list_endpoints()
    assert url in str(refused.value)
    assert time.monotonic() - started < 10


def test_bad_names_and_unsupported_fields_fail_before_any_call(
    control_plane: tuple[str, str],
) -> None:
    url, token = control_plane
    with DatabricksPlatform(url, token) as platform:
        with pytest.raises(ConfigError, match=r"characters Databricks refuses \('\.'\)"):
            platform.get_endpoint("my.endpoint")
        with pytest.raises(ConfigError, match="batching is not supported on Databricks"):
            platform.create_endpoint(
                {
                    "name": "dbx-batching",
                    "config": {
                        "served_entities": [
                            {
                                "entity_name": "cv_model",
                                "entity_version": "1",
                                "batching": {"max_batch_size": 8},
                            }
                        ]
                    },
                }
            )
        # Nothing was created: the refusals came before any request.
        assert "dbx-batching" not in [e.name for e in platform.list_endpoints()]


def test_replica_bounds_reach_the_control_plane_as_provisioned_concurrency(
    control_plane: tuple[str, str],
) -> None:
    manager = _manager(control_plane)
    try:
        manager.create_endpoint("dbx-scaled", "Small", 1, 3, True)
        info = manager.get_endpoint("dbx-scaled")
        assert info.config is not None
        assert info.config.served_entities[0].replica_bounds == (1, 3)
    finally:
        with contextlib.suppress(EndpointNotFoundError):
            manager.delete_endpoint("dbx-scaled")
