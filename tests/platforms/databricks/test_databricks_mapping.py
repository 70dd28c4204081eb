"""The seed's arguments and cvdeploy's spec as Databricks' serving-endpoints JSON, and back."""

from __future__ import annotations

from typing import Any

import pytest

from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointSpec, ServedEntity
from cvdeploy.platforms.databricks.mapping import (
    config_to_databricks,
    databricks_entity_name,
    entity_from_databricks,
    entity_to_databricks,
    info_from_databricks,
    replicas_from_concurrency,
    spec_to_databricks,
    validate_endpoint_name,
)

serving = pytest.importorskip("databricks.sdk.service.serving")


def _entity(**fields: Any) -> ServedEntity:
    return ServedEntity.model_validate({"entity_name": "cv_model", "entity_version": "1", **fields})


@pytest.mark.parametrize("name", ["a", "digits-prod_2", "x" * 63])
def test_valid_endpoint_names_pass(name: str) -> None:
    assert validate_endpoint_name(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "endpoint name is required"),
        ("x" * 64, "has 64 characters; Databricks allows at most 63"),
        ("my.endpoint", r"characters Databricks refuses \('\.'\)"),
        ("has space/slash", r"\(' ', '/'\)"),
        ("café", r"\('é'\)"),
    ],
)
def test_invalid_endpoint_names_name_the_problem(name: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        validate_endpoint_name(name)


def test_seed_instance_type_becomes_workload_type_and_size() -> None:
    body = entity_to_databricks(_entity(instance_type="Standard_DS3_v2"))
    assert body["workload_type"] == "CPU"
    assert body["workload_size"] == "Small"
    gpu = entity_to_databricks(_entity(instance_type="g4dn.xlarge"))
    assert gpu["workload_type"] == "GPU_SMALL"


def test_seed_min_max_instances_become_provisioned_concurrency() -> None:
    # Seed 001's defaults: Standard_DS3_v2 (Small, 4 requests per replica), 1 to 5 instances.
    body = entity_to_databricks(
        _entity(instance_type="Standard_DS3_v2", min_replicas=1, max_replicas=5,
                scale_to_zero_enabled=True)
    )  # fmt: skip
    assert body == {
        "name": "cv_model-1",
        "entity_name": "cv_model",
        "entity_version": "1",
        "workload_type": "CPU",
        "scale_to_zero_enabled": True,
        "min_provisioned_concurrency": 4,
        "max_provisioned_concurrency": 20,
    }
    medium = entity_to_databricks(_entity(workload_size="Medium", min_replicas=2, max_replicas=4))
    assert (medium["min_provisioned_concurrency"], medium["max_provisioned_concurrency"]) == (
        32,
        64,
    )
    assert "workload_size" not in medium  # Databricks takes one or the other


def test_one_replica_sends_the_workload_size_alone() -> None:
    body = entity_to_databricks(_entity(workload_size="Large", min_replicas=1, max_replicas=1))
    assert body["workload_size"] == "Large"
    assert "min_provisioned_concurrency" not in body


def test_scale_to_zero_with_zero_minimum() -> None:
    body = entity_to_databricks(_entity(scale_to_zero_enabled=True, min_replicas=0, max_replicas=2))
    assert body["scale_to_zero_enabled"] is True
    assert (body["min_provisioned_concurrency"], body["max_provisioned_concurrency"]) == (0, 8)


def test_provisioned_concurrency_is_a_multiple_of_four() -> None:
    for size in ("Small", "Medium", "Large"):
        for low, high in ((0, 1), (1, 3), (2, 7)):
            entity = _entity(workload_size=size, min_replicas=low, max_replicas=high,
                             scale_to_zero_enabled=True)  # fmt: skip
            body = entity_to_databricks(entity)
            assert body["min_provisioned_concurrency"] % 4 == 0
            assert body["max_provisioned_concurrency"] % 4 == 0


def test_batching_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="'cv_model-1': batching is not supported on Databricks"):
        entity_to_databricks(_entity(batching={"max_batch_size": 8}))


