"""Alert rules and the pure state machine, driven by plain float clocks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from cvdeploy.config import KNOWN_METRICS, Config, MonitoringConfig
from cvdeploy.errors import ConfigError
from cvdeploy.monitoring.alerts import (
    AlertEvent,
    AlertManager,
    AlertRule,
    AlertState,
    evaluate,
    rules_from_config,
)

SEED_000_YAML = """\
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

SEED_001_YAML = """\
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
"""


class Driver:
    """Feeds values to :func:`evaluate` step by step, carrying the states along."""

    def __init__(self, rules: list[AlertRule], labels: Mapping[str, str] | None = None) -> None:
        self.rules = rules
        self.labels = labels
        self.states: dict[str, AlertState] = {}
        self.events: list[AlertEvent] = []

    def step(self, now: float, **values: float | None) -> list[AlertEvent]:
        self.states, events = evaluate(self.rules, values, self.states, now, self.labels)
        self.events.extend(events)
        return events

    def status(self, name: str) -> str:
        return self.states[name].status


def statuses(events: Iterable[AlertEvent]) -> list[tuple[str, str]]:
    return [(event.rule.name, event.status) for event in events]


# -- rules -----------------------------------------------------------------------------------


def test_rule_defaults_and_derived_names() -> None:
    rule = AlertRule("latency", 1000)
    assert (rule.comparison, rule.for_s, rule.severity) == (">", 0.0, "warning")
    assert rule.name == "latency_p95_high"
    assert AlertRule("throughput", 5, comparison="<").name == "throughput_low"
    assert AlertRule("error_rate", 0.01).name == "error_rate_high"
    assert AlertRule("drift", 0.5).name == "drift_detected"
    assert AlertRule("cpu", 90, name="cpu_hot").name == "cpu_hot"


def test_unknown_metric_error_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        AlertRule("latncy", 100)
    message = str(info.value)
    assert "'latncy'" in message
    for metric in KNOWN_METRICS:
        assert metric in message
    assert "drift" in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"comparison": "=="}, "comparison"),
        ({"severity": "page"}, "severity"),
        ({"for_s": -1.0}, "for_s"),
        ({"threshold": float("nan")}, "finite"),
    ],
)
def test_bad_rule_fields_are_config_errors(kwargs: dict[str, object], needle: str) -> None:
    fields: dict[str, object] = {"metric": "cpu", "threshold": 80.0, **kwargs}
    with pytest.raises(ConfigError, match=needle):
        AlertRule(**fields)  # type: ignore[arg-type]


def test_duplicate_rule_names_are_rejected() -> None:
    rules = [AlertRule("latency", 100), AlertRule("latency", 1000)]
    with pytest.raises(ConfigError, match="latency_p95_high"):
        evaluate(rules, {}, {}, 0.0)
    with pytest.raises(ConfigError, match="unique"):
        AlertManager(rules)


# -- rules_from_config -----------------------------------------------------------------------


def _conditions(rules: list[AlertRule]) -> list[tuple[str, str, float]]:
    return [(rule.metric, rule.comparison, rule.threshold) for rule in rules]


def test_seed_000_layout_gives_cpu_memory_and_latency_rules(tmp_path: Path) -> None:
    path = tmp_path / "cvdeploy.yaml"
    path.write_text(SEED_000_YAML)
    rules = rules_from_config(Config(path).monitoring)
    conditions = _conditions(rules)
    assert conditions[:3] == [("cpu", ">", 80), ("memory", ">", 80), ("latency", ">", 1000)]
    # The config's default alerts (seed 001's values) come along, as the config documents.
    assert ("error_rate", ">", 0.01) in conditions
    names = [rule.name for rule in rules]
    assert len(set(names)) == len(names)


def test_seed_001_layout_gives_one_rule_per_alert(tmp_path: Path) -> None:
    path = tmp_path / "deployment_config.yaml"
    path.write_text(SEED_001_YAML)
    rules = rules_from_config(Config(path).monitoring)
    by_condition = {(rule.metric, rule.threshold): rule for rule in rules}
    assert by_condition["error_rate", 0.01].name == "error_rate_high"
    # Two latency rules (seed 000's 1000 ms default and seed 001's 100 ms) get distinct names.
    assert by_condition["latency", 100].name == "latency_p95_high_100"
    assert by_condition["latency", 1000].name == "latency_p95_high_1000"


