"""Drift sampling inside a serving process: every Nth request's image, profiled off the hot path.

The request path only counts and, for a sampled request, puts ``(image, prediction)`` on a
bounded queue (a full queue drops the sample, never waits). One worker thread decodes the
image again, computes the image and prediction features and feeds the
:class:`~cvdeploy.monitoring.drift.DriftDetector`. The reference is the registered version's
reference images (run through the model, so prediction features have a reference too), or
the first ``reference_requests`` samples when there are none.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.config import DriftConfig
from cvdeploy.monitoring.drift import DriftDetector, DriftPolicy, ReferenceProfile
from cvdeploy.monitoring.features import image_features, prediction_features
from cvdeploy.monitoring.sampling import RequestSampler
from cvdeploy.runtime import ImageLimits, decode_image

__all__ = ["DriftSampler"]

logger = logging.getLogger("cvdeploy.monitoring")

#: Turns one decoded image into the serving JSON of its prediction (for reference images).
Predictor = Callable[[np.ndarray], Mapping[str, Any]]


class DriftSampler:
    """Samples requests for drift detection on a worker thread.

    Args:
        config: The ``deployment.monitoring.drift`` section.
        limits: Decoding limits (the server's own).
        reference_images: Registered reference images; none means the first requests are
            the reference.
        predictor: Runs the model on a reference image (prediction features' reference).
        max_pending: Samples waiting for the worker; beyond it samples are dropped.
    """

    def __init__(
        self,
        config: DriftConfig,
        limits: ImageLimits,
        *,
        reference_images: Sequence[str | Path] = (),
        predictor: Predictor | None = None,
        max_pending: int = 64,
    ) -> None:
        self.config = config
        self._sampler = RequestSampler(config.sample_rate, config.max_samples_per_s)
        self._limits = limits
        self._reference_images = [Path(p) for p in reference_images]
        self._predictor = predictor
        self._queue: queue.Queue[tuple[Any, Mapping[str, Any]] | None] = queue.Queue(max_pending)
        self.sampled = 0
        self.dropped = 0
        self.detector: DriftDetector | None = None
        self._problem: str | None = None
        self._thread = threading.Thread(target=self._work, name="cvdeploy-drift", daemon=True)
        self._thread.start()

    # -- request path -------------------------------------------------------------------------

    def offer(self, images: Sequence[bytes | np.ndarray], results: Sequence[Any]) -> None:
        """Maybe sample some of these requests' images (a counter check per image)."""
        for image, result in zip(images, results, strict=False):
            if not self._sampler.take():
                continue
            try:
                self._queue.put_nowait((image, result.to_dict()))
                self.sampled += 1
            except queue.Full:
                self.dropped += 1

    # -- worker -------------------------------------------------------------------------------

    def _policy(self) -> DriftPolicy:
        c = self.config
        return DriftPolicy(
            psi_threshold=c.psi_threshold,
            ks_pvalue=c.ks_pvalue,
            min_window=c.min_window,
            min_reference=min(50, c.reference_requests),
        )

    def _build_detector(self) -> DriftDetector:
        c = self.config
        policy = self._policy()
        rows = [row for path in self._reference_images if (row := self._reference_row(path))]
        if len(rows) >= policy.min_reference:
            reference = ReferenceProfile.from_rows(rows)
            return DriftDetector(reference, window_size=c.window, policy=policy)
        if self._reference_images:
            logger.warning(
                "only %d of %d reference images could be profiled (need %d); the first %d "
                "requests will be the drift reference instead",
                len(rows), len(self._reference_images), policy.min_reference,
                c.reference_requests,
            )  # fmt: skip
        return DriftDetector(
            reference_from_first=c.reference_requests, window_size=c.window, policy=policy
        )

    def _reference_row(self, path: Path) -> dict[str, float] | None:
        try:
            image = decode_image(path.read_bytes(), self._limits)
            row = image_features(image)
            if self._predictor is not None:
                row.update(prediction_features(self._predictor(image)))
        except Exception as exc:  # a bad reference image is skipped, never fatal
            logger.warning("reference image %s skipped: %s", path.name, exc)
            return None
        return row

    def _work(self) -> None:
        try:
            self.detector = self._build_detector()
        except Exception as exc:
            self._problem = f"drift detection is off: {exc}"
            logger.exception("drift detection could not start")
            return
        while True:
            item = self._queue.get()
            if item is None:
                return
            image, prediction = item
            try:
                array = (
                    image if isinstance(image, np.ndarray) else decode_image(image, self._limits)
                )
                row = {**image_features(array), **prediction_features(prediction)}
            except Exception as exc:  # counted and shown, never fatal to the sampler
                self.detector.record_failure(f"{type(exc).__name__}: {exc}")
                continue
            self.detector.observe(row)

    # -- reading ------------------------------------------------------------------------------

    def report_dict(self) -> dict[str, Any]:
        """The drift verdict with the sampler's own counters."""
        counters = {
            "sample_rate": self.config.sample_rate,
            "max_samples_per_s": self.config.max_samples_per_s,
            "sampled": self.sampled,
            "capped": self._sampler.capped,
            "dropped": self.dropped,
        }
        detector = self.detector
        if detector is None:
            status = "off" if self._problem else "starting"
            return {
                "status": status,
                "reason": self._problem or "loading the reference",
                **counters,
            }
        report = detector.report().to_dict()
        if detector.reference is None:
            report["status"] = "collecting_reference"
        return {
            **report,
            **counters,
            "observed": detector.observed,
            "failed": detector.failed,
            "recent_failures": detector.recent_failures,
            "reference": "registered images" if self._reference_images else "first requests",
        }

    def close(self, timeout: float = 5.0) -> None:
        # With a full queue the worker (a daemon thread) simply dies with the process.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)
