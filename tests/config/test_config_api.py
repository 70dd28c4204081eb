"""The public API of cvdeploy.config: exports, accessors and the schema's guarantees."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

import cvdeploy.config
from cvdeploy.config import (
    AlertRule,
    CICDConfig,
    Config,
    LimitsConfig,
    ModelConfig,
    RootConfig,
)
from cvdeploy.errors import ConfigError


def sections(model: type[pydantic.BaseModel]):
    yield model
    for field in model.model_fields.values():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            yield from sections(annotation)


def test_public_names():
    assert sorted(cvdeploy.config.__all__) == sorted(
        [
            "ENV_CONFIG",
            "ENV_PREFIX",
            "KNOWN_METRICS",
            "AlertRule",
            "AlertThresholds",
            "BatchingConfig",
            "CICDConfig",
            "Config",
            "DriftConfig",
            "DeploymentConfig",
            "EndpointConfig",
            "LimitsConfig",
            "ModelConfig",
            "MonitoringConfig",
            "NormalizationConfig",
            "PayloadLogConfig",
            "RootConfig",
            "ScalingConfig",
            "ServerConfig",
            "validate_section",
        ]
    )


def test_import_has_no_side_effects_and_no_heavy_imports():
    code = (
        "import logging, sys, threading, cvdeploy.config\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'onnxruntime', 'numpy', 'uvicorn')]\n"
        "assert not heavy, heavy\n"
        "assert not logging.getLogger().handlers\n"
        "assert threading.active_count() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_field_has_a_description_and_numbers_have_bounds():
    for model in [*sections(RootConfig), AlertRule]:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            if field.annotation in (int, float):
                bounds = [m for m in field.metadata if hasattr(m, ("ge")) or hasattr(m, "gt")]
                assert bounds, f"{model.__name__}.{name} has no lower bound"


def test_deployment_config_is_exactly_model_server_keywords():
    config = Config()
    assert set(config.get_deployment_config()) == {
        "host",
        "port",
        "workers",
        "timeout",
        "batching",
        "limits",
        "scaling",
        "cache_size",
        "log_level",
        "access_log",
        "intra_op_threads",
        "token",
        "drift",
        "payload_log",
    }
    deployment = config.get_deployment_config()
    assert deployment["batching"] == {
        "enabled": True,
        "max_batch_size": 8,
        "max_queue_delay_ms": 2.0,
        "max_queue_size": 256,
        "tune_batch_size": True,
    }
    assert deployment["limits"] == {
        "max_body_bytes": 20 * 1024 * 1024,
        "max_image_pixels": 40_000_000,
        "max_images_per_request": 64,
        "max_v2_tensor_bytes": 64 * 1024 * 1024,
    }
    assert set(deployment["scaling"]) >= {"min_replicas", "max_replicas", "target_cpu"}


def test_model_config_is_a_plain_dict_with_every_model_key():
    model = Config(model={"weights_path": "m.onnx", "model_type": "yolo"}).get_model_config()
    assert set(model) == set(ModelConfig.model_fields)
    assert model["weights_path"] == "m.onnx"
    assert model["model_type"] == "yolo"
    assert (model["conf_threshold"], model["iou_threshold"], model["max_det"]) == (0.25, 0.45, 300)
    assert (model["top_k"], model["providers"], model["warmup"]) == (5, "auto", True)
    assert isinstance(model["normalization"], dict)


def test_monitoring_endpoint_and_ci_cd_config_keys():
    config = Config()
    assert set(config.get_monitoring_config()) == {
        "metrics_interval",
        "alert_thresholds",
        "metrics",
        "alerts",
        "drift",
        "cost_per_hour",
    }
    assert set(config.get_endpoint_config()) == {
        "instance_type",
        "min_instances",
        "max_instances",
        "scale_to_zero",
    }
    assert config.get_ci_cd_config()["rollout_steps"] == [10, 50, 100]
    assert config.get_ci_cd_config()["eval_data"] is None


def test_returned_dicts_are_copies():
    config = Config()
    config.get_deployment_config()["batching"]["max_batch_size"] = 99
    config.get_monitoring_config()["metrics"].append("cpu")
    assert config.deployment.batching.max_batch_size == 8
    assert config.monitoring.metrics == ["latency", "throughput", "error_rate"]


def test_sections_are_frozen():
    config = Config()
    with pytest.raises(pydantic.ValidationError):
        config.deployment.server.port = 1  # type: ignore[misc]


def test_to_yaml_round_trips(write):
    config = Config(
        model={"weights_path": "m.onnx", "labels": ["a", "b"], "input_size": [480, 640]}
    )
    again = Config(write(config.to_yaml()))
    assert again.to_dict() == config.to_dict()


def test_repr_names_the_file_and_hides_the_token():
    config = Config(deployment__server__token="s3cret")
    assert repr(config) == "Config(path=None)"
    assert "s3cret" not in repr(config.deployment)


def test_null_sections_mean_defaults(write):
    config = Config(write("model:\ndeployment:\n  server:\n  scaling:\n"))
    assert config.to_dict() == RootConfig().model_dump()


# ---------------------------------------------------------------------------------- model


def test_yolo_is_an_alias_of_detection_but_kept_as_written():
    model = Config(model={"model_type": "YOLO"}).model
    assert model.model_type == "yolo"
    assert model.task == "detection"
    assert Config(model={"model_type": "classification"}).model.task == "classification"


def test_labels_accept_list_path_and_id_mapping():
    assert Config(model={"labels": "labels.txt"}).model.labels == "labels.txt"
    assert Config(model={"labels": {1: "dog", 0: "cat"}}).model.labels == ["cat", "dog"]
    with pytest.raises(ConfigError, match=r"model\.labels: \{0: 'cat', 2: 'dog'\} is invalid"):
        Config(model={"labels": {0: "cat", 2: "dog"}})
    with pytest.raises(ConfigError, match="non-empty list of class names"):
        Config(model={"labels": []})


@pytest.mark.parametrize(("given", "kept"), [(640, 640), ([480, 640], [480, 640]), (None, None)])
def test_input_size_is_an_int_or_height_width(given, kept):
    assert Config(model={"input_size": given}).model.input_size == kept


@pytest.mark.parametrize("bad", [0, [1, 2, 3], "big", [640, "x"], True])
def test_bad_input_size_is_one_clear_problem(bad):
    with pytest.raises(ConfigError) as info:
        Config(model={"input_size": bad})
    assert "1 problem\n" in str(info.value)
    assert "must be one integer or a list [height, width]" in str(info.value)


def test_providers_accept_auto_a_list_or_one_name():
    assert Config(model={"providers": "AUTO"}).model.providers == "auto"
    assert Config(model={"providers": "CPUExecutionProvider"}).model.providers == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(ConfigError, match="must be 'auto' or a non-empty list"):
        Config(model={"providers": []})


def test_normalization_checks_three_channels():
    with pytest.raises(ConfigError, match=r"model\.normalization\.mean: \[0\.5\] is invalid"):
        Config(model={"normalization": {"mean": [0.5]}})
    norm = Config(model={"normalization": {"std": [0.2, 0.2, 0.2], "resize": "Letterbox"}})
    assert norm.model.normalization.resize == "letterbox"


# ---------------------------------------------------------------------------------- deployment


def test_byte_sizes_accept_units():
    limits = LimitsConfig.model_validate({"max_body_bytes": "20MiB", "max_v2_tensor_bytes": "1 GB"})
    assert limits.max_body_bytes == 20 * 1024 * 1024
    assert limits.max_v2_tensor_bytes == 1024**3
    with pytest.raises(ConfigError, match="max_body_bytes: 512 is invalid: must be >= 1024"):
        Config(deployment__limits__max_body_bytes=512)
    with pytest.raises(ConfigError, match="must be a number of bytes such as"):
        Config(deployment__limits__max_body_bytes="lots")


def test_log_level_is_case_insensitive():
    assert Config(deployment__server__log_level="DEBUG").deployment.server.log_level == "debug"


# ---------------------------------------------------------------------------------- monitoring


def test_unknown_metric_suggests_a_known_one():
    with pytest.raises(
        ConfigError, match=r"metrics\[0\]: 'latncy' is invalid.*did you mean 'latency'"
    ):
        Config(monitoring={"metrics": ["latncy"]})


def test_repeated_metric_is_an_error():
    with pytest.raises(ConfigError, match="lists latency more than once"):
        Config(monitoring={"metrics": ["latency", "latency"]})


def test_error_rate_alert_must_be_a_fraction():
    with pytest.raises(ConfigError) as info:
        Config(monitoring={"alerts": [{"metric": "error_rate", "threshold": 5}]})
    assert (
        "monitoring.alerts[0].threshold: 5.0 is invalid: error_rate is a fraction: "
        "write 0.05 for 5.0%"
    ) in str(info.value)


def test_percent_alert_must_be_at_most_100():
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.threshold: 150\.0 is invalid: cpu is a"):
        Config(monitoring={"alerts": [{"metric": "cpu", "threshold": 150}]})


def test_alert_without_threshold_says_it_is_missing():
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.threshold: required key is missing"):
        Config(monitoring={"alerts": [{"metric": "latency"}]})


# ---------------------------------------------------------------------------------- ci_cd


@pytest.mark.parametrize("steps", [[10, 50], [50, 10, 100], [10, 10, 100], [0, 100]])
def test_rollout_steps_must_increase_to_100(steps):
    with pytest.raises(ConfigError, match=r"ci_cd\.rollout_steps(\[0\])?: .* is invalid"):
        Config(ci_cd={"rollout_steps": steps})


def test_rollout_steps_accept_a_single_full_step():
    assert Config(ci_cd={"rollout_steps": [100]}).ci_cd.rollout_steps == [100]


def test_quality_thresholds_are_fractions():
    with pytest.raises(ConfigError, match=r"metrics_threshold\.accuracy: 90\.0 is invalid"):
        Config(ci_cd={"metrics_threshold": {"accuracy": 90}})
    # Metrics cvdeploy does not know keep any finite value.
    assert CICDConfig(metrics_threshold={"latency_ms": 50}).metrics_threshold == {"latency_ms": 50}


def test_ci_cd_eval_data_is_kept():
    assert Config(ci_cd={"eval_data": "data/val"}).get_ci_cd_config()["eval_data"] == "data/val"


def test_bad_threshold_name_is_reported_as_a_key():
    with pytest.raises(
        ConfigError, match=r"metrics_threshold\[1\]: key 1 is invalid: must be a str"
    ):
        Config(ci_cd={"metrics_threshold": {1: 0.5}})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="must be a finite number"):
        Config(deployment__server__timeout=value)
