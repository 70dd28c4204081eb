"""An adaptive dynamic batcher: many concurrent requests, one model call per batch.

The rules, in the order a request meets them:

* ``submit`` refuses at once with :class:`OverloadedError` (503 + Retry-After) when
  ``max_queue_size`` requests are already waiting; a bounded queue is what keeps latency bounded
  under overload instead of letting every request time out together.
* When the runner is idle, the first request is dispatched immediately: an idle server never
  adds ``max_queue_delay_ms`` to a lone request's latency.
* While the runner is busy, requests queue up. When it frees, it takes up to ``max_batch_size``
  of them; if fewer than that are waiting it may wait up to ``max_queue_delay_ms`` (counted from
  the oldest waiting request) for more, as Triton's ``max_queue_delay_microseconds`` does.
* A request whose deadline has passed, or whose caller went away, is dropped before it is run:
  no compute is spent on answers nobody will read.
* ``run_batch`` runs in a dedicated executor, off the event loop, and must return exactly one
  result per input (an exception instance fails just that input); any other count fails the
  whole batch loudly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cvdeploy.errors import (
    CVDeployError,
    DeadlineExceededError,
    InferenceError,
    OverloadedError,
)

__all__ = ["BatchStats", "DynamicBatcher"]

logger = logging.getLogger("cvdeploy.batching")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: Called after each batch with (batch size, seconds in the model, queue seconds of each item).
BatchObserver = Callable[[int, float, Sequence[float]], None]


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    enqueued: float
    deadline: float | None


@dataclass
class BatchStats:
    """Cumulative counters, cheap to keep and read (Triton's statistics extension uses them)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    batches: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Groups items submitted from coroutines into batches for ``run_batch``.

    Args:
        run_batch: Blocking function from a list of items to one result per item.
        max_batch_size: Most items per call of ``run_batch``.
        max_queue_delay_ms: Longest wait for a fuller batch while under load.
        max_queue_size: Most items waiting; more are refused with 503.
        executor: Where ``run_batch`` runs; a private single thread by default, so one
            inference runs at a time with all the intra-op threads it was given.
        observer: Optional callback for metrics, called in the event loop after each batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT | Exception]],
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 256,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max(0.0, max_queue_delay_ms) / 1000.0
        self.max_queue_size = max_queue_size
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self._observer = observer
        self.name = name
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending[ItemT, ResultT]] = collections.deque()
        # asyncio.Event binds to a loop lazily (3.10+), so it can be made here.
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatch loop in the running event loop (idempotent)."""
        if self._worker is None:
            self._closing = False
            self._worker = asyncio.get_running_loop().create_task(
                self._dispatch_loop(), name=f"batcher-{self.name}"
            )

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking new work, finish what is queued (up to ``drain_timeout``), then stop."""
        self._closing = True
        deadline = time.monotonic() + drain_timeout
        while (self._queue or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(OverloadedError("the server is shutting down"))
        self._queue.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running: a new item would be dispatched at once."""
        return not self._queue and not self._busy

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    # -- submission --------------------------------------------------------------------------

    async def submit(self, item: ItemT, timeout: float | None = None) -> ResultT:
        """Queue one item and wait for its result.

        Raises:
            OverloadedError: the queue is full or the batcher is stopping (503).
            DeadlineExceededError: ``timeout`` seconds passed before the result came (504).
        """
        if self._worker is None or self._closing:
            raise OverloadedError("the model is not accepting requests (starting or stopping)")
        if len(self._queue) >= self.max_queue_size:
            self.stats.rejected += 1
            raise OverloadedError(
                f"the request queue is full ({self.max_queue_size} waiting); retry shortly",
                retry_after=self._retry_after(),
            )
        if not self._queue and not self._busy:
            return await self._run_alone(item, timeout)
        now = time.monotonic()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        deadline = now + timeout if timeout is not None else None
        self._queue.append(_Pending(item, future, now, deadline))
        self.stats.submitted += 1
        self._arrived.set()
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            # Leave the future cancelled so the dispatcher skips the item if it is still queued;
            # count it only if the dispatcher did not expire (and count) it first.
            if future.cancel():
                self.stats.expired += 1
            raise _deadline_error(timeout) from None
        except asyncio.CancelledError:
            future.cancel()  # the client went away: do not compute its answer
            raise

    async def _run_alone(self, item: ItemT, timeout: float | None) -> ResultT:
        """The idle fast path: run a lone item straight from the caller's task.

        Skipping the queue saves the dispatcher's two task switches on the latency of a lone
        request. The runner counts as busy until the call returns, even if the caller stops
        waiting, so the dispatcher never starts a second call beside it.
        """
        self._busy = True
        self.stats.submitted += 1
        started = time.monotonic()
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, [item])
        work.add_done_callback(lambda done: self._alone_done(done, started))
        try:
            if timeout is None:
                results = await asyncio.shield(work)
            else:
                results = await asyncio.wait_for(asyncio.shield(work), timeout)
        except asyncio.TimeoutError:
            self.stats.expired += 1
            raise _deadline_error(timeout) from None
        except CVDeployError:
            raise
        except Exception as exc:
            error = self._as_error(exc, 1)
            if error is exc:
                raise
            raise error  # noqa: B904 - _as_error already chained the cause
        if len(results) != 1:
            raise InferenceError(f"the model returned {len(results)} results for 1 input")
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _alone_done(
        self, done: asyncio.Future[Sequence[ResultT | Exception]], started: float
    ) -> None:
        self._busy = False
        elapsed = time.monotonic() - started
        ok = not done.cancelled() and done.exception() is None
        if ok and not any(isinstance(r, Exception) for r in done.result()):
            self.stats.completed += 1
        else:
            self.stats.failed += 1
        self._count_batch(1, elapsed, [0.0])
        self._arrived.set()  # anything queued meanwhile is now the dispatcher's

    def _retry_after(self) -> float:
        """A Retry-After hint: roughly how long the current queue takes to drain."""
        if self.stats.batches == 0:
            return 1.0
        per_batch = self.stats.compute_seconds / self.stats.batches
        batches_waiting = len(self._queue) / self.max_batch_size
        return float(max(1, round(per_batch * batches_waiting + 0.5)))

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        under_load = False
        while True:
            if not self._queue or self._busy:
                # Items queued behind a running lone request mean traffic is steady.
                under_load = bool(self._queue)
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if under_load and self.max_queue_delay > 0:
                await self._wait_for_fuller_batch()
            batch = self._take_batch()
            if not batch:
                continue
            self._busy = True
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [p.item for p in batch]
                )
                self._deliver(batch, results)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(OverloadedError("the server is stopping"))
                raise
            except Exception as exc:
                self._fail(batch, exc)
            finally:
                self._busy = False
            elapsed = time.monotonic() - started
            self._record(batch, started, elapsed)
            # Requests that arrived while the model ran mean traffic is steady: from now on it
            # pays to wait a moment for a fuller batch. An empty queue resets to "idle".
            under_load = bool(self._queue)

    async def _wait_for_fuller_batch(self) -> None:
        oldest = self._queue[0].enqueued
        while len(self._queue) < self.max_batch_size:
            remaining = oldest + self.max_queue_delay - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take_batch(self) -> list[_Pending[ItemT, ResultT]]:
        batch: list[_Pending[ItemT, ResultT]] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():  # caller timed out or disconnected
                continue
            if pending.deadline is not None and now >= pending.deadline:
                self.stats.expired += 1
                pending.future.set_exception(
                    DeadlineExceededError("the request waited in the queue past its deadline")
                )
                continue
            batch.append(pending)
        return batch

    def _deliver(
        self, batch: list[_Pending[ItemT, ResultT]], results: Sequence[ResultT | Exception]
    ) -> None:
        if len(results) != len(batch):
            raise InferenceError(
                f"the model returned {len(results)} results for a batch of {len(batch)} inputs"
            )
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            # A run_batch may fail single items by returning their exception in their place.
            if isinstance(result, Exception):
                self.stats.failed += 1
                pending.future.set_exception(result)
            else:
                self.stats.completed += 1
                pending.future.set_result(result)

    def _fail(self, batch: list[_Pending[ItemT, ResultT]], exc: Exception) -> None:
        self.stats.failed += len(batch)
        error = self._as_error(exc, len(batch))
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    def _as_error(self, exc: Exception, size: int) -> Exception:
        """Our own errors pass through; anything else is logged once and summarised."""
        if isinstance(exc, CVDeployError):
            return exc
        logger.error("batch of %d failed in %s", size, self.name, exc_info=exc)
        error = InferenceError("the model failed while running this batch")
        error.__cause__ = exc
        return error

    def _record(
        self, batch: list[_Pending[ItemT, ResultT]], started: float, elapsed: float
    ) -> None:
        self._count_batch(len(batch), elapsed, [started - p.enqueued for p in batch])

    def _count_batch(self, size: int, elapsed: float, waits: list[float]) -> None:
        self.stats.batches += 1
        self.stats.batch_sizes[size] += 1
        self.stats.compute_seconds += elapsed
        self.stats.queue_seconds += sum(waits)
        if self._observer is not None:
            try:
                self._observer(size, elapsed, waits)
            except Exception:  # metrics must never break serving
                logger.exception("batch observer failed")


def _deadline_error(timeout: float | None) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"no result within the {timeout or 0:g} s request timeout; the server is busy or the "
        "model is slow for this input"
    )