def test_rules_from_mapping_and_none() -> None:
    mapping = {
        "alert_thresholds": {"cpu": 70, "memory": 90, "latency": 500},
        "alerts": [{"metric": "throughput", "threshold": 1}],
    }
    assert _conditions(rules_from_config(mapping)) == [
        ("cpu", ">", 70),
        ("memory", ">", 90),
        ("latency", ">", 500),
        ("throughput", ">", 1),
    ]
    assert rules_from_config(None) == rules_from_config(MonitoringConfig())
    assert rules_from_config(Config().get_monitoring_config()) == rules_from_config(None)


def test_identical_rules_are_kept_once() -> None:
    monitoring = MonitoringConfig.model_validate(
        {
            "alert_thresholds": {"cpu": 80, "memory": 80, "latency": 100},
            "alerts": [
                {"metric": "latency", "threshold": 100},
                {"metric": "error_rate", "threshold": 0.01},
                {"metric": "error_rate", "threshold": 0.01},
            ],
        }
    )
    rules = rules_from_config(monitoring)
    assert _conditions(rules) == [
        ("cpu", ">", 80),
        ("memory", ">", 80),
        ("latency", ">", 100),
        ("error_rate", ">", 0.01),
    ]
    assert rules[2].name == "latency_p95_high"


def test_unknown_metric_in_config_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="latncy"):
        rules_from_config({"alerts": [{"metric": "latncy", "threshold": 1}]})


# -- the state machine -----------------------------------------------------------------------


def test_for_s_zero_fires_at_once_and_only_once() -> None:
    drive = Driver([AlertRule("latency", 1000)])
    assert statuses(drive.step(0.0, latency=50)) == []
    assert drive.status("latency_p95_high") == "inactive"
    events = drive.step(10.0, latency=1234)
    assert statuses(events) == [("latency_p95_high", "firing")]
    assert events[0].message == "latency p95 is 1234 ms, above 1000 ms"
    for now in (20.0, 30.0, 40.0):
        assert drive.step(now, latency=2000) == []
    assert drive.states["latency_p95_high"].value == 2000
    assert drive.states["latency_p95_high"].fired_at == 10.0


def test_pending_waits_for_for_s_before_firing() -> None:
    drive = Driver([AlertRule("latency", 1000, for_s=30)])
    assert drive.step(0.0, latency=1500) == []
    assert drive.status("latency_p95_high") == "pending"
    assert drive.states["latency_p95_high"].since == 0.0
    assert drive.step(15.0, latency=1500) == []
    assert drive.status("latency_p95_high") == "pending"
    events = drive.step(30.0, latency=1234)
    assert statuses(events) == [("latency_p95_high", "firing")]
    assert events[0].message == "latency p95 is 1234 ms, above 1000 ms for 30 s"
    assert events[0].at == events[0].started_at == 30.0
    assert drive.step(45.0, latency=1234) == []


def test_pending_that_clears_goes_inactive_without_an_event() -> None:
    drive = Driver([AlertRule("cpu", 80, for_s=60)])
    drive.step(0.0, cpu=95)
    assert drive.status("cpu_high") == "pending"
    assert drive.step(30.0, cpu=40) == []
    assert drive.status("cpu_high") == "inactive"
    # The clock restarts: a new breach must hold a full for_s again.
    assert drive.step(40.0, cpu=95) == []
    assert drive.step(90.0, cpu=95) == []
    assert statuses(drive.step(100.0, cpu=95)) == [("cpu_high", "firing")]


def test_firing_resolves_then_goes_inactive() -> None:
    drive = Driver([AlertRule("latency", 1000)])
    drive.step(0.0, latency=1500)
    events = drive.step(5.0, latency=200)
    assert statuses(events) == [("latency_p95_high", "resolved")]
    resolved = events[0]
    assert resolved.started_at == 0.0
    assert resolved.at == 5.0
    assert resolved.message == "latency p95 is 200 ms, no longer above 1000 ms"
    state = drive.states["latency_p95_high"]
    assert (state.status, state.resolved_at, state.fired_at) == ("resolved", 5.0, 0.0)
    assert drive.step(10.0, latency=200) == []
    assert drive.status("latency_p95_high") == "inactive"
    assert drive.step(15.0, latency=200) == []


