"""The inference engine behind every protocol: decode, batch, run, post-process, cache.

Protocols (image upload, KServe v2, MLflow) only translate their wire format into calls of
:meth:`InferenceEngine.predict_encoded`, :meth:`~InferenceEngine.predict_arrays` or
:meth:`~InferenceEngine.predict_tensors`; everything that decides speed and safety lives here
once: decoding in a thread pool, the dynamic batcher, the deadline, the result cache and the
metrics.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cvdeploy.batching import DynamicBatcher
from cvdeploy.errors import (
    CVDeployError,
    DeadlineExceededError,
    OverloadedError,
    PayloadTooLargeError,
)
from cvdeploy.monitoring.recorder import ServingRecorder
from cvdeploy.runtime import (
    ImageLimits,
    Model,
    PredictParams,
    Prepared,
    Result,
    decode_image,
    default_intra_op_threads,
    load_model,
)
from cvdeploy.serving.http import current_request_id
from cvdeploy.serving.metrics import ServingMetrics
from cvdeploy.serving.settings import ServeSettings
from cvdeploy.serving.tuning import candidate_sizes, choose_batch_size, measure_per_image

if TYPE_CHECKING:
    from cvdeploy.monitoring.payloads import PayloadLogger
    from cvdeploy.monitoring.sampler import DriftSampler

__all__ = ["EngineStats", "InferenceEngine"]

logger = logging.getLogger("cvdeploy.engine")


class _Deadline(NamedTuple):
    """When a request must be answered (monotonic clock), and the timeout it came from."""

    at: float
    seconds: float


class _Job(NamedTuple):
    """One image for the batcher: prepared already, or to be prepared by the runner."""

    prepared: Prepared | Callable[[], Prepared]
    params: PredictParams


@dataclass
class EngineStats:
    """Request-level counters in nanoseconds, the shape Triton's statistics extension reports."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    decode_ns: int = 0
    last_inference_ms: int = 0


