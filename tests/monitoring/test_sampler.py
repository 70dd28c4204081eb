"""The drift sampler: counts samples, survives images it cannot process, drops when full."""

from __future__ import annotations

import time

from cvdeploy.config import DriftConfig
from cvdeploy.demo import sample_images
from cvdeploy.monitoring.sampler import DriftSampler
from cvdeploy.runtime import ImageLimits


class Result:
    def to_dict(self) -> dict:
        return {"task": "classification", "classes": [{"class_id": 3, "label": "3", "score": 0.9}]}


def _wait(sampler: DriftSampler, observed: int) -> dict:
    for _ in range(200):
        report = sampler.report_dict()
        if report.get("observed", 0) + report.get("failed", 0) >= observed:
            return report
        time.sleep(0.02)
    return sampler.report_dict()


def test_unprocessable_images_are_counted_and_the_sampler_keeps_going():
    config = DriftConfig(sample_rate=1.0, reference_requests=20, window=50, min_window=20)
    sampler = DriftSampler(config, ImageLimits())
    png = sample_images("digit_*")[0].read_bytes()
    sampler.offer([b"not an image", png[:20], png], [Result(), Result(), Result()])
    report = _wait(sampler, 3)
    assert report["failed"] == 2
    assert report["observed"] == 1
    assert any("InvalidImageError" in reason for reason in report["recent_failures"])
    sampler.offer([png] * 3, [Result()] * 3)
    assert _wait(sampler, 6)["observed"] == 4  # still working
    sampler.close()


def test_only_every_nth_request_is_sampled():
    sampler = DriftSampler(DriftConfig(sample_rate=0.25), ImageLimits())
    png = sample_images("digit_*")[0].read_bytes()
    sampler.offer([png] * 40, [Result()] * 40)
    assert sampler.sampled == 10
    sampler.close()


def test_the_per_second_cap_keeps_the_cost_flat_under_load():
    from cvdeploy.monitoring.sampling import RequestSampler

    sampler = RequestSampler(rate=1.0, max_per_s=5)
    taken = sum(sampler.take() for _ in range(1000))  # a burst within one second
    assert taken == 5
    assert sampler.capped == 995