def test_resolved_alert_can_fire_again() -> None:
    drive = Driver([AlertRule("latency", 1000)])
    drive.step(0.0, latency=1500)
    drive.step(1.0, latency=10)
    assert drive.status("latency_p95_high") == "resolved"
    assert statuses(drive.step(2.0, latency=1500)) == [("latency_p95_high", "firing")]
    drive.step(3.0, latency=10)
    drive.step(4.0, latency=10)
    assert statuses(drive.step(5.0, latency=1500)) == [("latency_p95_high", "firing")]
    assert [event.status for event in drive.events] == ["firing", "resolved"] * 2 + ["firing"]


def test_missing_values_keep_the_state_and_emit_nothing() -> None:
    drive = Driver([AlertRule("gpu", 90, for_s=10), AlertRule("latency", 100)])
    assert drive.step(0.0, latency=500) != []
    assert drive.states["gpu_high"].status == "inactive"
    before = drive.states
    # No GPU on this machine and a gap in the latency figures: nothing changes, nothing fires.
    assert drive.step(5.0, gpu=None) == []
    assert drive.step(6.0, latency=float("nan")) == []
    assert drive.states == before
    assert drive.status("latency_p95_high") == "firing"


def test_comparison_less_than_catches_a_throughput_drop() -> None:
    drive = Driver([AlertRule("throughput", 10, comparison="<", for_s=20)])
    assert drive.step(0.0, throughput=50) == []
    assert drive.step(10.0, throughput=2) == []
    events = drive.step(30.0, throughput=2)
    assert statuses(events) == [("throughput_low", "firing")]
    assert events[0].message == "throughput is 2 req/s, below 10 req/s for 20 s"
    assert statuses(drive.step(40.0, throughput=30)) == [("throughput_low", "resolved")]


@pytest.mark.parametrize(
    ("comparison", "value", "holds"),
    [(">", 10, False), (">=", 10, True), ("<", 10, False), ("<=", 10, True), ("<", 9, True)],
)
def test_comparisons_at_the_threshold(comparison: str, value: float, holds: bool) -> None:
    rule = AlertRule("queue_depth", 10, comparison=comparison)  # type: ignore[arg-type]
    assert rule.holds(value) is holds


def test_labels_and_fingerprint() -> None:
    context = {"endpoint": "cv", "model": "yolo", "version": "2", "alertname": "spoofed"}
    drive = Driver([AlertRule("error_rate", 0.01, severity="critical")], labels=context)
    fired = drive.step(0.0, error_rate=0.05)[0]
    assert fired.labels == {
        "alertname": "error_rate_high",
        "severity": "critical",
        "metric": "error_rate",
        "endpoint": "cv",
        "model": "yolo",
        "version": "2",
    }
    resolved = drive.step(1.0, error_rate=0.0)[0]
    assert fired.fingerprint == resolved.fingerprint
    assert len(fired.fingerprint) == 16
    other = Driver([AlertRule("error_rate", 0.01, severity="critical")], labels={"endpoint": "b"})
    assert other.step(0.0, error_rate=0.05)[0].fingerprint != fired.fingerprint
    assert fired.to_dict()["labels"] == fired.labels


def test_drift_rule_messages() -> None:
    drive = Driver([AlertRule("drift", 0.5)])
    assert drive.step(0.0, drift=1.0)[0].message == "data drift detected on at least one feature"
    assert drive.step(1.0, drift=0.0)[0].message == "data drift no longer detected"


def test_evaluate_does_not_mutate_its_inputs() -> None:
    rules = [AlertRule("cpu", 80)]
    states: dict[str, AlertState] = {}
    new, _ = evaluate(rules, {"cpu": 99}, states, 0.0)
    assert states == {}
    again, events = evaluate(rules, {"cpu": 99}, new, 1.0)
    assert new["cpu_high"].status == "firing"
    assert again["cpu_high"].since == 0.0
    assert events == []


# -- acceptance: the seeds' alerts fire on injected faults and resolve ------------------------


def _seed_001_rules(tmp_path: Path) -> list[AlertRule]:
    path = tmp_path / "deployment_config.yaml"
    path.write_text(SEED_001_YAML)
    return rules_from_config(Config(path).monitoring)


