"""The quality gates: minimum metrics, and no regression against the serving champion.

Pure functions over the evaluation's figures, so every verdict is unit-tested with numbers. All
gated metrics are "higher is better" fractions (accuracy, precision, recall, F1, mAP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.stages import StageResult

__all__ = ["TASK_METRICS", "check_gates", "gated_metrics", "normalise_thresholds"]

#: The figures each task's evaluation produces that a threshold may name.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
    ),
    "detection": ("precision", "recall", "f1", "map", "map50", "map75", "map50_95"),
}
# Spellings people copy from other tools' reports.
_ALIASES = {
    "map50-95": "map50_95",
    "map@0.5": "map50",
    "map@0.5:0.95": "map50_95",
    "acc": "accuracy",
}


def gated_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The quality figures of an evaluation: what a threshold may name, in the evaluation's
    order (counts such as ``images`` and the chosen ``conf_threshold`` are left out)."""
    known = {name for names in TASK_METRICS.values() for name in names}
    return {
        k: float(v)
        for k, v in metrics.items()
        if k in known and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def normalise_thresholds(
    thresholds: Mapping[str, float], task: str, *, from_defaults: bool = False
) -> tuple[dict[str, float], list[str]]:
    """Map threshold names onto the task's metrics.

    Returns the thresholds to apply and notes on the ones dropped. Only the built-in defaults
    may be dropped (the seed's ``accuracy`` means nothing for a detector); a name the user wrote
    that the evaluation does not produce is an error, since a gate silently skipped is a gate
    that never fails.

    Raises:
        ConfigError: an unknown metric name; the message lists the valid ones.
    """
    valid = TASK_METRICS.get(task)
    if valid is None:
        raise ConfigError(f"no evaluation metrics are defined for task {task!r}")
    kept: dict[str, float] = {}
    notes: list[str] = []
    for raw, value in thresholds.items():
        name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name in valid:
            if not 0 <= float(value) <= 1:
                raise ConfigError(
                    f"metrics_threshold {raw!r} is {value}; every {task} metric is a fraction "
                    "from 0 to 1 (write 0.9 for 90%)"
                )
            kept[name] = float(value)
        elif from_defaults:
            notes.append(f"default threshold {raw!r} skipped: not measured for {task} models")
        else:
            raise ConfigError(
                f"metrics_threshold names {raw!r}, which the {task} evaluation does not produce; "
                f"valid names: {', '.join(valid)}"
            )
    return kept, notes


def check_gates(
    metrics: Mapping[str, float],
    thresholds: Mapping[str, float],
    *,
    champion: Mapping[str, float] | None = None,
    champion_version: str | None = None,
    max_regression: float = 0.01,
    no_champion: str | None = None,
) -> StageResult:
    """Every threshold, then every thresholded metric against the champion's (when there is
    one): a candidate may not fall more than ``max_regression`` below it.

    ``metrics`` and ``champion`` are :func:`gated_metrics` of two evaluations on the same data;
    ``thresholds`` come from :func:`normalise_thresholds`; ``no_champion`` says why there is
    no comparison when ``champion`` is None.
    """
    stage = StageResult("gates")
    for name, minimum in thresholds.items():
        value = metrics.get(name)
        if value is None:
            stage.check(f"threshold:{name}", False, f"{name} was not measured", None, minimum)
            continue
        verdict = value >= minimum
        relation = ">=" if verdict else "<"
        stage.check(
            f"threshold:{name}",
            verdict,
            f"{name} {value:.4f} {relation} threshold {minimum:.4f}",
            round(value, 6),
            minimum,
        )
    if champion is None:
        detail = no_champion or "no champion to compare with (first deployment)"
        stage.check("regression", None, detail)
        return stage
    label = f"champion v{champion_version}" if champion_version else "the champion"
    for name in thresholds:
        mine, theirs = metrics.get(name), champion.get(name)
        if mine is None or theirs is None:
            continue
        floor = theirs - max_regression
        verdict = mine >= floor
        stage.check(
            f"regression:{name}",
            verdict,
            f"{name} {mine:.4f} vs {label} {theirs:.4f} "
            + ("(within" if verdict else "(falls more than")
            + f" {max_regression:g} tolerance)",
            round(mine, 6),
            round(floor, 6),
        )
    return stage
