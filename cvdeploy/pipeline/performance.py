"""Performance test: latency and throughput of ``Model.infer`` at the batch sizes the server uses.

Timed in-process on realistic inputs: random images through the model's own ``preprocess``
(letterbox or resize, normalisation, layout), so the tensor is what a request would produce. Only
``infer`` is timed: decoding and postprocessing depend on the request, not on the model. Batch 1
uses the latency session, as the server does for a lone request on an idle replica.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.pipeline.stages import StageResult, timed_stage
from cvdeploy.runtime.loader import load_model
from cvdeploy.runtime.model import Model

__all__ = ["performance_test"]

_WARMUP_RUNS = 3


def performance_test(
    onnx_path: Path,
    *,
    task: str | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    duration_s: float = 2.0,
    min_iterations: int = 10,
    max_latency_p95_ms: float | None = None,
    min_images_per_s: float | None = None,
    intra_op_threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> StageResult:
    """Time ``infer`` for ``duration_s`` (and at least ``min_iterations`` runs) per batch size.

    Returns:
        The ``performance`` stage: a check ``b{n}`` per batch size (passed=None when measured or
        skipped: it is a figure, not a verdict), ``latency_p95`` (batch 1 against
        ``max_latency_p95_ms``) and ``throughput`` (the best images/s against
        ``min_images_per_s``); figures ``b{n}_p50_ms``, ``b{n}_p95_ms``, ``b{n}_images_per_s``.

    Raises:
        ConfigError: a batch size, duration or iteration count below 1 (or 0 s).
    """
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    if duration_s <= 0 or min_iterations < 1:
        raise ConfigError("duration_s must be > 0 and min_iterations >= 1")
    with timed_stage("performance") as stage:
        try:
            model = load_model(
                onnx_path,
                task,
                providers=None if providers is None else list(providers),
                intra_op_threads=intra_op_threads,
                warmup=False,
            )
        except CVDeployError as exc:
            stage.check("load", False, f"the model does not load: {exc.message}")
            return stage
        throughput: dict[int, float] = {}
        for size in sizes:
            measured = _measure(stage, model, size, duration_s, min_iterations)
            if measured is not None:
                throughput[size] = measured
        _verdicts(stage, throughput, max_latency_p95_ms, min_images_per_s)
    return stage


def _inputs(model: Model, size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    height, width = model.input_size
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(size)]
    return np.stack([model.preprocess(image).tensor for image in images])


def _measure(
    stage: StageResult, model: Model, size: int, duration_s: float, min_iterations: int
) -> float | None:
    """Record the figures of one batch size; its images/s, or None when it did not run."""
    name = f"b{size}"
    fixed = model.max_batch_size
    if fixed is not None and size > fixed:
        stage.check(name, None, f"skipped: the model's batch is fixed at {fixed}", threshold=fixed)
        return None
    batch = _inputs(model, size)
    latency = size == 1
    try:
        for _ in range(_WARMUP_RUNS):
            model.infer(batch, latency=latency)
        times: list[float] = []
        deadline = time.perf_counter() + duration_s
        while len(times) < min_iterations or time.perf_counter() < deadline:
            started = time.perf_counter()
            model.infer(batch, latency=latency)
            times.append(time.perf_counter() - started)
    except CVDeployError as exc:
        stage.check(name, False, f"batch {size} failed: {exc.message}")
        return None
    millis = np.asarray(times) * 1000
    p50, p95 = float(np.percentile(millis, 50)), float(np.percentile(millis, 95))
    per_s = size * len(times) / float(np.sum(times))
    stage.figures[f"{name}_p50_ms"] = round(p50, 3)
    stage.figures[f"{name}_p95_ms"] = round(p95, 3)
    stage.figures[f"{name}_images_per_s"] = round(per_s, 1)
    stage.check(
        name,
        None,
        f"batch {size}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, {per_s:.0f} images/s "
        f"over {len(times)} runs",
        value={"p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "images_per_s": round(per_s, 1)},
    )
    return per_s


def _verdicts(
    stage: StageResult,
    throughput: dict[int, float],
    max_latency_p95_ms: float | None,
    min_images_per_s: float | None,
) -> None:
    p95 = stage.figures.get("b1_p95_ms")
    if max_latency_p95_ms is None:
        stage.check("latency_p95", None, "no latency limit set", value=p95)
    elif p95 is None:
        stage.check("latency_p95", None, "batch 1 was not measured; add 1 to batch_sizes")
    elif p95 > max_latency_p95_ms:
        stage.check(
            "latency_p95",
            False,
            f"batch-1 p95 latency {p95:.2f} ms is over the limit of {max_latency_p95_ms} ms; use "
            "a faster provider, a smaller model or input size, or raise max_latency_p95_ms",
            value=p95,
            threshold=max_latency_p95_ms,
        )
    else:
        stage.check(
            "latency_p95",
            True,
            f"batch-1 p95 {p95:.2f} ms",
            value=p95,
            threshold=max_latency_p95_ms,
        )
    best = max(throughput.values(), default=None)
    best_at = max(throughput, key=lambda s: throughput[s], default=None)
    if min_images_per_s is None:
        stage.check("throughput", None, "no throughput floor set", value=best)
    elif best is None:
        stage.check("throughput", False, "no batch size could be measured")
    elif best < min_images_per_s:
        stage.check(
            "throughput",
            False,
            f"the best throughput is {best:.0f} images/s (batch {best_at}), under the floor of "
            f"{min_images_per_s}; use a faster provider, larger batches or a smaller model, or "
            "lower min_images_per_s",
            value=round(best, 1),
            threshold=min_images_per_s,
        )
    else:
        stage.check(
            "throughput",
            True,
            f"{best:.0f} images/s at batch {best_at}",
            value=round(best, 1),
            threshold=min_images_per_s,
        )