def test_injected_latency_fires_and_resolves_the_seed_latency_alert(tmp_path: Path) -> None:
    drive = Driver(_seed_001_rules(tmp_path), labels={"endpoint": "cv_endpoint"})
    # p95 latency per 10 s window: healthy, then 250 ms injected for a minute, then healthy.
    p95 = [20, 25, 22, 250, 260, 255, 250, 240, 245, 30, 25, 20]
    for index, value in enumerate(p95):
        drive.step(index * 10.0, latency=value, error_rate=0.0, cpu=20, memory=30)
    assert [(e.rule.name, e.status, e.at) for e in drive.events] == [
        ("latency_p95_high_100", "firing", 30.0),
        ("latency_p95_high_100", "resolved", 90.0),
    ]
    assert drive.events[0].message == "latency p95 is 250 ms, above 100 ms"
    assert drive.events[0].labels["endpoint"] == "cv_endpoint"


def test_injected_errors_fire_and_resolve_the_seed_error_rate_alert(tmp_path: Path) -> None:
    drive = Driver(_seed_001_rules(tmp_path))
    rates = [0.0, 0.0, 0.05, 0.05, 0.05, 0.004, 0.0]
    for index, rate in enumerate(rates):
        drive.step(index * 10.0, latency=15, error_rate=rate)
    assert [(e.rule.name, e.status, e.at) for e in drive.events] == [
        ("error_rate_high", "firing", 20.0),
        ("error_rate_high", "resolved", 50.0),
    ]
    assert drive.events[0].message == "error rate is 5%, above 1%"


class FakeCpuSampler:
    """Stands in for psutil: returns the next scripted CPU percent at each call."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_cpu_alert_with_a_fake_sampler_fires_after_for_s_and_resolves() -> None:
    sample = FakeCpuSampler([30, 95, 97, 96, 99, 98, 40, 35])
    manager = AlertManager([AlertRule("cpu", 80, for_s=30, severity="critical")])
    fired: list[AlertEvent] = []
    for tick in range(8):
        fired += manager.evaluate({"cpu": sample()}, now=1000.0 + tick * 15)
    assert [(e.status, e.at) for e in fired] == [("firing", 1045.0), ("resolved", 1090.0)]
    assert fired[0].message == "CPU is 96%, above 80% for 30 s"
    assert manager.active() == []


# -- AlertManager ----------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.closed = False

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


def test_manager_dispatches_active_and_history() -> None:
    sink = ListSink()
    manager = AlertManager(
        [AlertRule("latency", 100), AlertRule("error_rate", 0.01)],
        [sink],
        labels={"endpoint": "cv"},
        history_size=3,
    )
    manager.evaluate({"latency": 500, "error_rate": 0.0}, now=1.0)
    manager.evaluate({"latency": 700, "error_rate": 0.2}, now=2.0, labels={"version": "3"})
    active = manager.active()
    assert [(a["alertname"], a["value"]) for a in active] == [
        ("latency_p95_high", 700),
        ("error_rate_high", 0.2),
    ]
    assert active[1]["labels"] == {
        "endpoint": "cv",
        "version": "3",
        "alertname": "error_rate_high",
        "severity": "warning",
        "metric": "error_rate",
    }
    manager.evaluate({"latency": 50, "error_rate": 0.0}, now=3.0)
    assert manager.active() == []
    assert [(e.rule.name, e.status) for e in sink.events] == [
        ("latency_p95_high", "firing"),
        ("error_rate_high", "firing"),
        ("latency_p95_high", "resolved"),
        ("error_rate_high", "resolved"),
    ]
    history = manager.history()
    assert len(history) == 3  # bounded
    assert [h["at"] for h in history] == [3.0, 3.0, 2.0]  # newest first
    assert len(manager.history(limit=1)) == 1
    assert manager.states()["latency_p95_high"].status == "resolved"
    manager.close()
    assert sink.closed


class BrokenSink(ListSink):
    def send(self, event: AlertEvent) -> None:
        raise RuntimeError("sink is broken")


def test_a_broken_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    good = ListSink()
    manager = AlertManager([AlertRule("cpu", 80)], [BrokenSink(), good])
    events = manager.evaluate({"cpu": 99}, now=0.0)
    assert len(events) == 1
    assert good.events == events
    assert "sink is broken" in caplog.text
