"""Both seed layouts parse verbatim, and the built-in defaults are the seeds' values."""

from __future__ import annotations

from cvdeploy.config import Config

# Verbatim from seed 000 ("Example configuration").
SEED_000 = """\
deployment:
  server:
    host: "0.0.0.0"
    port: 8000
    workers: 4
    timeout: 60
  monitoring:
    metrics_interval: 60
    alert_thresholds:
      cpu: 80
      memory: 80
      latency: 1000
  scaling:
    min_replicas: 1
    max_replicas: 10
    target_cpu: 70
"""

# Verbatim from seed 001 (config/deployment_config.yaml).
SEED_001 = """\
deployment:
  endpoint:
    instance_type: "Standard_DS3_v2"
    min_instances: 1
    max_instances: 5
    scale_to_zero: true
  monitoring:
    metrics:
      - latency
      - throughput
      - error_rate
    alerts:
      - metric: "error_rate"
        threshold: 0.01
      - metric: "latency"
        threshold: 100
  ci_cd:
    metrics_threshold:
      accuracy: 0.9
      precision: 0.9
      recall: 0.9
"""


def test_seed_000_layout_parses(write):
    config = Config(write(SEED_000))
    server = config.deployment.server
    assert (server.host, server.port, server.workers, server.timeout) == ("0.0.0.0", 8000, 4, 60)
    monitoring = config.get_monitoring_config()
    assert monitoring["metrics_interval"] == 60
    assert monitoring["alert_thresholds"] == {"cpu": 80, "memory": 80, "latency": 1000}
    scaling = config.deployment.scaling
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_cpu) == (1, 10, 70)


def test_seed_001_layout_parses_from_its_documented_path(write):
    write(SEED_001, "config/deployment_config.yaml")
    config = Config()
    assert config.path is not None
    assert config.path.name == "deployment_config.yaml"
    assert config.get_endpoint_config() == {
        "instance_type": "Standard_DS3_v2",
        "min_instances": 1,
        "max_instances": 5,
        "scale_to_zero": True,
    }
    monitoring = config.get_monitoring_config()
    assert monitoring["metrics"] == ["latency", "throughput", "error_rate"]
    assert [(a["metric"], a["threshold"], a["comparison"]) for a in monitoring["alerts"]] == [
        ("error_rate", 0.01, ">"),
        ("latency", 100, ">"),
    ]
    assert config.get_ci_cd_config()["metrics_threshold"] == {
        "accuracy": 0.9,
        "precision": 0.9,
        "recall": 0.9,
    }


def test_both_seed_layouts_in_one_file_parse(write):
    # Seed 001's monitoring keys beside seed 000's in one section; its ci_cd at the top level.
    both = (
        SEED_000.replace("  scaling:", "    metrics: [latency]\n  scaling:")
        + SEED_001.removeprefix("deployment:\n").split("  monitoring:")[0]
        + "ci_cd:\n  metrics_threshold: {accuracy: 0.8}\n"
    )
    config = Config(write(both))
    assert config.deployment.server.port == 8000
    assert config.deployment.endpoint.max_instances == 5
    assert config.monitoring.metrics == ["latency"]
    assert config.monitoring.alert_thresholds.cpu == 80
    assert config.get_ci_cd_config()["metrics_threshold"] == {"accuracy": 0.8}


def test_defaults_equal_seed_values():
    config = Config()
    assert config.path is None
    deployment = config.to_dict()["deployment"]
    server = deployment["server"]
    assert {k: server[k] for k in ("host", "port", "workers", "timeout")} == {
        "host": "0.0.0.0",
        "port": 8000,
        "workers": 4,
        "timeout": 60,
    }
    monitoring = dict(deployment["monitoring"])
    # cvdeploy's own drift settings sit beside the seeds' keys.
    assert monitoring.pop("drift")["sample_rate"] == 0.1
    assert monitoring.pop("cost_per_hour") == {}
    assert monitoring.pop("payload_log")["enabled"] is False  # opt in: records hold user data
    assert monitoring == {
        "metrics_interval": 60,
        "alert_thresholds": {"cpu": 80, "memory": 80, "latency": 1000},
        "metrics": ["latency", "throughput", "error_rate"],
        "alerts": [
            {"metric": m, "threshold": t, "comparison": ">", "for_s": 0, "severity": "warning"}
            for m, t in (("error_rate", 0.01), ("latency", 100))
        ],
    }
    scaling = deployment["scaling"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_cpu"]) == (1, 10, 70)
    assert deployment["endpoint"] == {
        "instance_type": "Standard_DS3_v2",
        "min_instances": 1,
        "max_instances": 5,
        "scale_to_zero": True,
    }
    assert deployment["ci_cd"]["metrics_threshold"] == {
        "accuracy": 0.9,
        "precision": 0.9,
        "recall": 0.9,
    }


def test_reading_a_seed_file_changes_nothing_from_the_defaults(write):
    defaults = Config().to_dict()
    assert Config(write(SEED_000, "a.yaml")).to_dict() == defaults
    assert Config(write(SEED_001, "b.yaml")).to_dict() == defaults


def test_seed_000_usage_works():
    # The seed's own lines: ModelServer(model_type="yolo", model_path=..., **deployment config).
    config = Config(model={"weights_path": "models/yolov8n.onnx"})
    assert config.get_model_config()["weights_path"] == "models/yolov8n.onnx"
    assert config.get_deployment_config()["port"] == 8000
