"""Start-up batch-size tuning: a pure choice over measured timings."""

from __future__ import annotations

import pytest

from cvdeploy.runtime import load_model
from cvdeploy.serving.engine import InferenceEngine
from cvdeploy.serving.settings import ServeSettings
from cvdeploy.serving.tuning import candidate_sizes, choose_batch_size, measure_per_image


def test_candidate_sizes_are_powers_of_two_and_the_limit():
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(8) == [1, 2, 4, 8]
    assert candidate_sizes(12) == [1, 2, 4, 8, 12]


def test_choice_is_the_smallest_size_about_as_fast_as_the_best():
    # YOLOv8n-640 on 2 cores: batch 2 is the fastest per image; 8 is slower.
    yolo = {1: 0.075, 2: 0.0526, 4: 0.0535, 8: 0.0575}
    assert choose_batch_size(yolo) == 2
    # A small classifier keeps gaining up to 8.
    small = {1: 0.0028, 2: 0.0022, 4: 0.0017, 8: 0.0012}
    assert choose_batch_size(small) == 8
    # Within the tolerance the smaller size wins: less latency for the same throughput.
    assert choose_batch_size({1: 0.0100, 2: 0.0099}, tolerance=0.05) == 1


def test_choice_needs_timings():
    with pytest.raises(ValueError):
        choose_batch_size({})


def test_measurement_covers_every_size(classifier_path):
    model = load_model(classifier_path)
    timings = measure_per_image(model, [1, 2, 4], repeats=1)
    assert sorted(timings) == [1, 2, 4]
    assert all(t > 0 for t in timings.values())


def test_engine_caps_its_batches_after_loading(classifier_path):
    settings = ServeSettings.create(model_path=str(classifier_path), batching={"max_batch_size": 4})
    engine = InferenceEngine(settings)
    engine.load()
    assert sorted(engine.tuned_batch_sizes) == [1, 2, 4]
    assert engine.batcher.max_batch_size in (1, 2, 4)


def test_tuning_can_be_switched_off(classifier_path):
    settings = ServeSettings.create(
        model_path=str(classifier_path),
        batching={"max_batch_size": 4, "tune_batch_size": False},
    )
    engine = InferenceEngine(settings)
    engine.load()
    assert engine.tuned_batch_sizes == {}
    assert engine.batcher.max_batch_size == 4
