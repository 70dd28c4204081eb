"""The quality gates are pure: thresholds, names and the regression check, with numbers."""

from __future__ import annotations

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.gates import check_gates, gated_metrics, normalise_thresholds

SEED = {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9}


def verdicts(stage):
    return {c.name: c.passed for c in stage.checks}


def test_a_model_above_every_threshold_passes_with_values_and_thresholds_recorded():
    stage = check_gates({"accuracy": 0.99, "precision": 0.98, "recall": 0.97, "f1": 0.975}, SEED)
    assert stage.passed
    first = stage.checks[0]
    assert (first.name, first.value, first.threshold) == ("threshold:accuracy", 0.99, 0.9)
    assert "0.9900 >= threshold 0.9000" in first.detail
    assert verdicts(stage)["regression"] is None  # no champion: not applicable, not a pass


def test_a_model_below_a_threshold_fails_and_the_reason_names_metric_value_and_threshold():
    stage = check_gates({"accuracy": 0.62, "precision": 0.95, "recall": 0.95, "f1": 0.95}, SEED)
    assert not stage.passed
    assert stage.reasons == ["gates: accuracy 0.6200 < threshold 0.9000"]


def test_a_threshold_at_exactly_the_value_passes():
    assert check_gates({"accuracy": 0.9}, {"accuracy": 0.9}).passed


def test_a_metric_that_was_not_measured_fails_rather_than_passing_silently():
    stage = check_gates({}, {"accuracy": 0.9})
    assert verdicts(stage) == {"threshold:accuracy": False, "regression": None}


def test_regression_beyond_the_tolerance_against_the_champion_fails():
    stage = check_gates(
        {"accuracy": 0.95},
        {"accuracy": 0.9},
        champion={"accuracy": 0.99},
        champion_version="3",
        max_regression=0.01,
    )
    assert verdicts(stage) == {"threshold:accuracy": True, "regression:accuracy": False}
    assert "champion v3 0.9900" in stage.reasons[0]


def test_a_drop_within_the_tolerance_passes():
    stage = check_gates(
        {"accuracy": 0.985}, {"accuracy": 0.9}, champion={"accuracy": 0.99}, max_regression=0.01
    )
    assert stage.passed


def test_unknown_threshold_names_are_an_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'mAP_typo'.*valid names: accuracy, precision"):
        normalise_thresholds({"mAP_typo": 0.5}, "classification")


def test_accuracy_means_nothing_for_a_detector_unless_it_came_from_the_built_in_defaults():
    with pytest.raises(ConfigError, match="detection evaluation does not produce"):
        normalise_thresholds({"accuracy": 0.9}, "detection")
    kept, notes = normalise_thresholds(
        {"accuracy": 0.9, "precision": 0.8}, "detection", from_defaults=True
    )
    assert kept == {"precision": 0.8}
    assert "accuracy" in notes[0]


def test_common_spellings_map_onto_the_metric_names():
    kept, _ = normalise_thresholds({"mAP50-95": 0.5, "MAP50": 0.8}, "detection")
    assert kept == {"map50_95": 0.5, "map50": 0.8}


def test_gated_metrics_keeps_the_quality_figures_only():
    figures = {"accuracy": 0.9, "count": 10, "per_class": {"a": {}}, "f1": True, "cm": [[1]]}
    assert gated_metrics(figures) == {"accuracy": 0.9}
    detection = {"map50": 0.8, "images": 50, "conf_threshold": 0.4, "recall": 0.7}
    assert gated_metrics(detection) == {"map50": 0.8, "recall": 0.7}
