"""Where settings come from: discovery order, environment variables, keyword overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.config import Config, RootConfig, ServerConfig
from cvdeploy.errors import ConfigError


def port_file(write, port: int, name: str = "cvdeploy.yaml") -> Path:
    return write(f"deployment:\n  server:\n    port: {port}\n", name)


# ---------------------------------------------------------------------------------- discovery


def test_no_file_uses_builtin_defaults():
    config = Config()
    assert config.path is None
    assert config.deployment.server.port == 8000


def test_cvdeploy_yaml_in_working_directory_is_found(write):
    path = port_file(write, 9001)
    config = Config()
    assert config.path == path.resolve()
    assert config.deployment.server.port == 9001


def test_config_dir_file_is_found_when_no_cvdeploy_yaml(write):
    path = port_file(write, 9002, "config/deployment_config.yaml")
    assert Config().path == path.resolve()


def test_cvdeploy_yaml_wins_over_config_dir_file(write):
    port_file(write, 9002, "config/deployment_config.yaml")
    port_file(write, 9001)
    assert Config().deployment.server.port == 9001


def test_env_config_wins_over_discovered_files(write, monkeypatch):
    port_file(write, 9001)
    other = port_file(write, 9003, "elsewhere/my.yaml")
    monkeypatch.setenv("CVDEPLOY_CONFIG", str(other))
    config = Config()
    assert config.path == other.resolve()
    assert config.deployment.server.port == 9003


def test_explicit_path_wins_over_env_config(write, monkeypatch):
    monkeypatch.setenv("CVDEPLOY_CONFIG", str(port_file(write, 9003, "env.yaml")))
    explicit = port_file(write, 9004, "explicit.yaml")
    assert Config(explicit).deployment.server.port == 9004
    assert Config(str(explicit)).path == explicit.resolve()


def test_missing_explicit_path_is_an_error_naming_it(write):
    port_file(write, 9001)  # never a silent fall-back to a discovered file
    with pytest.raises(ConfigError, match=r"Config file not found: .*missing\.yaml"):
        Config("missing.yaml")


def test_missing_env_config_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_CONFIG", "nowhere.yaml")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml \(named by \$CVDEPLOY_CONFIG\)"):
        Config()


def test_directory_as_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        Config(tmp_path)


def test_empty_file_means_defaults(write):
    config = Config(write("# nothing yet\n"))
    assert config.path is not None
    assert config.to_dict() == RootConfig().model_dump()


# ---------------------------------------------------------------------------------- environment


def test_env_overrides_file(write, monkeypatch):
    port_file(write, 9001)
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__PORT", "9000")
    assert Config().deployment.server.port == 9000


def test_env_values_are_yaml_scalars(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__BATCHING__ENABLED", "false")
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__TIMEOUT", "2.5")
    monkeypatch.setenv("CVDEPLOY_MODEL__LABELS", "[cat, dog]")
    monkeypatch.setenv("CVDEPLOY_MODEL__INPUT_SIZE", "320")
    config = Config()
    assert config.deployment.batching.enabled is False
    assert config.deployment.server.timeout == 2.5
    assert config.model.labels == ["cat", "dog"]
    assert config.model.input_size == 320


def test_env_text_fields_keep_the_text_verbatim(monkeypatch):
    # YAML would read 0123 as the octal integer 83; a token is text.
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__TOKEN", "0123")
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__HOST", "127.0.0.1")
    config = Config()
    assert config.deployment.server.token == "0123"
    assert config.deployment.server.host == "127.0.0.1"


def test_env_reaches_top_level_section_aliases_and_mapping_keys(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_MONITORING__METRICS_INTERVAL", "15")
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__CI_CD__METRICS_THRESHOLD__F1", "0.85")
    config = Config()
    assert config.monitoring.metrics_interval == 15
    assert config.ci_cd.metrics_threshold["f1"] == 0.85


def test_env_without_double_underscore_is_ignored(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_HOME", "/tmp/somewhere")
    monkeypatch.setenv("CVDEPLOY_DEBUG", "1")
    monkeypatch.setenv("CVDEPLOY_PORT", "1")
    assert Config().deployment.server.port == 8000


def test_unknown_env_path_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__PROT", "9000")
    with pytest.raises(ConfigError) as info:
        Config()
    message = str(info.value)
    assert "CVDEPLOY_DEPLOYMENT__SERVER__PROT" in message
    assert "did you mean 'port'?" in message


def test_env_path_below_a_value_is_an_error(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__PORT__X", "1")
    with pytest.raises(ConfigError, match=r"deployment\.server\.port is a value, not a section"):
        Config()


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__PORT", "70000")
    with pytest.raises(ConfigError) as info:
        Config()
    assert (
        "deployment.server.port: 70000 is invalid: must be <= 65535 "
        "(from environment variable CVDEPLOY_DEPLOYMENT__SERVER__PORT)"
    ) in str(info.value)


# ---------------------------------------------------------------------------------- keywords


def test_kwargs_nested_dicts_deep_merge(write):
    write("deployment:\n  server:\n    port: 9001\n    workers: 2\n")
    config = Config(deployment={"server": {"port": 9000}})
    assert config.deployment.server.port == 9000
    assert config.deployment.server.workers == 2  # the file's sibling survives


def test_kwargs_double_underscore_keys():
    config = Config(deployment__server__port=9000, model__conf_threshold=0.5)
    assert config.deployment.server.port == 9000
    assert config.model.conf_threshold == 0.5


def test_kwargs_accept_models_and_paths():
    config = Config(
        deployment={"server": ServerConfig(port=9005)}, model={"weights_path": Path("m.onnx")}
    )
    assert config.deployment.server.port == 9005
    assert config.deployment.server.workers == 4  # fields left unset keep their value
    assert config.model.weights_path == "m.onnx"


def test_precedence_kwargs_over_env_over_file_over_defaults(write, monkeypatch):
    write("deployment:\n  server:\n    port: 9001\n    workers: 2\n    timeout: 5\n")
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__PORT", "9002")
    monkeypatch.setenv("CVDEPLOY_DEPLOYMENT__SERVER__WORKERS", "3")
    config = Config(deployment__server__port=9003)
    server = config.deployment.server
    assert (server.port, server.workers, server.timeout, server.host) == (9003, 3, 5, "0.0.0.0")


def test_dotted_kwarg_wins_over_nested_kwarg():
    config = Config(deployment={"server": {"port": 1}}, deployment__server__port=2)
    assert config.deployment.server.port == 2


def test_kwarg_top_level_section_overrides_file_deployment_section(write):
    # Not a conflict: the two places are in different layers, and kwargs win.
    write("deployment:\n  monitoring:\n    metrics_interval: 60\n")
    assert Config(monitoring={"metrics_interval": 5}).monitoring.metrics_interval == 5


def test_lists_are_replaced_not_merged(write):
    write("deployment:\n  monitoring:\n    metrics: [latency, throughput]\n")
    assert Config(deployment__monitoring__metrics=["cpu"]).monitoring.metrics == ["cpu"]
