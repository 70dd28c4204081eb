"""Every problem is reported at once, naming the key path, the bad value and the fix."""

from __future__ import annotations

import pytest

from cvdeploy.config import BatchingConfig, Config, validate_section
from cvdeploy.errors import ConfigError, CVDeployError


def problems(write, text: str, **overrides) -> str:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        Config(path, **overrides)
    message = str(info.value)
    assert str(path) in message.splitlines()[0]  # the header names the file
    return message


def test_config_error_is_a_cvdeploy_error_mapped_to_400():
    assert issubclass(ConfigError, CVDeployError)
    assert ConfigError.status_code == 400


def test_unknown_key_suggests_the_nearest_valid_key(write):
    message = problems(write, "deployment:\n  server:\n    prot: 9000\n")
    assert (
        "deployment.server.prot: unknown key; did you mean 'port'? Valid keys: host, port, "
        "workers, timeout, cache_size, log_level, access_log, intra_op_threads, token"
    ) in message


def test_unknown_key_with_nothing_close_lists_the_valid_keys(write):
    message = problems(write, "deployment:\n  scaling:\n    zzz: 1\n")
    assert "deployment.scaling.zzz: unknown key. Valid keys: min_replicas, max_replicas" in message


def test_keys_from_other_tools_suggest_ours(write):
    message = problems(write, "model:\n  model_path: yolo.onnx\n  imgsz: 640\n")
    assert "model.model_path: unknown key; did you mean 'weights_path'?" in message
    assert "model.imgsz: unknown key; did you mean 'input_size'?" in message


def test_deployment_section_at_top_level_says_where_it_belongs(write):
    message = problems(write, "server:\n  port: 1\n")
    assert "server: unknown key; did you mean 'deployment.server'?" in message


def test_bound_error_names_path_value_and_limit(write):
    message = problems(write, "deployment:\n  server:\n    port: 70000\n")
    assert "deployment.server.port: 70000 is invalid: must be <= 65535" in message


def test_bad_type_names_path_value_and_expected_type(write):
    message = problems(write, "deployment:\n  server:\n    workers: many\n")
    assert "deployment.server.workers: 'many' is invalid: must be an integer" in message


def test_bad_choice_suggests_the_nearest_choice(write):
    message = problems(write, "model:\n  model_type: yolov8\n")
    assert "model.model_type: 'yolov8' is invalid: must be one of yolo, detection" in message
    assert "did you mean 'yolo'?" in message


def test_section_that_is_not_a_mapping(write):
    message = problems(write, "deployment:\n  server: 8000\n")
    assert "deployment.server: 8000 is invalid: must be a mapping of keys (host, port," in message


def test_every_problem_is_listed_at_once(write):
    message = problems(
        write,
        "deployment:\n  server:\n    prot: 1\n    port: -1\n  batching:\n    max_batch_size: 0\n",
        model={"conf_threshold": 2},
    )
    assert message.splitlines()[0].endswith("4 problems")
    assert "deployment.server.prot" in message
    assert "deployment.server.port: -1 is invalid: must be >= 0" in message
    assert "deployment.batching.max_batch_size: 0 is invalid: must be >= 1" in message
    assert "model.conf_threshold: 2 is invalid: must be <= 1.0 (from keyword argument model)" in (
        message
    )


def test_max_replicas_below_min_names_both_values(write):
    message = problems(write, "deployment:\n  scaling:\n    min_replicas: 5\n    max_replicas: 2\n")
    assert (
        "deployment.scaling.max_replicas: max_replicas (2) is less than min_replicas (5); "
        "raise max_replicas or lower min_replicas"
    ) in message


def test_max_instances_below_min_names_both_values(write):
    message = problems(
        write, "deployment:\n  endpoint:\n    min_instances: 3\n    max_instances: 1\n"
    )
    assert (
        "deployment.endpoint.max_instances: max_instances (1) is less than min_instances (3)"
        in (message)
    )


def test_zero_min_replicas_points_to_scale_to_zero(write):
    message = problems(write, "deployment:\n  scaling:\n    min_replicas: 0\n")
    assert "deployment.scaling.min_replicas: 0 is invalid: must be >= 1; to drop to zero" in message
    assert "scale_to_zero: true" in message


