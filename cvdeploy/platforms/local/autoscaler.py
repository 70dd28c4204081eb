"""The autoscaling policy: a pure function from a snapshot of load and a clock to a replica count.

The platform's control loop calls :func:`decide` every tick with what the gateway and the
replicas report, the :class:`ScalingState` returned by the previous call and the current time,
then starts or stops replicas to reach ``Decision.desired``. Nothing here sleeps, reads a clock
or touches a process, so every rule is tested with plain floats as the clock (Ray Serve's
autoscaling policy is the model).

The rule, in order:

1. At 0 replicas, any request waiting or in flight starts ``max(1, min_replicas)`` replicas at
   once: a cold start must not also wait ``upscale_delay_s``.
2. With ``scale_to_zero``, ``idle_timeout_s`` with no new request and nothing in flight or
   queued drops to 0 (the idle timeout is the delay); at 0 with nothing waiting it stays at 0.
3. A count outside ``[min_replicas, max_replicas]`` (say after a config change) is corrected
   at once.
4. Otherwise the load recommends ``max(ceil((in_flight + queued) / target_concurrency),
   ceil(replicas * mean_cpu / target_cpu))`` clamped to the bounds; the count moves to it only
   once the recommendation has stayed above the current count for ``upscale_delay_s`` (or below
   it for ``downscale_delay_s``). A recommendation back at the current count restarts the wait,
   so a short burst adds nothing and a burst cancels a pending scale-down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cvdeploy.config import ScalingConfig, validate_section
from cvdeploy.errors import ConfigError

__all__ = ["AutoscalingPolicy", "Decision", "ScalingSnapshot", "ScalingState", "decide"]

# Ratios such as 3 * 70.0 / 70 come out as 3.0000000000000004; without this slack ceil() would
# ask for a fourth replica at exactly the target.
_EPSILON = 1e-9


def _ceil(x: float) -> int:
    return math.ceil(x - _EPSILON)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


@dataclass(frozen=True)
class AutoscalingPolicy:
    """What the autoscaler aims at and how fast it may move (validated on construction).

    Args:
        min_replicas: Replicas kept while traffic flows. 0 is allowed only with
            ``scale_to_zero`` and then behaves as 1 until the endpoint has been idle.
        max_replicas: Most replicas under load; at least ``min_replicas`` and at least 1.
        target_concurrency: In-flight (plus queued) requests per replica to aim at.
        target_cpu: CPU percent per replica to aim at, in (0, 100].
        upscale_delay_s: Seconds the load must ask for more replicas before they are added.
        downscale_delay_s: Seconds the load must ask for fewer replicas before they are removed.
        scale_to_zero: Drop to zero replicas after ``idle_timeout_s`` without requests.
        idle_timeout_s: Seconds with no request and nothing in flight before scaling to zero.

    Raises:
        ConfigError: A value is out of range; the message names the field and the fix.
    """

    min_replicas: int = 1
    max_replicas: int = 10
    target_concurrency: float = 4
    target_cpu: float = 70
    upscale_delay_s: float = 3
    downscale_delay_s: float = 60
    scale_to_zero: bool = False
    idle_timeout_s: float = 300

    def __post_init__(self) -> None:
        if not isinstance(self.scale_to_zero, bool):
            raise ConfigError(f"scale_to_zero must be true or false, got {self.scale_to_zero!r}")
        low = 0 if self.scale_to_zero else 1
        if not _is_int(self.min_replicas) or self.min_replicas < low:
            hint = "" if self.scale_to_zero else "; to drop to zero when idle, set scale_to_zero"
            raise ConfigError(
                f"min_replicas must be an integer >= {low}, got {self.min_replicas!r}{hint}"
            )
        if not _is_int(self.max_replicas) or self.max_replicas < 1:
            raise ConfigError(f"max_replicas must be an integer >= 1, got {self.max_replicas!r}")
        if self.max_replicas < self.min_replicas:
            raise ConfigError(
                f"max_replicas ({self.max_replicas}) is less than min_replicas "
                f"({self.min_replicas}); raise max_replicas or lower min_replicas"
            )
        if not _is_number(self.target_concurrency) or self.target_concurrency <= 0:
            raise ConfigError(
                f"target_concurrency must be a number > 0 (in-flight requests per replica), "
                f"got {self.target_concurrency!r}"
            )
        if not _is_number(self.target_cpu) or not 0 < self.target_cpu <= 100:
            raise ConfigError(
                f"target_cpu must be a percent in (0, 100], got {self.target_cpu!r}; "
                "70 is a common choice"
            )
        for name in ("upscale_delay_s", "downscale_delay_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")

    @classmethod
    def from_config(
        cls, scaling: ScalingConfig | Mapping[str, Any] | None = None
    ) -> AutoscalingPolicy:
        """The policy for the config's ``deployment.scaling`` section (a model, a dict or None).

        Raises:
            ConfigError: The section is invalid; the lines start with ``deployment.scaling``.
        """
        section = validate_section(ScalingConfig, scaling, name="deployment.scaling")
        return cls(
            min_replicas=section.min_replicas,
            max_replicas=section.max_replicas,
            target_concurrency=section.target_concurrency,
            target_cpu=section.target_cpu,
            upscale_delay_s=section.upscale_delay_s,
            downscale_delay_s=section.downscale_delay_s,
            scale_to_zero=section.scale_to_zero,
            idle_timeout_s=section.idle_timeout_s,
        )

    @property
    def floor(self) -> int:
        """Fewest replicas while the endpoint is not idle."""
        return max(self.min_replicas, 1)


@dataclass(frozen=True)
class ScalingSnapshot:
    """What the platform sees of one served version at one tick.

    Args:
        current_replicas: Replicas ready or starting; a replica the control loop has just been
            asked to start must be counted here from the next tick on.
        in_flight: Requests being served by the replicas, summed over them.
        queued: Requests held at the gateway waiting for a replica (e.g. while at zero).
        cpu_percent: One reading per replica that reported one; missing replicas are left out.
            Readings are process CPU percent, so above 100 on several cores is allowed.
        last_request_at: When the gateway last received a request, on the caller's clock;
            None if it has received none.
    """

    current_replicas: int
    in_flight: int = 0
    queued: int = 0
    cpu_percent: tuple[float, ...] = ()
    last_request_at: float | None = None

    def __post_init__(self) -> None:
        # Built by the platform, not by users: a bad value is a bug, hence ValueError.
        for name in ("current_replicas", "in_flight", "queued"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        readings = tuple(self.cpu_percent)
        if not all(_is_number(c) and c >= 0 for c in readings):
            raise ValueError(f"cpu_percent readings must be finite and >= 0, got {readings!r}")
        object.__setattr__(self, "cpu_percent", readings)
        if self.last_request_at is not None and not _is_number(self.last_request_at):
            raise ValueError(f"last_request_at must be a finite time, got {self.last_request_at}")

    @property
    def load(self) -> int:
        """Requests the replicas are asked to carry: in flight plus queued."""
        return self.in_flight + self.queued


@dataclass(frozen=True)
class ScalingState:
    """What :func:`decide` remembers between ticks; start with ``ScalingState()``.

    Args:
        above_since: Since when the recommendation has been above the current count.
        below_since: Since when the recommendation has been below the current count.
        idle_since: Since when nothing has been in flight or queued (as seen by ``decide``).
    """

    above_since: float | None = None
    below_since: float | None = None
    idle_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one tick.

    Args:
        desired: Replicas to run now.
        recommended: What the load alone asks for, within the bounds (``desired`` may lag it
            while a delay runs).
        reason: One sentence for logs and ``monitor_endpoint``.
        state: Pass to the next call of :func:`decide`.
    """

    desired: int
    recommended: int
    reason: str
    state: ScalingState = field(default_factory=ScalingState)


