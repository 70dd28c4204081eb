"""The endpoint spec: Databricks' serving-endpoints JSON, and the messages for bad specs."""

from __future__ import annotations

from typing import Any

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointSpec, Platform


def entity(version: int | str, **extra: Any) -> dict[str, Any]:
    return {"entity_name": "cv_model", "entity_version": version, **extra}


def spec(*entities: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"served_entities": list(entities)}
    if routes is not None:
        config["traffic_config"] = {"routes": routes}
    return {"name": "detector", "config": config}


def route(name: str, pct: int) -> dict[str, Any]:
    return {"served_model_name": name, "traffic_percentage": pct}


def error_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        EndpointSpec.parse(data)
    assert info.value.status_code == 400
    return info.value


def test_databricks_body_round_trips_with_field_names_unchanged() -> None:
    body = spec(
        entity(
            "1",
            name="v1",
            workload_size="Medium",
            workload_type="GPU_SMALL",
            scale_to_zero_enabled=True,
        ),
        entity("2", name="v2"),
        routes=[route("v1", 90), route("v2", 10)],
    )
    parsed = EndpointSpec.parse(body)
    out = parsed.model_dump(mode="json")
    first = out["config"]["served_entities"][0]
    assert first["entity_name"] == "cv_model"
    assert first["entity_version"] == "1"
    assert first["workload_size"] == "Medium"
    assert first["workload_type"] == "GPU_SMALL"
    assert first["scale_to_zero_enabled"] is True
    assert out["config"]["traffic_config"]["routes"] == [route("v1", 90), route("v2", 10)]
    assert EndpointSpec.parse(out) == parsed


def test_served_entity_name_defaults_to_entity_name_dash_version() -> None:
    parsed = EndpointSpec.parse(spec(entity(3)))
    assert parsed.config.served_entities[0].name == "cv_model-3"
    assert parsed.config.served_entities[0].entity_version == "3"


def test_missing_traffic_config_with_one_entity_sends_it_all_traffic() -> None:
    parsed = EndpointSpec.parse(spec(entity(1)))
    assert [(r.served_model_name, r.traffic_percentage) for r in parsed.config.routes] == [
        ("cv_model-1", 100)
    ]


def test_missing_traffic_config_with_two_entities_is_refused() -> None:
    err = error_of(spec(entity(1), entity(2)))
    assert "traffic_config is required with 2 served entities" in err.message


def test_routes_summing_to_90_name_the_sum() -> None:
    err = error_of(
        spec(entity(1), entity(2), routes=[route("cv_model-1", 80), route("cv_model-2", 10)])
    )
    assert "traffic routes sum to 90, not 100" in err.message


def test_route_naming_a_missing_entity_lists_the_existing_ones() -> None:
    err = error_of(
        spec(entity(1), entity(2), routes=[route("cv_model-1", 50), route("cv_model-3", 50)])
    )
    assert "route names 'cv_model-3' but served entities are: cv_model-1, cv_model-2" in (
        err.message
    )


def test_route_accepts_served_entity_name() -> None:
    body = spec(
        entity(1),
        entity(2),
        routes=[
            {"served_entity_name": "cv_model-1", "traffic_percentage": 25},
            {"served_entity_name": "cv_model-2", "traffic_percentage": 75},
        ],
    )
    routes = EndpointSpec.parse(body).config.routes
    assert [(r.served_model_name, r.traffic_percentage) for r in routes] == [
        ("cv_model-1", 25),
        ("cv_model-2", 75),
    ]


def test_route_with_two_different_names_is_refused() -> None:
    bad = {"served_model_name": "a", "served_entity_name": "b", "traffic_percentage": 100}
    err = error_of(spec(entity(1), routes=[bad]))
    assert "served_model_name 'a' and served_entity_name 'b'" in err.message


def test_duplicate_served_entity_names_are_refused() -> None:
    err = error_of(spec(entity(1), entity(1), routes=[route("cv_model-1", 100)]))
    assert "served entity names must be unique; cv_model-1 appears more than once" in err.message


def test_route_naming_an_entity_twice_is_refused() -> None:
    err = error_of(
        spec(entity(1), entity(2), routes=[route("cv_model-1", 50), route("cv_model-1", 50)])
    )
    assert "traffic routes name a served entity twice: cv_model-1, cv_model-1" in err.message


def test_min_replicas_above_max_replicas_names_both() -> None:
    err = error_of(spec(entity(1, min_replicas=5, max_replicas=2)))
    assert "min_replicas (5) is greater than max_replicas (2)" in err.message
    assert err.status_code == 400