def test_conflicting_duplicate_section_says_keep_one(write):
    message = problems(
        write,
        "deployment:\n  monitoring:\n    metrics_interval: 60\n"
        "monitoring:\n  metrics_interval: 30\n",
    )
    assert (
        "monitoring.metrics_interval: set to 30 here and to 60 at "
        "deployment.monitoring.metrics_interval; keep one of the two"
    ) in message


def test_conflict_is_found_in_nested_keys_of_ci_cd(write):
    message = problems(
        write,
        "deployment:\n  ci_cd:\n    metrics_threshold: {accuracy: 0.9}\n"
        "ci_cd:\n  metrics_threshold: {accuracy: 0.8}\n",
    )
    assert "ci_cd.metrics_threshold.accuracy: set to 0.8 here and to 0.9 at" in message


def test_same_value_in_both_places_is_not_a_conflict(write):
    path = write(
        "deployment:\n  monitoring:\n    metrics_interval: 30\n"
        "monitoring:\n  metrics_interval: 30\n  metrics: [latency]\n"
    )
    monitoring = Config(path).get_monitoring_config()
    assert (monitoring["metrics_interval"], monitoring["metrics"]) == (30, ["latency"])


def test_error_in_top_level_section_is_reported_where_it_was_written(write):
    message = problems(
        write, "monitoring:\n  metrics_intervall: 5\n  alert_thresholds:\n    cpu: 200\n"
    )
    assert "monitoring.metrics_intervall: unknown key; did you mean 'metrics_interval'?" in message
    assert "monitoring.alert_thresholds.cpu: 200 is invalid: must be <= 100" in message
    assert "deployment.monitoring" not in message


def test_invalid_yaml_names_file_and_line(write):
    path = write("deployment:\n  server:\n    port: 1\n   host: x\n")
    with pytest.raises(ConfigError) as info:
        Config(path)
    message = str(info.value)
    assert message.startswith(f"Invalid YAML in {path}, line 4, column 4:")
    assert "Fix the syntax there" in message


def test_repeated_yaml_key_is_an_error_with_both_lines(write):
    path = write("deployment:\n  server:\n    port: 1\n    port: 2\n")
    with pytest.raises(ConfigError, match=r"line 4.*key 'port' appears twice.*first on line 3"):
        Config(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a str ('just text')")]
)
def test_non_mapping_top_level_is_a_clear_error(write, text, kind):
    path = write(text)
    with pytest.raises(ConfigError) as info:
        Config(path)
    assert str(info.value) == (
        f"Invalid cvdeploy configuration in {path}: the top level must be a mapping of sections "
        f"such as 'model:' and 'deployment:', but the file holds {kind}."
    )


def test_errors_without_a_file_say_so():
    with pytest.raises(ConfigError) as info:
        Config(deployment__server__port="x")
    assert str(info.value) == (
        "Invalid cvdeploy configuration (no config file; built-in defaults): 1 problem\n"
        "  - deployment.server.port: 'x' is invalid: must be an integer "
        "(from keyword argument deployment__server__port)"
    )


def test_unknown_kwarg_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"modle: unknown key; did you mean 'model'\?"):
        Config(modle={"weights_path": "x.onnx"})


def test_empty_segment_in_kwarg_is_an_error():
    with pytest.raises(ConfigError, match="empty key between '__' separators"):
        Config(deployment____server=1)


def test_token_value_is_not_echoed_in_errors(write):
    message = problems(write, "deployment:\n  server:\n    token: 123456\n")
    assert "123456" not in message
    assert "deployment.server.token: '***' is invalid: must be a string" in message


def test_validate_section_prefixes_paths_with_the_argument_name():
    with pytest.raises(ConfigError) as info:
        validate_section(
            BatchingConfig, {"max_batch_size": 0, "max_queue_dely_ms": 1}, name="batching"
        )
    assert str(info.value) == (
        "Invalid batching: 2 problems\n"
        "  - batching.max_batch_size: 0 is invalid: must be >= 1\n"
        "  - batching.max_queue_dely_ms: unknown key; did you mean 'max_queue_delay_ms'? "
        "Valid keys: enabled, max_batch_size, max_queue_delay_ms, max_queue_size, tune_batch_size"
    )


def test_validate_section_accepts_instances_mappings_and_none():
    batching = BatchingConfig(max_batch_size=4)
    assert validate_section(BatchingConfig, batching, name="batching") is batching
    assert validate_section(BatchingConfig, {"max_batch_size": 4}, name="batching") == batching
    assert validate_section(BatchingConfig, None, name="batching") == BatchingConfig()
