"""Drift detection: what the features cost and how many requests a shift takes to be flagged.

1. **Feature cost**: ``image_features`` on a 640x480 and a 1280x720 synthetic scene, and
   ``compare`` on a full window (what ``DriftDetector.report`` pays every ``every`` requests);
   median and p90 of single-call timings.
2. **Detection delay**: a reference of 500 in-distribution images, then a darkened (x0.5),
   box-blurred (5x5) or 2x-enlarged stream fed one request at a time into a ``DriftDetector``
   (window 300, default policy: ``min_window`` 200, PSI > 0.2 and Bonferroni-corrected KS), the
   verdict taken after every request. *Cold*: a fresh detector, so nothing can be flagged before
   ``min_window`` requests. *Warm*: the window first holds 300 in-distribution requests, then the
   stream shifts; the delay counts shifted requests only. 10 seeded runs each: median and max.
3. **False alarms**: 20 seeded in-distribution runs of 1000 requests each (verdict every 10
   requests, i.e. 80 verdicts per run once the window holds 200): how many runs ever flagged.

The images are "natural-ish" scenes (smooth random colour fields plus fine noise, exposure,
contrast and noise level varying per image) around 160x120 +-10% for the streams, so a full run
takes about a minute; every feature but size is independent of the scale.

    python benchmarks/drift.py            # ~2 min on 2 cores
    python benchmarks/drift.py --quick    # fewer runs, ~20 s
    python -m benchmarks.drift            # the same, from the repository root

Prints a table and writes ``benchmarks/results/drift.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

from cvdeploy.monitoring.drift import DriftDetector, DriftPolicy, ReferenceProfile, compare
from cvdeploy.monitoring.features import image_features

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "drift.json"
WINDOW = 300
REFERENCE = 500

Shift = Callable[[np.ndarray], np.ndarray]


def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    position = np.linspace(0, n_in - 1, n_out)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    t = (position - low).astype(np.float32)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(n_out), low), 1 - t)
    np.add.at(matrix, (np.arange(n_out), high), t)
    return matrix


def natural_image(
    rng: np.random.Generator, size: tuple[int, int] = (160, 120), jitter: float = 0.1
) -> np.ndarray:
    """A smooth random scene with fine noise (the same generator as tests/monitoring)."""
    width = round(size[0] * rng.uniform(1 - jitter, 1 + jitter))
    height = round(size[1] * rng.uniform(1 - jitter, 1 + jitter))
    grid_h, grid_w = height // 16 + 2, width // 16 + 2
    grid = rng.standard_normal((3, grid_h, grid_w), dtype=np.float32)
    grid = 0.8 * grid[:1] + 0.4 * grid
    low = _interpolation(grid_h, height) @ grid @ _interpolation(grid_w, width).T
    low /= low.std() + 1e-6
    image = rng.normal(128, 12) + rng.uniform(25, 40) * low
    image += rng.uniform(4, 10) * rng.standard_normal((3, height, width), dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)


SHIFTS: dict[str, Shift] = {
    "darkened x0.5": lambda image: (image * 0.5).astype(np.uint8),
    "box-blurred 5x5": lambda image: np.asarray(uniform_filter(image, size=(5, 5, 1))),
    "enlarged 2x": lambda image: np.repeat(np.repeat(image, 2, axis=0), 2, axis=1),
}


def stream(seed: int, shift: Shift | None = None) -> Iterator[dict[str, float]]:
    rng = np.random.default_rng(seed)
    while True:
        image = natural_image(rng)
        yield image_features(shift(image) if shift else image)


def timings_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: first-call imports and allocations are not the steady state
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 4),
        "repeats": repeats,
    }


def delay(
    reference: ReferenceProfile, seed: int, shift: Shift, warm: bool, limit: int
) -> tuple[int | None, list[str]]:
    """Requests of the shifted stream until the detector says drift (None: not within limit)."""
    detector = DriftDetector(reference, window_size=WINDOW, every=1)
    if warm:
        quiet = stream(10_000 + seed)
        for _ in range(WINDOW):
            detector.observe(next(quiet))
    shifted = stream(20_000 + seed, shift)
    for count in range(1, limit + 1):
        detector.observe(next(shifted))
        report = detector.report()
        if report.status == "drift":
            return count, report.drifted
    return None, []


def summary(delays: list[int | None]) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    return {
        "delays": delays,
        "missed": len(delays) - len(found),
        "median": statistics.median(found) if found else None,
        "max": max(found) if found else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 delay runs, 5 false-alarm runs")
    args = parser.parse_args()
    delay_runs, alarm_runs, alarm_requests = (3, 5, 1000) if args.quick else (10, 20, 1000)
    policy = DriftPolicy()
    results: dict[str, Any] = {
        # Not ``platform``: benchmarks/platform.py shadows it when this script runs from here.
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()},
        "setup": {
            "window": WINDOW,
            "reference": REFERENCE,
            "policy": vars(policy),
            "stream_image_size": "160x120 +-10%",
        },
        "feature_cost": {},
        "detection_delay": {},
    }

    print(f"{'cost':<40}{'median ms':>10}{'p90 ms':>9}")
    rng = np.random.default_rng(0)
    for label, size in {"640x480": (640, 480), "1280x720": (1280, 720)}.items():
        image = np.ascontiguousarray(natural_image(rng, size, jitter=0.0))  # as decoded
        stats = timings_ms(lambda image=image: image_features(image), 300)
        results["feature_cost"][f"image_features {label}"] = stats
        name = f"image_features {label}"
        print(f"{name:<40}{stats['median_ms']:>10.3f}{stats['p90_ms']:>9.3f}")
    reference_rows, window_rows = stream(0), stream(1)
    reference = ReferenceProfile.from_rows([next(reference_rows) for _ in range(REFERENCE)])
    window = [next(window_rows) for _ in range(WINDOW)]
    stats = timings_ms(lambda: compare(reference, window, policy), 50)
    results["feature_cost"][f"compare, 10 features, window {WINDOW}"] = stats
    label = f"compare (10 features, window {WINDOW})"
    print(f"{label:<40}{stats['median_ms']:>10.3f}{stats['p90_ms']:>9.3f}")

    print(f"\n{'shift':<18}{'mode':<6}{'median':>8}{'max':>6}{'missed':>8}  flagged first")
    for name, shift in SHIFTS.items():
        for mode in ("cold", "warm"):
            outcomes = [
                delay(reference, seed, shift, mode == "warm", limit=3 * WINDOW)
                for seed in range(delay_runs)
            ]
            figures = summary([count for count, _ in outcomes])
            figures["first_flagged"] = sorted({f for _, drifted in outcomes for f in drifted})
            results["detection_delay"].setdefault(name, {})[mode] = figures
            print(
                f"{name:<18}{mode:<6}{figures['median']!s:>8}{figures['max']!s:>6}"
                f"{figures['missed']:>8}  {', '.join(figures['first_flagged'])}"
            )

    flagged_runs: list[dict[str, Any]] = []
    verdicts = 0
    for seed in range(1, alarm_runs + 1):
        detector = DriftDetector(reference, window_size=WINDOW, every=10)
        rows = stream(30_000 + seed)
        first: dict[str, Any] | None = None
        for count in range(1, alarm_requests + 1):
            detector.observe(next(rows))
            if count % 10:
                continue
            report = detector.report()
            verdicts += report.status != "insufficient_data"
            if report.status == "drift" and first is None:
                first = {"seed": seed, "request": count, "drifted": report.drifted}
        if first is not None:
            flagged_runs.append(first)
    results["false_alarms"] = {
        "runs": alarm_runs,
        "requests_per_run": alarm_requests,
        "verdicts": verdicts,
        "runs_flagged": len(flagged_runs),
        "rate": len(flagged_runs) / alarm_runs,
        "flagged": flagged_runs,
    }
    print(
        f"\nfalse alarms: {len(flagged_runs)} of {alarm_runs} in-distribution runs of "
        f"{alarm_requests} requests ever flagged ({verdicts} verdicts in all)"
    )
    for run in flagged_runs:
        print(f"  seed {run['seed']} at request {run['request']}: {', '.join(run['drifted'])}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
