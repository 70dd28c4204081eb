"""The gradual rollout stage: shift traffic to a candidate step by step, roll back on a breach.

Each step but the last gives the candidate a share of the endpoint's traffic (with
:func:`~cvdeploy.platforms.traffic.next_config`, the same rule as ``cvdeploy endpoints
update``) and watches the candidate's own requests for ``window_s`` seconds: its server-error
rate and p95 latency against the policy's limits. A breach, or a step that never sees enough
requests, sends all traffic back to the champion (the version with the most traffic before the
rollout); the last step is the full switch.

The verdict of one poll is :func:`judge_window`, a pure function of the counts and the elapsed
time, so every branch is tested without a platform or a clock. :func:`roll_out` is the loop
around it; it never leaves the endpoint's traffic split without saying so: a run killed
mid-rollout is found by the next one (:func:`find_interrupted`) and resumed or undone, and an
exception inside the loop rolls back before it propagates.
"""

from __future__ import annotations

from cvdeploy.pipeline.rollout.policy import RolloutPolicy, Verdict, judge_window
from cvdeploy.pipeline.rollout.runner import (
    RolloutClient,
    RolloutReport,
    StepReport,
    StepVerdict,
    roll_out,
)
from cvdeploy.pipeline.rollout.split import SplitState, find_interrupted

__all__ = [
    "RolloutClient",
    "RolloutPolicy",
    "RolloutReport",
    "SplitState",
    "StepReport",
    "StepVerdict",
    "Verdict",
    "find_interrupted",
    "judge_window",
    "roll_out",
]
