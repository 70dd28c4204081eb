"""Choosing the batch size the batcher aims for, from the model's own timings at start-up.

A bigger batch is not always faster per image: on a 2-core CPU, YOLOv8n-640 ran 19.0 img/s at
batch 2 and 17.4 at batch 8 (cache pressure), while a small classifier gains up to batch 8. So
after warm-up the engine times one call at each power of two up to ``max_batch_size`` and caps
batches at the smallest size within a few percent of the best time per image: the throughput of
the best size without the latency of needlessly large batches.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from cvdeploy.runtime import Model

__all__ = ["candidate_sizes", "choose_batch_size", "measure_per_image"]

#: A size counts as "as fast as the best" within this fraction of the best time per image.
TOLERANCE = 0.05


def candidate_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to the limit, and the limit itself."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


def choose_batch_size(per_image: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch size whose seconds per image are within ``tolerance`` of the best."""
    if not per_image:
        raise ValueError("no timings to choose from")
    best = min(per_image.values())
    return min(size for size, seconds in per_image.items() if seconds <= best * (1 + tolerance))


def measure_per_image(model: Model, sizes: list[int], repeats: int = 2) -> dict[int, float]:
    """Best-of-``repeats`` seconds per image of one model call at each batch size.

    Zero inputs are representative on CPU: convolution cost does not depend on pixel values.
    """
    height, width = model.input_size
    timings: dict[int, float] = {}
    for size in sizes:
        channels = model.channels
        shape = (
            (size, channels, height, width)
            if model.layout == "NCHW"
            else (size, height, width, channels)
        )
        batch = np.zeros(shape, dtype=np.float32)
        model.infer(batch)  # first call at a new shape allocates; not timed
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            model.infer(batch)
            best = min(best, time.perf_counter() - started)
        timings[size] = best / size
    return timings
