"""The pure rule that turns ``update --model M --version V --traffic N`` into a config."""

from __future__ import annotations

from typing import Any

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.base import EndpointCoreConfig
from cvdeploy.platforms.traffic import entity_name_for, next_config


def config(*entities: tuple[str, str, int], **settings: Any) -> EndpointCoreConfig:
    """A config of ``(model, version, percent)`` entities sharing ``settings``."""
    return EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": m, "entity_version": v, **settings} for m, v, _ in entities
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": f"{m}-{v}", "traffic_percentage": p}
                    for m, v, p in entities
                ]
            },
        }
    )


def split(cfg: EndpointCoreConfig) -> dict[str, int]:
    return {r.served_model_name: r.traffic_percentage for r in cfg.routes}


def test_canary_gets_ten_percent_and_the_primary_keeps_ninety():
    new = next_config(config(("digits", "1", 100)), "digits", "2", 10)
    assert split(new) == {"digits-1": 90, "digits-2": 10}
    assert [e.name for e in new.served_entities] == ["digits-1", "digits-2"]


def test_new_entity_copies_the_primary_replica_settings():
    current = config(
        ("digits", "1", 100),
        min_replicas=2,
        max_replicas=5,
        workload_size="Medium",
        batching={"max_batch_size": 4},
    )
    new = next_config(current, "digits", "2", 25)
    old, added = new.served_entities
    assert added.replica_bounds == (2, 5)
    assert added.workload_size == "Medium"
    assert added.batching == old.batching
    assert (added.entity_name, added.entity_version) == ("digits", "2")


def test_full_traffic_replaces_every_old_entity():
    current = config(("digits", "1", 90), ("digits", "2", 10))
    new = next_config(current, "digits", "3", 100)
    assert split(new) == {"digits-3": 100}
    assert [e.entity_version for e in new.served_entities] == ["3"]


def test_served_version_only_changes_the_split():
    current = config(("digits", "1", 90), ("digits", "2", 10), min_replicas=3)
    new = next_config(current, "digits", "2", 50)
    assert split(new) == {"digits-1": 50, "digits-2": 50}
    assert new.served_entities == current.served_entities


def test_promoting_a_served_canary_drops_the_old_version():
    current = config(("digits", "1", 90), ("digits", "2", 10))
    new = next_config(current, "digits", "2", 100)
    assert split(new) == {"digits-2": 100}


def test_zero_for_a_served_canary_sends_everything_back_to_the_primary():
    current = config(("digits", "1", 90), ("digits", "2", 10))
    new = next_config(current, "digits", "2", 0)
    assert split(new) == {"digits-1": 100}


def test_zero_for_a_new_version_is_refused():
    with pytest.raises(ConfigError, match="0% traffic"):
        next_config(config(("digits", "1", 100)), "digits", "2", 0)


def test_remainder_goes_to_the_entity_with_most_traffic_and_the_rest_are_dropped():
    current = config(("digits", "1", 20), ("digits", "2", 70), ("digits", "3", 10))
    new = next_config(current, "digits", "4", 30)
    assert split(new) == {"digits-2": 70, "digits-4": 30}


def test_tie_goes_to_the_entity_listed_first():
    current = config(("digits", "1", 50), ("digits", "2", 50))
    new = next_config(current, "digits", "3", 10)
    assert split(new) == {"digits-1": 90, "digits-3": 10}


def test_receiver_keeps_its_own_settings_when_a_served_entity_grows():
    current = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": "digits", "entity_version": "1", "min_replicas": 4},
                {"entity_name": "digits", "entity_version": "2", "min_replicas": 1},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "digits-1", "traffic_percentage": 80},
                    {"served_model_name": "digits-2", "traffic_percentage": 20},
                ]
            },
        }
    )
    new = next_config(current, "digits", "2", 60)
    bounds = {e.name: e.replica_bounds for e in new.served_entities}
    assert bounds == {"digits-1": (4, 4), "digits-2": (1, 1)}


def test_only_entity_cannot_give_away_a_share():
    with pytest.raises(ConfigError, match="only served entity"):
        next_config(config(("digits", "1", 100)), "digits", "1", 50)


def test_only_entity_at_full_traffic_is_unchanged():
    current = config(("digits", "1", 100))
    assert next_config(current, "digits", "1", 100) == current


@pytest.mark.parametrize("bad", [-1, 101, True])
def test_percentage_out_of_range_is_refused(bad: int):
    with pytest.raises(ConfigError, match="0 to 100"):
        next_config(config(("digits", "1", 100)), "digits", "2", bad)


def test_taken_default_name_is_refused():
    current = EndpointCoreConfig.parse(
        {"served_entities": [{"name": "digits-2", "entity_name": "digits", "entity_version": "1"}]}
    )
    with pytest.raises(ConfigError, match="already used"):
        next_config(current, "digits", "2", 10)


def test_unity_catalog_names_get_databricks_default_entity_name():
    new = next_config(config(("digits", "1", 100)), "main.cv.digits", "2", 10)
    assert entity_name_for("main.cv.digits", "2") == "digits-2"
    assert split(new) == {"digits-1": 90, "digits-2": 10}
    # Two models whose last parts agree would share a default name: refused, with the fix.
    with pytest.raises(ConfigError, match="already used"):
        next_config(new, "other.cv.digits", "2", 10)


def test_invalid_model_name_is_a_config_error():
    with pytest.raises(ConfigError):
        next_config(config(("digits", "1", 100)), "x" * 80, "2", 10)


def test_fallback_rate_limits_and_instance_type_survive_a_version_change():
    current = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": "m", "entity_version": "1", "instance_type": "cpu-2"},
                {"entity_name": "m", "entity_version": "0", "name": "backup"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "m-1", "traffic_percentage": 100},
                    {"served_model_name": "backup", "traffic_percentage": 0},
                ]
            },
            "fallback_served_entity": "backup",
            "rate_limits": [{"calls": 5, "renewal_period": "second"}],
        }
    )
    canary = next_config(current, "m", "2", 10)
    assert split(canary) == {"m-1": 90, "m-2": 10, "backup": 0}
    assert canary.fallback_served_entity == "backup"
    assert canary.rate_limits == current.rate_limits
    assert canary.served_entities[1].instance_type == "cpu-2"
    replaced = next_config(canary, "m", "2", 100)
    assert split(replaced) == {"m-2": 100, "backup": 0}
    assert replaced.fallback_served_entity == "backup"
