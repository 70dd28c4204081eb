"""The rollout loop: apply each step, watch the candidate, promote or roll back.

:func:`roll_out` never leaves the endpoint's traffic split without saying so: it resumes or
undoes a split an interrupted run left, and rolls back before an exception propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from cvdeploy.errors import CVDeployError, ModelLoadError
from cvdeploy.pipeline.rollout.policy import RolloutPolicy, Verdict, judge_window
from cvdeploy.pipeline.rollout.split import find_interrupted
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointInfo, ServedEntity
from cvdeploy.platforms.traffic import next_config

__all__ = ["RolloutClient", "RolloutReport", "StepReport", "StepVerdict", "roll_out"]

logger = logging.getLogger("cvdeploy.pipeline")

StepVerdict = Literal["passed", "breached", "idle_promoted", "idle_rolled_back", "final"]

_STATS_WINDOW_S = (1.0, 300.0)  # what the platform's stats endpoint accepts
_PROGRESS_EVERY_S = 10.0


class RolloutClient(Protocol):
    """The part of :class:`~cvdeploy.platforms.client.PlatformClient` a rollout uses."""

    def get_endpoint(self, name: str) -> EndpointInfo: ...

    def update_config(self, name: str, config: EndpointCoreConfig) -> EndpointInfo: ...

    def wait_not_updating(self, name: str, timeout: float = ...) -> EndpointInfo: ...

    def stats(self, name: str, window_s: float = ...) -> dict[str, Any]: ...


@dataclass
class StepReport:
    """One step: the candidate's figures while it held ``percent`` of the traffic.

    ``seconds`` counts the config switch and the watch; ``requests`` and ``errors`` are the
    candidate's during the watch.
    """

    percent: int
    seconds: float
    requests: int
    errors: int
    error_rate: float
    latency_p95_ms: float | None
    verdict: StepVerdict
    detail: str


@dataclass
class RolloutReport:
    """The outcome: ``deployed`` (the candidate serves 100%) or ``rolled_back``.

    ``champion`` is the version that had the most traffic before (``name:version`` when it is
    another registered model), None when the candidate already served everything.
    ``failed_requests`` are the candidate's server errors seen while watching. ``resumed``
    says what an interrupted earlier run had left and what was done about it.
    """

    status: Literal["deployed", "rolled_back"]
    endpoint: str
    model: str
    candidate: str
    champion: str | None
    steps: list[StepReport] = field(default_factory=list)
    failed_requests: int = 0
    reason: str | None = None
    resumed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roll_out(
    client: RolloutClient,
    endpoint: str,
    model: str,
    candidate: str,
    policy: RolloutPolicy,
    *,
    on_event: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    update_timeout_s: float = 600,
) -> RolloutReport:
    """Move ``endpoint``'s traffic to ``model`` version ``candidate`` along ``policy.steps``.

    Returns a report whether the candidate was deployed or rolled back; raises only for what
    stops the rollout itself (the platform unreachable, an interrupt), after trying to put the
    champion back at 100%.
    """
    run = _Rollout(client, endpoint, model, str(candidate), policy, on_event, clock, sleep,
                   update_timeout_s)  # fmt: skip
    return run.run()


class _Rollout:
    """One call of :func:`roll_out`: its state, so the steps stay small functions."""

    def __init__(
        self,
        client: RolloutClient,
        endpoint: str,
        model: str,
        candidate: str,
        policy: RolloutPolicy,
        on_event: Callable[[str], None] | None,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        update_timeout_s: float,
    ) -> None:
        self.client, self.endpoint, self.model, self.candidate = client, endpoint, model, candidate
        self.policy, self.on_event, self.clock, self.sleep = policy, on_event, clock, sleep
        self.update_timeout_s = update_timeout_s
        self.champion: tuple[str, str] | None = None  # (registered model, version)
        self.report = RolloutReport("deployed", endpoint, model, candidate, None)
        self.touched = False  # traffic may be split: an exception must roll back

    def say(self, message: str, level: int = logging.INFO) -> None:
        logger.log(level, "rollout %s: %s", self.endpoint, message)
        if self.on_event is not None:
            self.on_event(message)

    def run(self) -> RolloutReport:
        try:
            return self._run()
        except BaseException as exc:
            if self.touched and self.champion is not None:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.say(f"interrupted by {why}; rolling back to the champion", logging.ERROR)
                try:
                    self._restore()
                except Exception as again:
                    self.say(f"the rollback failed too ({again}); the endpoint's traffic may "
                             "still be split: run the rollout again or roll back by hand",
                             logging.ERROR)  # fmt: skip
            raise

    def _run(self) -> RolloutReport:
        plan = self._plan()
        if plan is None:
            return self.report
        steps, start_at = plan
        for percent in steps:
            began = self.clock()
            if percent != start_at:
                failure = self._apply(percent)
                if failure is not None:
                    return self._roll_back(percent, began, failure)
            if percent == 100:
                self.touched = False
                self._step(percent, began, 0, 0, None, "final", "all traffic on the candidate")
                self.say(f"deployed: {self.model} version {self.candidate} serves 100%")
                return self.report
            verdict, counts, detail = self._watch(percent)
            requests, errors, p95 = counts
            self.report.failed_requests += errors
            if verdict == "pass":
                self._step(percent, began, requests, errors, p95, "passed", detail)
            elif verdict == "idle" and self.policy.allow_idle_promotion:
                self._step(percent, began, requests, errors, p95, "idle_promoted", detail)
            else:
                kind: StepVerdict = "breached" if verdict == "breach" else "idle_rolled_back"
                self._step(percent, began, requests, errors, p95, kind, detail)
                return self._roll_back(percent, began, detail, add_step=False)
        raise CVDeployError("rollout steps ended before 100%")  # pragma: no cover

    def _plan(self) -> tuple[list[int], int | None] | None:
        """The steps to take and the one already applied (a resumed run), or None when the
        candidate already serves everything. Undoes another version's interrupted rollout."""
        info = self._settled()
        config = _config_of(info, self.endpoint)
        served = {e.name: e for e in config.served_entities}
        live = [r for r in config.routes if r.traffic_percentage > 0]
        if len(live) == 1 and _is(served[live[0].served_model_name], self.model, self.candidate):
            self.report.reason = f"version {self.candidate} already serves 100%; nothing to do"
            self.say(self.report.reason)
            return None
        steps = list(self.policy.steps)
        start_at: int | None = None
        split = find_interrupted(info, self.model)
        if split is not None and self.candidate in (split.champion, split.candidate):
            # Our own rollout, killed: carry on from where traffic stands.
            mine = self.candidate == split.champion
            other = split.candidate if mine else split.champion
            start_at = 100 - split.percent if mine else split.percent
            self.champion, self.touched = (self.model, other), True
            steps = [start_at, *(s for s in steps if s > start_at)]
            self.report.resumed = (
                f"an interrupted rollout left version {self.candidate} at {start_at}% beside "
                f"version {other}; resumed at {start_at}% (that step watched again from zero)"
            )
            self.say(self.report.resumed, logging.WARNING)
        elif split is not None:
            # Another version's rollout, killed: its champion is the one to protect.
            self.champion, self.touched = (self.model, split.champion), True
            self.say(f"an interrupted rollout of version {split.candidate} left it at "
                     f"{split.percent}%; restoring version {split.champion} at 100% first",
                     logging.WARNING)  # fmt: skip
            self._restore()
            self.report.resumed = (
                f"an interrupted rollout of version {split.candidate} left it at "
                f"{split.percent}% beside version {split.champion}; restored version "
                f"{split.champion} at 100% before starting"
            )
        else:
            primary = _primary(config)
            self.champion = (primary.entity_name, primary.entity_version)
        champ_model, champ_version = self.champion
        self.report.champion = (
            champ_version if champ_model == self.model else f"{champ_model}:{champ_version}"
        )
        self.say(f"rolling out {self.model} version {self.candidate} over "
                 f"{self.report.champion} in steps {steps}")  # fmt: skip
        return steps, start_at

    def _settled(self) -> EndpointInfo:
        """The endpoint once no update is in flight (a dead run may have left one)."""
        info = self.client.get_endpoint(self.endpoint)
        if info.state.config_update == "IN_PROGRESS":
            self.say("waiting for a config update already in progress")
            try:
                self.client.wait_not_updating(self.endpoint, timeout=self.update_timeout_s)
            except ModelLoadError as exc:  # the previous config keeps serving
                self.say(f"that update failed: {exc}", logging.WARNING)
            info = self.client.get_endpoint(self.endpoint)
        return info

    def _apply(self, percent: int) -> str | None:
        """Give the candidate ``percent``; the reason when the platform could not."""
        config = _config_of(self.client.get_endpoint(self.endpoint), self.endpoint)
        target = next_config(config, self.model, self.candidate, percent)
        self.say(f"step {percent}%: switching the endpoint's traffic")
        self.touched = True
        self.client.update_config(self.endpoint, target)
        try:
            self.client.wait_not_updating(self.endpoint, timeout=self.update_timeout_s)
        except ModelLoadError as exc:
            return f"the switch to {percent}% failed: {exc}"
        return None

    def _watch(self, percent: int) -> tuple[Verdict, tuple[int, int, float | None], str]:
        """Poll the candidate's counters until the step has a verdict other than wait."""
        policy = self.policy
        started = self.clock()
        last = self._counters(_STATS_WINDOW_S[0])
        if last is None:
            return "breach", (0, 0, None), self._gone()
        requests = errors = 0
        p95: float | None = None
        reported = started
        self.say(f"step {percent}%: watching the candidate for {policy.window_s:g} s "
                 f"(at least {policy.min_requests} requests)")  # fmt: skip
        while True:
            self.sleep(policy.poll_s)
            elapsed = self.clock() - started
            window = min(max(elapsed, _STATS_WINDOW_S[0]), _STATS_WINDOW_S[1])
            now = self._counters(window)
            if now is None:
                return "breach", (requests, errors, p95), self._gone()
            # A total below the last one: the entity was rebuilt and its counters restarted.
            requests += now[0] - last[0] if now[0] >= last[0] else now[0]
            errors += now[1] - last[1] if now[1] >= last[1] else now[1]
            last, p95 = now, now[2]
            verdict, detail = judge_window(
                policy, requests=requests, errors=errors, latency_p95_ms=p95, elapsed_s=elapsed
            )
            if verdict != "wait":
                if verdict in ("breach", "idle"):
                    detail = f"{detail} at the {percent}% step"
                self.say(f"step {percent}%: {verdict}: {detail}",
                         logging.INFO if verdict == "pass" else logging.WARNING)  # fmt: skip
                return verdict, (requests, errors, p95), detail
            if self.clock() - reported >= _PROGRESS_EVERY_S:
                reported = self.clock()
                self.say(f"step {percent}%: {detail}, {errors} errors")

    def _counters(self, window_s: float) -> tuple[int, int, float | None] | None:
        """The candidate's ``(requests_total, errors_total, p95 over window_s)``."""
        stats = self.client.stats(self.endpoint, window_s=window_s)
        for figures in (stats.get("served_entities") or {}).values():
            if figures.get("model") == self.model and str(figures.get("version")) == self.candidate:
                latency = (figures.get("last_minute") or {}).get("latency_ms") or {}
                p95 = latency.get("p95")
                return (
                    int(figures.get("requests_total", 0)),
                    int(figures.get("errors_total", 0)),
                    None if p95 is None else float(p95),
                )
        return None

    def _gone(self) -> str:
        return (
            f"{self.model} version {self.candidate} is no longer among the endpoint's served "
            "entities (was the config changed by someone else?)"
        )

    def _step(
        self,
        percent: int,
        began: float,
        requests: int,
        errors: int,
        p95: float | None,
        verdict: StepVerdict,
        detail: str,
    ) -> None:
        rate = round(errors / requests, 4) if requests else 0.0
        self.report.steps.append(StepReport(percent, round(self.clock() - began, 3), requests,
                                            errors, rate, p95, verdict, detail))  # fmt: skip

    def _roll_back(
        self, percent: int, began: float, reason: str, *, add_step: bool = True
    ) -> RolloutReport:
        if add_step:
            self._step(percent, began, 0, 0, None, "breached", reason)
        self.report.status, self.report.reason = "rolled_back", reason
        self.say(f"rolling back to {self.report.champion} at 100%: {reason}", logging.WARNING)
        self._restore()
        self.say(f"rolled back: {self.report.champion} serves 100% "
                 f"({self.report.failed_requests} candidate requests failed)")  # fmt: skip
        return self.report

    def _restore(self) -> None:
        """Send all traffic to the champion and wait until it serves."""
        if self.champion is None:  # pragma: no cover - set before any change
            return
        info = self._settled()
        config = _config_of(info, self.endpoint)
        target = next_config(config, *self.champion, 100)
        if target != config:
            self.client.update_config(self.endpoint, target)
            self.client.wait_not_updating(self.endpoint, timeout=self.update_timeout_s)
        self.touched = False


def _config_of(info: EndpointInfo, endpoint: str) -> EndpointCoreConfig:
    if info.config is None:
        raise CVDeployError(
            f"endpoint '{endpoint}' has no serving config yet (its first config never became "
            "ready); fix or recreate the endpoint before rolling out"
        )
    return info.config


def _primary(config: EndpointCoreConfig) -> ServedEntity:
    share = {r.served_model_name: r.traffic_percentage for r in config.routes}
    return sorted(config.served_entities, key=lambda e: -share.get(e.name, 0))[0]


def _is(entity: ServedEntity, model: str, version: str) -> bool:
    return entity.entity_name == model and entity.entity_version == version
