"""The gateway's routing policies: traffic split, replica choice, circuit breaker, rate limit.

Each is a small synchronous object (or a pure function) with no I/O; where time matters the
clock is passed in, so the gateway owns the event loop and the tests own time. None of them
locks: the gateway calls them from one event loop.

* :class:`WeightedRouter` splits an endpoint's traffic between served entities by their route
  percentages, with nginx's smooth weighted round-robin.
* :func:`pick_replica` sends a request to the least-busy replica of the chosen entity.
* :class:`CircuitBreaker` keeps a failing replica out of rotation for a while.
* :class:`TokenBucket` enforces a per-token or per-endpoint request rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Literal, TypeVar

from cvdeploy.errors import ConfigError

__all__ = ["BreakerState", "CircuitBreaker", "TokenBucket", "WeightedRouter", "pick_replica"]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


class WeightedRouter:
    """Smooth weighted round-robin over named targets (nginx's ``upstream`` algorithm).

    Each pick adds every eligible target's weight to its running score, picks the highest score
    and takes the total weight off the winner. Unlike a random draw, the split is exact over
    every whole period (a 10/90 split gives 1 and 9 of each 10 picks), and unlike plain
    round-robin the heavy target's picks are interleaved with the light one's instead of
    arriving in a burst. A target of weight 0 is never picked.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ConfigError(
                    f"route weight for '{name}' is {weight!r}; give a whole number >= 0 "
                    "(its traffic percentage)"
                )
        self._weights = dict(weights)
        self._current = dict.fromkeys(self._weights, 0)

    @property
    def weights(self) -> dict[str, int]:
        """A copy of the weights, by target name."""
        return dict(self._weights)

    def pick(self, exclude: Container[str] = ()) -> str | None:
        """The next target, skipping those in ``exclude`` (e.g. with no healthy replica).

        Returns:
            The target's name, or None when every target of non-zero weight is excluded.
        """
        total = 0
        best: str | None = None
        for name, weight in self._weights.items():
            if weight == 0 or name in exclude:
                continue
            self._current[name] += weight
            total += weight
            # Strict ">" breaks ties by insertion order, which keeps the sequence deterministic.
            if best is None or self._current[name] > self._current[best]:
                best = name
        if best is not None:
            self._current[best] -= total
        return best


def pick_replica(
    candidates: Sequence[T],
    in_flight: Callable[[T], int],
    exclude: Container[T] = (),
    offset: int = 0,
) -> T | None:
    """The candidate with the fewest requests in flight, skipping those in ``exclude``.

    Ties go to the first tied candidate counted from index ``offset`` (wrapping round). The
    function keeps no state, so the caller passes a counter it advances on every request; that
    spreads equal loads over the replicas instead of always favouring the first (which, when
    all are idle, would send every request of a burst to one replica).

    Args:
        candidates: The replicas to choose from.
        in_flight: How many requests a replica is serving now.
        exclude: Replicas not to choose (open circuit breaker, draining).
        offset: Where to start counting; any integer (taken modulo ``len(candidates)``).

    Returns:
        The chosen replica, or None when every candidate is excluded (or there are none).
    """
    count = len(candidates)
    best: T | None = None
    best_load = 0
    for i in range(count):
        candidate = candidates[(offset + i) % count]
        if candidate in exclude:
            continue
        load = in_flight(candidate)
        if best is None or load < best_load:
            best, best_load = candidate, load
    return best


class CircuitBreaker:
    """Keeps one replica out of rotation after consecutive failures.

    ``closed`` lets every request through. After ``failure_threshold`` consecutive failures it
    turns ``open`` and refuses requests for ``reset_timeout_s``; then it is ``half_open`` and
    lets one trial request through at a time: a success closes it, a failure opens it again.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold is {failure_threshold}; give 1 or more failures")
        if reset_timeout_s < 0:
            raise ConfigError(f"reset_timeout_s is {reset_timeout_s}; give 0 or more seconds")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open and past its reset timeout)."""
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def allow(self) -> bool:
        """Whether a request may go to this replica now; True in half-open starts the trial."""
        self._refresh()
        if self._state == "closed":
            return True
        if self._state == "open":
            return False
        now = self._clock()
        # A trial whose outcome was never recorded (the request was cancelled) must not block
        # the replica forever, so it counts as abandoned after another reset timeout.
        if self._trial_started is not None and now - self._trial_started < self.reset_timeout_s:
            return False
        self._trial_started = now
        return True

    def record_success(self) -> None:
        """The replica answered: close the breaker and forget past failures."""
        self._state = "closed"
        self._failures = 0
        self._trial_started = None

    def record_failure(self) -> None:
        """The replica failed (connection error, 5xx, timeout)."""
        self._refresh()
        self._failures += 1
        if self._state == "half_open" or (
            self._state == "closed" and self._failures >= self.failure_threshold
        ):
            self._state = "open"
            self._opened_at = self._clock()
            self._trial_started = None
        # Already open: a late failure of a request sent before it opened changes nothing, and
        # must not push the reopening further out.

    def _refresh(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._state = "half_open"
            self._trial_started = None


class TokenBucket:
    """A rate limit of ``calls`` per ``period_s``, allowing bursts of up to ``calls``.

    The bucket starts full, holds at most ``calls`` tokens and gains ``calls / period_s`` tokens
    a second; each request takes one.
    """

    def __init__(self, calls: int, period_s: float, clock: Clock = time.monotonic) -> None:
        if calls < 1:
            raise ConfigError(f"rate limit calls is {calls}; give 1 or more")
        if period_s <= 0:
            raise ConfigError(f"rate limit period is {period_s} s; give more than 0 seconds")
        self.capacity = float(calls)
        self.rate = calls / period_s
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional while refilling)."""
        self._refill()
        return self._tokens

    def try_acquire(self) -> bool:
        """Take a token if one is available; False means the request is over the limit."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after_s(self) -> float:
        """Seconds until a token is available (0.0 when one is), for ``Retry-After``."""
        self._refill()
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def _refill(self) -> None:
        now = self._clock()
        # max(): a clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now
