"""The autoscaling policy, driven tick by tick with a fake clock (plain floats)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cvdeploy.config import ScalingConfig
from cvdeploy.errors import ConfigError
from cvdeploy.platforms.local import (
    AutoscalingPolicy,
    Decision,
    ScalingSnapshot,
    ScalingState,
    decide,
)

POLICY = AutoscalingPolicy(
    min_replicas=1,
    max_replicas=10,
    target_concurrency=4,
    target_cpu=70,
    upscale_delay_s=3,
    downscale_delay_s=60,
)


class Loop:
    """The platform's control loop in miniature: replicas follow each decision at once."""

    def __init__(self, policy: AutoscalingPolicy, replicas: int, now: float = 1000.0) -> None:
        self.policy = policy
        self.replicas = replicas
        self.now = now
        self.state = ScalingState()
        self.last: Decision | None = None

    def tick(
        self,
        at: float,
        *,
        in_flight: int = 0,
        queued: int = 0,
        cpu: tuple[float, ...] = (),
        last_request_at: float | None = None,
    ) -> int:
        self.now = at
        snapshot = ScalingSnapshot(
            current_replicas=self.replicas,
            in_flight=in_flight,
            queued=queued,
            cpu_percent=cpu,
            last_request_at=last_request_at,
        )
        self.last = decide(self.policy, snapshot, self.state, at)
        self.state = self.last.state
        self.replicas = self.last.desired
        return self.replicas


# ---------------------------------------------------------------------------------- steady load


def test_steady_load_at_target_holds():
    loop = Loop(POLICY, replicas=2)
    for t in range(0, 600, 5):
        assert loop.tick(t, in_flight=8, cpu=(70.0, 70.0)) == 2
    assert loop.last is not None
    assert "holding 2" in loop.last.reason


def test_cpu_exactly_at_target_does_not_add_a_replica():
    # 3 * 70.0 / 70 is 3.0000000000000004 in floating point.
    loop = Loop(POLICY, replicas=3)
    assert loop.tick(0, in_flight=1, cpu=(70.0, 70.0, 70.0)) == 3
    assert loop.tick(100, in_flight=1, cpu=(70.0, 70.0, 70.0)) == 3


# ---------------------------------------------------------------------------------- scale up


def test_burst_scales_up_only_after_the_upscale_delay():
    loop = Loop(POLICY, replicas=1)
    assert loop.tick(0.0, in_flight=16) == 1
    assert loop.tick(1.0, in_flight=16) == 1
    assert loop.tick(2.9, in_flight=16) == 1
    assert loop.last is not None
    assert loop.last.recommended == 4
    assert "upscale_delay_s" in loop.last.reason
    assert loop.tick(3.0, in_flight=16) == 4
    assert "scaling 1 -> 4" in loop.last.reason


def test_short_burst_adds_no_replica():
    loop = Loop(POLICY, replicas=1)
    assert loop.tick(0.0, in_flight=16) == 1
    assert loop.tick(2.0, in_flight=16) == 1
    assert loop.tick(2.5, in_flight=2) == 1  # the burst is over: the wait restarts
    assert loop.tick(3.5, in_flight=16) == 1
    assert loop.tick(6.0, in_flight=16) == 1
    assert loop.tick(6.5, in_flight=16) == 4


def test_scale_up_uses_the_latest_recommendation():
    loop = Loop(POLICY, replicas=1)
    loop.tick(0.0, in_flight=8)
    assert loop.tick(3.0, in_flight=20) == 5


def test_queued_requests_count_as_load():
    loop = Loop(POLICY, replicas=1)
    loop.tick(0.0, in_flight=4, queued=8)
    assert loop.tick(3.0, in_flight=4, queued=8) == 3


def test_high_cpu_scales_up_with_little_concurrency():
    loop = Loop(POLICY, replicas=2)
    assert loop.tick(0.0, in_flight=1, cpu=(140.0, 140.0)) == 2
    assert loop.tick(3.0, in_flight=1, cpu=(140.0, 140.0)) == 4  # ceil(2 * 140 / 70)
    assert loop.last is not None
    assert "cpu wants 4" in loop.last.reason


def test_cpu_is_averaged_over_the_replicas_that_reported():
    loop = Loop(POLICY, replicas=3)
    loop.tick(0.0, in_flight=1, cpu=(105.0,))  # two replicas sent no reading
    assert loop.tick(3.0, in_flight=1, cpu=(105.0,)) == 5  # ceil(3 * 105 / 70)


