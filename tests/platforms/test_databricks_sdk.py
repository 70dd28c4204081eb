"""``databricks-sdk`` drives the local platform unchanged: the control plane speaks Databricks."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import digit_b64, fast_options

from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.platforms.local.state import PlatformState

serving = pytest.importorskip("databricks.sdk.service.serving")
sdk = pytest.importorskip("databricks.sdk")
sdk_errors = pytest.importorskip("databricks.sdk.errors")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(platform_home: Path) -> Iterator[tuple[object, str]]:
    # Tokens exist, so the platform requires them, as a workspace does.
    manage = PlatformState(platform_home / "platform.db").create_token("manage", "sdk test")
    with PlatformServer(fast_options(platform_home)) as server:
        client = sdk.WorkspaceClient(host=server.url, token=manage)
        yield client, server.url


def _entity(version: str) -> object:
    return serving.ServedEntityInput(
        entity_name="cv_model",
        entity_version=version,
        workload_size="Small",
        scale_to_zero_enabled=False,
    )


def test_create_update_get_query_and_export_metrics(workspace: tuple[object, str]) -> None:
    w, _ = workspace
    endpoints = w.serving_endpoints  # type: ignore[attr-defined]
    created = endpoints.create_and_wait(
        name="sdk-digits",
        config=serving.EndpointCoreConfigInput(name="sdk-digits", served_entities=[_entity("1")]),
    )
    assert created.state.ready == serving.EndpointStateReady.READY
    assert created.state.config_update == serving.EndpointStateConfigUpdate.NOT_UPDATING

    answer = endpoints.query(name="sdk-digits", inputs=[digit_b64(6)])
    assert answer.predictions[0]["classes"][0]["label"] == "6"
    # dataframe_split, the MLflow pandas format, carries the same base64 image.
    split = serving.DataframeSplitInput(columns=["image"], data=[[digit_b64(2)]])
    assert (
        endpoints.query(name="sdk-digits", dataframe_split=split).predictions[0]["classes"][0][
            "label"
        ]
        == "2"
    )

    updated = endpoints.update_config_and_wait(
        name="sdk-digits",
        served_entities=[_entity("1"), _entity("2")],
        traffic_config=serving.TrafficConfig(
            routes=[
                serving.Route(served_model_name="cv_model-1", traffic_percentage=50),
                serving.Route(served_model_name="cv_model-2", traffic_percentage=50),
            ]
        ),
    )
    assert {e.entity_version for e in updated.config.served_entities} == {"1", "2"}

    got = endpoints.get(name="sdk-digits")
    assert [r.traffic_percentage for r in got.config.traffic_config.routes] == [50, 50]
    assert got.state.ready == serving.EndpointStateReady.READY

    exported = endpoints.export_metrics(name="sdk-digits")
    text = exported.contents.read().decode()
    assert 'endpoint="sdk-digits"' in text
    assert "cvdeploy_endpoint_requests_total" in text

    logs = endpoints.logs(name="sdk-digits", served_model_name="cv_model-2")
    assert "starting" in logs.logs
    assert "sdk-digits" in [e.name for e in endpoints.list()]
    endpoints.delete(name="sdk-digits")


def test_sdk_errors_map_to_its_exceptions(workspace: tuple[object, str]) -> None:
    w, url = workspace
    endpoints = w.serving_endpoints  # type: ignore[attr-defined]
    with pytest.raises(sdk_errors.NotFound):
        endpoints.get(name="missing")
    with pytest.raises(sdk_errors.InvalidParameterValue, match="ghost"):
        endpoints.create(
            name="bad",
            config=serving.EndpointCoreConfigInput(
                name="bad",
                served_entities=[_entity("1")],
                traffic_config=serving.TrafficConfig(
                    routes=[serving.Route(served_model_name="ghost", traffic_percentage=100)]
                ),
            ),
        )
    anonymous = sdk.WorkspaceClient(host=url, token="cvd_0000000000000000_wrong")
    with pytest.raises(sdk_errors.Unauthenticated):
        anonymous.serving_endpoints.list()
    _ = base64  # the images travel base64, as Databricks expects