class _ResultCache:
    """A bounded LRU of results keyed by image content hash and parameters."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[tuple[bytes, PredictParams], Result] = (
            collections.OrderedDict()
        )

    def get(self, key: tuple[bytes, PredictParams]) -> Result | None:
        result = self._items.get(key)
        if result is not None:
            self._items.move_to_end(key)
        return result

    def put(self, key: tuple[bytes, PredictParams], result: Result) -> None:
        self._items[key] = result
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class InferenceEngine:
    """One loaded model version with its batcher, decode pool, cache and metrics."""

    def __init__(self, settings: ServeSettings, model: Model | None = None) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.version = settings.version
        self.metrics = ServingMetrics(self.name, self.version)
        #: Exact, live figures for ``GET /monitoring`` and ``ModelMonitor``.
        self.recorder = ServingRecorder(self.name, self.version)
        self.stats = EngineStats()
        #: Milliseconds per image by batch size, measured at start-up (empty when not tuned).
        self.tuned_batch_sizes: dict[int, float] = {}
        #: Most images per model call: the config's limit, or less for a fixed-batch model.
        self.batch_limit = settings.batching.max_batch_size if settings.batching.enabled else 1
        self._tuned = False
        self.image_limits = ImageLimits(
            max_bytes=settings.limits.max_body_bytes,
            max_pixels=settings.limits.max_image_pixels,
        )
        self._model = model
        self._load_error: BaseException | None = None
        self._ready = threading.Event()
        if model is not None:
            self._ready.set()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self._decode_pool = ThreadPoolExecutor(
            max(2, cores), thread_name_prefix=f"decode-{self.name}"
        )
        batching = settings.batching
        self.batcher: DynamicBatcher[_Job, Result] = DynamicBatcher(
            self._run_batch,
            max_batch_size=batching.max_batch_size if batching.enabled else 1,
            max_queue_delay_ms=batching.max_queue_delay_ms if batching.enabled else 0.0,
            max_queue_size=batching.max_queue_size,
            observer=self._observe_batch,
            name=self.name,
        )
        self._cache = _ResultCache(settings.cache_size) if settings.cache_size > 0 else None
        self.drift: DriftSampler | None = None
        self.payloads: PayloadLogger | None = None

    def _observe_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self.metrics.observe_batch(size, seconds, waits)
        self.recorder.observe_batch(size, waits)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def model(self) -> Model:
        if self._model is None:
            if self._load_error is not None:
                raise OverloadedError(f"model {self.name!r} failed to load; see the server log")
            raise OverloadedError(f"model {self.name!r} is still loading", retry_after=1.0)
        return self._model

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.batcher.running

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    def load(self) -> Model:
        """Load and warm the model (blocking); safe to call from a worker thread."""
        if self._model is None:
            s = self.settings
            options: dict[str, Any] = dict(s.model_options)
            options.setdefault(
                "intra_op_threads", s.intra_op_threads or default_intra_op_threads(s.workers)
            )
            try:
                model = load_model(s.model_path, s.task, name=self.name, **options)
                self._tune(model)
            except BaseException as exc:
                self._load_error = exc
                raise
            self._model = model
        self._start_drift(self._model)
        self._ready.set()
        return self._model

    def _start_drift(self, model: Model) -> None:
        self._start_payload_log()
        if self.drift is not None or not self.settings.drift.enabled:
            return
        from cvdeploy.monitoring.sampler import DriftSampler

        params = model.default_params
        self.drift = DriftSampler(
            self.settings.drift,
            self.image_limits,
            reference_images=self.settings.reference_images,
            predictor=lambda image: model.predict([image], params)[0].to_dict(),
        )
        self.recorder.drift = self.drift

    def _start_payload_log(self) -> None:
        if self.payloads is not None or not self.settings.payload_log.enabled:
            return
        from cvdeploy.monitoring.payloads import PayloadLogger

        self.payloads = PayloadLogger(
            self.settings.payload_log, self.name, self.version, limits=self.image_limits
        )
        self.recorder.payloads = self.payloads

    def _tune(self, model: Model) -> None:
        """Warm every batch size the batcher may use and pick the one it aims for (once)."""
        if self._tuned:
            return
        self._tuned = True
        batching = self.settings.batching
        # A model with a fixed batch dimension takes no more than that per call.
        limit = min(batching.max_batch_size, model.max_batch_size or batching.max_batch_size)
        self.batch_limit = limit if batching.enabled else 1
        self.batcher.max_batch_size = self.batch_limit
        if self.batch_limit <= 1 or not batching.tune_batch_size:
            model.warmup(sorted({1, self.batch_limit}))
            return
        per_image = measure_per_image(model, candidate_sizes(limit))
        chosen = choose_batch_size(per_image)
        self.batcher.max_batch_size = chosen
        self.tuned_batch_sizes = {size: round(s * 1000, 3) for size, s in per_image.items()}
        logger.info(
            "model %r: batches capped at %d (ms per image by batch size: %s)",
            self.name,
            chosen,
            self.tuned_batch_sizes,
        )

    async def start(self, load_in_background: bool = True) -> None:
        """Start the batcher, then load the model (in the background by default).

        Loading in the background lets liveness answer at once while readiness stays false
        until the model is warm, which is what Kubernetes-style probes expect.
        """
        await self.batcher.start()
        if self._model is not None:
            # A model handed in (ModelServer's, already warm at batch 1) still gets its batch
            # sizes warmed and tuned before the server reports ready.
            self._ready.clear()
            await asyncio.get_running_loop().run_in_executor(
                self._decode_pool, self._tune, self._model
            )
            self._start_drift(self._model)
            self._ready.set()
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._decode_pool, self.load)
        if not load_in_background:
            await future
            return

        def _log_failure(done: asyncio.Future[Model]) -> None:
            exc = done.exception()
            if exc is not None:
                logger.error("loading model %r failed: %s", self.name, exc)

        future.add_done_callback(_log_failure)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        await self.batcher.stop(drain_timeout)
        if self.drift is not None:
            self.drift.close(timeout=1.0)
        if self.payloads is not None:
            self.payloads.close(timeout=5.0)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- prediction --------------------------------------------------------------------------

    def params(self, overrides: dict[str, object] | None = None) -> PredictParams:
        defaults = self.model.default_params
        return defaults.merged(overrides) if overrides else defaults

    def check_count(self, count: int) -> None:
        limit = self.settings.limits.max_images_per_request
        if count > limit:
            raise PayloadTooLargeError(
                f"{count} images in one request; the limit is {limit} "
                "(split the request, or raise limits.max_images_per_request)"
            )

    async def predict_encoded(
        self,
        images: Sequence[bytes],
        params: PredictParams | None = None,
        timeout: float | None = None,
    ) -> list[Result]:
        """Predict encoded images (JPEG, PNG, ...), one result per image, in order.

        ``timeout`` (seconds) may shorten, never lengthen, the server's request timeout.
        """
        deadline = self._deadline(timeout)
        self.check_count(len(images))
        params = params or self.model.default_params
        return await self._timed(self._encoded(images, params, deadline), images)

    async def predict_arrays(
        self,
        images: Sequence[np.ndarray],
        params: PredictParams | None = None,
        timeout: float | None = None,
    ) -> list[Result]:
        """Predict decoded HWC uint8 RGB images."""
        deadline = self._deadline(timeout)
        self.check_count(len(images))
        params = params or self.model.default_params
        model = self.model
        prepare = [(lambda img=img: model.preprocess(img)) for img in images]
        return await self._timed(self._prepared_jobs(prepare, params, deadline), images)

    async def predict_tensors(
        self,
        tensors: Sequence[np.ndarray],
        params: PredictParams | None = None,
        timeout: float | None = None,
    ) -> list[Result]:
        """Predict already-preprocessed model inputs (one CHW tensor per image)."""
        deadline = self._deadline(timeout)
        self.check_count(len(tensors))
        params = params or self.model.default_params
        model = self.model
        prepared = [model.prepare_tensor(t) for t in tensors]
        return await self._timed(self._submit_all(prepared, params, deadline))

    async def _timed(
        self, work: Any, images: Sequence[bytes | np.ndarray] | None = None
    ) -> list[Result]:
        """Await ``work`` with Triton-style statistics; its ``images`` go to the monitoring
        samplers (drift, payload log), which take a counter check each on this path."""
        started = time.perf_counter_ns()
        try:
            results: list[Result] = await work
        except BaseException:
            self.stats.fail_count += 1
            self.stats.fail_ns += time.perf_counter_ns() - started
            raise
        elapsed_ns = time.perf_counter_ns() - started
        self.stats.success_count += 1
        self.stats.success_ns += elapsed_ns
        self.stats.last_inference_ms = time.time_ns() // 1_000_000
        if images is not None:
            if self.drift is not None:
                self.drift.offer(images, results)
            if self.payloads is not None:
                self.payloads.offer(images, results, elapsed_ns / 1e9, current_request_id.get())
        return results

    def _deadline(self, timeout: float | None = None) -> _Deadline:
        seconds = self.settings.timeout
        if timeout is not None:
            seconds = min(seconds, max(0.0, timeout))
        return _Deadline(time.monotonic() + seconds, seconds)

    async def _encoded(
        self, images: Sequence[bytes], params: PredictParams, deadline: _Deadline
    ) -> list[Result]:
        if self._cache is None:
            model = self.model
            limits = self.image_limits
            prepare = [
                (lambda data=data: model.preprocess(decode_image(data, limits))) for data in images
            ]
            return await self._prepared_jobs(prepare, params, deadline)
        return await self._encoded_cached(self._cache, images, params, deadline)

    async def _encoded_cached(
        self,
        cache: _ResultCache,
        images: Sequence[bytes],
        params: PredictParams,
        deadline: _Deadline,
    ) -> list[Result]:
        keys = [(hashlib.sha256(data).digest(), params) for data in images]
        results: list[Result | None] = [cache.get(k) for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        for result in results:
            self.metrics.observe_cache(result is not None)
        if missing:
            model = self.model
            limits = self.image_limits
            prepare = [
                (lambda data=images[i]: model.preprocess(decode_image(data, limits)))
                for i in missing
            ]
            fresh = await self._prepared_jobs(prepare, params, deadline)
            for i, result in zip(missing, fresh, strict=True):
                results[i] = result
                cache.put(keys[i], result)
        return [r for r in results if r is not None]

    async def _prepared_jobs(
        self, prepare: Sequence[Callable[[], Prepared]], params: PredictParams, deadline: _Deadline
    ) -> list[Result]:
        if len(prepare) == 1 and self.batcher.idle:
            # Nothing to overlap with: let the idle runner decode as part of its call, saving
            # two thread hand-offs on the latency of a lone request.
            return await self._submit_all(prepare, params, deadline)
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        prepared: list[Prepared] = list(
            await asyncio.gather(*(loop.run_in_executor(self._decode_pool, p) for p in prepare))
        )
        self.stats.decode_ns += time.perf_counter_ns() - started
        return await self._submit_all(prepared, params, deadline)

    async def _submit_all(
        self,
        prepared: Sequence[Prepared | Callable[[], Prepared]],
        params: PredictParams,
        deadline: _Deadline,
    ) -> list[Result]:
        remaining = max(0.0, deadline.at - time.monotonic())
        self.metrics.depth.set(self.batcher.queue_size)
        jobs = [self.batcher.submit(_Job(p, params), remaining) for p in prepared]
        try:
            if len(jobs) == 1:
                return [await jobs[0]]
            gathered = await asyncio.gather(*jobs, return_exceptions=True)
            errors = [r for r in gathered if isinstance(r, BaseException)]
            if errors:
                # Prefer the most informative error: a client error over a server one.
                errors.sort(key=lambda e: 0 if isinstance(e, CVDeployError) else 1)
                raise errors[0]
            return list(gathered)  # type: ignore[arg-type]
        except DeadlineExceededError:
            # The batcher only knows the time that was left (often "0 s" after decoding);
            # the client needs the server's timeout, which counts from when the request came.
            raise DeadlineExceededError(
                f"no result within the {deadline.seconds:g} s request timeout (queue time "
                "included); the server is busy or the model is slow for this input: retry "
                "later, or raise the server's timeout"
            ) from None

    def _run_batch(self, jobs: list[_Job]) -> list[Result | Exception]:
        """Runs in the batcher's inference thread: stack, run once, post-process each item.

        Jobs handed over unprepared are decoded here first; one that fails to decode gets its
        own error without failing the others.
        """
        failed: dict[int, Exception] = {}
        ready: list[tuple[Prepared, PredictParams]] = []
        for index, job in enumerate(jobs):
            prepared = job.prepared
            if callable(prepared):
                try:
                    prepared = prepared()
                except Exception as exc:
                    failed[index] = exc
                    continue
            ready.append((prepared, job.params))
        results = iter(self._run_prepared(ready) if ready else [])
        return [failed[i] if i in failed else next(results) for i in range(len(jobs))]

    def _run_prepared(self, jobs: list[tuple[Prepared, PredictParams]]) -> list[Result]:
        model = self.model
        shape = jobs[0][0].tensor.shape
        if any(prepared.tensor.shape != shape for prepared, _ in jobs):
            return self._run_mixed_shapes(jobs)
        # A lone image with nobody waiting behind it is a latency problem, not a throughput one.
        lone = len(jobs) == 1 and self.batcher.queue_size == 0
        outputs = model.infer(np.stack([prepared.tensor for prepared, _ in jobs]), latency=lone)
        return [
            model.postprocess(outputs, index, prepared.meta, params)
            for index, (prepared, params) in enumerate(jobs)
        ]

    def _run_mixed_shapes(self, jobs: list[tuple[Prepared, PredictParams]]) -> list[Result]:
        """Inputs of different sizes (dynamic-shape models with stride padding) can't share one
        tensor: run one call per shape, keeping each result in its input's place."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (prepared, _) in enumerate(jobs):
            groups.setdefault(prepared.tensor.shape, []).append(index)
        results: dict[int, Result] = {}
        for indices in groups.values():
            part = self._run_prepared([jobs[i] for i in indices])
            results.update(zip(indices, part, strict=True))
        return [results[i] for i in range(len(jobs))]