def test_instance_type_contradicting_an_explicit_workload_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"instance_type g4dn\.xlarge means workload_type GPU_SMALL"
    ):
        entity_to_databricks(_entity(instance_type="g4dn.xlarge", workload_type="CPU"))


def test_fallback_entity_is_refused_naming_the_field() -> None:
    config = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": "cv_model", "entity_version": "1"},
                {"entity_name": "cv_model", "entity_version": "2"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "cv_model-1", "traffic_percentage": 100},
                    {"served_model_name": "cv_model-2", "traffic_percentage": 0},
                ]
            },
            "fallback_served_entity": "cv_model-2",
        }
    )
    with pytest.raises(ConfigError, match=r"fallback_served_entity .* not supported on Databricks"):
        config_to_databricks(config)


def test_rate_limits_per_minute_pass_and_per_second_are_refused() -> None:
    entities = [{"entity_name": "cv_model", "entity_version": "1"}]
    minute = EndpointCoreConfig.parse(
        {"served_entities": entities, "rate_limits": [{"calls": 600, "renewal_period": "minute"}]}
    )
    assert config_to_databricks(minute).rate_limits == [
        {"calls": 600, "key": "endpoint", "renewal_period": "minute"}
    ]
    second = EndpointCoreConfig.parse(
        {"served_entities": entities, "rate_limits": [{"calls": 10, "renewal_period": "second"}]}
    )
    with pytest.raises(ConfigError, match="give 600 calls per minute instead"):
        config_to_databricks(second)


def test_traffic_percentage_becomes_routes() -> None:
    config = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": "cv_model", "entity_version": "1"},
                {"entity_name": "cv_model", "entity_version": "2"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "cv_model-1", "traffic_percentage": 80},
                    {"served_model_name": "cv_model-2", "traffic_percentage": 20},
                ]
            },
        }
    )
    body = config_to_databricks(config).config
    assert body["traffic_config"] == {
        "routes": [
            {"served_model_name": "cv_model-1", "traffic_percentage": 80},
            {"served_model_name": "cv_model-2", "traffic_percentage": 20},
        ]
    }


def test_unity_catalog_names_get_databricks_default_entity_name() -> None:
    spec = EndpointSpec.parse(
        {
            "name": "uc-digits",
            "config": {
                "served_entities": [
                    {"entity_name": "main.vision.digits", "entity_version": "3"},
                    {"entity_name": "main.vision.digits", "entity_version": "4"},
                ],
                "traffic_config": {
                    "routes": [
                        {"served_model_name": "digits-3", "traffic_percentage": 90},
                        {"served_model_name": "digits-4", "traffic_percentage": 10},
                    ]
                },
            },
        }
    )
    name, body = spec_to_databricks(spec)
    assert name == "uc-digits"
    assert [e["name"] for e in body.config["served_entities"]] == ["digits-3", "digits-4"]
    assert [r["served_model_name"] for r in body.config["traffic_config"]["routes"]] == [
        "digits-3",
        "digits-4",
    ]
    assert body.config["served_entities"][0]["entity_name"] == "main.vision.digits"


def test_a_chosen_entity_name_is_kept() -> None:
    entity = _entity(entity_name="main.vision.digits", name="champion")
    assert databricks_entity_name(entity) == "champion"


def test_bodies_survive_the_sdk_dataclasses_unchanged() -> None:
    # Whatever from_dict does not know would be dropped on the way out: nothing may be.
    entity = _entity(instance_type="Standard_DS3_v2", min_replicas=1, max_replicas=5)
    body = entity_to_databricks(entity)
    assert serving.ServedEntityInput.from_dict(body).as_dict() == body
    small = entity_to_databricks(_entity())
    assert serving.ServedEntityInput.from_dict(small).as_dict() == small
    routes = {"routes": [{"served_model_name": "cv_model-1", "traffic_percentage": 100}]}
    assert serving.TrafficConfig.from_dict(routes).as_dict() == routes