def test_no_cpu_readings_scales_on_concurrency_alone():
    loop = Loop(POLICY, replicas=2)
    assert loop.tick(0.0, in_flight=8) == 2
    assert loop.last is not None
    assert "no cpu readings" in loop.last.reason


def test_scale_up_is_clamped_to_max_replicas():
    policy = dataclasses.replace(POLICY, max_replicas=3)
    loop = Loop(policy, replicas=1)
    loop.tick(0.0, in_flight=400, cpu=(100.0,))
    assert loop.tick(3.0, in_flight=400, cpu=(100.0,)) == 3
    assert loop.last is not None
    assert loop.last.recommended == 3
    assert "max_replicas" in loop.last.reason


def test_zero_upscale_delay_scales_at_once():
    loop = Loop(dataclasses.replace(POLICY, upscale_delay_s=0), replicas=1)
    assert loop.tick(0.0, in_flight=12) == 3


# ---------------------------------------------------------------------------------- scale down


def test_scale_down_waits_the_downscale_delay():
    loop = Loop(POLICY, replicas=4)
    assert loop.tick(0.0, in_flight=4) == 4
    assert loop.tick(30.0, in_flight=4) == 4
    assert loop.tick(59.9, in_flight=4) == 4
    assert loop.tick(60.0, in_flight=4) == 1
    assert loop.last is not None
    assert "downscale_delay_s" in loop.last.reason


def test_burst_cancels_a_pending_scale_down():
    loop = Loop(POLICY, replicas=4)
    assert loop.tick(0.0, in_flight=4) == 4
    assert loop.tick(50.0, in_flight=16) == 4  # back at the current count: the wait restarts
    assert loop.tick(55.0, in_flight=4) == 4
    assert loop.tick(100.0, in_flight=4) == 4
    assert loop.tick(115.0, in_flight=4) == 1


def test_scale_down_is_clamped_to_min_replicas():
    loop = Loop(dataclasses.replace(POLICY, min_replicas=2), replicas=5)
    loop.tick(0.0)
    assert loop.tick(60.0) == 2
    assert loop.tick(600.0) == 2


def test_without_scale_to_zero_an_idle_endpoint_keeps_min_replicas():
    loop = Loop(POLICY, replicas=1)
    for t in range(0, 10_000, 100):
        assert loop.tick(t, last_request_at=0.0) == 1


# ---------------------------------------------------------------------------------- bounds


def test_count_above_max_is_corrected_at_once():
    loop = Loop(dataclasses.replace(POLICY, max_replicas=3), replicas=6)
    assert loop.tick(0.0, in_flight=100) == 3
    assert loop.last is not None
    assert "above max_replicas 3" in loop.last.reason


def test_count_below_min_is_corrected_at_once():
    loop = Loop(dataclasses.replace(POLICY, min_replicas=3), replicas=1)
    assert loop.tick(0.0) == 3


def test_zero_replicas_without_scale_to_zero_starts_min_replicas_at_once():
    loop = Loop(dataclasses.replace(POLICY, min_replicas=2), replicas=0)
    assert loop.tick(0.0) == 2


# ---------------------------------------------------------------------------------- zero


ZERO = dataclasses.replace(POLICY, scale_to_zero=True, min_replicas=1, idle_timeout_s=300)


def test_scale_to_zero_after_the_idle_timeout():
    loop = Loop(ZERO, replicas=1)
    assert loop.tick(100.0, last_request_at=100.0) == 1
    assert loop.tick(399.0, last_request_at=100.0) == 1
    assert loop.tick(400.0, last_request_at=100.0) == 0
    assert loop.last is not None
    assert "idle_timeout_s" in loop.last.reason
    assert loop.tick(10_000.0, last_request_at=100.0) == 0


def test_a_new_request_restarts_the_idle_timeout():
    loop = Loop(ZERO, replicas=1)
    loop.tick(0.0, last_request_at=0.0)
    assert loop.tick(250.0, last_request_at=240.0) == 1
    assert loop.tick(300.0, last_request_at=240.0) == 1
    assert loop.tick(540.0, last_request_at=240.0) == 0


