"""The local platform: endpoints served by replica processes on this machine.

The autoscaler is a pure policy, ``decide(policy, snapshot, state, now)``, so the platform's
control loop owns the clock and the replicas, and the policy is tested with a fake clock.
"""

from __future__ import annotations

from cvdeploy.platforms.local.autoscaler import (
    AutoscalingPolicy,
    Decision,
    ScalingSnapshot,
    ScalingState,
    decide,
)
from cvdeploy.platforms.local.records import AuditEntry, EndpointRecord, Revision, TokenInfo
from cvdeploy.platforms.local.state import PlatformState

__all__ = [
    "AuditEntry",
    "AutoscalingPolicy",
    "Decision",
    "EndpointRecord",
    "PlatformState",
    "Revision",
    "ScalingSnapshot",
    "ScalingState",
    "TokenInfo",
    "decide",
]
