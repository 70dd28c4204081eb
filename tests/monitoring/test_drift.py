"""Drift statistics, the verdict, and detection on synthetic image streams.

The streams are "natural-ish" images: smooth low-frequency colour fields (bilinear upsampling
of a coarse random grid) plus fine sensor-like noise, with a random exposure around 128, a random
contrast and noise level, and sizes around 160x120 varied by +-10% (small to keep the suite
fast; every statistic is scale-free). The reference is 300 such images from seed 0.

Measured when written: the in-distribution stream raised 0 false alarms in 20 seeded windows of
300 (false-alarm rate 0/20); fed one request at a time into a fresh detector (window 300,
``min_window`` 200), darkened, blurred and 2x-resized streams were all flagged at request 200,
the first request at which a verdict is allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from cvdeploy.errors import ConfigError
from cvdeploy.monitoring.drift import (
    DriftDetector,
    DriftPolicy,
    DriftReport,
    DriftWindow,
    ReferenceProfile,
    compare,
    ks_2samp,
    psi,
    psi_categorical,
)
from cvdeploy.monitoring.features import image_features

WINDOW = 300
FALSE_ALARM_RUNS = 20


def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    position = np.linspace(0, n_in - 1, n_out)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    t = (position - low).astype(np.float32)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(n_out), low), 1 - t)
    np.add.at(matrix, (np.arange(n_out), high), t)
    return matrix


def natural_image(rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A smooth random scene with fine noise, HWC uint8; exposure, contrast and size vary."""
    width = round(size[0] * rng.uniform(0.9, 1.1))
    height = round(size[1] * rng.uniform(0.9, 1.1))
    grid_h, grid_w = height // 16 + 2, width // 16 + 2
    grid = rng.standard_normal((3, grid_h, grid_w), dtype=np.float32)
    grid = 0.8 * grid[:1] + 0.4 * grid  # correlated channels: mostly luminance, some colour
    low = _interpolation(grid_h, height) @ grid @ _interpolation(grid_w, width).T
    low /= low.std() + 1e-6
    image = rng.normal(128, 12) + rng.uniform(25, 40) * low
    image += rng.uniform(4, 10) * rng.standard_normal((3, height, width), dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def darken(image: np.ndarray) -> np.ndarray:
    return (image * 0.5).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return np.asarray(uniform_filter(image, size=(5, 5, 1)))


def enlarge(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)


def stream(
    seed: int, shift: Callable[[np.ndarray], np.ndarray] | None = None
) -> Iterator[dict[str, float]]:
    rng = np.random.default_rng(seed)
    while True:
        image = natural_image(rng)
        yield image_features(shift(image) if shift else image)


def take(rows: Iterator[dict[str, float]], n: int) -> list[dict[str, float]]:
    return [next(rows) for _ in range(n)]


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return ReferenceProfile.from_rows(take(stream(0), 300))


def first_flagged(
    reference: ReferenceProfile, rows: Iterator[dict[str, float]], limit: int
) -> DriftReport:
    """Feed rows one at a time; the report at the first request flagged (or the last one)."""
    detector = DriftDetector(reference, window_size=WINDOW, every=1)
    report = detector.report()
    for _ in range(limit):
        detector.observe(next(rows))
        report = detector.report()
        if report.status == "drift":
            break
    return report


# ---- the acceptance: shifted streams flagged, the reference stream quiet ---------------------


def test_in_distribution_stream_stays_quiet_across_20_seeded_runs(
    reference: ReferenceProfile,
) -> None:
    """Measured false-alarm rate: 0 of 20 windows of 300 (the bound allows at most 1)."""
    alarms = []
    for seed in range(1, FALSE_ALARM_RUNS + 1):
        report = compare(reference, take(stream(seed), WINDOW))
        assert report.status in ("ok", "drift")
        if report.status == "drift":
            alarms.append((seed, [report.features[f].reason for f in report.drifted]))
    assert len(alarms) <= 1, alarms


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        (darken, {"brightness"}),
        (blur, {"sharpness"}),
        (enlarge, {"width", "height", "aspect"}),
    ],
    ids=["darkened", "blurred", "resized-2x"],
)
def test_shifted_stream_is_flagged_within_a_window(
    reference: ReferenceProfile,
    shift: Callable[[np.ndarray], np.ndarray],
    expected: set[str],
) -> None:
    detector_report = first_flagged(reference, stream(100, shift), limit=WINDOW)
    assert detector_report.status == "drift"
    # A fresh detector may not judge before min_window (200) rows: flagged at exactly 200.
    assert detector_report.window_size <= WINDOW
    assert set(detector_report.drifted) & expected
    for name in set(detector_report.drifted) & expected:
        verdict = detector_report.features[name]
        assert verdict.psi is not None
        assert verdict.psi > 0.2
        assert verdict.ks_pvalue is not None
        assert verdict.ks_pvalue < 0.01
        assert verdict.reason.startswith(f"{name}: window mean")
        assert "PSI" in verdict.reason
        assert "KS p=" in verdict.reason


