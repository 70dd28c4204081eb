"""The performance stage: latency percentiles and throughput per batch size."""

from __future__ import annotations

from pathlib import Path

import model_factory as mf
import pytest

from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file
from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.performance import performance_test
from cvdeploy.pipeline.stages import StageResult

FAST = {"duration_s": 0.2, "min_iterations": 3, "intra_op_threads": 1}


def check(stage: StageResult, name: str) -> tuple[bool | None, str]:
    found = [c for c in stage.checks if c.name == name]
    assert len(found) == 1, f"{name} not in {[c.name for c in stage.checks]}"
    return found[0].passed, found[0].detail


@pytest.mark.parametrize("name", [CLASSIFIER, DETECTOR])
def test_demo_models_meet_generous_targets(name: str) -> None:
    stage = performance_test(
        demo_file(name), max_latency_p95_ms=10_000, min_images_per_s=0.01, **FAST
    )
    assert stage.name == "performance"
    assert stage.status == "passed", stage.reasons
    assert check(stage, "latency_p95")[0] is True
    assert check(stage, "throughput")[0] is True
    for size in (1, 8):
        assert stage.figures[f"b{size}_p95_ms"] >= stage.figures[f"b{size}_p50_ms"] > 0
        assert stage.figures[f"b{size}_images_per_s"] > 0


def test_no_targets_are_not_applicable(tmp_path: Path) -> None:
    stage = performance_test(mf.make_classifier_model(tmp_path / "m.onnx"), **FAST)
    assert stage.status == "passed"
    assert check(stage, "latency_p95")[0] is None
    assert check(stage, "throughput")[0] is None


def test_at_least_min_iterations_run(tmp_path: Path) -> None:
    stage = performance_test(
        mf.make_classifier_model(tmp_path / "m.onnx"),
        batch_sizes=[1],
        duration_s=1e-6,
        min_iterations=25,
        intra_op_threads=1,
    )
    assert "over 25 runs" in check(stage, "b1")[1]


def test_latency_limit_breached_fails(tmp_path: Path) -> None:
    stage = performance_test(
        mf.make_classifier_model(tmp_path / "m.onnx"), max_latency_p95_ms=1e-6, **FAST
    )
    passed, detail = check(stage, "latency_p95")
    assert passed is False
    assert "over the limit of 1e-06 ms" in detail


def test_throughput_floor_missed_fails(tmp_path: Path) -> None:
    stage = performance_test(
        mf.make_classifier_model(tmp_path / "m.onnx"), min_images_per_s=1e12, **FAST
    )
    passed, detail = check(stage, "throughput")
    assert passed is False
    assert "under the floor" in detail


def test_batch_sizes_above_a_fixed_batch_are_skipped(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "fixed.onnx", batch=2)
    stage = performance_test(path, batch_sizes=(1, 2, 8), **FAST)
    assert stage.status == "passed", stage.reasons
    assert check(stage, "b8") == (None, "skipped: the model's batch is fixed at 2")
    assert "b8_p50_ms" not in stage.figures
    assert "b2_p50_ms" in stage.figures


def test_latency_without_batch_1_is_not_applicable(tmp_path: Path) -> None:
    stage = performance_test(
        mf.make_classifier_model(tmp_path / "m.onnx"),
        batch_sizes=[4],
        max_latency_p95_ms=100,
        **FAST,
    )
    assert check(stage, "latency_p95")[0] is None


def test_model_failing_on_real_inputs_fails(tmp_path: Path) -> None:
    stage = performance_test(mf.make_failing_model(tmp_path / "failing.onnx"), **FAST)
    passed, detail = check(stage, "b1")
    assert passed is False
    assert "batch 1 failed" in detail


def test_unloadable_model_fails(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("not a model\n")
    assert check(performance_test(path, **FAST), "load")[0] is False


def test_bad_arguments_raise() -> None:
    with pytest.raises(ConfigError, match="batch_sizes"):
        performance_test(demo_file(CLASSIFIER), batch_sizes=[0])
    with pytest.raises(ConfigError, match="duration_s"):
        performance_test(demo_file(CLASSIFIER), duration_s=0)