@pytest.mark.parametrize(
    ("low", "high", "size", "to_zero", "expected"),
    [
        (4, 20, "Small", False, ("Small", 1, 5)),
        (32, 64, "Medium", False, ("Medium", 2, 4)),
        (0, 8, "Small", True, ("Small", 0, 2)),
        (8, 16, "Large", False, ("Small", 2, 4)),  # 64 does not divide 8 or 16
        (32, 48, None, False, ("Medium", 2, 3)),  # no size echoed: the largest that fits
        (4, 4, None, False, ("Small", 1, 1)),
        (0, 4, None, False, ("Small", 1, 1)),  # no zero minimum without scale to zero
    ],
)
def test_provisioned_concurrency_back_to_replicas(
    low: int, high: int, size: str | None, to_zero: bool, expected: tuple[str, int, int]
) -> None:
    assert replicas_from_concurrency(low, high, size, to_zero) == expected


def test_round_trip_keeps_replica_bounds() -> None:
    entity = _entity(workload_size="Medium", min_replicas=2, max_replicas=3)
    back = ServedEntity.model_validate(entity_from_databricks(entity_to_databricks(entity)))
    assert back.replica_bounds == (2, 3)
    assert back.workload_size == "Medium"


def _detailed(**extra: Any) -> dict[str, Any]:
    return {
        "name": "digits",
        "creator": "someone@example.com",
        "creation_timestamp": 1_700_000_000_000,
        "config": {
            "served_entities": [
                {
                    "name": "cv_model-1",
                    "entity_name": "cv_model",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "workload_type": "CPU",
                    "scale_to_zero_enabled": True,
                    "state": {"deployment": "DEPLOYMENT_READY"},
                    "creator": "someone@example.com",
                }
            ],
            "traffic_config": {
                "routes": [
                    {
                        "served_model_name": "cv_model-1",
                        "served_entity_name": "cv_model-1",
                        "traffic_percentage": 100,
                    }
                ]
            },
            "config_version": 3,
        },
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "permission_level": "CAN_MANAGE",
        **extra,
    }


def test_databricks_endpoint_becomes_endpoint_info_keeping_known_fields() -> None:
    info = info_from_databricks(_detailed())
    assert info.name == "digits"
    assert info.creator == "someone@example.com"
    assert info.last_updated_timestamp == 1_700_000_000_000
    assert info.config is not None
    entity = info.config.served_entities[0]
    assert (entity.entity_name, entity.entity_version, entity.scale_to_zero_enabled) == (
        "cv_model",
        "1",
        True,
    )
    assert info.state.ready == "READY"


def test_cancelled_update_reads_as_failed() -> None:
    info = info_from_databricks(
        _detailed(state={"ready": "READY", "config_update": "UPDATE_CANCELED"})
    )
    assert info.state.config_update == "UPDATE_FAILED"


def test_legacy_served_models_are_read() -> None:
    data = _detailed()
    data["config"] = {
        "served_models": [{"name": "m-2", "model_name": "m", "model_version": "2"}],
    }
    info = info_from_databricks(data)
    assert info.config is not None
    assert info.config.served_entities[0].entity_version == "2"


def test_external_models_are_refused_with_a_reason() -> None:
    data = _detailed()
    data["config"]["served_entities"][0]["external_model"] = {"name": "gpt", "provider": "openai"}
    with pytest.raises(CVDeployError, match="external or foundation model"):
        info_from_databricks(data)


def test_unknown_workload_type_is_named() -> None:
    data = _detailed()
    data["config"]["served_entities"][0]["workload_type"] = "GPU_XLARGE_8"
    with pytest.raises(CVDeployError, match="workload type GPU_XLARGE_8"):
        info_from_databricks(data)


def test_docs_page_states_the_concurrency_and_every_refused_field() -> None:
    from pathlib import Path

    from cvdeploy.platforms.databricks.mapping import CONCURRENCY_PER_REPLICA

    page = (Path(__file__).resolve().parents[3] / "docs" / "databricks.md").read_text()
    sizes = ", ".join(f"{size} {n}" for size, n in CONCURRENCY_PER_REPLICA.items())
    assert sizes in page
    for field in ("batching", "fallback_served_entity", "rate_limits", "instance_type"):
        assert f"| `{field}`" in page, field
