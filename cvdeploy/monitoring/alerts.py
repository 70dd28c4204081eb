"""Alert rules and their state machine: a pure function of values, states and a clock.

A rule watches one metric (in DESIGN's units: latency p95 ms, cpu/memory percent, error_rate a
fraction, throughput req/s, drift 1.0 when any feature drifts). Each evaluation moves every rule
through::

    inactive --true--> pending --true for for_s--> firing --false--> resolved --false--> inactive
        ^                 |                                              |
        +-----false-------+                          true (pending/firing again)

(with ``for_s == 0`` a true condition fires at once). Events are emitted only on the transitions
to firing and to resolved, so a rule that stays firing is reported once. :func:`evaluate` does no
I/O and reads no clock, so it is tested with plain floats; :class:`AlertManager` wraps it with a
lock, a history and the sinks that deliver events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from cvdeploy.config import KNOWN_METRICS, MonitoringConfig, validate_section
from cvdeploy.errors import ConfigError

if TYPE_CHECKING:
    from cvdeploy.monitoring.sinks import Sink

__all__ = [
    "ALERT_METRICS",
    "AlertEvent",
    "AlertManager",
    "AlertRule",
    "AlertState",
    "Comparison",
    "Severity",
    "evaluate",
    "rules_from_config",
]

_logger = logging.getLogger("cvdeploy.alerts")

Comparison = Literal[">", ">=", "<", "<="]
Severity = Literal["info", "warning", "critical"]
Status = Literal["inactive", "pending", "firing", "resolved"]

#: Metrics a rule may watch: the config's metric names (``drift`` is 1.0 when any feature drifts).
ALERT_METRICS: tuple[str, ...] = KNOWN_METRICS

_COMPARISONS: tuple[str, ...] = get_args(Comparison)
_SEVERITIES: tuple[str, ...] = get_args(Severity)
_WORDS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}
_TITLES = {
    "latency": "latency p95",
    "error_rate": "error rate",
    "cpu": "CPU",
    "gpu": "GPU utilisation",
    "gpu_memory": "GPU memory",
    "queue_depth": "queue depth",
}
_NAMES = {"latency": "latency_p95"}


def _number(value: float) -> str:
    # Large values read best as integers (1234 ms), small ones need their digits (0.015).
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _with_unit(metric: str, value: float) -> str:
    if metric == "latency":
        return f"{_number(value)} ms"
    if metric == "error_rate":
        return f"{_number(value * 100)}%"
    if metric in {"cpu", "memory", "gpu", "gpu_memory"}:
        return f"{_number(value)}%"
    if metric == "throughput":
        return f"{_number(value)} req/s"
    return _number(value)


@dataclass(frozen=True)
class AlertRule:
    """Fire when ``metric`` compared with ``threshold`` holds for ``for_s`` seconds.

    Args:
        metric: One of :data:`ALERT_METRICS`; anything else is a ConfigError naming them.
        threshold: Level in the metric's unit (latency ms, error_rate a fraction, percent, req/s).
        comparison: ``>``, ``>=``, ``<`` or ``<=``; ``<`` on throughput catches a drop.
        for_s: Seconds the condition must hold before the alert fires (0: at once).
        severity: ``info``, ``warning`` or ``critical``.
        name: The alert's name (Alertmanager's ``alertname``); derived when empty, e.g.
            ``latency_p95_high`` or ``throughput_low``.
        description: Free text for the people who get the alert.
    """

    metric: str
    threshold: float
    comparison: Comparison = ">"
    for_s: float = 0.0
    severity: Severity = "warning"
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.metric not in ALERT_METRICS:
            raise ConfigError(
                f"Unknown alert metric {self.metric!r}; valid metrics: {', '.join(ALERT_METRICS)}"
            )
        if self.comparison not in _COMPARISONS:
            raise ConfigError(
                f"Unknown alert comparison {self.comparison!r} for {self.metric}; "
                f"use one of {', '.join(_COMPARISONS)}"
            )
        if self.severity not in _SEVERITIES:
            raise ConfigError(
                f"Unknown alert severity {self.severity!r} for {self.metric}; "
                f"use one of {', '.join(_SEVERITIES)}"
            )
        if not math.isfinite(self.threshold):
            raise ConfigError(f"Alert threshold for {self.metric} must be a finite number")
        if not math.isfinite(self.for_s) or self.for_s < 0:
            raise ConfigError(
                f"Alert for_s for {self.metric} must be a number of seconds >= 0, "
                f"not {self.for_s!r}"
            )
        if not self.name:
            if self.metric == "drift":
                derived = "drift_detected"
            else:
                side = "high" if self.comparison in {">", ">="} else "low"
                derived = f"{_NAMES.get(self.metric, self.metric)}_{side}"
            # Frozen dataclass: the derived default has to be written past __setattr__.
            object.__setattr__(self, "name", derived)

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the rule's condition."""
        if self.comparison == ">":
            return value > self.threshold
        if self.comparison == ">=":
            return value >= self.threshold
        if self.comparison == "<":
            return value < self.threshold
        return value <= self.threshold

    def describe(self) -> str:
        """The condition in words, e.g. ``latency p95 above 1000 ms for 30 s``."""
        text = f"{_TITLES.get(self.metric, self.metric)} {_WORDS[self.comparison]} "
        text += _with_unit(self.metric, self.threshold)
        return text + (f" for {_number(self.for_s)} s" if self.for_s else "")


