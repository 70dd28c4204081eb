"""The deploy stage: create the endpoint, or roll the candidate out in steps with rollback.

A new endpoint has no champion to protect, so the candidate gets it whole. An existing one gets
:func:`~cvdeploy.pipeline.rollout.roll_out` with the policy built from ``ci_cd.rollout`` and
the monitoring alerts (the seed's ``error_rate`` and ``latency`` rules are the rollback limits
unless the rollout section sets its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cvdeploy.config import Config
from cvdeploy.errors import ConflictError
from cvdeploy.pipeline.rollout import RolloutPolicy, find_interrupted, roll_out
from cvdeploy.platforms.base import EndpointNotFoundError

if TYPE_CHECKING:
    from cvdeploy.pipeline.pipeline import DeploymentPipeline

__all__ = ["DeploymentRolledBackError", "deploy", "restore_if_split", "rollout_policy"]

_DEFAULT_MAX_ERROR_RATE = 0.01


class DeploymentRolledBackError(ConflictError):
    """A rollout breached a limit and was rolled back; the champion still serves."""

    error_code = "DEPLOYMENT_ROLLED_BACK"


def rollout_policy(config: Config) -> RolloutPolicy:
    """The rollout policy of a config: ``ci_cd.rollout_steps`` and ``ci_cd.rollout``, with
    limits left unset taken from the monitoring alert rules on ``error_rate`` and ``latency``."""
    rollout = config.ci_cd.rollout
    alerts = {rule.metric: rule.threshold for rule in config.monitoring.alerts}
    max_error_rate = rollout.max_error_rate
    if max_error_rate is None:
        max_error_rate = alerts.get("error_rate", _DEFAULT_MAX_ERROR_RATE)
    max_latency = rollout.max_latency_ms
    if max_latency is None:
        max_latency = alerts.get("latency")
    return RolloutPolicy(
        steps=tuple(config.ci_cd.rollout_steps),
        window_s=rollout.window_s,
        min_requests=rollout.min_requests,
        step_timeout_s=rollout.step_timeout_s,
        allow_idle_promotion=rollout.allow_idle_promotion,
        max_error_rate=max_error_rate,
        max_latency_ms=max_latency,
        poll_s=min(1.0, rollout.window_s / 5),
    )


def deploy(pipeline: DeploymentPipeline, version: str, endpoint: str) -> dict[str, Any]:
    """Serve ``version`` at ``endpoint``; returns the rollout report as a dict."""
    manager = pipeline.endpoints()
    with manager.connect() as client:
        try:
            client.get_endpoint(endpoint)
        except EndpointNotFoundError:
            pipeline.emit("deploy", "progress", f"creating endpoint '{endpoint}'")
            manager.model_version = version
            manager.create_endpoint(endpoint)
            return {
                "status": "deployed",
                "endpoint": endpoint,
                "model": pipeline.model_name,
                "candidate": version,
                "champion": None,
                "steps": [
                    {
                        "percent": 100,
                        "seconds": None,
                        "requests": 0,
                        "errors": 0,
                        "error_rate": 0.0,
                        "latency_p95_ms": None,
                        "verdict": "final",
                        "detail": f"new endpoint '{endpoint}': nothing to protect, all traffic",
                    }
                ],
                "failed_requests": 0,
                "reason": None,
                "resumed": None,
            }
        report = roll_out(
            client,
            endpoint,
            pipeline.model_name,
            version,
            rollout_policy(pipeline.config),
            on_event=lambda message: pipeline.emit("deploy", "progress", message),
            update_timeout_s=pipeline.timeout,
        )
    return report.to_dict()


def restore_if_split(pipeline: DeploymentPipeline, endpoint: str) -> str | None:
    """After a rejection: an endpoint left split by an interrupted run goes back to its
    champion at 100%. Returns what was done, or None when nothing was split."""
    from cvdeploy.platforms.traffic import next_config

    manager = pipeline.endpoints()
    with manager.connect() as client:
        try:
            info = client.get_endpoint(endpoint)
        except EndpointNotFoundError:
            return None
        split = find_interrupted(info, pipeline.model_name)
        if split is None or info.config is None:
            return None
        target = next_config(info.config, pipeline.model_name, split.champion, 100)
        client.update_config(endpoint, target)
        client.wait_not_updating(endpoint, timeout=pipeline.timeout)
    note = (
        f"endpoint '{endpoint}' was left split by an interrupted run (v{split.candidate} at "
        f"{split.percent}%); v{split.champion} serves 100% again"
    )
    pipeline.emit("deploy", "progress", note)
    return note