def test_requests_in_flight_keep_the_endpoint_from_zero():
    loop = Loop(ZERO, replicas=1)
    for t in range(0, 2000, 50):
        assert loop.tick(float(t), in_flight=1, last_request_at=0.0) == 1
    # The long request finished: the idle timeout counts from when it was last seen in flight.
    assert loop.tick(2000.0, last_request_at=0.0) == 1
    assert loop.tick(2299.0, last_request_at=0.0) == 1
    assert loop.tick(2300.0, last_request_at=0.0) == 0


def test_never_used_endpoint_waits_the_idle_timeout_from_first_tick():
    loop = Loop(ZERO, replicas=1)
    assert loop.tick(0.0) == 1
    assert loop.tick(299.0) == 1
    assert loop.tick(300.0) == 0


def test_idle_endpoint_goes_to_zero_from_several_replicas():
    loop = Loop(dataclasses.replace(ZERO, idle_timeout_s=30), replicas=4)
    assert loop.tick(0.0, last_request_at=0.0) == 4
    assert loop.tick(30.0, last_request_at=0.0) == 0


def test_first_queued_request_at_zero_starts_one_replica_without_delay():
    loop = Loop(dataclasses.replace(ZERO, upscale_delay_s=30), replicas=0)
    assert loop.tick(0.0) == 0
    assert loop.last is not None
    assert "scaled to zero" in loop.last.reason
    assert loop.tick(500.0, queued=1, last_request_at=500.0) == 1
    assert "scaling from zero" in loop.last.reason


def test_cold_start_with_many_queued_starts_one_then_follows_the_upscale_delay():
    loop = Loop(ZERO, replicas=0)
    assert loop.tick(0.0, queued=40, last_request_at=0.0) == 1
    assert loop.tick(1.0, queued=40, last_request_at=0.0) == 1
    assert loop.tick(4.0, in_flight=40, last_request_at=0.0) == 10


def test_cold_start_starts_min_replicas_when_min_is_above_one():
    loop = Loop(dataclasses.replace(ZERO, min_replicas=2), replicas=0)
    assert loop.tick(0.0, queued=1) == 2


def test_min_replicas_zero_is_allowed_with_scale_to_zero_and_behaves_as_one_while_busy():
    loop = Loop(dataclasses.replace(ZERO, min_replicas=0), replicas=1)
    assert loop.tick(0.0, last_request_at=0.0) == 1
    assert loop.tick(100.0, last_request_at=0.0) == 1
    assert loop.tick(300.0, last_request_at=0.0) == 0


# ---------------------------------------------------------------------------------- validation


def test_min_above_max_is_rejected_naming_both_values():
    with pytest.raises(ConfigError, match=r"max_replicas \(2\).*min_replicas \(5\)"):
        AutoscalingPolicy(min_replicas=5, max_replicas=2)


def test_min_replicas_zero_without_scale_to_zero_is_rejected_with_the_fix():
    with pytest.raises(ConfigError, match=r"min_replicas.*scale_to_zero"):
        AutoscalingPolicy(min_replicas=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_replicas", 0),
        ("target_concurrency", 0),
        ("target_concurrency", float("nan")),
        ("target_cpu", 0),
        ("target_cpu", 101),
        ("upscale_delay_s", -1),
        ("downscale_delay_s", float("inf")),
        ("idle_timeout_s", -0.5),
        ("min_replicas", 1.5),
        ("min_replicas", True),
    ],
)
def test_out_of_range_value_is_rejected_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AutoscalingPolicy(**{field: value})


def test_replace_revalidates():
    with pytest.raises(ConfigError, match="max_replicas"):
        dataclasses.replace(POLICY, max_replicas=0)


def test_defaults_are_the_seeds_and_the_briefs():
    policy = AutoscalingPolicy()
    assert (policy.min_replicas, policy.target_cpu, policy.target_concurrency) == (1, 70, 4)
    assert (policy.upscale_delay_s, policy.downscale_delay_s) == (3, 60)
    assert (policy.scale_to_zero, policy.idle_timeout_s) == (False, 300)