@dataclass(frozen=True)
class AlertState:
    """Where one rule stands; ``since`` is when the current status began."""

    status: Status = "inactive"
    since: float = 0.0
    value: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None


@dataclass(frozen=True)
class AlertEvent:
    """A transition to ``firing`` or ``resolved``, as the sinks deliver it.

    ``started_at`` is when the alert began firing (equal to ``at`` for a firing event), which
    Alertmanager needs as ``startsAt`` of a resolved alert. ``fingerprint`` is a stable id of
    the rule and its labels, the same for the firing and the resolved event of one alert.
    """

    rule: AlertRule
    status: Literal["firing", "resolved"]
    value: float
    threshold: float
    at: float
    started_at: float
    message: str
    labels: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the webhook sink posts)."""
        return {
            "alertname": self.rule.name,
            "status": self.status,
            "metric": self.rule.metric,
            "comparison": self.rule.comparison,
            "severity": self.rule.severity,
            "value": self.value,
            "threshold": self.threshold,
            "for_s": self.rule.for_s,
            "at": self.at,
            "started_at": self.started_at,
            "message": self.message,
            "description": self.rule.description,
            "labels": dict(self.labels),
            "fingerprint": self.fingerprint,
        }


def _fingerprint(labels: Mapping[str, str]) -> str:
    # Alertmanager identifies an alert by its label set; hashing the sorted labels gives the
    # same id in every process and run.
    blob = json.dumps(sorted(labels.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _event(
    rule: AlertRule,
    status: Literal["firing", "resolved"],
    value: float,
    now: float,
    started_at: float,
    held_s: float,
    context: Mapping[str, str],
) -> AlertEvent:
    title = _TITLES.get(rule.metric, rule.metric)
    limit = _with_unit(rule.metric, rule.threshold)
    if rule.metric == "drift":
        message = (
            "data drift detected on at least one feature"
            if status == "firing"
            else "data drift no longer detected"
        )
    elif status == "firing":
        message = f"{title} is {_with_unit(rule.metric, value)}, {_WORDS[rule.comparison]} {limit}"
        if held_s > 0:
            message += f" for {_number(held_s)} s"
    else:
        message = (
            f"{title} is {_with_unit(rule.metric, value)}, "
            f"no longer {_WORDS[rule.comparison]} {limit}"
        )
    labels = {str(k): str(v) for k, v in context.items()}
    # The rule's own labels win: a context label must not rename or re-grade the alert.
    labels.update(alertname=rule.name, severity=rule.severity, metric=rule.metric)
    return AlertEvent(
        rule=rule,
        status=status,
        value=value,
        threshold=rule.threshold,
        at=now,
        started_at=started_at,
        message=message,
        labels=labels,
        fingerprint=_fingerprint(labels),
    )


def evaluate(
    rules: Sequence[AlertRule],
    values: Mapping[str, float | None],
    states: Mapping[str, AlertState],
    now: float,
    labels: Mapping[str, str] | None = None,
) -> tuple[dict[str, AlertState], list[AlertEvent]]:
    """Advance every rule one step; pure (no I/O, no clock).

    Args:
        rules: The rules; their names must be unique (states are keyed by name).
        values: Current metric values by metric name. A missing or None value (a metric this
            machine cannot measure, such as ``gpu`` on a CPU host) leaves that rule's state
            unchanged and emits nothing; NaN counts as missing.
        states: The states returned by the previous call (empty at first).
        now: The time of this evaluation, in seconds (any monotonic or wall clock).
        labels: Context labels (endpoint, model, version, ...) added to every event.

    Returns:
        The new states by rule name, and the events of this step (transitions to firing and
        to resolved only).
    """
    context = labels or {}
    names = [rule.name for rule in rules]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"Alert rule names must be unique; {', '.join(repeated)} is used more than once"
        )
    new_states: dict[str, AlertState] = {}
    events: list[AlertEvent] = []
    for rule in rules:
        state = states.get(rule.name) or AlertState(since=now)
        value = values.get(rule.metric)
        if value is None or math.isnan(value):
            new_states[rule.name] = state
            continue
        value = float(value)
        if rule.holds(value):
            if state.status in {"inactive", "resolved"} and rule.for_s > 0:
                state = AlertState("pending", since=now, value=value, fired_at=state.fired_at)
            elif state.status in {"inactive", "resolved"} or (
                state.status == "pending" and now - state.since >= rule.for_s
            ):
                held = now - state.since if state.status == "pending" else 0.0
                state = AlertState("firing", since=now, value=value, fired_at=now)
                events.append(_event(rule, "firing", value, now, now, held, context))
            else:  # pending, not yet long enough; or already firing (reported once)
                state = replace(state, value=value)
        elif state.status == "firing":
            started = state.fired_at if state.fired_at is not None else state.since
            state = AlertState(
                "resolved", since=now, value=value, fired_at=started, resolved_at=now
            )
            events.append(_event(rule, "resolved", value, now, started, 0.0, context))
        elif state.status in {"pending", "resolved"}:
            state = AlertState(
                "inactive",
                since=now,
                value=value,
                fired_at=state.fired_at,
                resolved_at=state.resolved_at,
            )
        else:
            state = replace(state, value=value)
        new_states[rule.name] = state
    return new_states, events


def _rule_from(item: Any) -> AlertRule:
    # getattr with defaults so comparison/for_s/severity flow through once the config's
    # AlertRule grows them, without a change here.
    return AlertRule(
        metric=str(item.metric),
        threshold=float(item.threshold),
        comparison=getattr(item, "comparison", ">"),
        for_s=float(getattr(item, "for_s", 0.0)),
        severity=getattr(item, "severity", "warning"),
        name=str(getattr(item, "name", "") or ""),
        description=str(getattr(item, "description", "") or ""),
    )


def rules_from_config(
    monitoring: MonitoringConfig | Mapping[str, Any] | None,
) -> list[AlertRule]:
    """The alert rules of a monitoring section, both seeds' layouts.

    Seed 000's ``alert_thresholds {cpu, memory, latency}`` become ``cpu > cpu``,
    ``memory > memory`` and ``latency > latency`` (p95 ms); each of seed 001's
    ``alerts [{metric, threshold}]`` becomes one rule. Identical rules are kept once; distinct
    rules that would share a derived name (``latency > 1000`` and ``latency > 100``) get the
    threshold appended to it (``latency_p95_high_1000``, ``latency_p95_high_100``).

    Args:
        monitoring: A MonitoringConfig, a mapping in its layout (``get_monitoring_config()``),
            or None for the defaults.

    Raises:
        ConfigError: The mapping is not a valid monitoring section.
    """
    config = validate_section(MonitoringConfig, monitoring, name="monitoring")
    levels = config.alert_thresholds
    candidates = [
        AlertRule("cpu", float(levels.cpu)),
        AlertRule("memory", float(levels.memory)),
        AlertRule("latency", float(levels.latency)),
        *(_rule_from(item) for item in config.alerts),
    ]
    unique: list[AlertRule] = []
    for rule in candidates:
        if rule not in unique:
            unique.append(rule)
    # Rules sharing a derived name get the threshold, then a counter, appended: states are
    # keyed by name (e.g. seed 000's `cpu: 80` beside a `cpu > 80 for 30 s critical` rule).
    names = [rule.name for rule in unique]
    named = [
        replace(rule, name=f"{rule.name}_{_number(rule.threshold)}")
        if names.count(rule.name) > 1
        else rule
        for rule in unique
    ]
    seen: dict[str, int] = {}
    result = []
    for rule in named:
        count = seen.get(rule.name, 0)
        seen[rule.name] = count + 1
        result.append(rule if count == 0 else replace(rule, name=f"{rule.name}_{count + 1}"))
    return result


class AlertManager:
    """Rules, their states, a bounded history and the sinks events go to; thread-safe.

    One manager watches one target (a server or an endpoint); its context labels (endpoint,
    model, version) go on every event. Sinks must not block (the shipped ones queue and return).

    Args:
        rules: The rules to evaluate (e.g. :func:`rules_from_config`).
        sinks: Where events go; each gets every event, in order.
        labels: Context labels added to every event.
        history_size: How many recent events :meth:`history` keeps.
    """

    def __init__(
        self,
        rules: Iterable[AlertRule] = (),
        sinks: Iterable[Sink] = (),
        *,
        labels: Mapping[str, str] | None = None,
        history_size: int = 200,
    ) -> None:
        self._rules = list(rules)
        # Fail on duplicate names now rather than at the first evaluation.
        evaluate(self._rules, {}, {}, 0.0)
        self._sinks = list(sinks)
        self._labels = dict(labels or {})
        self._states: dict[str, AlertState] = {}
        self._firing: dict[str, AlertEvent] = {}
        self._history: deque[AlertEvent] = deque(maxlen=max(1, history_size))
        self._lock = threading.Lock()

    @property
    def rules(self) -> list[AlertRule]:
        """The rules, in evaluation order."""
        return list(self._rules)

    def states(self) -> dict[str, AlertState]:
        """The current state of every rule evaluated so far, by rule name."""
        with self._lock:
            return dict(self._states)

    def evaluate(
        self,
        values: Mapping[str, float | None],
        now: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[AlertEvent]:
        """Evaluate every rule on ``values`` and send the resulting events to the sinks.

        Args:
            values: Current metric values by metric name (None: not available).
            now: Seconds since the epoch; the wall clock when omitted.
            labels: Extra context labels for this evaluation (override the manager's).

        Returns:
            The events of this evaluation (transitions to firing and to resolved).
        """
        at = time.time() if now is None else now
        context = {**self._labels, **(labels or {})}
        with self._lock:
            self._states, events = evaluate(self._rules, values, self._states, at, context)
            for event in events:
                self._history.append(event)
                if event.status == "firing":
                    self._firing[event.rule.name] = event
                else:
                    self._firing.pop(event.rule.name, None)
                # Under the lock so every sink sees firing before resolved; sinks only queue.
                for sink in self._sinks:
                    try:
                        sink.send(event)
                    except Exception:  # a broken sink must not break monitoring or serving
                        _logger.exception("alert sink %r failed on %s", sink, event.rule.name)
        return events

    def active(self) -> list[dict[str, Any]]:
        """The firing alerts, as JSON-ready dicts with their latest value."""
        with self._lock:
            result = []
            for name, event in self._firing.items():
                state = self._states.get(name)
                item = event.to_dict()
                if state is not None and state.value is not None:
                    item["value"] = state.value
                result.append(item)
            return result

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Recent events, newest first, as JSON-ready dicts."""
        with self._lock:
            events = list(self._history)
        events.reverse()
        return [event.to_dict() for event in events[:limit]]

    def close(self, timeout: float = 5.0) -> None:
        """Close every sink, letting them drain for up to ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        for sink in self._sinks:
            sink.close(max(0.0, deadline - time.monotonic()))
