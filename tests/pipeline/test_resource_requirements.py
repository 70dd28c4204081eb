"""The resources stage: model size, load time and memory measured in a child process."""

from __future__ import annotations

from pathlib import Path

import model_factory as mf
import pytest

from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file
from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.resources import ResourceLimits, measure_resources
from cvdeploy.pipeline.stages import StageResult


def check(stage: StageResult, name: str) -> tuple[bool | None, str]:
    found = [c for c in stage.checks if c.name == name]
    assert len(found) == 1, f"{name} not in {[c.name for c in stage.checks]}"
    return found[0].passed, found[0].detail


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_memory_mb must be > 0"):
        ResourceLimits(max_memory_mb=0)


def test_missing_file_fails_without_a_child(tmp_path: Path) -> None:
    stage = measure_resources(tmp_path / "absent.onnx")
    assert stage.status == "failed"
    assert "is not a file" in stage.reasons[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", [CLASSIFIER, DETECTOR])
def test_demo_models_fit_generous_limits(name: str) -> None:
    limits = ResourceLimits(max_model_mb=50, max_load_s=60, max_memory_mb=4000)
    stage = measure_resources(demo_file(name), limits=limits)
    assert stage.name == "resources"
    assert stage.status == "passed", stage.reasons
    assert [c.name for c in stage.checks] == ["measure", "model_size", "load_time", "memory"]
    assert all(c.passed is True for c in stage.checks)
    figures = stage.figures
    assert figures["model_mb"] == pytest.approx(demo_file(name).stat().st_size / 2**20, abs=1e-3)
    assert figures["load_s"] > 0
    assert figures["peak_rss_mb"] >= figures["baseline_rss_mb"] > 0
    assert figures["model_rss_mb"] == pytest.approx(
        figures["peak_rss_mb"] - figures["baseline_rss_mb"], abs=2e-3
    )


@pytest.mark.slow
def test_no_limits_report_values_as_not_applicable(tmp_path: Path) -> None:
    stage = measure_resources(mf.make_classifier_model(tmp_path / "m.onnx"))
    assert stage.status == "passed", stage.reasons
    for name in ("model_size", "load_time", "memory"):
        passed, detail = check(stage, name)
        assert passed is None
        assert detail.startswith("no limit set; measured")


@pytest.mark.slow
def test_memory_limit_breached_fails(tmp_path: Path) -> None:
    stage = measure_resources(
        mf.make_classifier_model(tmp_path / "m.onnx"), limits=ResourceLimits(max_memory_mb=1)
    )
    passed, detail = check(stage, "memory")
    assert passed is False
    assert "over the limit of 1 MiB" in detail


@pytest.mark.slow
def test_model_size_and_load_time_limits_breached_fail(tmp_path: Path) -> None:
    limits = ResourceLimits(max_model_mb=1e-6, max_load_s=1e-9)
    stage = measure_resources(mf.make_classifier_model(tmp_path / "m.onnx"), limits=limits)
    assert check(stage, "model_size")[0] is False
    assert check(stage, "load_time")[0] is False
    assert "raise max_load_s" in check(stage, "load_time")[1]


@pytest.mark.slow
def test_child_that_cannot_load_the_model_fails_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("not a model\n")
    stage = measure_resources(path, limits=ResourceLimits(max_memory_mb=100))
    passed, detail = check(stage, "measure")
    assert passed is False
    assert "is a text file, not an ONNX model" in detail
    assert check(stage, "memory") == (None, "not measured: the child process failed")


@pytest.mark.slow
def test_child_over_its_timeout_fails(tmp_path: Path) -> None:
    stage = measure_resources(mf.make_classifier_model(tmp_path / "m.onnx"), timeout_s=0.01)
    passed, detail = check(stage, "measure")
    assert passed is False
    assert "was stopped" in detail
