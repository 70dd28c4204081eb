"""The gateway's routing policies, driven without servers and with a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.local.routing import (
    CircuitBreaker,
    TokenBucket,
    WeightedRouter,
    pick_replica,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state(breaker: CircuitBreaker) -> str:
    # A call, not the property, so mypy does not narrow the state across transitions.
    return breaker.state


def picks(router: WeightedRouter, n: int, exclude: tuple[str, ...] = ()) -> Counter[str | None]:
    return Counter(router.pick(exclude) for _ in range(n))


# WeightedRouter


def test_canary_gets_exactly_ten_percent() -> None:
    router = WeightedRouter({"canary": 10, "stable": 90})
    assert picks(router, 1000) == {"canary": 100, "stable": 900}


def test_three_way_split_is_exact() -> None:
    router = WeightedRouter({"a": 33, "b": 33, "c": 34})
    assert picks(router, 1000) == {"a": 330, "b": 330, "c": 340}


def test_split_is_exact_over_every_period() -> None:
    router = WeightedRouter({"canary": 10, "stable": 90})
    for _ in range(5):
        assert picks(router, 100) == {"canary": 10, "stable": 90}


def test_smooth_split_interleaves_picks() -> None:
    router = WeightedRouter({"a": 2, "b": 1})
    # nginx's documented sequence for weights 2:1 is a, b, a (not a, a, b).
    assert [router.pick() for _ in range(6)] == ["a", "b", "a", "a", "b", "a"]


def test_weight_zero_is_never_picked() -> None:
    router = WeightedRouter({"old": 0, "new": 100})
    assert picks(router, 50) == {"new": 50}


def test_all_weights_zero_picks_none() -> None:
    assert WeightedRouter({"a": 0}).pick() is None
    assert WeightedRouter({}).pick() is None


def test_exclusion_keeps_remaining_split_exact() -> None:
    router = WeightedRouter({"a": 10, "b": 30, "c": 60})
    assert picks(router, 400, exclude=("c",)) == {"a": 100, "b": 300}


def test_every_target_excluded_picks_none() -> None:
    router = WeightedRouter({"a": 50, "b": 50})
    assert router.pick(exclude={"a", "b"}) is None


def test_split_recovers_after_exclusion_ends() -> None:
    router = WeightedRouter({"canary": 10, "stable": 90})
    picks(router, 37, exclude=("canary",))
    assert picks(router, 1000)["canary"] in range(99, 102)


def test_weights_property_is_a_copy() -> None:
    router = WeightedRouter({"a": 1})
    router.weights["a"] = 5
    assert router.weights == {"a": 1}


@pytest.mark.parametrize("weight", [-1, 1.5, True])
def test_invalid_weight_is_a_config_error(weight: object) -> None:
    with pytest.raises(ConfigError, match="'a'"):
        WeightedRouter({"a": weight})  # type: ignore[dict-item]


# pick_replica


def test_pick_replica_takes_least_in_flight() -> None:
    load = {"r1": 3, "r2": 1, "r3": 2}
    assert pick_replica(["r1", "r2", "r3"], load.__getitem__) == "r2"


def test_pick_replica_offset_spreads_equal_loads() -> None:
    replicas = ["r1", "r2", "r3"]
    chosen = [pick_replica(replicas, lambda _: 0, offset=i) for i in range(6)]
    assert chosen == ["r1", "r2", "r3", "r1", "r2", "r3"]


def test_pick_replica_offset_does_not_override_load() -> None:
    load = {"r1": 0, "r2": 5, "r3": 5}
    assert all(pick_replica(list(load), load.__getitem__, offset=i) == "r1" for i in range(3))


def test_pick_replica_skips_excluded() -> None:
    load = {"r1": 0, "r2": 4}
    assert pick_replica(["r1", "r2"], load.__getitem__, exclude={"r1"}) == "r2"


def test_pick_replica_none_when_all_excluded_or_empty() -> None:
    assert pick_replica(["r1"], lambda _: 0, exclude=["r1"]) is None
    assert pick_replica([], lambda _: 0) is None


def test_pick_replica_accepts_negative_offset() -> None:
    assert pick_replica(["r1", "r2"], lambda _: 0, offset=-1) == "r2"


# CircuitBreaker


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()


def test_breaker_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.consecutive_failures == 1


def test_breaker_half_opens_after_reset_timeout_with_one_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert state(breaker) == "half_open"
    assert breaker.allow()
    # The trial is in flight: no second request until its outcome is known.
    assert not breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_breaker_failure_in_half_open_reopens_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_breaker_abandoned_trial_is_retried_after_another_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=2.0, clock=clock)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_breaker_late_failure_while_open_does_not_extend_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(3.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert state(breaker) == "half_open"


@pytest.mark.parametrize(("threshold", "timeout"), [(0, 1.0), (1, -1.0)])
def test_breaker_rejects_bad_settings(threshold: int, timeout: float) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(failure_threshold=threshold, reset_timeout_s=timeout)


# TokenBucket


def test_bucket_allows_a_burst_of_capacity_then_refuses() -> None:
    bucket = TokenBucket(calls=3, period_s=1.0, clock=FakeClock())
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_calls_per_period() -> None:
    clock = FakeClock()
    bucket = TokenBucket(calls=2, period_s=1.0, clock=clock)
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    assert bucket.retry_after_s() == pytest.approx(0.5)
    clock.advance(0.25)
    assert not bucket.try_acquire()
    assert bucket.retry_after_s() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.retry_after_s() == 0.0
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_bucket_never_holds_more_than_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(calls=2, period_s=1.0, clock=clock)
    clock.advance(3600.0)
    assert bucket.tokens == 2.0
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]


def test_bucket_survives_a_clock_stepping_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(calls=1, period_s=10.0, clock=clock)
    assert bucket.try_acquire()
    clock.advance(-5.0)
    assert bucket.tokens == 0.0
    clock.advance(10.0)
    assert bucket.try_acquire()


@pytest.mark.parametrize(("calls", "period"), [(0, 1.0), (1, 0.0)])
def test_bucket_rejects_bad_settings(calls: int, period: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(calls=calls, period_s=period)
