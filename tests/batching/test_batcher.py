"""The dynamic batcher's contract, tested with plain functions instead of a model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cvdeploy.batching import DynamicBatcher
from cvdeploy.errors import DeadlineExceededError, InferenceError, OverloadedError


def run(coro):
    return asyncio.run(coro)


class Recorder:
    """A run_batch that records batch sizes and can be held closed with a gate."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        self.batches.append(list(items))
        return [i * 10 for i in items]


def test_each_item_gets_its_own_result():
    async def main():
        rec = Recorder(delay=0.01)
        batcher = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=5)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
        return rec, results

    rec, results = run(main())
    assert results == [i * 10 for i in range(20)]
    assert max(len(b) for b in rec.batches) <= 4
    assert sum(len(b) for b in rec.batches) == 20


def test_idle_runner_dispatches_a_lone_request_without_waiting():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=500)
        await batcher.start()
        started = time.monotonic()
        await batcher.submit(1)
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    # 500 ms of queue delay must not apply when nothing else is running.
    assert run(main()) < 0.25


def test_requests_queued_while_busy_form_one_batch():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first batch is now blocked inside run_batch
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.02)
        rec.gate.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return rec.batches

    assert run(main()) == [[0], [1, 2, 3, 4, 5]]


def test_full_queue_is_refused_with_retry_after():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        batcher = DynamicBatcher(rec, max_batch_size=1, max_queue_size=2)
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(3)
        rec.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()
        return info.value, batcher.stats.rejected

    error, rejected = run(main())
    assert error.status_code == 503
    assert error.retry_after >= 1
    assert rejected == 1


def test_expired_request_is_dropped_before_it_runs():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        batcher = DynamicBatcher(rec, max_batch_size=1)
        await batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(99, timeout=0.05)
        rec.gate.set()
        await blocker
        await asyncio.sleep(0.02)
        await batcher.stop()
        return rec.batches

    batches = run(main())
    assert [99] not in batches


def test_mismatched_batch_raises_inference_error():
    async def main():
        gate = threading.Event()

        def bad(items):
            gate.wait(5)
            return items[:1]

        batcher = DynamicBatcher(bad, max_batch_size=4, max_queue_delay_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.02)
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results

    first, *rest = run(main())
    assert first == 0
    assert all(isinstance(r, InferenceError) for r in rest)
    assert "2 inputs" in str(rest[0])
    assert "1 results" in str(rest[0])


def test_model_exception_becomes_inference_error_without_details():
    def boom(items):
        raise RuntimeError("/secret/path/model.onnx exploded")

    async def main():
        batcher = DynamicBatcher(boom)
        await batcher.start()
        try:
            await batcher.submit(1)
        finally:
            await batcher.stop()

    with pytest.raises(InferenceError) as info:
        run(main())
    assert "/secret" not in info.value.public_message()


def test_stop_drains_queued_requests():
    async def main():
        rec = Recorder(delay=0.01)
        batcher = DynamicBatcher(rec, max_batch_size=2)
        await batcher.start()
        futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.stop()
        return await asyncio.gather(*futures)

    assert run(main()) == [i * 10 for i in range(6)]


def test_submit_after_stop_is_refused():
    async def main():
        batcher = DynamicBatcher(Recorder())
        await batcher.start()
        await batcher.stop()
        await batcher.submit(1)

    with pytest.raises(OverloadedError):
        run(main())


def test_a_single_item_can_fail_without_failing_its_batch():
    async def main():
        gate = threading.Event()

        def run_batch(items):
            gate.wait(5)
            return [ValueError(f"bad {i}") if i == 2 else i for i in items]

        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_queue_delay_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.02)
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(main())
    assert results[:2] == [0, 1]
    assert isinstance(results[2], ValueError)
    assert results[3] == 3
    assert (stats.completed, stats.failed) == (3, 1)


def test_idle_reports_an_empty_and_free_runner():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        batcher = DynamicBatcher(rec, max_batch_size=1)
        await batcher.start()
        before = batcher.idle
        task = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        during = batcher.idle
        rec.gate.set()
        await task
        await asyncio.sleep(0.01)
        after = batcher.idle
        await batcher.stop()
        return before, during, after

    assert run(main()) == (True, False, True)


def test_a_lone_request_on_an_idle_runner_skips_the_queue_but_is_counted():
    observed = []

    async def main():
        batcher = DynamicBatcher(
            Recorder(), observer=lambda size, seconds, waits: observed.append(size)
        )
        await batcher.start()
        result = await batcher.submit(4)
        await asyncio.sleep(0)
        await batcher.stop()
        return result, batcher.stats

    result, stats = run(main())
    assert result == 40
    assert (stats.submitted, stats.completed, stats.batches) == (1, 1, 1)
    assert observed == [1]


def test_requests_arriving_during_a_lone_run_wait_and_batch_together():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        batcher = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=0)
        await batcher.start()
        lone = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.02)
        rec.gate.set()
        results = await asyncio.gather(lone, *queued)
        await batcher.stop()
        return results, rec.batches

    results, batches = run(main())
    assert results == [0, 10, 20, 30]
    assert batches == [[0], [1, 2, 3]]
