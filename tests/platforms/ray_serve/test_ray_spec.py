"""The endpoint spec as Ray Serve options (no cluster), and Ray's absence."""

from __future__ import annotations

import builtins
from collections import Counter
from typing import Any

import pytest

from cvdeploy.errors import NotAvailableError
from cvdeploy.platforms.base import EndpointCoreConfig, ServedEntity
from cvdeploy.platforms.ray.spec import (
    SmoothWeightedRoundRobin,
    batch_settings,
    deployment_options,
    route_prefix,
    route_weights,
)


def entity(**fields: Any) -> ServedEntity:
    return ServedEntity.model_validate({"entity_name": "cv_model", "entity_version": "1", **fields})


def test_fixed_bounds_give_num_replicas() -> None:
    options = deployment_options(entity(min_replicas=2, max_replicas=2))
    assert options["name"] == "cv_model-1"
    assert options["num_replicas"] == 2
    assert "autoscaling_config" not in options
    assert options["ray_actor_options"]["num_cpus"] < 1


def test_range_gives_autoscaling_with_workload_concurrency() -> None:
    for size, per in (("Small", 4), ("Medium", 16), ("Large", 64)):
        options = deployment_options(entity(min_replicas=1, max_replicas=3, workload_size=size))
        assert options["autoscaling_config"] == {
            "min_replicas": 1,
            "max_replicas": 3,
            "initial_replicas": 1,
            "target_ongoing_requests": per,
        }
        assert options["max_ongoing_requests"] >= per
        assert "num_replicas" not in options


def test_scale_to_zero_sets_min_replicas_zero() -> None:
    options = deployment_options(entity(min_replicas=0, max_replicas=2, scale_to_zero_enabled=True))
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["initial_replicas"] == 1
    # Scale to zero with min_replicas 1 still lets Serve go to zero.
    options = deployment_options(entity(min_replicas=1, max_replicas=1, scale_to_zero_enabled=True))
    assert options["autoscaling_config"]["min_replicas"] == 0


def test_batching_defaults_and_settings() -> None:
    default = batch_settings(entity())
    assert (default.max_batch_size, default.batch_wait_timeout_s) == (8, 0.002)
    tuned = batch_settings(entity(batching={"max_batch_size": 16, "max_queue_delay_ms": 25}))
    assert (tuned.max_batch_size, tuned.batch_wait_timeout_s) == (16, 0.025)
    off = batch_settings(entity(batching={"enabled": False}))
    assert off.max_batch_size == 1


def test_route_weights_drop_zero_routes() -> None:
    config = EndpointCoreConfig.parse(
        {
            "served_entities": [
                {"entity_name": "cv_model", "entity_version": "1"},
                {"entity_name": "cv_model", "entity_version": "2"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "cv_model-1", "traffic_percentage": 0},
                    {"served_model_name": "cv_model-2", "traffic_percentage": 100},
                ]
            },
        }
    )
    assert route_weights(config) == [("cv_model-2", 100)]
    assert route_prefix("cv_endpoint") == "/serving-endpoints/cv_endpoint"


def test_smooth_weighted_round_robin_is_exact_and_interleaved() -> None:
    even = SmoothWeightedRoundRobin([("a", 50), ("b", 50)])
    assert [even.pick() for _ in range(4)] == ["a", "b", "a", "b"]
    split = SmoothWeightedRoundRobin([("a", 90), ("b", 10)])
    picks = [split.pick() for _ in range(100)]
    assert Counter(picks) == {"a": 90, "b": 10}
    # The 10% side is spread out, not served in one burst.
    first_b = picks.index("b")
    assert picks[first_b + 1] == "a"
    with pytest.raises(ValueError):
        SmoothWeightedRoundRobin([("a", 0)])


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    import importlib

    real_module = importlib.import_module

    def no_ray_module(name: str, package: str | None = None) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_module(name, package)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.setattr(importlib, "import_module", no_ray_module)
    from cvdeploy.platforms.ray import RayPlatform

    with pytest.raises(NotAvailableError, match=r"pip install 'cvdeploy\[ray\]'"):
        RayPlatform()