def test_from_config_maps_every_scaling_field():
    policy = AutoscalingPolicy.from_config(
        {
            "min_replicas": 2,
            "max_replicas": 7,
            "target_cpu": 60,
            "target_concurrency": 8,
            "scale_to_zero": True,
            "idle_timeout_s": 120,
            "upscale_delay_s": 1,
            "downscale_delay_s": 30,
        }
    )
    assert policy == AutoscalingPolicy(
        min_replicas=2,
        max_replicas=7,
        target_cpu=60,
        target_concurrency=8,
        scale_to_zero=True,
        idle_timeout_s=120,
        upscale_delay_s=1,
        downscale_delay_s=30,
    )


def test_from_config_accepts_a_model_or_none():
    assert AutoscalingPolicy.from_config(ScalingConfig()) == AutoscalingPolicy.from_config(None)
    # Every field of the section is mapped: a new one must be mapped here too.
    assert set(ScalingConfig.model_fields) == {
        f.name for f in dataclasses.fields(AutoscalingPolicy)
    }


def test_from_config_reports_the_section_path():
    with pytest.raises(ConfigError, match=r"deployment\.scaling"):
        AutoscalingPolicy.from_config({"min_replicas": 5, "max_replicas": 2})


def test_snapshot_rejects_negative_counts():
    with pytest.raises(ValueError, match="in_flight"):
        ScalingSnapshot(current_replicas=1, in_flight=-1)


def test_snapshot_keeps_cpu_readings_as_a_tuple():
    snapshot = ScalingSnapshot(current_replicas=2, cpu_percent=[50.0, 60.0])  # type: ignore[arg-type]
    assert snapshot.cpu_percent == (50.0, 60.0)


def test_decide_does_not_mutate_its_inputs():
    state = ScalingState()
    snapshot = ScalingSnapshot(current_replicas=1, in_flight=40)
    first = decide(POLICY, snapshot, state, 0.0)
    assert state == ScalingState()
    assert decide(POLICY, snapshot, state, 0.0) == first


# ---------------------------------------------------------------------------------- properties


@st.composite
def policies(draw: st.DrawFn) -> AutoscalingPolicy:
    scale_to_zero = draw(st.booleans())
    low = draw(st.integers(0 if scale_to_zero else 1, 8))
    return AutoscalingPolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 12)),
        target_concurrency=draw(st.floats(0.1, 64)),
        target_cpu=draw(st.floats(1, 100)),
        upscale_delay_s=draw(st.floats(0, 30)),
        downscale_delay_s=draw(st.floats(0, 600)),
        scale_to_zero=scale_to_zero,
        idle_timeout_s=draw(st.floats(0, 900)),
    )


snapshots = st.builds(
    ScalingSnapshot,
    current_replicas=st.integers(0, 20),
    in_flight=st.integers(0, 500),
    queued=st.integers(0, 100),
    cpu_percent=st.lists(st.floats(0, 800), max_size=20).map(tuple),
    last_request_at=st.none() | st.floats(0, 1000),
)


@given(
    policy=policies(),
    ticks=st.lists(st.tuples(snapshots, st.floats(0, 100)), min_size=1, max_size=20),
)
def test_desired_is_always_within_the_bounds(policy, ticks):
    state, now = ScalingState(), 1000.0
    for snapshot, step in ticks:
        now += step
        decision = decide(policy, snapshot, state, now)
        state = decision.state
        low = 0 if policy.scale_to_zero else policy.min_replicas
        assert low <= decision.desired <= policy.max_replicas
        assert policy.floor <= decision.recommended <= policy.max_replicas
        assert decision.reason


@given(
    policy=policies(),
    snapshot=snapshots,
    fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=10),
)
def test_unchanged_inputs_never_jump_within_the_delay_window(policy, snapshot, fractions):
    window = min(policy.upscale_delay_s, policy.downscale_delay_s, policy.idle_timeout_s)
    assume(window > 0)
    t0 = 1000.0
    first = decide(policy, snapshot, ScalingState(), t0)
    current = snapshot.current_replicas
    cold_start = current == 0 and snapshot.load > 0
    at_rest_at_zero = current == 0 and policy.scale_to_zero and snapshot.load == 0
    out_of_bounds = not at_rest_at_zero and not policy.floor <= current <= policy.max_replicas
    if not (cold_start or out_of_bounds):
        assert first.desired == current
    state = first.state
    # t0 + fraction * window can round up to the end of the window itself.
    times = [t for t in (t0 + f * window for f in sorted(fractions)) if t - t0 < window]
    for now in times:
        decision = decide(policy, snapshot, state, now)
        state = decision.state
        assert decision.desired == first.desired