def test_shift_after_a_full_quiet_window_is_flagged_within_a_window(
    reference: ReferenceProfile,
) -> None:
    detector = DriftDetector(reference, window_size=WINDOW, every=1)
    for row in take(stream(7), WINDOW):
        detector.observe(row)
    assert detector.report().status == "ok"
    darkened = stream(8, darken)
    shifted = 0
    while detector.report().status != "drift" and shifted < WINDOW:
        detector.observe(next(darkened))
        shifted += 1
    report = detector.report()
    assert report.status == "drift"
    # Halving every pixel moves brightness, contrast and the channel means: any may lead.
    assert set(report.drifted) <= {"brightness", "contrast", "mean_r", "mean_g", "mean_b"}
    assert shifted < WINDOW // 2


# ---- PSI and KS edge cases --------------------------------------------------------------------


def test_identical_samples_have_zero_psi() -> None:
    values = np.random.default_rng(0).normal(size=500)
    assert psi(values, values) == pytest.approx(0, abs=1e-12)
    assert psi_categorical(values.round(), values.round()) == pytest.approx(0, abs=1e-12)


def test_psi_of_a_shifted_normal_is_large_and_of_a_resample_small() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=2000)
    assert psi(base, rng.normal(size=2000)) < 0.05
    assert psi(base, rng.normal(1.0, 1.0, size=2000)) > 0.5


def test_psi_counts_values_beyond_the_reference_range() -> None:
    base = np.random.default_rng(2).uniform(0, 1, size=1000)
    # Everything above the reference's maximum: it must not be folded into the top bin.
    assert psi(base, base + 10) > 5


def test_constant_feature_gives_no_nan_and_no_alarm() -> None:
    constant = np.full(300, 640.0)
    assert psi(constant, constant) == pytest.approx(0)
    assert ks_2samp(constant, constant) == (0.0, 1.0)
    reference = ReferenceProfile.from_rows([{"width": 640.0}] * 300)
    report = compare(reference, [{"width": 640.0}] * 300)
    verdict = report.features["width"]
    assert report.status == "ok"
    assert verdict.status == "ok"
    assert verdict.psi == pytest.approx(0)
    assert verdict.ks_pvalue == 1.0
    assert all(v is not None for v in report.to_dict()["features"]["width"].values())


def test_constant_feature_that_changes_is_flagged() -> None:
    reference = ReferenceProfile.from_rows([{"width": 640.0}] * 300)
    report = compare(reference, [{"width": 1280.0}] * 300)
    assert report.drifted == ["width"]


def test_non_finite_values_are_ignored() -> None:
    clean = np.random.default_rng(3).normal(size=300)
    dirty = np.concatenate([clean, [np.nan, np.inf]])
    assert psi(clean, dirty) == pytest.approx(0)
    assert ks_2samp(clean, dirty) == pytest.approx((0.0, 1.0))