def test_zero_min_replicas_needs_scale_to_zero() -> None:
    err = error_of(spec(entity(1, min_replicas=0)))
    assert "min_replicas 0 needs scale_to_zero_enabled: true" in err.message
    ok = EndpointSpec.parse(spec(entity(1, min_replicas=0, scale_to_zero_enabled=True)))
    assert ok.config.served_entities[0].replica_bounds == (0, 1)


def test_replica_bounds_default_max_to_min() -> None:
    parsed = EndpointSpec.parse(spec(entity(1, min_replicas=3)))
    assert parsed.config.served_entities[0].replica_bounds == (3, 3)


def test_misspelt_extension_field_is_refused_by_name() -> None:
    err = error_of(spec(entity(1, max_replica=3)))
    assert "max_replica" in err.message


def test_unknown_workload_size_is_refused() -> None:
    err = error_of(spec(entity(1, workload_size="Huge")))
    assert "workload_size" in err.message


def test_batching_is_validated_as_the_batching_section() -> None:
    err = error_of(spec(entity(1, batching={"max_batch_size": 0})))
    assert "batching: max_batch_size" in err.message
    parsed = EndpointSpec.parse(spec(entity(1, batching={"max_batch_size": 4})))
    batching = parsed.config.served_entities[0].batching
    assert batching is not None
    assert batching["max_batch_size"] == 4


def test_endpoint_name_with_a_slash_is_refused() -> None:
    err = error_of({**spec(entity(1)), "name": "a/b"})
    assert "endpoint.name" in err.message


def test_update_body_parses_as_core_config() -> None:
    config = EndpointCoreConfig.parse({"served_entities": [entity(7)]})
    assert config.routes[0].served_model_name == "cv_model-7"
    with pytest.raises(ConfigError, match="traffic routes sum to 50, not 100"):
        EndpointCoreConfig.parse(
            {
                "served_entities": [entity(7)],
                "traffic_config": {"routes": [route("cv_model-7", 50)]},
            }
        )


def test_platform_is_abstract_over_the_control_plane_operations() -> None:
    assert Platform.__abstractmethods__ == {
        "create_endpoint",
        "get_endpoint",
        "list_endpoints",
        "update_config",
        "delete_endpoint",
        "wait_not_updating",
        "stats",
        "query",
        "metrics",
        "logs",
    }


def test_a_platform_without_revisions_says_so_on_rollback() -> None:
    from cvdeploy.errors import NotAvailableError
    from cvdeploy.platforms.client import PlatformClient

    assert issubclass(PlatformClient, Platform)

    class NoRevisions(PlatformClient):
        kind = "somewhere"
        rollback = Platform.rollback

    with (
        NoRevisions("http://127.0.0.1:9") as client,
        pytest.raises(NotAvailableError, match="somewhere keeps no config revisions"),
    ):
        client.rollback("ep")


def test_unity_catalog_entity_name_gets_databricks_default_name() -> None:
    body = spec({"entity_name": "main.models.cv_model", "entity_version": "2"})
    assert EndpointSpec.parse(body).config.served_entities[0].name == "cv_model-2"


def test_entity_name_that_cannot_make_a_default_name_asks_for_one() -> None:
    err = error_of(spec({"entity_name": "my model", "entity_version": "1"}))
    assert "set 'name' on this served entity" in err.message


def test_databricks_provisioned_concurrency_becomes_replicas() -> None:
    def bounds(**fields):
        body = spec({"entity_name": "cv_model", "entity_version": "1", **fields})
        served = EndpointSpec.parse(body).config.served_entities[0]
        return served.workload_size, served.replica_bounds

    assert bounds(min_provisioned_concurrency=4, max_provisioned_concurrency=12) == (
        "Small",
        (1, 3),
    )
    # 16..64 is one to four Medium replicas (64 does not divide 16).
    assert bounds(min_provisioned_concurrency=16, max_provisioned_concurrency=64) == (
        "Medium",
        (1, 4),
    )
    assert bounds(
        min_provisioned_concurrency=0, max_provisioned_concurrency=8, scale_to_zero_enabled=True
    ) == ("Small", (0, 2))
    with pytest.raises(ConfigError, match="not both"):
        EndpointSpec.parse(
            spec(
                {
                    "entity_name": "cv_model",
                    "entity_version": "1",
                    "min_replicas": 1,
                    "max_provisioned_concurrency": 8,
                }
            )
        )
    with pytest.raises(ConfigError, match="greater than"):
        EndpointSpec.parse(
            spec(
                {
                    "entity_name": "cv_model",
                    "entity_version": "1",
                    "min_provisioned_concurrency": 8,
                    "max_provisioned_concurrency": 4,
                }
            )
        )
