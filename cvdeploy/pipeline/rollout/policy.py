"""What a rollout step must show: the policy and the pure verdict of one look at a step."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from cvdeploy.errors import ConfigError

__all__ = ["RolloutPolicy", "Verdict", "judge_window"]

Verdict = Literal["wait", "pass", "breach", "idle"]

# A breach is called once this many candidate requests are in (or min_requests, if fewer):
# enough that one unlucky request does not decide, few enough to spare users a bad version.
_EARLY_REQUESTS = 20


@dataclass(frozen=True)
class RolloutPolicy:
    """How traffic moves to the candidate and what sends it back.

    Attributes:
        steps: Candidate shares in percent, increasing, ending at 100 (the full switch).
        window_s: How long each step but the last watches the candidate.
        min_requests: Candidate requests a step needs to pass.
        step_timeout_s: How long a step may wait for ``min_requests``.
        allow_idle_promotion: After ``step_timeout_s`` with too few requests, go on to the next
            step instead of rolling back.
        max_error_rate: Most candidate server errors (5xx) per request over a step.
        max_latency_ms: Most candidate p95 latency over a step; None does not check it.
        poll_s: Seconds between looks at the candidate's figures.
    """

    steps: tuple[int, ...] = (10, 50, 100)
    window_s: float = 60.0
    min_requests: int = 50
    step_timeout_s: float = 600.0
    allow_idle_promotion: bool = False
    max_error_rate: float = 0.01
    max_latency_ms: float | None = None
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if (
            not steps
            or steps[-1] != 100
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps)
            or any(a >= b for a, b in itertools.pairwise(steps))
        ):
            raise ConfigError(
                f"rollout steps must be increasing integer percentages from 1 to 100 ending at "
                f"100, got {list(self.steps)}; e.g. [10, 50, 100]"
            )
        object.__setattr__(self, "steps", steps)
        if self.window_s <= 0 or self.poll_s <= 0:
            raise ConfigError(
                f"rollout window_s ({self.window_s}) and poll_s ({self.poll_s}) must be positive"
            )
        if self.step_timeout_s < self.window_s:
            raise ConfigError(
                f"rollout step_timeout_s ({self.step_timeout_s}) is shorter than window_s "
                f"({self.window_s}), so no step could pass; make it at least window_s"
            )
        if self.min_requests < 0:
            raise ConfigError(f"rollout min_requests must be >= 0, got {self.min_requests}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(
                f"rollout max_error_rate is a fraction from 0 to 1, got {self.max_error_rate}"
            )
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConfigError(
                f"rollout max_latency_ms must be positive (or unset), got {self.max_latency_ms}"
            )


def judge_window(
    policy: RolloutPolicy,
    *,
    requests: int,
    errors: int,
    latency_p95_ms: float | None,
    elapsed_s: float,
) -> tuple[Verdict, str]:
    """The verdict of one look at a step: ``wait``, ``pass``, ``breach`` or ``idle``.

    A limit exceeded breaches as soon as ``min(min_requests, 20)`` requests are in, without
    waiting for the window's end; a step passes after ``window_s`` with ``min_requests`` and no
    breach; it is idle after ``step_timeout_s`` with fewer requests.
    """
    rate = errors / requests if requests else 0.0
    if requests > 0 and requests >= min(policy.min_requests, _EARLY_REQUESTS):
        if rate > policy.max_error_rate:
            return "breach", (
                f"error rate {rate:.1%} ({errors} of {requests} requests) is over the limit "
                f"{policy.max_error_rate:.1%}"
            )
        limit = policy.max_latency_ms
        if limit is not None and latency_p95_ms is not None and latency_p95_ms > limit:
            return "breach", (
                f"p95 latency {latency_p95_ms:.1f} ms is over the limit {limit:g} ms "
                f"({requests} requests)"
            )
    if elapsed_s >= policy.window_s and requests >= policy.min_requests:
        p95 = "n/a" if latency_p95_ms is None else f"{latency_p95_ms:.1f} ms"
        return "pass", (
            f"{requests} requests over {elapsed_s:.0f} s, error rate {rate:.1%}, p95 {p95}"
        )
    if elapsed_s >= policy.step_timeout_s:
        return "idle", (
            f"only {requests} requests in {elapsed_s:.0f} s (step_timeout_s), "
            f"{policy.min_requests} needed to judge the candidate"
        )
    return "wait", f"{requests} requests after {elapsed_s:.1f} s"