def _recommend(policy: AutoscalingPolicy, snap: ScalingSnapshot) -> tuple[int, str]:
    by_load = _ceil(snap.load / policy.target_concurrency)
    why = (
        f"concurrency wants {by_load} ({snap.load} in flight or queued / "
        f"target_concurrency {policy.target_concurrency:g})"
    )
    wanted = by_load
    if snap.cpu_percent and snap.current_replicas > 0:
        mean_cpu = sum(snap.cpu_percent) / len(snap.cpu_percent)
        by_cpu = _ceil(snap.current_replicas * mean_cpu / policy.target_cpu)
        why += (
            f", cpu wants {by_cpu} ({snap.current_replicas} x {mean_cpu:.0f}% / "
            f"target_cpu {policy.target_cpu:g}%)"
        )
        wanted = max(wanted, by_cpu)
    else:
        why += ", no cpu readings"
    clamped = min(max(wanted, policy.floor), policy.max_replicas)
    if clamped != wanted:
        bound = "max_replicas" if clamped < wanted else "min_replicas"
        why += f", clamped to {bound} {clamped}"
    return clamped, why


def decide(
    policy: AutoscalingPolicy, snapshot: ScalingSnapshot, state: ScalingState, now: float
) -> Decision:
    """How many replicas to run now, and the state to pass to the next call.

    Args:
        policy: The targets, bounds and delays.
        snapshot: The load at ``now``.
        state: What the previous call returned (``ScalingState()`` on the first).
        now: The current time in seconds, on the same clock as ``snapshot.last_request_at``.
    """
    current = snapshot.current_replicas
    busy = snapshot.load > 0
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    recommended, why = _recommend(policy, snapshot)
    fresh = ScalingState(idle_since=idle_since)

    def at_once(desired: int, reason: str) -> Decision:
        return Decision(desired=desired, recommended=recommended, reason=reason, state=fresh)

    # 1. Cold start: the requests are already waiting, so no delay applies.
    if current == 0 and busy:
        target = min(policy.floor, policy.max_replicas)
        return at_once(
            target,
            f"scaling from zero: {snapshot.load} request(s) waiting; starting "
            f"{_replicas(target)} now (a cold start skips upscale_delay_s)",
        )

    # 2. Idle to zero.
    if policy.scale_to_zero and not busy:
        if current == 0:
            return at_once(0, "scaled to zero; no requests waiting")
        quiet_since = idle_since if idle_since is not None else now
        if snapshot.last_request_at is not None:
            quiet_since = max(quiet_since, snapshot.last_request_at)
        idle_for = now - quiet_since
        if idle_for >= policy.idle_timeout_s:
            return at_once(
                0,
                f"no requests for {idle_for:.1f}s (idle_timeout_s {policy.idle_timeout_s:g}); "
                f"scaling {current} -> 0",
            )

    # 3. Out of bounds, e.g. after the bounds changed: correct at once.
    if current > policy.max_replicas:
        return at_once(
            policy.max_replicas,
            f"{_replicas(current)} is above max_replicas {policy.max_replicas}; "
            f"scaling down to {policy.max_replicas} now",
        )
    if current < policy.floor:
        return at_once(
            policy.floor,
            f"{_replicas(current)} is below min_replicas {policy.floor}; "
            f"scaling up to {policy.floor} now",
        )

    # 4. Follow the load, after it has stayed on one side of the current count for the delay.
    if recommended == current:
        return at_once(current, f"{why}; holding {current}")
    up = recommended > current
    since = state.above_since if up else state.below_since
    since = now if since is None else since
    waited = now - since
    delay, delay_name = (
        (policy.upscale_delay_s, "upscale_delay_s")
        if up
        else (policy.downscale_delay_s, "downscale_delay_s")
    )
    if waited >= delay:
        return at_once(
            recommended,
            f"{why}; {'above' if up else 'below'} {current} for {waited:.1f}s "
            f"(>= {delay_name} {delay:g}); scaling {current} -> {recommended}",
        )
    pending = (
        ScalingState(above_since=since, idle_since=idle_since)
        if up
        else ScalingState(below_since=since, idle_since=idle_since)
    )
    return Decision(
        desired=current,
        recommended=recommended,
        reason=f"{why}; {'above' if up else 'below'} {current} for {waited:.1f}s of "
        f"{delay_name} {delay:g}; holding {current}",
        state=pending,
    )
