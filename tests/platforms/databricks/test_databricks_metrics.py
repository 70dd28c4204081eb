"""Databricks' metrics export (hand-written texts in its format) read into the ``stats`` shape."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cvdeploy.errors import CVDeployError
from cvdeploy.platforms.base import EndpointInfo
from cvdeploy.platforms.databricks.metrics import (
    EntitySample,
    histogram_quantile,
    latency_summary,
    parse_export,
)
from cvdeploy.platforms.databricks.stats import StatsTracker

# Databricks' names and types: last-minute counts exported as gauges.
EXPORT = """\
# HELP cpu_usage_percentage Average CPU utilization used across all servers.
# TYPE cpu_usage_percentage gauge
cpu_usage_percentage{served_entity_name="cv_model-1"} 41.5
cpu_usage_percentage{served_entity_name="cv_model-2"} 12.0
# HELP mem_usage_percentage Average memory utilization used across all servers.
# TYPE mem_usage_percentage gauge
mem_usage_percentage{served_entity_name="cv_model-1"} 30.0
mem_usage_percentage{served_entity_name="cv_model-2"} 28.0
# HELP provisioned_concurrent_requests_total Number of provisioned concurrency.
# TYPE provisioned_concurrent_requests_total gauge
provisioned_concurrent_requests_total{served_entity_name="cv_model-1"} 8.0
provisioned_concurrent_requests_total{served_entity_name="cv_model-2"} 4.0
# HELP request_count_total Number of requests processed in the last minute.
# TYPE request_count_total gauge
request_count_total{served_entity_name="cv_model-1"} 90.0
request_count_total{served_entity_name="cv_model-2"} 10.0
# HELP request_4xx_count_total Number of 4xx errors in the last minute.
# TYPE request_4xx_count_total gauge
request_4xx_count_total{served_entity_name="cv_model-1"} 9.0
request_4xx_count_total{served_entity_name="cv_model-2"} 0.0
# HELP request_5xx_count_total Number of 5xx errors in the last minute.
# TYPE request_5xx_count_total gauge
request_5xx_count_total{served_entity_name="cv_model-1"} 0.0
request_5xx_count_total{served_entity_name="cv_model-2"} 2.0
# HELP request_latency_ms Round-trip latency of requests in milliseconds.
# TYPE request_latency_ms histogram
request_latency_ms_bucket{served_entity_name="cv_model-1",le="10.0"} 45.0
request_latency_ms_bucket{served_entity_name="cv_model-1",le="20.0"} 81.0
request_latency_ms_bucket{served_entity_name="cv_model-1",le="50.0"} 90.0
request_latency_ms_bucket{served_entity_name="cv_model-1",le="+Inf"} 90.0
request_latency_ms_sum{served_entity_name="cv_model-1"} 1080.0
request_latency_ms_count{served_entity_name="cv_model-1"} 90.0
request_latency_ms_bucket{served_entity_name="cv_model-2",le="10.0"} 0.0
request_latency_ms_bucket{served_entity_name="cv_model-2",le="20.0"} 0.0
request_latency_ms_bucket{served_entity_name="cv_model-2",le="50.0"} 5.0
request_latency_ms_bucket{served_entity_name="cv_model-2",le="+Inf"} 10.0
request_latency_ms_sum{served_entity_name="cv_model-2"} 600.0
request_latency_ms_count{served_entity_name="cv_model-2"} 10.0
"""


def _info(*versions: tuple[str, int]) -> EndpointInfo:
    entities = [{"entity_name": "cv_model", "entity_version": v} for v, _ in versions]
    routes = [
        {"served_model_name": f"cv_model-{v}", "traffic_percentage": pct} for v, pct in versions
    ]
    return EndpointInfo.model_validate(
        {
            "name": "digits",
            "config": {"served_entities": entities, "traffic_config": {"routes": routes}},
            "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "creation_timestamp": 0,
            "last_updated_timestamp": 0,
        }
    )


def _count_export(requests: int, errors: int, label: str = "served_entity_name") -> str:
    return (
        "# TYPE request_count_total gauge\n"
        f'request_count_total{{{label}="cv_model-1"}} {requests}\n'
        "# TYPE request_5xx_count_total gauge\n"
        f'request_5xx_count_total{{{label}="cv_model-1"}} {errors}\n'
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_export_per_served_entity() -> None:
    export = parse_export(EXPORT)
    assert export.dialect == "databricks"
    one = export.entities["cv_model-1"]
    assert (one.requests, one.client_errors, one.server_errors) == (90, 9, 0)
    assert (one.cpu_percent, one.memory_percent, one.provisioned_concurrency) == (41.5, 30, 8)
    assert one.buckets == {10.0: 45, 20.0: 81, 50.0: 90, math.inf: 90}


def test_quantiles_interpolate_like_prometheus() -> None:
    buckets = {10.0: 50.0, 20.0: 90.0, 50.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(10.0)
    assert histogram_quantile(0.95, buckets) == pytest.approx(35.0)
    assert histogram_quantile(0.99, buckets) == pytest.approx(47.0)
    assert histogram_quantile(0.25, buckets) == pytest.approx(5.0)  # the first bucket starts at 0


def test_quantile_in_the_inf_bucket_is_the_highest_bound() -> None:
    assert histogram_quantile(0.9, {10.0: 5.0, math.inf: 10.0}) == 10.0


def test_quantile_of_no_requests_is_none() -> None:
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {10.0: 0.0, math.inf: 0.0}) is None
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, {10.0: 1.0})


def test_latency_summary_has_percentiles_and_mean() -> None:
    sample = parse_export(EXPORT).entities["cv_model-1"]
    summary = latency_summary(sample)
    assert summary is not None
    assert summary["p50"] == pytest.approx(10 + 10 * (45 - 45) / 36)
    assert summary["p95"] == pytest.approx(20 + 30 * (85.5 - 81) / 9)
    assert summary["mean"] == pytest.approx(12.0)
    assert latency_summary(EntitySample()) is None


def test_stats_shape_from_a_databricks_export() -> None:
    stats = StatsTracker().stats(_info(("1", 90), ("2", 10)), parse_export(EXPORT))
    assert stats["name"] == "digits"
    assert stats["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert stats["revision"] is None
    assert stats["metrics_source"] == "databricks"
    one = stats["served_entities"]["cv_model-1"]
    assert (one["model"], one["version"], one["traffic_percentage"]) == ("cv_model", "1", 90)
    minute: dict[str, Any] = one["last_minute"]
    assert minute["window_s"] == 60.0
    assert minute["basis"] == "last_minute"
    assert minute["requests"] == 90
    assert minute["throughput_rps"] == 1.5
    assert minute["error_rate"] == 0.0
    assert minute["client_error_rate"] == 0.1
    assert set(minute["latency_ms"]) == {"p50", "p95", "p99", "mean"}
    assert one["ready_replicas"] == 2  # 8 provisioned requests / 4 per Small replica
    assert one["cpu_percent"] == 41.5
    assert one["instance_type"] == "Small"
    two = stats["served_entities"]["cv_model-2"]
    assert two["last_minute"]["error_rate"] == 0.2
    assert two["last_minute"]["latency_ms"]["p50"] == pytest.approx(50.0)
    overall = stats["overall"]
    assert overall["requests"] == 100
    assert overall["error_rate"] == 0.02
    assert overall["latency_ms"]["p50"] == pytest.approx(10 + 10 * (50 - 45) / 36, abs=1e-3)


def test_served_model_name_label_is_accepted() -> None:
    export = parse_export(_count_export(12, 1, label="served_model_name"))
    assert export.entities["cv_model-1"].requests == 12


def test_unlabelled_figures_belong_to_a_one_entity_endpoint() -> None:
    text = "# TYPE request_count_total gauge\nrequest_count_total 7\n"
    stats = StatsTracker().stats(_info(("1", 100)), parse_export(text))
    assert stats["served_entities"]["cv_model-1"]["last_minute"]["requests"] == 7
    assert stats["overall"]["requests"] == 7


def test_unlabelled_figures_of_a_split_endpoint_stay_endpoint_wide() -> None:
    text = "# TYPE request_count_total gauge\nrequest_count_total 7\n"
    stats = StatsTracker().stats(_info(("1", 80), ("2", 20)), parse_export(text))
    assert stats["overall"]["requests"] == 7
    assert stats["served_entities"]["cv_model-2"]["last_minute"]["requests"] == 0


def test_totals_add_each_minute_once() -> None:
    clock = FakeClock()
    tracker = StatsTracker(clock)
    info = _info(("1", 100))

    def totals(requests: int, errors: int) -> tuple[int, int]:
        entity = tracker.stats(info, parse_export(_count_export(requests, errors)))
        figures = entity["served_entities"]["cv_model-1"]
        return figures["requests_total"], figures["errors_total"]

    assert totals(30, 1) == (30, 1)
    clock.now += 20  # the same minute, seen again with more in it: not added twice
    assert totals(40, 2) == (30, 1)
    clock.now += 45
    assert totals(50, 0) == (80, 1)
    clock.now += 60
    assert totals(10, 3) == (90, 4)


def test_openmetrics_text_is_read() -> None:
    text = (
        "# TYPE request_count gauge\n"
        'request_count{served_entity_name="cv_model-1"} 3\n'
        "# TYPE cpu_usage_percentage gauge\n"
        'cpu_usage_percentage{served_entity_name="cv_model-1"} 5\n'
        "# EOF\n"
    )
    export = parse_export(text)
    assert export.dialect == "databricks"
    assert export.entities["cv_model-1"].cpu_percent == 5


def test_counter_typed_counts_are_read_by_sample_name() -> None:
    text = '# TYPE request_count counter\nrequest_count_total{served_entity_name="cv_model-1"} 4\n'
    assert parse_export(text).entities["cv_model-1"].requests == 4


def test_not_prometheus_text_is_an_error() -> None:
    with pytest.raises(CVDeployError, match="not Prometheus text"):
        parse_export('<html>{"not": "metrics"}</html>\nx y z\n')


def test_export_without_known_series() -> None:
    export = parse_export("# TYPE something_else gauge\nsomething_else 1\n")
    assert export.dialect == "none"
    stats = StatsTracker().stats(_info(("1", 100)), export)
    assert stats["served_entities"]["cv_model-1"]["last_minute"]["requests"] == 0


CVDEPLOY_EXPORT = """\
# TYPE cvdeploy_endpoint_requests_total counter
cvdeploy_endpoint_requests_total{endpoint="digits",served_entity="cv_model-1",model="cv_model",version="1",status="200"} {ok}
cvdeploy_endpoint_requests_total{endpoint="digits",served_entity="cv_model-1",model="cv_model",version="1",status="503"} {bad}
cvdeploy_endpoint_requests_total{endpoint="other",served_entity="x-1",model="x",version="1",status="200"} 99
# TYPE cvdeploy_endpoint_replicas gauge
cvdeploy_endpoint_replicas{endpoint="digits",served_entity="cv_model-1",model="cv_model",version="1",state="ready"} 2
cvdeploy_endpoint_replicas{endpoint="digits",served_entity="cv_model-1",model="cv_model",version="1",state="starting"} 1
"""  # noqa: E501


def _cvdeploy(ok: int, bad: int) -> str:
    return CVDEPLOY_EXPORT.replace("{ok}", str(ok)).replace("{bad}", str(bad))


def test_cvdeploy_series_give_exact_totals_and_windows_since_the_last_look() -> None:
    clock = FakeClock()
    tracker = StatsTracker(clock)
    info = _info(("1", 100))
    first = tracker.stats(info, parse_export(_cvdeploy(10, 2), endpoint="digits"))
    entity = first["served_entities"]["cv_model-1"]
    assert first["metrics_source"] == "cvdeploy"
    assert entity["requests_total"] == 12
    assert entity["errors_total"] == 2
    assert entity["ready_replicas"] == 2
    assert entity["last_minute"]["basis"] == "lifetime"
    assert entity["last_minute"]["window_s"] is None
    clock.now += 10
    second = tracker.stats(info, parse_export(_cvdeploy(16, 2), endpoint="digits"))
    later = second["served_entities"]["cv_model-1"]
    assert later["requests_total"] == 18
    assert later["last_minute"]["basis"] == "since_last_look"
    assert later["last_minute"]["window_s"] == 10.0
    assert later["last_minute"]["requests"] == 6
    assert later["last_minute"]["error_rate"] == 0.0
    assert second["overall"]["requests"] == 6
