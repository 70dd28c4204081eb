"""The rollout's rules without a platform: the window verdict, the split finder and the loop.

``roll_out`` runs against :class:`FakePlatform`, an in-memory stand-in for the four
``PlatformClient`` calls it makes, with a fake clock whose ``sleep`` only moves time, so a
60-second window takes no time at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from cvdeploy.errors import ConfigError, ModelLoadError, NotAvailableError
from cvdeploy.pipeline.rollout import (
    RolloutPolicy,
    SplitState,
    find_interrupted,
    judge_window,
    roll_out,
)
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointInfo, EndpointState

POLICY = RolloutPolicy(window_s=60, min_requests=50, step_timeout_s=300, max_latency_ms=100)


def _judge(policy: RolloutPolicy = POLICY, **figures: Any) -> str:
    base = {"requests": 0, "errors": 0, "latency_p95_ms": None, "elapsed_s": 0.0}
    return judge_window(policy, **{**base, **figures})[0]


# judge_window


def test_too_few_requests_early_is_wait() -> None:
    assert _judge(requests=5, errors=5, latency_p95_ms=999, elapsed_s=10) == "wait"


def test_error_rate_over_limit_breaches_after_20_requests() -> None:
    verdict, detail = judge_window(POLICY, requests=20, errors=1, latency_p95_ms=10.0, elapsed_s=3)
    assert verdict == "breach"
    assert "error rate 5.0%" in detail
    assert "1.0%" in detail


def test_error_rate_at_limit_is_not_a_breach() -> None:
    policy = RolloutPolicy(max_error_rate=0.05)
    assert _judge(policy, requests=20, errors=1, elapsed_s=3) == "wait"


def test_slow_p95_breaches() -> None:
    verdict, detail = judge_window(POLICY, requests=25, errors=0, latency_p95_ms=140.5, elapsed_s=5)
    assert verdict == "breach"
    assert "p95 latency 140.5 ms" in detail
    assert "100 ms" in detail


def test_latency_unchecked_without_a_limit() -> None:
    policy = RolloutPolicy(window_s=60, min_requests=50)
    assert _judge(policy, requests=60, latency_p95_ms=10_000, elapsed_s=60) == "pass"


def test_small_min_requests_lowers_the_early_threshold() -> None:
    policy = RolloutPolicy(window_s=2, min_requests=10, step_timeout_s=10)
    assert _judge(policy, requests=10, errors=1, elapsed_s=0.5) == "breach"
    assert _judge(policy, requests=9, errors=9, elapsed_s=0.5) == "wait"


def test_full_window_with_enough_requests_passes() -> None:
    verdict, detail = judge_window(POLICY, requests=50, errors=0, latency_p95_ms=40.0, elapsed_s=60)
    assert verdict == "pass"
    assert "50 requests" in detail


def test_enough_requests_before_the_window_ends_waits() -> None:
    assert _judge(requests=500, latency_p95_ms=40.0, elapsed_s=59.9) == "wait"


def test_window_over_with_too_few_requests_waits_for_more() -> None:
    assert _judge(requests=49, elapsed_s=120) == "wait"


def test_step_timeout_with_too_few_requests_is_idle() -> None:
    verdict, detail = judge_window(
        POLICY, requests=49, errors=0, latency_p95_ms=None, elapsed_s=300
    )
    assert verdict == "idle"
    assert "only 49 requests" in detail


def test_no_requests_at_all_is_idle_not_breach() -> None:
    assert _judge(requests=0, elapsed_s=300) == "idle"


def test_breach_wins_over_pass() -> None:
    assert _judge(requests=100, errors=2, latency_p95_ms=10.0, elapsed_s=60) == "breach"


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": ()},
        {"steps": (10, 50)},
        {"steps": (50, 10, 100)},
        {"steps": (0, 100)},
        {"steps": (10, 10, 100)},
        {"window_s": 0},
        {"window_s": 60, "step_timeout_s": 30},
        {"max_error_rate": 1.5},
        {"max_latency_ms": 0},
        {"min_requests": -1},
    ],
)
def test_bad_policy_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RolloutPolicy(**bad)


# find_interrupted


def _config(
    *versions: tuple[str, int], model: str = "cv_model", **extra: Any
) -> EndpointCoreConfig:
    return EndpointCoreConfig.parse(
        {
            "served_entities": [{"entity_name": model, "entity_version": v} for v, _ in versions],
            "traffic_config": {
                "routes": [
                    {"served_model_name": f"{model}-{v}", "traffic_percentage": p}
                    for v, p in versions
                ]
            },
            **extra,
        }
    )


def _info(config: EndpointCoreConfig | None, update: str = "NOT_UPDATING") -> EndpointInfo:
    state = EndpointState(ready="READY", config_update=update)  # type: ignore[arg-type]
    return EndpointInfo(
        name="ep", config=config, state=state, creation_timestamp=0, last_updated_timestamp=0
    )


def test_split_between_two_versions_is_found() -> None:
    found = find_interrupted(_info(_config(("1", 90), ("2", 10))), "cv_model")
    assert found == SplitState(champion="1", candidate="2", percent=10)


def test_champion_is_the_larger_share_wherever_listed() -> None:
    found = find_interrupted(_info(_config(("2", 30), ("1", 70))), "cv_model")
    assert found == SplitState("1", "2", 30)


def test_even_split_takes_the_first_listed_as_champion() -> None:
    assert find_interrupted(_info(_config(("1", 50), ("2", 50))), "cv_model") == ("1", "2", 50)


def test_single_version_is_not_a_split() -> None:
    assert find_interrupted(_info(_config(("1", 100))), "cv_model") is None


def test_zero_percent_fallback_is_not_a_split() -> None:
    config = _config(("1", 100), ("2", 0), fallback_served_entity="cv_model-2")
    assert find_interrupted(_info(config), "cv_model") is None


def test_split_of_another_model_is_not_ours() -> None:
    assert find_interrupted(_info(_config(("1", 90), ("2", 10), model="other")), "cv_model") is None


def test_endpoint_without_config_is_not_a_split() -> None:
    assert find_interrupted(_info(None), "cv_model") is None


# roll_out against a fake platform

Script = Callable[[str, int, float], tuple[float, float, float | None]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePlatform:
    """The four calls ``roll_out`` makes, over one endpoint held in memory.

    ``script(version, percent, now)`` gives an entity's request rate (per second), error
    fraction and p95 while it holds ``percent``; ``stats`` turns it into the platform's
    cumulative ``requests_total`` and ``errors_total`` counters.
    """

    def __init__(self, config: EndpointCoreConfig, clock: FakeClock, script: Script) -> None:
        self.config, self.clock, self.script = config, clock, script
        self.updates: list[EndpointCoreConfig] = []
        self.state = "NOT_UPDATING"
        self.unloadable: set[str] = set()
        self.totals: dict[str, list[float]] = {}
        self.seen_at = 0.0
        self.on_stats: Callable[[], None] | None = None

    def get_endpoint(self, name: str) -> EndpointInfo:
        return _info(self.config, self.state)

    def update_config(self, name: str, config: EndpointCoreConfig) -> EndpointInfo:
        self.updates.append(config)
        new = {e.entity_version for e in config.served_entities} - self.versions()
        if new & self.unloadable:
            self.state = "UPDATE_FAILED"
        else:
            self.config, self.state = config, "NOT_UPDATING"
            self.totals = {k: v for k, v in self.totals.items() if k in self.versions()}
        return self.get_endpoint(name)

    def wait_not_updating(self, name: str, timeout: float = 300) -> EndpointInfo:
        if self.state == "IN_PROGRESS":
            self.state = "NOT_UPDATING"
        if self.state == "UPDATE_FAILED":
            raise ModelLoadError(
                f"endpoint '{name}': the config update failed: replicas of cv_model-2 did not "
                "start (boom)"
            )
        return self.get_endpoint(name)

    def stats(self, name: str, window_s: float = 60) -> dict[str, Any]:
        if self.on_stats is not None:
            self.on_stats()
        dt, self.seen_at = self.clock.now - self.seen_at, self.clock.now
        share = {r.served_model_name: r.traffic_percentage for r in self.config.routes}
        entities = {}
        for e in self.config.served_entities:
            rate, error_fraction, p95 = self.script(e.entity_version, share[e.name], self.clock.now)
            total = self.totals.setdefault(e.entity_version, [0.0, 0.0])
            total[0] += rate * dt
            total[1] += rate * dt * error_fraction
            entities[e.name] = {
                "model": e.entity_name,
                "version": e.entity_version,
                "traffic_percentage": share[e.name],
                "last_minute": {"latency_ms": None if p95 is None else {"p95": p95}},
                "requests_total": int(total[0]),
                "errors_total": int(total[1]),
            }
        return {"name": name, "served_entities": entities}

    def versions(self) -> set[str]:
        return {e.entity_version for e in self.config.served_entities}

    def shares(self) -> dict[str, int]:
        names = {e.name: e.entity_version for e in self.config.served_entities}
        return {names[r.served_model_name]: r.traffic_percentage for r in self.config.routes}


def healthy(version: str, percent: int, now: float) -> tuple[float, float, float | None]:
    return 100.0 * percent / 100, 0.0, 20.0


FAST = RolloutPolicy(steps=(10, 50, 100), window_s=30, min_requests=50, step_timeout_s=120,
                     max_latency_ms=100, poll_s=1)  # fmt: skip


def _run(
    platform: FakePlatform,
    clock: FakeClock,
    policy: RolloutPolicy = FAST,
    candidate: str = "2",
    events: list[str] | None = None,
) -> Any:
    return roll_out(platform, "ep", "cv_model", candidate, policy,
                    on_event=None if events is None else events.append,
                    clock=clock, sleep=clock.sleep)  # fmt: skip


def test_all_steps_pass_and_the_candidate_serves_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)
    events: list[str] = []
    with caplog.at_level(logging.INFO, logger="cvdeploy.pipeline"):
        report = _run(platform, clock, events=events)
    assert report.status == "deployed"
    assert report.champion == "1"
    assert report.reason is None
    assert [(s.percent, s.verdict) for s in report.steps] == [
        (10, "passed"), (50, "passed"), (100, "final")]  # fmt: skip
    assert report.steps[0].requests >= 50  # 10 rps over the 30 s window
    assert report.steps[1].requests >= 50
    assert report.steps[1].seconds == pytest.approx(30, abs=1.5)
    assert report.steps[0].latency_p95_ms == 20.0
    assert platform.shares() == {"2": 100}
    assert [_shares(c) for c in platform.updates] == [
        {"1": 90, "2": 10}, {"1": 50, "2": 50}, {"2": 100}]  # fmt: skip
    assert any("deployed" in e for e in events)
    assert any("step 10%" in r.getMessage() for r in caplog.records)
    assert report.to_dict()["steps"][2]["verdict"] == "final"


def _shares(config: EndpointCoreConfig) -> dict[str, int]:
    names = {e.name: e.entity_version for e in config.served_entities}
    return {names[r.served_model_name]: r.traffic_percentage for r in config.routes}


def test_errors_at_the_second_step_roll_back_to_the_champion() -> None:
    def script(version: str, percent: int, now: float) -> tuple[float, float, float | None]:
        failing = version == "2" and percent == 50
        return 100.0 * percent / 100, 0.2 if failing else 0.0, 20.0

    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, script)
    report = _run(platform, clock)
    assert report.status == "rolled_back"
    assert [(s.percent, s.verdict) for s in report.steps] == [(10, "passed"), (50, "breached")]
    assert "error rate" in report.reason
    assert "50% step" in report.reason
    assert report.failed_requests == report.steps[1].errors > 0
    # Called at the first look with >= 20 requests, not at the window's end.
    assert report.steps[1].seconds < 5
    assert platform.shares() == {"1": 100}


def test_slow_candidate_rolls_back_at_the_first_step() -> None:
    def script(version: str, percent: int, now: float) -> tuple[float, float, float | None]:
        return 100.0 * percent / 100, 0.0, 150.0 if version == "2" else 20.0

    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, script)
    report = _run(platform, clock)
    assert report.status == "rolled_back"
    assert "p95 latency 150.0 ms" in report.reason
    assert report.failed_requests == 0
    assert platform.shares() == {"1": 100}


def _quiet(version: str, percent: int, now: float) -> tuple[float, float, float | None]:
    return 0.1, 0.0, None


def test_too_little_traffic_rolls_back_after_the_step_timeout() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, _quiet)
    report = _run(platform, clock)
    assert report.status == "rolled_back"
    assert [(s.percent, s.verdict) for s in report.steps] == [(10, "idle_rolled_back")]
    assert report.steps[0].seconds == pytest.approx(120, abs=1.5)
    assert "only" in report.reason
    assert platform.shares() == {"1": 100}


def test_too_little_traffic_is_promoted_when_allowed() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, _quiet)
    policy = RolloutPolicy(steps=(10, 100), window_s=30, min_requests=50, step_timeout_s=60,
                           allow_idle_promotion=True)  # fmt: skip
    report = _run(platform, clock, policy)
    assert report.status == "deployed"
    assert [s.verdict for s in report.steps] == ["idle_promoted", "final"]
    assert platform.shares() == {"2": 100}


def test_candidate_that_does_not_load_is_rolled_back() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)
    platform.unloadable.add("2")
    report = _run(platform, clock)
    assert report.status == "rolled_back"
    assert "switch to 10% failed" in report.reason
    assert "did not start (boom)" in report.reason
    assert [(s.percent, s.verdict) for s in report.steps] == [(10, "breached")]
    assert platform.shares() == {"1": 100}
    assert len(platform.updates) == 1  # the champion never stopped serving: nothing to undo


def test_candidate_already_serving_everything_is_left_alone() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("2", 100)), clock, healthy)
    report = _run(platform, clock)
    assert report.status == "deployed"
    assert report.champion is None
    assert "nothing to do" in report.reason
    assert platform.updates == []


def test_interrupted_rollout_of_the_same_candidate_resumes_at_its_step() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 50), ("2", 50)), clock, healthy)
    report = _run(platform, clock)
    assert report.status == "deployed"
    assert report.champion == "1"
    assert "resumed at 50%" in report.resumed
    assert [(s.percent, s.verdict) for s in report.steps] == [(50, "passed"), (100, "final")]
    assert report.steps[0].seconds >= 30  # the step is watched again in full
    assert [_shares(c) for c in platform.updates] == [{"2": 100}]


def test_interrupted_rollout_between_listed_steps_resumes_there() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 75), ("2", 25)), clock, healthy)
    report = _run(platform, clock)
    assert [s.percent for s in report.steps] == [25, 50, 100]
    assert "25%" in report.resumed


def test_interrupted_rollout_of_another_version_is_undone_first() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 90), ("3", 10)), clock, healthy)
    report = _run(platform, clock)
    assert report.status == "deployed"
    assert report.champion == "1"
    assert "version 3" in report.resumed
    assert "restored version 1 at 100%" in report.resumed
    assert [_shares(c) for c in platform.updates] == [
        {"1": 100}, {"1": 90, "2": 10}, {"1": 50, "2": 50}, {"2": 100}]  # fmt: skip


def test_exception_mid_step_rolls_back_and_propagates() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)

    def interrupt() -> None:
        if platform.shares().get("2") == 50 and clock.now > 40:
            platform.on_stats = None
            raise KeyboardInterrupt

    platform.on_stats = interrupt
    events: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _run(platform, clock, events=events)
    assert platform.shares() == {"1": 100}
    assert any("interrupted by KeyboardInterrupt" in e for e in events)


def test_platform_error_before_any_change_is_raised_without_a_rollback() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)

    def unreachable(name: str) -> EndpointInfo:
        raise NotAvailableError("no cvdeploy platform answers")

    platform.get_endpoint = unreachable  # type: ignore[method-assign]
    with pytest.raises(NotAvailableError):
        _run(platform, clock)
    assert platform.updates == []


def test_counter_reset_is_counted_from_zero() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)

    def reset() -> None:
        if platform.shares().get("2") == 10 and 10 < clock.now < 11:
            platform.totals["2"] = [0.0, 0.0]

    platform.on_stats = reset
    report = _run(platform, clock)
    assert report.status == "deployed"
    # 10 rps for 30 s: neither inflated nor shrunk by the counters restarting mid-step.
    assert 295 <= report.steps[0].requests <= 305


def test_update_in_flight_at_start_is_waited_for() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)
    platform.state = "IN_PROGRESS"
    events: list[str] = []
    report = _run(platform, clock, events=events)
    assert report.status == "deployed"
    assert any("already in progress" in e for e in events)


def test_candidate_removed_by_someone_else_ends_in_a_rollback() -> None:
    clock = FakeClock()
    platform = FakePlatform(_config(("1", 100)), clock, healthy)

    def remove() -> None:
        if clock.now > 5:
            platform.config = _config(("1", 100))

    platform.on_stats = remove
    report = _run(platform, clock)
    assert report.status == "rolled_back"
    assert "no longer among the endpoint's served entities" in report.reason
    assert platform.shares() == {"1": 100}