def test_empty_samples_raise() -> None:
    with pytest.raises(ValueError, match="finite"):
        psi(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        ks_2samp(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        psi_categorical([], [1.0])


def test_categorical_psi_flags_a_changed_top_class_distribution() -> None:
    rng = np.random.default_rng(4)
    reference_rows = [
        {"top_class": float(c), "confidence": 0.8} for c in rng.choice(5, 400, p=[0.4] + [0.15] * 4)
    ]
    same = [
        {"top_class": float(c), "confidence": 0.8} for c in rng.choice(5, 300, p=[0.4] + [0.15] * 4)
    ]
    moved = [
        {"top_class": float(c), "confidence": 0.8} for c in rng.choice(5, 300, p=[0.05] * 4 + [0.8])
    ]
    reference = ReferenceProfile.from_rows(reference_rows)
    assert compare(reference, same).status == "ok"
    report = compare(reference, moved)
    assert report.drifted == ["top_class"]
    verdict = report.features["top_class"]
    assert verdict.ks_pvalue is None  # categorical: PSI only, never KS
    assert "share of 4" in verdict.reason


def test_categorical_psi_pools_rare_and_unseen_classes() -> None:
    # 1000 classes seen once each: without pooling every window would look drifted.
    rng = np.random.default_rng(5)
    reference = rng.integers(0, 1000, 2000).astype(float)
    window = rng.integers(0, 1000, 300).astype(float)
    assert psi_categorical(reference, window) < 0.1
    assert psi_categorical(reference, np.full(300, 5000.0)) < 0.1  # unseen, but all "other"


def test_bonferroni_level_appears_in_the_reason(reference: ReferenceProfile) -> None:
    report = compare(reference, take(stream(200, darken), 250))
    # Ten image features are compared, so each KS test runs at 0.01 / 10.
    assert "< 0.001" in report.features["brightness"].reason


# ---- insufficient data, profiles, windows, the detector ---------------------------------------


def test_small_window_gives_insufficient_data_for_every_feature(
    reference: ReferenceProfile,
) -> None:
    report = compare(reference, take(stream(9), 199))
    assert report.status == "insufficient_data"
    assert report.drifted == []
    assert {v.status for v in report.features.values()} == {"insufficient_data"}
    assert "199 window values (need 200)" in report.features["brightness"].reason


def test_small_reference_gives_insufficient_data() -> None:
    reference = ReferenceProfile.from_rows([{"brightness": 1.0}] * 10)
    report = compare(reference, [{"brightness": 200.0}] * 300)
    assert report.status == "insufficient_data"


def test_features_missing_from_the_window_are_insufficient_not_drift(
    reference: ReferenceProfile,
) -> None:
    rows = [{**row, "confidence": 0.5} for row in take(stream(10), 250)]
    report = compare(reference, rows)
    assert report.status == "ok"
    assert report.features["confidence"].status == "insufficient_data"


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="ks_pvalue"):
        DriftPolicy(ks_pvalue=0)
    with pytest.raises(ConfigError, match="psi_threshold"):
        DriftPolicy(psi_threshold=-1)


def test_reference_profile_json_round_trip() -> None:
    profile = ReferenceProfile.from_rows(take(stream(11), 60))
    restored = ReferenceProfile.from_json(profile.to_json())
    assert set(restored.values) == set(profile.values)
    for name, values in profile.values.items():
        np.testing.assert_array_equal(restored.values[name], values)
    assert len(restored) == 60


def test_reference_profile_is_bounded_and_spans_the_run() -> None:
    rows = [{"x": float(i)} for i in range(10_000)]
    profile = ReferenceProfile.from_rows(rows, max_samples=100)
    assert profile.values["x"].size == 100
    assert profile.values["x"][0] == 0
    assert profile.values["x"][-1] == 9999


def test_reference_profile_rejects_garbage_json() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        ReferenceProfile.from_json("{")
    with pytest.raises(ConfigError, match="reference profile"):
        ReferenceProfile.from_json('{"features": {"x": "abc"}}')


def test_report_to_dict_is_json_ready(reference: ReferenceProfile) -> None:
    report = compare(reference, take(stream(12), 210)).to_dict()
    assert report["status"] == "ok"
    assert report["window_size"] == 210
    assert set(report["features"]["brightness"]) >= {"psi", "ks_pvalue", "reason", "status"}


def test_window_keeps_the_most_recent_rows() -> None:
    window = DriftWindow(size=3)
    for i in range(5):
        window.add({"x": float(i)})
    assert len(window) == 3
    assert [row["x"] for row in window.rows()] == [2.0, 3.0, 4.0]


def test_detector_builds_its_reference_from_the_first_requests() -> None:
    detector = DriftDetector(reference_from_first=100, window_size=WINDOW, every=1)
    rows = stream(13)
    for _ in range(99):
        detector.observe(next(rows))
    report = detector.report()
    assert detector.reference is None
    assert report.status == "insufficient_data"
    assert "99 of 100" in report.reason
    detector.observe(next(rows))
    assert detector.reference is not None
    assert len(detector.reference) == 100
    for _ in range(200):
        detector.observe(next(rows))
    assert detector.report().status == "ok"
    assert detector.report().window_size == 200
    assert detector.observed == 300


def test_detector_recomputes_only_every_n_observations(reference: ReferenceProfile) -> None:
    detector = DriftDetector(reference, every=50)
    rows = stream(14)
    first = detector.report()
    for _ in range(49):
        detector.observe(next(rows))
    assert detector.report() is first
    detector.observe(next(rows))
    second = detector.report()
    assert second is not first
    assert second.window_size == 50
    assert detector.report(refresh=True) is not second


def test_detector_counts_failures_and_keeps_the_last_reasons(reference: ReferenceProfile) -> None:
    detector = DriftDetector(reference, max_failures=2)
    for reason in ("truncated", "float image", "4-D array"):
        detector.record_failure(reason)
    assert detector.failed == 3
    assert detector.recent_failures == ["float image", "4-D array"]
    assert detector.observed == 0


def test_detector_needs_exactly_one_reference_source(reference: ReferenceProfile) -> None:
    with pytest.raises(ConfigError, match="reference_from_first"):
        DriftDetector()
    with pytest.raises(ConfigError, match="reference_from_first"):
        DriftDetector(reference, reference_from_first=10)


def test_detector_refuses_a_first_n_reference_below_min_reference() -> None:
    with pytest.raises(ConfigError, match="min_reference=50"):
        DriftDetector(reference_from_first=20)
    detector = DriftDetector(reference_from_first=20, policy=DriftPolicy(min_reference=20))
    assert detector.reference is None


def test_detector_is_safe_to_feed_from_threads(reference: ReferenceProfile) -> None:
    detector = DriftDetector(reference, window_size=WINDOW, every=10)
    rows = take(stream(15), 400)

    def feed(part: list[dict[str, float]]) -> None:
        for row in part:
            detector.observe(row)
            detector.report()

    threads = [threading.Thread(target=feed, args=(rows[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert detector.observed == 400
    assert detector.report(refresh=True).window_size == WINDOW
